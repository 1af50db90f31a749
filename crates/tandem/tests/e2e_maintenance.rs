//! Maintenance recorded in the cluster state, with real processes (two
//! data nodes and a witness on loopback): a node put in maintenance under
//! continuous writes hands its volume over, reports its ALUA port group
//! as standby, shows in `cluster status`, is stopped and started while
//! the writes go on, and leaving maintenance copies back only the regions
//! written meanwhile. No command fails at the initiator; every
//! acknowledged write is read back through both nodes and from both
//! data files. `node upgrade-check` answers before and after.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::cluster::{
    all_in_sync, counting_writer, node_id, port_groups, status, verify, volume_file, volume_record,
    wait_until, Seen, BLOCK, EXTENT,
};
use common::Server;

const VOLUME: &str = "vm";
const SIZE: u64 = 256 << 20;
const EXTENTS: u64 = 64;

/// Writes extents of `VOLUME` through `portal` until `stop`, counting
/// what failed.
fn writer(portal: std::net::SocketAddr, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Seen> {
    counting_writer(portal, VOLUME, EXTENTS, stop)
}

/// `tandem node upgrade-check NODE` through `via`: Ok(what it said) when
/// the node can be stopped, Err(why not) when it cannot.
fn upgrade_check(via: &Server, node: u64) -> Result<String, String> {
    let out = via.cli(&["node", "upgrade-check", &node.to_string()]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The primary's view of the copy on `node` (`replication` of `GET
/// /v1/cluster` on the primary).
fn peer_view(primary: &Server, node: u64) -> serde_json::Value {
    status(primary)["replication"][VOLUME]
        .as_array()
        .and_then(|peers| peers.iter().find(|p| p["node"] == node).cloned())
        .unwrap_or_else(|| panic!("no replication view of node {node}"))
}

/// The line of `cluster status` (text) naming member `id`.
fn member_line(s: &Server, id: u64) -> String {
    s.cli_ok(&["cluster", "status"])
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&id.to_string()))
        .unwrap_or_else(|| panic!("no line for member {id}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_in_maintenance_is_stopped_and_resyncs_only_what_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, b, witness, _) = common::cluster::on_loopback(dir.path());
    a.cli_ok(&[
        "volume",
        "create",
        VOLUME,
        "--size",
        &SIZE.to_string(),
        "--replicas",
        "2",
    ]);
    wait_until("both nodes export the volume, in sync", 30, || {
        b.cli_ok(&["volume", "list"]).contains(VOLUME) && all_in_sync(&a, VOLUME)
    });
    let (ida, idb) = (node_id(&a), node_id(&b));
    let idw = status(&a)["status"]["state"]["nodes"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.parse::<u64>().unwrap())
        .find(|&n| n != ida && n != idb)
        .expect("the witness's id");
    if volume_record(&a, VOLUME)["primary"] != ida {
        a.cli_ok(&["volume", "move-primary", VOLUME, "--to", &ida.to_string()]);
    }
    // Every member's release and log version.
    for id in [ida, idb, idw] {
        let line = member_line(&b, id);
        let release = format!(
            "{} (log {})",
            env!("CARGO_PKG_VERSION"),
            cluster::LOG_VERSION
        );
        assert!(line.contains(&release), "{line}");
    }
    let versions = &status(&b)["versions"];
    assert_eq!(
        versions[ida.to_string()]["log_version"],
        cluster::LOG_VERSION,
        "{versions}"
    );

    // Before: a leads the volume, b holds an in-sync copy.
    let out = upgrade_check(&b, ida).expect("a can be stopped (by a failover)");
    assert!(out.contains("fails it over to node"), "{out}");
    let out = upgrade_check(&a, idb).expect("b leads nothing");
    assert!(out.contains("can be stopped now"), "{out}");
    upgrade_check(&a, idw).expect("the data nodes keep quorum without the witness");

    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(b.portal(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let out = b.cli_ok(&["node", "maintenance", "enter", &ida.to_string()]);
    assert!(out.contains("is in maintenance"), "{out}");
    assert!(out.contains("leads no volume now"), "{out}");
    let paused = out
        .split("I/O paused ")
        .nth(1)
        .and_then(|r| r.split(" ms").next())
        .unwrap_or_else(|| panic!("no switchover in {out:?}"));
    eprintln!("entering maintenance: the volume's switchover paused I/O {paused} ms");
    let v = volume_record(&b, VOLUME);
    assert_eq!(v["primary"], idb, "{out}");
    assert_eq!(
        v["replicas"][ida.to_string()]["state"],
        "out-of-sync",
        "{v}"
    );
    assert!(member_line(&b, ida).contains("in maintenance"));
    assert!(!member_line(&b, idb).contains("in maintenance"));
    // Through a, multipath sees its port group in standby, b's optimized.
    let groups = port_groups(a.portal(), VOLUME).await;
    assert!(groups.contains(&(ida as u16, 0x2)), "{groups:?}");
    assert!(groups.contains(&(idb as u16, 0x0)), "{groups:?}");
    // A move to it is refused, saying why.
    let refused = b.cli(&["volume", "move-primary", VOLUME, "--to", &ida.to_string()]);
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("is in maintenance"), "{why}");

    // After: a leads nothing; b now holds the only in-sync copy.
    let out = upgrade_check(&b, ida).expect("a can be stopped");
    assert!(out.contains("(in maintenance) can be stopped now"), "{out}");
    let why = upgrade_check(&a, idb).unwrap_err();
    assert!(
        why.contains("no other running data node holds an in-sync copy"),
        "{why}"
    );

    a.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let why = upgrade_check(&b, idw).unwrap_err();
    assert!(why.contains("no quorum"), "{why}");
    a.restart();
    wait_until("a is back", 30, || member_line(&b, ida).contains(" up"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Back, but still in maintenance: its copy takes no writes yet.
    assert!(member_line(&b, ida).contains("in maintenance"));
    let missed = peer_view(&b, ida);
    assert_eq!(missed["state"], "out-of-sync", "{missed}");
    assert_eq!(missed["connected"], false, "{missed}");
    let dirty = missed["dirty_bytes"].as_u64().unwrap();
    assert!(dirty > 0, "the writes meanwhile are tracked: {missed}");

    let out = b.cli_ok(&["node", "maintenance", "exit", &ida.to_string()]);
    assert!(out.contains("is out of maintenance"), "{out}");
    wait_until("a's copy caught up", 60, || all_in_sync(&b, VOLUME));
    assert!(!member_line(&b, ida).contains("in maintenance"));
    let resynced = peer_view(&b, ida);
    let total = resynced["resync_total"].as_u64().unwrap();
    let data = resynced["resync_data_bytes"].as_u64().unwrap();
    eprintln!(
        "{dirty} bytes dirty while in maintenance; the resync copied {total} bytes of regions \
         ({data} bytes of data) of a {SIZE}-byte volume"
    );
    // Only regions written meanwhile (and those the node's activity log
    // held open when it stopped) are looked at, and only their written
    // blocks are sent: the writes span EXTENTS extents.
    let written = EXTENTS * EXTENT * BLOCK as u64;
    assert!(total > 0, "nothing resynced: {resynced}");
    assert!(
        total * 32 <= SIZE,
        "the resync looked at {total} bytes of {SIZE}: {resynced}"
    );
    assert!(
        data <= written.max(dirty),
        "the resync sent {data} bytes, {written} were written: {resynced}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    stop.store(true, Ordering::Release);
    let seen = w.await.expect("writer");
    assert_eq!(seen.failed, 0, "a command failed at the initiator");
    assert_eq!(seen.dropped, 0, "a connection failed");
    assert!(seen.acknowledged > 100, "{} writes", seen.acknowledged);
    eprintln!("{} writes acknowledged, none failed", seen.acknowledged);
    let h = seen.history;
    verify(a.portal(), VOLUME, EXTENTS, &h).await;
    verify(b.portal(), VOLUME, EXTENTS, &h).await;

    let mut b = b;
    a.stop();
    b.stop();
    for s in [&a, &b] {
        let data = std::fs::read(volume_file(s)).unwrap();
        let len = (EXTENTS * EXTENT) as usize * BLOCK;
        if let Err(errors) = h.check_range(0, &data[..len], BLOCK) {
            panic!(
                "{} blocks wrong in the copy of {}: {:#?}",
                errors.len(),
                s.data_dir.display(),
                &errors[..errors.len().min(10)]
            );
        }
    }
    drop(witness);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_witness_is_maintained_while_the_data_nodes_keep_quorum() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, mut witness, _) = common::cluster::on_loopback(dir.path());
    let (ida, idb) = (node_id(&a), node_id(&b));
    let idw = status(&a)["status"]["state"]["nodes"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.parse::<u64>().unwrap())
        .find(|&n| n != ida && n != idb)
        .expect("the witness's id");
    upgrade_check(&a, idw).expect("the data nodes keep quorum without the witness");
    let out = a.cli_ok(&["node", "maintenance", "enter", &idw.to_string()]);
    assert!(
        out.contains(&format!("node {idw} is in maintenance")),
        "{out}"
    );
    assert!(member_line(&b, idw).contains("in maintenance"));
    // In maintenance but running, it still votes.
    upgrade_check(&a, ida).expect("a quorum without a");
    witness.stop();
    wait_until("the witness seen down", 30, || {
        member_line(&a, idw).contains("DOWN")
    });
    // The data nodes keep quorum without it; neither may stop meanwhile.
    let why = upgrade_check(&a, ida).unwrap_err();
    assert!(why.contains("no quorum"), "{why}");
    let refused = a.cli(&["node", "maintenance", "enter", &idb.to_string()]);
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && why.contains("no quorum"),
        "{why}"
    );
    // Forced, it says what will happen; with a member that cannot be
    // asked its version, nothing is recorded.
    let out = a.cli_ok(&["node", "maintenance", "enter", &idb.to_string(), "--force"]);
    assert!(out.contains("forced: once node"), "{out}");
    assert!(out.contains("not recorded"), "{out}");
    assert!(!member_line(&a, idb).contains("in maintenance"));
    witness.restart();
    wait_until("the witness back", 30, || {
        !member_line(&a, idw).contains("DOWN")
    });
    let out = a.cli_ok(&["node", "maintenance", "exit", &idw.to_string()]);
    assert!(out.contains("is out of maintenance"), "{out}");
    assert!(!member_line(&a, idw).contains("in maintenance"));
}
