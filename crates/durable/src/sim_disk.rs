//! A disk in memory with a power switch, for crash tests.

use std::io;
use std::sync::{Arc, Mutex};

use crate::backing::Backing;

/// A disk in memory that loses, at a power cut, whatever was written after
/// the last sync, or any part of it.
pub struct SimDisk {
    state: Mutex<SimState>,
}

struct SimState {
    /// What survives a power cut for sure.
    durable: Vec<u8>,
    /// What reads see now.
    current: Vec<u8>,
    /// Writes since the last sync, in order: (offset, bytes).
    pending: Vec<(u64, Vec<u8>)>,
    /// Writes, syncs and length changes left before the power goes off
    /// (`None`: it stays on).
    power_left: Option<usize>,
}

impl SimState {
    /// Spends one change of the disk, failing once the power is off.
    fn change(&mut self) -> io::Result<()> {
        match &mut self.power_left {
            Some(0) => Err(io::Error::other("the simulated power is off")),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl SimDisk {
    /// A zeroed disk of `len` bytes, all of it durable.
    pub fn new(len: u64) -> SimDisk {
        SimDisk::from_image(vec![0; len as usize])
    }

    fn from_image(image: Vec<u8>) -> SimDisk {
        SimDisk {
            state: Mutex::new(SimState {
                durable: image.clone(),
                current: image,
                pending: Vec::new(),
                power_left: None,
            }),
        }
    }

    /// Cuts the power: returns the disk as it comes back, holding what was
    /// durable plus those unsynced writes `survives(i)` picks (the i-th since
    /// the last sync), applied in order. A write can partly survive at block
    /// granularity by picking it; the caller decides the pattern.
    pub fn power_cut(&self, survives: impl Fn(usize) -> bool) -> SimDisk {
        let s = self.state.lock().unwrap();
        let mut image = s.durable.clone();
        for (i, (off, bytes)) in s.pending.iter().enumerate() {
            if survives(i) {
                let at = *off as usize;
                image[at..at + bytes.len()].copy_from_slice(bytes);
            }
        }
        SimDisk::from_image(image)
    }

    /// The disks a power cut could leave now, one per pattern of surviving
    /// unsynced writes: none, all, each one alone, all but each one, and
    /// every prefix (the order a disk that never reorders would keep).
    pub fn power_cuts(&self) -> Vec<SimDisk> {
        let n = self.unsynced();
        let mut out = vec![self.power_cut(|_| false), self.power_cut(|_| true)];
        for k in 0..n {
            out.push(self.power_cut(|i| i == k));
            out.push(self.power_cut(|i| i != k));
            out.push(self.power_cut(|i| i < k));
        }
        out
    }

    /// Lets `changes` more writes, syncs or length changes through, then
    /// turns the power off: every later one fails and changes nothing, as on
    /// a machine that stopped there. With [`SimDisk::power_cut`] afterwards,
    /// a test sees what a crash at exactly that point leaves.
    pub fn power_off_after(&self, changes: usize) {
        self.state.lock().unwrap().power_left = Some(changes);
    }

    /// Whether the power went off (see [`SimDisk::power_off_after`]).
    pub fn is_off(&self) -> bool {
        self.state.lock().unwrap().power_left == Some(0)
    }

    /// Flips bits of the byte at `offset`, durably and behind the back of
    /// any writer: the disk itself went bad there.
    pub fn corrupt(&self, offset: u64, mask: u8) {
        let mut s = self.state.lock().unwrap();
        let at = offset as usize;
        s.durable[at] ^= mask;
        s.current[at] ^= mask;
    }

    /// Writes since the last sync.
    pub fn unsynced(&self) -> usize {
        self.state.lock().unwrap().pending.len()
    }
}

/// Runs `scenario` over a disk (made fresh by `disk` each time) with the
/// power going off after 0, 1, 2, ... changes of the disk, until a run
/// completes with the power still on; after each run, `check` gets every
/// disk a power cut at that point could leave ([`SimDisk::power_cuts`])
/// with what the scenario returned (typically what it was promised durable
/// before the power went). Operations after the power went off fail, as on
/// a machine that stopped, so only what completed before can be promised.
pub fn every_power_cut<T>(
    disk: impl Fn() -> SimDisk,
    scenario: impl Fn(&Arc<SimDisk>) -> T,
    check: impl Fn(SimDisk, &T),
) {
    for changes in 0.. {
        let d = Arc::new(disk());
        d.power_off_after(changes);
        let promised = scenario(&d);
        for cut in d.power_cuts() {
            check(cut, &promised);
        }
        if !d.is_off() {
            return;
        }
    }
}

fn range(len: usize, offset: u64, n: usize) -> io::Result<std::ops::Range<usize>> {
    let start = offset as usize;
    if offset > len as u64 || start + n > len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "beyond the end of the simulated disk",
        ));
    }
    Ok(start..start + n)
}

impl Backing for SimDisk {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let s = self.state.lock().unwrap();
        let r = range(s.current.len(), offset, buf.len())?;
        buf.copy_from_slice(&s.current[r]);
        Ok(())
    }
    fn read_nowait(&self, buf: &mut [u8], offset: u64) -> io::Result<bool> {
        // All of it is in memory: the inline paths run as over a page cache.
        self.read_at(buf, offset).map(|()| true)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut s = self.state.lock().unwrap();
        let r = range(s.current.len(), offset, buf.len())?;
        s.change()?;
        s.current[r].copy_from_slice(buf);
        s.pending.push((offset, buf.to_vec()));
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        let mut s = self.state.lock().unwrap();
        s.change()?;
        s.durable = s.current.clone();
        s.pending.clear();
        Ok(())
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_at(&vec![0; len as usize], offset)
    }
    fn seek(&self, offset: u64, data: bool) -> io::Result<Option<u64>> {
        // Everything counts as data: no holes are tracked.
        let len = self.state.lock().unwrap().current.len() as u64;
        Ok(match (data, offset < len) {
            (true, true) => Some(offset),
            (true, false) => None,
            (false, _) => Some(len),
        })
    }
    fn set_len_durably(&self, len: u64) -> io::Result<()> {
        let mut s = self.state.lock().unwrap();
        s.change()?;
        s.current.resize(len as usize, 0);
        s.durable = s.current.clone();
        s.pending.clear();
        Ok(())
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.state.lock().unwrap().current.len() as u64)
    }
    fn space(&self) -> io::Result<(u64, u64)> {
        Ok((1 << 40, 1 << 40))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_power_cut_keeps_synced_writes_and_the_picked_unsynced_ones() {
        let d = SimDisk::new(16);
        d.write_at(&[1; 4], 0).unwrap();
        d.sync().unwrap();
        d.write_at(&[2; 4], 4).unwrap();
        d.write_at(&[3; 4], 8).unwrap();
        let cut = d.power_cut(|i| i == 1);
        let mut back = [0u8; 12];
        cut.read_at(&mut back, 0).unwrap();
        assert_eq!(back, [1, 1, 1, 1, 0, 0, 0, 0, 3, 3, 3, 3]);
        assert_eq!(d.power_cuts().len(), 2 + 3 * 2);
    }

    #[test]
    fn with_the_power_off_nothing_changes_any_more() {
        let d = SimDisk::new(8);
        d.power_off_after(1);
        d.write_at(&[1; 4], 0).unwrap();
        assert!(d.is_off());
        assert!(d.sync().is_err());
        assert!(d.write_at(&[2; 4], 4).is_err());
        assert!(d.set_len_durably(16).is_err());
        assert_eq!(d.unsynced(), 1);
        let mut back = [0u8; 8];
        d.power_cut(|_| true).read_at(&mut back, 0).unwrap();
        assert_eq!(back, [1, 1, 1, 1, 0, 0, 0, 0]);
    }
}
