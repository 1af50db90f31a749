//! Snapshots of a mirrored volume: two data nodes and a witness as real
//! processes on loopback, two initiators writing numbered extents (FUA)
//! through both portals and reconnecting whenever a node goes away.
//!
//! - A snapshot asked of either node is taken under the writes: every
//!   write acknowledged before the command started is in it, none issued
//!   after it answered.
//! - The primary is killed (-9): the survivor leads, the writes go on, and
//!   a snapshot taken while the other copy is down is caught up when that
//!   node returns, from what it missed (not the whole volume).
//! - At the end every snapshot reads back identical on both copies (read
//!   from each node's store once the nodes are stopped), both nodes list
//!   the same snapshots, every acknowledged write is read back through
//!   both portals, and a deleted snapshot is gone from both copies.
//! - A clone of a snapshot, asked of the other node, is a cluster volume
//!   in sync on both nodes at once (each copy made from that node's copy
//!   of the snapshot) that reads as the snapshot; its source cannot be
//!   deleted while it lives, while the snapshot it comes from can (each
//!   copy keeps its data for the clone).
//! - A rollback is refused while an initiator is logged in through the
//!   other node; forced, it logs initiators out and both copies hold the
//!   snapshot's data.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::cluster::{
    all_in_sync, primary_index, session, verify, wait_until, write, BLOCK, EXTENT,
};
use common::Server;
use testkit::history::{decode, History};

const VOLUME: &str = "vm";
const CLONE: &str = "vm-first";
/// The volume's own data among the images read back.
const HEAD: &str = "(head)";
/// Extents per initiator; each writes its own.
const EXTENTS: u64 = 32;

/// Per extent, the newest write issued and the newest acknowledged.
struct Marks {
    issued: Vec<AtomicU64>,
    acked: Vec<AtomicU64>,
    /// Set from the kill of the primary until the survivor leads: a write
    /// may see "access state transition" longer than the helper retries.
    failing_over: AtomicBool,
}

impl Marks {
    fn new() -> Arc<Marks> {
        let n = 2 * EXTENTS as usize;
        Arc::new(Marks {
            issued: (0..n).map(|_| AtomicU64::new(0)).collect(),
            acked: (0..n).map(|_| AtomicU64::new(0)).collect(),
            failing_over: AtomicBool::new(false),
        })
    }

    fn read(v: &[AtomicU64]) -> Vec<u64> {
        v.iter().map(|a| a.load(Ordering::SeqCst)).collect()
    }
}

/// Writes extents `first..first + EXTENTS` through `portal` until `stop`,
/// reconnecting as initiators do; returns its history and how many writes
/// failed.
fn writer(
    portal: SocketAddr,
    first: u64,
    seq: u64,
    marks: Arc<Marks>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(History, u64)> {
    tokio::spawn(async move {
        let mut h = History::default();
        let mut failed = 0;
        let mut seq = seq;
        while !stop.load(Ordering::Acquire) {
            // A node down refuses the connection; one killed under the
            // login makes the helper panic: both are a failed connection
            // here, as for an initiator.
            let up = tokio::net::TcpStream::connect(portal).await.is_ok();
            let s = match up {
                true => tokio::spawn(session(portal, VOLUME)).await,
                false => Ok(None),
            };
            let Ok(Some(mut s)) = s else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            while !stop.load(Ordering::Acquire) {
                seq += 1;
                let n = first + seq % EXTENTS;
                marks.issued[n as usize].store(seq, Ordering::SeqCst);
                match write(&mut s, &mut h, n, seq).await {
                    Some(true) => marks.acked[n as usize].store(seq, Ordering::SeqCst),
                    Some(false) => {
                        if !marks.failing_over.load(Ordering::SeqCst) {
                            failed += 1;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    None => break,
                }
            }
        }
        (h, failed)
    })
}

/// What a snapshot must hold, per extent: at least the write acknowledged
/// before it was asked for, at most the newest issued when it answered.
struct Bounds {
    name: String,
    low: Vec<u64>,
    high: Vec<u64>,
}

/// Takes snapshot `name` through `via` while the writers go on.
fn snapshot(via: &Server, name: &str, marks: &Marks) -> Bounds {
    let low = Marks::read(&marks.acked);
    let out = via.cli_ok(&["snapshot", "create", VOLUME, "--name", name, "--json"]);
    let high = Marks::read(&marks.issued);
    assert!(out.contains(name), "snapshot create answered: {out}");
    Bounds {
        name: name.to_string(),
        low,
        high,
    }
}

/// Snapshot names and ids a node lists for the volume.
fn listed(s: &Server) -> BTreeMap<String, String> {
    let out = s.cli_ok(&["snapshot", "list", VOLUME, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("snapshot list --json");
    v.as_array()
        .expect("a list")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Every snapshot image of the volume on a stopped node, by name, and the
/// clone's data (under its own name).
async fn images(s: &Server) -> BTreeMap<String, Vec<u8>> {
    use volume::Volume;
    let store = store::Store::open(&s.data_dir).expect("the node's store opens");
    let v = store.open_volume(VOLUME).expect("the copy opens");
    let blocks = (2 * EXTENTS * EXTENT) as u32;
    let mut out = BTreeMap::new();
    let clone = store.open_volume(CLONE).expect("the clone's copy opens");
    out.insert(
        CLONE.to_string(),
        clone.read(0, blocks).await.expect("reading the clone"),
    );
    out.insert(
        HEAD.to_string(),
        v.read(0, blocks).await.expect("reading the volume"),
    );
    for snap in v.snapshots() {
        let img = v
            .read_snapshot(snap.id, 0, blocks)
            .await
            .unwrap_or_else(|e| panic!("reading snapshot {}: {e}", snap.name));
        out.insert(snap.name, img);
    }
    out
}

fn check_bounds(image: &[u8], b: &Bounds) {
    for n in 0..2 * EXTENTS {
        let lba = n * EXTENT;
        let at = lba as usize * BLOCK;
        let first = decode(&image[at..at + BLOCK], lba).unwrap_or(0);
        for i in 1..EXTENT {
            let o = (lba + i) as usize * BLOCK;
            let seq = decode(&image[o..o + BLOCK], lba + i).unwrap_or(0);
            assert_eq!(
                seq, first,
                "snapshot {}: extent {n} holds two writes ({first} and {seq})",
                b.name
            );
        }
        assert!(
            first >= b.low[n as usize] && first <= b.high[n as usize],
            "snapshot {}: extent {n} holds write {first}, outside [{}, {}]",
            b.name,
            b.low[n as usize],
            b.high[n as usize]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_survive_a_killed_primary_and_read_the_same_on_both_copies() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, _witness, _) = common::cluster::on_loopback(dir.path());
    a.cli_ok(&[
        "volume",
        "create",
        VOLUME,
        "--size",
        "4M",
        "--replicas",
        "2",
    ]);
    wait_until("the volume on both nodes, in sync", 60, || {
        b.cli_ok(&["volume", "list"]).contains(VOLUME) && all_in_sync(&a, VOLUME)
    });

    let marks = Marks::new();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = [
        writer(a.portal(), 0, 0, marks.clone(), stop.clone()),
        writer(b.portal(), EXTENTS, 1 << 40, marks.clone(), stop.clone()),
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Asked of each node in turn: one leads, the other passes it on.
    let mut taken = vec![
        snapshot(&a, "first", &marks),
        snapshot(&b, "second", &marks),
    ];

    // The primary dies; the survivor leads on, and takes a snapshot the
    // dead copy misses.
    let p = primary_index(&[&a, &b], VOLUME).expect("a primary");
    let (dead, survivor) = if p == 0 {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    marks.failing_over.store(true, Ordering::SeqCst);
    dead.kill();
    wait_until("the survivor leads", 30, || {
        let s = common::cluster::try_status(survivor);
        s.is_some_and(|s| s["status"]["state"]["volumes"][VOLUME]["primary"] == s["status"]["me"])
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    marks.failing_over.store(false, Ordering::SeqCst);
    taken.push(snapshot(survivor, "while-degraded", &marks));
    tokio::time::sleep(Duration::from_millis(500)).await;
    dead.restart();
    wait_until("the returned copy in sync", 90, || {
        all_in_sync(survivor, VOLUME)
    });
    let log = survivor.log_text();
    assert!(
        log.contains("snapshot caught up"),
        "the returned copy was not caught up on the snapshot it missed:\n{log}"
    );
    assert!(
        log.contains("whole=false"),
        "the catch-up copied the whole image instead of what the copy missed:\n{log}"
    );
    for line in log.lines().filter(|l| l.contains("snapshot caught up")) {
        eprintln!("catch-up: {line}");
    }
    taken.push(snapshot(dead, "after-return", &marks));
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop.store(true, Ordering::Release);
    let mut h = History::default();
    for w in writers {
        let (hist, failed) = w.await.unwrap();
        assert_eq!(
            failed, 0,
            "writes failed at the initiator outside the failover"
        );
        h.absorb(hist);
    }
    assert!(h.acknowledged() > 100, "too few writes acknowledged");
    verify(a.portal(), VOLUME, 2 * EXTENTS, &h).await;
    verify(b.portal(), VOLUME, 2 * EXTENTS, &h).await;

    // Both nodes list the same snapshots; one deleted goes from both.
    let names: Vec<&str> = taken.iter().map(|t| t.name.as_str()).collect();
    let on_a = listed(&a);
    assert_eq!(on_a, listed(&b), "the nodes list different snapshots");
    assert_eq!(
        on_a.keys().map(String::as_str).collect::<Vec<_>>().len(),
        names.len()
    );
    b.cli_ok(&["snapshot", "create", VOLUME, "--name", "doomed"]);
    a.cli_ok(&["snapshot", "delete", VOLUME, "doomed"]);
    assert!(!listed(&b).contains_key("doomed"));
    let refused = a.cli(&["snapshot", "create", VOLUME, "--name", "first"]);
    assert!(!refused.status.success(), "a second snapshot named first");

    // A clone of a snapshot, asked of either node: a cluster volume with a
    // copy on each node, made there from that node's copy of the snapshot,
    // in sync at once. Its source cannot be deleted while it lives.
    b.cli_ok(&["volume", "clone", VOLUME, CLONE, "--snapshot", "first"]);
    wait_until("the clone on both nodes, in sync", 60, || {
        a.cli_ok(&["volume", "list"]).contains(CLONE) && all_in_sync(&b, CLONE)
    });
    let refused = a.cli(&["volume", "delete", VOLUME]);
    assert!(
        !refused.status.success(),
        "the source of a clone was deleted"
    );

    // A rollback is refused while an initiator is logged in through
    // either node; forced, it logs initiators out and every copy holds the
    // snapshot's data.
    let logged_in = session(b.portal(), VOLUME).await.expect("a session");
    let refused = a.cli(&["volume", "rollback", VOLUME, "second"]);
    assert!(
        !refused.status.success(),
        "a rollback with an initiator logged in through the other node"
    );
    a.cli_ok(&["volume", "rollback", VOLUME, "second", "--force"]);
    drop(logged_in);
    wait_until("both copies in sync after the rollback", 30, || {
        all_in_sync(&a, VOLUME)
    });
    // The snapshot a clone comes from can be deleted while the clone
    // lives: no node lists it, each copy keeps it for the clone.
    b.cli_ok(&["snapshot", "delete", VOLUME, "first"]);
    assert!(!listed(&a).contains_key("first") && !listed(&b).contains_key("first"));

    a.stop();
    b.stop();
    let (ia, ib) = (images(&a).await, images(&b).await);
    assert_eq!(
        ia.keys().collect::<Vec<_>>(),
        ib.keys().collect::<Vec<_>>(),
        "the copies hold different snapshots"
    );
    assert_eq!(
        ia.len(),
        names.len() + 2,
        "snapshots on the copies: {:?}",
        ia.keys()
    );
    for t in &taken {
        let (x, y) = (&ia[&t.name], &ib[&t.name]);
        assert!(x == y, "snapshot {} differs between the copies", t.name);
        check_bounds(x, t);
    }
    assert!(
        ia[CLONE] == ia["first"] && ib[CLONE] == ib["first"],
        "the clone does not read as its snapshot"
    );
    assert!(
        ia[HEAD] == ia["second"] && ib[HEAD] == ib["second"],
        "a copy does not hold the snapshot rolled back to"
    );
}
