//! A history checker for block storage under faults (in the manner of
//! Jepsen's register checks): every block a test writes carries the number
//! of the write and its own address, so a read tells which write it shows.
//! The history records what was issued and what was acknowledged; a read is
//! correct when it shows zeros or a write issued to that block, never one
//! older than the newest write acknowledged as durable before the read.

use std::collections::HashMap;

/// Contents of one `size`-byte block at `lba` after write `seq`.
pub fn block(seq: u64, lba: u64, size: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(size);
    b.extend_from_slice(b"TANDEMCR");
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(&lba.to_be_bytes());
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ lba;
    while b.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.push(x as u8);
    }
    b
}

/// The write a block shows (0 for zeros), or `None` for anything that is
/// not one of ours, whole, at this address.
pub fn decode(b: &[u8], lba: u64) -> Option<u64> {
    if b.iter().all(|&x| x == 0) {
        return Some(0);
    }
    if b.len() < 24 || &b[..8] != b"TANDEMCR" {
        return None;
    }
    let seq = u64::from_be_bytes(b[8..16].try_into().ok()?);
    (block(seq, lba, b.len()) == b).then_some(seq)
}

/// What a test issued and what was acknowledged, per block.
#[derive(Debug, Default)]
pub struct History {
    issued: HashMap<u64, Vec<u64>>,
    durable: HashMap<u64, u64>,
    acknowledged: u64,
}

impl History {
    /// Records that write `seq` was sent to blocks `lba..lba + blocks`.
    pub fn issued(&mut self, lba: u64, blocks: u64, seq: u64) {
        for b in lba..lba + blocks {
            self.issued.entry(b).or_default().push(seq);
        }
    }

    /// Records that write `seq` to `lba..lba + blocks` is acknowledged as durable.
    pub fn durable(&mut self, lba: u64, blocks: u64, seq: u64) {
        self.acknowledged += 1;
        for b in lba..lba + blocks {
            let d = self.durable.entry(b).or_insert(0);
            *d = (*d).max(seq);
        }
    }

    /// Takes in the history of another writer (of other blocks, or of the
    /// same blocks with other write numbers), so one check covers both.
    pub fn absorb(&mut self, other: History) {
        for (b, seqs) in other.issued {
            self.issued.entry(b).or_default().extend(seqs);
        }
        for (b, seq) in other.durable {
            let d = self.durable.entry(b).or_insert(0);
            *d = (*d).max(seq);
        }
        self.acknowledged += other.acknowledged;
    }

    /// Number of writes acknowledged as durable.
    pub fn acknowledged(&self) -> u64 {
        self.acknowledged
    }

    /// The newest durable write of block `lba` (0: none).
    pub fn newest_durable(&self, lba: u64) -> u64 {
        self.durable.get(&lba).copied().unwrap_or(0)
    }

    /// Checks a read of block `lba` made after everything recorded so far.
    pub fn check(&self, lba: u64, data: &[u8]) -> Result<u64, String> {
        let seq = decode(data, lba)
            .ok_or_else(|| format!("block {lba} holds data no write put there"))?;
        let durable = self.newest_durable(lba);
        if seq < durable {
            return Err(format!(
                "block {lba}: acknowledged write {durable} lost, the block shows write {seq}"
            ));
        }
        let issued = self.issued.get(&lba).map(Vec::as_slice).unwrap_or(&[]);
        if seq != 0 && !issued.contains(&seq) {
            return Err(format!(
                "block {lba} shows write {seq}, which was never issued to it"
            ));
        }
        Ok(seq)
    }

    /// Checks a read of `data.len() / size` blocks starting at `lba`; every violation is listed.
    pub fn check_range(&self, lba: u64, data: &[u8], size: usize) -> Result<(), Vec<String>> {
        let errors: Vec<String> = data
            .chunks(size)
            .enumerate()
            .filter_map(|(i, b)| self.check(lba + i as u64, b).err())
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_lost_garbage_and_foreign_writes() {
        let mut h = History::default();
        h.issued(0, 2, 1);
        h.durable(0, 2, 1);
        h.issued(0, 1, 2);
        assert_eq!(h.check(0, &block(1, 0, 512)), Ok(1));
        assert_eq!(
            h.check(0, &block(2, 0, 512)),
            Ok(2),
            "unacknowledged newer write may show"
        );
        assert!(h.check(1, &[0u8; 512]).is_err(), "acknowledged write lost");
        assert!(
            h.check(1, &block(1, 0, 512)).is_err(),
            "block from another address"
        );
        assert!(h.check(1, &block(7, 1, 512)).is_err(), "write never issued");
        let mut torn = block(1, 1, 512);
        torn[300] ^= 1;
        assert!(h.check(1, &torn).is_err(), "torn block");
        assert_eq!(h.check(5, &[0u8; 512]), Ok(0));
    }

    #[test]
    fn absorbed_history_checks_both_writers() {
        let mut a = History::default();
        a.issued(0, 1, 1);
        a.durable(0, 1, 1);
        let mut b = History::default();
        b.issued(1, 1, 2);
        b.durable(1, 1, 2);
        b.issued(0, 1, 3);
        a.absorb(b);
        assert_eq!(a.acknowledged(), 2);
        assert!(a.check(1, &[0u8; 512]).is_err(), "b's write is checked");
        assert_eq!(a.check(0, &block(3, 0, 512)), Ok(3), "b's issued write");
        assert!(a.check(0, &[0u8; 512]).is_err(), "a's write is checked");
    }
}
