//! The floating address never has two holders: two data nodes and a
//! witness in network namespaces (needs root), the holder of the floating
//! address partitioned from the other node and the witness with nftables
//! while the test's namespace still reaches it. It must remove the address
//! (its lease runs out) before the other node adds it; the two hosts are
//! sampled every few milliseconds and never both have it. Once the
//! partition heals, the new holder keeps it and the old one does not take
//! it back.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{node_id, status, wait_until};
use common::netns::{two_nodes_and_witness, Lan};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_holder_drops_the_floating_address_before_another_takes_it() {
    let Some(lan) = Lan::or_skip(3) else { return };
    let dir = tempfile::tempdir().unwrap();
    let (nodes, _witness, _) = two_nodes_and_witness(&lan, dir.path(), 2, "4M");
    let ids = [node_id(&nodes[0]), node_id(&nodes[1])];
    let floating = lan.spare_addr(60);
    nodes[0].cli_ok(&[
        "cluster",
        "set",
        "floating-address",
        &format!("{floating}/24"),
        "--interface",
        "eth0",
    ]);
    wait_until("a holder", 15, || {
        lan.has_address(0, &floating) || lan.has_address(1, &floating)
    });
    let p = if lan.has_address(0, &floating) { 0 } else { 1 };
    let o = 1 - p;

    let cut = Instant::now();
    lan.partition(p, &[o, 2]);
    let mut dropped = None;
    let taken = loop {
        let old = lan.has_address(p, &floating);
        let new = lan.has_address(o, &floating);
        assert!(
            !(old && new),
            "both data nodes hold the floating address {:?} after the cut",
            cut.elapsed()
        );
        if !old && dropped.is_none() {
            dropped = Some(cut.elapsed());
        }
        if new {
            break cut.elapsed();
        }
        assert!(
            cut.elapsed() < Duration::from_secs(15),
            "the floating address never reached the other node:\n{}",
            nodes[o].log_text()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let dropped = dropped.expect("dropped before taken");
    eprintln!(
        "holder cut off: address removed from it {dropped:?} after the cut, added on the other node {taken:?} after (a gap of {:?})",
        taken - dropped
    );
    // The lease (1 s from the last answered heartbeat) ends at least 0.5 s
    // before the leader may give the address away.
    assert!(
        dropped <= Duration::from_millis(1500),
        "a cut-off holder kept the address {dropped:?}"
    );
    assert!(
        taken - dropped >= Duration::from_millis(300),
        "the address moved only {:?} after the old holder dropped it",
        taken - dropped
    );
    assert!(!lan.has_address(p, &floating));
    assert_eq!(
        status(&nodes[o])["status"]["state"]["floating_holder"].as_u64(),
        Some(ids[o])
    );

    // Healed: the new holder keeps it; the old one, alive again, does not
    // take it back.
    lan.heal(p);
    wait_until("the old holder back in the cluster", 20, || {
        status(&nodes[o])["status"]["last_seen_ms"][ids[p].to_string()]
            .as_u64()
            .is_some_and(|ms| ms < 500)
    });
    let since = Instant::now();
    while since.elapsed() < Duration::from_secs(2) {
        assert!(
            !lan.has_address(p, &floating),
            "the old holder took it back"
        );
        assert!(lan.has_address(o, &floating), "the new holder lost it");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
