//! Reading PDUs off a socket (in a task of its own, so waiting is cancel-safe)
//! and writing them with sequence numbers stamped in order.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use iscsi::{DataIn, Digests, NopIn, Opcode, Pdu, PduError, Trailer, BHS_LEN, RESERVED_TAG};
use tokio::io::{AsyncRead, AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

use crate::reply::Reply;

/// What the reader task delivers.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A whole, digest-checked PDU.
    Pdu(Pdu),
    /// A PDU whose data digest failed; its header is intact.
    BadData([u8; BHS_LEN]),
    /// The connection is unusable (closed, header digest error, oversized PDU).
    Closed(String),
}

/// How much the reader takes from the socket at once. PDUs are cut out of
/// this buffer without a copy, so their data segments share it; a new one
/// is allocated only when it is full and a PDU cut from it (a write still
/// running) is alive. Small, so few running writes can keep little memory
/// alive: at most the CmdSN window times this.
const RX_CHUNK: usize = 64 * 1024;

/// The buffer a connection receives into, from login to logout.
pub(crate) fn receive_buffer() -> BytesMut {
    BytesMut::with_capacity(RX_CHUNK)
}

/// Runs the reader until the connection fails or the receiver goes away;
/// `rx` holds whatever was received past the login.
pub(crate) async fn reader_task(
    mut r: OwnedReadHalf,
    mut rx: BytesMut,
    digests: Digests,
    max_data: usize,
    tx: mpsc::Sender<Incoming>,
) {
    loop {
        let item = match next_pdu(&mut r, &mut rx, digests, max_data).await {
            Ok(Ok(p)) => Incoming::Pdu(p),
            Ok(Err(bhs)) => Incoming::BadData(bhs),
            Err(why) => {
                let _ = tx.send(Incoming::Closed(why)).await;
                return;
            }
        };
        if tx.send(item).await.is_err() {
            return;
        }
    }
}

/// Cuts the next PDU out of `rx`, reading from `r` until it is whole. With
/// many commands in flight, one read brings in many PDUs. `Ok(Err(bhs))` is
/// a PDU whose data digest failed.
pub(crate) async fn next_pdu<R: AsyncRead + Unpin>(
    r: &mut R,
    rx: &mut BytesMut,
    digests: Digests,
    max_data: usize,
) -> Result<Result<Pdu, [u8; BHS_LEN]>, String> {
    fill(r, rx, BHS_LEN).await?;
    let bhs: [u8; BHS_LEN] = rx[..BHS_LEN].try_into().expect("48 bytes");
    let body_len = Pdu::body_len(&bhs, digests, max_data).map_err(|e| e.to_string())?;
    fill(r, rx, BHS_LEN + body_len).await?;
    let mut body = rx.split_to(BHS_LEN + body_len);
    body.advance(BHS_LEN);
    match Pdu::from_body(bhs, body.freeze(), digests) {
        Ok(p) => Ok(Ok(p)),
        Err(PduError::DataDigest) => Ok(Err(bhs)),
        Err(e) => Err(e.to_string()),
    }
}

/// Reads until `rx` holds at least `need` bytes (see [`volume::buffer::fill`]).
async fn fill<R: AsyncRead + Unpin>(
    r: &mut R,
    rx: &mut BytesMut,
    need: usize,
) -> Result<(), String> {
    volume::buffer::fill(r, rx, need, RX_CHUNK)
        .await
        .map_err(|short| match short {
            volume::buffer::Short {
                inside: true,
                error: None,
            } => "connection lost inside a PDU".to_string(),
            volume::buffer::Short {
                inside: false,
                error: None,
            } => "connection closed by the initiator".to_string(),
            volume::buffer::Short {
                inside: true,
                error: Some(e),
            } => format!("connection lost inside a PDU: {e}"),
            volume::buffer::Short {
                inside: false,
                error: Some(e),
            } => format!("read failed: {e}"),
        })
}

/// Sequence numbers of a session, shared by its reader and writer.
pub(crate) struct SeqState {
    /// Next expected CmdSN.
    pub exp_cmd_sn: AtomicU32,
    /// Non-immediate commands received and not yet answered.
    pub outstanding: AtomicU32,
    /// CmdSN window size.
    pub queue_depth: u32,
}

impl SeqState {
    /// MaxCmdSN: the window shrinks by every outstanding command, so it never moves back.
    pub fn max_cmd_sn(&self) -> u32 {
        let exp = self.exp_cmd_sn.load(Ordering::SeqCst);
        let out = self
            .outstanding
            .load(Ordering::SeqCst)
            .min(self.queue_depth);
        exp.wrapping_add(self.queue_depth - out).wrapping_sub(1)
    }
}

/// What the writer task sends.
pub(crate) enum Outgoing {
    /// A PDU; StatSN/ExpCmdSN/MaxCmdSN are filled in by the writer.
    Pdu(Pdu),
    /// A finished command: its Data-In and status PDUs.
    Reply(Reply),
    /// Flush everything queued, then report back.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Whether a target PDU carries a StatSN that advances (RFC 7143 §4.2.2.2).
fn advances_stat_sn(p: &Pdu) -> bool {
    match p.opcode() {
        Some(Opcode::ScsiResponse)
        | Some(Opcode::TaskMgmtResponse)
        | Some(Opcode::LogoutResponse)
        | Some(Opcode::TextResponse)
        | Some(Opcode::LoginResponse) => true,
        Some(Opcode::DataIn) => DataIn::view(p).status_present(),
        Some(Opcode::NopIn) => NopIn::view(p).itt() != RESERVED_TAG,
        _ => false,
    }
}

/// Runs the writer: stamps sequence numbers in send order and batches
/// writes, flushing when nothing more is queued. `mrdsl` is the initiator's
/// MaxRecvDataSegmentLength, which cuts replies into Data-In PDUs.
pub(crate) async fn writer_task(
    w: OwnedWriteHalf,
    digests: Digests,
    seq: Arc<SeqState>,
    stat_sn: u32,
    mrdsl: u32,
    mut rx: mpsc::Receiver<Outgoing>,
) -> u32 {
    let mut out = Out {
        w: BufWriter::with_capacity(256 * 1024, w),
        head: Vec::with_capacity(BHS_LEN + 8),
        digests,
        seq,
        stat_sn,
    };
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Outgoing::Pdu(p) => {
                    if !out.put(p, None).await {
                        return out.stat_sn;
                    }
                }
                Outgoing::Reply(r) => {
                    for (p, range) in r.frames(mrdsl) {
                        if !out.put(p, range.map(|range| r.data(range))).await {
                            return out.stat_sn;
                        }
                    }
                    // The data is on its way (buffered or sent): its buffer
                    // serves the next read.
                    volume::buffer::give(r.resp.data);
                }
                Outgoing::Flush(done) => {
                    let _ = out.w.flush().await;
                    let _ = done.send(());
                }
            }
            next = rx.try_recv().ok();
            if next.is_none() {
                // Commands completing right now on other tasks get one chance
                // to join this batch: fewer, fuller segments for the initiator
                // to wake up for.
                tokio::task::yield_now().await;
                next = rx.try_recv().ok();
            }
        }
        if out.w.flush().await.is_err() {
            return out.stat_sn;
        }
    }
    let _ = out.w.flush().await;
    out.stat_sn
}

/// The sending end of a connection, with the StatSN it stamps next.
struct Out {
    w: BufWriter<OwnedWriteHalf>,
    /// Header scratch space, reused for every PDU.
    head: Vec<u8>,
    digests: Digests,
    seq: Arc<SeqState>,
    stat_sn: u32,
}

impl Out {
    /// Stamps and writes one PDU; its data segment is `data`, or the PDU's
    /// own data when `None`. `false` once the connection is gone.
    async fn put(&mut self, mut p: Pdu, data: Option<&[u8]>) -> bool {
        // Every target PDU carries StatSN, ExpCmdSN and MaxCmdSN, StatSN
        // except a Data-In without status, where the field is reserved.
        if p.opcode() != Some(Opcode::DataIn) || DataIn::view(&p).status_present() {
            p.set_stat_sn(self.stat_sn);
        }
        p.set_exp_cmd_sn(self.seq.exp_cmd_sn.load(Ordering::SeqCst));
        p.set_max_cmd_sn(self.seq.max_cmd_sn());
        if advances_stat_sn(&p) {
            self.stat_sn = self.stat_sn.wrapping_add(1);
        }
        let len = data.map_or(p.data.len(), <[u8]>::len);
        self.head.clear();
        p.head_into(len, self.digests, &mut self.head);
        let body = data.unwrap_or(&p.data);
        let tail = Trailer::of(body, self.digests);
        self.w.write_all(&self.head).await.is_ok()
            && self.w.write_all(body).await.is_ok()
            && self.w.write_all(tail.as_ref()).await.is_ok()
    }
}
