//! A two-node cluster with a witness, as three real processes on loopback:
//! a client writes numbered blocks (FUA) through the primary, the primary is
//! killed with SIGKILL, the other node takes over, every acknowledged write
//! reads back from it, the killed node returns and resyncs; then the
//! secondary is killed while writes go on, returns and resyncs; the two
//! copies end up byte-identical.

mod common;

use std::time::Duration;

use common::cluster::{
    ack_windows, all_in_sync, assert_one_writer, node_id, session, verify, volume_file,
    volume_record, wait_until, write, write_until_acknowledged,
};
use common::Server;
use testkit::history::History;

const EXTENTS: u64 = 128;
const CHAP_SECRET: &str = "cluster-chap-secret-1";

/// Every member's Raft database under `dir`.
fn raft_logs(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.file_name().is_some_and(|n| n == "raft.redb") {
                found.push(p);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_then_secondary_killed_no_acknowledged_write_lost_and_copies_converge() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, witness, _) = common::cluster::on_loopback(dir.path());

    a.cli_ok(&["volume", "create", "vm", "--size", "4M", "--replicas", "2"]);
    wait_until("both nodes export the volume", 20, || {
        b.cli_ok(&["volume", "list"]).contains("vm") && a.cli_ok(&["volume", "list"]).contains("vm")
    });
    // The name is taken cluster-wide: the other node cannot create it again.
    let again = b.cli(&["volume", "create", "vm", "--size", "4M", "--replicas", "2"]);
    assert!(!again.status.success(), "a second volume vm was created");
    let why = String::from_utf8_lossy(&again.stderr);
    assert!(why.contains("exists"), "{why}");
    // Access rules and size belong to the volume, not to a node: set
    // through one node, they hold on the other.
    let show = |s: &Server| -> serde_json::Value {
        serde_json::from_str(&s.cli_ok(&["volume", "show", "vm", "--json"])).unwrap()
    };
    b.cli_ok(&["volume", "access", "vm", "--allow", "iqn.2026-01.test:only"]);
    wait_until("the access rule on both nodes", 10, || {
        show(&a)["allowed_initiators"] == serde_json::json!(["iqn.2026-01.test:only"])
    });
    assert!(
        !a.cli_ok(&["cluster", "status", "--json"])
            .contains("iqn.2026-01.test:only"),
        "the cluster status shows the access rules (they may hold secrets)"
    );
    // CHAP on a cluster volume: set through one node, it holds on the
    // other, and the secret is sealed in the log every member keeps (the
    // witness's too).
    let secret_file = dir.path().join("chap");
    std::fs::write(&secret_file, format!("{CHAP_SECRET}\n")).unwrap();
    b.cli_ok(&[
        "volume",
        "access",
        "vm",
        "--chap-user",
        "esx",
        "--chap-secret-file",
        secret_file.to_str().unwrap(),
    ]);
    wait_until("the CHAP rule on both nodes", 10, || {
        show(&a)["chap_user"] == "esx"
    });
    let logs = raft_logs(dir.path());
    assert_eq!(logs.len(), 3, "{logs:?}");
    for log in &logs {
        let bytes = std::fs::read(log).unwrap();
        assert!(
            !bytes
                .windows(CHAP_SECRET.len())
                .any(|w| w == CHAP_SECRET.as_bytes()),
            "the CHAP secret in clear in {}",
            log.display()
        );
    }
    common::require_tool("iscsi-inq");
    let url = |creds: &str| {
        format!(
            "iscsi://{creds}{}/{}:vm/0",
            a.portal(),
            common::node_prefix()
        )
    };
    let login = |creds: &str| {
        std::process::Command::new("iscsi-inq")
            .args(["-i", "iqn.2026-01.test:chap", &url(creds)])
            .output()
            .unwrap()
    };
    let ok = login(&format!("esx%{CHAP_SECRET}@"));
    assert!(
        ok.status.success(),
        "CHAP login through the other node: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(!login("esx%not-the-secret@").status.success());
    a.cli_ok(&["volume", "access", "vm"]);
    wait_until("every initiator allowed again on both nodes", 10, || {
        show(&b)["allowed_initiators"] == serde_json::json!([])
    });
    b.cli_ok(&["volume", "resize", "vm", "--size", "8M"]);
    wait_until("both copies grown", 10, || {
        show(&a)["size_bytes"] == 8 << 20 && show(&b)["size_bytes"] == 8 << 20
    });
    let primary_id = volume_record(&a, "vm")["primary"].as_u64().unwrap();
    let a_id = node_id(&a);
    let (primary, other) = if primary_id == a_id {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };

    // Writes through the primary, and a few forwarded by the other node.
    let mut h = History::default();
    let mut seq = 0;
    let mut i = session(primary.portal(), "vm")
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
    let mut f = session(other.portal(), "vm")
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
    verify(other.portal(), "vm", EXTENTS, &h).await;

    // Kill -9 the primary; the other node must take over.
    primary.kill();
    let pause = write_until_acknowledged(
        other.portal(),
        "vm",
        &mut h,
        &mut seq,
        EXTENTS,
        Duration::from_secs(30),
    )
    .await;
    eprintln!("I/O pause after SIGKILL of the primary: {pause:?}");
    assert!(pause < Duration::from_secs(10), "failover took {pause:?}");
    let mut s = session(other.portal(), "vm").await.unwrap();
    for k in 0..EXTENTS {
        seq += 1;
        assert_eq!(write(&mut s, &mut h, k, seq).await, Some(true));
    }
    verify(other.portal(), "vm", EXTENTS, &h).await;
    let v = &volume_record(other, "vm");
    assert_ne!(v["primary"].as_u64().unwrap(), primary_id, "a new primary");
    assert!(v["epoch"].as_u64().unwrap() >= 2);

    // The old primary returns, resyncs what it missed, and is in sync again.
    primary.restart();
    wait_until("returning node back in sync", 60, || {
        all_in_sync(other, "vm")
    });
    verify(primary.portal(), "vm", EXTENTS, &h).await;

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
    let reps = volume_record(other, "vm")["replicas"].clone();
    assert!(
        reps.as_object()
            .unwrap()
            .values()
            .any(|x| x["state"] == "out-of-sync"),
        "the dead secondary is recorded out of sync: {reps}"
    );
    primary.restart();
    wait_until("secondary back in sync", 60, || all_in_sync(other, "vm"));
    verify(other.portal(), "vm", EXTENTS, &h).await;
    drop(s);
    drop(i);
    drop(f);
    // The nodes alive now remember when they acknowledged as primary (the
    // killed incarnations can no longer have acknowledged anything).
    let mut windows = ack_windows(primary, "vm");
    windows.extend(ack_windows(other, "vm"));
    assert!(!windows.is_empty(), "acknowledgement windows are reported");
    assert_one_writer(&windows);
    // Both copies hold the same bytes.
    primary.stop();
    other.stop();
    let (x, y) = (
        std::fs::read(volume_file(primary)).unwrap(),
        std::fs::read(volume_file(other)).unwrap(),
    );
    assert!(x == y, "the two copies differ after resync");
    // A node stopped with SIGTERM closed its copies cleanly, whatever role it
    // had: started again it has no region to recheck.
    for node in [&mut *primary, &mut *other] {
        let before = node.log_text().len();
        node.restart();
        let log = node.log_text();
        assert!(
            !log[before..].contains("not shut down cleanly"),
            "a copy was not closed cleanly at SIGTERM:\n{}",
            &log[before..]
        );
        node.stop();
    }
    drop(witness);
}
