//! A normal session in full feature phase (RFC 7143 §4, §11): SCSI commands
//! with immediate, unsolicited and solicited (R2T) data, Data-In and status,
//! NOP, task management and logout. Commands of a session run concurrently;
//! one writer task sends every PDU in order.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use iscsi::{
    serial, DataOut, Digests, LogoutRequest, LogoutResponse, LogoutResponseCode, Negotiated, NopIn,
    NopOut, Opcode, Pdu, R2t as R2tPdu, Reject, RejectReason, ScsiCommand, TaskFunction,
    TaskMgmtRequest, TaskMgmtResponse, TaskResponse, TextRequest, TextResponse, BHS_LEN,
    RESERVED_TAG,
};
use scsi::{LogicalUnit, Request, Response, Status};
use smallvec::SmallVec;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use crate::io::{reader_task, writer_task, Incoming, Outgoing, SeqState};
use crate::registry::{SessionInfo, Target};
use crate::reply::Reply;
use crate::TargetConfig;

/// A Reject PDU (RFC 7143 §11.17) carrying the offending header.
pub(crate) fn reject(reason: RejectReason, bhs: &[u8; BHS_LEN]) -> Pdu {
    Reject::of(reason, bhs).into()
}

/// The NOP-In answering a NOP-Out ping (RFC 7143 §11.19): echoes its data.
pub(crate) fn nop_in_reply(req: &Pdu, initiator_mrdsl: u32) -> Pdu {
    let ping = NopOut::view(req);
    let mut p = NopIn::new();
    p.set_lun(ping.lun());
    p.set_itt(ping.itt());
    p.set_target_transfer_tag(RESERVED_TAG);
    let n = req.data.len().min(initiator_mrdsl as usize);
    p.pdu_mut().data = req.data.slice(..n);
    p.into()
}

/// A Logout Response: connection or session closed successfully (RFC 7143 §11.15).
pub(crate) fn logout_response(req: &Pdu) -> Pdu {
    let mut p = LogoutResponse::new();
    p.set_logout_response(LogoutResponseCode::Closed);
    p.set_itt(LogoutRequest::view(req).itt());
    p.into()
}

/// A SCSI command as received, with everything needed to answer it.
#[derive(Clone)]
struct Command {
    itt: u32,
    lun: [u8; 8],
    /// The CDB: 16 bytes from the header, more from an extended CDB AHS.
    cdb: SmallVec<[u8; 16]>,
    edtl: u32,
    immediate: bool,
}

impl Command {
    /// Addresses `resp` to this command's task.
    fn reply(&self, resp: Response) -> Reply {
        Reply {
            lun: self.lun,
            itt: self.itt,
            edtl: self.edtl,
            resp,
        }
    }
}

/// A write waiting for its data-out.
struct PendingWrite {
    cmd: Command,
    buf: Vec<u8>,
    received: u32,
    unsolicited_end: u32,
    unsolicited_done: bool,
    next_offset: u32,
    r2ts: Vec<R2t>,
    r2t_sn: u32,
    /// DataSN the next unsolicited Data-Out must carry.
    unsolicited_data_sn: u32,
    /// Buffer offset the next unsolicited Data-Out must start at.
    unsolicited_next: u32,
}

/// The data of a write gathered from its Data-Outs; goes back to the buffer
/// pool when the write is done with it.
struct R2t {
    ttt: u32,
    offset: u32,
    len: u32,
    got: u32,
    /// DataSN the next Data-Out of this burst must carry.
    data_sn: u32,
}

/// Running commands by ITT: their abort handle (set right after spawning) and
/// whether they hold a CmdSN window slot (non-immediate commands do).
type TaskTable = Arc<Mutex<HashMap<u32, (Option<AbortHandle>, bool)>>>;

struct Session<'a> {
    peer: SocketAddr,
    target: Arc<Target>,
    cfg: &'a TargetConfig,
    neg: Negotiated,
    nexus: Arc<str>,
    seq: Arc<SeqState>,
    out: mpsc::Sender<Outgoing>,
    tasks: TaskTable,
    writes: HashMap<u32, PendingWrite>,
    next_ttt: u32,
    buffered: usize,
}

/// Runs a normal session on one connection until logout, error or shutdown.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    r: tokio::net::tcp::OwnedReadHalf,
    rx: bytes::BytesMut,
    w: tokio::net::tcp::OwnedWriteHalf,
    peer: SocketAddr,
    _local: SocketAddr,
    target: Arc<Target>,
    cfg: &TargetConfig,
    neg: Negotiated,
    stat_sn: u32,
    mut stop: watch::Receiver<bool>,
) {
    let _count = target.logged_in(SessionInfo {
        initiator: neg.initiator_name.clone(),
        address: peer,
    });
    let mut removed = target.removed.subscribe();
    let isid: String = neg.isid.iter().map(|b| format!("{b:02x}")).collect();
    let nexus: Arc<str> = format!("{},i,0x{isid}", neg.initiator_name).into();
    target.lun0.nexus_added(&nexus);
    let digests = Digests {
        header: neg.header_digest,
        data: neg.data_digest,
    };
    let seq = Arc::new(SeqState {
        exp_cmd_sn: neg.exp_cmd_sn.into(),
        outstanding: 0.into(),
        queue_depth: cfg.queue_depth.max(1),
    });
    let (out_tx, out_rx) = mpsc::channel(4096);
    let writer = tokio::spawn(writer_task(
        w,
        digests,
        seq.clone(),
        stat_sn,
        neg.initiator_mrdsl,
        out_rx,
    ));
    let (in_tx, mut in_rx) = mpsc::channel(64);
    let reader = tokio::spawn(reader_task(
        r,
        rx,
        digests,
        neg.target_mrdsl as usize,
        in_tx,
    ));
    let mut s = Session {
        peer,
        target,
        cfg,
        nexus,
        seq,
        out: out_tx,
        tasks: Arc::new(Mutex::new(HashMap::new())),
        writes: HashMap::new(),
        next_ttt: 1,
        buffered: 0,
        neg,
    };

    let mut last_heard = Instant::now();
    let mut ping: Option<Instant> = None;
    let reason = loop {
        let wake = match ping {
            Some(sent) => sent + cfg.nop_timeout,
            None => last_heard + cfg.nop_interval,
        };
        tokio::select! {
            item = in_rx.recv() => {
                last_heard = Instant::now();
                ping = None;
                match item {
                    Some(Incoming::Pdu(p)) => match s.handle(p).await {
                        Ok(true) => {}
                        Ok(false) => break "logged out".to_string(),
                        Err(why) => break why,
                    },
                    Some(Incoming::BadData(bhs)) => {
                        // ERL 0: a data digest error cannot be recovered inside the
                        // session; reject the PDU and drop the connection.
                        s.send(reject(RejectReason::DataDigestError, &bhs)).await;
                        break "data digest error".to_string();
                    }
                    Some(Incoming::Closed(why)) => break why,
                    None => break "reader stopped".to_string(),
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                if ping.is_some() {
                    break format!("no answer to a NOP-In ping within {:?}", cfg.nop_timeout);
                }
                let mut p = NopIn::new();
                p.set_itt(RESERVED_TAG);
                p.set_target_transfer_tag(s.ttt());
                s.send(p.into()).await;
                ping = Some(Instant::now());
            }
            _ = async { let _ = stop.wait_for(|v| *v).await; } => {
                s.drain(cfg.drain_timeout).await;
                break "target shutting down".to_string();
            }
            _ = async { let _ = removed.wait_for(|v| *v).await; } => {
                s.abort_all();
                break "target removed".to_string();
            }
        }
    };
    tracing::info!(peer = %s.peer, initiator = %s.neg.initiator_name, "iSCSI session ended: {reason}");
    reader.abort();
    s.abort_all();
    s.target.lun0.nexus_removed(&s.nexus);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let _ = s.out.send(Outgoing::Flush(done_tx)).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), done_rx).await;
    drop(s);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

impl Session<'_> {
    async fn send(&self, p: Pdu) {
        let _ = self.out.send(Outgoing::Pdu(p)).await;
    }

    fn ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        t
    }

    /// Handles one PDU; `Ok(false)` ends the session after a logout.
    async fn handle(&mut self, p: Pdu) -> Result<bool, String> {
        match p.opcode() {
            Some(Opcode::ScsiCommand) => self.scsi_command(p).await,
            Some(Opcode::DataOut) => self.data_out(p).await,
            Some(Opcode::NopOut) => {
                let ping = NopOut::view(&p);
                if !ping.immediate() && !self.accept_cmd_sn(ping.cmd_sn()) {
                    return Ok(true);
                }
                if ping.itt() != RESERVED_TAG {
                    self.send(nop_in_reply(&p, self.neg.initiator_mrdsl)).await;
                }
                Ok(true)
            }
            Some(Opcode::TaskMgmtRequest) => self.task_management(p).await,
            Some(Opcode::TextRequest) => {
                let req = TextRequest::view(&p);
                if !req.immediate() && !self.accept_cmd_sn(req.cmd_sn()) {
                    return Ok(true);
                }
                let mut r = TextResponse::new();
                r.set_lun(req.lun());
                r.set_itt(req.itt());
                r.set_target_transfer_tag(RESERVED_TAG);
                let asks_targets = iscsi::text::parse(&p.data)
                    .map(|kv| kv.iter().any(|(k, _)| k == "SendTargets"))
                    .unwrap_or(false);
                if asks_targets {
                    let name = self.neg.target_name.clone().unwrap_or_default();
                    r.pdu_mut().data = Bytes::from(iscsi::text::encode(&[("TargetName", name)]));
                }
                self.send(r.into()).await;
                Ok(true)
            }
            Some(Opcode::LogoutRequest) => {
                let req = LogoutRequest::view(&p);
                if !req.immediate() {
                    self.accept_cmd_sn(req.cmd_sn());
                }
                // RFC 7143 §11.14: finish the session's tasks before answering.
                self.writes.clear();
                self.drain(self.cfg.drain_timeout).await;
                self.send(logout_response(&p)).await;
                Ok(false)
            }
            _ => {
                tracing::warn!(peer = %self.peer, opcode = p.opcode_raw(), "rejecting an unsupported PDU");
                self.send(reject(RejectReason::CommandNotSupported, &p.bhs))
                    .await;
                Ok(true)
            }
        }
    }

    /// RFC 7143 §3.2.2.1: a non-immediate command must carry the next CmdSN
    /// inside the window; anything else is ignored.
    fn accept_cmd_sn(&self, cmd_sn: u32) -> bool {
        let exp = self.seq.exp_cmd_sn.load(Ordering::SeqCst);
        if cmd_sn == exp && serial::in_window(cmd_sn, exp, self.seq.max_cmd_sn()) {
            self.seq
                .exp_cmd_sn
                .store(exp.wrapping_add(1), Ordering::SeqCst);
            true
        } else {
            tracing::debug!(peer = %self.peer, cmd_sn, exp, "ignoring a command outside the CmdSN window");
            false
        }
    }

    async fn scsi_command(&mut self, p: Pdu) -> Result<bool, String> {
        let c = ScsiCommand::view(&p);
        let immediate = c.immediate();
        if !immediate {
            if !self.accept_cmd_sn(c.cmd_sn()) {
                return Ok(true);
            }
            self.seq.outstanding.fetch_add(1, Ordering::SeqCst);
        }
        let write = c.write();
        let no_more_unsolicited = c.is_final();
        let mut cdb = SmallVec::from_slice(c.cdb());
        // RFC 7143 §11.2.2.3: an extended CDB AHS carries the bytes past 16.
        let malformed = match c.extended_cdb() {
            Ok(rest) => {
                cdb.extend_from_slice(rest);
                None
            }
            Err(e) => Some(e),
        };
        let cmd = Command {
            itt: c.itt(),
            lun: c.lun(),
            cdb,
            edtl: c.expected_data_transfer_length(),
            immediate,
        };
        if let Some(e) = malformed {
            tracing::warn!(peer = %self.peer, itt = cmd.itt, "rejecting a SCSI command: {e}");
            self.send(reject(RejectReason::InvalidPduField, &p.bhs))
                .await;
            self.finish_uncounted(&cmd);
            return Ok(true);
        }
        if self.tasks.lock().unwrap().contains_key(&cmd.itt) || self.writes.contains_key(&cmd.itt) {
            self.send(reject(RejectReason::InvalidPduField, &p.bhs))
                .await;
            self.finish_uncounted(&cmd);
            return Ok(true);
        }
        let data_len = p.data.len() as u32;
        if !write || cmd.edtl == 0 {
            if data_len > 0 && !write {
                // Immediate data on a command without the W bit is a protocol error.
                self.send(reject(RejectReason::InvalidPduField, &p.bhs))
                    .await;
                self.finish_uncounted(&cmd);
                return Ok(true);
            }
            self.execute(cmd, Bytes::new()).await;
            return Ok(true);
        }
        if cmd.edtl > self.cfg.max_transfer || data_len > cmd.edtl {
            tracing::warn!(peer = %self.peer, edtl = cmd.edtl, "refusing a write larger than the transfer limit");
            self.respond_error(cmd, scsi::Sense::invalid_cdb(0, None))
                .await;
            return Ok(true);
        }
        if data_len == cmd.edtl {
            self.execute(cmd, p.data).await;
            return Ok(true);
        }
        if self.buffered + cmd.edtl as usize > 256 * 1024 * 1024 {
            // Out of buffer space for the write's data.
            self.send(reject(RejectReason::TooManyImmediateCommands, &p.bhs))
                .await;
            self.finish_uncounted(&cmd);
            return Ok(true);
        }
        let unsolicited_end = if self.neg.initial_r2t {
            data_len
        } else {
            self.neg.first_burst_length.min(cmd.edtl).max(data_len)
        };
        let unsolicited_done = no_more_unsolicited || data_len >= unsolicited_end;
        // Every byte of the buffer is written by the immediate data and the
        // in-order Data-Outs before the command runs (see `data_out`).
        let mut buf = volume::buffer::take(cmd.edtl as usize);
        buf[..p.data.len()].copy_from_slice(&p.data);
        self.buffered += buf.len();
        let itt = cmd.itt;
        self.writes.insert(
            itt,
            PendingWrite {
                cmd,
                buf,
                received: data_len,
                unsolicited_end,
                unsolicited_done,
                next_offset: if no_more_unsolicited {
                    data_len
                } else {
                    unsolicited_end
                },
                r2ts: Vec::new(),
                r2t_sn: 0,
                unsolicited_data_sn: 0,
                unsolicited_next: data_len,
            },
        );
        self.solicit(itt).await;
        Ok(true)
    }

    /// Sends R2Ts for the write `itt` up to MaxOutstandingR2T (RFC 7143 §11.8).
    async fn solicit(&mut self, itt: u32) {
        let max_r2t = self.neg.max_outstanding_r2t.max(1) as usize;
        let burst = self.neg.max_burst_length.max(512);
        let mut r2ts = Vec::new();
        if let Some(w) = self.writes.get(&itt) {
            if !w.unsolicited_done {
                return;
            }
        }
        loop {
            let ttt = self.ttt();
            let Some(w) = self.writes.get_mut(&itt) else {
                return;
            };
            if w.r2ts.len() >= max_r2t || w.next_offset >= w.cmd.edtl {
                break;
            }
            let len = burst.min(w.cmd.edtl - w.next_offset);
            let mut p = R2tPdu::new();
            p.set_lun(w.cmd.lun);
            p.set_itt(itt);
            p.set_target_transfer_tag(ttt);
            p.set_r2t_sn(w.r2t_sn);
            p.set_buffer_offset(w.next_offset);
            p.set_desired_data_transfer_length(len);
            w.r2ts.push(R2t {
                ttt,
                offset: w.next_offset,
                len,
                got: 0,
                data_sn: 0,
            });
            w.r2t_sn += 1;
            w.next_offset += len;
            r2ts.push(Pdu::from(p));
        }
        for p in r2ts {
            self.send(p).await;
        }
    }

    async fn data_out(&mut self, p: Pdu) -> Result<bool, String> {
        let d = DataOut::view(&p);
        let itt = d.itt();
        let ttt = d.target_transfer_tag();
        let offset = d.buffer_offset();
        let data_sn = d.data_sn();
        let len = p.data.len() as u32;
        let fin = d.is_final();
        let Some(w) = self.writes.get_mut(&itt) else {
            // Data for a task that was aborted or never existed.
            tracing::debug!(peer = %self.peer, itt, "discarding Data-Out for an unknown task");
            return Ok(true);
        };
        let end = offset.checked_add(len).filter(|e| *e <= w.cmd.edtl);
        let valid = match end {
            None => false,
            Some(end) if ttt == RESERVED_TAG => !w.unsolicited_done && end <= w.unsolicited_end,
            Some(end) => w
                .r2ts
                .iter()
                .any(|r| r.ttt == ttt && offset >= r.offset && end <= r.offset + r.len),
        };
        if !valid {
            tracing::warn!(peer = %self.peer, itt, ttt, offset, len, "rejecting Data-Out outside its burst");
            self.send(reject(RejectReason::InvalidPduField, &p.bhs))
                .await;
            return Ok(true);
        }
        // RFC 7143 §11.7.5: DataSN counts up from 0 within each burst; with
        // DataPDUInOrder=Yes (§13.19) each Data-Out starts where the one
        // before it ended, so no byte of the buffer is left unwritten. A gap
        // is a protocol error that ERL 0 cannot recover inside the session.
        let (expected, at) = if ttt == RESERVED_TAG {
            (&mut w.unsolicited_data_sn, w.unsolicited_next)
        } else {
            let r = w
                .r2ts
                .iter_mut()
                .find(|r| r.ttt == ttt)
                .expect("validated above");
            (&mut r.data_sn, r.offset + r.got)
        };
        if data_sn != *expected || offset != at {
            // The burst can no longer be trusted: reject the PDU and end the
            // command with CHECK CONDITION; the session itself carries on.
            tracing::warn!(peer = %self.peer, itt, data_sn, expected = *expected, offset, expected_offset = at, "Data-Out out of sequence");
            let _ = self
                .out
                .send(Outgoing::Pdu(reject(RejectReason::ProtocolError, &p.bhs)))
                .await;
            let w = self.writes.remove(&itt).expect("present");
            self.buffered -= w.buf.len();
            // ABORTED COMMAND, DATA PHASE ERROR (SPC-4 table 50).
            let sense = scsi::Sense::new(scsi::sense_key::ABORTED_COMMAND, 0x4B, 0x00);
            self.respond_error(w.cmd, sense).await;
            return Ok(true);
        }
        *expected += 1;
        if ttt == RESERVED_TAG {
            w.unsolicited_next += len;
        }
        w.buf[offset as usize..(offset + len) as usize].copy_from_slice(&p.data);
        w.received += len;
        let mut burst_done = false;
        if ttt == RESERVED_TAG {
            if fin {
                w.unsolicited_done = true;
                burst_done = true;
            }
        } else if let Some(i) = w.r2ts.iter().position(|r| r.ttt == ttt) {
            w.r2ts[i].got += len;
            if fin || w.r2ts[i].got >= w.r2ts[i].len {
                w.r2ts.remove(i);
                burst_done = true;
            }
        }
        if w.received >= w.cmd.edtl && w.r2ts.is_empty() {
            let w = self.writes.remove(&itt).expect("present");
            self.buffered -= w.buf.len();
            self.execute(w.cmd, volume::buffer::into_bytes(w.buf)).await;
        } else if burst_done {
            self.solicit(itt).await;
        }
        Ok(true)
    }

    /// Runs a command on its logical unit: right here when it can finish
    /// without waiting (see [`LogicalUnit::execute_now`]), else in a task of
    /// its own, so the session goes on reading commands meanwhile.
    async fn execute(&self, cmd: Command, data_out: Bytes) {
        let mut data_out = data_out;
        let lun0 = scsi::decode_lun(cmd.lun) == 0;
        if lun0 {
            let req = Request {
                cdb: &cmd.cdb,
                data_out,
                expected_len: cmd.edtl,
                initiator: &self.nexus,
            };
            if let Some(resp) = self.target.lun0.execute_now(&req) {
                drop(req);
                self.finish_uncounted(&cmd);
                let _ = self.out.send(Outgoing::Reply(cmd.reply(resp))).await;
                return;
            }
            data_out = req.data_out;
        }
        let lu: Option<Arc<LogicalUnit>> = lun0.then(|| self.target.lun0.clone());
        let tasks = self.tasks.clone();
        let seq = self.seq.clone();
        let out = self.out.clone();
        let nexus = self.nexus.clone();
        let itt = cmd.itt;
        tasks.lock().unwrap().insert(itt, (None, !cmd.immediate));
        let handle = tokio::spawn(async move {
            let req = Request {
                cdb: &cmd.cdb,
                data_out,
                expected_len: cmd.edtl,
                initiator: &nexus,
            };
            let resp = match &lu {
                Some(lu) => lu.execute(req).await,
                None => scsi::respond_no_such_lun(&req, &[0]),
            };
            if tasks.lock().unwrap().remove(&itt).is_none() {
                return; // aborted by task management: no response
            }
            if !cmd.immediate {
                seq.outstanding.fetch_sub(1, Ordering::SeqCst);
            }
            let _ = out.send(Outgoing::Reply(cmd.reply(resp))).await;
        });
        if let Some(slot) = self.tasks.lock().unwrap().get_mut(&itt) {
            slot.0 = Some(handle.abort_handle());
        }
    }

    /// Answers a command that never reached its logical unit with CHECK CONDITION.
    async fn respond_error(&self, cmd: Command, sense: scsi::Sense) {
        self.finish_uncounted(&cmd);
        let resp = Response {
            status: Status::CheckCondition,
            data: Vec::new(),
            sense: Some(sense.encode(false)),
            data_out_wanted: None,
        };
        let _ = self.out.send(Outgoing::Reply(cmd.reply(resp))).await;
    }

    /// Releases the window slot of a command answered without a task of its
    /// own: refused, or finished on the spot.
    fn finish_uncounted(&self, cmd: &Command) {
        if !cmd.immediate {
            self.seq.outstanding.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Aborts one task; returns whether it existed.
    fn abort_task(&mut self, itt: u32) -> bool {
        if let Some(w) = self.writes.remove(&itt) {
            self.buffered -= w.buf.len();
            self.finish_uncounted(&w.cmd);
            return true;
        }
        let entry = self.tasks.lock().unwrap().remove(&itt);
        match entry {
            Some((handle, holds_slot)) => {
                if let Some(h) = handle {
                    h.abort();
                }
                // Whoever removes the entry frees the slot: the task itself
                // will find it gone and send nothing.
                if holds_slot {
                    self.seq.outstanding.fetch_sub(1, Ordering::SeqCst);
                }
                true
            }
            None => false,
        }
    }

    /// Aborts every task of the session.
    fn abort_all(&mut self) {
        let itts: Vec<u32> = self.writes.keys().copied().collect();
        for itt in itts {
            self.abort_task(itt);
        }
        let running: Vec<u32> = self.tasks.lock().unwrap().keys().copied().collect();
        for itt in running {
            self.abort_task(itt);
        }
    }

    /// Waits until running commands finish (bounded).
    async fn drain(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.tasks.lock().unwrap().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Task management functions (RFC 7143 §11.5).
    async fn task_management(&mut self, p: Pdu) -> Result<bool, String> {
        let req = TaskMgmtRequest::view(&p);
        let cmd_sn = req.cmd_sn();
        if !req.immediate() && !self.accept_cmd_sn(cmd_sn) {
            return Ok(true);
        }
        let ref_itt = req.referenced_task_tag();
        let ref_cmd_sn = req.ref_cmd_sn();
        let lun_ok = scsi::decode_lun(req.lun()) == 0;
        let mut close = false;
        let response = match req.function() {
            Some(TaskFunction::AbortTask) => {
                // RFC 7143 §11.5.1: a task not found counts as aborted only
                // when its command was never received (RefCmdSN still inside
                // the window, before this request); one that already completed
                // and answered "does not exist".
                let exp = self.seq.exp_cmd_sn.load(Ordering::SeqCst);
                let never_received = !serial::lt(ref_cmd_sn, exp) && serial::lt(ref_cmd_sn, cmd_sn);
                if self.abort_task(ref_itt) || never_received {
                    TaskResponse::Complete
                } else {
                    TaskResponse::TaskDoesNotExist
                }
            }
            Some(TaskFunction::AbortTaskSet | TaskFunction::ClearTaskSet) => {
                self.abort_all();
                if lun_ok {
                    TaskResponse::Complete
                } else {
                    TaskResponse::LunDoesNotExist
                }
            }
            Some(TaskFunction::LogicalUnitReset) => {
                if lun_ok {
                    self.abort_all();
                    self.target.lun0.reset().await;
                    TaskResponse::Complete
                } else {
                    TaskResponse::LunDoesNotExist
                }
            }
            Some(f @ (TaskFunction::TargetWarmReset | TaskFunction::TargetColdReset)) => {
                self.abort_all();
                self.target.lun0.reset().await;
                close = f == TaskFunction::TargetColdReset;
                TaskResponse::Complete
            }
            // TASK REASSIGN needs ErrorRecoveryLevel 2.
            Some(TaskFunction::TaskReassign) => TaskResponse::ReassignmentNotSupported,
            Some(TaskFunction::ClearAca) | None => TaskResponse::NotSupported,
        };
        let mut r = TaskMgmtResponse::new();
        r.set_task_response(response);
        r.set_itt(req.itt());
        self.send(r.into()).await;
        Ok(!close)
    }
}
