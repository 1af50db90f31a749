//! Misbehaving clients against the real server: data digest errors, Data-Out
//! outside its burst, connections dropped in the middle of a write, and
//! hundreds of idle connections from one address. Each gets the protocol's
//! answer; a well-behaved session running alongside never notices; no file
//! descriptors or memory are left behind.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::{node_prefix, Server};
use iscsi::{Opcode, Pdu};
use testkit::{rw16, Initiator};
use tokio::io::AsyncWriteExt;

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

async fn session(addr: SocketAddr, extra: &[(&str, &str)]) -> Initiator {
    let target = format!("{}:victim", node_prefix());
    let mut i = Initiator::normal(addr, &target, extra).await;
    while i.simple(&[0u8; 6]).await.0 != 0 {}
    i
}

async fn still_fine(good: &mut Initiator, round: u8) {
    let data = vec![round; 4096];
    let o = good
        .run(&rw16(0x8A, 8, 8, false), &data, 0)
        .await
        .expect("good session alive");
    assert_eq!(o.status, 0);
    let o = good.run(&rw16(0x88, 8, 8, false), &[], 4096).await.unwrap();
    assert_eq!((o.status, o.data), (0, data), "good session disturbed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clients_get_protocol_answers_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    server.cli_ok(&["volume", "create", "victim", "--size", "64M"]);
    let addr: SocketAddr = format!("127.0.0.1:{}", server.iscsi_port).parse().unwrap();
    let pid = server.pid();
    let mut good = session(addr, &[]).await;
    still_fine(&mut good, 1).await;
    let fds_before = fds(pid);
    let rss_before = rss_kib(pid);

    for round in 0..3u8 {
        // 1. A data digest error: Reject (data digest error), connection closed.
        let mut d = session(addr, &[("DataDigest", "CRC32C")]).await;
        assert!(d.digests.data);
        let mut cmd = d.command(&rw16(0x8A, 0, 8, false), 4096, true, &[]);
        cmd.data = Bytes::from(vec![0xAB; 4096]);
        let mut bytes = cmd.encode(d.digests);
        let last = bytes.len() - 1;
        bytes[last] ^= 0xFF; // corrupt the data digest
        d.s.write_all(&bytes).await.unwrap();
        let r = d.recv().await.expect("an answer to the digest error");
        assert_eq!((r.opcode(), r.byte(2)), (Some(Opcode::Reject), 0x02));
        assert!(
            d.recv().await.is_none(),
            "connection kept after a digest error"
        );

        // 2. Data-Out beyond the burst the target asked for: Reject.
        let mut b = session(addr, &[("ImmediateData", "No"), ("InitialR2T", "Yes")]).await;
        let cmd = b.command(&rw16(0x8A, 0, 8, false), 4096, true, &[]);
        let itt = cmd.itt();
        b.send(cmd).await;
        let r2t = b.recv_reply().await.expect("R2T");
        assert_eq!(r2t.opcode(), Some(Opcode::R2t));
        let mut out = Pdu::new(Opcode::DataOut);
        out.set_flags(0x80);
        out.set_itt(itt);
        out.set_u32(20, r2t.u32_at(20));
        out.set_u32(40, 8192); // past the end of the transfer
        out.data = Bytes::from(vec![0u8; 512]);
        b.send(out).await;
        let r = b.recv_reply().await.expect("an answer");
        assert_eq!((r.opcode(), r.byte(2)), (Some(Opcode::Reject), 0x09));

        // 3. A write whose data never comes: the client drops mid-write.
        let mut m = session(addr, &[("ImmediateData", "No"), ("InitialR2T", "Yes")]).await;
        let cmd = m.command(&rw16(0x8A, 16, 8, false), 4096, true, &[]);
        m.send(cmd).await;
        drop(m);
        drop(b);

        // 4. Hundreds of idle connections from one address: the per-source
        // limit (256) closes the rest at once; none of them disturbs anyone.
        let mut idle = Vec::new();
        for _ in 0..300 {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        still_fine(&mut good, 10 + round).await;
        drop(idle);
        tokio::time::sleep(Duration::from_millis(300)).await;
        still_fine(&mut good, 20 + round).await;
    }

    // Everything those clients held is gone again.
    let mut fds_after = fds(pid);
    for _ in 0..50 {
        if fds_after <= fds_before + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        fds_after = fds(pid);
    }
    assert!(
        fds_after <= fds_before + 2,
        "file descriptors leaked: {fds_before} before, {fds_after} after"
    );
    let rss_after = rss_kib(pid);
    assert!(
        rss_after < rss_before + 32 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert!(server
        .log_text()
        .contains("too many connections from this address"));
}
