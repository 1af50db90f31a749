//! The target driven by a minimal initiator over loopback: login with and
//! without digests, discovery, R2T writes, multi-PDU reads, NOP, the CmdSN
//! window, task management, and hostile input that must not disturb other sessions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use iscsi::{text, Opcode, Pdu, BHS_LEN};
use portal::{TargetConfig, Targets};
use scsi::{LogicalUnit, LunIdentity};
use testkit::{rw10, Initiator};
use tokio::io::AsyncWriteExt;
use volume::MemVolume;

const IQN: &str = "iqn.2026-11.io.tandem:t";

async fn start() -> (SocketAddr, Arc<Targets>, tokio::sync::oneshot::Sender<()>) {
    start_with(TargetConfig {
        nop_interval: Duration::from_millis(400),
        nop_timeout: Duration::from_millis(400),
        ..TargetConfig::default()
    })
    .await
}

async fn start_with(
    cfg: TargetConfig,
) -> (SocketAddr, Arc<Targets>, tokio::sync::oneshot::Sender<()>) {
    let targets = Arc::new(Targets::new());
    let id = LunIdentity {
        vendor: "TANDEM".into(),
        product: "VOLUME".into(),
        revision: "0.1".into(),
        serial: "s".into(),
        naa: vec![0x30, 0, 0, 0, 0, 0, 0, 1],
        target_name: IQN.into(),
        relative_port: 1,
        port_group: 1,
    };
    let lu = LogicalUnit::new(Arc::new(MemVolume::new(512, 2048)), id);
    targets.insert(IQN.into(), Arc::new(lu));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(portal::serve(listener, targets.clone(), cfg, async {
        let _ = rx.await;
    }));
    (addr, targets, tx)
}

/// The test initiator, logged in to this file's target.
async fn normal(addr: SocketAddr, extra: &[(&str, &str)]) -> Initiator {
    Initiator::normal(addr, IQN, extra).await
}

#[tokio::test]
async fn discovery_lists_the_target() {
    let (addr, _t, _stop) = start().await;
    let mut i = Initiator::connect(addr).await;
    i.login(&[
        ("InitiatorName", "iqn.2026-11.test:d"),
        ("SessionType", "Discovery"),
    ])
    .await;
    let mut p = Pdu::new(Opcode::TextRequest);
    p.set_immediate(true);
    p.set_flags(0x80);
    p.set_itt(9);
    p.set_u32(20, 0xFFFF_FFFF);
    p.data = Bytes::from(text::encode(&[("SendTargets", "All")]));
    i.send(p).await;
    let r = i.recv().await.unwrap();
    assert_eq!(r.opcode(), Some(Opcode::TextResponse));
    let kv = text::parse(&r.data).unwrap();
    assert_eq!(kv[0], ("TargetName".to_string(), IQN.to_string()));
    assert_eq!(kv[1], ("TargetAddress".to_string(), format!("{addr},1")));
}

#[tokio::test]
async fn unknown_target_is_refused_at_login() {
    let (addr, _t, _stop) = start().await;
    let mut i = Initiator::connect(addr).await;
    let mut p = Pdu::new(Opcode::LoginRequest);
    p.set_immediate(true);
    p.set_flags(0x87);
    p.data = Bytes::from(text::encode(&[
        ("InitiatorName", "iqn.x"),
        ("TargetName", "iqn.2026-11.io.tandem:nope"),
    ]));
    i.send(p).await;
    let r = i.recv().await.unwrap();
    assert_eq!((r.byte(36), r.byte(37)), (2, 3), "target not found");
    assert!(
        i.recv().await.is_none(),
        "connection stays open after a failed login"
    );
}

#[tokio::test]
async fn r2t_write_and_multi_pdu_read_with_digests() {
    let (addr, _t, _stop) = start().await;
    let mut i = normal(
        addr,
        &[
            ("HeaderDigest", "CRC32C"),
            ("DataDigest", "CRC32C"),
            ("ImmediateData", "No"),
            ("InitialR2T", "Yes"),
            ("MaxBurstLength", "2048"),
            ("MaxRecvDataSegmentLength", "1024"),
        ],
    )
    .await;
    assert!(i.digests.header && i.digests.data);
    // Clear the login's unit attention.
    assert_eq!(i.simple(&[0u8; 6]).await, (2, 6));
    assert_eq!(i.simple(&[0u8; 6]).await, (0, 0));

    let data: Vec<u8> = (0..4096u32).map(|x| (x * 7 % 251) as u8).collect();
    let cmd = i.command(&rw10(0x2A, 16, 8), 4096, true, &[]);
    let itt = cmd.itt();
    i.send(cmd).await;
    let mut sent = 0;
    while sent < 4096 {
        let r2t = i.recv_reply().await.expect("R2T");
        assert_eq!(r2t.opcode(), Some(Opcode::R2t));
        let len = r2t.u32_at(44) as usize;
        assert!(len <= 2048, "burst larger than MaxBurstLength");
        i.answer_r2t(&r2t, itt, &data, 1024).await;
        sent += len;
    }
    let r = i.recv_reply().await.unwrap();
    assert_eq!((r.opcode(), r.byte(3)), (Some(Opcode::ScsiResponse), 0));

    let cmd = i.command(&rw10(0x28, 16, 8), 4096, false, &[]);
    i.send(cmd).await;
    let mut back = vec![0u8; 4096];
    let mut pdus = 0;
    loop {
        let p = i.recv_reply().await.expect("Data-In");
        assert_eq!(p.opcode(), Some(Opcode::DataIn));
        assert!(
            p.data.len() <= 1024,
            "Data-In larger than the initiator's MaxRecvDataSegmentLength"
        );
        assert_eq!(p.u32_at(36), pdus, "DataSN");
        let off = p.u32_at(40) as usize;
        back[off..off + p.data.len()].copy_from_slice(&p.data);
        pdus += 1;
        if p.flags() & 0x01 != 0 {
            assert_eq!(p.byte(3), 0);
            break;
        }
    }
    assert_eq!(pdus, 4);
    assert_eq!(back, data);
}

#[tokio::test]
async fn a_data_out_that_overlaps_its_burst_ends_the_command_and_writes_nothing() {
    let (addr, _t, _stop) = start().await;
    let mut i = normal(
        addr,
        &[
            ("ImmediateData", "No"),
            ("InitialR2T", "Yes"),
            ("MaxRecvDataSegmentLength", "1024"),
        ],
    )
    .await;
    assert_eq!(i.simple(&[0u8; 6]).await, (2, 6));
    let before: Vec<u8> = (0..4096u32).map(|x| (x % 253) as u8).collect();
    let o = i.run(&rw10(0x2A, 16, 8), &before, 0).await.unwrap();
    assert_eq!((o.status, o.sense_key), (0, 0));

    // The second Data-Out of the burst starts over at offset 0 instead of
    // 1024: with DataPDUInOrder=Yes that is a protocol error, and the end
    // of the buffer would never have been written.
    let cmd = i.command(&rw10(0x2A, 16, 8), 4096, true, &[]);
    let itt = cmd.itt();
    i.send(cmd).await;
    let r2t = i.recv_reply().await.expect("R2T");
    assert_eq!(r2t.opcode(), Some(Opcode::R2t));
    for (sn, flags) in [(0u32, 0u8), (1, 0), (2, 0), (3, 0x80)] {
        let mut d = Pdu::new(Opcode::DataOut);
        d.set_flags(flags);
        d.set_itt(itt);
        d.set_u32(20, r2t.u32_at(20));
        d.set_u32(36, sn);
        d.set_u32(40, if sn == 1 { 0 } else { sn * 1024 });
        d.data = Bytes::from(vec![0xEE; 1024]);
        i.send(d).await;
    }
    let reject = i.recv_reply().await.expect("Reject");
    assert_eq!(
        (reject.opcode(), reject.byte(2)),
        (Some(Opcode::Reject), 0x04)
    );
    let r = i.recv_reply().await.expect("SCSI Response");
    assert_eq!(r.opcode(), Some(Opcode::ScsiResponse));
    assert_eq!(
        (r.byte(3), r.data[2 + 2] & 0x0F),
        (2, 0x0B),
        "ABORTED COMMAND"
    );

    let o = i.run(&rw10(0x28, 16, 8), &[], 4096).await.unwrap();
    assert_eq!(o.status, 0);
    assert_eq!(
        o.data, before,
        "nothing of the refused write reached the volume"
    );
}

#[tokio::test]
async fn residuals_are_reported() {
    let (addr, _t, _stop) = start().await;
    let mut i = normal(addr, &[]).await;
    i.simple(&[0u8; 6]).await;
    // INQUIRY asking 96 bytes with an expected length of 10: overflow of 86.
    let cmd = i.command(&[0x12, 0, 0, 0, 96, 0], 10, false, &[]);
    i.send(cmd).await;
    let p = i.recv_reply().await.unwrap();
    assert_eq!(p.opcode(), Some(Opcode::DataIn));
    assert_eq!(p.data.len(), 10);
    assert_eq!(p.flags() & 0x05, 0x05, "status with overflow");
    assert_eq!(p.u32_at(44), 86);
}

#[tokio::test]
async fn nop_window_and_task_management() {
    let (addr, _t, _stop) = start().await;
    let mut i = normal(addr, &[]).await;
    // Ping with data is echoed.
    let mut nop = Pdu::new(Opcode::NopOut);
    nop.set_immediate(true);
    nop.set_flags(0x80);
    nop.set_itt(77);
    nop.set_u32(20, 0xFFFF_FFFF);
    nop.set_u32(24, i.cmd_sn);
    nop.data = Bytes::from_static(b"ping!");
    i.send(nop).await;
    let r = i.recv_reply().await.unwrap();
    assert_eq!(
        (r.opcode(), r.itt(), &r.data[..]),
        (Some(Opcode::NopIn), 77, &b"ping!"[..])
    );
    let max_cmd_sn = r.u32_at(32);

    // A command beyond MaxCmdSN is ignored; the next in-window one is answered.
    let mut far = i.command(&[0u8; 6], 0, false, &[]);
    far.set_u32(24, max_cmd_sn.wrapping_add(10));
    i.cmd_sn -= 1;
    i.send(far).await;
    assert_eq!(
        i.simple(&[0u8; 6]).await,
        (2, 6),
        "the in-window command runs (with the login UA)"
    );

    // ABORT TASK for a task that never existed, then LUN RESET.
    let mut tmf = Pdu::new(Opcode::TaskMgmtRequest);
    tmf.set_immediate(true);
    tmf.set_flags(0x80 | 1);
    tmf.set_itt(500);
    tmf.set_u32(20, 12345);
    tmf.set_u32(24, i.cmd_sn);
    tmf.set_u32(32, i.cmd_sn);
    i.send(tmf.clone()).await;
    let r = i.recv_reply().await.unwrap();
    assert_eq!((r.opcode(), r.byte(2)), (Some(Opcode::TaskMgmtResponse), 1));
    tmf.set_flags(0x80 | 5);
    tmf.set_itt(501);
    i.send(tmf).await;
    let r = i.recv_reply().await.unwrap();
    assert_eq!(r.byte(2), 0, "LUN RESET completes");
    let (status, key) = i.simple(&[0u8; 6]).await;
    assert_eq!((status, key), (2, 6), "reset unit attention");
}

#[tokio::test]
async fn hostile_input_is_rejected_without_hurting_other_sessions() {
    let (addr, _t, _stop) = start().await;
    let mut good = normal(addr, &[]).await;
    good.simple(&[0u8; 6]).await;

    let mut bad = normal(addr, &[]).await;
    // An opcode the target does not take gets a Reject.
    let mut p = Pdu::new(Opcode::SnackRequest);
    p.set_itt(3);
    bad.send(p).await;
    let r = bad.recv_reply().await.unwrap();
    assert_eq!(r.opcode(), Some(Opcode::Reject));
    // A data segment beyond what the target declared drops the connection.
    let mut huge = [0u8; BHS_LEN];
    huge[0] = Opcode::ScsiCommand as u8;
    huge[5] = 0xFF;
    bad.s.write_all(&huge).await.unwrap();
    assert!(
        bad.recv().await.is_none(),
        "oversized PDU did not close the connection"
    );
    // Half a PDU, then the client vanishes.
    let mut half = Initiator::connect(addr).await;
    half.s.write_all(&[0x43, 0x87, 0, 0]).await.unwrap();
    drop(half);

    assert_eq!(
        good.simple(&[0u8; 6]).await,
        (0, 0),
        "the good session was disturbed"
    );
}

#[tokio::test]
async fn removing_the_target_ends_its_sessions_and_idle_peers_are_pinged() {
    let (addr, targets, _stop) = start().await;
    let mut i = normal(addr, &[]).await;
    assert_eq!(targets.session_count(IQN), 1);
    // Idle: the target pings with a NOP-In carrying a target transfer tag.
    let ping = i.recv().await.expect("NOP-In ping");
    assert_eq!(
        (ping.opcode(), ping.itt()),
        (Some(Opcode::NopIn), 0xFFFF_FFFF)
    );
    assert_ne!(ping.u32_at(20), 0xFFFF_FFFF);
    // Unanswered, the connection is closed after nop_timeout.
    assert!(
        i.recv().await.is_none(),
        "unanswered ping did not close the connection"
    );

    let mut j = normal(addr, &[]).await;
    j.simple(&[0u8; 6]).await;
    assert!(targets.remove(IQN));
    assert!(
        j.recv().await.is_none(),
        "session survived removal of its target"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(targets.session_count(IQN), 0);
}

#[tokio::test]
async fn one_source_cannot_take_every_connection() {
    let (addr, _t, _stop) = start_with(TargetConfig {
        max_connections_per_source: 2,
        ..TargetConfig::default()
    })
    .await;
    let mut a = normal(addr, &[]).await;
    let b = normal(addr, &[]).await;
    // The third connection from the same address is closed at once.
    let mut c = Initiator::connect(addr).await;
    assert!(c.recv().await.is_none(), "third connection was served");
    // The sessions already in are not disturbed; a freed slot is usable again.
    assert_eq!(
        a.simple(&[0x00, 0, 0, 0, 0, 0]).await.0,
        0x02,
        "power-on UA"
    );
    assert_eq!(a.simple(&[0x00, 0, 0, 0, 0, 0]).await.0, 0x00);
    drop(b);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut d = normal(addr, &[]).await;
    assert_eq!(d.simple(&[0x00, 0, 0, 0, 0, 0]).await.0, 0x02);
}
