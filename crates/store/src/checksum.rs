//! Per-block checksums kept beside a volume's data: the sidecar file holds
//! one little-endian crc32c per logical block (entry `i` at byte `4 * i`).
//!
//! An entry of 0 means "unwritten": the block must read as zeros. Holes in
//! the data file therefore need nothing written to the sidecar (its own holes
//! read as 0), and UNMAP punches the matching entries back to holes. A block
//! whose crc32c happens to be 0 is stored as 0 too and still verifies.

use std::io;

use smallvec::SmallVec;

use crate::backing::Backing;

/// Bytes of sidecar per block.
pub(crate) const ENTRY: u64 = 4;

/// Sidecar entries of one I/O: those of up to 256 blocks (128 KiB of
/// 512-byte blocks, 1 MiB of 4 KiB ones) stay on the stack.
pub(crate) type Sums = SmallVec<[u8; 1024]>;

/// The checksum stored for one block.
pub(crate) fn of(block: &[u8]) -> u32 {
    crc32c::crc32c(block)
}

/// Whether `block` matches the stored entry.
pub(crate) fn verifies(stored: u32, block: &[u8]) -> bool {
    if stored == 0 && is_zero(block) {
        return true;
    }
    of(block) == stored
}

pub(crate) fn is_zero(b: &[u8]) -> bool {
    let (words, rest) = b.split_at(b.len() & !7);
    words
        .chunks_exact(8)
        .all(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")) == 0)
        && rest.iter().all(|&x| x == 0)
}

/// The sidecar entries of `data`, a whole number of `bs`-byte blocks. With
/// `zeros_unwritten` an all-zero block gets the "unwritten" entry, so
/// rebuilding a volume's sums leaves the sidecar as sparse as the data.
pub(crate) fn entries(data: &[u8], bs: usize, zeros_unwritten: bool) -> Sums {
    let mut out = Sums::with_capacity(data.len() / bs * ENTRY as usize);
    for block in data.chunks_exact(bs) {
        let e = if zeros_unwritten && is_zero(block) {
            0
        } else {
            of(block)
        };
        out.extend_from_slice(&e.to_le_bytes());
    }
    out
}

/// Index of the first block of `data` that does not match its entry in `sums`.
pub(crate) fn first_bad(data: &[u8], sums: &[u8], bs: usize) -> Option<usize> {
    data.chunks_exact(bs)
        .zip(sums.chunks_exact(ENTRY as usize))
        .position(|(block, e)| !verifies(u32::from_le_bytes(e.try_into().expect("4 bytes")), block))
}

/// Recomputes the entries of blocks `[lba, lba + blocks)` from the data as it
/// is now: holes get the "unwritten" entry without being read.
pub(crate) fn rebuild<B: Backing>(
    data: &B,
    sums: &B,
    bs: u64,
    lba: u64,
    blocks: u64,
) -> io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let end = (lba + blocks) * bs;
    let mut off = lba * bs;
    while off < end {
        // Skip holes: a thin volume is mostly holes, and they need no reading.
        let data_at = match data.seek(off, true) {
            Ok(d) => d.unwrap_or(end).min(end) / bs * bs,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => off,
            Err(e) => return Err(e),
        };
        if data_at > off {
            sums.punch_hole(off / bs * ENTRY, (data_at - off) / bs * ENTRY)?;
            off = data_at;
            continue;
        }
        let hole_at = match data.seek(off, false) {
            Ok(h) => h.unwrap_or(end).min(end).div_ceil(bs) * bs,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => end,
            Err(e) => return Err(e),
        };
        let stop = hole_at.max(off + bs).min(off + CHUNK).min(end);
        let mut buf = vec![0u8; (stop - off) as usize];
        data.read_at(&mut buf, off)?;
        sums.write_at(&entries(&buf, bs as usize, true), off / bs * ENTRY)?;
        off = stop;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_verify_against_unwritten_and_data_against_its_crc() {
        let zeros = vec![0u8; 512];
        assert!(verifies(0, &zeros));
        assert!(verifies(of(&zeros), &zeros));
        let mut block = vec![7u8; 512];
        assert!(!verifies(0, &block));
        let e = of(&block);
        assert!(verifies(e, &block));
        block[100] ^= 1;
        assert!(!verifies(e, &block));
    }

    #[test]
    fn first_bad_names_the_damaged_block() {
        let mut data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let sums = entries(&data, 512, false);
        assert_eq!(first_bad(&data, &sums, 512), None);
        data[3 * 512 + 9] ^= 0x40;
        assert_eq!(first_bad(&data, &sums, 512), Some(3));
    }

    #[test]
    fn rebuilt_entries_leave_holes_unwritten() {
        let data = crate::SimDisk::new(8 * 512);
        let sums = crate::SimDisk::new(8 * ENTRY);
        data.write_at(&[5u8; 512], 2 * 512).unwrap();
        rebuild(&data, &sums, 512, 0, 8).unwrap();
        let mut got = vec![0u8; 8 * ENTRY as usize];
        sums.read_at(&mut got, 0).unwrap();
        let e = |i: usize| u32::from_le_bytes(got[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!(e(0), 0);
        assert_eq!(e(2), of(&[5u8; 512]));
        assert_eq!(e(7), 0);
    }
}
