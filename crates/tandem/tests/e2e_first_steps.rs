//! What a new administrator does first, through the real CLI and server:
//! output into a closed pipe or onto a full disk, `--json` on the commands
//! that change something, sizes and addresses refused in the user's terms,
//! `tandem serve` from a config file alone, a mistyped data directory or a
//! busy port refused before anything is written, `tandem status`, and a
//! dead member shown as DOWN by its name.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{on_loopback, wait_until};
use common::{free_port, tandem_bin, Server};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Runs `tandem <args>` against `s` with stdout going to `stdout`.
fn cli_into(s: &Server, args: &[&str], stdout: Stdio) -> std::process::Child {
    Command::new(tandem_bin())
        .args(args)
        .env("TANDEM_API", format!("{}:{}", s.host, s.api_port))
        .env("TANDEM_DATA_DIR", &s.data_dir)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tandem CLI")
}

#[test]
fn output_into_a_closed_pipe_or_onto_a_full_disk_is_no_panic() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    for i in 0..20 {
        server.cli_ok(&["volume", "create", &format!("vm{i}"), "--size", "64M"]);
    }
    for args in [
        &["volume", "list", "--json"][..],
        &["volume", "list"],
        &["volume", "show", "vm0"],
        &["status"],
    ] {
        // `tandem ... | head -0`: the reader is gone before the first line.
        let mut child = cli_into(&server, args, Stdio::piped());
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(out.status.success(), "{args:?}: {:?} {err}", out.status);

        // `tandem ... > /dev/full`: said in one line, no panic.
        let full = std::fs::File::create("/dev/full").unwrap();
        let out = cli_into(&server, args, full.into())
            .wait_with_output()
            .unwrap();
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("No space left on device"), "{args:?}: {err}");
    }
    let full = std::fs::File::create("/dev/full").unwrap();
    let out = Command::new(tandem_bin())
        .arg("version")
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

#[test]
fn every_command_that_changes_something_answers_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let v = json(&server.cli_ok(&["volume", "create", "vm1", "--size", "64M", "--json"]));
    assert_eq!(v["name"], "vm1");
    assert_eq!(v["size_bytes"], 64u64 << 20);
    let v = json(&server.cli_ok(&["volume", "resize", "vm1", "--size", "128M", "--json"]));
    assert_eq!(v["size_bytes"], 128u64 << 20);
    let v = json(&server.cli_ok(&[
        "volume",
        "access",
        "vm1",
        "--allow",
        "iqn.2026-11.test:host1",
        "--json",
    ]));
    assert_eq!(v["allowed_initiators"][0], "iqn.2026-11.test:host1");
    let v = json(&server.cli_ok(&["volume", "delete", "vm1", "--json"]));
    assert_eq!(v["deleted"], "vm1");

    let v = json(&server.cli_ok(&["version", "--json"]));
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let text = server.cli_ok(&["version"]);
    assert_eq!(text.trim(), format!("tandem {}", env!("CARGO_PKG_VERSION")));

    // The join command names this node's real endpoint, and scripts get the
    // token without scraping.
    let init = json(&server.cli_ok(&["cluster", "init", "--json"]));
    assert!(init["token"].as_str().unwrap().starts_with("tandem-join:"));
    assert_eq!(init["endpoint"], server.cluster_addr());
}

#[test]
fn cluster_init_prints_the_command_that_joins() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let out = server.cli_ok(&["cluster", "init"]);
    let expected = format!(
        "tandem cluster join {} --token tandem-join:",
        server.cluster_addr()
    );
    assert!(out.contains(&expected), "{out}");
}

#[test]
fn sizes_and_addresses_are_refused_in_the_users_terms() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));

    let out = server.cli(&["volume", "create", "x", "--size", "-1"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("negative"), "{err}");
    assert!(!err.contains("-- -1"), "{err}");

    server.cli_ok(&["volume", "create", "vm1", "--size", "1G"]);
    let err = stderr(&server.cli(&["volume", "resize", "vm1", "--size", "128M"]));
    assert!(err.contains("1 GiB") && err.contains("128 MiB"), "{err}");

    // Larger than ext4 takes in one file (16 TiB): refused before any file
    // is made. (A filesystem that takes it makes a thin volume.)
    let volumes = dir.path().join("data").join("volumes");
    let before = std::fs::read_dir(&volumes).unwrap().count();
    let out = server.cli(&["volume", "create", "huge", "--size", "100P"]);
    if !out.status.success() {
        let err = stderr(&out);
        assert!(err.contains("100 PiB") && err.contains("at most"), "{err}");
        assert!(!err.contains("os error"), "{err}");
        assert_eq!(std::fs::read_dir(&volumes).unwrap().count(), before);
        let out = server.cli(&["volume", "resize", "vm1", "--size", "100P"]);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains("100 PiB") && !err.contains("I/O error"),
            "{err}"
        );
    }

    for bad in ["3260", "localhost:3260"] {
        let out = Command::new(tandem_bin())
            .args(["serve", "--iscsi-listen", bad])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(err.contains("127.0.0.1:3260"), "{bad}: {err}");
    }
}

#[test]
fn volume_list_keeps_its_columns_for_long_names() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let long = "a-volume-name-that-is-much-longer-than-the-column-was-012345678";
    assert_eq!(long.len(), 63);
    server.cli_ok(&["volume", "create", long, "--size", "64M"]);
    server.cli_ok(&["volume", "create", "short", "--size", "64M"]);
    let list = server.cli_ok(&["volume", "list"]);
    let mut lines = list.lines();
    let head = lines.next().unwrap();
    let iqn_at = head.find("IQN").unwrap();
    let size_end = head.find("SIZE").unwrap() + 4;
    for row in lines {
        assert_eq!(row.find("iqn."), Some(iqn_at), "\n{list}");
        assert_eq!(
            row.find("64 MiB").map(|p| p + 6),
            Some(size_end),
            "\n{list}"
        );
    }
}

#[test]
fn help_lists_only_the_options_of_each_side() {
    let help = |args: &[&str]| {
        let out = Command::new(tandem_bin()).args(args).output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    for server in ["serve", "witness"] {
        let text = help(&[server, "--help"]);
        assert!(!text.contains("--api "), "{text}");
        assert!(!text.contains("--token-file"), "{text}");
        assert!(text.contains("--threads"), "{text}");
    }
    let text = help(&["volume", "list", "--help"]);
    assert!(
        text.contains("--api") && text.contains("--token-file"),
        "{text}"
    );
    assert!(!text.contains("--threads"), "{text}");
    let text = help(&["witness", "--help"]);
    assert_eq!(text.matches("./tandem-witness").count(), 1, "{text}");
    assert!(text.contains("[default: 127.0.0.1:7400]"), "{text}");
}

#[test]
fn the_client_options_work_after_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let out = Command::new(tandem_bin())
        .args(["volume", "list", "--api"])
        .arg(format!("127.0.0.1:{}", server.api_port))
        .arg("--token-file")
        .arg(dir.path().join("data").join("api.token"))
        .env("TANDEM_API", "127.0.0.1:1")
        .env_remove("TANDEM_DATA_DIR")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn serve_refuses_a_mistyped_data_dir_and_a_busy_port_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    // A server that starts where it should not is stopped after 10 s (and
    // the test fails on its exit status).
    let serve = |data: &Path, iscsi: &str| {
        let mut child = Command::new(tandem_bin())
            .args(["serve", "--data-dir", data.to_str().unwrap()])
            .args(["--iscsi-listen", iscsi])
            .arg("--api-listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait_with_output().unwrap()
    };
    let typo = dir.path().join("no-such-dir").join("data");
    let out = serve(&typo, &format!("127.0.0.1:{}", free_port()));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("no-such-dir") && err.contains("does not exist"),
        "{err}"
    );
    assert!(!dir.path().join("no-such-dir").exists());

    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let fresh = dir.path().join("fresh");
    let out = serve(&fresh, &busy.local_addr().unwrap().to_string());
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("cannot listen for iSCSI"), "{err}");
    assert!(!fresh.exists(), "a new installation was written");
}

/// A `tandem serve` started with `--config` alone, its stderr in a file.
struct ConfiguredServer {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Drop for ConfiguredServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serve_takes_every_setting_from_its_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (iscsi, api, control, repl) = (free_port(), free_port(), free_port(), free_port());
    let config = dir.path().join("tandem.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\n\
             iscsi_listen = \"127.0.0.1:{iscsi}\"\n\
             api_listen = \"127.0.0.1:{api}\"\n\
             cluster_listen = \"127.0.0.1:{control}\"\n\
             repl_listen = \"127.0.0.1:{repl}\"\n\
             advertise = \"127.0.0.1\"\n\
             node_name = \"from-the-file\"\n\
             threads = 1\n"
        ),
    )
    .unwrap();
    let log = dir.path().join("serve.log");
    let child = Command::new(tandem_bin())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env_remove("TANDEM_LOG")
        .env_remove("TANDEM_DATA_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let server = ConfiguredServer { child, log };
    let cli = |args: &[&str]| {
        Command::new(tandem_bin())
            .args(args)
            .env("TANDEM_API", format!("127.0.0.1:{api}"))
            .env("TANDEM_DATA_DIR", &data)
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cli(&["status"]).status.success() {
        assert!(
            Instant::now() < deadline,
            "{}",
            std::fs::read_to_string(&server.log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = cli(&["cluster", "init", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        json(&String::from_utf8_lossy(&out.stdout))["endpoint"],
        format!("127.0.0.1:{control}")
    );

    let out = cli(&["status", "--json"]);
    let s = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(s["listen"]["iscsi"], format!("127.0.0.1:{iscsi}"));
    assert_eq!(s["listen"]["replication"], format!("127.0.0.1:{repl}"));
    assert_eq!(s["cluster"]["members"][0]["name"], "from-the-file");
    assert_eq!(s["cluster"]["members"][0]["liveness"], "up");
    assert!(s["filesystem_free_bytes"].as_u64().unwrap() > 0, "{s}");

    // A 15 TiB thin volume on a filesystem with less free: accepted, with a
    // word about it, and `tandem status` shows it.
    let out = cli(&["volume", "create", "big", "--size", "15T"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let free = s["filesystem_free_bytes"].as_u64().unwrap();
    if free < 15 << 40 {
        assert!(
            stderr(&out).contains("writes will fail once it is full"),
            "{}",
            stderr(&out)
        );
        let text = String::from_utf8(cli(&["status"]).stdout).unwrap();
        assert!(text.contains("overcommit"), "{text}");
        assert!(text.contains("filesystem"), "{text}");
        assert!(
            text.contains(&format!("iscsi         127.0.0.1:{iscsi}")),
            "{text}"
        );
        assert!(text.contains("from-the-file (this node)"), "{text}");
    }

    // Logged to a file: no colour codes, and none of the Raft engine's
    // routine chatter at the default level.
    let text = std::fs::read_to_string(&server.log).unwrap();
    assert!(text.contains("tandem serving"), "{text}");
    assert!(!text.contains('\u{1b}'), "colour codes in a file:\n{text}");
    assert!(!text.contains("RaftState"), "{text}");
    assert!(!text.contains("openraft"), "{text}");
}

#[test]
fn a_dead_member_is_down_by_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let (a, mut b, _witness, _token) = on_loopback(dir.path());
    let b_name = format!("node-{}-{}", b.host, b.iscsi_port);
    a.cli_ok(&["volume", "create", "v", "--size", "64M", "--replicas", "1"]);
    let out = a.cli_ok(&["volume", "add-replica", "v", "--node", &b_name]);
    assert!(out.contains(&format!("new copy on {b_name}")), "{out}");

    let status = a.cli_ok(&["cluster", "status"]);
    let a_name = format!("node-{}-{}", a.host, a.iscsi_port);
    assert!(status.contains(&format!("this node {a_name}")), "{status}");
    assert!(!status.contains("DOWN"), "{status}");

    b.kill();
    wait_until("b shown as DOWN", 30, || {
        a.cli_ok(&["cluster", "status"])
            .lines()
            .any(|l| l.contains(&b_name) && l.contains("DOWN"))
    });
}

#[test]
fn qemu_logs_in_under_the_initiator_name_its_image_options_give() {
    common::require_tool("qemu-img");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    server.cli_ok(&["volume", "create", "vm1", "--size", "64M"]);
    let host = "iqn.2026-11.test:qemu-host";
    server.cli_ok(&["volume", "access", "vm1", "--allow", host]);
    let info = |opts: &str| {
        Command::new("qemu-img")
            .args(["info", "--image-opts", opts])
            .output()
            .unwrap()
    };
    let opts = format!(
        "driver=iscsi,transport=tcp,portal={},target={}:vm1,lun=0",
        server.portal(),
        common::node_prefix()
    );
    // As the README shows it: admitted.
    let out = info(&format!("{opts},initiator-name={host}"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("64 MiB"));
    // Under qemu's own default name: refused.
    assert!(!info(&opts).status.success());
}

#[test]
fn serve_says_an_existing_data_dir_is_not_writable() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // Root writes anywhere: the server runs as nobody then, in a directory
    // root owns; anyone else gets a directory without write permission.
    let mut cmd = if running_as_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            tandem_bin(),
        ]);
        c
    } else {
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o555)).unwrap();
        Command::new(tandem_bin())
    };
    let out = cmd
        .args(["serve", "--data-dir", data.to_str().unwrap()])
        .arg("--iscsi-listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--api-listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("is not writable by this user"), "{err}");
    assert_eq!(std::fs::read_dir(&data).unwrap().count(), 0);
}

/// Whether the test runs as root (whom file permissions do not stop).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

#[test]
fn completions_and_the_manual_page_come_from_the_command_line_itself() {
    let run = |args: &[&str]| {
        let out = Command::new(tandem_bin()).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("tandem.bash");
    std::fs::write(&script, run(&["completions", "bash"])).unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p tandem", script.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("_tandem"));
    for shell in ["zsh", "fish"] {
        assert!(
            run(&["completions", shell]).contains("add-replica"),
            "{shell}"
        );
    }

    let page = run(&["man"]);
    assert!(page.contains(".TH tandem 1"), "{page}");
    for sub in ["serve", "volume", "cluster", "witness"] {
        assert!(page.contains(sub), "{sub} missing:\n{page}");
    }
    let groff = Command::new("sh")
        .args(["-c", "command -v groff"])
        .output()
        .is_ok_and(|o| o.status.success());
    if groff {
        let path = dir.path().join("tandem.1");
        std::fs::write(&path, &page).unwrap();
        let out = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn serve_logs_one_json_object_per_line_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let api = free_port();
    let log = dir.path().join("serve.log");
    let child = Command::new(tandem_bin())
        .args(["serve", "--log-format", "json", "--data-dir"])
        .arg(&data)
        .arg("--iscsi-listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--api-listen")
        .arg(format!("127.0.0.1:{api}"))
        .env_remove("TANDEM_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut server = ConfiguredServer { child, log };
    let ready = || {
        Command::new(tandem_bin())
            .arg("status")
            .env("TANDEM_API", format!("127.0.0.1:{api}"))
            .env("TANDEM_DATA_DIR", &data)
            .output()
            .unwrap()
            .status
            .success()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "{}",
            std::fs::read_to_string(&server.log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(server.child.wait().unwrap().success());
    let text = std::fs::read_to_string(&server.log).unwrap();
    let mut messages = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        messages.push(
            v["fields"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    assert!(messages.iter().any(|m| m == "tandem serving"), "{text}");
    assert!(
        messages.iter().any(|m| m.starts_with("all volumes synced")),
        "{text}"
    );
}

/// The management API takes connections only once its token file exists:
/// a script that waits for the port and then runs the CLI never finds the
/// token missing. Polled every millisecond from the start of a new node.
#[test]
fn the_api_listens_only_once_its_token_is_there() {
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (iscsi, api) = (free_port(), free_port());
        let mut child = Command::new(tandem_bin())
            .args(["serve", "--data-dir"])
            .arg(&data)
            .args(["--iscsi-listen", &format!("127.0.0.1:{iscsi}")])
            .args(["--api-listen", &format!("127.0.0.1:{api}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let answered = loop {
            if std::net::TcpStream::connect(("127.0.0.1", api)).is_ok() {
                break true;
            }
            if start.elapsed() > Duration::from_secs(30) {
                break false;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let token = data.join("api.token").exists();
        let _ = child.kill();
        let _ = child.wait();
        assert!(answered, "round {round}: the API never listened");
        assert!(
            token,
            "round {round}: the API listened before its token existed"
        );
    }
}
