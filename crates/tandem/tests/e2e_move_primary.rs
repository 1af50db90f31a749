//! Planned switchover: two data nodes and a witness as real processes on
//! loopback, two initiators writing numbered blocks (FUA) through both
//! portals, and `tandem volume move-primary` moving the primary from one
//! node to the other and back several times. No command may fail at the
//! initiators (an access state transition, which they retry, is all they
//! may see), no connection may drop, no copy may fall out of sync, no two
//! nodes may acknowledge at once, and every acknowledged write must be
//! read back through both nodes and found in both copies' data files.
//! The longest write (retries included) around each move is the I/O pause
//! the initiators saw; the test prints it with the pause the command
//! reports.
//!
//! Also the refusals, with their reasons: a move to the primary itself, to
//! a node without a copy, to a node that is not running; removing a copy
//! that would leave a single one without `--force`, and the primary's
//! copy (which points at `move-primary`).
//!
//! And maintenance built on it: a node entering maintenance hands every
//! volume it leads to the other node under writes, is stopped and started
//! again while the writes go on, the other node cannot enter maintenance
//! meanwhile (its volumes have nowhere to go, and the cluster no quorum
//! without it), and leaving with `--rebalance` gives the node half of the
//! primaries back.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{
    ack_windows, all_in_sync, assert_one_writer, node_id, session, session_again, verify,
    volume_file, volume_record, wait_until, write, BLOCK, EXTENT,
};
use common::Server;
use testkit::history::History;

const VOLUME: &str = "vm";
/// Extents per initiator; each writes its own.
const EXTENTS: u64 = 64;
const MOVES: usize = 6;

/// What one initiator saw.
struct Seen {
    history: History,
    acknowledged: u64,
    /// Writes that ended with an error (after retrying transitions as
    /// initiators do).
    failed: u64,
    /// Connections that failed or hung.
    dropped: u64,
    /// (microseconds since the start, microseconds the write took with its
    /// retries) of every acknowledged write.
    took: Vec<(u64, u64)>,
}

/// Writes extents `first..first + EXTENTS` through `portal` in turn until
/// `stop`; every write carries a new sequence number from `seq`.
fn writer(
    portal: std::net::SocketAddr,
    volume: &'static str,
    first: u64,
    seq: u64,
    start: Instant,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Seen> {
    tokio::spawn(async move {
        let mut seen = Seen {
            history: History::default(),
            acknowledged: 0,
            failed: 0,
            dropped: 0,
            took: Vec::new(),
        };
        let mut s = session(portal, volume).await.expect("first session");
        let mut seq = seq;
        while !stop.load(Ordering::Acquire) {
            seq += 1;
            let at = Instant::now();
            match write(&mut s, &mut seen.history, first + seq % EXTENTS, seq).await {
                Some(true) => {
                    seen.acknowledged += 1;
                    seen.took.push((
                        (at - start).as_micros() as u64,
                        at.elapsed().as_micros() as u64,
                    ));
                }
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

/// `tandem volume move-primary` through `via`: its output, or its error.
fn move_primary(via: &Server, to: u64) -> Result<String, String> {
    let out = via.cli(&["volume", "move-primary", VOLUME, "--to", &to.to_string()]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The pause `move-primary` reports, in milliseconds.
fn reported_pause(out: &str) -> f64 {
    out.split("I/O paused ")
        .nth(1)
        .and_then(|r| r.split(" ms").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no pause in {out:?}"))
}

fn primary_of(s: &Server) -> (u64, u64) {
    primary_of_volume(s, VOLUME)
}

fn primary_of_volume(s: &Server, volume: &str) -> (u64, u64) {
    let v = volume_record(s, volume);
    (v["primary"].as_u64().unwrap(), v["epoch"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_moves_back_and_forth_under_writes_without_a_failed_command() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, witness, _) = common::cluster::on_loopback(dir.path());
    a.cli_ok(&[
        "volume",
        "create",
        VOLUME,
        "--size",
        "4M",
        "--replicas",
        "2",
    ]);
    wait_until("both nodes export the volume, in sync", 30, || {
        b.cli_ok(&["volume", "list"]).contains(VOLUME) && all_in_sync(&a, VOLUME)
    });
    let (ida, idb) = (node_id(&a), node_id(&b));
    let witness_id = {
        let v = common::cluster::status(&a);
        v["status"]["state"]["nodes"]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.parse::<u64>().unwrap())
            .find(|&n| n != ida && n != idb)
            .expect("the witness's id")
    };
    let (first, _) = primary_of(&a);
    let other = if first == ida { idb } else { ida };

    // Refused, with the reason, and nothing changes.
    let why = move_primary(&a, first).unwrap_err();
    assert!(why.contains("is the primary already"), "{why}");
    let why = move_primary(&b, witness_id).unwrap_err();
    assert!(why.contains("holds no copy"), "{why}");
    let why = a
        .cli(&[
            "volume",
            "remove-replica",
            VOLUME,
            "--node",
            &other.to_string(),
        ])
        .stderr;
    let why = String::from_utf8_lossy(&why);
    assert!(why.contains("leaves a single copy"), "{why}");
    let why = a
        .cli(&[
            "volume",
            "remove-replica",
            VOLUME,
            "--node",
            &first.to_string(),
        ])
        .stderr;
    let why = String::from_utf8_lossy(&why);
    assert!(why.contains("move-primary"), "{why}");
    assert_eq!(primary_of(&a).0, first);

    // Two initiators, one through each node, write while the primary moves.
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = [
        writer(a.portal(), VOLUME, 0, 0, start, stop.clone()),
        writer(b.portal(), VOLUME, EXTENTS, 1 << 40, start, stop.clone()),
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut moves = Vec::new();
    for k in 0..MOVES {
        let (from, epoch) = primary_of(&a);
        let to = if from == ida { idb } else { ida };
        // Asked through either node: the primary drains, wherever asked.
        let via = if k % 2 == 0 { &a } else { &b };
        // The new primary reconciles the regions the old one wrote last
        // (its activity log) before it counts every copy caught up; a move
        // asked meanwhile is refused as "catching up", and asked again.
        let mut tries = 0;
        let (at, out) = loop {
            let at = (start.elapsed().as_micros()) as u64;
            match move_primary(via, to) {
                Ok(out) => break (at, out),
                Err(e) if e.contains("to catch up on") && tries < 40 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => panic!("move {k} refused: {e}"),
            }
        };
        let done = (start.elapsed().as_micros()) as u64;
        let (now, later) = primary_of(via);
        assert_eq!(now, to, "move {k}: {out}");
        assert!(later > epoch, "move {k}: the epoch grew: {out}");
        for s in [&a, &b] {
            let v = volume_record(s, VOLUME);
            assert!(
                all_in_sync(s, VOLUME),
                "move {k}: the old primary's copy stays in sync: {v}"
            );
        }
        if tries > 0 {
            eprintln!("move {k}: asked {tries} times more while the copies caught up");
        }
        moves.push((from, to, at, done, reported_pause(&out)));
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    stop.store(true, Ordering::Release);
    let mut h = History::default();
    let (mut acknowledged, mut took) = (0, Vec::new());
    for w in writers {
        let seen = w.await.expect("writer");
        assert_eq!(seen.failed, 0, "a command failed at the initiator");
        assert_eq!(seen.dropped, 0, "a connection failed");
        acknowledged += seen.acknowledged;
        took.extend(seen.took);
        h.absorb(seen.history);
    }
    assert!(
        acknowledged > 100,
        "only {acknowledged} writes acknowledged"
    );

    // The pause each move cost the initiators: their longest write (with
    // its retries) that overlapped the command.
    let mut paused = Vec::new();
    for (k, (from, to, at, done, reported)) in moves.iter().enumerate() {
        let longest = took
            .iter()
            .filter(|(began, t)| began + t >= *at && *began <= *done)
            .map(|(_, t)| *t)
            .max()
            .unwrap_or(0);
        eprintln!(
            "move {k}: node {from} -> node {to}: reported pause {reported:.1} ms, longest write meanwhile {:.1} ms",
            longest as f64 / 1000.0
        );
        paused.push(longest);
    }
    paused.sort_unstable();
    let median = paused[paused.len() / 2];
    eprintln!(
        "{acknowledged} writes acknowledged, none failed; longest write around a move: median {:.1} ms, max {:.1} ms",
        median as f64 / 1000.0,
        paused[paused.len() - 1] as f64 / 1000.0
    );
    // A failover takes 1.5 s and more before a write gets through again;
    // a planned switchover must not come near that.
    assert!(median < 1_000_000, "median pause {median} us: {paused:?}");

    // Every acknowledged write, read back through both nodes.
    verify(a.portal(), VOLUME, 2 * EXTENTS, &h).await;
    verify(b.portal(), VOLUME, 2 * EXTENTS, &h).await;
    let mut windows = ack_windows(&a, VOLUME);
    windows.extend(ack_windows(&b, VOLUME));
    assert_one_writer(&windows);

    // A node that is not running cannot take over.
    let (primary, _) = primary_of(&a);
    let (up, down) = if primary == ida {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let down_id = node_id(down);
    down.stop();
    tokio::time::sleep(cluster::DEAD_AFTER + Duration::from_millis(500)).await;
    let why = move_primary(up, down_id).unwrap_err();
    assert!(why.contains("not running"), "{why}");
    down.restart();
    wait_until("the restarted copy in sync again", 60, || {
        all_in_sync(up, VOLUME)
    });

    // And in both copies' data files.
    a.stop();
    b.stop();
    for s in [&a, &b] {
        let data = std::fs::read(volume_file(s)).unwrap();
        let len = (2 * EXTENTS * EXTENT) as usize * BLOCK;
        if let Err(errors) = h.check_range(0, &data[..len], BLOCK) {
            panic!(
                "{} blocks wrong in the copy of {}: {:#?}",
                errors.len(),
                s.data_dir.display(),
                &errors[..errors.len().min(10)]
            );
        }
    }
    drop(witness);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_in_maintenance_leads_nothing_and_is_stopped_without_a_failed_command() {
    const VOLUMES: [&str; 2] = ["vm1", "vm2"];
    let dir = tempfile::tempdir().unwrap();
    let (mut a, b, witness, _) = common::cluster::on_loopback(dir.path());
    for v in VOLUMES {
        a.cli_ok(&["volume", "create", v, "--size", "4M", "--replicas", "2"]);
    }
    wait_until("both volumes exported and in sync", 30, || {
        let list = b.cli_ok(&["volume", "list"]);
        VOLUMES
            .iter()
            .all(|v| list.contains(v) && all_in_sync(&a, v))
    });
    let (ida, idb) = (node_id(&a), node_id(&b));
    // Lead both volumes from a, whatever the placement chose.
    for v in VOLUMES {
        if primary_of_volume(&a, v).0 != ida {
            a.cli_ok(&["volume", "move-primary", v, "--to", &ida.to_string()]);
        }
    }
    // Initiators write through b, which stays up.
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = [
        writer(b.portal(), VOLUMES[0], 0, 0, start, stop.clone()),
        writer(b.portal(), VOLUMES[1], 0, 1 << 40, start, stop.clone()),
    ];
    tokio::time::sleep(Duration::from_millis(300)).await;

    let out = b.cli_ok(&["node", "maintenance", "enter", &ida.to_string()]);
    assert!(out.contains("leads no volume now"), "{out}");
    for v in VOLUMES {
        assert_eq!(primary_of_volume(&b, v).0, idb, "{v}: {out}");
        let r = &volume_record(&b, v)["replicas"];
        assert_eq!(
            r[idb.to_string()]["state"],
            "in-sync",
            "{v}: the handed-over copy stays in sync: {r}"
        );
        assert_eq!(
            r[ida.to_string()]["state"],
            "out-of-sync",
            "{v}: the copy in maintenance misses writes on purpose: {r}"
        );
    }
    // Stopped for its planned work while the writes go on; meanwhile the
    // other node cannot enter maintenance.
    a.stop();
    tokio::time::sleep(cluster::DEAD_AFTER + Duration::from_millis(500)).await;
    let refused = b.cli(&["node", "maintenance", "enter"]);
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "b entered maintenance alone");
    assert!(
        why.contains("no in-sync copy on another running data node") && why.contains("no quorum"),
        "{why}"
    );
    a.restart();
    // Leaving maintenance, a's copies get what they missed; the primaries
    // move back once they have it.
    let out = b.cli_ok(&[
        "node",
        "maintenance",
        "exit",
        &ida.to_string(),
        "--rebalance",
    ]);
    let led = |n: u64| {
        VOLUMES
            .iter()
            .filter(|v| primary_of_volume(&b, v).0 == n)
            .count()
    };
    assert_eq!((led(ida), led(idb)), (1, 1), "{out}");
    assert!(out.contains("is in-sync"), "{out}");

    stop.store(true, Ordering::Release);
    for (w, v) in writers.into_iter().zip(VOLUMES) {
        let seen = w.await.expect("writer");
        assert_eq!(seen.failed, 0, "{v}: a command failed at the initiator");
        assert_eq!(seen.dropped, 0, "{v}: a connection failed");
        assert!(seen.acknowledged > 20, "{v}: {} writes", seen.acknowledged);
        verify(a.portal(), v, EXTENTS, &seen.history).await;
        verify(b.portal(), v, EXTENTS, &seen.history).await;
    }
    drop(witness);
}
