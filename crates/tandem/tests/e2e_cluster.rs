//! A two-node cluster with a witness, as three real processes on loopback:
//! a client writes numbered blocks (FUA) through the primary, the primary is
//! killed with SIGKILL, the other node takes over, every acknowledged write
//! reads back from it, the killed node returns and resyncs; then the
//! secondary is killed while writes go on, returns and resyncs; the two
//! copies end up byte-identical.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, node_prefix, tandem_bin, Server};
use testkit::history::{block, History};
use testkit::{rw16, Initiator};

const BLOCK: usize = 512;
const EXTENT: u64 = 8;
const EXTENTS: u64 = 128;

struct Witness(Child);

impl Drop for Witness {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn status(s: &Server) -> serde_json::Value {
    serde_json::from_str(&s.cli_ok(&["cluster", "status", "--json"])).unwrap()
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(secs), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn session(port: u16) -> Option<Initiator> {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let target = format!("{}:vm", node_prefix());
    let connect = async {
        let mut i = Initiator::normal(addr, &target, &[]).await;
        // Clear the power-on / ALUA unit attentions.
        for _ in 0..4 {
            if i.simple(&[0u8; 6]).await.0 == 0 {
                break;
            }
        }
        i
    };
    tokio::time::timeout(Duration::from_secs(3), connect)
        .await
        .ok()
}

/// One FUA write of extent `n` as write `seq`; true when acknowledged.
async fn write(i: &mut Initiator, h: &mut History, n: u64, seq: u64) -> Option<bool> {
    let lba = n * EXTENT;
    let mut data = Vec::with_capacity(EXTENT as usize * BLOCK);
    for b in lba..lba + EXTENT {
        data.extend(block(seq, b, BLOCK));
    }
    h.issued(lba, EXTENT, seq);
    // A unit attention (ALUA state changed, capacity, reset) is reported
    // once, and "access state transition" lasts while the cluster settles;
    // initiators retry both, as here (up to about 2 s).
    for _ in 0..40 {
        let o = tokio::time::timeout(
            Duration::from_secs(5),
            i.run(&rw16(0x8A, lba, EXTENT as u32, true), &data, 0),
        )
        .await
        .ok()??;
        if o.status == 0 {
            h.durable(lba, EXTENT, seq);
            return Some(true);
        }
        match (o.sense_key, o.asc) {
            (6, _) => {}
            (2, (0x04, 0x0A)) => tokio::time::sleep(Duration::from_millis(50)).await,
            _ => {
                eprintln!(
                    "write {seq} failed: sense key {:#x} asc {:02x?}",
                    o.sense_key, o.asc
                );
                return Some(false);
            }
        }
    }
    Some(false)
}

async fn verify(port: u16, h: &History) {
    let mut i = session(port).await.expect("session for verification");
    let blocks = (EXTENTS * EXTENT) as u32;
    let mut o = None;
    for _ in 0..100 {
        let r = i
            .run(&rw16(0x88, 0, blocks, false), &[], blocks * BLOCK as u32)
            .await
            .expect("read");
        match (r.status, r.sense_key, r.asc) {
            (0, _, _) => {
                o = Some(r);
                break;
            }
            // Retried like an initiator does while the node takes up its role.
            (_, 6, _) | (_, 2, (0x04, 0x0A)) => tokio::time::sleep(Duration::from_millis(50)).await,
            _ => panic!(
                "read failed: sense key {:#x} asc {:02x?}",
                r.sense_key, r.asc
            ),
        }
    }
    let o = o.expect("reads kept failing with access state transition");
    if let Err(errors) = h.check_range(0, &o.data, BLOCK) {
        panic!(
            "{} blocks wrong: {:#?}",
            errors.len(),
            &errors[..errors.len().min(10)]
        );
    }
}

fn volume_file(s: &Server) -> std::path::PathBuf {
    let dir = s.data_dir.join("volumes");
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path().join("data");
        if p.exists() {
            return p;
        }
    }
    panic!("no volume data under {}", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_then_secondary_killed_no_acknowledged_write_lost_and_copies_converge() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Server::start(&dir.path().join("a"));
    let mut b = Server::start(&dir.path().join("b"));
    let out = a.cli_ok(&["cluster", "init"]);
    let token = out
        .split_whitespace()
        .find(|w| w.starts_with("tandem-join:"))
        .expect("init prints a join token")
        .to_string();
    b.cli_ok(&["cluster", "join", &a.cluster_addr(), "--token", &token]);
    let wport = free_port();
    let witness = Witness(
        Command::new(tandem_bin())
            .args([
                "witness",
                "--data-dir",
                dir.path().join("w").to_str().unwrap(),
                "--listen",
                &format!("127.0.0.1:{wport}"),
                "--join",
                &a.cluster_addr(),
                "--token",
                &token,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("three members", 20, || {
        status(&a)["status"]["state"]["nodes"]
            .as_object()
            .is_some_and(|n| n.len() == 3)
    });

    a.cli_ok(&["volume", "create", "vm", "--size", "4M", "--replicas", "2"]);
    wait_until("both nodes export the volume", 20, || {
        b.cli_ok(&["volume", "list"]).contains("vm") && a.cli_ok(&["volume", "list"]).contains("vm")
    });
    let s = status(&a);
    let primary_id = s["status"]["state"]["volumes"]["vm"]["primary"]
        .as_u64()
        .unwrap();
    let a_id = s["status"]["me"].as_u64().unwrap();
    let (primary, other) = if primary_id == a_id {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };

    // Writes through the primary, and a few forwarded by the other node.
    let mut h = History::default();
    let mut seq = 0;
    let mut i = session(primary.iscsi_port)
        .await
        .expect("session on the primary");
    for n in 0..EXTENTS {
        seq += 1;
        assert_eq!(
            write(&mut i, &mut h, n, seq).await,
            Some(true),
            "write {seq}"
        );
    }
    let mut f = session(other.iscsi_port)
        .await
        .expect("session on the other node");
    for n in 0..8 {
        seq += 1;
        assert_eq!(
            write(&mut f, &mut h, n, seq).await,
            Some(true),
            "forwarded write {seq}"
        );
    }
    verify(other.iscsi_port, &h).await;

    // Kill -9 the primary; the other node must take over.
    primary.kill();
    let killed = Instant::now();
    let mut resumed = None;
    let mut n = 0;
    while resumed.is_none() {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "I/O never resumed after failover"
        );
        let Some(mut s) = session(other.iscsi_port).await else {
            continue;
        };
        loop {
            seq += 1;
            n = (n + 1) % EXTENTS;
            match write(&mut s, &mut h, n, seq).await {
                Some(true) => {
                    resumed = Some(killed.elapsed());
                    break;
                }
                Some(false) => tokio::time::sleep(Duration::from_millis(50)).await,
                None => break,
            }
            if killed.elapsed() > Duration::from_secs(30) {
                break;
            }
        }
    }
    let pause = resumed.unwrap();
    eprintln!("I/O pause after SIGKILL of the primary: {pause:?}");
    assert!(pause < Duration::from_secs(10), "failover took {pause:?}");
    let mut s = session(other.iscsi_port).await.unwrap();
    for k in 0..EXTENTS {
        seq += 1;
        assert_eq!(write(&mut s, &mut h, k, seq).await, Some(true));
    }
    verify(other.iscsi_port, &h).await;
    let st = status(other);
    let v = &st["status"]["state"]["volumes"]["vm"];
    assert_ne!(v["primary"].as_u64().unwrap(), primary_id, "a new primary");
    assert!(v["epoch"].as_u64().unwrap() >= 2);

    // The old primary returns, resyncs what it missed, and is in sync again.
    primary.restart();
    wait_until("returning node back in sync", 60, || {
        let st = status(other);
        let reps = &st["status"]["state"]["volumes"]["vm"]["replicas"];
        reps.as_object()
            .is_some_and(|r| r.values().all(|x| x["state"] == "in-sync"))
    });
    verify(primary.iscsi_port, &h).await;

    // Now the secondary dies: the primary goes on alone once Raft records
    // the copy as out of sync, and the copy catches up when it returns.
    primary.kill();
    for k in 0..16 {
        seq += 1;
        assert_eq!(
            write(&mut s, &mut h, k, seq).await,
            Some(true),
            "write {seq} with the secondary dead"
        );
    }
    let st = status(other);
    let reps = st["status"]["state"]["volumes"]["vm"]["replicas"].clone();
    assert!(
        reps.as_object()
            .unwrap()
            .values()
            .any(|x| x["state"] == "out-of-sync"),
        "the dead secondary is recorded out of sync: {reps}"
    );
    primary.restart();
    wait_until("secondary back in sync", 60, || {
        let st = status(other);
        let reps = &st["status"]["state"]["volumes"]["vm"]["replicas"];
        reps.as_object()
            .is_some_and(|r| r.values().all(|x| x["state"] == "in-sync"))
    });
    verify(other.iscsi_port, &h).await;
    drop(s);
    drop(i);
    drop(f);
    // Both copies hold the same bytes.
    primary.stop();
    other.stop();
    let (x, y) = (
        std::fs::read(volume_file(primary)).unwrap(),
        std::fs::read(volume_file(other)).unwrap(),
    );
    assert!(x == y, "the two copies differ after resync");
    drop(witness);
}
