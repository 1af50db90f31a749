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
    Unavailable(String),
    /// The operating system reported an I/O error.
    #[error("I/O error")]
    Io(#[from] std::io::Error),
}

impl VolumeError {
    /// Maps an `std::io::Error` to `NoSpace` when it is ENOSPC/EDQUOT, else to `Io`.
    pub fn from_io(err: std::io::Error) -> Self {
        match err.raw_os_error() {
            Some(28) | Some(122) => VolumeError::NoSpace,
            _ => VolumeError::Io(err),
        }
    }
}
