//! Random fault schedules against a live cluster, in the spirit of Jepsen's
//! nemesis: two data nodes and a witness, each a `tandem` process in its own
//! network namespace (needs root; skipped elsewhere, fails in CI).
//!
//! Each schedule applies one to three faults to distinct members, the
//! witness included — kill -9 and a later start, SIGSTOP and SIGCONT, a
//! clean restart (SIGTERM, then start), a cut link and its repair — at
//! random moments, while three initiators write through different portals
//! (one through each data node, one switching between them on every
//! reconnection), reconnecting as soon as a connection fails, mixing FUA
//! writes, plain writes made durable by a later SYNCHRONIZE CACHE, and plain
//! writes never flushed. The initiators own disjoint extents.
//!
//! After each schedule every fault is healed and every member runs; the
//! volume must come back in sync, every write acknowledged as durable must
//! read back through both data nodes (history checker), no two nodes may
//! have acknowledged writes at once, and once both nodes are stopped their
//! data files and checksum files must be byte-identical.
//!
//! `TANDEM_NEMESIS_SEED=<n>` replays a seed (printed at the start and on
//! failure, with every schedule); `TANDEM_NEMESIS_SCHEDULES=<n>` sets how
//! many schedules run (default 8). `scripts/soak.sh` runs it for hours.
//!
//! The seed also picks which data nodes busy-poll their replication
//! connections (`--busy-poll-us`): neither, one or both, which changes when
//! frames are read and answered, never what.
//!
//! `TANDEM_NEMESIS_BENCH_LOAD=1` adds the mirrored-write benchmark's load
//! (`bench/mirror.sh`: `qemu-img bench`, 4 KiB writes at queue depth 32)
//! on a second mirrored volume, through each data node, for the whole run
//! and restarted whenever a fault breaks it: the history checker then
//! verifies the first volume while the nodes are as busy as in the benchmark.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{
    ack_windows, assert_one_writer, cluster_report, node_id, volume_file_named, wait_converged,
    wait_settled, Witness, BLOCK, EXTENT,
};
use common::log::now_us;
use common::nemesis::{Action, Fault, Schedule};
use common::netns::{two_nodes_and_witness_with, Lan};
use common::workload::{read_volume, Ack, Load, LoadConfig, Mix, Pick};
use common::Server;
use rand::rngs::StdRng;
use rand::SeedableRng;
use testkit::history::{decode, History};

const VOLUME: &str = "vm";
const SIZE: &str = "8M";
const BLOCKS: u64 = (8 << 20) / BLOCK as u64;
const EXTENTS: u64 = BLOCKS / EXTENT;
const WRITERS: u64 = 3;
/// The witness runs on host 2 of the network.
const WITNESS_HOST: usize = 2;
/// Faults start within this span of the schedule's start...
const SPAN: Duration = Duration::from_secs(6);
/// ...and last between these.
const SHORTEST: Duration = Duration::from_millis(300);
const LONGEST: Duration = Duration::from_secs(4);
/// How long the cluster gets to come back in sync after the last heal.
const CONVERGE_SECS: u64 = 120;
/// How long the copies must stay in sync once the writes stopped before
/// they are compared: past the primary's 2 s replication timeout.
const SETTLED: Duration = Duration::from_secs(3);

/// The benchmark's load on a volume of its own (see the module's doc): one
/// `qemu-img bench` after another through each portal until dropped.
struct BenchLoad {
    stop: Arc<std::sync::atomic::AtomicBool>,
    runs: Arc<AtomicU64>,
    broken: Arc<AtomicU64>,
    /// Writes of the load the nodes acknowledged, counted before each stop.
    acknowledged: u64,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// The second volume, and the benchmark's writes to it.
const LOAD_VOLUME: &str = "load";

impl BenchLoad {
    fn start(nodes: &[Server]) -> BenchLoad {
        use std::sync::atomic::{AtomicBool, Ordering};
        nodes[0].cli_ok(&[
            "volume",
            "create",
            LOAD_VOLUME,
            "--size",
            "256M",
            "--replicas",
            "2",
        ]);
        if let Err(e) = wait_converged(&[&nodes[0], &nodes[1]], LOAD_VOLUME, CONVERGE_SECS) {
            panic!("the benchmark's volume: {e}");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let runs = Arc::new(AtomicU64::new(0));
        let broken = Arc::new(AtomicU64::new(0));
        let threads = nodes
            .iter()
            .map(|n| {
                let url = format!(
                    "iscsi://{}/iqn.2026-11.io.tandem:{LOAD_VOLUME}/0",
                    n.portal()
                );
                let (stop, runs, broken) = (stop.clone(), runs.clone(), broken.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        let mut child = std::process::Command::new("qemu-img")
                            .args(["bench", "-f", "raw", "-t", "none", "-w", "-c", "5000"])
                            .args(["-d", "32", "-s", "4096", "-S", "1052672", &url])
                            .stdout(std::process::Stdio::null())
                            .stderr(std::process::Stdio::null())
                            .spawn()
                            .expect("qemu-img runs (TANDEM_NEMESIS_BENCH_LOAD needs qemu-utils and qemu-block-extra)");
                        loop {
                            if let Some(status) = child.try_wait().unwrap() {
                                if status.success() {
                                    runs.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    broken.fetch_add(1, Ordering::Relaxed);
                                    // A fault broke it: start again shortly.
                                    std::thread::sleep(Duration::from_millis(200));
                                }
                                break;
                            }
                            if stop.load(Ordering::Acquire) {
                                let _ = child.kill();
                                let _ = child.wait();
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                })
            })
            .collect();
        BenchLoad {
            stop,
            runs,
            broken,
            acknowledged: 0,
            threads,
        }
    }
}

impl BenchLoad {
    /// Counts the load's writes the nodes acknowledged since they started
    /// (their acknowledgement windows), before they stop.
    fn tally(&mut self, nodes: &[&Server]) {
        self.acknowledged += nodes
            .iter()
            .flat_map(|n| ack_windows(n, LOAD_VOLUME))
            .map(|(_, _, _, _, writes)| writes)
            .sum::<u64>();
    }

    /// Stops the load and says how much of it the nodes acknowledged.
    fn finish(mut self) {
        self.halt();
        let acknowledged = self.acknowledged;
        eprintln!(
            "benchmark load: {} runs of 5000 writes completed, {} broken by faults, {acknowledged} writes acknowledged",
            self.runs.load(std::sync::atomic::Ordering::Relaxed),
            self.broken.load(std::sync::atomic::Ordering::Relaxed)
        );
        assert!(
            acknowledged > 0,
            "the benchmark's load got nothing acknowledged"
        );
    }

    fn halt(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for BenchLoad {
    fn drop(&mut self) {
        self.halt();
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
    )
}

/// Says how to replay a failure, and keeps the servers' logs, when the test
/// fails (dropped last, after every process is gone).
struct Replay {
    seed: u64,
    plan: String,
    dir: Option<tempfile::TempDir>,
}

impl Drop for Replay {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "nemesis failed with seed {0}; replay with TANDEM_NEMESIS_SEED={0}\n{1}",
                self.seed, self.plan
            );
            if let Some(d) = self.dir.take() {
                eprintln!("server logs kept in {}", d.keep().display());
            }
        }
    }
}

/// The cluster's members: data nodes 0 and 1, the witness as member 2.
struct Members {
    nodes: Vec<Server>,
    witness: Witness,
    lan: Lan,
}

impl Members {
    fn pid(&self, m: usize) -> u32 {
        if m < 2 {
            self.nodes[m].pid()
        } else {
            self.witness.pid()
        }
    }

    fn host(&self, m: usize) -> usize {
        if m < 2 {
            m
        } else {
            WITNESS_HOST
        }
    }

    fn signal(&self, m: usize, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.pid(m).to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} of member {m} failed");
    }

    fn begin(&mut self, m: usize, fault: Fault) {
        match (fault, m < 2) {
            (Fault::Kill, true) => self.nodes[m].kill(),
            (Fault::Kill, false) => self.witness.kill(),
            (Fault::Pause, _) => self.signal(m, "-STOP"),
            (Fault::Restart, true) => {
                self.nodes[m].stop();
                self.nodes[m].restart();
            }
            (Fault::Restart, false) => {
                self.witness.stop();
                self.witness.restart();
            }
            (Fault::Cut, _) => self.lan.cut(self.host(m)),
        }
    }

    fn heal(&mut self, m: usize, fault: Fault) {
        match (fault, m < 2) {
            (Fault::Kill, true) => self.nodes[m].restart(),
            (Fault::Kill, false) => self.witness.restart(),
            (Fault::Pause, _) => self.signal(m, "-CONT"),
            (Fault::Restart, _) => {}
            (Fault::Cut, _) => self.lan.mend(self.host(m)),
        }
    }

    fn both(&self) -> [&Server; 2] {
        [&self.nodes[0], &self.nodes[1]]
    }
}

/// Every acknowledged write by number and when each schedule started: to
/// say when and how a write was acknowledged.
struct Record {
    acks: HashMap<u64, Ack>,
    starts: Vec<u64>,
    portals: [SocketAddr; 2],
}

impl Record {
    /// What became of write `seq`, for reports.
    fn how(&self, seq: Option<u64>) -> String {
        let Some(seq) = seq else {
            return "no write of ours".to_string();
        };
        if seq == 0 {
            return "never written".to_string();
        }
        let Some(a) = self.acks.get(&seq) else {
            return format!("write {seq}, not acknowledged");
        };
        let k = self.starts.iter().rposition(|&s| s <= a.at_us).unwrap_or(0);
        let node = if a.portal == self.portals[0] {
            "a"
        } else {
            "b"
        };
        format!(
            "write {seq}, {} acknowledged through node {node} {:+.3} s into schedule {}",
            if a.fua {
                "FUA"
            } else {
                "plain (flushed later or not)"
            },
            (a.at_us as f64 - self.starts[k] as f64) / 1e6,
            k + 1
        )
    }

    /// The writes a read shows lost (at most 12, one line per write).
    fn lost(&self, data: &[u8], h: &History) -> String {
        let mut lines = Vec::new();
        let mut seen = HashSet::new();
        for (i, b) in data.chunks(BLOCK).enumerate() {
            let lba = i as u64;
            let Err(why) = h.check(lba, b) else { continue };
            let expected = h.newest_durable(lba);
            if !seen.insert((expected, decode(b, lba))) {
                continue;
            }
            lines.push(format!("  {why} (expected {})", self.how(Some(expected))));
            if lines.len() == 12 {
                break;
            }
        }
        lines.join("\n")
    }

    /// Where the two nodes' data files differ: which write each shows.
    fn diverged(&self, x: &[u8], y: &[u8]) -> Option<String> {
        let wrong = differing(x, y, BLOCK);
        let first: Vec<String> = wrong
            .iter()
            .take(8)
            .map(|&b| {
                let r = b * BLOCK..(b + 1) * BLOCK;
                let lba = b as u64;
                format!(
                    "  block {b}: node a shows {}; node b shows {}",
                    self.how(x.get(r.clone()).and_then(|d| decode(d, lba))),
                    self.how(y.get(r).and_then(|d| decode(d, lba)))
                )
            })
            .collect();
        (!wrong.is_empty() || x.len() != y.len()).then(|| {
            format!(
                "data differs between the nodes in {} blocks ({} and {} bytes long):\n{}",
                wrong.len(),
                x.len(),
                y.len(),
                first.join("\n")
            )
        })
    }
}

/// The blocks in which two files differ; `per_block`: bytes of the file per
/// block of the volume.
fn differing(x: &[u8], y: &[u8], per_block: usize) -> Vec<usize> {
    x.chunks(per_block)
        .zip(y.chunks(per_block))
        .enumerate()
        .filter(|(_, (p, q))| p != q)
        .map(|(i, _)| i)
        .collect()
}

/// Where the two nodes' checksum files differ (4 bytes per block).
fn sums_differ(x: &[u8], y: &[u8]) -> Option<String> {
    let wrong = differing(x, y, 4);
    let first: Vec<String> = wrong
        .iter()
        .take(8)
        .map(|&b| {
            let hex = |f: &[u8]| {
                f.get(b * 4..b * 4 + 4)
                    .map(|e| e.iter().map(|c| format!("{c:02x}")).collect::<String>())
                    .unwrap_or_default()
            };
            format!("block {b}: {} vs {}", hex(x), hex(y))
        })
        .collect();
    (!wrong.is_empty() || x.len() != y.len()).then(|| {
        format!(
            "data.crc32c differs between the nodes in {} blocks ({} and {} bytes long): {}",
            wrong.len(),
            x.len(),
            y.len(),
            first.join("; ")
        )
    })
}

/// The flags of a data node that busy-polls.
const POLL: &[&str] = &["--busy-poll-us", "200"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_faults_lose_no_acknowledged_write() {
    let seed = env_u64("TANDEM_NEMESIS_SEED").unwrap_or_else(|| now_us() % 1_000_000_007);
    let count = env_u64("TANDEM_NEMESIS_SCHEDULES").unwrap_or(8);
    let names = ["node a", "node b", "the witness"];
    let mut rng = StdRng::seed_from_u64(seed);
    let plan: Vec<Schedule> = (0..count)
        .map(|_| Schedule::random(&mut rng, &names, 3, SPAN, SHORTEST, LONGEST))
        .collect();
    let listing: String = plan
        .iter()
        .enumerate()
        .map(|(k, s)| format!("  schedule {}: {s}\n", k + 1))
        .collect();
    let polling: [&[&str]; 2] =
        [seed & 1, seed & 2].map(|bit| if bit != 0 { POLL } else { &[] as &[&str] });
    eprintln!(
        "nemesis: seed {seed} (replay with TANDEM_NEMESIS_SEED={seed}), {count} schedules, busy polling on node a: {}, node b: {}:\n{listing}",
        !polling[0].is_empty(),
        !polling[1].is_empty()
    );
    let mut replay = Replay {
        seed,
        plan: listing,
        dir: None,
    };
    let Some(lan) = Lan::or_skip(3) else { return };
    let dir = tempfile::tempdir().unwrap();
    let (nodes, witness, _) =
        two_nodes_and_witness_with(&lan, dir.path(), WITNESS_HOST, SIZE, polling);
    replay.dir = Some(dir);
    let mut m = Members {
        nodes,
        witness,
        lan,
    };
    let ids = [node_id(&m.nodes[0]), node_id(&m.nodes[1])];
    eprintln!("node a is node {}, node b is node {}", ids[0], ids[1]);
    if let Err(e) = wait_converged(&m.both(), VOLUME, CONVERGE_SECS) {
        panic!("the new volume: {e}");
    }

    let mut bench =
        (env_u64("TANDEM_NEMESIS_BENCH_LOAD").unwrap_or(0) > 0).then(|| BenchLoad::start(&m.nodes));

    let seq = Arc::new(AtomicU64::new(0));
    let mut history = History::default();
    let mut record = Record {
        acks: HashMap::new(),
        starts: Vec::new(),
        portals: [m.nodes[0].portal(), m.nodes[1].portal()],
    };
    let part = EXTENTS / WRITERS;
    for (k, schedule) in plan.iter().enumerate() {
        let what = format!("schedule {} of seed {seed} ({schedule})", k + 1);
        eprintln!("{what}: starts");
        let portals = record.portals;
        let loads: Vec<Load> = (0..WRITERS)
            .map(|w| {
                let through = match w {
                    0 => vec![portals[0]],
                    1 => vec![portals[1]],
                    _ => portals.to_vec(),
                };
                let cfg = LoadConfig::steady(
                    VOLUME,
                    through,
                    w * part..(w + 1) * part,
                    Pick::Random,
                    Mix::MIXED,
                );
                Load::start(
                    LoadConfig {
                        seed: seed ^ ((k as u64) << 8) ^ w,
                        ..cfg
                    },
                    seq.clone(),
                )
            })
            .collect();
        for (w, l) in loads.iter().enumerate() {
            assert!(
                l.acknowledged_beyond(0, 1, Duration::from_secs(30)).await,
                "{what}: writer {w} got nothing acknowledged before the faults\n{}",
                cluster_report(&m.both())
            );
        }

        // The faults, at their moments.
        let start = Instant::now();
        record.starts.push(now_us());
        for (at, step, action) in schedule.timeline() {
            if let Some(wait) = at.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
            eprintln!(
                "  +{:.2} s: {} {}",
                start.elapsed().as_secs_f64(),
                if action == Action::Heal {
                    "heal:"
                } else {
                    "fault:"
                },
                schedule.describe(step)
            );
            match action {
                Action::Begin => m.begin(step.member, step.fault),
                Action::Heal => m.heal(step.member, step.fault),
            }
        }
        let healed = now_us();

        // Everything healed: back in sync, and every initiator served again.
        match wait_converged(&m.both(), VOLUME, CONVERGE_SECS) {
            Ok(took) => eprintln!(
                "{what}: back in sync {:.1} s after the last heal",
                took.as_secs_f64()
            ),
            Err(e) => panic!("{what}: {e}"),
        }
        for (w, l) in loads.iter().enumerate() {
            let t = Instant::now();
            while l.progress().1 <= healed {
                assert!(
                    t.elapsed() < Duration::from_secs(60),
                    "{what}: writer {w} got nothing acknowledged within 60 s after everything healed\n{}",
                    cluster_report(&m.both())
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        for (w, l) in loads.into_iter().enumerate() {
            let ledger = l.finish().await;
            eprintln!("{what}: writer {w}: {:?}", ledger.tally);
            for e in &ledger.errors {
                eprintln!("    {e}");
            }
            history.absorb(ledger.history);
            record
                .acks
                .extend(ledger.acks.into_iter().map(|a| (a.seq, a)));
        }

        // The writes stopped: nothing left in flight may still take a copy
        // out of sync.
        if let Err(e) = wait_settled(&m.both(), VOLUME, CONVERGE_SECS, SETTLED) {
            panic!("{what}: after the writers stopped: {e}");
        }

        // Every acknowledged write through every node.
        for (n, id) in m.nodes.iter().zip(ids) {
            let data = read_volume(n.portal(), VOLUME, BLOCKS, Duration::from_secs(60))
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            if let Err(errors) = history.check_range(0, &data, BLOCK) {
                panic!(
                    "{what}: {} blocks wrong when read through node {id} ({}):\n{}",
                    errors.len(),
                    n.portal(),
                    record.lost(&data, &history)
                );
            }
        }
        let mut windows = ack_windows(&m.nodes[0], VOLUME);
        windows.extend(ack_windows(&m.nodes[1], VOLUME));
        assert_one_writer(&windows);

        if let Some(b) = bench.as_mut() {
            b.tally(&m.both());
        }

        // Byte for byte, once both nodes have flushed and stopped.
        for n in &mut m.nodes {
            n.stop();
        }
        let read = |f: &std::path::Path| std::fs::read(f).unwrap();
        let data = [
            volume_file_named(&m.nodes[0], VOLUME),
            volume_file_named(&m.nodes[1], VOLUME),
        ];
        let sums = data.clone().map(|d| d.with_extension("crc32c"));
        let mut wrong = Vec::new();
        wrong.extend(record.diverged(&read(&data[0]), &read(&data[1])));
        wrong.extend(sums_differ(&read(&sums[0]), &read(&sums[1])));
        assert!(
            wrong.is_empty(),
            "{what}: the copies differ after resync:\n{}",
            wrong.join("\n")
        );
        for n in &mut m.nodes {
            n.restart();
        }
        if let Err(e) = wait_converged(&m.both(), VOLUME, CONVERGE_SECS) {
            panic!("{what}: after both nodes restarted: {e}");
        }
        eprintln!(
            "{what}: passed ({} writes acknowledged as durable so far)",
            history.acknowledged()
        );
    }
    if let Some(b) = bench {
        b.finish();
    }
}
