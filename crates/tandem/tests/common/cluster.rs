//! What the cluster scenario tests share: forming a cluster of `tandem`
//! processes, a witness, an initiator that writes numbered extents (FUA) and
//! records them in a history, and the checks run after each scenario.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use testkit::history::{block, History};
use testkit::{rw16, Initiator};

use super::{free_port, node_prefix, tandem_bin, Server};

/// Block size of the test volumes.
pub const BLOCK: usize = 512;
/// Blocks per write.
pub const EXTENT: u64 = 8;

/// A `tandem witness` process.
pub struct Witness {
    child: Option<Child>,
    /// Its cluster endpoint.
    pub addr: String,
    /// The arguments it was started with, to start it again.
    args: Vec<String>,
    netns: Option<String>,
    /// The `tandem` binary it runs.
    bin: PathBuf,
    log: PathBuf,
    /// Where it serves its metrics (on loopback, with this build).
    pub metrics: Option<String>,
}

impl Witness {
    /// Starts a witness on `host` (in namespace `netns` when given) that
    /// joins through `seed` with `token`.
    pub fn start(dir: &Path, host: &str, netns: Option<&str>, seed: &str, token: &str) -> Witness {
        // Metrics on loopback only: a namespace's witness is reached by
        // address inside it.
        let metrics = netns
            .is_none()
            .then(|| format!("127.0.0.1:{}", free_port()));
        Witness::start_binary(
            dir,
            host,
            netns,
            seed,
            token,
            Path::new(tandem_bin()),
            metrics,
        )
    }

    /// [`Witness::start`] running `bin` (another build of `tandem`), with
    /// its metrics on `metrics` when given (a build that has the flag).
    pub fn start_binary(
        dir: &Path,
        host: &str,
        netns: Option<&str>,
        seed: &str,
        token: &str,
        bin: &Path,
        metrics: Option<String>,
    ) -> Witness {
        let port = if netns.is_some() { 7400 } else { free_port() };
        let listen = format!("{host}:{port}");
        let mut args = vec![
            "witness",
            "--data-dir",
            dir.to_str().unwrap(),
            "--listen",
            &listen,
            "--advertise",
            host,
            "--join",
            seed,
            "--token",
            token,
        ];
        if let Some(m) = &metrics {
            args.extend(["--metrics-listen", m]);
        }
        let mut w = Witness {
            child: None,
            addr: format!("{host}:{port}"),
            args: args.iter().map(|a| a.to_string()).collect(),
            netns: netns.map(str::to_string),
            bin: bin.to_path_buf(),
            log: dir.with_extension("log"),
            metrics,
        };
        w.spawn();
        w
    }

    fn spawn(&mut self) {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("witness log");
        // A witness that was a member rejoins from its data directory (the
        // join arguments are then ignored).
        let child = cmd
            .args(&self.args)
            .env("TANDEM_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start tandem witness");
        self.child = Some(child);
    }

    /// Process id of the running witness.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("witness running").id()
    }

    /// Whether the witness process runs (started and not killed or stopped).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the witness with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the witness with SIGTERM and waits for it to exit cleanly.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(
                        status.success(),
                        "tandem witness exited with {status}:\n{}",
                        self.log_text()
                    );
                    return;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("tandem witness ignored SIGTERM:\n{}", self.log_text());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Runs `bin` from the next [`Witness::restart`] on.
    pub fn set_binary(&mut self, bin: &Path) {
        self.bin = bin.to_path_buf();
    }

    /// Starts the witness again from its data directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "witness still running");
        self.spawn();
    }

    /// The witness's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `tandem cluster status --json` of `s`.
pub fn status(s: &Server) -> serde_json::Value {
    serde_json::from_str(&s.cli_ok(&["cluster", "status", "--json"])).unwrap()
}

/// `tandem cluster status --json` of `s`; `None` when it does not answer
/// within 5 s (stopped, cut off, or waiting for a leader that does not answer).
pub fn try_status(s: &Server) -> Option<serde_json::Value> {
    let out = s.cli_within(&["cluster", "status", "--json"], Duration::from_secs(5))?;
    serde_json::from_str(&out).ok()
}

/// What every node reports, for failure messages: its status, or that it
/// does not answer.
pub fn cluster_report(nodes: &[&Server]) -> String {
    nodes
        .iter()
        .map(|n| match try_status(n) {
            Some(v) => format!(
                "node at {}:\n{}",
                n.portal(),
                serde_json::to_string_pretty(&v).unwrap()
            ),
            None => format!("node at {}: no answer", n.portal()),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `volume` is back to normal as the nodes report it: each knows a
/// leader and the same primary and epoch, the control plane records every
/// copy in sync, and the primary has taken up its role with every peer
/// connected, in sync and nothing left to resync. `Err` says what is not.
pub fn converged(nodes: &[&Server], volume: &str) -> Result<(), String> {
    let mut seen = Vec::new();
    for n in nodes {
        let v = try_status(n).ok_or_else(|| format!("node at {} does not answer", n.portal()))?;
        seen.push(v);
    }
    let record = |v: &serde_json::Value| v["status"]["state"]["volumes"][volume].clone();
    let first = record(&seen[0]);
    let primary = first["primary"].as_u64();
    for (n, v) in nodes.iter().zip(&seen) {
        let r = record(v);
        if v["status"]["leader"].is_null() {
            return Err(format!("node at {} knows no leader", n.portal()));
        }
        if r["primary"].as_u64() != primary || r["epoch"] != first["epoch"] {
            return Err(format!(
                "the nodes disagree on the primary: {} vs {}",
                first["primary"], r["primary"]
            ));
        }
        let all_in_sync = r["replicas"]
            .as_object()
            .is_some_and(|c| c.values().all(|x| x["state"] == "in-sync"));
        if !all_in_sync {
            return Err(format!(
                "node at {} sees copies not in sync: {}",
                n.portal(),
                r["replicas"]
            ));
        }
    }
    let p = seen
        .iter()
        .find(|v| v["status"]["me"].as_u64() == primary)
        .ok_or_else(|| format!("primary {first} is not one of the nodes answering"))?;
    let peers = p["replication"][volume]
        .as_array()
        .ok_or_else(|| format!("node {primary:?} has not taken up the primary role yet"))?;
    for peer in peers {
        if peer["state"] != "in-sync" || peer["connected"] != true || peer["dirty_bytes"] != 0 {
            return Err(format!("the primary's peer is not caught up: {peer}"));
        }
    }
    Ok(())
}

/// Waits up to `secs` for [`converged`]; `Err` gives the last reason and
/// every node's status.
pub fn wait_converged(nodes: &[&Server], volume: &str, secs: u64) -> Result<Duration, String> {
    let t = Instant::now();
    loop {
        match converged(nodes, volume) {
            Ok(()) => return Ok(t.elapsed()),
            Err(why) if t.elapsed() > Duration::from_secs(secs) => {
                return Err(format!(
                    "volume {volume} not back in sync after {secs} s: {why}\n{}",
                    cluster_report(nodes)
                ))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Waits up to `secs` until [`converged`] has held for `stable` without a
/// break. A replica that stopped answering still counts as in sync until
/// the primary's replication timeout (2 s) runs out, so a copy compared
/// right after a heal may be about to be recorded out of sync and resynced;
/// `stable` past that timeout rules it out once writes have stopped.
pub fn wait_settled(
    nodes: &[&Server],
    volume: &str,
    secs: u64,
    stable: Duration,
) -> Result<Duration, String> {
    let t = Instant::now();
    let mut since: Option<Instant> = None;
    loop {
        match converged(nodes, volume) {
            Ok(()) => {
                let from = *since.get_or_insert_with(Instant::now);
                if from.elapsed() >= stable {
                    return Ok(t.elapsed());
                }
            }
            Err(why) if t.elapsed() > Duration::from_secs(secs) => {
                return Err(format!(
                    "volume {volume} not settled in sync after {secs} s: {why}\n{}",
                    cluster_report(nodes)
                ))
            }
            Err(_) => since = None,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Which of `nodes` is the primary of `volume`, as the first that answers sees it.
pub fn primary_index(nodes: &[&Server], volume: &str) -> Option<usize> {
    let v = nodes.iter().find_map(|n| try_status(n))?;
    let p = v["status"]["state"]["volumes"][volume]["primary"].as_u64()?;
    nodes
        .iter()
        .position(|n| try_status(n).and_then(|s| s["status"]["me"].as_u64()) == Some(p))
}

/// Waits up to `secs` for `f`, failing the test with `what`.
pub fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(secs), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Makes `first` a new cluster and joins `others`; returns the join token.
pub fn form(first: &Server, others: &[&Server]) -> String {
    let out = first.cli_ok(&["cluster", "init"]);
    let token = out
        .split_whitespace()
        .find(|w| w.starts_with("tandem-join:"))
        .expect("init prints a join token")
        .to_string();
    for o in others {
        o.cli_ok(&["cluster", "join", &first.cluster_addr(), "--token", &token]);
    }
    token
}

/// Two data nodes and a witness as processes on loopback, formed into a
/// cluster (every member seen): the nodes, the witness and the join token.
pub fn on_loopback(dir: &Path) -> (Server, Server, Witness, String) {
    let a = Server::start(&dir.join("a"));
    let b = Server::start(&dir.join("b"));
    let (witness, token) = with_witness(dir, &a, &[&b]);
    (a, b, witness, token)
}

/// Forms a cluster of `a` and `others` with a witness on loopback (its
/// state in `dir/w`) and waits until `a` sees every member: the witness
/// and the join token.
pub fn with_witness(dir: &Path, a: &Server, others: &[&Server]) -> (Witness, String) {
    let token = form(a, others);
    let witness = Witness::start(&dir.join("w"), "127.0.0.1", None, &a.cluster_addr(), &token);
    wait_members(a, others.len() + 2);
    (witness, token)
}

/// The name `s` has in the cluster, as its own status says.
pub fn node_name(s: &Server) -> String {
    let st = status(s);
    let me = st["status"]["me"].as_u64().unwrap();
    st["status"]["state"]["nodes"][me.to_string()]["name"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Waits until `s` sees `n` members.
pub fn wait_members(s: &Server, n: usize) {
    wait_until(&format!("{n} members"), 30, || {
        status(s)["status"]["state"]["nodes"]
            .as_object()
            .is_some_and(|m| m.len() == n)
    });
}

/// This node's id.
pub fn node_id(s: &Server) -> u64 {
    status(s)["status"]["me"].as_u64().unwrap()
}

/// The record of `volume` as `s` sees it.
pub fn volume_record(s: &Server, volume: &str) -> serde_json::Value {
    status(s)["status"]["state"]["volumes"][volume].clone()
}

/// Whether every copy of `volume` is in sync, as `s` sees it.
pub fn all_in_sync(s: &Server, volume: &str) -> bool {
    volume_record(s, volume)["replicas"]
        .as_object()
        .is_some_and(|r| r.values().all(|x| x["state"] == "in-sync"))
}

/// A logged-in session to `volume` at `portal`, unit attentions cleared;
/// None when the portal does not answer within 3 s.
pub async fn session(portal: SocketAddr, volume: &str) -> Option<Initiator> {
    let target = format!("{}:{volume}", node_prefix());
    let connect = async {
        let mut i = Initiator::normal(portal, &target, &[]).await;
        // Clear the power-on / ALUA unit attentions.
        for _ in 0..4 {
            if i.simple(&[0u8; 6]).await.0 == 0 {
                break;
            }
        }
        i
    };
    tokio::time::timeout(Duration::from_secs(3), connect)
        .await
        .ok()
}

/// A new session through `portal`, tried until one logs in (as an
/// initiator does after its connection dropped).
pub async fn session_again(portal: SocketAddr, volume: &str) -> Initiator {
    loop {
        if let Some(s) = session(portal, volume).await {
            return s;
        }
    }
}

/// The ALUA port groups `portal` reports for `volume` (REPORT TARGET PORT
/// GROUPS): (group id, asymmetric access state) each, in the target's order.
#[allow(dead_code)]
pub async fn port_groups(portal: SocketAddr, volume: &str) -> Vec<(u16, u8)> {
    let mut i = session(portal, volume).await.expect("session");
    let mut cdb = [0u8; 12];
    cdb[0] = 0xA3;
    cdb[1] = 0x0A;
    cdb[6..10].copy_from_slice(&1024u32.to_be_bytes());
    let o = i
        .run(&cdb, &[], 1024)
        .await
        .expect("REPORT TARGET PORT GROUPS");
    assert_eq!(o.status, 0, "REPORT TARGET PORT GROUPS failed: {:?}", o.asc);
    let len = u32::from_be_bytes(o.data[0..4].try_into().unwrap()) as usize;
    let mut groups = Vec::new();
    let mut at = 4;
    while at + 8 <= 4 + len {
        let d = &o.data[at..];
        groups.push((u16::from_be_bytes([d[2], d[3]]), d[0] & 0x0f));
        at += 8 + 4 * d[7] as usize;
    }
    groups
}

/// One FUA write of extent `n` as write `seq`: Some(true) when acknowledged,
/// Some(false) when refused, None when the connection failed or hung.
pub async fn write(i: &mut Initiator, h: &mut History, n: u64, seq: u64) -> Option<bool> {
    let lba = n * EXTENT;
    let mut data = Vec::with_capacity(EXTENT as usize * BLOCK);
    for b in lba..lba + EXTENT {
        data.extend(block(seq, b, BLOCK));
    }
    h.issued(lba, EXTENT, seq);
    // A unit attention (ALUA state changed, capacity, reset) is reported
    // once, and "access state transition" lasts while the cluster settles;
    // initiators retry both, as here (up to about 2 s).
    for _ in 0..40 {
        let o = tokio::time::timeout(
            Duration::from_secs(5),
            i.run(&rw16(0x8A, lba, EXTENT as u32, true), &data, 0),
        )
        .await
        .ok()??;
        if o.status == 0 {
            h.durable(lba, EXTENT, seq);
            return Some(true);
        }
        match (o.sense_key, o.asc) {
            (6, _) => {}
            (2, (0x04, 0x0A)) => tokio::time::sleep(Duration::from_millis(50)).await,
            _ => {
                eprintln!(
                    "write {seq} failed: sense key {:#x} asc {:02x?}",
                    o.sense_key, o.asc
                );
                return Some(false);
            }
        }
    }
    Some(false)
}

/// Writes through `portal` until one write is acknowledged (retrying with
/// new sessions as an initiator would); returns how long that took.
pub async fn write_until_acknowledged(
    portal: SocketAddr,
    volume: &str,
    h: &mut History,
    seq: &mut u64,
    extents: u64,
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    let mut n = 0;
    loop {
        assert!(start.elapsed() < limit, "I/O never resumed on {portal}");
        let Some(mut s) = session(portal, volume).await else {
            continue;
        };
        while start.elapsed() < limit {
            *seq += 1;
            n = (n + 1) % extents;
            match write(&mut s, h, n, *seq).await {
                Some(true) => return start.elapsed(),
                Some(false) => tokio::time::sleep(Duration::from_millis(50)).await,
                None => break,
            }
        }
    }
}

/// Reads the first `extents` extents of `volume` through `portal` and checks
/// every block against the history, 1 MiB a read (a larger volume takes
/// several).
pub async fn verify(portal: SocketAddr, volume: &str, extents: u64, h: &History) {
    let mut i = session(portal, volume)
        .await
        .expect("session for verification");
    let blocks = extents * EXTENT;
    let per_read = (1 << 20) / BLOCK as u64;
    for start in (0..blocks).step_by(per_read as usize) {
        let n = per_read.min(blocks - start) as u32;
        let mut o = None;
        for _ in 0..100 {
            let r = i
                .run(&rw16(0x88, start, n, false), &[], n * BLOCK as u32)
                .await
                .expect("read");
            match (r.status, r.sense_key, r.asc) {
                (0, _, _) => {
                    o = Some(r);
                    break;
                }
                // Retried like an initiator does while the node takes up its role.
                (_, 6, _) | (_, 2, (0x04, 0x0A)) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                _ => panic!(
                    "read failed: sense key {:#x} asc {:02x?}",
                    r.sense_key, r.asc
                ),
            }
        }
        let o = o.expect("reads kept failing with access state transition");
        if let Err(errors) = h.check_range(start, &o.data, BLOCK) {
            panic!(
                "{} blocks wrong: {:#?}",
                errors.len(),
                &errors[..errors.len().min(10)]
            );
        }
    }
}

/// The data file of the only volume of `s`.
pub fn volume_file(s: &Server) -> PathBuf {
    let dir = s.data_dir.join("volumes");
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path().join("data");
        if p.exists() {
            return p;
        }
    }
    panic!("no volume data under {}", dir.display());
}

/// The data file of the volume named `name` on `s`, when it holds several.
pub fn volume_file_named(s: &Server, name: &str) -> PathBuf {
    let dir = s.data_dir.join("volumes");
    for e in std::fs::read_dir(&dir).unwrap() {
        let d = e.unwrap().path();
        let Ok(meta) = std::fs::read(d.join("meta.json")) else {
            continue;
        };
        let meta: serde_json::Value = serde_json::from_slice(&meta).unwrap();
        if meta["name"] == name && d.join("data").exists() {
            return d.join("data");
        }
    }
    panic!("no data of volume {name} under {}", dir.display());
}

/// One node's acknowledgement windows of `volume` as (node, epoch, first, last, writes).
pub fn ack_windows(s: &Server, volume: &str) -> Vec<(u64, u64, u64, u64, u64)> {
    let v = status(s);
    let me = v["status"]["me"].as_u64().unwrap();
    v["acknowledged"][volume]
        .as_array()
        .map(|ws| {
            ws.iter()
                .map(|w| {
                    (
                        me,
                        w["epoch"].as_u64().unwrap(),
                        w["first_us"].as_u64().unwrap(),
                        w["last_us"].as_u64().unwrap(),
                        w["writes"].as_u64().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Fails unless the windows of different nodes are disjoint in time and
/// the later one has the newer epoch: at no moment did two nodes acknowledge
/// writes of the volume.
pub fn assert_one_writer(windows: &[(u64, u64, u64, u64, u64)]) {
    for (k, a) in windows.iter().enumerate() {
        for b in &windows[k + 1..] {
            if a.0 == b.0 {
                continue;
            }
            let (early, late) = if a.2 <= b.2 { (a, b) } else { (b, a) };
            assert!(
                early.3 < late.2 && early.1 < late.1,
                "two nodes acknowledged writes at once: node {} epoch {} from {} to {} us, node {} epoch {} from {} us",
                early.0,
                early.1,
                early.2,
                early.3,
                late.0,
                late.1,
                late.2
            );
        }
    }
}

/// A writer that keeps writing extents through one portal in the
/// background (reconnecting as an initiator would) until finished.
pub struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(History, u64, u64)>,
}

impl Writer {
    /// Starts writing through `portal`, going on with history `h` from `seq`.
    pub fn start(
        portal: SocketAddr,
        volume: &str,
        mut h: History,
        mut seq: u64,
        extents: u64,
    ) -> Writer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let volume = volume.to_string();
        let task = tokio::spawn(async move {
            let mut acked = 0;
            while !flag.load(std::sync::atomic::Ordering::Acquire) {
                let Some(mut s) = session(portal, &volume).await else {
                    continue;
                };
                while !flag.load(std::sync::atomic::Ordering::Acquire) {
                    seq += 1;
                    match write(&mut s, &mut h, seq % extents, seq).await {
                        Some(true) => acked += 1,
                        Some(false) => tokio::time::sleep(Duration::from_millis(50)).await,
                        None => break,
                    }
                }
            }
            (h, seq, acked)
        });
        Writer { stop, task }
    }

    /// Stops writing; the history, the last sequence number used and how
    /// many writes were acknowledged.
    pub async fn finish(self) -> (History, u64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        self.task.await.expect("writer task")
    }
}

/// What a [`counting_writer`] saw.
#[allow(dead_code)]
pub struct Seen {
    pub history: History,
    pub acknowledged: u64,
    pub failed: u64,
    pub dropped: u64,
}

/// Writes the first `extents` extents of `volume` through `portal` in
/// turn until `stop`, logging in again whenever the connection fails, and
/// counts what failed.
#[allow(dead_code)]
pub fn counting_writer(
    portal: SocketAddr,
    volume: &'static str,
    extents: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Seen> {
    tokio::spawn(async move {
        let mut seen = Seen {
            history: History::default(),
            acknowledged: 0,
            failed: 0,
            dropped: 0,
        };
        let mut s = session(portal, volume).await.expect("first session");
        let mut seq = 0;
        while !stop.load(std::sync::atomic::Ordering::Acquire) {
            seq += 1;
            match write(&mut s, &mut seen.history, seq % extents, seq).await {
                Some(true) => seen.acknowledged += 1,
                Some(false) => seen.failed += 1,
                None => {
                    seen.dropped += 1;
                    s = session_again(portal, volume).await;
                }
            }
        }
        seen
    })
}
