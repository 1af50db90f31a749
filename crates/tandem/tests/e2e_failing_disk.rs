//! A primary whose disk fails: two data nodes and a witness as real
//! processes on loopback, the volume's primary with its volumes on a
//! tmpfs of its own (a mount namespace made for it), an initiator writing
//! numbered blocks (FUA) through that node's portal with the history
//! checker. Mid-run the tmpfs is filled up: the primary's writes to new
//! blocks fail with ENOSPC there. No command may fail at the initiator;
//! the volume moves to the other node at a new epoch, the old primary's
//! copy is recorded out of sync and detached ("disk failed: ..." in
//! `tandem volume status`, a copy-detached event), every acknowledged write
//! reads back through both portals, and once the space is given back the
//! old primary's copy is in sync again by itself.
//!
//! The tmpfs needs root (as CI runs); elsewhere the test says so and does
//! nothing.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::cluster::{
    all_in_sync, counting_writer, node_id, verify, volume_record, wait_until, with_witness,
};
use common::Server;

const VOLUME: &str = "vm";
/// 4 KiB extents over the whole 16 MiB volume: the writer reaches blocks
/// the disk never held long after the tmpfs is full.
const EXTENTS: u64 = 4096;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_whose_disk_fills_up_hands_over_without_a_failed_command() {
    let dir = tempfile::tempdir().unwrap();
    let Some(a) = Server::start_on_tmpfs(&dir.path().join("a"), "volumes", "48M") else {
        eprintln!("skipped: no tmpfs can be mounted in a mount namespace here (needs root)");
        return;
    };
    let b = Server::start(&dir.path().join("b"));
    let (_witness, _) = with_witness(dir.path(), &a, &[&b]);
    let (ida, idb) = (node_id(&a), node_id(&b));
    a.cli_ok(&[
        "volume",
        "create",
        VOLUME,
        "--size",
        "16M",
        "--replicas",
        "2",
    ]);
    wait_until("both nodes export the volume, in sync", 30, || {
        b.cli_ok(&["volume", "list"]).contains(VOLUME) && all_in_sync(&a, VOLUME)
    });
    if volume_record(&a, VOLUME)["primary"].as_u64() != Some(ida) {
        a.cli_ok(&["volume", "move-primary", VOLUME, "--to", &ida.to_string()]);
    }
    let epoch = volume_record(&a, VOLUME)["epoch"].as_u64().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writer = counting_writer(a.portal(), VOLUME, EXTENTS, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    a.fill_tmpfs();
    wait_until("the volume moves to the other node", 60, || {
        volume_record(&b, VOLUME)["primary"].as_u64() == Some(idb)
    });
    let record = volume_record(&b, VOLUME);
    assert!(record["epoch"].as_u64().unwrap() > epoch, "{record}");
    assert_eq!(
        record["replicas"][ida.to_string()]["state"].as_str(),
        Some("out-of-sync"),
        "the old primary's copy is recorded out of sync: {record}"
    );
    // Writes go on through the old primary's portal (it forwards).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t = std::time::Instant::now();
    loop {
        let out = b.cli_ok(&["volume", "status", VOLUME]);
        if out.contains("disk failed") {
            break;
        }
        if t.elapsed() > Duration::from_secs(60) {
            let tail = |s: &Server| {
                let log = s.log_text();
                let lines: Vec<&str> = log.lines().collect();
                lines[lines.len().saturating_sub(25)..].join("\n")
            };
            panic!(
                "the new primary does not report the copy's disk:\n{out}\nnew primary:\n{}\nold primary:\n{}",
                tail(&b),
                tail(&a)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Release);
    let seen = writer.await.unwrap();
    eprintln!(
        "acknowledged {}, failed {}, dropped {}",
        seen.acknowledged, seen.failed, seen.dropped
    );
    assert!(seen.acknowledged > 0);
    assert_eq!(seen.failed, 0, "no command failed at the initiator");
    let events = a.cli_ok(&["events", "--kind", "copy-detached"]);
    assert!(events.contains("disk failed"), "{events}");

    verify(b.portal(), VOLUME, EXTENTS, &seen.history).await;
    verify(a.portal(), VOLUME, EXTENTS, &seen.history).await;

    // The space comes back: the old primary's copy is brought back in
    // sync by itself (tried again with a wait of at most 30 s).
    a.empty_tmpfs();
    wait_until("the old primary's copy is in sync again", 90, || {
        all_in_sync(&b, VOLUME)
    });
    verify(a.portal(), VOLUME, EXTENTS, &seen.history).await;
    let out = b.cli_ok(&["volume", "status", VOLUME]);
    assert!(!out.contains("disk failed"), "{out}");
}
