//! A node that starts must not acknowledge a write of a cluster volume
//! before it knows its role for it (issue #14, the restart window).
//!
//! Two data nodes and a witness run as real processes on loopback (a
//! cluster of its own for each case, one case at a time). An initiator
//! reconnects to one node's portal every couple of milliseconds (connect,
//! login, FUA writes, short limits) while that node is killed with SIGKILL
//! and started again, a few rounds each, for
//!
//! (a) the primary, restarted once the other node has taken over;
//! (b) the secondary, restarted once the primary has recorded it out of sync;
//! (c) a node alone, the other data node and the witness down: it must
//!     acknowledge nothing at all until the cluster has a quorum again (the
//!     LUN may be in transition, not ready, or absent meanwhile).
//!
//! Each of these writes goes to an extent never written before, so a write
//! that reached one copy only cannot be hidden by a later one. After each
//! restart, once the node has logged "volume role set", no write may have
//! been acknowledged through it between its start and that line, and every
//! acknowledged write reads back through both nodes (history checker), while
//! a second initiator writes through the other node. At the end both data
//! files are byte-identical.

mod common;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use common::cluster::{
    ack_windows, assert_one_writer, node_id, primary_index, try_status, volume_file,
    wait_converged, wait_settled, wait_until, with_witness, Witness, BLOCK, EXTENT,
};
use common::log::{logged, now_us, wait_logged};
use common::workload::{check_volume, Ack, Load, LoadConfig, Mix, Pick};
use common::Server;
use testkit::history::History;

const VOLUME: &str = "vm";
const SIZE: &str = "16M";
const BLOCKS: u64 = (16 << 20) / BLOCK as u64;
const EXTENTS: u64 = BLOCKS / EXTENT;
/// The restarting node's initiator writes fresh extents of the first half,
/// the other node's initiator random extents of the second.
const HAMMERED: u64 = EXTENTS / 2;
const ROUNDS: usize = 3;
/// The log line a node writes once it has taken up its role for a volume.
const ROLE_SET: &str = "volume role set";
/// A write forwarded the moment the role is set may be answered a little
/// before the line is written.
const LOG_SLACK_US: u64 = 10_000;
/// How long the copies must stay in sync before they are compared: past
/// the primary's 2 s replication timeout.
const SETTLED: Duration = Duration::from_secs(3);

struct Cluster {
    nodes: [Server; 2],
    ids: [u64; 2],
    witness: Witness,
    seq: Arc<AtomicU64>,
    history: History,
    /// Next fresh extent for the restarting node's initiator.
    fresh: u64,
}

impl Cluster {
    fn both(&self) -> [&Server; 2] {
        [&self.nodes[0], &self.nodes[1]]
    }

    fn primary(&self) -> usize {
        primary_index(&self.both(), VOLUME).expect("a primary among the data nodes")
    }

    fn converge(&self, what: &str) {
        if let Err(e) = wait_converged(&self.both(), VOLUME, 90) {
            panic!("{what}: {e}");
        }
    }

    /// Reads the whole volume through both nodes and checks it; what is wrong.
    async fn problems(&self) -> Vec<String> {
        let mut wrong = Vec::new();
        for (n, id) in self.nodes.iter().zip(self.ids) {
            if let Err(e) = check_volume(n.portal(), VOLUME, BLOCKS, &self.history).await {
                wrong.push(format!("through node {id}: {e}"));
            }
        }
        wrong
    }

    /// Reads the whole volume through both nodes and checks it.
    async fn check(&self, what: &str) {
        let wrong = self.problems().await;
        assert!(
            wrong.is_empty(),
            "{what}: acknowledged writes missing:\n{}",
            wrong.join("\n")
        );
    }

    /// Waits until `node`'s copy is recorded with `state` by `by`.
    fn wait_replica_state(&self, by: usize, node: usize, state: &str) {
        let id = self.ids[node].to_string();
        wait_until(&format!("copy on node {id} recorded {state}"), 30, || {
            try_status(&self.nodes[by]).is_some_and(|v| {
                v["status"]["state"]["volumes"][VOLUME]["replicas"][&id]["state"] == state
            })
        });
    }

    /// Waits until node `i` is the primary and has taken up the role.
    fn wait_primary(&self, i: usize) {
        wait_until(&format!("node {} primary", self.ids[i]), 30, || {
            try_status(&self.nodes[i]).is_some_and(|v| {
                v["status"]["state"]["volumes"][VOLUME]["primary"].as_u64() == Some(self.ids[i])
                    && v["replication"][VOLUME].is_array()
            })
        });
    }

    /// One round: node `i` is killed and started again while an initiator
    /// keeps reconnecting to it and another writes through the other node.
    async fn restart_under_writes(&mut self, i: usize, what: &str) {
        let o = 1 - i;
        let steady = Load::start(
            LoadConfig {
                seed: self.fresh,
                ..LoadConfig::steady(
                    VOLUME,
                    vec![self.nodes[o].portal()],
                    HAMMERED..EXTENTS,
                    Pick::Random,
                    Mix::FUA,
                )
            },
            self.seq.clone(),
        );
        let hammer = Load::start(
            LoadConfig::hammer(VOLUME, self.nodes[i].portal(), self.fresh..HAMMERED),
            self.seq.clone(),
        );
        assert!(
            hammer
                .acknowledged_beyond(0, 1, Duration::from_secs(20))
                .await,
            "{what}: no write acknowledged through node {} before the kill",
            self.ids[i]
        );
        let was_primary = self.primary() == i;
        self.nodes[i].kill();
        if was_primary {
            // The other node takes over before this one returns.
            self.wait_primary(o);
        } else {
            // The primary notices (the other initiator writes through it).
            self.wait_replica_state(o, i, "out-of-sync");
        }
        let from = self.nodes[i].log_text().len();
        let started = now_us();
        self.nodes[i].restart();
        let role_set = wait_logged(&self.nodes[i], from, ROLE_SET, Duration::from_secs(30))
            .unwrap_or_else(|| {
                panic!(
                    "{what}: node {} never logged {ROLE_SET:?}:\n{}",
                    self.ids[i],
                    &self.nodes[i].log_text()[from..]
                )
            });
        assert!(
            (started..now_us()).contains(&role_set),
            "{what}: the role was set at {role_set} us, outside the restart"
        );
        // The restarted node serves the initiator in its new role.
        wait_until(
            &format!(
                "a write acknowledged through node {} after its role was set",
                self.ids[i]
            ),
            30,
            || hammer.progress().1 > role_set,
        );
        let ledger = hammer.finish().await;
        let other = steady.finish().await;
        eprintln!(
            "{what}: restarted node {}: role set {} ms after its start; {:?}; other initiator {:?}",
            self.ids[i],
            (role_set - started) / 1000,
            ledger.tally,
            other.tally
        );
        self.fresh = ledger.next_fresh;
        let early = acknowledged_before(&ledger.acks, started, role_set);
        self.history.absorb(ledger.history);
        self.history.absorb(other.history);
        let mut problems = self.problems().await;
        if !early.is_empty() {
            problems.insert(
                0,
                format!(
                    "node {} acknowledged {} writes after its start and before it logged {ROLE_SET:?} ({} ms after the start): {}",
                    self.ids[i],
                    early.len(),
                    (role_set - started) / 1000,
                    describe(&early, started)
                ),
            );
        }
        assert!(problems.is_empty(), "{what}:\n{}", problems.join("\n"));
        self.converge(what);
    }
}

/// Acknowledgements that arrived from `started` on and before `role_set`.
fn acknowledged_before(acks: &[Ack], started: u64, role_set: u64) -> Vec<Ack> {
    acks.iter()
        .filter(|a| a.at_us >= started && a.at_us + LOG_SLACK_US < role_set)
        .cloned()
        .collect()
}

/// Acknowledged writes, with times relative to a node's start.
fn describe(acks: &[Ack], started: u64) -> String {
    acks.iter()
        .take(10)
        .map(|a| {
            format!(
                "write {} at LBA {} via {} {:.1} ms after the start",
                a.seq,
                a.lba,
                a.portal,
                a.at_us.saturating_sub(started) as f64 / 1000.0
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The three cases run one after the other: each starts its own cluster,
/// and the writes' timing matters on a small machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Two data nodes and a witness serving the volume, both copies in sync.
fn start(dir: &std::path::Path) -> Cluster {
    let a = Server::start(&dir.join("a"));
    let b = Server::start(&dir.join("b"));
    let (witness, _) = with_witness(dir, &a, &[&b]);
    a.cli_ok(&[
        "volume",
        "create",
        VOLUME,
        "--size",
        SIZE,
        "--replicas",
        "2",
    ]);
    let ids = [node_id(&a), node_id(&b)];
    let c = Cluster {
        nodes: [a, b],
        ids,
        witness,
        seq: Arc::new(AtomicU64::new(0)),
        history: History::default(),
        fresh: 0,
    };
    c.converge("the new volume");
    c
}

/// The end of each case: every acknowledged write reads back through both
/// nodes, no two nodes acknowledged at once, and the copies are identical.
async fn finish(mut c: Cluster, what: &str) {
    if let Err(e) = wait_settled(&c.both(), VOLUME, 90, SETTLED) {
        panic!("{what}: {e}");
    }
    c.check(what).await;
    let mut windows = ack_windows(&c.nodes[0], VOLUME);
    windows.extend(ack_windows(&c.nodes[1], VOLUME));
    assert_one_writer(&windows);
    eprintln!(
        "{what}: {} writes acknowledged as durable in all",
        c.history.acknowledged()
    );
    for n in &mut c.nodes {
        n.stop();
    }
    let (x, y) = (
        std::fs::read(volume_file(&c.nodes[0])).unwrap(),
        std::fs::read(volume_file(&c.nodes[1])).unwrap(),
    );
    if let Some(at) = x.iter().zip(&y).position(|(p, q)| p != q) {
        panic!(
            "{what}: the two copies differ after resync, first at byte {at} (block {})",
            at / BLOCK
        );
    }
    assert_eq!(x.len(), y.len(), "{what}: the two copies differ in length");
}

/// (a) The primary restarts after the other node took over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_primary_acknowledges_nothing_before_its_role_is_set() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = start(dir.path());
    for round in 1..=ROUNDS {
        let p = c.primary();
        c.restart_under_writes(p, &format!("(a) old primary, round {round}"))
            .await;
    }
    finish(c, "(a) old primary").await;
}

/// (b) The secondary restarts after the primary recorded it out of sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_acknowledges_nothing_before_its_role_is_set() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = start(dir.path());
    for round in 1..=ROUNDS {
        let s = 1 - c.primary();
        c.restart_under_writes(s, &format!("(b) secondary, round {round}"))
            .await;
    }
    finish(c, "(b) secondary").await;
}

/// (c) A node restarts alone: the other data node and the witness are
/// down, and so is this node before the initiator starts, so that no write
/// reaches it with its peer gone before the restarts. It must acknowledge
/// nothing until the others return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_node_acknowledges_nothing_without_a_quorum() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = start(dir.path());
    let l = c.primary();
    let o = 1 - l;
    c.witness.kill();
    c.nodes[o].kill();
    c.nodes[l].kill();
    let hammer = Load::start(
        LoadConfig::hammer(VOLUME, c.nodes[l].portal(), c.fresh..HAMMERED),
        c.seq.clone(),
    );
    let mut restarts = Vec::new();
    for round in 1..=ROUNDS {
        if round > 1 {
            c.nodes[l].kill();
        }
        let from = c.nodes[l].log_text().len();
        let started = now_us();
        c.nodes[l].restart();
        // Up and running, it turns the initiator away (or presents the LUN
        // without a role until it has a quorum).
        let turned_away = hammer.turned_away();
        wait_until(
            &format!("(c) round {round}: the initiator turned away by the lone node"),
            30,
            || hammer.turned_away() >= turned_away + 20,
        );
        let role_set = logged(&c.nodes[l].log_text(), from, ROLE_SET)
            .first()
            .map(|l| l.0);
        restarts.push((started, role_set));
    }
    let ledger = hammer.finish().await;
    let roles: Vec<String> = restarts
        .iter()
        .map(|(start, role)| match role {
            Some(at) => format!("role set {} ms after the start", (at - start) / 1000),
            None => "no role set".to_string(),
        })
        .collect();
    eprintln!(
        "(c) lone node {}: {}; {:?}",
        c.ids[l],
        roles.join(", "),
        ledger.tally
    );
    if let Some(first) = ledger.acks.first() {
        let started = restarts
            .iter()
            .rev()
            .find(|r| r.0 <= first.at_us)
            .map_or(0, |r| r.0);
        panic!(
            "(c) node {} acknowledged {} writes while alone, without a quorum (restarts and role set at {restarts:?} us): {}",
            c.ids[l],
            ledger.acks.len(),
            describe(&ledger.acks, started)
        );
    }
    c.fresh = ledger.next_fresh;
    c.history.absorb(ledger.history);
    c.nodes[o].restart();
    c.witness.restart();
    finish(c, "(c) lone node, after the others returned").await;
}
