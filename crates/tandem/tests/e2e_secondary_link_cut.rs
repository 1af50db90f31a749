//! A replication write that was in flight when the secondary's link went
//! down must not land on the secondary after it was resynced.
//!
//! Two data nodes and a witness in network namespaces (needs root). The
//! secondary's link is cut while the mirror is idle; right after, four
//! initiators rewrite a few extents each over and over (FUA) through the
//! primary. The primary's first writes to the secondary wait in its socket;
//! after 2 s it gives up on the secondary, records it out of sync and goes
//! on alone, writing the same extents again; the link returns, the
//! secondary is resynced and recorded in sync. The primary gave up on those
//! first writes, but its kernel still holds them and sends them when the
//! link is back (a closed connection's data is still retransmitted). Then
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
/// Initiators writing from right after the cut: their first writes wait in
/// the primary's socket for the link to return.
const WRITERS: u64 = 4;
/// Extents each initiator rewrites over and over, so a write stuck at the
/// cut is an old one by the time the link returns.
const HOT: u64 = 2;
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
        let portal = nodes[p].portal();
        let start = |w: u64| {
            let cfg = LoadConfig::steady(
                VOLUME,
                vec![portal],
                w * HOT..(w + 1) * HOT,
                Pick::Random,
                Mix::FUA,
            );
            Load::start(cfg, seq.clone())
        };
        // The mirror works, and then is idle: with no answer of the
        // secondary outstanding at the cut, none comes back afterwards to
        // make the primary's kernel reset the old connection.
        let warm = start(0);
        assert!(
            warm.acknowledged_beyond(0, 20, Duration::from_secs(20))
                .await,
            "round {round}: writes through the primary stalled"
        );
        history.absorb(warm.finish().await.history);
        lan.cut(s);
        let loads: Vec<Load> = (0..WRITERS).map(start).collect();
        tokio::time::sleep(CUT).await;
        lan.mend(s);
        for l in loads {
            let ledger = l.finish().await;
            eprintln!("round {round}: {:?}", ledger.tally);
            history.absorb(ledger.history);
        }
        both(&nodes).unwrap();
        tokio::time::sleep(RETRANSMISSIONS).await;
        both(&nodes).unwrap();
        let x = std::fs::read(volume_file(&nodes[p])).unwrap();
        let y = std::fs::read(volume_file(&nodes[s])).unwrap();
        let wrong: Vec<String> = (0..WRITERS * HOT * EXTENT)
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
    let lost = match check_volume(nodes[s].portal(), VOLUME, BLOCKS, &history).await {
        Ok(()) => String::new(),
        Err(e) => format!("after the primary was killed, through the secondary: {e}"),
    };
    assert!(diverged.is_empty() && lost.is_empty(), "{diverged}\n{lost}");
}
