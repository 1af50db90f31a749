//! Persistent reservations are the volume's, not a node's: a fencing
//! scenario like a two-node Windows failover cluster's, with the hosts on
//! different Tandem nodes. Two data nodes and a witness as processes on
//! loopback; host 1 reaches the volume through the node that is not its
//! primary, host 2 through both nodes (one path each, as multipath
//! initiators register every path), bystanders through both.
//!
//! Registrations, the reservation and preemptions made through one node are
//! seen and enforced through the other at once; the preempted paths hear
//! REGISTRATIONS PREEMPTED wherever they are logged in; the reservation
//! holds on the survivor after the primary is killed; and state saved with
//! APTPL survives a restart of the whole cluster.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{wait_converged, BLOCK};
use common::scsi::{
    login_as, mirrored, prout, prout_cdb, read_keys, read_reservation, register, settled,
};
use common::Server;
use testkit::{rw16, Initiator};

const VOLUME: &str = "shared";
const HOST1: &str = "iqn.2026-11.test:host1";
const HOST2: &str = "iqn.2026-11.test:host2";
const HOST3: &str = "iqn.2026-11.test:bystander";

const GOOD: u8 = 0x00;
const CONFLICT: u8 = 0x18;
/// Write Exclusive – Registrants Only.
const WERO: u8 = 0x05;

async fn write(i: &mut Initiator) -> u8 {
    settled(i, &rw16(0x8A, 0, 1, true), &[0x5A; BLOCK], 0)
        .await
        .status
}

async fn read(i: &mut Initiator) -> u8 {
    settled(i, &rw16(0x88, 0, 1, false), &[], BLOCK as u32)
        .await
        .status
}

/// The first answer after a preemption: REGISTRATIONS PREEMPTED (2A/05).
async fn hears_preempted(i: &mut Initiator, who: &str) {
    let o = i.run(&[0u8; 6], &[], 0).await.expect("an answer");
    assert_eq!(
        (o.status, o.sense_key, o.asc),
        (0x02, 0x06, (0x2A, 0x05)),
        "{who}: the first command after the preemption"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_fence_across_nodes_and_survive_failover_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, _witness, p) = mirrored(dir.path(), VOLUME, "64M");
    let f = 1 - p;
    let report = |nodes: &[Server; 2]| {
        format!(
            "--- primary's log:\n{}\n--- other's log:\n{}",
            nodes[p].log_text(),
            nodes[f].log_text()
        )
    };

    let mut host1 = login_as(&nodes[f], VOLUME, HOST1).await;
    let mut host2_p = login_as(&nodes[p], VOLUME, HOST2).await;
    let mut host2_f = login_as(&nodes[f], VOLUME, HOST2).await;
    let mut by_f = login_as(&nodes[f], VOLUME, HOST3).await;
    let mut by_p = login_as(&nodes[p], VOLUME, HOST3).await;

    // Registrations through either node are one list.
    register(&mut host1, 0x11).await;
    register(&mut host2_p, 0x22).await;
    register(&mut host2_f, 0x22).await;
    assert_eq!(read_keys(&mut by_f).await, vec![0x11, 0x22, 0x22]);
    assert_eq!(read_keys(&mut by_p).await, vec![0x11, 0x22, 0x22]);

    // Host 1 reserves through the forwarding node; the primary reports it
    // and both nodes fence the unregistered bystander's writes.
    let o = prout(&mut host1, 0x01, WERO, 0x11, 0, false).await;
    assert_eq!(o.status, GOOD, "RESERVE through the forwarding node: {o:?}");
    assert_eq!(read_reservation(&mut by_p).await, Some((0x11, WERO)));
    assert_eq!(write(&mut by_f).await, CONFLICT, "{}", report(&nodes));
    assert_eq!(write(&mut by_p).await, CONFLICT, "{}", report(&nodes));
    assert_eq!(read(&mut by_f).await, GOOD);
    assert_eq!(write(&mut host2_p).await, GOOD);
    assert_eq!(write(&mut host2_f).await, GOOD);

    // Host 1 fences host 2: both of its paths hear it and are fenced.
    let o = prout(&mut host1, 0x04, WERO, 0x11, 0x22, false).await;
    assert_eq!(o.status, GOOD, "PREEMPT: {o:?}");
    hears_preempted(&mut host2_p, "host 2 through the primary").await;
    hears_preempted(&mut host2_f, "host 2 through the other node").await;
    assert_eq!(write(&mut host2_p).await, CONFLICT);
    assert_eq!(write(&mut host2_f).await, CONFLICT);
    assert_eq!(read_keys(&mut by_p).await, vec![0x11]);

    // Host 2 comes back and preempts host 1 (PREEMPT AND ABORT), as the
    // surviving node of a Windows cluster does.
    register(&mut host2_p, 0x22).await;
    register(&mut host2_f, 0x22).await;
    let o = prout(&mut host2_f, 0x05, WERO, 0x22, 0x11, false).await;
    assert_eq!(o.status, GOOD, "PREEMPT AND ABORT: {o:?}");
    hears_preempted(&mut host1, "host 1").await;
    assert_eq!(write(&mut host1).await, CONFLICT);
    assert_eq!(write(&mut host2_p).await, GOOD);
    assert_eq!(read_reservation(&mut by_f).await, Some((0x22, WERO)));

    // The primary dies: the reservation holds on the survivor.
    nodes[p].kill();
    drop((host2_p, by_p));
    assert_eq!(
        write(&mut host2_f).await,
        GOOD,
        "the reservation holder's path through the survivor\n{}",
        nodes[f].log_text()
    );
    assert_eq!(write(&mut host1).await, CONFLICT);
    assert_eq!(write(&mut by_f).await, CONFLICT);
    assert_eq!(read_reservation(&mut by_f).await, Some((0x22, WERO)));
    assert_eq!(read_keys(&mut by_f).await, vec![0x22, 0x22]);

    // The old primary returns (empty-handed: it was killed) and takes over
    // when the survivor dies in turn. The state it starts from came from
    // the survivor, without APTPL: no power was lost.
    nodes[p].restart();
    wait_converged(&[&nodes[0], &nodes[1]], VOLUME, 60).unwrap();
    drop((host1, by_f));
    nodes[f].kill();
    let mut host2_p = login_as(&nodes[p], VOLUME, HOST2).await;
    let mut by_p = login_as(&nodes[p], VOLUME, HOST3).await;
    assert_eq!(
        read_reservation(&mut by_p).await,
        Some((0x22, WERO)),
        "after the second failover\n{}",
        nodes[p].log_text()
    );
    assert_eq!(read_keys(&mut by_p).await, vec![0x22, 0x22]);
    assert_eq!(write(&mut by_p).await, CONFLICT);
    // A new path of host 2 is a new nexus: fenced until it registers.
    assert_eq!(write(&mut host2_p).await, CONFLICT);
    register(&mut host2_p, 0x22).await;
    assert_eq!(write(&mut host2_p).await, GOOD);

    // APTPL: saved state survives a restart of every node.
    let o = prout(&mut host2_p, 0x06, 0, 0, 0x22, true).await;
    assert_eq!(
        o.status, GOOD,
        "REGISTER AND IGNORE EXISTING KEY with APTPL: {o:?}"
    );
    nodes[f].restart();
    wait_converged(&[&nodes[0], &nodes[1]], VOLUME, 60).unwrap();
    drop((host2_f, host2_p, by_p));
    for n in nodes.iter_mut() {
        n.stop();
    }
    for n in nodes.iter_mut() {
        n.restart();
    }
    wait_converged(&[&nodes[0], &nodes[1]], VOLUME, 60).unwrap();
    for n in &nodes {
        let mut by = login_as(n, VOLUME, HOST3).await;
        assert_eq!(
            read_keys(&mut by).await,
            vec![0x22, 0x22, 0x22],
            "{}",
            report(&nodes)
        );
        assert_eq!(read_reservation(&mut by).await, Some((0x22, WERO)));
        assert_eq!(write(&mut by).await, CONFLICT);
    }
}

/// A PERSISTENT RESERVE OUT with a parameter list of the wrong length gets
/// the same answer through either node, and changes nothing; without a
/// quorum a reservation change fails (NOT READY) and is not in force
/// anywhere afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_unrecordable_reservation_changes_fail_the_same_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, mut witness, p) = mirrored(dir.path(), VOLUME, "64M");
    let f = 1 - p;
    let mut through_p = login_as(&nodes[p], VOLUME, HOST1).await;
    let mut through_f = login_as(&nodes[f], VOLUME, HOST2).await;

    // PARAMETER LIST LENGTH ERROR (1A/00), the same from both nodes.
    let mut cdb = [0x5F, 0x00, 0, 0, 0, 0, 0, 0, 23, 0];
    for i in [&mut through_p, &mut through_f] {
        let o = settled(i, &cdb, &[0u8; 23], 0).await;
        assert_eq!((o.status, o.sense_key, o.asc), (0x02, 0x05, (0x1A, 0x00)));
    }
    // A parameter list shorter than the CDB announces.
    cdb[8] = 24;
    for i in [&mut through_p, &mut through_f] {
        let o = settled(i, &cdb, &[0u8; 16], 0).await;
        assert_eq!(o.status, 0x02, "{o:?}");
    }
    assert_eq!(read_keys(&mut through_f).await, Vec::<u64>::new());

    // The primary alone: no quorum, so no change.
    register(&mut through_p, 0x77).await;
    witness.kill();
    nodes[f].kill();
    drop(through_f);
    let t = Instant::now();
    let o = loop {
        // Once: an access state transition is the answer looked for here.
        let (cdb, params) = prout_cdb(0x01, WERO, 0x77, 0, false);
        let o = through_p.run(&cdb, &params, 0).await.expect("an answer");
        if o.status != GOOD || t.elapsed() > Duration::from_secs(20) {
            break o;
        }
        // Before its lease runs out the primary may still acknowledge:
        // undo and try again.
        let undone = prout(&mut through_p, 0x02, WERO, 0x77, 0, false).await;
        assert_eq!(undone.status, GOOD);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        (o.status, o.sense_key, o.asc),
        (0x02, 0x02, (0x04, 0x0A)),
        "a reservation without a quorum: {o:?}\n{}",
        nodes[p].log_text()
    );
    witness.restart();
    nodes[f].restart();
    wait_converged(&[&nodes[0], &nodes[1]], VOLUME, 60).unwrap();
    for n in &nodes {
        let mut i = login_as(n, VOLUME, HOST3).await;
        assert_eq!(
            read_reservation(&mut i).await,
            None,
            "the refused reservation is in force"
        );
        assert_eq!(read_keys(&mut i).await, vec![0x77]);
    }
}
