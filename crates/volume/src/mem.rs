use std::collections::BTreeMap;
use std::sync::RwLock;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{
    blocks_in, check_range, compare_and_write_blocks, first_difference, BlockState, Provisioning,
    Result, Volume, VolumeError,
};

/// A thin volume held in memory: only written blocks take space. For tests and
/// for protocol work that must not touch a disk. Its contents are "durable" for
/// the life of the process.
pub struct MemVolume {
    block_size: u32,
    state: RwLock<MemState>,
}

struct MemState {
    num_blocks: u64,
    blocks: BTreeMap<u64, Box<[u8]>>,
}

impl MemVolume {
    /// Creates an empty (all-zero) volume of `num_blocks` blocks of `block_size` bytes.
    pub fn new(block_size: u32, num_blocks: u64) -> Self {
        MemVolume {
            block_size,
            state: RwLock::new(MemState {
                num_blocks,
                blocks: BTreeMap::new(),
            }),
        }
    }

    /// Number of blocks that hold data (for thin-provisioning checks).
    pub fn mapped_blocks(&self) -> u64 {
        self.state.read().unwrap().blocks.len() as u64
    }

    fn read_locked(&self, st: &MemState, lba: u64, blocks: u64) -> Vec<u8> {
        let bs = self.block_size as usize;
        let mut out = vec![0u8; blocks as usize * bs];
        for (b, data) in st.blocks.range(lba..lba + blocks) {
            let off = (b - lba) as usize * bs;
            out[off..off + bs].copy_from_slice(data);
        }
        out
    }

    fn write_locked(&self, st: &mut MemState, lba: u64, data: &[u8]) {
        let bs = self.block_size as usize;
        for (i, block) in data.chunks(bs).enumerate() {
            st.blocks.insert(lba + i as u64, block.into());
        }
    }
}

impl MemVolume {
    fn read_blocks(&self, lba: u64, blocks: u32) -> Result<Vec<u8>> {
        let st = self.state.read().unwrap();
        check_range(st.num_blocks, lba, blocks as u64)?;
        Ok(self.read_locked(&st, lba, blocks as u64))
    }

    fn write_blocks(&self, lba: u64, data: &[u8]) -> Result<()> {
        let n = blocks_in(data.len(), self.block_size)?;
        let mut st = self.state.write().unwrap();
        check_range(st.num_blocks, lba, n)?;
        self.write_locked(&mut st, lba, data);
        Ok(())
    }
}

#[async_trait]
impl Volume for MemVolume {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.state.read().unwrap().num_blocks
    }

    fn provisioning(&self) -> Provisioning {
        Provisioning::Thin
    }

    fn write_cache(&self) -> bool {
        false
    }

    async fn read(&self, lba: u64, blocks: u32) -> Result<Vec<u8>> {
        self.read_blocks(lba, blocks)
    }

    async fn write(&self, lba: u64, data: Bytes, _fua: bool) -> Result<()> {
        self.write_blocks(lba, &data)
    }

    fn read_now(&self, lba: u64, blocks: u32) -> Option<Result<Vec<u8>>> {
        Some(self.read_blocks(lba, blocks))
    }

    fn write_now(&self, lba: u64, data: &Bytes) -> Option<Result<()>> {
        Some(self.write_blocks(lba, data))
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    async fn unmap(&self, lba: u64, blocks: u64) -> Result<()> {
        let mut st = self.state.write().unwrap();
        check_range(st.num_blocks, lba, blocks)?;
        let doomed: Vec<u64> = st
            .blocks
            .range(lba..lba + blocks)
            .map(|(b, _)| *b)
            .collect();
        for b in doomed {
            st.blocks.remove(&b);
        }
        Ok(())
    }

    async fn compare_and_write(
        &self,
        lba: u64,
        compare: Bytes,
        write: Bytes,
        _fua: bool,
    ) -> Result<()> {
        let n = compare_and_write_blocks(compare.len(), write.len(), self.block_size)?;
        let mut st = self.state.write().unwrap();
        check_range(st.num_blocks, lba, n)?;
        let current = self.read_locked(&st, lba, n);
        if let Some(offset) = first_difference(&current, &compare) {
            return Err(VolumeError::Miscompare { offset });
        }
        self.write_locked(&mut st, lba, &write);
        Ok(())
    }

    async fn block_status(&self, lba: u64) -> Result<(BlockState, u64)> {
        let st = self.state.read().unwrap();
        check_range(st.num_blocks, lba, 1)?;
        let mapped = st.blocks.contains_key(&lba);
        let mut end = lba + 1;
        while end < st.num_blocks && st.blocks.contains_key(&end) == mapped {
            end += 1;
        }
        let state = if mapped {
            BlockState::Mapped
        } else {
            BlockState::Deallocated
        };
        Ok((state, end - lba))
    }

    async fn resize(&self, blocks: u64) -> Result<()> {
        let mut st = self.state.write().unwrap();
        if blocks < st.num_blocks {
            return Err(VolumeError::Shrink {
                current: st.num_blocks,
                requested: blocks,
            });
        }
        st.num_blocks = blocks;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_the_shared_suite() {
        crate::testsuite::run_all(|bs, n| async move { MemVolume::new(bs, n) }).await;
    }
}
