//! A mirrored volume that the cluster status shows ready takes writes at
//! once: two data nodes and a witness on loopback, set up as an
//! administrator (or the mirror benchmark) does it; the volume is created,
//! the status is read until it names a primary and shows both copies in
//! sync, and the very first write through the primary's portal must be
//! acknowledged. Initiators stop at the first refusal (qemu-img does), so
//! "access state transition" here is a failure, not something to retry.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{node_id, session, status, Witness, BLOCK, EXTENT};
use common::Server;
use testkit::rw16;

/// Clusters formed, and volumes created in each: the window this test
/// looks for is short and depends on timing, so it is tried several times.
const CLUSTERS: usize = 3;
const VOLUMES: usize = 3;

/// The primary's node id once `s` shows `volume` with a primary and every
/// copy in sync, as `bench/mirror.sh` waits for it.
fn ready(s: &Server, volume: &str) -> Option<u64> {
    let v = status(s)["status"]["state"]["volumes"][volume].clone();
    let replicas = v["replicas"].as_object()?;
    let in_sync = replicas.len() == 2 && replicas.values().all(|r| r["state"] == "in-sync");
    in_sync.then(|| v["primary"].as_u64()).flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_shown_ready_acknowledges_its_first_writes() {
    for round in 0..CLUSTERS {
        let dir = tempfile::tempdir().unwrap();
        let a = Server::start(&dir.path().join("a"));
        let b = Server::start(&dir.path().join("b"));
        let token = common::cluster::form(&a, &[&b]);
        // The witness joins while the first volume is created, as in the
        // benchmark.
        let _w = Witness::start(
            &dir.path().join("w"),
            "127.0.0.1",
            None,
            &a.cluster_addr(),
            &token,
        );
        let ids = [node_id(&a), node_id(&b)];
        for n in 0..VOLUMES {
            let name = format!("fresh{n}");
            a.cli_ok(&["volume", "create", &name, "--size", "1G", "--replicas", "2"]);
            let t = Instant::now();
            let primary = loop {
                if let Some(p) = ready(&a, &name) {
                    break p;
                }
                assert!(t.elapsed() < Duration::from_secs(30), "{name} never ready");
                std::thread::sleep(Duration::from_millis(20));
            };
            let s = if ids[0] == primary { &a } else { &b };
            let mut i = session(s.portal(), &name)
                .await
                .unwrap_or_else(|| panic!("no session to {name} at {}", s.portal()));
            let data = vec![0x5au8; EXTENT as usize * BLOCK];
            for k in 0..4u64 {
                let lba = k * EXTENT;
                // A unit attention is reported once and retried by every
                // initiator; anything else fails the write.
                let mut o = None;
                for _ in 0..4 {
                    let r = i
                        .run(&rw16(0x8A, lba, EXTENT as u32, true), &data, 0)
                        .await
                        .expect("the write got an answer");
                    if r.status == 0 || r.sense_key != 6 {
                        o = Some(r);
                        break;
                    }
                }
                let o = o.expect("unit attentions only");
                assert_eq!(
                    o.status,
                    0,
                    "round {round}, volume {name}: write at lba {lba} refused with sense key {:#x} asc {:02x?}\n--- a:\n{}\n--- b:\n{}",
                    o.sense_key,
                    o.asc,
                    a.log_text(),
                    b.log_text()
                );
            }
            // No copy paid for the early writes: the primary still counts
            // its peer in sync and connected.
            let peers = status(s)["replication"][&name].clone();
            let ok = peers.as_array().is_some_and(|ps| {
                ps.len() == 1
                    && ps
                        .iter()
                        .all(|p| p["state"] == "in-sync" && p["connected"] == true)
            });
            assert!(ok, "round {round}, volume {name}: the primary's peers after the first writes: {peers}\n--- a:\n{}\n--- b:\n{}", a.log_text(), b.log_text());
        }
    }
}
