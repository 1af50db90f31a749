//! Removing a dead member and re-placing its copies, with real processes
//! (three data nodes on loopback): a volume with two copies takes
//! continuous writes through its primary; the node of its other copy is
//! killed with SIGKILL; `tandem cluster remove NODE --dead` is refused
//! where it must be (without --dead, for a node still heard from, where
//! the other voters would have no quorum, for a node holding a volume's
//! only copy) and then removes it: the volume runs on one copy, asking
//! for two, and the leader places a new copy on the third node, which a
//! full sync fills while the writes go on. No command fails at the
//! initiator; every acknowledged write is read back through both
//! holders and from both data files. The removed node, started again,
//! learns it was removed, serves no cluster volume and does not disturb
//! the cluster.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{
    all_in_sync, counting_writer, form, node_id, status, verify, volume_file_named, volume_record,
    wait_members, wait_until, Seen, BLOCK, EXTENT,
};
use common::{node_prefix, Server};

const VOLUME: &str = "vm";
const SIZE: u64 = 256 << 20;
const EXTENTS: u64 = 64;

/// Writes extents of `VOLUME` through `portal` until `stop`, counting
/// what failed.
fn writer(portal: std::net::SocketAddr, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Seen> {
    counting_writer(portal, VOLUME, EXTENTS, stop)
}

/// `tandem cluster remove ARGS` through `via`, which must be refused:
/// what it said.
fn refused(via: &Server, args: &[&str]) -> String {
    let mut all = vec!["cluster", "remove"];
    all.extend_from_slice(args);
    let out = via.cli(&all);
    let why = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "cluster remove {args:?} was not refused: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    why
}

/// The member ids `s` sees and the Raft voters.
fn members_and_voters(s: &Server) -> (Vec<u64>, Vec<u64>) {
    let st = status(s);
    let members = st["status"]["state"]["nodes"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.parse().unwrap())
        .collect();
    let mut voters: Vec<u64> = st["status"]["voters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    voters.sort();
    (members, voters)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_copy_is_removed_and_replaced_on_the_third_node_under_writes() {
    let dir = tempfile::tempdir().unwrap();
    let a = Server::start(&dir.path().join("a"));
    let b = Server::start(&dir.path().join("b"));
    let mut c = Server::start(&dir.path().join("c"));
    form(&a, &[&b, &c]);
    wait_members(&a, 3);
    let (ida, idb, idc) = (node_id(&a), node_id(&b), node_id(&c));
    // One copy only, on the least loaded node (a, the lowest id); then
    // the mirrored volume goes to b and c, led by b.
    a.cli_ok(&[
        "volume",
        "create",
        "solo",
        "--size",
        "16M",
        "--replicas",
        "1",
    ]);
    a.cli_ok(&[
        "volume",
        "create",
        VOLUME,
        "--size",
        &SIZE.to_string(),
        "--replicas",
        "2",
    ]);
    wait_until("the volumes exported everywhere, in sync", 30, || {
        [&a, &b, &c]
            .iter()
            .all(|s| s.cli_ok(&["volume", "list"]).contains(VOLUME))
            && all_in_sync(&a, VOLUME)
    });
    assert_eq!(
        volume_record(&a, "solo")["replicas"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        vec![&ida.to_string()]
    );
    let v = volume_record(&a, VOLUME);
    assert_eq!(v["primary"], idb, "{v}");
    assert!(v["replicas"][idc.to_string()].is_object(), "{v}");
    // The policy, shown with its default, then made short for the test.
    let out = a.cli_ok(&["cluster", "status"]);
    assert!(out.contains("of silent members after 1h"), "{out}");
    a.cli_ok(&["cluster", "set", "replace-delay", "1m"]);
    let out = b.cli_ok(&["cluster", "status"]);
    assert!(out.contains("of silent members after 1m"), "{out}");

    // Refused while everyone runs, each time with the reason.
    let why = refused(&a, &[&idc.to_string()]);
    assert!(why.contains("give --dead"), "{why}");
    let why = refused(&a, &[&ida.to_string(), "--dead"]);
    assert!(why.contains("it is the node asked"), "{why}");
    let why = refused(&b, &[&ida.to_string(), "--dead", "--force"]);
    assert!(
        why.contains("only in-sync copy of volume(s) solo: their data exists only there"),
        "{why}"
    );
    let why = refused(&a, &[&idc.to_string(), "--dead"]);
    assert!(
        why.contains("still heard from") && why.contains("with --force")
            || why.contains("leads the cluster"),
        "{why}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(b.portal(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // c's copy is lost with its node.
    c.kill();
    wait_until("c seen down", 30, || {
        [&a, &b].iter().any(|s| {
            status(s)["status"]["last_seen_ms"][idc.to_string()]
                .as_u64()
                .is_some_and(|ms| ms > 2000)
        })
    });
    // Pending re-placement of the silent copy, with its time.
    let out = a.cli_ok(&["volume", "status", VOLUME]);
    assert!(out.contains("(silent) is replaced "), "{out}");
    // Without c, removing b too would leave a alone: no quorum.
    let why = refused(&a, &[&idb.to_string(), "--dead", "--force"]);
    assert!(why.contains("no quorum"), "{why}");
    // A setting in a log entry of version 4 is not recorded while a
    // member cannot say it reads it.
    let out = a.cli(&["cluster", "set", "replace-delay", "2h"]);
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && why.contains(&format!("node {idc} does not answer")),
        "{why}"
    );
    assert!(why.contains("needs log version 4"), "{why}");

    // Removed: the volume runs degraded on b, asking for two copies.
    let t = Instant::now();
    let out = a.cli_ok(&["cluster", "remove", &idc.to_string(), "--dead"]);
    eprintln!("cluster remove --dead took {:?}:\n{out}", t.elapsed());
    assert!(out.contains("removed from the cluster"), "{out}");
    assert!(
        out.contains(&format!("volume {VOLUME}: degraded, 1 of 2 copies")),
        "{out}"
    );
    let (members, voters) = members_and_voters(&a);
    assert!(!members.contains(&idc) && !voters.contains(&idc));
    assert_eq!(voters, vec![ida, idb]);
    let removed = status(&a)["status"]["state"]["removed"].clone();
    assert_eq!(removed, serde_json::json!([idc]), "{removed}");

    // Re-placed on the third node (a) and filled by a full sync.
    let t = Instant::now();
    let mut saw_sync = String::new();
    wait_until("a new copy placed on a", 30, || {
        volume_record(&b, VOLUME)["replicas"][ida.to_string()].is_object()
    });
    let placed = t.elapsed();
    wait_until("the new copy in sync", 120, || {
        let out = b.cli_ok(&["cluster", "status"]);
        if out.contains("new copy on") {
            saw_sync = out;
        }
        all_in_sync(&b, VOLUME)
    });
    eprintln!(
        "new copy placed {placed:?} after the removal, in sync {:?} after it",
        t.elapsed()
    );
    if !saw_sync.is_empty() {
        assert!(saw_sync.contains("1 of 2 copies in sync"), "{saw_sync}");
    }
    let v = volume_record(&b, VOLUME);
    let mut holders: Vec<u64> = v["replicas"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.parse().unwrap())
        .collect();
    holders.sort();
    assert_eq!(holders, vec![ida, idb], "{v}");
    assert!(v.get("wanted").is_none(), "still short: {v}");
    let full = status(&b)["replication"][VOLUME]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["node"] == ida).cloned())
        .expect("the primary's view of the new copy");
    eprintln!(
        "full sync of the new copy: {} bytes of regions, {} bytes of data, of a {SIZE}-byte \
         volume",
        full["resync_total"], full["resync_data_bytes"]
    );
    // Only allocated data moves: the writes span EXTENTS extents.
    let written = EXTENTS * EXTENT * BLOCK as u64;
    let sent = full["resync_data_bytes"].as_u64().unwrap_or(0);
    assert!(
        sent <= 4 * written,
        "the full sync sent {sent} bytes, {written} were written: {full}"
    );
    let out = b.cli_ok(&["volume", "status", VOLUME]);
    assert!(out.contains("copies    2 of 2"), "{out}");
    tokio::time::sleep(Duration::from_millis(500)).await;

    stop.store(true, Ordering::Release);
    let seen = w.await.expect("writer");
    assert_eq!(seen.failed, 0, "a command failed at the initiator");
    assert_eq!(seen.dropped, 0, "a connection failed");
    assert!(seen.acknowledged > 100, "{} writes", seen.acknowledged);
    eprintln!("{} writes acknowledged, none failed", seen.acknowledged);
    let h = seen.history;
    verify(a.portal(), VOLUME, EXTENTS, &h).await;
    verify(b.portal(), VOLUME, EXTENTS, &h).await;

    // The removed node comes back: it learns it was removed, serves no
    // cluster volume, and the cluster goes on under the same term.
    let term = status(&a)["status"]["term"].as_u64().unwrap();
    c.restart();
    wait_until("c learns it was removed", 30, || {
        common::cluster::try_status(&c).is_some_and(|s| s["status"]["removed"] == true)
    });
    let out = c.cli_ok(&["cluster", "status"]);
    assert!(out.contains("was removed from the cluster"), "{out}");
    wait_until("c withdraws its volumes", 10, || {
        !c.cli_ok(&["volume", "list"]).contains(VOLUME)
    });
    let target = format!("{}:{VOLUME}", node_prefix());
    let login = testkit::Initiator::try_normal(c.portal(), &target, Duration::from_secs(3)).await;
    assert!(login.is_none(), "the removed node still serves {VOLUME}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        status(&a)["status"]["term"].as_u64().unwrap(),
        term,
        "the removed node disturbed the cluster"
    );
    assert!(!members_and_voters(&b).0.contains(&idc));
    // It never comes back under its id.
    let why = c.log_text();
    assert!(
        why.contains("removed from the cluster as dead"),
        "no word in c's log"
    );

    let (mut a, mut b) = (a, b);
    a.stop();
    b.stop();
    for s in [&a, &b] {
        let data = std::fs::read(volume_file_named(s, VOLUME)).unwrap();
        let len = (EXTENTS * EXTENT) as usize * BLOCK;
        if let Err(errors) = h.check_range(0, &data[..len], BLOCK) {
            panic!(
                "{} blocks wrong in the copy of {}: {:#?}",
                errors.len(),
                s.data_dir.display(),
                &errors[..errors.len().min(10)]
            );
        }
    }
    c.stop();
}

/// A dead witness removed; a copy on a node silent past the re-placement
/// delay replaced; that node, back, removed by force while it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_silent_past_the_delay_is_replaced_and_a_dead_witness_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let a = Server::start(&dir.path().join("a"));
    let b = Server::start(&dir.path().join("b"));
    let mut c = Server::start(&dir.path().join("c"));
    let (mut witness, _) = common::cluster::with_witness(dir.path(), &a, &[&b, &c]);
    let (ida, idb, idc) = (node_id(&a), node_id(&b), node_id(&c));
    let idw = members_and_voters(&a)
        .0
        .into_iter()
        .find(|n| ![ida, idb, idc].contains(n))
        .expect("the witness's id");

    // The witness dies and is removed: the volumes are left as they are,
    // and the data nodes vote alone.
    witness.kill();
    wait_until("the witness seen down", 30, || {
        [&a, &b].iter().any(|s| {
            status(s)["status"]["last_seen_ms"][idw.to_string()]
                .as_u64()
                .is_some_and(|ms| ms > 2000)
        })
    });
    let out = a.cli_ok(&["cluster", "remove", &idw.to_string(), "--dead"]);
    assert!(out.contains("removed from the cluster"), "{out}");
    assert!(!out.contains("degraded"), "{out}");
    assert_eq!(members_and_voters(&b).1, vec![ida, idb, idc]);

    // b leads the volume, c holds the other copy (a holds solo).
    a.cli_ok(&[
        "volume",
        "create",
        "solo",
        "--size",
        "16M",
        "--replicas",
        "1",
    ]);
    a.cli_ok(&[
        "volume",
        "create",
        VOLUME,
        "--size",
        &SIZE.to_string(),
        "--replicas",
        "2",
    ]);
    wait_until("the volume exported everywhere, in sync", 30, || {
        [&a, &b, &c]
            .iter()
            .all(|s| s.cli_ok(&["volume", "list"]).contains(VOLUME))
            && all_in_sync(&a, VOLUME)
    });
    assert_eq!(volume_record(&a, VOLUME)["primary"], idb);
    b.cli_ok(&["cluster", "set", "replace-delay", "5s"]);

    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(b.portal(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.kill();
    let killed = Instant::now();
    // Pending, then replaced by a copy on a, which a full sync fills; the
    // copy on c is dropped once a's is in sync. c stays a member.
    wait_until("a replacement placed on a", 30, || {
        volume_record(&b, VOLUME)["replicas"][ida.to_string()].is_object()
    });
    let placed = killed.elapsed();
    // Counted from c's last heartbeat, up to 200 ms before the kill.
    assert!(
        placed >= Duration::from_millis(4800),
        "replaced {placed:?} after the kill, before the 5 s delay"
    );
    // The new copy replaces c's (unless its full sync is over already and
    // c's copy gone, which a volume holding little data allows at once).
    let v = volume_record(&b, VOLUME);
    assert!(
        v["replacing"][ida.to_string()] == idc || v["replicas"][idc.to_string()].is_null(),
        "{v}"
    );
    wait_until("c's copy replaced", 120, || {
        let v = volume_record(&b, VOLUME);
        v["replicas"][idc.to_string()].is_null() && all_in_sync(&b, VOLUME)
    });
    eprintln!(
        "copy on the killed node replaced: placed {placed:?} after the kill (delay 5 s), done \
         {:?} after it",
        killed.elapsed()
    );
    assert!(members_and_voters(&a).0.contains(&idc));
    let out = b.cli_ok(&["volume", "status", VOLUME]);
    assert!(out.contains("copies    2 of 2"), "{out}");
    assert!(!out.contains("replaced"), "{out}");

    stop.store(true, Ordering::Release);
    let seen = w.await.expect("writer");
    assert_eq!(seen.failed, 0, "a command failed at the initiator");
    assert_eq!(seen.dropped, 0, "a connection failed");
    eprintln!("{} writes acknowledged, none failed", seen.acknowledged);
    verify(a.portal(), VOLUME, EXTENTS, &seen.history).await;
    verify(b.portal(), VOLUME, EXTENTS, &seen.history).await;

    // c returns as a member without a copy of the volume: it forwards.
    c.restart();
    wait_until("c back", 30, || {
        common::cluster::try_status(&c).is_some() && c.cli_ok(&["volume", "list"]).contains(VOLUME)
    });
    verify(c.portal(), VOLUME, EXTENTS, &seen.history).await;
    assert!(volume_record(&a, VOLUME)["replicas"][idc.to_string()].is_null());

    // Removed by force while it runs: the answer says so, and c learns
    // it was removed and withdraws the volume it forwarded.
    let why = refused(&a, &[&idc.to_string(), "--dead"]);
    assert!(why.contains("still heard from"), "{why}");
    let out = a.cli_ok(&["cluster", "remove", &idc.to_string(), "--dead", "--force"]);
    assert!(out.contains("forced: node"), "{out}");
    assert!(out.contains("stops serving cluster volumes"), "{out}");
    assert_eq!(members_and_voters(&b).1, vec![ida, idb]);
    wait_until("c learns it was removed", 30, || {
        common::cluster::try_status(&c).is_some_and(|s| s["status"]["removed"] == true)
    });
    wait_until("c withdraws the volume", 10, || {
        !c.cli_ok(&["volume", "list"]).contains(VOLUME)
    });
    verify(b.portal(), VOLUME, EXTENTS, &seen.history).await;
}
