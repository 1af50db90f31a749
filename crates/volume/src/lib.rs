//! The `Volume` trait: asynchronous block I/O that the SCSI layer drives and
//! that every backend (local store, cluster volume, null, in-memory) offers.
//!
//! Addresses are logical block addresses in units of [`Volume::block_size`].
//! A write is durable once `write(.., fua = true)` or a later `flush()` has
//! returned `Ok`; before that it may be lost by a crash (see "Where
//! durability is made" in docs/architecture.md).
#![forbid(unsafe_code)]

pub mod buffer;
mod error;
pub mod latency;
mod mem;
mod null;
#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;

pub use error::{Unavailable, VolumeError};
pub use mem::MemVolume;
pub use null::NullVolume;

use async_trait::async_trait;
use bytes::Bytes;

/// Largest single transfer a caller may pass to one `read` or `write`, in bytes.
/// The SCSI layer advertises limits below this (VPD 0xB0).
pub const MAX_IO_BYTES: usize = 64 * 1024 * 1024;

/// Result type of every volume operation.
pub type Result<T> = std::result::Result<T, VolumeError>;

/// Whether unwritten and unmapped blocks take no space on the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioning {
    /// Every block is backed by storage from creation.
    Full,
    /// Space is allocated on write and returned by `unmap`; unmapped blocks read as zeros.
    Thin,
}

/// Whether a block range is backed by data or reads as zeros without storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockState {
    /// The range holds written data.
    Mapped,
    /// The range has no storage behind it and reads as zeros.
    Deallocated,
}

/// Asynchronous block device. All methods may be called concurrently.
#[async_trait]
pub trait Volume: Send + Sync + 'static {
    /// Logical block size in bytes (512 or 4096).
    fn block_size(&self) -> u32;

    /// Current number of logical blocks. Changes after a successful `resize`.
    fn num_blocks(&self) -> u64;

    /// How the backend allocates space.
    fn provisioning(&self) -> Provisioning;

    /// Whether the backend has a volatile write cache, i.e. whether a write
    /// without FUA needs a `flush` to become durable.
    fn write_cache(&self) -> bool;

    /// Whether the space behind a thin volume has fallen below its soft
    /// threshold: writes still succeed, but the administrator should act
    /// before they fail for want of space.
    fn low_on_space(&self) -> bool {
        false
    }

    /// Reads `blocks` blocks starting at `lba`.
    async fn read(&self, lba: u64, blocks: u32) -> Result<Vec<u8>>;

    /// Writes `data` (a whole number of blocks) at `lba`. With `fua` the data
    /// is on stable storage when this returns `Ok`.
    async fn write(&self, lba: u64, data: Bytes, fua: bool) -> Result<()>;

    /// As [`Volume::read`], done right here when that needs no waiting (the
    /// data is in memory or in the page cache). `None` means "not without
    /// waiting", and nothing was done: the caller uses `read`. Lets the
    /// transport finish a command on the spot instead of in a task of its own.
    fn read_now(&self, _lba: u64, _blocks: u32) -> Option<Result<Vec<u8>>> {
        None
    }

    /// As [`Volume::write`] without FUA, done right here when that needs no
    /// waiting; `None` as for [`Volume::read_now`].
    fn write_now(&self, _lba: u64, _data: &Bytes) -> Option<Result<()>> {
        None
    }

    /// Whether [`Volume::read_now`] (or, with `write`, [`Volume::write_now`])
    /// can ever complete a request here. A volume whose requests always
    /// wait (a mirrored write waits for the other copies) says no, and the
    /// caller goes straight to the waiting path without preparing the
    /// request twice.
    fn completes_now(&self, _write: bool) -> bool {
        true
    }

    /// Makes every write that completed before this call durable.
    async fn flush(&self) -> Result<()>;

    /// Deallocates `blocks` blocks at `lba`; afterwards they read as zeros.
    async fn unmap(&self, lba: u64, blocks: u64) -> Result<()>;

    /// Writes the one-block `pattern` to every block of the range. With
    /// `unmap` and an all-zero pattern the range may be deallocated instead.
    async fn write_same(
        &self,
        lba: u64,
        blocks: u64,
        pattern: Bytes,
        unmap: bool,
        fua: bool,
    ) -> Result<()> {
        let bs = self.block_size() as usize;
        check_pattern(pattern.len(), self.block_size())?;
        check_range(self.num_blocks(), lba, blocks)?;
        if unmap && pattern.iter().all(|&b| b == 0) && self.provisioning() == Provisioning::Thin {
            self.unmap(lba, blocks).await?;
            return if fua { self.flush().await } else { Ok(()) };
        }
        let chunk_blocks = (1024 * 1024 / bs).max(1) as u64;
        let mut chunk = Vec::with_capacity(chunk_blocks as usize * bs);
        for _ in 0..chunk_blocks.min(blocks) {
            chunk.extend_from_slice(&pattern);
        }
        let chunk = Bytes::from(chunk);
        let mut done = 0u64;
        while done < blocks {
            let n = chunk_blocks.min(blocks - done);
            self.write(lba + done, chunk.slice(..n as usize * bs), false)
                .await?;
            done += n;
        }
        if fua {
            self.flush().await?;
        }
        Ok(())
    }

    /// Atomically compares `compare` with the blocks at `lba` and, only when
    /// equal, writes `write` there. On a mismatch returns
    /// [`VolumeError::Miscompare`] with the byte offset of the first difference.
    /// Atomic against every other writer of this volume.
    async fn compare_and_write(
        &self,
        lba: u64,
        compare: Bytes,
        write: Bytes,
        fua: bool,
    ) -> Result<()>;

    /// [`Volume::compare_and_write`] for the initiator port `initiator`
    /// (its I_T nexus name). A volume that can move between nodes uses it
    /// to recognise the command when the initiator sends it again after its
    /// status was lost with a failed node; others ignore it.
    async fn compare_and_write_for(
        &self,
        initiator: &str,
        lba: u64,
        compare: Bytes,
        write: Bytes,
        fua: bool,
    ) -> Result<()> {
        let _ = initiator;
        self.compare_and_write(lba, compare, write, fua).await
    }

    /// Reports whether the range starting at `lba` is mapped, and for how many
    /// blocks that state continues (at least 1, at most to the end of the volume).
    async fn block_status(&self, lba: u64) -> Result<(BlockState, u64)> {
        check_range(self.num_blocks(), lba, 1)?;
        Ok((BlockState::Mapped, self.num_blocks() - lba))
    }

    /// Changes the size to `blocks` logical blocks. Shrinking is refused.
    async fn resize(&self, blocks: u64) -> Result<()>;
}

/// Checks that `[lba, lba + blocks)` lies inside a volume of `num_blocks` blocks.
pub fn check_range(num_blocks: u64, lba: u64, blocks: u64) -> Result<()> {
    match lba.checked_add(blocks) {
        Some(end) if end <= num_blocks => Ok(()),
        _ => Err(VolumeError::OutOfRange {
            lba,
            blocks,
            num_blocks,
        }),
    }
}

/// Checks that `len` bytes are a whole, non-zero number of `block_size` blocks
/// and returns how many.
pub fn blocks_in(len: usize, block_size: u32) -> Result<u64> {
    if len == 0 || !len.is_multiple_of(block_size as usize) || len > MAX_IO_BYTES {
        return Err(VolumeError::BadLength { len, block_size });
    }
    Ok((len / block_size as usize) as u64)
}

/// Checks that a WRITE SAME pattern of `len` bytes is exactly one block.
pub fn check_pattern(len: usize, block_size: u32) -> Result<()> {
    if len != block_size as usize {
        return Err(VolumeError::BadLength { len, block_size });
    }
    Ok(())
}

/// Checks the two buffers of a COMPARE AND WRITE (a whole number of blocks,
/// both the same length) and returns how many blocks they cover.
pub fn compare_and_write_blocks(compare: usize, write: usize, block_size: u32) -> Result<u64> {
    let n = blocks_in(compare, block_size)?;
    if write != compare {
        return Err(VolumeError::BadLength {
            len: write,
            block_size,
        });
    }
    Ok(n)
}

/// Returns the byte offset of the first difference between `a` and `b`.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b.iter())
        .position(|(x, y)| x != y)
        .or(if a.len() != b.len() {
            Some(a.len().min(b.len()))
        } else {
            None
        })
}

/// A shared volume is a volume: callers holding `Arc<V>` use it directly.
#[async_trait]
impl<V: Volume + ?Sized> Volume for std::sync::Arc<V> {
    fn block_size(&self) -> u32 {
        (**self).block_size()
    }
    fn num_blocks(&self) -> u64 {
        (**self).num_blocks()
    }
    fn provisioning(&self) -> Provisioning {
        (**self).provisioning()
    }
    fn write_cache(&self) -> bool {
        (**self).write_cache()
    }
    fn low_on_space(&self) -> bool {
        (**self).low_on_space()
    }
    async fn read(&self, lba: u64, blocks: u32) -> Result<Vec<u8>> {
        (**self).read(lba, blocks).await
    }
    async fn write(&self, lba: u64, data: Bytes, fua: bool) -> Result<()> {
        (**self).write(lba, data, fua).await
    }
    fn read_now(&self, lba: u64, blocks: u32) -> Option<Result<Vec<u8>>> {
        (**self).read_now(lba, blocks)
    }
    fn write_now(&self, lba: u64, data: &Bytes) -> Option<Result<()>> {
        (**self).write_now(lba, data)
    }
    fn completes_now(&self, write: bool) -> bool {
        (**self).completes_now(write)
    }
    async fn flush(&self) -> Result<()> {
        (**self).flush().await
    }
    async fn unmap(&self, lba: u64, blocks: u64) -> Result<()> {
        (**self).unmap(lba, blocks).await
    }
    async fn write_same(
        &self,
        lba: u64,
        blocks: u64,
        pattern: Bytes,
        unmap: bool,
        fua: bool,
    ) -> Result<()> {
        (**self).write_same(lba, blocks, pattern, unmap, fua).await
    }
    async fn compare_and_write(
        &self,
        lba: u64,
        compare: Bytes,
        write: Bytes,
        fua: bool,
    ) -> Result<()> {
        (**self).compare_and_write(lba, compare, write, fua).await
    }
    async fn compare_and_write_for(
        &self,
        initiator: &str,
        lba: u64,
        compare: Bytes,
        write: Bytes,
        fua: bool,
    ) -> Result<()> {
        (**self)
            .compare_and_write_for(initiator, lba, compare, write, fua)
            .await
    }
    async fn block_status(&self, lba: u64) -> Result<(BlockState, u64)> {
        (**self).block_status(lba).await
    }
    async fn resize(&self, blocks: u64) -> Result<()> {
        (**self).resize(blocks).await
    }
}
