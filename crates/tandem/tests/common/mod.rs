//! Harness for scenario tests: runs the real `tandem` binary on free loopback
//! ports with a private data directory, and the real clients against it.
#![allow(dead_code)]

pub mod cluster;
pub mod log;
pub mod nemesis;
pub mod netns;
pub mod scsi;
pub mod workload;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of the binary under test.
pub fn tandem_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tandem")
}

pub use testkit::free_port;

/// Fails the test with a clear message when a client tool is missing; the
/// README's test command installs them.
pub fn require_tool(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed; run scripts/test.sh (it installs the test clients)"
    );
}

/// One running `tandem serve` process.
pub struct Server {
    pub data_dir: PathBuf,
    pub iscsi_port: u16,
    pub api_port: u16,
    /// Control-plane and replication ports (cluster members).
    pub cluster_port: u16,
    pub repl_port: u16,
    /// Address the server listens on and advertises.
    pub host: String,
    /// Network namespace it runs in (None: this one).
    pub netns: Option<String>,
    /// Flags given to `tandem serve` besides the addresses and names.
    extra: Vec<String>,
    /// The `tandem` binary it runs and whose CLI asks it (the one under
    /// test unless [`Server::start_binary`] or [`Server::set_binary`]).
    bin: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    /// A directory of `data_dir` (and its size) on a tmpfs of the server's
    /// own, mounted in a mount namespace made for it: a filesystem the
    /// test can fill up under that server alone.
    tmpfs: Option<(PathBuf, String)>,
}

impl Server {
    /// Starts a server on fresh ports with `data_dir`, and waits until its API answers.
    pub fn start(data_dir: &Path) -> Server {
        Server::start_on(data_dir, "127.0.0.1", None)
    }

    /// [`Server::start`] with `extra` flags to `tandem serve` (kept across restarts).
    #[allow(dead_code)]
    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Server {
        Server::spawned(data_dir, "127.0.0.1", None, extra)
    }

    /// [`Server::start`] running `bin` (another build of `tandem`) instead
    /// of the binary under test; its CLI calls use `bin` too.
    #[allow(dead_code)]
    pub fn start_binary(data_dir: &Path, bin: &Path) -> Server {
        let mut s = Server::unstarted(data_dir, "127.0.0.1", None, &[]);
        s.bin = bin.to_path_buf();
        s.spawn();
        s
    }

    /// Runs `bin` from the next [`Server::restart`] on, and asks it with
    /// `bin`'s CLI.
    #[allow(dead_code)]
    pub fn set_binary(&mut self, bin: &Path) {
        self.bin = bin.to_path_buf();
    }

    /// The `tandem` binary this server runs.
    #[allow(dead_code)]
    pub fn binary(&self) -> &Path {
        &self.bin
    }

    /// Starts a server on `host` (its address), inside network namespace
    /// `netns` when given, on the standard ports.
    pub fn start_on(data_dir: &Path, host: &str, netns: Option<&str>) -> Server {
        Server::spawned(data_dir, host, netns, &[])
    }

    /// As [`Server::start_on`], with further flags of `tandem serve`.
    #[allow(dead_code)]
    pub fn start_on_with(
        data_dir: &Path,
        host: &str,
        netns: Option<&str>,
        extra: &[&str],
    ) -> Server {
        Server::spawned(data_dir, host, netns, extra)
    }

    fn spawned(data_dir: &Path, host: &str, netns: Option<&str>, extra: &[&str]) -> Server {
        let mut s = Server::unstarted(data_dir, host, netns, extra);
        s.spawn();
        s
    }

    fn unstarted(data_dir: &Path, host: &str, netns: Option<&str>, extra: &[&str]) -> Server {
        Server {
            data_dir: data_dir.to_path_buf(),
            iscsi_port: if netns.is_some() { 3260 } else { free_port() },
            api_port: if netns.is_some() { 8080 } else { free_port() },
            cluster_port: if netns.is_some() { 7400 } else { free_port() },
            repl_port: if netns.is_some() { 7401 } else { free_port() },
            host: host.to_string(),
            netns: netns.map(str::to_string),
            extra: extra.iter().map(|f| f.to_string()).collect(),
            bin: PathBuf::from(tandem_bin()),
            child: None,
            log: data_dir.with_extension("log"),
            tmpfs: None,
        }
    }

    /// [`Server::start`] with `data_dir/sub` on a tmpfs of `size` that only
    /// this server sees (a mount namespace of its own, made with `unshare`;
    /// the test must run as root), which [`Server::fill_tmpfs`] fills up
    /// and [`Server::empty_tmpfs`] gives back. `None` where no such mount
    /// can be made here.
    #[allow(dead_code)]
    pub fn start_on_tmpfs(data_dir: &Path, sub: &str, size: &str) -> Option<Server> {
        let probe = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg("mount -t tmpfs -o size=1M tmpfs /mnt")
            .status()
            .is_ok_and(|s| s.success());
        if !probe {
            return None;
        }
        let mut s = Server::unstarted(data_dir, "127.0.0.1", None, &[]);
        s.tmpfs = Some((data_dir.join(sub), size.to_string()));
        s.spawn();
        Some(s)
    }

    /// Fills the server's tmpfs (see [`Server::start_on_tmpfs`]) with a
    /// file until no byte is free: writes that need new space fail there
    /// with ENOSPC.
    #[allow(dead_code)]
    pub fn fill_tmpfs(&self) {
        let (at, _) = self.tmpfs.as_ref().expect("a server on a tmpfs");
        let filler = at.join("filler");
        let script = format!(
            "dd if=/dev/zero of={f} bs=1M 2>/dev/null; dd if=/dev/zero of={f} bs=4k oflag=append conv=notrunc 2>/dev/null; df {d}",
            f = filler.display(),
            d = at.display()
        );
        let out = Command::new("nsenter")
            .args([
                "-t",
                &self.pid().to_string(),
                "-m",
                "--",
                "sh",
                "-c",
                &script,
            ])
            .output()
            .expect("run nsenter");
        eprintln!("filled: {}", String::from_utf8_lossy(&out.stdout));
    }

    /// Removes what [`Server::fill_tmpfs`] wrote.
    #[allow(dead_code)]
    pub fn empty_tmpfs(&self) {
        let (at, _) = self.tmpfs.as_ref().expect("a server on a tmpfs");
        let ok = Command::new("nsenter")
            .args(["-t", &self.pid().to_string(), "-m", "--", "rm", "-f"])
            .arg(at.join("filler"))
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "emptying the tmpfs");
    }

    /// The server's control-plane endpoint, `HOST:PORT`.
    pub fn cluster_addr(&self) -> String {
        format!("{}:{}", self.host, self.cluster_port)
    }

    /// The server's iSCSI portal, `HOST:PORT`.
    pub fn portal(&self) -> std::net::SocketAddr {
        format!("{}:{}", self.host, self.iscsi_port)
            .parse()
            .expect("portal address")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open server log");
        let mut cmd = match (&self.netns, &self.tmpfs) {
            (Some(ns), _) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.bin);
                c
            }
            (None, Some((at, size))) => {
                // `unshare` and `sh` exec the server: its pid is theirs.
                let mut c = Command::new("unshare");
                c.args(["-m", "--propagation", "private", "sh", "-c"])
                    .arg(r#"mkdir -p "$1" && mount -t tmpfs -o size="$2" tmpfs "$1" && shift 2 && exec "$@""#)
                    .arg("sh")
                    .arg(at)
                    .arg(size)
                    .arg(&self.bin);
                c
            }
            (None, None) => Command::new(&self.bin),
        };
        let h = &self.host;
        let child = cmd
            .args([
                "serve",
                "--data-dir",
                self.data_dir.to_str().unwrap(),
                "--iscsi-listen",
                &format!("{h}:{}", self.iscsi_port),
                "--api-listen",
                &format!("{h}:{}", self.api_port),
                "--cluster-listen",
                &format!("{h}:{}", self.cluster_port),
                "--repl-listen",
                &format!("{h}:{}", self.repl_port),
                "--advertise",
                h,
                "--node-name",
                &format!("node-{h}-{}", self.iscsi_port),
            ])
            .args(&self.extra)
            .env("TANDEM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start tandem serve");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.cli(&["status"]).status.success() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("tandem serve exited with {status}:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "tandem serve did not come up:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Process id of the running server.
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// Whether the server process runs (started and not killed or stopped).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `tandem <args>` against this server's API.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .env("TANDEM_API", format!("{}:{}", self.host, self.api_port))
            .env("TANDEM_DATA_DIR", &self.data_dir)
            .env_remove("TANDEM_API_TOKEN")
            .env_remove("TANDEM_TOKEN_FILE")
            .output()
            .expect("run tandem CLI")
    }

    /// Runs `tandem <args>` against this server's API; `None` when it fails
    /// or takes longer than `limit` (a stopped server does not answer).
    pub fn cli_within(&self, args: &[&str], limit: Duration) -> Option<String> {
        let child = Command::new(&self.bin)
            .args(args)
            .env("TANDEM_API", format!("{}:{}", self.host, self.api_port))
            .env("TANDEM_DATA_DIR", &self.data_dir)
            .env_remove("TANDEM_API_TOKEN")
            .env_remove("TANDEM_TOKEN_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run tandem CLI");
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(limit) {
            Ok(Ok(out)) if out.status.success() => {
                Some(String::from_utf8_lossy(&out.stdout).into_owned())
            }
            Ok(_) => None,
            Err(_) => {
                // Still running (its reader thread has not reaped it).
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                None
            }
        }
    }

    /// Runs `tandem <args>` and returns its stdout, failing the test if it fails.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "tandem {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `iscsi://127.0.0.1:PORT/IQN/0` for volume `name`.
    pub fn url(&self, name: &str) -> String {
        format!(
            "iscsi://{}:{}/{}:{}/0",
            self.host,
            self.iscsi_port,
            node_prefix(),
            name
        )
    }

    /// Stops the server with SIGTERM and waits for it to exit cleanly.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(40);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(
                        status.success(),
                        "tandem serve exited with {status}:\n{}",
                        self.log_text()
                    );
                    return;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("tandem serve ignored SIGTERM:\n{}", self.log_text());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Kills the server with SIGKILL (no chance to flush anything).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same ports and data directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "server still running");
        self.spawn();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The default IQN prefix the server exports volumes under.
pub fn node_prefix() -> &'static str {
    "iqn.2026-11.io.tandem"
}

/// Runs a client command, failing the test with its output if it fails.
pub fn run_ok(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
