//! Two data nodes and a witness, each a `tandem` process in its own network
//! namespace with a real address; the initiator runs outside and reaches all
//! of them over a bridge.
//!
//! 1. The primary is partitioned from the other node and the witness with
//!    nftables, while the initiator still reaches it: it must not
//!    acknowledge a single further write nor serve a read, the other node
//!    takes over, and once the partition heals the old primary follows the
//!    new one and catches up.
//! 2. The new primary's link goes down altogether (`ip link set down`):
//!    the first node takes the volume back, and the cut node catches up
//!    when its link returns.
//!
//! After each step every acknowledged write reads back (history checker),
//! the copies are in sync, and the nodes' own records show that no two of
//! them acknowledged writes at the same time; at the end both data files
//! are byte-identical.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{
    ack_windows, all_in_sync, assert_one_writer, node_id, session, verify, volume_file,
    volume_record, wait_until, write, write_until_acknowledged, BLOCK, EXTENT,
};
use common::netns::{two_nodes_and_witness, Lan};
use common::Server;
use testkit::history::History;
use testkit::rw16;

const EXTENTS: u64 = 64;

/// Writes every extent once through `portal`, each acknowledged.
async fn write_all(portal: std::net::SocketAddr, h: &mut History, seq: &mut u64) {
    let mut s = session(portal, "vm").await.expect("session");
    for n in 0..EXTENTS {
        *seq += 1;
        assert_eq!(
            write(&mut s, h, n, *seq).await,
            Some(true),
            "write {seq} through {portal}"
        );
    }
}

/// Keeps writing through a node cut off from the cluster for `span`; none
/// of those writes may be acknowledged, nor a read answered.
async fn nothing_acknowledged(
    portal: std::net::SocketAddr,
    h: &mut History,
    seq: &mut u64,
    span: Duration,
) {
    let start = Instant::now();
    let mut tried = 0;
    while start.elapsed() < span {
        let Some(mut s) = session(portal, "vm").await else {
            continue;
        };
        while start.elapsed() < span {
            *seq += 1;
            tried += 1;
            match write(&mut s, h, tried % EXTENTS, *seq).await {
                Some(true) => panic!(
                    "write {seq} acknowledged by a primary cut off from the cluster {:?} after the cut",
                    start.elapsed()
                ),
                Some(false) => tokio::time::sleep(Duration::from_millis(100)).await,
                None => break,
            }
            let r = tokio::time::timeout(
                Duration::from_secs(3),
                s.run(
                    &rw16(0x88, 0, EXTENT as u32, false),
                    &[],
                    EXTENT as u32 * BLOCK as u32,
                ),
            )
            .await;
            if let Ok(Some(o)) = r {
                assert_ne!(o.status, 0, "a node cut off from the cluster served a read");
            }
        }
    }
    assert!(tried > 0, "no write was even tried through {portal}");
}

fn primary_host(servers: &[&Server; 2], ids: [u64; 2]) -> usize {
    let p = volume_record(servers[0], "vm")["primary"].as_u64().unwrap();
    ids.iter()
        .position(|&i| i == p)
        .expect("primary is a data node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_primary_stops_and_the_other_node_takes_over() {
    let Some(lan) = Lan::or_skip(3) else { return };
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, _witness, _) = two_nodes_and_witness(&lan, dir.path(), 2, "4M");
    let ids = [node_id(&nodes[0]), node_id(&nodes[1])];
    let p = primary_host(&[&nodes[0], &nodes[1]], ids);
    let o = 1 - p;

    let mut h = History::default();
    let mut seq = 0;
    write_all(nodes[p].portal(), &mut h, &mut seq).await;

    // 1. Partition the primary from the other node and the witness. With
    // the replica in sync, the primary cannot acknowledge anything without
    // it (recording it lost needs a quorum).
    wait_until("the replica in sync", 30, || all_in_sync(&nodes[p], "vm"));
    lan.partition(p, &[o, 2]);
    nothing_acknowledged(nodes[p].portal(), &mut h, &mut seq, Duration::from_secs(4)).await;
    let pause = write_until_acknowledged(
        nodes[o].portal(),
        "vm",
        &mut h,
        &mut seq,
        EXTENTS,
        Duration::from_secs(30),
    )
    .await;
    eprintln!("first write on the other node acknowledged {pause:?} after trying it");
    let record = volume_record(&nodes[o], "vm");
    assert_eq!(
        record["primary"].as_u64(),
        Some(ids[o]),
        "the other node leads"
    );
    write_all(nodes[o].portal(), &mut h, &mut seq).await;
    verify(nodes[o].portal(), "vm", EXTENTS, &h).await;

    lan.heal(p);
    wait_until("the old primary back in sync", 60, || {
        all_in_sync(&nodes[o], "vm")
    });
    // Through the old primary, which now forwards to the new one.
    verify(nodes[p].portal(), "vm", EXTENTS, &h).await;
    write_all(nodes[p].portal(), &mut h, &mut seq).await;
    let mut windows = ack_windows(&nodes[p], "vm");
    windows.extend(ack_windows(&nodes[o], "vm"));
    assert_one_writer(&windows);

    // 2. The new primary's link goes down: the first node takes over.
    lan.cut(o);
    let pause = write_until_acknowledged(
        nodes[p].portal(),
        "vm",
        &mut h,
        &mut seq,
        EXTENTS,
        Duration::from_secs(30),
    )
    .await;
    eprintln!("I/O resumed {pause:?} after the primary's link went down");
    write_all(nodes[p].portal(), &mut h, &mut seq).await;
    lan.mend(o);
    wait_until("the cut node back in sync", 60, || {
        all_in_sync(&nodes[p], "vm")
    });
    verify(nodes[o].portal(), "vm", EXTENTS, &h).await;
    verify(nodes[p].portal(), "vm", EXTENTS, &h).await;

    let mut windows = ack_windows(&nodes[p], "vm");
    windows.extend(ack_windows(&nodes[o], "vm"));
    assert!(
        windows.iter().filter(|w| w.0 == ids[p]).count() >= 2,
        "the first node acknowledged in two terms: {windows:?}"
    );
    assert_one_writer(&windows);

    for n in nodes.iter_mut() {
        n.stop();
    }
    let (x, y) = (
        std::fs::read(volume_file(&nodes[0])).unwrap(),
        std::fs::read(volume_file(&nodes[1])).unwrap(),
    );
    assert!(x == y, "the two copies differ after the partitions healed");
}
