//! Transfer and provisioning limits advertised in VPD 0xB0 and enforced on commands.

/// Limits in logical blocks, derived from the block size.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest READ/WRITE transfer.
    pub max_transfer: u32,
    /// Preferred transfer size.
    pub optimal_transfer: u32,
    /// Preferred alignment and granularity (one 4 KiB page).
    pub optimal_granularity: u32,
    /// Largest number of blocks one UNMAP may deallocate.
    pub max_unmap_lbas: u32,
    /// Largest number of descriptors in one UNMAP parameter list.
    pub max_unmap_descriptors: u32,
    /// Largest WRITE SAME.
    pub max_write_same: u32,
    /// Largest COMPARE AND WRITE.
    pub max_compare_and_write: u32,
}

impl Limits {
    /// Limits for a volume with `block_size`-byte blocks.
    pub fn for_block_size(block_size: u32) -> Limits {
        let blocks = |bytes: u64| (bytes / block_size as u64).max(1) as u32;
        Limits {
            max_transfer: blocks(8 << 20),
            optimal_transfer: blocks(1 << 20),
            optimal_granularity: blocks(4096),
            // Punching holes is cheap at any size: no limit (0xFFFFFFFF).
            max_unmap_lbas: u32::MAX,
            max_unmap_descriptors: 256,
            max_write_same: blocks(8 << 20),
            max_compare_and_write: 1,
        }
    }
}
