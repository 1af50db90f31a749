//! Rolling upgrade from an earlier build of Tandem itself, with real
//! processes on loopback. Opt-in (`#[ignore]`): `scripts/upgrade.sh` runs
//! it. The test builds an earlier commit (`TANDEM_UPGRADE_FROM`, a5a073e
//! unless set: log version 2, the same replication protocol) in a git
//! worktree of this repository with a target directory of its own, both
//! under `<target dir>/upgrade-from/<commit>` (or `TANDEM_UPGRADE_DIR`),
//! reused when the binary is there.
//!
//! Two data nodes and a witness (and, in the second test, three data
//! nodes) start on the old binary; a volume with a copy on every data node
//! takes FUA writes from one initiator through each node, each moving to
//! another path as multipath does while its own is standby or away. One
//! member at a time goes to the binary under test: `node maintenance
//! enter` (asked of another data node, with that node's CLI), stop, start
//! of the new binary on the same data directory, `maintenance exit`, every
//! copy back in sync. Then one data node goes back to the old binary while
//! the others are new, and up again.
//!
//! At every step `cluster status` of every data node shows each member's
//! log version as its binary's; a snapshot of the cluster volume (log
//! version 3) is refused with the reason while an old member remains and
//! taken once all are new (only then: a volume with snapshots cannot be
//! mirrored to an old member, so the downgrade comes first). At the end no
//! command failed at the initiators, and every acknowledged write reads
//! back through every node and from every data file. Each step's longest
//! wait between two acknowledged writes of an initiator is printed as that
//! node's I/O pause, beside the pause `maintenance enter` reports.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{
    node_id, status, verify, volume_file, wait_converged, wait_until, Witness, BLOCK, EXTENT,
};
use common::{tandem_bin, Server};
use testkit::history::{block, History};
use testkit::{rw16, Initiator};

const VOLUME: &str = "vm";
const SIZE: u64 = 64 << 20;
/// Extents per initiator; each writes its own.
const EXTENTS: u64 = 32;
/// The commit upgraded from unless `TANDEM_UPGRADE_FROM` names another.
const DEFAULT_FROM: &str = "a5a073e";

/// The earlier build: its binary and the log version it reads.
struct Old {
    bin: PathBuf,
    log_version: u64,
}

/// Builds (or finds built) `tandem` of the commit to upgrade from.
fn old_build() -> Old {
    // The tests of this file run in one process: one builds, the other waits.
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let commit = std::env::var("TANDEM_UPGRADE_FROM").unwrap_or_else(|_| DEFAULT_FROM.into());
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // <target>/debug/tandem: the build under test's target directory.
    let target = Path::new(tandem_bin())
        .parent()
        .and_then(Path::parent)
        .expect("target directory of the binary under test");
    let root = std::env::var_os("TANDEM_UPGRADE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target.join("upgrade-from"));
    let dir = root.join(&commit);
    let src = dir.join("src");
    let bin = dir.join("target/debug/tandem");
    if !src.join("Cargo.toml").exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["worktree", "add", "--detach"])
            .arg(&src)
            .arg(&commit)
            .output()
            .expect("run git");
        assert!(
            out.status.success(),
            "git worktree add of {commit} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if !bin.exists() {
        eprintln!("building tandem at {commit} in {}", dir.display());
        let t = Instant::now();
        let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "-p", "tandem"])
            .current_dir(&src)
            .env("CARGO_TARGET_DIR", dir.join("target"))
            // Only the binary is needed: no debug info, no incremental state.
            .env("CARGO_PROFILE_DEV_DEBUG", "false")
            .env("CARGO_INCREMENTAL", "0")
            .status()
            .expect("run cargo");
        assert!(out.success(), "building tandem at {commit} failed");
        eprintln!("built in {:.0} s", t.elapsed().as_secs_f64());
    }
    let lib = std::fs::read_to_string(src.join("crates/cluster/src/lib.rs")).unwrap();
    let log_version = lib
        .lines()
        .find_map(|l| l.trim().strip_prefix("pub const LOG_VERSION: u32 = "))
        .and_then(|v| v.trim_end_matches(';').parse().ok())
        .unwrap_or_else(|| panic!("no LOG_VERSION in {commit}"));
    assert!(
        log_version < cluster::LOG_VERSION as u64,
        "{commit} reads log version {log_version}, not older than this build's"
    );
    Old { bin, log_version }
}

/// What one initiator saw.
struct Seen {
    history: History,
    acknowledged: u64,
    /// Writes that ended with an error at the initiator.
    failed: u64,
    /// Moves to the other path (its node went standby, stopped, or came
    /// back as the initiator's own path).
    path_moves: u64,
    /// Microseconds since the start at which each write was acknowledged.
    acks: Vec<u64>,
}

/// How one write on a path ended.
enum Sent {
    Acknowledged,
    /// The path is standby, unavailable or gone: multipath resends elsewhere.
    PathDown,
    Failed,
}

/// One FUA write of extent `n` as write `seq` on session `i`, retrying
/// unit attentions and transitions (about 2 s) as initiators do.
async fn send(i: &mut Initiator, h: &mut History, n: u64, seq: u64) -> Sent {
    let lba = n * EXTENT;
    let mut data = Vec::with_capacity(EXTENT as usize * BLOCK);
    for b in lba..lba + EXTENT {
        data.extend(block(seq, b, BLOCK));
    }
    h.issued(lba, EXTENT, seq);
    for _ in 0..40 {
        let o = tokio::time::timeout(
            Duration::from_secs(5),
            i.run(&rw16(0x8A, lba, EXTENT as u32, true), &data, 0),
        )
        .await;
        let Ok(Some(o)) = o else {
            return Sent::PathDown;
        };
        if o.status == 0 {
            h.durable(lba, EXTENT, seq);
            return Sent::Acknowledged;
        }
        match (o.sense_key, o.asc) {
            (6, _) => {}
            (2, (0x04, 0x0A)) => tokio::time::sleep(Duration::from_millis(50)).await,
            (2, (0x04, 0x0B)) | (2, (0x04, 0x0C)) => return Sent::PathDown,
            _ => {
                eprintln!(
                    "write {seq} failed: sense key {:#x} asc {:02x?}",
                    o.sense_key, o.asc
                );
                return Sent::Failed;
            }
        }
    }
    Sent::Failed
}

/// A logged-in session to the volume at `portal`, unit attentions
/// cleared; `None` when the portal refuses, drops or does not answer in 3 s.
async fn try_session(portal: SocketAddr) -> Option<Initiator> {
    let target = format!("{}:{VOLUME}", common::node_prefix());
    let mut i = Initiator::try_normal(portal, &target, Duration::from_secs(3)).await?;
    for _ in 0..4 {
        let o = tokio::time::timeout(Duration::from_secs(3), i.run(&[0u8; 6], &[], 0))
            .await
            .ok()??;
        if o.status == 0 {
            break;
        }
    }
    Some(i)
}

/// A session on the first of `paths` (from `home`) that logs in.
async fn connect(paths: &[SocketAddr], home: usize) -> (Initiator, usize) {
    let t = Instant::now();
    loop {
        for k in 0..paths.len() {
            let p = (home + k) % paths.len();
            if let Some(s) = try_session(paths[p]).await {
                return (s, p);
            }
        }
        assert!(t.elapsed() < Duration::from_secs(60), "no path logs in");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes extents `first..first + EXTENTS` through `paths[home]` until
/// `stop`, moving to another path while its own is down and back to its
/// own every 2 s.
fn writer(
    paths: Vec<SocketAddr>,
    home: usize,
    first: u64,
    start: Instant,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Seen> {
    tokio::spawn(async move {
        let mut seen = Seen {
            history: History::default(),
            acknowledged: 0,
            failed: 0,
            path_moves: 0,
            acks: Vec::new(),
        };
        let (mut s, mut on) = connect(&paths, home).await;
        let mut away_since = Instant::now();
        let mut seq = first * 1_000_000;
        while !stop.load(Ordering::Acquire) {
            if on != home && away_since.elapsed() > Duration::from_secs(2) {
                away_since = Instant::now();
                if let Some(h) = try_session(paths[home]).await {
                    (s, on) = (h, home);
                    seen.path_moves += 1;
                }
            }
            seq += 1;
            match send(&mut s, &mut seen.history, first + seq % EXTENTS, seq).await {
                Sent::Acknowledged => {
                    seen.acknowledged += 1;
                    seen.acks.push(start.elapsed().as_micros() as u64);
                }
                Sent::Failed => seen.failed += 1,
                Sent::PathDown => {
                    seen.path_moves += 1;
                    (s, on) = connect(&paths, (on + 1) % paths.len()).await;
                    away_since = Instant::now();
                }
            }
        }
        seen
    })
}

/// The longest wait between two acknowledgements in `acks` (microseconds
/// since the start) that ends within `from..to`.
fn longest_gap(acks: &[u64], from: u64, to: u64) -> u64 {
    acks.windows(2)
        .filter(|w| w[1] >= from && w[1] <= to)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or(0)
}

/// The members, what each runs, and how to ask them.
struct Cluster {
    nodes: Vec<Server>,
    witness: Option<Witness>,
    /// Member ids: the data nodes in order, then the witness.
    ids: Vec<u64>,
    /// Whether each member (same order) runs the old binary.
    old: Vec<bool>,
    old_log: u64,
}

impl Cluster {
    /// The log version member `k` must report.
    fn expected_log(&self, k: usize) -> u64 {
        if self.old[k] {
            self.old_log
        } else {
            cluster::LOG_VERSION as u64
        }
    }

    /// Waits until every data node's `cluster status` shows every member's
    /// log version as its binary's (text and JSON).
    fn check_versions(&self, step: &str) {
        for via in &self.nodes {
            let t = Instant::now();
            loop {
                let v = status(via);
                let text = via.cli_ok(&["cluster", "status"]);
                let wrong: Vec<String> = self
                    .ids
                    .iter()
                    .enumerate()
                    .filter_map(|(k, id)| {
                        let want = self.expected_log(k);
                        let got = v["versions"][id.to_string()]["log_version"].as_u64();
                        let line = text
                            .lines()
                            .find(|l| l.split_whitespace().next() == Some(&id.to_string()))
                            .unwrap_or("");
                        let shown = line.contains(&format!("(log {want})"));
                        (got != Some(want) || !shown).then(|| {
                            format!("member {id}: want log {want}, JSON {got:?}, line {line:?}")
                        })
                    })
                    .collect();
                if wrong.is_empty() {
                    break;
                }
                assert!(
                    t.elapsed() < Duration::from_secs(20),
                    "{step}: cluster status of {} shows wrong versions: {wrong:#?}\n{text}",
                    via.portal()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        eprintln!(
            "{step}: versions {}",
            self.ids
                .iter()
                .enumerate()
                .map(|(k, id)| format!("{id}=log {}", self.expected_log(k)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    /// Snapshots of the cluster volume: refused, saying why, by every data
    /// node while an old member remains; taken once every member is new.
    fn check_snapshots(&self, name: &str) -> bool {
        let all_new = !self.old.iter().any(|o| *o);
        for (k, n) in self.nodes.iter().enumerate() {
            let out = n.cli(&["snapshot", "create", VOLUME, "--name", name]);
            let why = String::from_utf8_lossy(&out.stderr).into_owned();
            if all_new {
                assert!(
                    out.status.success(),
                    "snapshot refused once all are new: {why}"
                );
                let list = n.cli_ok(&["snapshot", "list", VOLUME]);
                assert!(list.contains(name), "{list}");
                return true;
            }
            assert!(
                !out.status.success(),
                "a snapshot was taken with an old member"
            );
            if !self.old[k] {
                let old = self.ids[self.old.iter().position(|o| *o).unwrap()];
                assert!(
                    why.contains("does not record snapshots") && why.contains("upgrade it first"),
                    "{why}"
                );
                // Names an old member (the first found may be any of them).
                assert!(
                    self.ids
                        .iter()
                        .zip(&self.old)
                        .any(|(id, o)| *o && why.contains(&format!("node {id} "))),
                    "the refusal names no old member (e.g. {old}): {why}"
                );
            }
            eprintln!(
                "  snapshot via {} node {}: refused: {}",
                if self.old[k] { "old" } else { "new" },
                self.ids[k],
                why.trim()
            );
        }
        false
    }

    /// Moves member `k` to `bin`: maintenance enter (asked of another data
    /// node), stop, start on `bin`, maintenance exit, every copy in sync.
    /// Returns the pause `enter` reported, when it moved the volume.
    fn swap(&mut self, k: usize, bin: &Path, old: bool) -> Option<String> {
        let id = self.ids[k].to_string();
        let via = if k == 0 { 1 } else { 0 };
        let out = self.nodes[via].cli_ok(&["node", "maintenance", "enter", &id]);
        assert!(out.contains("is in maintenance"), "{out}");
        let paused = out
            .split("I/O paused ")
            .nth(1)
            .and_then(|r| r.split(" ms").next())
            .map(str::to_string);
        if k < self.nodes.len() {
            self.nodes[k].stop();
            self.nodes[k].set_binary(bin);
            self.nodes[k].restart();
        } else {
            let w = self.witness.as_mut().expect("a witness");
            w.stop();
            w.set_binary(bin);
            w.restart();
        }
        self.old[k] = old;
        let asker = &self.nodes[via];
        wait_until("the member is seen up again", 60, || {
            asker
                .cli_ok(&["cluster", "status"])
                .lines()
                .find(|l| l.split_whitespace().next() == Some(id.as_str()))
                .is_some_and(|l| l.contains(" up"))
        });
        let out = self.nodes[via].cli_ok(&["node", "maintenance", "exit", &id]);
        assert!(out.contains("is out of maintenance"), "{out}");
        let nodes: Vec<&Server> = self.nodes.iter().collect();
        wait_converged(&nodes, VOLUME, 120).unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
        paused
    }

    /// The last lines of every member's log, for failure messages.
    fn logs(&self) -> String {
        let tail = |name: String, text: String| {
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(60);
            format!("--- {name}:\n{}", lines[from..].join("\n"))
        };
        let mut out: Vec<String> = self
            .nodes
            .iter()
            .zip(&self.ids)
            .map(|(n, id)| tail(format!("node {id}"), n.log_text()))
            .collect();
        if let Some(w) = &self.witness {
            out.push(tail("witness".into(), w.log_text()));
        }
        out.join("\n")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "builds an earlier commit of Tandem (minutes the first time); scripts/upgrade.sh"]
async fn two_nodes_and_a_witness_upgrade_one_at_a_time_under_writes() {
    // (member, to the old binary?, what the step is); the witness is member 2.
    rolling(
        2,
        &[
            (0, false, "node a upgraded"),
            (2, false, "witness upgraded"),
            (1, false, "node b upgraded"),
            (1, true, "node b downgraded"),
            (1, false, "node b upgraded again"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "builds an earlier commit of Tandem (minutes the first time); scripts/upgrade.sh"]
async fn three_data_nodes_upgrade_one_at_a_time_under_writes() {
    rolling(
        3,
        &[
            (0, false, "node a upgraded"),
            (1, false, "node b upgraded"),
            (2, false, "node c upgraded"),
            (0, true, "node a downgraded"),
            (0, false, "node a upgraded again"),
        ],
    )
    .await;
}

/// `data_nodes` data nodes (and a witness when two) on the old binary, a
/// volume with a copy on each, an initiator writing through each node, and
/// `steps` (member, to the old binary?, name) one after the other.
async fn rolling(data_nodes: usize, steps: &[(usize, bool, &str)]) {
    let old = old_build();
    let new = PathBuf::from(tandem_bin());
    let dir = tempfile::tempdir().unwrap();
    let names = ["a", "b", "c"];
    let nodes: Vec<Server> = names[..data_nodes]
        .iter()
        .map(|n| Server::start_binary(&dir.path().join(n), &old.bin))
        .collect();
    let others: Vec<&Server> = nodes[1..].iter().collect();
    let token = common::cluster::form(&nodes[0], &others);
    let witness = (data_nodes == 2).then(|| {
        Witness::start_binary(
            &dir.path().join("w"),
            "127.0.0.1",
            None,
            &nodes[0].cluster_addr(),
            &token,
            &old.bin,
            None,
        )
    });
    common::cluster::wait_members(&nodes[0], 3);
    nodes[0].cli_ok(&[
        "volume",
        "create",
        VOLUME,
        "--size",
        &SIZE.to_string(),
        "--replicas",
        &data_nodes.to_string(),
    ]);
    {
        let all: Vec<&Server> = nodes.iter().collect();
        wait_converged(&all, VOLUME, 60).unwrap_or_else(|e| panic!("{e}"));
    }
    let mut ids: Vec<u64> = nodes.iter().map(node_id).collect();
    if witness.is_some() {
        let idw = status(&nodes[0])["status"]["state"]["nodes"]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.parse::<u64>().unwrap())
            .find(|n| !ids.contains(n))
            .expect("the witness's id");
        ids.push(idw);
    }
    let members = ids.len();
    let mut c = Cluster {
        nodes,
        witness,
        ids,
        old: vec![true; members],
        old_log: old.log_version,
    };
    c.check_versions("all old");
    c.check_snapshots("s0");

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let paths: Vec<SocketAddr> = c.nodes.iter().map(Server::portal).collect();
    let writers: Vec<_> = (0..data_nodes)
        .map(|k| writer(paths.clone(), k, k as u64 * EXTENTS, start, stop.clone()))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut pauses = Vec::new();
    for &(k, to_old, what) in steps {
        let from = start.elapsed().as_micros() as u64;
        let bin = if to_old { &old.bin } else { &new };
        let t = Instant::now();
        let reported = c.swap(k, bin, to_old);
        let took = t.elapsed();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let to = start.elapsed().as_micros() as u64;
        pauses.push((what, reported, took, from, to));
        c.check_versions(what);
        // Once taken, a snapshot is a volume an old member cannot serve
        // (its peers ask it with an operation it does not read): none is
        // taken before the last step.
        if c.old.iter().any(|o| *o) {
            c.check_snapshots(&format!("s{}", pauses.len()));
        }
    }
    assert!(c.check_snapshots("after"), "all new: the snapshot is taken");
    tokio::time::sleep(Duration::from_millis(500)).await;

    stop.store(true, Ordering::Release);
    let mut all = Vec::new();
    for w in writers {
        all.push(w.await.expect("writer"));
    }
    for (what, reported, took, from, to) in &pauses {
        let gaps: Vec<String> = all
            .iter()
            .map(|s| format!("{} ms", longest_gap(&s.acks, *from, *to) / 1000))
            .collect();
        eprintln!(
            "{what}: step took {:.1} s; the switchover paused I/O {}; longest wait per initiator: {}",
            took.as_secs_f64(),
            reported
                .as_deref()
                .map(|p| format!("{p} ms"))
                .unwrap_or_else(|| "- (led nothing)".into()),
            gaps.join(", ")
        );
    }
    let mut history = History::default();
    for (k, s) in all.iter().enumerate() {
        eprintln!(
            "initiator {k}: {} writes acknowledged, {} failed, {} path moves",
            s.acknowledged, s.failed, s.path_moves
        );
        assert_eq!(s.failed, 0, "a command failed at initiator {k}");
        assert!(s.acknowledged > 100, "initiator {k}: {}", s.acknowledged);
    }
    for s in all {
        history.absorb(s.history);
    }
    let extents = data_nodes as u64 * EXTENTS;
    for n in &c.nodes {
        verify(n.portal(), VOLUME, extents, &history).await;
    }
    for n in &mut c.nodes {
        n.stop();
    }
    for n in &c.nodes {
        let data = std::fs::read(volume_file(n)).unwrap();
        let len = (extents * EXTENT) as usize * BLOCK;
        if let Err(errors) = history.check_range(0, &data[..len], BLOCK) {
            panic!(
                "{} blocks wrong in the copy of {}: {:#?}",
                errors.len(),
                n.data_dir.display(),
                &errors[..errors.len().min(10)]
            );
        }
    }
}
