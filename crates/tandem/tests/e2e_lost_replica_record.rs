//! A write the secondary missed must not be acknowledged before the control
//! plane has recorded the secondary out of sync (issue #14, the lost
//! out-of-sync record).
//!
//! Two data nodes and a witness run as real processes on loopback. Each
//! round: the primary is made the control plane's leader (the others are
//! restarted until it is), the witness is killed (the data nodes keep a
//! quorum), initiators write FUA through the primary, and the secondary is
//! killed with SIGKILL.
//! The primary cannot record the lost copy (no quorum left), so from then on
//! it must not acknowledge a write. Once nothing has been acknowledged for
//! longer than a lease the primary is killed too, and the secondary and the
//! witness come back: the secondary is promoted if the control plane still
//! records it in sync, and then must hold every acknowledged write; if it is
//! recorded out of sync the volume waits for the old primary, which returns
//! next in either case. Every write the initiators saw acknowledged reads
//! back through every node (history checker; each write goes to an extent
//! never written before, so a later write cannot hide a lost one), and at
//! the end both data files are byte-identical.

mod common;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use common::cluster::{
    ack_windows, assert_one_writer, node_id, primary_index, try_status, volume_file,
    wait_converged, wait_settled, wait_until, Witness, BLOCK, EXTENT,
};
use common::log::now_us;
use common::workload::{check_volume, Ledger, Load, LoadConfig, Mix, Pick};
use common::Server;
use testkit::history::History;

const VOLUME: &str = "vm";
const SIZE: &str = "32M";
const BLOCKS: u64 = (32 << 20) / BLOCK as u64;
const EXTENTS: u64 = BLOCKS / EXTENT;
/// Initiators writing through the primary from before the secondary is
/// killed, and as many logging in right after: writes that were in flight
/// at the kill wait for the record of the lost copy, the later ones arrive
/// meanwhile.
const WRITERS: u64 = 4;
const ROUNDS: usize = 3;
/// Longer than a lease (1 s): a primary that acknowledged nothing for this
/// long has stopped.
const QUIET: Duration = Duration::from_secs(2);

/// The control plane's leader as `s` sees it.
fn leader(s: &Server) -> Option<u64> {
    try_status(s)?["status"]["leader"].as_u64()
}

/// The control plane's term and leader as `s` sees it.
fn leadership(s: &Server) -> Option<(u64, Option<u64>)> {
    let v = try_status(s)?;
    Some((
        v["status"]["term"].as_u64()?,
        v["status"]["leader"].as_u64(),
    ))
}

/// Makes node `p` lead the control plane: whoever else leads is stopped
/// until the other two have elected a leader of a later term, then started
/// again; each time `p` has an even chance.
fn make_primary_lead(
    nodes: &mut [Server; 2],
    witness: &mut Witness,
    ids: [u64; 2],
    p: usize,
    what: &str,
) {
    let s = 1 - p;
    for _ in 0..12 {
        let Some((term, Some(l))) = leadership(&nodes[p]) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        if l == ids[p] {
            return;
        }
        eprintln!("{what}: node {l} leads the control plane (term {term}); it steps aside");
        if l == ids[s] {
            nodes[s].stop();
        } else {
            witness.stop();
        }
        wait_until(&format!("{what}: a leader after node {l}"), 30, || {
            leadership(&nodes[p]).is_some_and(|(t, now)| t > term && now.is_some_and(|n| n != l))
        });
        if l == ids[s] {
            nodes[s].restart();
        } else {
            witness.restart();
        }
    }
    panic!(
        "{what}: the primary does not lead the control plane after twelve elections (leader {:?})",
        leader(&nodes[p])
    );
}

/// Whether `s` (node `id`) reports itself primary of the volume with its
/// role taken up.
fn acts_as_primary(s: &Server, id: u64) -> bool {
    try_status(s).is_some_and(|v| {
        v["status"]["state"]["volumes"][VOLUME]["primary"].as_u64() == Some(id)
            && v["replication"][VOLUME].is_array()
    })
}

/// The state the control plane records for the copy on node `id`, as `s` sees it.
fn copy_state(s: &Server, id: u64) -> Option<String> {
    let v = try_status(s)?;
    v["status"]["state"]["volumes"][VOLUME]["replicas"][id.to_string()]["state"]
        .as_str()
        .map(str::to_string)
}

/// Reads the whole volume through each of `nodes`; what is wrong.
async fn problems(nodes: &[(&Server, u64)], h: &History) -> Vec<String> {
    let mut wrong = Vec::new();
    for (n, id) in nodes {
        if let Err(e) = check_volume(n.portal(), VOLUME, BLOCKS, h).await {
            wrong.push(format!("through node {id}: {e}"));
        }
    }
    wrong
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_write_acknowledged_after_the_secondary_died_without_a_quorum_to_record_it() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, mut witness, _) = common::cluster::on_loopback(dir.path());
    a.cli_ok(&[
        "volume",
        "create",
        VOLUME,
        "--size",
        SIZE,
        "--replicas",
        "2",
    ]);
    let ids = [node_id(&a), node_id(&b)];
    let mut nodes = [a, b];
    let converge = |nodes: &[Server; 2], what: &str| {
        if let Err(e) = wait_converged(&[&nodes[0], &nodes[1]], VOLUME, 90) {
            panic!("{what}: {e}");
        }
    };
    converge(&nodes, "the new volume");

    let seq = Arc::new(AtomicU64::new(0));
    let mut history = History::default();
    // Each initiator writes fresh extents of its own part of the volume.
    let part = EXTENTS / (2 * WRITERS);
    let mut fresh: Vec<u64> = (0..2 * WRITERS).map(|k| k * part).collect();
    for round in 1..=ROUNDS {
        let p = primary_index(&[&nodes[0], &nodes[1]], VOLUME).expect("a primary");
        let s = 1 - p;
        let what = format!(
            "round {round} (primary node {}, secondary node {})",
            ids[p], ids[s]
        );
        // A lost copy goes unrecorded longest when the primary leads the
        // control plane: it appends the record and waits for a commit that
        // cannot come.
        make_primary_lead(&mut nodes, &mut witness, ids, p, &what);
        converge(&nodes, &what);
        witness.kill();
        let portal = nodes[p].portal();
        let start = |k: u64| {
            let range = fresh[k as usize]..(k + 1) * part;
            let cfg = LoadConfig::steady(VOLUME, vec![portal], range, Pick::Fresh, Mix::FUA);
            Load::start(cfg, seq.clone())
        };
        let mut loads: Vec<Load> = (0..WRITERS).map(start).collect();
        assert!(
            loads[0]
                .acknowledged_beyond(0, 10, Duration::from_secs(20))
                .await,
            "{what}: writes through the primary stalled with the witness down"
        );
        assert_eq!(
            leader(&nodes[p]),
            Some(ids[p]),
            "{what}: the primary no longer leads the control plane"
        );
        let killed = now_us();
        nodes[s].kill();
        loads.extend((WRITERS..2 * WRITERS).map(start));
        // Without a quorum the primary cannot record the lost copy: it must
        // stop acknowledging at once (with the record missing, at the
        // latest when its lease runs out).
        wait_until(
            &format!("{what}: the primary stops acknowledging"),
            30,
            || {
                let last = loads.iter().map(|l| l.progress().1).max().unwrap_or(0);
                now_us().saturating_sub(last.max(killed)) > QUIET.as_micros() as u64
            },
        );
        let mut late = Vec::new();
        for (k, load) in loads.into_iter().enumerate() {
            let Ledger {
                history: h,
                acks,
                tally,
                next_fresh,
                ..
            } = load.finish().await;
            eprintln!("{what}: initiator {k}: {tally:?}");
            fresh[k] = next_fresh;
            late.extend(acks.into_iter().filter(|a| a.at_us > killed));
            history.absorb(h);
        }
        late.sort_by_key(|a| a.at_us);
        let late_note = match (late.first(), late.last()) {
            (Some(f), Some(l)) => format!(
                "{} writes acknowledged by the primary after the secondary was killed, from {:.1} to {:.1} ms after (first: write {} at LBA {})",
                late.len(),
                (f.at_us - killed) as f64 / 1000.0,
                (l.at_us - killed) as f64 / 1000.0,
                f.seq,
                f.lba
            ),
            _ => "no write acknowledged after the secondary was killed".to_string(),
        };
        eprintln!("{what}: {late_note}");

        // The primary goes too; the secondary and the witness return.
        nodes[p].kill();
        nodes[s].restart();
        witness.restart();
        let mut promoted = false;
        wait_until(
            &format!("{what}: the returned secondary promoted or recorded out of sync"),
            60,
            || {
                promoted = acts_as_primary(&nodes[s], ids[s]);
                promoted || copy_state(&nodes[s], ids[s]).as_deref() == Some("out-of-sync")
            },
        );
        eprintln!(
            "{what}: the returned secondary {}",
            if promoted {
                "was promoted"
            } else {
                "is recorded out of sync; the volume waits for the old primary"
            }
        );
        if promoted {
            let wrong = problems(&[(&nodes[s], ids[s])], &history).await;
            assert!(
                wrong.is_empty(),
                "{what}: the secondary was promoted without writes the primary acknowledged; {late_note}:\n{}",
                wrong.join("\n")
            );
        }
        nodes[p].restart();
        converge(&nodes, &what);
        let wrong = problems(&[(&nodes[0], ids[0]), (&nodes[1], ids[1])], &history).await;
        assert!(
            wrong.is_empty(),
            "{what}: acknowledged writes missing after the old primary returned; {late_note}:\n{}",
            wrong.join("\n")
        );
    }

    if let Err(e) = wait_settled(&[&nodes[0], &nodes[1]], VOLUME, 90, Duration::from_secs(3)) {
        panic!("before the copies are compared: {e}");
    }
    let mut windows = ack_windows(&nodes[0], VOLUME);
    windows.extend(ack_windows(&nodes[1], VOLUME));
    assert_one_writer(&windows);
    eprintln!(
        "{} writes acknowledged as durable in all",
        history.acknowledged()
    );
    for n in &mut nodes {
        n.stop();
    }
    let (x, y) = (
        std::fs::read(volume_file(&nodes[0])).unwrap(),
        std::fs::read(volume_file(&nodes[1])).unwrap(),
    );
    if let Some(at) = x.iter().zip(&y).position(|(p, q)| p != q) {
        panic!(
            "the two copies differ after resync, first at byte {at} (block {})",
            at / BLOCK
        );
    }
    assert_eq!(x.len(), y.len(), "the two copies differ in length");
}
