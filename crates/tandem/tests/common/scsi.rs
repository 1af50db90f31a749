//! SCSI as the scenario tests of a mirrored volume speak it: a cluster with
//! the volume in sync, sessions as a named initiator, commands run as
//! initiators run them, and persistent reservations.

use std::path::Path;
use std::time::{Duration, Instant};

use testkit::{Initiator, Outcome};

use super::cluster::{on_loopback, primary_index, wait_converged, Witness};
use super::{node_prefix, Server};

/// Two data nodes and a witness on loopback with `volume` (`size`, e.g.
/// "64M") mirrored on both and in sync: the nodes, the witness, and the
/// index of the primary among the nodes.
pub fn mirrored(dir: &Path, volume: &str, size: &str) -> ([Server; 2], Witness, usize) {
    let (a, b, witness, _token) = on_loopback(dir);
    a.cli_ok(&[
        "volume",
        "create",
        volume,
        "--size",
        size,
        "--replicas",
        "2",
    ]);
    wait_converged(&[&a, &b], volume, 60).unwrap();
    let p = primary_index(&[&a, &b], volume).expect("a primary");
    ([a, b], witness, p)
}

/// Logs `initiator` in to `volume` through `s`, unit attentions cleared.
pub async fn login_as(s: &Server, volume: &str, initiator: &str) -> Initiator {
    let target = format!("{}:{volume}", node_prefix());
    let mut i = Initiator::connect(s.portal()).await;
    i.login(&[
        ("InitiatorName", initiator),
        ("TargetName", &target),
        ("SessionType", "Normal"),
    ])
    .await;
    for _ in 0..8 {
        if i.simple(&[0u8; 6]).await.0 == 0 {
            break;
        }
    }
    i
}

/// Runs a command as initiators do: a unit attention or an access state
/// transition (a failover under way) is sent again, for up to 30 s.
pub async fn settled(i: &mut Initiator, cdb: &[u8], data: &[u8], read_len: u32) -> Outcome {
    let t = Instant::now();
    loop {
        let o = i.run(cdb, data, read_len).await.expect("an answer");
        let retry = o.status == 0x02
            && (o.sense_key == 0x06 || (o.sense_key == 0x02 && o.asc == (0x04, 0x0A)));
        if !retry || t.elapsed() > Duration::from_secs(30) {
            return o;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// PERSISTENT RESERVE OUT with the basic 24-byte parameter list.
pub async fn prout(
    i: &mut Initiator,
    action: u8,
    kind: u8,
    key: u64,
    sa_key: u64,
    aptpl: bool,
) -> Outcome {
    let (cdb, p) = prout_cdb(action, kind, key, sa_key, aptpl);
    settled(i, &cdb, &p, 0).await
}

/// The CDB and basic 24-byte parameter list of a PERSISTENT RESERVE OUT.
pub fn prout_cdb(action: u8, kind: u8, key: u64, sa_key: u64, aptpl: bool) -> ([u8; 10], [u8; 24]) {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x5F;
    cdb[1] = action;
    cdb[2] = kind;
    cdb[5..9].copy_from_slice(&24u32.to_be_bytes());
    let mut p = [0u8; 24];
    p[..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[20] = u8::from(aptpl);
    (cdb, p)
}

/// REGISTER `key` for a nexus not registered yet.
pub async fn register(i: &mut Initiator, key: u64) {
    let o = prout(i, 0x00, 0, 0, key, false).await;
    assert_eq!(o.status, 0, "REGISTER: {o:?}");
}

/// READ KEYS, sorted.
pub async fn read_keys(i: &mut Initiator) -> Vec<u64> {
    let o = settled(i, &[0x5E, 0x00, 0, 0, 0, 0, 0, 0x04, 0x00, 0], &[], 1024).await;
    assert_eq!(o.status, 0, "READ KEYS: {o:?}");
    let len = u32::from_be_bytes(o.data[4..8].try_into().unwrap()) as usize;
    let mut k: Vec<u64> = o.data[8..8 + len]
        .chunks(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
        .collect();
    k.sort_unstable();
    k
}

/// READ RESERVATION: the holder's key and the type, if reserved.
pub async fn read_reservation(i: &mut Initiator) -> Option<(u64, u8)> {
    let o = settled(i, &[0x5E, 0x01, 0, 0, 0, 0, 0, 0, 64, 0], &[], 64).await;
    assert_eq!(o.status, 0, "READ RESERVATION: {o:?}");
    let len = u32::from_be_bytes(o.data[4..8].try_into().unwrap());
    (len >= 16).then(|| {
        (
            u64::from_be_bytes(o.data[8..16].try_into().unwrap()),
            o.data[21] & 0x0F,
        )
    })
}
