//! Reading PDUs off a socket (in a task of its own, so waiting is cancel-safe)
//! and writing them with sequence numbers stamped in order.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use iscsi::{Digests, Opcode, Pdu, PduError, BHS_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

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

/// Reads one PDU.
pub(crate) async fn read_pdu<R: AsyncRead + Unpin>(
    r: &mut R,
    digests: Digests,
    max_data: usize,
) -> Result<Result<Pdu, [u8; BHS_LEN]>, String> {
    let mut bhs = [0u8; BHS_LEN];
    r.read_exact(&mut bhs).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => "connection closed by the initiator".to_string(),
        _ => format!("read failed: {e}"),
    })?;
    let body_len = Pdu::body_len(&bhs, digests, max_data).map_err(|e| e.to_string())?;
    // The body goes straight into the buffer the data segment will live in:
    // no zeroing, no second copy.
    let mut body = BytesMut::with_capacity(body_len);
    while body.len() < body_len {
        let mut limited = (&mut *r).take((body_len - body.len()) as u64);
        match limited.read_buf(&mut body).await {
            Ok(0) => return Err("connection lost inside a PDU".to_string()),
            Ok(_) => {}
            Err(e) => return Err(format!("connection lost inside a PDU: {e}")),
        }
    }
    match Pdu::from_body(bhs, body.freeze(), digests) {
        Ok(p) => Ok(Ok(p)),
        Err(PduError::DataDigest) => Ok(Err(bhs)),
        Err(e) => Err(e.to_string()),
    }
}

/// Runs the reader until the connection fails or the receiver goes away.
pub(crate) async fn reader_task(
    r: OwnedReadHalf,
    digests: Digests,
    max_data: usize,
    tx: mpsc::Sender<Incoming>,
) {
    // Buffered: with many commands in flight, one read brings in many PDUs.
    let mut r = BufReader::with_capacity(256 * 1024, r);
    loop {
        let item = match read_pdu(&mut r, digests, max_data).await {
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
        Some(Opcode::DataIn) => p.flags() & 0x01 != 0,
        Some(Opcode::NopIn) => p.itt() != 0xFFFF_FFFF,
        _ => false,
    }
}

/// Runs the writer: stamps sequence numbers in send order and batches
/// writes, flushing when nothing more is queued.
pub(crate) async fn writer_task(
    w: OwnedWriteHalf,
    digests: Digests,
    seq: Arc<SeqState>,
    mut stat_sn: u32,
    mut rx: mpsc::Receiver<Outgoing>,
) -> u32 {
    let mut w = BufWriter::with_capacity(256 * 1024, w);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Outgoing::Pdu(mut p) => {
                    // Every target PDU carries ExpCmdSN/MaxCmdSN at 28/32; StatSN at 24
                    // except Data-In without status, where the field is reserved.
                    if p.opcode() != Some(Opcode::DataIn) || p.flags() & 0x01 != 0 {
                        p.set_u32(24, stat_sn);
                    }
                    p.set_u32(28, seq.exp_cmd_sn.load(Ordering::SeqCst));
                    p.set_u32(32, seq.max_cmd_sn());
                    if advances_stat_sn(&p) {
                        stat_sn = stat_sn.wrapping_add(1);
                    }
                    let (head, tail) = p.encode_parts(digests);
                    let ok = w.write_all(&head).await.is_ok()
                        && w.write_all(&p.data).await.is_ok()
                        && w.write_all(&tail).await.is_ok();
                    if !ok {
                        return stat_sn;
                    }
                }
                Outgoing::Flush(done) => {
                    let _ = w.flush().await;
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
        if w.flush().await.is_err() {
            return stat_sn;
        }
    }
    let _ = w.flush().await;
    stat_sn
}
