//! The replication wire protocol: length-prefixed frames over TCP.
//!
//! After the mutual authentication of [`crate::auth`], the connecting node
//! sends one [`Hello`] and reads one [`Welcome`] (or a [`Refused`], which
//! says why as a [`Refusal`]); then it sends [`Request`]s
//! and the serving node answers each with a [`Response`] carrying the same
//! id, in any order. Every frame is `u32 length (big endian) | body`. Numbers
//! are big endian. This module is pure (bytes in, bytes out) so it can be
//! fuzzed and unit-tested.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;
use volume::{Unavailable, VolumeError};

/// Largest frame body accepted: the largest transfer plus headers.
pub const MAX_FRAME: usize = volume::MAX_IO_BYTES + 4096;

/// Protocol version in every hello; a mismatch is refused.
///
/// Version 2 carries a typed [`Refusal`] in the answer to a hello; version
/// 4 forwards whole SCSI commands ([`Op::Command`]), replicates the
/// persistent reservations ([`Op::Reservations`]) and sends replicas a
/// COMPARE AND WRITE whole, with its initiator. Nodes of different
/// versions refuse each other's connections.
pub const VERSION: u16 = 4;

/// A frame that does not follow the protocol.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    /// The frame ended before a field it announces.
    #[error("frame truncated")]
    Truncated,
    /// The frame names a message or field value this version does not know.
    #[error("unknown {what} {value}")]
    Unknown { what: &'static str, value: u64 },
    /// A length exceeds what the protocol allows.
    #[error("frame of {0} bytes is larger than allowed")]
    TooLarge(usize),
    /// A text field is not UTF-8.
    #[error("text field is not UTF-8")]
    BadText,
}

/// What a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The volume's primary mirrors writes to this node's copy.
    Replicate = 1,
    /// A node without the primary role forwards its initiators' I/O to the primary.
    Forward = 2,
}

/// First message of the connecting node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// What the connection is for.
    pub mode: Mode,
    /// Node id of the sender.
    pub node: u64,
    /// Epoch of the sender's view of the volume (primary's epoch for `Replicate`).
    pub epoch: u64,
    /// Identity of the sender's own copy of the volume (zeros if it has none).
    pub copy_id: [u8; 16],
    /// Volume name.
    pub volume: String,
}

/// The serving node's answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// Identity of the serving node's copy of the volume: a new id means a new,
    /// empty copy that needs a full sync.
    pub copy_id: [u8; 16],
    /// Highest epoch the serving node has accepted for the volume.
    pub epoch: u64,
    /// Logical block size of the copy.
    pub block_size: u32,
    /// Size of the copy in blocks.
    pub num_blocks: u64,
    /// Byte ranges the serving node wrote as a primary and may not have
    /// mirrored (its activity log): the new primary must resync them.
    pub suspect: Vec<(u64, u64)>,
}

/// Why a serving node refused a hello. The connecting node acts on this, never
/// on the text that goes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The serving node holds no copy of the volume.
    NoCopy,
    /// The hello's epoch is older than the one the copy follows: its sender
    /// is no longer the volume's primary.
    StaleEpoch { current: u64 },
    /// A forwarding connection reached a node that is not the volume's primary.
    NotPrimary,
    /// The serving node could not admit the connection (its copy could not
    /// record the new epoch); the message says why.
    Failed,
}

/// The answer to a hello that is not a [`Welcome`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Why, for the connecting node to act on.
    pub refusal: Refusal,
    /// The same for a person reading the log, naming the volume.
    pub message: String,
}

/// A volume operation sent to a replica or forwarded to the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Reads `blocks` blocks at `lba` (forwarding only).
    Read { lba: u64, blocks: u32 },
    /// Writes whole blocks at `lba`.
    Write { lba: u64, fua: bool, data: Bytes },
    /// Deallocates a block range.
    Unmap { lba: u64, blocks: u64 },
    /// Writes `pattern` (one block) over a range, or deallocates it when
    /// `unmap` is set and the pattern is zeros.
    WriteSame {
        lba: u64,
        blocks: u64,
        unmap: bool,
        fua: bool,
        pattern: Bytes,
    },
    /// COMPARE AND WRITE of `data` = compare half then write half, sent by
    /// `initiator` (empty when not known). From the primary, the compare
    /// has been made: the replica writes the write half and remembers the
    /// command (see [`crate::LocalCopy::applied_compare_and_write`]).
    CompareAndWrite {
        lba: u64,
        fua: bool,
        initiator: String,
        data: Bytes,
    },
    /// Makes every completed write durable.
    Flush,
    /// Grows the volume to `blocks` blocks.
    Resize { blocks: u64 },
    /// No operation: proves the link is alive.
    Ping,
    /// From the primary: every write it sent before is on every in-sync copy,
    /// so the replica may flush and clear quiet regions of its activity log.
    Settle,
    /// A SCSI command an initiator sent through another node, for the
    /// primary's logical unit to run (forwarding only); answered with an
    /// encoded [`Answer`].
    Command(Command),
    /// An initiator's nexus ended on the forwarding node (`Some`), or the
    /// logical unit was reset through it (`None`) (forwarding only).
    NexusEnded { nexus: Option<String> },
    /// From the primary: the volume's persistent reservations as they are
    /// now, for the replica to keep durably beside its copy.
    Reservations { state: Bytes },
    /// From the primary: a change to (or a look at) the copy's snapshots.
    /// Sent only once every member reads it (the control plane's log
    /// version 3 gates the snapshots of cluster volumes); an older replica
    /// answers it as a frame it does not know.
    Snapshots(SnapshotOp),
}

/// A snapshot of a cluster volume as every copy takes it: the primary
/// chooses its identity, and each copy keeps it under that identity.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotMark {
    /// Stable id, the same on every copy.
    pub id: uuid::Uuid,
    /// Its name, unique on the volume.
    pub name: String,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// The consistency group it was taken in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The volume's size when it was taken, as the copy that lists it
    /// has it (0 in a request to take one: the copy's size then).
    #[serde(default)]
    pub size_bytes: u64,
}

/// What [`Op::Snapshots`] asks of a replica.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotOp {
    /// The copy's snapshots, oldest first, answered as a JSON list of
    /// [`SnapshotMark`].
    List,
    /// Take this snapshot now: every write the primary sent before it is
    /// in it, none sent after. Taking one the copy holds already is done.
    Take(SnapshotMark),
    /// Delete the snapshot with this id (done when there is none).
    Delete { id: uuid::Uuid },
    /// Make the copy's content the snapshot's again (no write in flight:
    /// the primary holds them back).
    Rollback { id: uuid::Uuid },
}

/// A SCSI command passed on to the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The initiator port that sent it ("iqn...,i,0x<ISID>").
    pub nexus: String,
    /// The command descriptor block.
    pub cdb: Bytes,
    /// The expected data transfer length the initiator announced.
    pub expected_len: u32,
    /// Every data-out byte of the command.
    pub data: Bytes,
}

/// The outcome of a [`Command`]: what the initiator is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// SCSI status.
    pub status: u8,
    /// Encoded sense data (empty without).
    pub sense: Bytes,
    /// Data-in, already cut to the allocation length.
    pub data: Bytes,
    /// Data-out bytes the CDB asked for, for the residual.
    pub data_out_wanted: Option<u32>,
}

impl Answer {
    /// The answer as the payload of a response.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(16 + self.sense.len() + self.data.len());
        b.put_u8(self.status);
        match self.data_out_wanted {
            Some(n) => {
                b.put_u8(1);
                b.put_u32(n);
            }
            None => b.put_u8(0),
        }
        b.put_u32(self.sense.len() as u32);
        b.put_slice(&self.sense);
        b.put_u32(self.data.len() as u32);
        b.put_slice(&self.data);
        b.freeze()
    }

    /// Decodes what [`Answer::encode`] produced.
    pub fn decode(mut b: Bytes) -> Result<Answer, WireError> {
        let status = get_u8(&mut b)?;
        let data_out_wanted = match get_u8(&mut b)? {
            0 => None,
            _ => Some(get_u32(&mut b)?),
        };
        let sense = get_blob(&mut b)?;
        let data = get_blob(&mut b)?;
        Ok(Answer {
            status,
            sense,
            data,
            data_out_wanted,
        })
    }
}

/// One numbered operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Chosen by the sender; echoed in the response.
    pub id: u64,
    /// Epoch of the primary that sent it (checked in `Replicate` mode).
    pub epoch: u64,
    /// The operation.
    pub op: Op,
}

/// Why a remote operation failed, as the serving node saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The request's epoch is older than one the node accepted: its sender is
    /// no longer the primary.
    StaleEpoch { current: u64 },
    /// A forwarded request reached a node that is not the volume's primary.
    NotPrimary,
    /// The volume operation itself failed.
    Volume { code: u8, arg: u64, message: String },
}

impl Failure {
    /// What the serving node's storage said, where the failure is its disk
    /// failing (EIO, a read-only or a full filesystem) rather than the
    /// request or the node's role: the copy cannot take writes until its
    /// disk works again.
    pub fn disk_failure(&self) -> Option<&str> {
        match self {
            Failure::Volume { code, message, .. } if matches!(*code, E_IO | E_NO_SPACE) => {
                Some(message)
            }
            _ => None,
        }
    }
}

/// Answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Id of the request.
    pub id: u64,
    /// Data read (empty for other operations), or the failure.
    pub result: Result<Bytes, Failure>,
}

const OP_READ: u8 = 1;
const OP_WRITE: u8 = 2;
const OP_UNMAP: u8 = 3;
const OP_WRITE_SAME: u8 = 4;
const OP_CAW: u8 = 5;
const OP_FLUSH: u8 = 6;
const OP_RESIZE: u8 = 7;
const OP_PING: u8 = 8;
const OP_SETTLE: u8 = 9;
const OP_COMMAND: u8 = 10;
const OP_NEXUS_ENDED: u8 = 11;
const OP_RESERVATIONS: u8 = 12;
const OP_SNAPSHOTS: u8 = 13;

const REFUSED_NO_COPY: u8 = 1;
const REFUSED_STALE_EPOCH: u8 = 2;
const REFUSED_NOT_PRIMARY: u8 = 3;
const REFUSED_FAILED: u8 = 4;

const E_OUT_OF_RANGE: u8 = 1;
const E_BAD_LENGTH: u8 = 2;
const E_MISCOMPARE: u8 = 3;
const E_NO_SPACE: u8 = 4;
const E_MEDIUM: u8 = 5;
const E_SHRINK: u8 = 6;
const E_CLOSED: u8 = 7;
const E_IO: u8 = 8;
const E_UNAVAILABLE: u8 = 9;

/// Encodes a volume failure for the wire.
pub fn failure_of(e: &VolumeError) -> Failure {
    let (code, arg) = match e {
        VolumeError::OutOfRange { lba, .. } => (E_OUT_OF_RANGE, *lba),
        VolumeError::BadLength { len, .. } => (E_BAD_LENGTH, *len as u64),
        VolumeError::Miscompare { offset } => (E_MISCOMPARE, *offset as u64),
        VolumeError::NoSpace => (E_NO_SPACE, 0),
        VolumeError::Medium { lba, .. } => (E_MEDIUM, *lba),
        VolumeError::Shrink { requested, .. } => (E_SHRINK, *requested),
        VolumeError::Closed => (E_CLOSED, 0),
        VolumeError::Io(io) => {
            // What the operating system said ("Read-only file system"), for
            // the primary to report why the copy failed.
            return Failure::Volume {
                code: E_IO,
                arg: 0,
                message: format!("I/O error: {io}"),
            };
        }
        VolumeError::Unavailable(why) => {
            // The reason alone: the receiving side says "unavailable" itself.
            return Failure::Volume {
                code: E_UNAVAILABLE,
                arg: unavailable_code(why),
                message: why.to_string(),
            };
        }
    };
    Failure::Volume {
        code,
        arg,
        message: e.to_string(),
    }
}

/// Which [`Unavailable`] case a failure carries (in its argument); the cases
/// with details of their own travel as their text.
fn unavailable_code(why: &Unavailable) -> u64 {
    match why {
        Unavailable::NoPrimary => 1,
        Unavailable::RoleEnded => 2,
        Unavailable::Deposed { .. } => 3,
        Unavailable::LeaseLost => 4,
        Unavailable::PrimaryChanged => 5,
        Unavailable::NotPrimary => 6,
        Unavailable::Superseded => 7,
        Unavailable::PrimaryUnreachable(_)
        | Unavailable::NotRecorded { .. }
        | Unavailable::Remote(_) => 0,
    }
}

fn unavailable_of(code: u64, message: &str) -> Unavailable {
    match code {
        1 => Unavailable::NoPrimary,
        2 => Unavailable::RoleEnded,
        3 => Unavailable::Deposed { epoch: None },
        4 => Unavailable::LeaseLost,
        5 => Unavailable::PrimaryChanged,
        6 => Unavailable::NotPrimary,
        7 => Unavailable::Superseded,
        _ => Unavailable::Remote(message.to_string()),
    }
}

/// Turns a remote failure back into the volume error the caller reports.
/// `num_blocks` and `block_size` fill fields the wire does not carry.
pub fn volume_error_of(f: &Failure, num_blocks: u64, block_size: u32) -> VolumeError {
    match f {
        Failure::StaleEpoch { current } => VolumeError::Unavailable(Unavailable::Deposed {
            epoch: Some(*current),
        }),
        Failure::NotPrimary => VolumeError::Unavailable(Unavailable::NotPrimary),
        Failure::Volume { code, arg, message } => match *code {
            E_OUT_OF_RANGE => VolumeError::OutOfRange {
                lba: *arg,
                blocks: 0,
                num_blocks,
            },
            E_BAD_LENGTH => VolumeError::BadLength {
                len: *arg as usize,
                block_size,
            },
            E_MISCOMPARE => VolumeError::Miscompare {
                offset: *arg as usize,
            },
            E_NO_SPACE => VolumeError::NoSpace,
            E_MEDIUM => VolumeError::Medium {
                lba: *arg,
                reason: message.clone(),
            },
            E_SHRINK => VolumeError::Shrink {
                current: num_blocks,
                requested: *arg,
            },
            E_CLOSED => VolumeError::Closed,
            E_UNAVAILABLE => VolumeError::Unavailable(unavailable_of(*arg, message)),
            _ => VolumeError::Io(std::io::Error::other(message.clone())),
        },
    }
}

fn put_str(b: &mut BytesMut, s: &str) {
    let s = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    b.put_u16(s.len() as u16);
    b.put_slice(s);
}

fn need(b: &Bytes, n: usize) -> Result<(), WireError> {
    if b.remaining() < n {
        Err(WireError::Truncated)
    } else {
        Ok(())
    }
}

fn get_u8(b: &mut Bytes) -> Result<u8, WireError> {
    need(b, 1)?;
    Ok(b.get_u8())
}

fn get_u16(b: &mut Bytes) -> Result<u16, WireError> {
    need(b, 2)?;
    Ok(b.get_u16())
}

fn get_u32(b: &mut Bytes) -> Result<u32, WireError> {
    need(b, 4)?;
    Ok(b.get_u32())
}

fn get_u64(b: &mut Bytes) -> Result<u64, WireError> {
    need(b, 8)?;
    Ok(b.get_u64())
}

fn get_str(b: &mut Bytes) -> Result<String, WireError> {
    let n = get_u16(b)? as usize;
    need(b, n)?;
    let s = b.split_to(n);
    String::from_utf8(s.to_vec()).map_err(|_| WireError::BadText)
}

fn get_blob(b: &mut Bytes) -> Result<Bytes, WireError> {
    let n = get_u32(b)? as usize;
    if n > MAX_FRAME {
        return Err(WireError::TooLarge(n));
    }
    need(b, n)?;
    Ok(b.split_to(n))
}

/// Reads the length prefix of a frame; refuses bodies larger than [`MAX_FRAME`].
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, WireError> {
    let n = u32::from_be_bytes(prefix) as usize;
    if n > MAX_FRAME {
        return Err(WireError::TooLarge(n));
    }
    Ok(n)
}

/// Wraps a body into a frame.
fn framed(body: BytesMut) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + body.len());
    out.put_u32(body.len() as u32);
    out.extend_from_slice(&body);
    out.freeze()
}

impl Hello {
    /// Encodes the hello as a whole frame.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u16(VERSION);
        b.put_u8(self.mode as u8);
        b.put_u64(self.node);
        b.put_u64(self.epoch);
        b.put_slice(&self.copy_id);
        put_str(&mut b, &self.volume);
        framed(b)
    }

    /// Decodes a hello body.
    pub fn decode(mut b: Bytes) -> Result<Hello, WireError> {
        let version = get_u16(&mut b)?;
        if version != VERSION {
            return Err(WireError::Unknown {
                what: "protocol version",
                value: version as u64,
            });
        }
        let mode = match get_u8(&mut b)? {
            1 => Mode::Replicate,
            2 => Mode::Forward,
            m => {
                return Err(WireError::Unknown {
                    what: "mode",
                    value: m as u64,
                })
            }
        };
        let node = get_u64(&mut b)?;
        let epoch = get_u64(&mut b)?;
        need(&b, 16)?;
        let mut copy_id = [0u8; 16];
        b.copy_to_slice(&mut copy_id);
        Ok(Hello {
            mode,
            node,
            epoch,
            copy_id,
            volume: get_str(&mut b)?,
        })
    }
}

/// Most suspect ranges a welcome carries; more are merged into one range.
const MAX_SUSPECT: usize = 65536;

impl Welcome {
    /// Encodes the answer as a whole frame: `Ok` with the welcome, or the refusal.
    pub fn encode(answer: &Result<Welcome, Refused>) -> Bytes {
        let mut b = BytesMut::new();
        match answer {
            Ok(w) => {
                b.put_u8(0);
                b.put_slice(&w.copy_id);
                b.put_u64(w.epoch);
                b.put_u32(w.block_size);
                b.put_u64(w.num_blocks);
                let n = w.suspect.len().min(MAX_SUSPECT);
                b.put_u32(n as u32);
                for (i, &(off, len)) in w.suspect.iter().take(n).enumerate() {
                    if i + 1 == n && w.suspect.len() > n {
                        // Too many ranges: the last one spans all the rest.
                        b.put_u64(off);
                        b.put_u64(u64::MAX - off);
                    } else {
                        b.put_u64(off);
                        b.put_u64(len);
                    }
                }
            }
            Err(Refused { refusal, message }) => {
                b.put_u8(1);
                let (code, arg) = match refusal {
                    Refusal::NoCopy => (REFUSED_NO_COPY, 0),
                    Refusal::StaleEpoch { current } => (REFUSED_STALE_EPOCH, *current),
                    Refusal::NotPrimary => (REFUSED_NOT_PRIMARY, 0),
                    Refusal::Failed => (REFUSED_FAILED, 0),
                };
                b.put_u8(code);
                b.put_u64(arg);
                put_str(&mut b, message);
            }
        }
        framed(b)
    }

    /// Decodes the answer to a hello.
    pub fn decode(mut b: Bytes) -> Result<Result<Welcome, Refused>, WireError> {
        match get_u8(&mut b)? {
            0 => {
                need(&b, 16)?;
                let mut copy_id = [0u8; 16];
                b.copy_to_slice(&mut copy_id);
                let epoch = get_u64(&mut b)?;
                let block_size = get_u32(&mut b)?;
                let num_blocks = get_u64(&mut b)?;
                let n = get_u32(&mut b)? as usize;
                if n > MAX_SUSPECT {
                    return Err(WireError::TooLarge(n));
                }
                let mut suspect = Vec::with_capacity(n);
                for _ in 0..n {
                    suspect.push((get_u64(&mut b)?, get_u64(&mut b)?));
                }
                Ok(Ok(Welcome {
                    copy_id,
                    epoch,
                    block_size,
                    num_blocks,
                    suspect,
                }))
            }
            1 => {
                let code = get_u8(&mut b)?;
                let arg = get_u64(&mut b)?;
                let refusal = match code {
                    REFUSED_NO_COPY => Refusal::NoCopy,
                    REFUSED_STALE_EPOCH => Refusal::StaleEpoch { current: arg },
                    REFUSED_NOT_PRIMARY => Refusal::NotPrimary,
                    REFUSED_FAILED => Refusal::Failed,
                    c => {
                        return Err(WireError::Unknown {
                            what: "refusal",
                            value: c as u64,
                        })
                    }
                };
                Ok(Err(Refused {
                    refusal,
                    message: get_str(&mut b)?,
                }))
            }
            v => Err(WireError::Unknown {
                what: "welcome status",
                value: v as u64,
            }),
        }
    }
}

/// Room for the header of a request's frame: its exact length for the
/// I/O path's operations, enough for most others.
fn head_capacity(op: &Op) -> usize {
    const FIXED: usize = 4 + 8 + 8 + 1;
    match op {
        Op::Write { .. } => FIXED + 9 + 4,
        Op::Unmap { .. } => FIXED + 16,
        Op::Read { .. } => FIXED + 12,
        Op::Flush | Op::Ping | Op::Settle => FIXED,
        _ => 64,
    }
}

/// Room for the header of a response's frame: its exact length for a
/// success.
fn answer_capacity(result: &Result<Bytes, Failure>) -> usize {
    match result {
        Ok(_) => 4 + 8 + 1 + 4,
        Err(_) => 64,
    }
}

impl Request {
    /// Encodes the request as a frame: a header and, for operations that carry
    /// data, the data as a second buffer (sent without copying).
    pub fn encode(&self) -> (Bytes, Option<Bytes>) {
        // The length prefix is filled in once the header is written: one
        // buffer per frame, of the header's exact length for the I/O path's
        // requests (a buffer with room to spare costs a second allocation
        // when frozen).
        let mut b = BytesMut::with_capacity(head_capacity(&self.op));
        b.put_u32(0);
        b.put_u64(self.id);
        b.put_u64(self.epoch);
        let data = match &self.op {
            Op::Read { lba, blocks } => {
                b.put_u8(OP_READ);
                b.put_u64(*lba);
                b.put_u32(*blocks);
                None
            }
            Op::Write { lba, fua, data } => {
                b.put_u8(OP_WRITE);
                b.put_u64(*lba);
                b.put_u8(*fua as u8);
                Some(data.clone())
            }
            Op::Unmap { lba, blocks } => {
                b.put_u8(OP_UNMAP);
                b.put_u64(*lba);
                b.put_u64(*blocks);
                None
            }
            Op::WriteSame {
                lba,
                blocks,
                unmap,
                fua,
                pattern,
            } => {
                b.put_u8(OP_WRITE_SAME);
                b.put_u64(*lba);
                b.put_u64(*blocks);
                b.put_u8(*unmap as u8 | (*fua as u8) << 1);
                Some(pattern.clone())
            }
            Op::CompareAndWrite {
                lba,
                fua,
                initiator,
                data,
            } => {
                b.put_u8(OP_CAW);
                b.put_u64(*lba);
                b.put_u8(*fua as u8);
                put_str(&mut b, initiator);
                Some(data.clone())
            }
            Op::Flush => {
                b.put_u8(OP_FLUSH);
                None
            }
            Op::Resize { blocks } => {
                b.put_u8(OP_RESIZE);
                b.put_u64(*blocks);
                None
            }
            Op::Ping => {
                b.put_u8(OP_PING);
                None
            }
            Op::Settle => {
                b.put_u8(OP_SETTLE);
                None
            }
            Op::Command(c) => {
                b.put_u8(OP_COMMAND);
                put_str(&mut b, &c.nexus);
                b.put_u32(c.expected_len);
                b.put_u8(c.cdb.len().min(u8::MAX as usize) as u8);
                b.put_slice(&c.cdb[..c.cdb.len().min(u8::MAX as usize)]);
                Some(c.data.clone())
            }
            Op::NexusEnded { nexus } => {
                b.put_u8(OP_NEXUS_ENDED);
                match nexus {
                    Some(n) => {
                        b.put_u8(1);
                        put_str(&mut b, n);
                    }
                    None => b.put_u8(0),
                }
                None
            }
            Op::Reservations { state } => {
                b.put_u8(OP_RESERVATIONS);
                Some(state.clone())
            }
            Op::Snapshots(op) => {
                b.put_u8(OP_SNAPSHOTS);
                Some(Bytes::from(
                    serde_json::to_vec(op).expect("a snapshot operation serializes"),
                ))
            }
        };
        if let Some(d) = &data {
            b.put_u32(d.len() as u32);
        }
        let body_len = b.len() - 4 + data.as_ref().map_or(0, |d| d.len());
        b[..4].copy_from_slice(&(body_len as u32).to_be_bytes());
        (b.freeze(), data)
    }

    /// Decodes a request body (the frame without its length prefix).
    pub fn decode(mut b: Bytes) -> Result<Request, WireError> {
        let id = get_u64(&mut b)?;
        let epoch = get_u64(&mut b)?;
        let op = match get_u8(&mut b)? {
            OP_READ => Op::Read {
                lba: get_u64(&mut b)?,
                blocks: get_u32(&mut b)?,
            },
            OP_WRITE => Op::Write {
                lba: get_u64(&mut b)?,
                fua: get_u8(&mut b)? != 0,
                data: get_blob(&mut b)?,
            },
            OP_UNMAP => Op::Unmap {
                lba: get_u64(&mut b)?,
                blocks: get_u64(&mut b)?,
            },
            OP_WRITE_SAME => {
                let lba = get_u64(&mut b)?;
                let blocks = get_u64(&mut b)?;
                let flags = get_u8(&mut b)?;
                Op::WriteSame {
                    lba,
                    blocks,
                    unmap: flags & 1 != 0,
                    fua: flags & 2 != 0,
                    pattern: get_blob(&mut b)?,
                }
            }
            OP_CAW => Op::CompareAndWrite {
                lba: get_u64(&mut b)?,
                fua: get_u8(&mut b)? != 0,
                initiator: get_str(&mut b)?,
                data: get_blob(&mut b)?,
            },
            OP_FLUSH => Op::Flush,
            OP_RESIZE => Op::Resize {
                blocks: get_u64(&mut b)?,
            },
            OP_PING => Op::Ping,
            OP_SETTLE => Op::Settle,
            OP_COMMAND => {
                let nexus = get_str(&mut b)?;
                let expected_len = get_u32(&mut b)?;
                let n = get_u8(&mut b)? as usize;
                need(&b, n)?;
                let cdb = b.split_to(n);
                Op::Command(Command {
                    nexus,
                    cdb,
                    expected_len,
                    data: get_blob(&mut b)?,
                })
            }
            OP_NEXUS_ENDED => Op::NexusEnded {
                nexus: match get_u8(&mut b)? {
                    0 => None,
                    _ => Some(get_str(&mut b)?),
                },
            },
            OP_RESERVATIONS => Op::Reservations {
                state: get_blob(&mut b)?,
            },
            OP_SNAPSHOTS => {
                Op::Snapshots(serde_json::from_slice(&get_blob(&mut b)?).map_err(|_| {
                    WireError::Unknown {
                        what: "snapshot operation",
                        value: 0,
                    }
                })?)
            }
            o => {
                return Err(WireError::Unknown {
                    what: "operation",
                    value: o as u64,
                })
            }
        };
        Ok(Request { id, epoch, op })
    }
}

impl Response {
    /// Encodes the response as a frame header plus the data read, if any.
    pub fn encode(&self) -> (Bytes, Option<Bytes>) {
        // The length prefix is filled in once the header is written, in a
        // buffer of the header's exact length for a success.
        let mut b = BytesMut::with_capacity(answer_capacity(&self.result));
        b.put_u32(0);
        b.put_u64(self.id);
        let data = match &self.result {
            Ok(d) => {
                b.put_u8(0);
                b.put_u32(d.len() as u32);
                (!d.is_empty()).then(|| d.clone())
            }
            Err(Failure::StaleEpoch { current }) => {
                b.put_u8(1);
                b.put_u64(*current);
                None
            }
            Err(Failure::NotPrimary) => {
                b.put_u8(2);
                None
            }
            Err(Failure::Volume { code, arg, message }) => {
                b.put_u8(3);
                b.put_u8(*code);
                b.put_u64(*arg);
                put_str(&mut b, message);
                None
            }
        };
        let body_len = b.len() - 4 + data.as_ref().map_or(0, |d| d.len());
        b[..4].copy_from_slice(&(body_len as u32).to_be_bytes());
        (b.freeze(), data)
    }

    /// Decodes a response body.
    pub fn decode(mut b: Bytes) -> Result<Response, WireError> {
        let id = get_u64(&mut b)?;
        let result = match get_u8(&mut b)? {
            0 => Ok(get_blob(&mut b)?),
            1 => Err(Failure::StaleEpoch {
                current: get_u64(&mut b)?,
            }),
            2 => Err(Failure::NotPrimary),
            3 => Err(Failure::Volume {
                code: get_u8(&mut b)?,
                arg: get_u64(&mut b)?,
                message: get_str(&mut b)?,
            }),
            s => {
                return Err(WireError::Unknown {
                    what: "response status",
                    value: s as u64,
                })
            }
        };
        Ok(Response { id, result })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn body(head: Bytes, data: Option<Bytes>) -> Bytes {
        let mut all = BytesMut::from(&head[..]);
        if let Some(d) = data {
            all.extend_from_slice(&d);
        }
        let n = frame_len(all[..4].try_into().unwrap()).unwrap();
        assert_eq!(n, all.len() - 4, "length prefix matches the body");
        all.freeze().slice(4..)
    }

    #[test]
    fn the_io_paths_headers_fill_their_buffers_exactly() {
        // A header shorter than its buffer costs a second allocation.
        let data = Bytes::from_static(&[7; 4096]);
        for op in [
            Op::Write {
                lba: 9,
                fua: true,
                data: data.clone(),
            },
            Op::Unmap { lba: 1, blocks: 2 },
            Op::Read { lba: 3, blocks: 4 },
            Op::Flush,
            Op::Ping,
            Op::Settle,
        ] {
            let (head, _) = Request {
                id: 1,
                epoch: 2,
                op: op.clone(),
            }
            .encode();
            assert_eq!(head.len(), head_capacity(&op), "{op:?}");
        }
        for result in [Ok(Bytes::new()), Ok(data)] {
            let (head, _) = Response {
                id: 1,
                result: result.clone(),
            }
            .encode();
            assert_eq!(head.len(), answer_capacity(&result));
        }
    }

    fn op() -> impl Strategy<Value = Op> {
        let data = proptest::collection::vec(any::<u8>(), 0..600).prop_map(Bytes::from);
        prop_oneof![
            (any::<u64>(), any::<u32>()).prop_map(|(lba, blocks)| Op::Read { lba, blocks }),
            (any::<u64>(), any::<bool>(), data.clone()).prop_map(|(lba, fua, data)| Op::Write {
                lba,
                fua,
                data
            }),
            (any::<u64>(), any::<u64>()).prop_map(|(lba, blocks)| Op::Unmap { lba, blocks }),
            (
                any::<u64>(),
                any::<u64>(),
                any::<bool>(),
                any::<bool>(),
                data.clone()
            )
                .prop_map(|(lba, blocks, unmap, fua, pattern)| Op::WriteSame {
                    lba,
                    blocks,
                    unmap,
                    fua,
                    pattern
                }),
            (
                any::<u64>(),
                any::<bool>(),
                "[a-z0-9.:,-]{0,40}",
                data.clone()
            )
                .prop_map(|(lba, fua, initiator, data)| Op::CompareAndWrite {
                    lba,
                    fua,
                    initiator,
                    data
                }),
            Just(Op::Flush),
            any::<u64>().prop_map(|blocks| Op::Resize { blocks }),
            Just(Op::Ping),
            Just(Op::Settle),
            (
                "[a-z0-9.:,-]{0,80}",
                proptest::collection::vec(any::<u8>(), 0..17),
                any::<u32>(),
                data.clone()
            )
                .prop_map(|(nexus, cdb, expected_len, data)| Op::Command(Command {
                    nexus,
                    cdb: Bytes::from(cdb),
                    expected_len,
                    data
                })),
            proptest::option::of("[a-z0-9.:,-]{0,80}").prop_map(|nexus| Op::NexusEnded { nexus }),
            data.prop_map(|state| Op::Reservations { state }),
            Just(Op::Snapshots(SnapshotOp::List)),
            (
                any::<u128>(),
                "[a-z0-9-]{0,40}",
                any::<u64>(),
                proptest::option::of("[a-z]{1,8}"),
                any::<u64>()
            )
                .prop_map(|(id, name, created, group, size_bytes)| Op::Snapshots(
                    SnapshotOp::Take(SnapshotMark {
                        id: uuid::Uuid::from_u128(id),
                        name,
                        created,
                        group,
                        size_bytes,
                    })
                )),
            any::<u128>().prop_map(|id| Op::Snapshots(SnapshotOp::Delete {
                id: uuid::Uuid::from_u128(id)
            })),
        ]
    }

    proptest! {
        #[test]
        fn requests_round_trip(id in any::<u64>(), epoch in any::<u64>(), op in op()) {
            let r = Request { id, epoch, op };
            let (h, d) = r.encode();
            prop_assert_eq!(Request::decode(body(h, d)).unwrap(), r);
        }

        #[test]
        fn responses_round_trip(id in any::<u64>(), data in proptest::collection::vec(any::<u8>(), 0..300),
                                which in 0u8..4, arg in any::<u64>(), msg in ".{0,40}") {
            let result = match which {
                0 => Ok(Bytes::from(data)),
                1 => Err(Failure::StaleEpoch { current: arg }),
                2 => Err(Failure::NotPrimary),
                _ => Err(Failure::Volume { code: 5, arg, message: msg }),
            };
            let r = Response { id, result };
            let (h, d) = r.encode();
            prop_assert_eq!(Response::decode(body(h, d)).unwrap(), r);
        }

        #[test]
        fn answers_round_trip(status in any::<u8>(), sense in proptest::collection::vec(any::<u8>(), 0..40),
                              data in proptest::collection::vec(any::<u8>(), 0..300),
                              data_out_wanted in proptest::option::of(any::<u32>())) {
            let a = Answer { status, sense: Bytes::from(sense), data: Bytes::from(data), data_out_wanted };
            prop_assert_eq!(Answer::decode(a.encode()).unwrap(), a);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let b = Bytes::from(bytes);
            let _ = Answer::decode(b.clone());
            let _ = Request::decode(b.clone());
            let _ = Response::decode(b.clone());
            let _ = Hello::decode(b.clone());
            let _ = Welcome::decode(b);
        }
    }

    #[test]
    fn hello_and_welcome_round_trip() {
        let h = Hello {
            mode: Mode::Forward,
            node: 3,
            epoch: 9,
            copy_id: [4; 16],
            volume: "vmstore".into(),
        };
        let f = h.encode();
        assert_eq!(Hello::decode(f.slice(4..)).unwrap(), h);
        let w = Ok(Welcome {
            copy_id: [7; 16],
            epoch: 4,
            block_size: 512,
            num_blocks: 1 << 20,
            suspect: vec![(0, 4 << 20), (8 << 20, 4 << 20)],
        });
        assert_eq!(Welcome::decode(Welcome::encode(&w).slice(4..)).unwrap(), w);
        let refused = Err(Refused {
            refusal: Refusal::NoCopy,
            message: "no such volume".into(),
        });
        assert_eq!(
            Welcome::decode(Welcome::encode(&refused).slice(4..)).unwrap(),
            refused
        );
    }

    fn refusal() -> impl Strategy<Value = Refusal> {
        prop_oneof![
            Just(Refusal::NoCopy),
            any::<u64>().prop_map(|current| Refusal::StaleEpoch { current }),
            Just(Refusal::NotPrimary),
            Just(Refusal::Failed),
        ]
    }

    proptest! {
        #[test]
        fn refusals_round_trip(refusal in refusal(), message in ".{0,40}") {
            let r = Err(Refused { refusal, message });
            prop_assert_eq!(Welcome::decode(Welcome::encode(&r).slice(4..)).unwrap(), r);
        }
    }

    #[test]
    fn an_unknown_refusal_is_a_protocol_error() {
        let mut b = BytesMut::new();
        b.put_u8(1);
        b.put_u8(99);
        b.put_u64(0);
        b.put_u16(0);
        assert_eq!(
            Welcome::decode(b.freeze()),
            Err(WireError::Unknown {
                what: "refusal",
                value: 99
            })
        );
    }

    #[test]
    fn a_hello_of_another_version_is_refused() {
        let h = Hello {
            mode: Mode::Replicate,
            node: 1,
            epoch: 1,
            copy_id: [0; 16],
            volume: "v".into(),
        };
        let mut body = BytesMut::from(&h.encode()[4..]);
        body[..2].copy_from_slice(&(VERSION - 1).to_be_bytes());
        assert!(matches!(
            Hello::decode(body.freeze()),
            Err(WireError::Unknown {
                what: "protocol version",
                ..
            })
        ));
    }

    #[test]
    fn oversized_frames_are_refused() {
        assert!(frame_len((MAX_FRAME as u32 + 1).to_be_bytes()).is_err());
        let mut b = BytesMut::new();
        b.put_u64(1);
        b.put_u64(1);
        b.put_u8(OP_WRITE);
        b.put_u64(0);
        b.put_u8(0);
        b.put_u32(u32::MAX);
        assert!(Request::decode(b.freeze()).is_err());
    }

    #[test]
    fn volume_errors_survive_the_wire() {
        let e = VolumeError::Miscompare { offset: 17 };
        assert!(matches!(
            volume_error_of(&failure_of(&e), 10, 512),
            VolumeError::Miscompare { offset: 17 }
        ));
        let e = VolumeError::Medium {
            lba: 5,
            reason: "checksum".into(),
        };
        assert!(matches!(
            volume_error_of(&failure_of(&e), 10, 512),
            VolumeError::Medium { lba: 5, .. }
        ));
    }

    #[test]
    fn why_a_volume_is_unavailable_survives_the_wire() {
        let unit = [
            Unavailable::NoPrimary,
            Unavailable::RoleEnded,
            Unavailable::LeaseLost,
            Unavailable::PrimaryChanged,
            Unavailable::NotPrimary,
            Unavailable::Superseded,
        ];
        for why in unit {
            let back = volume_error_of(&failure_of(&VolumeError::Unavailable(why.clone())), 1, 512);
            assert!(
                matches!(&back, VolumeError::Unavailable(w) if *w == why),
                "{back:?}"
            );
        }
        let deposed = Unavailable::Deposed { epoch: Some(9) };
        let back = volume_error_of(&failure_of(&VolumeError::Unavailable(deposed)), 1, 512);
        assert!(
            matches!(back, VolumeError::Unavailable(Unavailable::Deposed { .. })),
            "{back:?}"
        );
        // Cases with details travel as their text, said once.
        let why = Unavailable::NotRecorded {
            node: 3,
            why: "no quorum".into(),
        };
        let back = volume_error_of(&failure_of(&VolumeError::Unavailable(why.clone())), 1, 512);
        assert_eq!(
            back.to_string(),
            VolumeError::Unavailable(Unavailable::Remote(why.to_string())).to_string()
        );
        assert_eq!(back.to_string().matches("unavailable").count(), 1, "{back}");
        let stale = volume_error_of(&Failure::StaleEpoch { current: 4 }, 1, 512);
        assert!(matches!(
            stale,
            VolumeError::Unavailable(Unavailable::Deposed { epoch: Some(4) })
        ));
    }
}
