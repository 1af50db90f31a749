//! A replication write that was in flight when the secondary's link went
//! down must not land on the secondary after it was resynced.
//!
//! Two data nodes and a witness in network namespaces (needs root). An
//! initiator rewrites a few extents over and over (FUA) through the
//! primary; the secondary's link is cut long enough for the primary to give
//! up on it (2 s) and record it out of sync, while the same extents are
//! written again; the link returns, the secondary is resynced and recorded
//! in sync. The primary gave up on the write that was in flight at the cut,
//! but its kernel still holds it and sends it when the link is back (a
//! dropped connection's data is still retransmitted). Then
//! the primary is killed and the secondary takes over: every acknowledged
//! write must read back through it, and before that both copies must be
//! byte-identical.

mod common;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use common::cluster::{node_id, volume_file, wait_converged, wait_until, BLOCK, EXTENT};
use common::netns::{two_nodes_and_witness, Lan};
use common::workload::{check_volume, Load, LoadConfig, Mix, Pick};
use testkit::history::{decode, History};

const VOLUME: &str = "vm";
const BLOCKS: u64 = (4 << 20) / BLOCK as u64;
/// Rewritten over and over, so the write in flight at the cut is an old one
/// by the time the link returns.
const HOT: u64 = 8;
/// Past the primary's 2 s replication timeout and the retransmissions of the
/// dropped connection until then (the kernel doubles the pause each time:
/// about 0.2, 0.6, 1.4, 3, 6.2 s after the cut), and well short of the next
/// (about 12.6 s), so that the resync is over when it comes.
const CUT: Duration = Duration::from_secs(7);
/// Long enough for that retransmission to arrive.
const RETRANSMISSIONS: Duration = Duration::from_secs(10);
const ROUNDS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_in_flight_at_a_cut_does_not_land_after_the_resync() {
    let Some(lan) = Lan::or_skip(3) else { return };
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, _witness, _) = two_nodes_and_witness(&lan, dir.path(), 2, "4M");
    let ids = [node_id(&nodes[0]), node_id(&nodes[1])];
    let both = |n: &[common::Server]| -> Result<Duration, String> {
        wait_converged(&[&n[0], &n[1]], VOLUME, 60)
    };
    both(&nodes).unwrap();
    let p = common::cluster::primary_index(&[&nodes[0], &nodes[1]], VOLUME).unwrap();
    let s = 1 - p;
    let seq = Arc::new(AtomicU64::new(0));
    let mut history = History::default();
    let mut diverged = String::new();
    for round in 1..=ROUNDS {
        let load = Load::start(
            LoadConfig::steady(
                VOLUME,
                vec![nodes[p].portal()],
                0..HOT,
                Pick::Random,
                Mix::FUA,
            ),
            seq.clone(),
        );
        assert!(
            load.acknowledged_beyond(0, 50, Duration::from_secs(20))
                .await
        );
        lan.cut(s);
        tokio::time::sleep(CUT).await;
        lan.mend(s);
        let ledger = load.finish().await;
        eprintln!("round {round}: {:?}", ledger.tally);
        history.absorb(ledger.history);
        both(&nodes).unwrap();
        tokio::time::sleep(RETRANSMISSIONS).await;
        both(&nodes).unwrap();
        let x = std::fs::read(volume_file(&nodes[p])).unwrap();
        let y = std::fs::read(volume_file(&nodes[s])).unwrap();
        let wrong: Vec<String> = (0..HOT * EXTENT)
            .filter_map(|b| {
                let r = b as usize * BLOCK..(b as usize + 1) * BLOCK;
                (x[r.clone()] != y[r.clone()]).then(|| {
                    format!(
                        "block {b}: write {:?} on the primary, {:?} on the secondary recorded in sync",
                        decode(&x[r.clone()], b),
                        decode(&y[r], b)
                    )
                })
            })
            .collect();
        if !wrong.is_empty() {
            diverged = format!("round {round}: the copies differ:\n{}", wrong.join("\n"));
            break;
        }
    }
    // The secondary takes over and must show every acknowledged write.
    nodes[p].kill();
    wait_until("the secondary takes over", 30, || {
        common::cluster::try_status(&nodes[s]).is_some_and(|v| {
            v["status"]["state"]["volumes"][VOLUME]["primary"].as_u64() == Some(ids[s])
        })
    });
    let lost = check_volume(nodes[s].portal(), VOLUME, BLOCKS, &history).await;
    assert!(
        diverged.is_empty() && lost.is_ok(),
        "{diverged}\nafter the primary was killed: {lost:?}"
    );
}
