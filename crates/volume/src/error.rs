use thiserror::Error;

/// Why a volume operation failed. The SCSI layer maps each kind to sense data.
#[derive(Debug, Error)]
pub enum VolumeError {
    /// The block range does not lie inside the volume.
    #[error("blocks {lba}..+{blocks} are outside the volume of {num_blocks} blocks")]
    OutOfRange {
        lba: u64,
        blocks: u64,
        num_blocks: u64,
    },
    /// A buffer is not a whole, non-zero number of blocks.
    #[error("a transfer of {len} bytes is not a whole number of {block_size}-byte blocks")]
    BadLength { len: usize, block_size: u32 },
    /// COMPARE AND WRITE found different data at this byte offset of the range.
    #[error("compare failed at byte {offset} of the range")]
    Miscompare { offset: usize },
    /// The backing store has no space left for newly allocated blocks.
    #[error("no space left on the backing store")]
    NoSpace,
    /// Stored data failed its integrity check.
    #[error("block {lba} is unreadable: {reason}")]
    Medium { lba: u64, reason: String },
    /// A resize asked for fewer blocks than the volume has.
    #[error("cannot shrink a volume from {current} to {requested} blocks")]
    Shrink { current: u64, requested: u64 },
    /// The volume was closed or deleted while the operation was queued.
    #[error("the volume is closed")]
    Closed,
    /// The volume cannot serve I/O on this node right now (a replicated
    /// volume between primaries, or cut off from its peers); retrying later
    /// may succeed.
    #[error("the volume is unavailable here: {0}")]
    Unavailable(Unavailable),
    /// The operating system reported an I/O error.
    #[error("I/O error")]
    Io(#[from] std::io::Error),
}

/// Why a replicated volume cannot serve I/O on this node right now.
/// Initiators see every case alike (an access state transition, which they
/// retry, by then on the new primary); the cases tell the administrator,
/// and the code, which one it was.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Unavailable {
    /// No primary is known for the volume (between primaries, or cut off).
    #[error("no primary is known for the volume right now")]
    NoPrimary,
    /// This node gave up the primary role while the request was on its way.
    #[error("this node gave up the primary role")]
    RoleEnded,
    /// A newer primary has taken over (at `epoch`, when known).
    #[error("a newer primary{} has taken over the volume", .epoch.map(|e| format!(" (epoch {e})")).unwrap_or_default())]
    Deposed { epoch: Option<u64> },
    /// This node's lease may have run out, or its applied cluster state no
    /// longer names it primary: it must not acknowledge anything.
    #[error("this node lost contact with the control plane (lease expired) or no longer leads the volume")]
    LeaseLost,
    /// The primary could not be reached, or did not answer in time.
    #[error("the primary cannot be reached: {0}")]
    PrimaryUnreachable(String),
    /// The primary changed while the request waited for the old one.
    #[error("the primary changed while the operation waited")]
    PrimaryChanged,
    /// The node forwarded to is no longer the primary.
    #[error("the node forwarded to is no longer the primary")]
    NotPrimary,
    /// A replica missed the write and the control plane could not record
    /// that, so the write is not acknowledged.
    #[error("the replica on node {node} failed and the control plane could not record it: {why}")]
    NotRecorded { node: u64, why: String },
    /// A newer replication connection from the primary replaced the one
    /// the request came on.
    #[error("a newer replication connection replaced this one")]
    Superseded,
    /// Another node's answer, as it gave it.
    #[error("{0}")]
    Remote(String),
}

impl VolumeError {
    /// Maps an `std::io::Error` to `NoSpace` when the file system is full or
    /// a quota is reached, else to `Io`.
    pub fn from_io(err: std::io::Error) -> Self {
        match err.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                VolumeError::NoSpace
            }
            _ => VolumeError::Io(err),
        }
    }
}
