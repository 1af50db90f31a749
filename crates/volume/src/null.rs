use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use crate::{blocks_in, check_range, Provisioning, Result, Volume, VolumeError};

/// A volume that stores nothing: reads return zeros, writes are dropped.
/// Used to measure protocol overhead without any disk I/O (bench/).
pub struct NullVolume {
    block_size: u32,
    num_blocks: AtomicU64,
}

impl NullVolume {
    /// Creates a null volume of `num_blocks` blocks of `block_size` bytes.
    pub fn new(block_size: u32, num_blocks: u64) -> Self {
        NullVolume {
            block_size,
            num_blocks: AtomicU64::new(num_blocks),
        }
    }
}

impl NullVolume {
    fn read_zeros(&self, lba: u64, blocks: u32) -> Result<Vec<u8>> {
        check_range(self.num_blocks(), lba, blocks as u64)?;
        Ok(crate::buffer::zeroed(
            blocks as usize * self.block_size as usize,
        ))
    }

    fn drop_write(&self, lba: u64, data: &[u8]) -> Result<()> {
        let n = blocks_in(data.len(), self.block_size)?;
        check_range(self.num_blocks(), lba, n)
    }
}

#[async_trait]
impl Volume for NullVolume {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.num_blocks.load(Ordering::Relaxed)
    }

    fn provisioning(&self) -> Provisioning {
        Provisioning::Thin
    }

    fn write_cache(&self) -> bool {
        false
    }

    async fn read(&self, lba: u64, blocks: u32) -> Result<Vec<u8>> {
        self.read_zeros(lba, blocks)
    }

    async fn write(&self, lba: u64, data: Bytes, _fua: bool) -> Result<()> {
        self.drop_write(lba, &data)
    }

    fn read_now(&self, lba: u64, blocks: u32) -> Option<Result<Vec<u8>>> {
        Some(self.read_zeros(lba, blocks))
    }

    fn write_now(&self, lba: u64, data: &Bytes) -> Option<Result<()>> {
        Some(self.drop_write(lba, data))
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    async fn unmap(&self, lba: u64, blocks: u64) -> Result<()> {
        check_range(self.num_blocks(), lba, blocks)
    }

    async fn compare_and_write(
        &self,
        lba: u64,
        compare: Bytes,
        _write: Bytes,
        _fua: bool,
    ) -> Result<()> {
        let n = blocks_in(compare.len(), self.block_size)?;
        check_range(self.num_blocks(), lba, n)?;
        match compare.iter().position(|&b| b != 0) {
            Some(offset) => Err(VolumeError::Miscompare { offset }),
            None => Ok(()),
        }
    }

    async fn resize(&self, blocks: u64) -> Result<()> {
        let current = self.num_blocks();
        if blocks < current {
            return Err(VolumeError::Shrink {
                current,
                requested: blocks,
            });
        }
        self.num_blocks.store(blocks, Ordering::Relaxed);
        Ok(())
    }
}
