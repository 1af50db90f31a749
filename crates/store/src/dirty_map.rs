//! The durable dirty-region bitmap: which regions of a volume may hold writes
//! whose data and checksums disagree after a power cut (dm-integrity's
//! bitmap mode). A region is made durably dirty before the first write into
//! it is issued; flushes clear regions that stayed quiet; an open after an
//! unclean stop recomputes the checksums of every dirty region from the data.
//!
//! File layout: page 0 is the header (magic, version, region shift, state);
//! from byte 4096 on, bit `r % 8` of byte `r / 8` is region `r`. The file is
//! written a 4 KiB page at a time, each page built from the bits in memory,
//! so a torn page write can only leave a sector with its old or new bits,
//! both of which cover every region with a write in flight.

use std::collections::BTreeSet;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use crate::backing::Backing;

const MAGIC: &[u8; 8] = b"TNDMDRTY";
const VERSION: u32 = 1;
const PAGE: u64 = 4096;
const WORDS_PER_PAGE: usize = (PAGE / 8) as usize;
/// Header state: shut down cleanly, every region clean.
const CLEAN: u32 = 0;
/// Header state: in use; dirty bits may be set.
const IN_USE: u32 = 1;
/// Regions marked ahead of a sequential write stream, so that it pays one
/// bitmap sync per this many regions instead of one per region.
const AHEAD: u64 = 8;

/// Length of the bitmap file for `regions` regions.
fn file_len(regions: u64) -> u64 {
    PAGE + regions.div_ceil(8 * PAGE).max(1) * PAGE
}

/// Regions of `1 << shift` bytes covering `size` bytes.
fn regions_of(size: u64, shift: u32) -> u64 {
    size.div_ceil(1 << shift)
}

struct Bits {
    regions: u64,
    /// Regions durably marked dirty on disk.
    dirty: Vec<AtomicU64>,
    /// Regions a write-like operation entered since the current flush epoch began.
    touched: Vec<AtomicU64>,
}

impl Bits {
    fn new(regions: u64) -> Bits {
        let words = regions.div_ceil(64) as usize;
        Bits {
            regions,
            dirty: (0..words).map(|_| AtomicU64::new(0)).collect(),
            touched: (0..words).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Page `page` of the bit area, as it goes to disk.
    fn page(&self, page: usize) -> Vec<u8> {
        let mut out = vec![0u8; PAGE as usize];
        let words = self.dirty.iter().skip(page * WORDS_PER_PAGE);
        for (i, w) in words.take(WORDS_PER_PAGE).enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&w.load(Ordering::SeqCst).to_le_bytes());
        }
        out
    }
}

/// A volume's dirty-region bitmap, in memory and on its backing.
pub(crate) struct DirtyMap<B: Backing> {
    file: B,
    region_shift: u32,
    bits: RwLock<Bits>,
    /// Serializes writes of the bitmap file.
    io: Mutex<()>,
    /// Regions waiting to be marked dirty: whoever holds `io` next marks
    /// them all with one sync (group commit).
    pending: Mutex<Vec<u64>>,
}

/// What opening a bitmap found.
pub(crate) enum Opened<B: Backing> {
    /// A valid bitmap; `recover` lists the dirty regions of an unclean stop.
    Map { map: DirtyMap<B>, recover: Vec<u64> },
    /// No valid bitmap (a volume from before checksums, or a damaged
    /// header): every checksum must be rebuilt, then the map created.
    Missing(B),
}

fn header(region_shift: u32, state: u32) -> Vec<u8> {
    let mut h = vec![0u8; PAGE as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&region_shift.to_le_bytes());
    h[16..20].copy_from_slice(&state.to_le_bytes());
    h
}

impl<B: Backing> DirtyMap<B> {
    /// Writes a fresh, clean bitmap for a volume of `size` bytes in regions of
    /// `1 << region_shift` bytes, durably.
    pub(crate) fn create(file: &B, size: u64, region_shift: u32) -> io::Result<()> {
        let regions = regions_of(size, region_shift);
        file.set_len_durably(PAGE)?;
        file.set_len_durably(file_len(regions))?;
        file.write_at(&header(region_shift, CLEAN), 0)?;
        // Durability point: the map exists before anything relies on it.
        file.sync()
    }

    /// Reads the bitmap of a volume of `size` bytes.
    pub(crate) fn open(file: B, size: u64) -> io::Result<Opened<B>> {
        let mut h = vec![0u8; PAGE as usize];
        if file.read_at(&mut h, 0).is_err() || &h[..8] != MAGIC {
            return Ok(Opened::Missing(file));
        }
        let word = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().expect("4 bytes"));
        let (version, region_shift, state) = (word(8), word(12), word(16));
        if version != VERSION || !(12..=40).contains(&region_shift) {
            return Ok(Opened::Missing(file));
        }
        let regions = regions_of(size, region_shift);
        let len = file_len(regions);
        let mut recover = Vec::new();
        if state != CLEAN {
            let mut area = vec![0u8; (len - PAGE) as usize];
            // A bit area cut short (a crash while growing) cannot say which
            // regions are clean: all of them get rechecked.
            let whole = file.read_at(&mut area, PAGE).is_ok();
            for r in 0..regions {
                if !whole || area[(r / 8) as usize] & (1 << (r % 8)) != 0 {
                    recover.push(r);
                }
            }
        }
        if file.size()? < len {
            file.set_len_durably(len)?;
        }
        let map = DirtyMap {
            file,
            region_shift,
            bits: RwLock::new(Bits::new(regions)),
            io: Mutex::new(()),
            pending: Mutex::new(Vec::new()),
        };
        Ok(Opened::Map { map, recover })
    }

    /// Region size as a power of two.
    pub(crate) fn region_shift(&self) -> u32 {
        self.region_shift
    }

    /// Marks the map in use with every region clean: called once the
    /// checksums of any dirty region have been recomputed and made durable.
    pub(crate) fn start(&self) -> io::Result<()> {
        self.reset(IN_USE)
    }

    /// After a clean shutdown (data and checksums durable, no writes left):
    /// every region clean and the header says so.
    pub(crate) fn close_clean(&self) -> io::Result<()> {
        self.reset(CLEAN)
    }

    fn reset(&self, state: u32) -> io::Result<()> {
        let _io = self.io.lock().unwrap();
        let bits = self.bits.read().unwrap();
        for w in &bits.dirty {
            w.store(0, Ordering::SeqCst);
        }
        let len = (bits.dirty.len() as u64 * 8).div_ceil(PAGE) * PAGE;
        self.file.punch_hole(PAGE, len.max(PAGE))?;
        self.file.write_at(&header(self.region_shift, state), 0)?;
        // Durability point: the cleared bits and the state reach the disk together.
        self.file.sync()
    }

    /// Notes that a write-like operation enters regions `first..=last`.
    /// Returns true when all of them are durably dirty already: the hot path,
    /// a few atomic bit operations and no I/O.
    pub(crate) fn enter(&self, first: u64, last: u64) -> bool {
        let bits = self.bits.read().unwrap();
        let mut all = true;
        for r in first..=last {
            let (w, m) = ((r / 64) as usize, 1u64 << (r % 64));
            if bits.touched[w].load(Ordering::Relaxed) & m == 0 {
                bits.touched[w].fetch_or(m, Ordering::SeqCst);
            }
            // Read after the touch (SeqCst on both sides): a flush clearing
            // this bit either sees the touch and keeps the region dirty, or
            // this load sees the bit clear and the write marks it again.
            if bits.dirty[w].load(Ordering::SeqCst) & m == 0 {
                all = false;
            }
        }
        all
    }

    /// Makes regions `first..=last` durably dirty. Blocks on the bitmap's
    /// sync; regions other writers are waiting for go along in the same sync.
    pub(crate) fn mark(&self, first: u64, last: u64) -> io::Result<()> {
        self.pending.lock().unwrap().extend(first..=last);
        let _io = self.io.lock().unwrap();
        let mut want: Vec<u64> = std::mem::take(&mut *self.pending.lock().unwrap());
        // Ours again, in case an earlier holder took them and failed.
        want.extend(first..=last);
        let bits = self.bits.read().unwrap();
        let is_dirty =
            |r: u64| bits.dirty[(r / 64) as usize].load(Ordering::SeqCst) & (1 << (r % 64)) != 0;
        if first > 0 && is_dirty(first - 1) {
            // The region before is dirty: most likely a stream moving forward.
            want.extend(last + 1..(last + AHEAD).min(bits.regions));
        }
        want.retain(|&r| !is_dirty(r));
        if want.is_empty() {
            return Ok(());
        }
        let mut pages = BTreeSet::new();
        for &r in &want {
            pages.insert((r / 64) as usize / WORDS_PER_PAGE);
        }
        for &p in &pages {
            let mut page = bits.page(p);
            for &r in &want {
                let w = (r / 64) as usize;
                if w / WORDS_PER_PAGE == p {
                    let at = (w % WORDS_PER_PAGE) * 8 + ((r % 64) / 8) as usize;
                    page[at] |= 1 << (r % 8);
                }
            }
            self.file.write_at(&page, PAGE + p as u64 * PAGE)?;
        }
        // Durability point: the regions are dirty on disk before any write into them is issued.
        self.file.sync()?;
        for r in want {
            bits.dirty[(r / 64) as usize].fetch_or(1 << (r % 64), Ordering::SeqCst);
        }
        Ok(())
    }

    /// Starts a flush epoch: forgets which regions were written and returns
    /// those dirty regions that no write entered during the epoch that ends,
    /// as (word, mask) pairs. Regions written since the previous flush stay
    /// dirty, so a region under steady writes pays no bitmap sync per flush.
    pub(crate) fn quiet(&self) -> Vec<(usize, u64)> {
        let bits = self.bits.read().unwrap();
        let mut out = Vec::new();
        for (w, t) in bits.touched.iter().enumerate() {
            let old = t.swap(0, Ordering::SeqCst);
            let q = bits.dirty[w].load(Ordering::SeqCst) & !old;
            if q != 0 {
                out.push((w, q));
            }
        }
        out
    }

    /// Clears, durably, the `quiet` regions that no write entered since
    /// [`DirtyMap::quiet`], except those `keep` names. The caller has made
    /// every write issued before `quiet` durable.
    pub(crate) fn clear(
        &self,
        quiet: &[(usize, u64)],
        keep: impl Fn(u64) -> bool,
    ) -> io::Result<()> {
        let _io = self.io.lock().unwrap();
        let bits = self.bits.read().unwrap();
        let mut pages = BTreeSet::new();
        for &(w, q) in quiet {
            let mut m = q & !bits.touched[w].load(Ordering::SeqCst);
            for b in 0..64 {
                if m & (1 << b) != 0 && keep(w as u64 * 64 + b) {
                    m &= !(1 << b);
                }
            }
            if m == 0 {
                continue;
            }
            bits.dirty[w].fetch_and(!m, Ordering::SeqCst);
            // A write that touched the region meanwhile may have seen the bit
            // still set and gone ahead: the region stays dirty.
            let late = bits.touched[w].load(Ordering::SeqCst) & m;
            if late != 0 {
                bits.dirty[w].fetch_or(late, Ordering::SeqCst);
                m &= !late;
            }
            if m != 0 {
                pages.insert(w / WORDS_PER_PAGE);
            }
        }
        if pages.is_empty() {
            return Ok(());
        }
        for p in pages {
            self.file.write_at(&bits.page(p), PAGE + p as u64 * PAGE)?;
        }
        // Durability point: cleared bits are written lazily; losing them only costs a recheck.
        self.file.sync()
    }

    /// Grows the map to cover a volume of `size` bytes, durably.
    pub(crate) fn grow(&self, size: u64) -> io::Result<()> {
        let regions = regions_of(size, self.region_shift);
        let _io = self.io.lock().unwrap();
        let mut bits = self.bits.write().unwrap();
        let words = regions.div_ceil(64) as usize;
        bits.regions = regions;
        while bits.dirty.len() < words {
            bits.dirty.push(AtomicU64::new(0));
            bits.touched.push(AtomicU64::new(0));
        }
        self.file.set_len_durably(file_len(regions))
    }

    /// Dirty regions right now.
    #[cfg(test)]
    pub(crate) fn dirty_regions(&self) -> Vec<u64> {
        let bits = self.bits.read().unwrap();
        let mut out = Vec::new();
        for (w, d) in bits.dirty.iter().enumerate() {
            let d = d.load(Ordering::SeqCst);
            for b in 0..64 {
                if d & (1 << b) != 0 {
                    out.push(w as u64 * 64 + b);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SimDisk;

    fn opened<B: Backing>(disk: B, regions: u64) -> (DirtyMap<B>, Vec<u64>) {
        match DirtyMap::open(disk, regions).unwrap() {
            Opened::Map { map, recover } => (map, recover),
            Opened::Missing(_) => panic!("no map"),
        }
    }

    #[test]
    fn marked_regions_survive_a_power_cut_and_quiet_ones_are_cleared() {
        let disk = SimDisk::new(0);
        DirtyMap::create(&disk, 100 << 20, 20).unwrap();
        let (map, recover) = opened(disk, 100 << 20);
        assert!(recover.is_empty());
        map.start().unwrap();
        assert!(!map.enter(3, 4));
        map.mark(3, 4).unwrap();
        assert!(map.enter(3, 4));
        assert!(!map.enter(70, 70));
        map.mark(70, 70).unwrap();
        assert_eq!(map.dirty_regions(), vec![3, 4, 70]);

        // First flush: all three were written in this epoch, so they stay.
        let q = map.quiet();
        assert!(q.is_empty());
        // Region 70 is written again; 3 and 4 stay quiet.
        assert!(map.enter(70, 70));
        let q = map.quiet();
        map.clear(&q, |_| false).unwrap();
        assert_eq!(map.dirty_regions(), vec![70]);

        let cut = map.file.power_cut(|_| false);
        let (_, recover) = opened(cut, 100 << 20);
        assert_eq!(recover, vec![70]);
    }

    #[test]
    fn a_write_stream_marks_regions_ahead() {
        let disk = SimDisk::new(0);
        DirtyMap::create(&disk, 100 << 20, 20).unwrap();
        let (map, _) = opened(disk, 100 << 20);
        map.start().unwrap();
        map.mark(4, 4).unwrap();
        assert_eq!(map.dirty_regions(), vec![4]);
        // Region 5 follows a dirty one: the regions after it are marked with it.
        map.mark(5, 5).unwrap();
        assert_eq!(map.dirty_regions(), (4..=12).collect::<Vec<_>>());
        // Never beyond the end of the volume.
        map.mark(97, 97).unwrap();
        map.mark(98, 98).unwrap();
        assert_eq!(map.dirty_regions()[9..], [97, 98, 99]);
    }

    #[test]
    fn a_region_touched_during_the_flush_stays_dirty() {
        let disk = SimDisk::new(0);
        DirtyMap::create(&disk, 10 << 20, 20).unwrap();
        let (map, _) = opened(disk, 10 << 20);
        map.start().unwrap();
        map.enter(1, 2);
        map.mark(1, 2).unwrap();
        map.quiet();
        let q = map.quiet();
        assert_eq!(q, vec![(0, 0b110)]);
        assert!(map.enter(2, 2));
        map.clear(&q, |_| false).unwrap();
        assert_eq!(map.dirty_regions(), vec![2]);
    }

    #[test]
    fn a_clean_close_leaves_nothing_to_recover_and_garbage_is_missing() {
        let disk = std::sync::Arc::new(SimDisk::new(0));
        DirtyMap::create(&disk, 10 << 20, 20).unwrap();
        let (map, _) = opened(disk.clone(), 10 << 20);
        map.start().unwrap();
        map.mark(5, 5).unwrap();
        map.close_clean().unwrap();
        let (_, recover) = opened(disk.power_cut(|_| false), 10 << 20);
        assert!(recover.is_empty());
        assert!(matches!(
            DirtyMap::open(SimDisk::new(8192), 10 << 20).unwrap(),
            Opened::Missing(_)
        ));
    }
}
