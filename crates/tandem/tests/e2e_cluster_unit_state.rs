//! A cluster volume's SCSI state in the cases around a change of primary
//! and across volumes: mode settings, state kept without APTPL, a
//! reservation change refused without a quorum, EXTENDED COPY into a volume
//! another node leads. Two data nodes and a witness as processes on
//! loopback, as in `e2e_cluster_reservations.rs`.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{on_loopback, primary_index, wait_converged, BLOCK};
use common::scsi::{
    login_as, mirrored, prout, prout_cdb, read_keys, read_reservation, register, settled,
};
use testkit::{rw16, Initiator, Outcome};

const VOLUME: &str = "shared";
const HOST1: &str = "iqn.2026-11.test:host1";
const HOST3: &str = "iqn.2026-11.test:bystander";
const GOOD: u8 = 0x00;

async fn write(i: &mut Initiator) -> Outcome {
    settled(i, &rw16(0x8A, 0, 1, false), &[0x5A; BLOCK], 0).await
}

/// Mode settings are the volume's: software write protect set with MODE
/// SELECT through the forwarding node holds after the primary is killed
/// (as would a cleared WCE, which makes initiators send no SYNCHRONIZE
/// CACHE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_settings_survive_a_failover() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, _witness, p) = mirrored(dir.path(), VOLUME, "64M");
    let f = 1 - p;
    let mut host = login_as(&nodes[f], VOLUME, HOST1).await;

    // Control mode page, SWP on.
    let sense = settled(&mut host, &[0x1A, 0x08, 0x0A, 0, 255, 0], &[], 255).await;
    assert_eq!(sense.status, GOOD, "{sense:?}");
    let end = sense.data[0] as usize + 1;
    let mut page = sense.data[4..end].to_vec();
    page[4] |= 0x08;
    let mut params = vec![0u8; 4];
    params.extend_from_slice(&page);
    let select = [0x15, 0x10, 0, 0, params.len() as u8, 0];
    let o = settled(&mut host, &select, &params, 0).await;
    assert_eq!(
        o.status, GOOD,
        "MODE SELECT: {o:?} after MODE SENSE {sense:?}"
    );
    let o = write(&mut host).await;
    assert_eq!(
        (o.status, o.sense_key),
        (0x02, 0x07),
        "write protected: {o:?}"
    );

    nodes[p].kill();
    let o = write(&mut host).await;
    assert_eq!(
        (o.status, o.sense_key, o.asc),
        (0x02, 0x07, (0x27, 0x00)),
        "after the failover the volume is no longer write protected\n{}",
        nodes[f].log_text()
    );
}

/// A restart of the whole cluster keeps exactly the APTPL state: what it
/// dropped does not come back through the peer after a failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_without_aptpl_stays_gone_after_a_restart_and_a_failover() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, _witness, _p) = mirrored(dir.path(), VOLUME, "64M");
    let mut host = login_as(&nodes[0], VOLUME, HOST1).await;
    // REGISTER 0x11 and RESERVE Write Exclusive - Registrants Only, no APTPL.
    register(&mut host, 0x11).await;
    let o = prout(&mut host, 0x01, 0x05, 0x11, 0, false).await;
    assert_eq!(o.status, GOOD, "{o:?}");
    drop(host);
    for n in nodes.iter_mut() {
        n.stop();
    }
    for n in nodes.iter_mut() {
        n.restart();
    }
    wait_converged(&[&nodes[0], &nodes[1]], VOLUME, 60).unwrap();
    let p = primary_index(&[&nodes[0], &nodes[1]], VOLUME).expect("a primary");
    let f = 1 - p;
    let mut by = login_as(&nodes[f], VOLUME, HOST3).await;
    assert_eq!(
        read_keys(&mut by).await,
        Vec::<u64>::new(),
        "keys after the restart"
    );
    // Give the hand-over to the peer time (it happens when the link forms).
    tokio::time::sleep(Duration::from_secs(2)).await;
    nodes[p].kill();
    assert_eq!(
        read_keys(&mut by).await,
        Vec::<u64>::new(),
        "registrations without APTPL came back after a full restart and a failover\n{}",
        nodes[f].log_text()
    );
}

/// A reservation change refused for want of a quorum (NOT READY) is in
/// force nowhere: not on the primary, not on the peer it reconnects to,
/// not after a failover to that peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_refused_without_a_quorum_is_in_force_nowhere_after_a_failover() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, mut witness, p) = mirrored(dir.path(), VOLUME, "64M");
    let f = 1 - p;
    let mut host = login_as(&nodes[p], VOLUME, HOST1).await;
    register(&mut host, 0x77).await;
    // The primary alone, its lease still running: RESERVE is refused.
    witness.kill();
    nodes[f].kill();
    let (cdb, params) = prout_cdb(0x01, 0x05, 0x77, 0, false);
    let o = host.run(&cdb, &params, 0).await.expect("an answer");
    assert_eq!((o.status, o.sense_key), (0x02, 0x02), "refused: {o:?}");
    drop(host);
    witness.restart();
    nodes[f].restart();
    wait_converged(&[&nodes[0], &nodes[1]], VOLUME, 60).unwrap();
    let q = primary_index(&[&nodes[0], &nodes[1]], VOLUME).expect("a primary");
    let mut by = login_as(&nodes[q], VOLUME, HOST3).await;
    assert_eq!(read_reservation(&mut by).await, None, "on the primary");
    drop(by);
    tokio::time::sleep(Duration::from_secs(2)).await;
    nodes[q].kill();
    let mut by = login_as(&nodes[1 - q], VOLUME, HOST3).await;
    assert_eq!(
        read_reservation(&mut by).await,
        None,
        "the RESERVE refused with NOT READY is in force after a failover"
    );
}

/// An SPC-2 reservation (RESERVE (6)) is not kept across a change of
/// primary: its holder hears POWER ON, RESET, OR BUS DEVICE RESET OCCURRED,
/// as after a reset, before another initiator can take it through the new
/// primary and write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holder_of_a_legacy_reservation_hears_that_a_failover_ended_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, _witness, p) = mirrored(dir.path(), VOLUME, "64M");
    let f = 1 - p;
    let mut holder = login_as(&nodes[f], VOLUME, HOST1).await;
    let mut other = login_as(&nodes[f], VOLUME, HOST3).await;
    let reserve6 = [0x16, 0, 0, 0, 0, 0];
    assert_eq!(settled(&mut holder, &reserve6, &[], 0).await.status, GOOD);
    assert_eq!(settled(&mut other, &reserve6, &[], 0).await.status, 0x18);
    nodes[p].kill();
    // What the holder hears before its next command succeeds.
    let mut heard = Vec::new();
    let t = Instant::now();
    loop {
        let o = holder.run(&[0u8; 6], &[], 0).await.expect("an answer");
        if o.status != 0x02 || t.elapsed() > Duration::from_secs(30) {
            break;
        }
        heard.push((o.sense_key, o.asc));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        heard.contains(&(0x06, (0x29, 0x00))),
        "the holder never heard that its reservation ended: {heard:?}\n{}",
        nodes[f].log_text()
    );
    // The reservation is gone: the other initiator takes it.
    assert_eq!(settled(&mut other, &reserve6, &[], 0).await.status, GOOD);
}

/// The NAA designation descriptor (code set .. value) of VPD page 0x83.
async fn naa(i: &mut Initiator) -> Vec<u8> {
    let o = settled(i, &[0x12, 1, 0x83, 0, 255, 0], &[], 255).await;
    assert_eq!(o.status, GOOD, "{o:?}");
    let end = 4 + u16::from_be_bytes([o.data[2], o.data[3]]) as usize;
    let mut at = 4;
    while at + 4 <= end {
        let len = o.data[at + 3] as usize;
        if o.data[at + 1] & 0x0F == 0x03 && (o.data[at + 1] >> 4) & 0x03 == 0 {
            return o.data[at..at + 4 + len].to_vec();
        }
        at += 4 + len;
    }
    panic!("no NAA designator: {o:?}");
}

/// EXTENDED COPY sent to a volume whose primary is node X, with a
/// destination volume whose primary is node Y: X's unit of the destination
/// holds none of its reservations (they are Y's), and Y takes writes only
/// as commands to its unit, so an initiator fenced from the destination
/// cannot write it this way either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_copy_does_not_write_past_a_reservation_another_primary_holds() {
    const SOURCE: &str = "source";
    const VICTIM: &str = "victim";
    let dir = tempfile::tempdir().unwrap();
    let (a, b, _witness, _token) = on_loopback(dir.path());
    // One copy: on the least loaded node. Then two: the primary is the
    // node that held none.
    a.cli_ok(&[
        "volume",
        "create",
        SOURCE,
        "--size",
        "16M",
        "--replicas",
        "1",
    ]);
    a.cli_ok(&[
        "volume",
        "create",
        VICTIM,
        "--size",
        "16M",
        "--replicas",
        "2",
    ]);
    wait_converged(&[&a, &b], VICTIM, 60).unwrap();
    let nodes = [a, b];
    let x = primary_index(&[&nodes[0], &nodes[1]], SOURCE).expect("source's primary");
    let y = primary_index(&[&nodes[0], &nodes[1]], VICTIM).expect("victim's primary");
    assert_ne!(
        x, y,
        "this scenario needs the two primaries on different nodes"
    );

    // Host 2 reserves the victim EXCLUSIVE ACCESS through its primary.
    let mut host2 = login_as(&nodes[y], VICTIM, "iqn.2026-11.test:host2").await;
    register(&mut host2, 0x22).await;
    let o = prout(&mut host2, 0x01, 0x03, 0x22, 0, false).await;
    assert_eq!(o.status, GOOD, "{o:?}");
    // Host 1 is fenced from the victim, through either node.
    let mut to_victim = login_as(&nodes[x], VICTIM, HOST1).await;
    let o = settled(&mut to_victim, &rw16(0x8A, 0, 1, false), &[0x66; BLOCK], 0).await;
    assert_eq!(o.status, 0x18, "fenced: {o:?}");
    let victim_id = naa(&mut to_victim).await;
    let mut to_source = login_as(&nodes[x], SOURCE, HOST1).await;
    let source_id = naa(&mut to_source).await;
    let o = settled(
        &mut to_source,
        &rw16(0x8A, 0, 8, false),
        &[0x66; 8 * BLOCK],
        0,
    )
    .await;
    assert_eq!(o.status, GOOD, "{o:?}");

    // EXTENDED COPY (LID1): 8 blocks from source LBA 0 to victim LBA 0.
    let mut list = vec![0u8; 16];
    list[1] = 0x18; // no list id, no held results
    list[2..4].copy_from_slice(&64u16.to_be_bytes());
    list[8..12].copy_from_slice(&28u32.to_be_bytes());
    for id in [&source_id, &victim_id] {
        let mut t = [0u8; 32];
        t[0] = 0xE4;
        t[4..4 + id.len()].copy_from_slice(id);
        t[29..32].copy_from_slice(&[0, 0x02, 0]);
        list.extend_from_slice(&t);
    }
    let mut s = [0u8; 28];
    s[0] = 0x02;
    s[2..4].copy_from_slice(&0x18u16.to_be_bytes());
    s[6..8].copy_from_slice(&1u16.to_be_bytes());
    s[10..12].copy_from_slice(&8u16.to_be_bytes());
    list.extend_from_slice(&s);
    let mut cdb = [0u8; 16];
    cdb[0] = 0x83;
    cdb[10..14].copy_from_slice(&(list.len() as u32).to_be_bytes());
    let o = settled(&mut to_source, &cdb, &list, 0).await;
    let read = settled(&mut host2, &rw16(0x88, 0, 1, false), &[], BLOCK as u32).await;
    assert!(
        o.status != GOOD && read.data[..BLOCK] != [0x66; BLOCK],
        "a fenced initiator overwrote the reserved volume with EXTENDED COPY: status {:#x} ({o:?}), victim block 0 starts {:#x}",
        o.status,
        read.data[0]
    );
}
