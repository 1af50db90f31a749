//! Sessions are the volume's, not the node's: in a two-node cluster with a
//! witness (three processes on loopback), an initiator logged in through
//! node B keeps `volume delete` through node A from deleting the volume,
//! and `volume show` through A lists that session with the node it is
//! logged in through. Once B is killed, A cannot know whether initiators
//! are still logged in there: the delete is refused naming B, and goes
//! through only when forced. A node cut off from the cluster but not from
//! its initiators (network namespaces, needs root) is not taken for one
//! without sessions either.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{on_loopback, session, wait_until};
use common::netns::{two_nodes_and_witness, Lan};
use common::Server;

/// The name the test harness gives `s` in the cluster.
fn member_name(s: &Server) -> String {
    format!("node-{}-{}", s.host, s.iscsi_port)
}

/// `volume show <name> --json` through `s`.
fn show(s: &Server, name: &str) -> serde_json::Value {
    serde_json::from_str(&s.cli_ok(&["volume", "show", name, "--json"])).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_through_one_node_counts_the_sessions_logged_in_through_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let (a, mut b, _witness, _) = on_loopback(dir.path());
    a.cli_ok(&["volume", "create", "vm", "--size", "4M", "--replicas", "2"]);
    wait_until("both nodes export the volume", 20, || {
        b.cli_ok(&["volume", "list"]).contains("vm")
    });

    // A VM's host logs in through B only.
    let mut host = session(b.portal(), "vm").await.expect("login through B");
    wait_until("B counts the session", 10, || {
        show(&b, "vm")["sessions"] == 1
    });

    // Through A, the delete is refused: the session is B's, the volume is
    // the cluster's.
    let out = a.cli(&["volume", "delete", "vm"]);
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "delete through A went through while an initiator is logged in through B: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(why.contains("in use"), "{why}");
    assert!(why.contains(&member_name(&b)), "B not named: {why}");
    assert!(why.contains("iqn.2026-11.test:init"), "{why}");
    assert_eq!(
        host.simple(&[0u8; 6]).await.0,
        0,
        "the session lost its volume"
    );

    // `volume show` through A lists the session: who, from where, through which node.
    let v = show(&a, "vm");
    assert_eq!(v["sessions"], 1, "{v}");
    let s = &v["logged_in"][0];
    assert_eq!(s["initiator"], "iqn.2026-11.test:init", "{v}");
    assert_eq!(s["node"], member_name(&b).as_str(), "{v}");
    assert!(
        s["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{v}"
    );
    assert_eq!(v["sessions_unknown"], serde_json::json!([]), "{v}");
    let text = a.cli_ok(&["volume", "show", "vm"]);
    assert!(
        text.contains("iqn.2026-11.test:init  from 127.0.0.1:")
            && text.contains(&format!("through {}", member_name(&b))),
        "{text}"
    );

    // Logged out, it is counted out on every node.
    drop(host);
    wait_until("the session is gone through A's eyes", 10, || {
        show(&a, "vm")["sessions"] == 0
    });

    // B is killed: A cannot ask it, so it cannot say nobody is logged in
    // there. Refused, naming B; forced, deleted.
    b.kill();
    let out = a.cli(&["volume", "delete", "vm"]);
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "delete went through while B could not be asked"
    );
    assert!(why.contains(&member_name(&b)), "B not named: {why}");
    assert!(why.contains("force"), "{why}");
    let v = show(&a, "vm");
    assert_eq!(
        v["sessions_unknown"][0]["node"],
        member_name(&b).as_str(),
        "{v}"
    );
    let list = a.cli_ok(&["volume", "list"]);
    assert!(
        list.contains("0+?"),
        "the count does not say B is missing:\n{list}"
    );

    a.cli_ok(&["volume", "delete", "vm", "--force"]);
    wait_until("the volume is gone", 10, || {
        !a.cli_ok(&["volume", "list"]).contains("vm")
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_cluster_is_not_taken_for_one_without_sessions() {
    let Some(lan) = Lan::or_skip(3) else { return };
    let dir = tempfile::tempdir().unwrap();
    let (nodes, _witness, _) = two_nodes_and_witness(&lan, dir.path(), 2, "4M");
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut host = session(b.portal(), "vm").await.expect("login through B");
    wait_until("B counts the session", 10, || {
        show(b, "vm")["sessions"] == 1
    });

    // B loses A and the witness, not its initiator: A cannot ask it, and
    // must not delete the disk under a VM that is still logged in there.
    lan.partition(1, &[0, 2]);
    let out = a.cli(&["volume", "delete", "vm"]);
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "delete went through while B was cut off with a session"
    );
    assert!(
        why.contains(&member_name(b)) && why.contains("force"),
        "{why}"
    );

    // Healed, B answers again: the session is there, and counted.
    lan.heal(1);
    wait_until("A sees B's session again", 20, || {
        show(a, "vm")["sessions"] == 1
    });
    let out = a.cli(&["volume", "delete", "vm"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));

    // Forced through A, B logs its initiator out as it applies the delete.
    a.cli_ok(&["volume", "delete", "vm", "--force"]);
    let t = Instant::now();
    while host.run(&[0u8; 6], &[], 0).await.is_some() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "B kept the session of a deleted volume"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_until("the volume is gone from B", 10, || {
        !b.cli_ok(&["volume", "list"]).contains("vm")
    });
}
