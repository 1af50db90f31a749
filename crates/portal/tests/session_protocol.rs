//! The target driven by a minimal initiator over loopback: login with and
//! without digests, discovery, R2T writes, multi-PDU reads, NOP, the CmdSN
//! window, task management, and hostile input that must not disturb other sessions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use iscsi::{
    text, DataIn, DataOut, LoginRequest, LoginResponse, NopIn, NopOut, Opcode, Pdu, R2t, Reject,
    RejectReason, ScsiResponse, TaskFunction, TaskMgmtRequest, TaskMgmtResponse, TaskResponse,
    TextRequest, BHS_LEN, RESERVED_TAG,
};
use portal::{Portal, PortalDirectory, Serving, TargetAccess, TargetConfig, Targets};
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
    let kv = send_targets(addr, "All").await;
    assert_eq!(kv[0], ("TargetName".to_string(), IQN.to_string()));
    assert_eq!(kv[1], ("TargetAddress".to_string(), format!("{addr},1")));
}

/// Other nodes' portals, as a cluster member's directory names them.
struct TwoOthers;

impl PortalDirectory for TwoOthers {
    fn elsewhere(&self, target: &str) -> Vec<Portal> {
        if target != IQN {
            return Vec::new();
        }
        vec![
            Portal {
                address: "192.0.2.2:3260".into(),
                tag: 2,
            },
            Portal {
                address: "[2001:db8::3]:3260".into(),
                tag: 3,
            },
        ]
    }

    fn serving(&self, _target: &str) -> Serving {
        Serving::Here
    }
}

/// The key-value pairs a discovery session of `initiator` gets for `SendTargets=<which>`.
async fn send_targets(addr: SocketAddr, which: &str) -> Vec<(String, String)> {
    let mut i = Initiator::connect(addr).await;
    i.login(&[
        ("InitiatorName", "iqn.2026-11.test:d"),
        ("SessionType", "Discovery"),
    ])
    .await;
    let mut p = TextRequest::new();
    p.set_immediate(true);
    p.set_itt(9);
    p.set_target_transfer_tag(RESERVED_TAG);
    p.pdu_mut().data = Bytes::from(text::encode(&[("SendTargets", which)]));
    i.send(p.into()).await;
    let r = i.recv().await.unwrap();
    assert_eq!(r.opcode(), Some(Opcode::TextResponse));
    text::parse(&r.data).unwrap()
}

#[tokio::test]
async fn discovery_lists_the_portals_of_other_nodes_with_their_tags() {
    let (addr, targets, _stop) = start().await;
    targets.set_portal_group_tag(7);
    targets.set_directory(Arc::new(TwoOthers));
    let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
    let expected = vec![
        pair("TargetName", IQN),
        pair("TargetAddress", &format!("{addr},7")),
        pair("TargetAddress", "192.0.2.2:3260,2"),
        pair("TargetAddress", "[2001:db8::3]:3260,3"),
    ];
    assert_eq!(send_targets(addr, "All").await, expected);
    assert_eq!(send_targets(addr, IQN).await, expected);
    assert!(send_targets(addr, "iqn.2026-11.io.tandem:other")
        .await
        .is_empty());
    // A normal login announces the same tag.
    let mut i = Initiator::connect(addr).await;
    let kv = i
        .login(&[
            ("InitiatorName", "iqn.2026-11.test:init"),
            ("SessionType", "Normal"),
            ("TargetName", IQN),
        ])
        .await;
    assert!(
        kv.contains(&pair("TargetPortalGroupTag", "7")),
        "login answered {kv:?}"
    );
}

/// A directory that says this file's target is served where the test sets.
struct ServedAt(std::sync::Mutex<Serving>);

impl PortalDirectory for ServedAt {
    fn elsewhere(&self, _target: &str) -> Vec<Portal> {
        Vec::new()
    }

    fn serving(&self, target: &str) -> Serving {
        if target == IQN {
            self.0.lock().unwrap().clone()
        } else {
            Serving::Here
        }
    }
}

/// One normal login of `initiator` to this file's target: the response's
/// status class and detail, its keys, and whether the connection stayed open.
async fn login_status(
    addr: SocketAddr,
    initiator: &str,
) -> ((u8, u8), Vec<(String, String)>, bool) {
    let mut i = Initiator::connect(addr).await;
    let r = i
        .try_login(&[
            ("InitiatorName", initiator),
            ("SessionType", "Normal"),
            ("TargetName", IQN),
        ])
        .await
        .expect("login response");
    let kv = text::parse(&r.data).unwrap();
    let status = (r.byte(36), r.byte(37));
    let open = tokio::time::timeout(Duration::from_millis(200), i.recv())
        .await
        .is_err();
    (status, kv, open)
}

#[tokio::test]
async fn normal_logins_are_redirected_to_the_portal_that_serves_the_target() {
    let (addr, targets, _stop) = start().await;
    let directory = Arc::new(ServedAt(std::sync::Mutex::new(Serving::At(
        "[2001:db8::3]:3260".into(),
    ))));
    targets.set_directory(directory.clone());
    let init = "iqn.2026-11.test:init";
    // Off (the default): the directory is not asked.
    let (status, _, open) = login_status(addr, init).await;
    assert_eq!(status, (0, 0));
    assert!(open);

    targets.set_redirect_logins(true);
    let (status, kv, open) = login_status(addr, init).await;
    assert_eq!(status, (1, 1), "target moved temporarily");
    assert_eq!(
        kv,
        vec![(
            "TargetAddress".to_string(),
            "[2001:db8::3]:3260".to_string()
        )]
    );
    assert!(!open, "the connection closes after a redirection");
    // Discovery is not redirected.
    let kv = send_targets(addr, "All").await;
    assert_eq!(kv[0], ("TargetName".to_string(), IQN.to_string()));
    // An initiator the target does not admit learns nothing about it.
    targets.set_access(
        IQN,
        TargetAccess {
            allowed_initiators: vec![init.to_string()],
            ..TargetAccess::default()
        },
    );
    let (status, kv, _) = login_status(addr, "iqn.2026-11.test:other").await;
    assert_eq!(status, (2, 2), "not authorized");
    assert!(kv.is_empty());
    // No portal known: try again later.
    *directory.0.lock().unwrap() = Serving::Unknown;
    let (status, kv, open) = login_status(addr, init).await;
    assert_eq!(status, (3, 1), "service unavailable");
    assert!(kv.is_empty() && !open);
    // Served here: a session as usual.
    *directory.0.lock().unwrap() = Serving::Here;
    let (status, _, open) = login_status(addr, init).await;
    assert_eq!(status, (0, 0));
    assert!(open);
}

#[tokio::test]
async fn unknown_target_is_refused_at_login() {
    let (addr, _t, _stop) = start().await;
    let mut i = Initiator::connect(addr).await;
    let mut p = LoginRequest::new();
    p.set_immediate(true);
    p.set_transit(true);
    p.set_csg(1);
    p.set_nsg(3);
    p.pdu_mut().data = Bytes::from(text::encode(&[
        ("InitiatorName", "iqn.x"),
        ("TargetName", "iqn.2026-11.io.tandem:nope"),
    ]));
    i.send(p.into()).await;
    let r = i.recv().await.unwrap();
    let r = LoginResponse::view(&r);
    assert_eq!(
        (r.status_class(), r.status_detail()),
        (2, 3),
        "target not found"
    );
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
        let len = R2t::view(&r2t).desired_data_transfer_length() as usize;
        assert!(len <= 2048, "burst larger than MaxBurstLength");
        i.answer_r2t(&r2t, itt, &data, 1024).await;
        sent += len;
    }
    let r = i.recv_reply().await.unwrap();
    assert_eq!(r.opcode(), Some(Opcode::ScsiResponse));
    assert_eq!(ScsiResponse::view(&r).status(), 0);

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
        let d = DataIn::view(&p);
        assert_eq!(d.data_sn(), pdus);
        let off = d.buffer_offset() as usize;
        back[off..off + p.data.len()].copy_from_slice(&p.data);
        pdus += 1;
        if d.status_present() {
            assert_eq!(d.status(), 0);
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
    for sn in 0..4u32 {
        let mut d = DataOut::new();
        d.set_final(sn == 3);
        d.set_itt(itt);
        d.set_target_transfer_tag(R2t::view(&r2t).target_transfer_tag());
        d.set_data_sn(sn);
        d.set_buffer_offset(if sn == 1 { 0 } else { sn * 1024 });
        d.pdu_mut().data = Bytes::from(vec![0xEE; 1024]);
        i.send(d.into()).await;
    }
    let reject = i.recv_reply().await.expect("Reject");
    assert_eq!(reject.opcode(), Some(Opcode::Reject));
    assert_eq!(
        Reject::view(&reject).reason(),
        RejectReason::ProtocolError as u8
    );
    let r = i.recv_reply().await.expect("SCSI Response");
    assert_eq!(r.opcode(), Some(Opcode::ScsiResponse));
    let r = ScsiResponse::view(&r);
    let sense = r.sense().expect("sense data");
    assert_eq!((r.status(), sense[2] & 0x0F), (2, 0x0B), "ABORTED COMMAND");

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
    let d = DataIn::view(&p);
    assert!(
        d.status_present() && d.residual_overflow(),
        "status with overflow"
    );
    assert_eq!(d.residual_count(), 86);
}

#[tokio::test]
async fn nop_window_and_task_management() {
    let (addr, _t, _stop) = start().await;
    let mut i = normal(addr, &[]).await;
    // Ping with data is echoed.
    let mut nop = NopOut::new();
    nop.set_immediate(true);
    nop.set_itt(77);
    nop.set_target_transfer_tag(RESERVED_TAG);
    nop.set_cmd_sn(i.cmd_sn);
    nop.pdu_mut().data = Bytes::from_static(b"ping!");
    i.send(nop.into()).await;
    let r = i.recv_reply().await.unwrap();
    assert_eq!(
        (r.opcode(), r.itt(), &r.data[..]),
        (Some(Opcode::NopIn), 77, &b"ping!"[..])
    );
    let max_cmd_sn = NopIn::view(&r).max_cmd_sn();

    // A command beyond MaxCmdSN is ignored; the next in-window one is answered.
    let mut far = i.command(&[0u8; 6], 0, false, &[]);
    iscsi::ScsiCommand::view(&mut far).set_cmd_sn(max_cmd_sn.wrapping_add(10));
    i.cmd_sn -= 1;
    i.send(far).await;
    assert_eq!(
        i.simple(&[0u8; 6]).await,
        (2, 6),
        "the in-window command runs (with the login UA)"
    );

    // ABORT TASK for a task that never existed, then LUN RESET.
    let mut tmf = TaskMgmtRequest::new();
    tmf.set_immediate(true);
    tmf.set_function(TaskFunction::AbortTask);
    tmf.set_itt(500);
    tmf.set_referenced_task_tag(12345);
    tmf.set_cmd_sn(i.cmd_sn);
    tmf.set_ref_cmd_sn(i.cmd_sn);
    i.send(tmf.clone().into()).await;
    let r = i.recv_reply().await.unwrap();
    assert_eq!(r.opcode(), Some(Opcode::TaskMgmtResponse));
    assert_eq!(
        TaskMgmtResponse::view(&r).response(),
        TaskResponse::TaskDoesNotExist as u8
    );
    tmf.set_function(TaskFunction::LogicalUnitReset);
    tmf.set_itt(501);
    i.send(tmf.into()).await;
    let r = i.recv_reply().await.unwrap();
    assert_eq!(
        TaskMgmtResponse::view(&r).response(),
        TaskResponse::Complete as u8,
        "LUN RESET completes"
    );
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
    // A data segment beyond what the target declared drops the connection:
    // a bare header declaring 16 MiB of data, none of which follows.
    let mut header = Vec::with_capacity(BHS_LEN);
    Pdu::new(Opcode::ScsiCommand).head_into(0xFF_0000, iscsi::Digests::default(), &mut header);
    bad.s.write_all(&header).await.unwrap();
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
async fn a_command_with_a_malformed_extended_cdb_is_rejected_and_the_session_goes_on() {
    let (addr, _t, _stop) = start().await;
    let mut i = normal(addr, &[]).await;
    assert_eq!(i.simple(&[0u8; 6]).await, (2, 6), "login unit attention");
    // An extended CDB AHS whose AHSLength runs past the AHS area.
    let mut cmd = i.command(&[0u8; 6], 0, false, &[]);
    cmd.ahs = vec![0x00, 0x40, iscsi::ahs::EXTENDED_CDB, 0, 1, 2, 3, 4];
    let itt = cmd.itt();
    i.send(cmd).await;
    let r = i.recv_reply().await.expect("Reject");
    assert_eq!(r.opcode(), Some(Opcode::Reject));
    let r = Reject::view(&r);
    assert_eq!(r.reason(), RejectReason::InvalidPduField as u8);
    let refused = Pdu {
        bhs: *r.rejected_header().expect("the refused header"),
        ahs: Vec::new(),
        data: Bytes::new(),
    };
    assert_eq!(
        (refused.opcode(), refused.itt()),
        (Some(Opcode::ScsiCommand), itt)
    );
    // Its CmdSN was taken and its window slot given back.
    assert_eq!(i.simple(&[0u8; 6]).await, (0, 0));
}

#[tokio::test]
async fn removing_the_target_ends_its_sessions_and_idle_peers_are_pinged() {
    let (addr, targets, _stop) = start().await;
    let mut i = normal(addr, &[]).await;
    assert_eq!(targets.session_count(IQN), 1);
    let listed = targets.sessions(IQN);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].initiator, "iqn.2026-11.test:init");
    assert_eq!(listed[0].address.ip(), addr.ip());
    assert!(targets.sessions("iqn.2026-11.io.tandem:nope").is_empty());
    // Idle: the target pings with a NOP-In carrying a target transfer tag.
    let ping = i.recv().await.expect("NOP-In ping");
    assert_eq!(ping.opcode(), Some(Opcode::NopIn));
    let ping = NopIn::view(&ping);
    assert_eq!(ping.itt(), RESERVED_TAG);
    assert_ne!(ping.target_transfer_tag(), RESERVED_TAG);
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
    assert!(targets.sessions(IQN).is_empty());
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
