//! Growing a running cluster, as separate `tandem` processes in network
//! namespaces: two data nodes and a witness serve a mirrored volume while an
//! initiator keeps writing; a third data node joins and at once presents the
//! volume without a copy (same identity, forwarding I/O), gets a copy of the
//! volume with `tandem volume add-replica` (a full sync while the writes go
//! on) and comes in sync; then the primary is killed with SIGKILL and one of
//! the two remaining copies takes over. Every acknowledged write reads back
//! through every node, no two nodes acknowledged writes at once, and after
//! the killed node returns all three copies are byte-identical; an image
//! qemu-img writes through one node reads back identical through all; the
//! third node leaves and drops its copy.

mod common;

use std::time::Duration;

use common::cluster::{
    ack_windows, all_in_sync, assert_one_writer, node_id, port_groups, verify, volume_file,
    volume_record, wait_members, wait_until, write_until_acknowledged, Writer,
};
use common::netns::{two_nodes_and_witness, Lan};
use common::{require_tool, run_ok, Server};
use rand::RngCore;
use testkit::history::History;

const EXTENTS: u64 = 256;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_node_joins_takes_a_copy_online_and_survives_the_primary() {
    let Some(lan) = Lan::or_skip(4) else { return };
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, _witness, token) = two_nodes_and_witness(&lan, dir.path(), 3, "16M");
    let primary = volume_record(&nodes[0], "vm")["primary"].as_u64().unwrap();
    let p = if node_id(&nodes[0]) == primary { 0 } else { 1 };

    // Writes go on while the cluster grows.
    let writer = Writer::start(nodes[p].portal(), "vm", History::default(), 0, EXTENTS);
    tokio::time::sleep(Duration::from_millis(500)).await;
    nodes.push(Server::start_on(
        &dir.path().join("c"),
        &lan.addr(2),
        Some(&lan.ns(2)),
    ));
    nodes[2].cli_ok(&[
        "cluster",
        "join",
        &nodes[0].cluster_addr(),
        "--token",
        &token,
    ]);
    wait_members(&nodes[0], 4);
    let c_id = node_id(&nodes[2]);
    let c_name = format!("node-{}-3260", lan.addr(2));

    // The new node presents the volume at once, without a copy: same
    // identity, its port group active/non-optimized, I/O forwarded.
    wait_until("the volume presented by the new node", 10, || {
        nodes[2].cli_ok(&["volume", "list"]).contains("vm")
    });
    let naa = |s: &Server| {
        serde_json::from_str::<serde_json::Value>(&s.cli_ok(&["volume", "show", "vm", "--json"]))
            .unwrap()["naa"]
            .clone()
    };
    assert_eq!(
        naa(&nodes[2]),
        naa(&nodes[p]),
        "one SCSI identity on every node"
    );
    assert!(
        std::fs::read_dir(nodes[2].data_dir.join("volumes"))
            .map(|mut d| d.next().is_none())
            .unwrap_or(true),
        "a copy was made on a node the volume is not placed on"
    );
    let groups = port_groups(nodes[2].portal(), "vm").await;
    let state_of = |n: u64| groups.iter().find(|g| g.0 == n as u16).map(|g| g.1);
    assert_eq!(
        state_of(primary),
        Some(0),
        "primary active/optimized: {groups:?}"
    );
    assert_eq!(
        state_of(c_id),
        Some(1),
        "new node active/non-optimized: {groups:?}"
    );
    assert_eq!(groups.len(), 3, "one port group per data node: {groups:?}");
    let (mut h, mut seq, _) = writer.finish().await;
    verify(nodes[2].portal(), "vm", EXTENTS, &h).await;
    write_until_acknowledged(
        nodes[2].portal(),
        "vm",
        &mut h,
        &mut seq,
        EXTENTS,
        Duration::from_secs(5),
    )
    .await;
    verify(nodes[p].portal(), "vm", EXTENTS, &h).await;
    let writer = Writer::start(nodes[p].portal(), "vm", h, seq, EXTENTS);

    // The copy of the primary cannot be dropped; a new copy goes to c.
    let refused = nodes[2].cli(&[
        "volume",
        "remove-replica",
        "vm",
        "--node",
        &primary.to_string(),
    ]);
    assert!(!refused.status.success(), "the primary's copy was dropped");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("primary"),
        "refusal names the reason: {}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let out = nodes[2].cli_ok(&["volume", "add-replica", "vm", "--node", &c_name]);
    assert!(out.contains(&format!("new copy on {c_name}")), "{out}");
    wait_until("the new copy in sync", 60, || {
        volume_record(&nodes[0], "vm")["replicas"][c_id.to_string()]["state"] == "in-sync"
    });
    let status = nodes[2].cli_ok(&["volume", "status", "vm"]);
    assert!(
        status.contains(&c_name) && status.contains("in-sync"),
        "{status}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut h, mut seq, acked) = writer.finish().await;
    assert!(
        acked > 20,
        "only {acked} writes acknowledged while the cluster grew"
    );
    for n in &nodes {
        verify(n.portal(), "vm", EXTENTS, &h).await;
    }

    // Kill the primary: one of the two other copies takes over.
    nodes[p].kill();
    let survivor = 2;
    let pause = write_until_acknowledged(
        nodes[survivor].portal(),
        "vm",
        &mut h,
        &mut seq,
        EXTENTS,
        Duration::from_secs(30),
    )
    .await;
    eprintln!("I/O resumed {pause:?} after SIGKILL of the primary (3 data nodes)");
    let writer = Writer::start(nodes[survivor].portal(), "vm", h, seq, EXTENTS);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (h, _, acked) = writer.finish().await;
    assert!(acked > 0, "no write acknowledged after the failover");
    let record = volume_record(&nodes[survivor], "vm");
    assert_ne!(record["primary"].as_u64(), Some(primary), "a new primary");
    nodes[p].restart();
    wait_until("all three copies in sync", 60, || {
        all_in_sync(&nodes[survivor], "vm")
    });
    for n in &nodes {
        verify(n.portal(), "vm", EXTENTS, &h).await;
    }
    let mut windows = Vec::new();
    for n in &nodes {
        windows.extend(ack_windows(n, "vm"));
    }
    assert_one_writer(&windows);

    // A libiscsi client too: qemu-img writes a random image through the
    // node that was killed (it forwards to the primary) and reads the same
    // bytes back through every node.
    require_tool("qemu-img");
    let image = dir.path().join("image.raw");
    let mut data = vec![0u8; 16 << 20];
    rand::thread_rng().fill_bytes(&mut data);
    std::fs::write(&image, &data).unwrap();
    let image = image.to_str().unwrap();
    run_ok(
        "qemu-img",
        &[
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            image,
            &nodes[p].url("vm"),
        ],
    );
    for n in &nodes {
        run_ok(
            "qemu-img",
            &["compare", "-f", "raw", "-F", "raw", image, &n.url("vm")],
        );
    }

    // The third node leaves: the volume stays on the other two, the node
    // drops its copy at once. Its bytes are taken first (all I/O is done).
    let third = std::fs::read(volume_file(&nodes[2])).unwrap();
    nodes[2].cli_ok(&["cluster", "leave"]);
    let record = volume_record(&nodes[0], "vm");
    assert_eq!(record["replicas"].as_object().unwrap().len(), 2, "{record}");
    assert!(!nodes[2].cli_ok(&["volume", "list"]).contains("vm"));
    assert!(
        std::fs::read_dir(nodes[2].data_dir.join("volumes"))
            .unwrap()
            .next()
            .is_none(),
        "the node that left still holds a copy"
    );

    nodes[2].stop();
    nodes[0].stop();
    nodes[1].stop();
    let first = std::fs::read(volume_file(&nodes[0])).unwrap();
    assert!(
        std::fs::read(volume_file(&nodes[1])).unwrap() == first && third == first,
        "the copies differ after the cluster grew and failed over"
    );
}
