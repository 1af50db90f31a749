//! Discovery through any node finds every path: in a two-node cluster with
//! a witness (three processes on loopback), SendTargets through either node
//! answers, for the volume, both nodes' portals, each with the target
//! portal group tag of that node's ALUA port group; libiscsi's `iscsi-ls`
//! lists both and logs in through each.

mod common;

use bytes::Bytes;
use common::cluster::{node_id, on_loopback, port_groups, session, wait_until};
use common::{node_prefix, require_tool, run_ok};
use iscsi::{text, Opcode, TextRequest, RESERVED_TAG};
use testkit::Initiator;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_targets_through_either_node_lists_the_portals_of_both() {
    require_tool("iscsi-ls");
    let dir = tempfile::tempdir().unwrap();
    let (a, b, _witness, _) = on_loopback(dir.path());
    a.cli_ok(&["volume", "create", "vm", "--size", "4M", "--replicas", "2"]);
    wait_until("both nodes export the volume", 20, || {
        b.cli_ok(&["volume", "list"]).contains("vm")
    });
    let iqn = format!("{}:vm", node_prefix());
    let portal_a = format!("127.0.0.1:{},{}", a.iscsi_port, node_id(&a));
    let portal_b = format!("127.0.0.1:{},{}", b.iscsi_port, node_id(&b));

    for through in [&a, &b] {
        let url = format!("iscsi://127.0.0.1:{}", through.iscsi_port);
        let out = run_ok("iscsi-ls", &["-s", &url]);
        for portal in [&portal_a, &portal_b] {
            let line = format!("Target:{iqn} Portal:{portal}");
            assert!(out.contains(&line), "through {url}: no {line:?} in:\n{out}");
        }
        // -s logs in through every portal listed and finds LUN 0 on each.
        assert_eq!(out.matches("Lun:0").count(), 2, "through {url}:\n{out}");
    }

    // SendTargets=<iqn> answers the same, this node's portal first.
    let mut i = Initiator::connect(b.portal()).await;
    i.login(&[
        ("InitiatorName", "iqn.2026-11.test:discover"),
        ("SessionType", "Discovery"),
    ])
    .await;
    let mut p = TextRequest::new();
    p.set_immediate(true);
    p.set_itt(1);
    p.set_target_transfer_tag(RESERVED_TAG);
    p.pdu_mut().data = Bytes::from(text::encode(&[("SendTargets", iqn.as_str())]));
    i.send(p.into()).await;
    let r = i.recv().await.expect("text response");
    assert_eq!(r.opcode(), Some(Opcode::TextResponse));
    let addresses: Vec<String> = text::parse(&r.data)
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k == "TargetAddress")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(addresses, vec![portal_b.clone(), portal_a.clone()]);

    // The tags are the port groups ALUA reports for the nodes.
    let mut groups: Vec<u16> = port_groups(a.portal(), "vm")
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    groups.sort();
    let mut ids = vec![node_id(&a) as u16, node_id(&b) as u16];
    ids.sort();
    assert_eq!(groups, ids);
    // And each node's tag is the group of its own port (VPD 0x83).
    for (node, tag) in [(&a, node_id(&a)), (&b, node_id(&b))] {
        assert_eq!(own_port_group(node.portal()).await, tag as u16);
    }
}

/// The target port group designator (SPC-4 7.8.6.7) of the port `portal`
/// presents the volume through, from VPD page 0x83.
async fn own_port_group(portal: std::net::SocketAddr) -> u16 {
    let mut i = session(portal, "vm").await.expect("session");
    let o = i
        .run(&[0x12, 0x01, 0x83, 0x01, 0x00, 0x00], &[], 256)
        .await
        .expect("INQUIRY");
    assert_eq!(o.status, 0, "VPD 0x83 failed: {:?}", o.asc);
    let end = 4 + u16::from_be_bytes([o.data[2], o.data[3]]) as usize;
    let mut at = 4;
    while at + 4 <= end {
        let d = &o.data[at..];
        let len = d[3] as usize;
        // Association: target port (1); designator type: target port group (5).
        if (d[1] >> 4) & 0x3 == 1 && d[1] & 0x0f == 5 {
            return u16::from_be_bytes([d[6], d[7]]);
        }
        at += 4 + len;
    }
    panic!("no target port group designator through {portal}");
}
