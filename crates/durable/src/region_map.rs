//! A bitmap of fixed-size regions of a volume, in memory and on a backing:
//! the one format in which Tandem keeps every set of regions that must
//! survive a crash (the store's dirty regions, the replica's activity log,
//! a primary's map of what each peer misses).
//!
//! Marks reach the disk in one of two ways, chosen by the caller per map:
//! - durably, before the write they cover is issued ([`RegionMap::enter`],
//!   then [`RegionMap::mark`] when a region was clean): one sync, shared by
//!   every writer waiting at that moment; a region already marked costs a
//!   few atomic bit operations and no I/O. Regions quiet for a whole epoch
//!   are cleared lazily ([`RegionMap::quiet`], [`RegionMap::clear`]).
//! - in memory first ([`RegionMap::set`], lock-free), made durable in bulk
//!   by [`RegionMap::save`] at the point the caller needs them durable.
//!
//! File layout: page 0 is the header (magic `TNDMDRTY`, version, region
//! shift, state, a 16-byte tag the owner may use, little endian); from byte
//! 4096 on, bit `r % 8` of byte `r / 8` is region `r`. The file is written a
//! 4 KiB page at a time, each page built from the bits in memory, so a torn
//! page write can only leave a sector with its old or new bits: a mark made
//! durable before is in both, a mark cleared may come back (costing a
//! needless recheck or copy, never a missed one).

use std::collections::BTreeSet;
use std::io;
use std::ops::{Range, RangeInclusive};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use crate::backing::Backing;

const MAGIC: &[u8; 8] = b"TNDMDRTY";
const VERSION: u32 = 1;
const PAGE: u64 = 4096;
const WORDS_PER_PAGE: usize = (PAGE / 8) as usize;
/// Header state: every region clean, whatever the bit area holds (a clean
/// shutdown, or a map not yet started).
const CLEAN: u32 = 0;
/// Header state: in use; the bit area says which regions are marked.
const IN_USE: u32 = 1;
/// Region sizes a map accepts, as powers of two (4 KiB to 1 TiB).
const SHIFTS: RangeInclusive<u32> = 12..=40;

/// Length of the map file for `regions` regions.
fn file_len(regions: u64) -> u64 {
    PAGE + pages(regions) as u64 * PAGE
}

/// Pages of the bit area for `regions` regions.
fn pages(regions: u64) -> usize {
    (regions.div_ceil(64) as usize)
        .div_ceil(WORDS_PER_PAGE)
        .max(1)
}

/// Regions of `1 << shift` bytes covering `size` bytes.
fn regions_of(size: u64, shift: u32) -> u64 {
    size.div_ceil(1 << shift)
}

fn header(region_shift: u32, state: u32, tag: &[u8; 16]) -> Vec<u8> {
    let mut h = vec![0u8; PAGE as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&region_shift.to_le_bytes());
    h[16..20].copy_from_slice(&state.to_le_bytes());
    h[20..36].copy_from_slice(tag);
    h
}

/// The bits of word `w` that stand for one of `regions` regions.
fn valid(w: usize, regions: u64) -> u64 {
    match regions.saturating_sub(w as u64 * 64) {
        n if n >= 64 => u64::MAX,
        n => (1 << n) - 1,
    }
}

struct Bits {
    regions: u64,
    /// Regions marked. With durable marking, only regions marked on disk.
    marked: Vec<AtomicU64>,
    /// Regions a write-like operation entered since the current epoch began.
    touched: Vec<AtomicU64>,
}

impl Bits {
    fn new(regions: u64) -> Bits {
        let mut bits = Bits {
            regions: 0,
            marked: Vec::new(),
            touched: Vec::new(),
        };
        bits.extend(regions);
        bits
    }

    fn extend(&mut self, regions: u64) {
        let words = regions.div_ceil(64) as usize;
        while self.marked.len() < words {
            self.marked.push(AtomicU64::new(0));
            self.touched.push(AtomicU64::new(0));
        }
        self.regions = self.regions.max(regions);
    }

    /// Regions `first..=last`, cut at the end of the map.
    fn span(&self, first: u64, last: u64) -> Range<u64> {
        first..last.saturating_add(1).min(self.regions)
    }

    fn is_marked(&self, r: u64) -> bool {
        self.marked[(r / 64) as usize].load(Ordering::SeqCst) & (1 << (r % 64)) != 0
    }

    /// Notes region `r` as entered in this epoch; returns its word and bit.
    fn touch(&self, r: u64) -> (usize, u64) {
        let (w, m) = ((r / 64) as usize, 1u64 << (r % 64));
        if self.touched[w].load(Ordering::Relaxed) & m == 0 {
            self.touched[w].fetch_or(m, Ordering::SeqCst);
        }
        (w, m)
    }

    /// Page `page` of the bit area, as it goes to disk.
    fn page(&self, page: usize) -> Vec<u8> {
        let mut out = vec![0u8; PAGE as usize];
        let words = self.marked.iter().skip(page * WORDS_PER_PAGE);
        for (i, w) in words.take(WORDS_PER_PAGE).enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&w.load(Ordering::SeqCst).to_le_bytes());
        }
        out
    }
}

/// A region bitmap of a volume, in memory and on its backing.
pub struct RegionMap<B: Backing> {
    file: B,
    region_shift: u32,
    /// Length of the runs a sequential write stream marks at once.
    ahead: u64,
    bits: RwLock<Bits>,
    /// Serializes writes of the backing; holds its length, known durable.
    io: Mutex<u64>,
    /// Regions waiting to be marked: whoever holds `io` next marks them all
    /// with one sync (group commit).
    pending: Mutex<Vec<u64>>,
    /// Marks set or cleared in memory since the last [`RegionMap::save`].
    unsaved: AtomicBool,
    tag: Mutex<[u8; 16]>,
}

/// What opening a map found.
pub enum Opened<B: Backing> {
    /// A valid map, its marks loaded.
    Map(RegionMap<B>),
    /// No valid map (none was ever written, or a damaged header): the
    /// backing is handed back so the owner can rebuild what it protects and
    /// create a map.
    Missing(B),
}

/// The regions of a map that no write entered during an epoch (see
/// [`RegionMap::quiet`]), as (word, mask) pairs.
#[derive(Debug, PartialEq, Eq)]
pub struct Quiet(Vec<(usize, u64)>);

impl Quiet {
    /// Whether no region was quiet.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether region `r` was quiet.
    pub fn contains(&self, r: u64) -> bool {
        self.0
            .iter()
            .any(|&(w, m)| w as u64 == r / 64 && m & (1 << (r % 64)) != 0)
    }
}

impl<B: Backing> RegionMap<B> {
    /// Writes a fresh map, every region clean, for a volume of `size` bytes
    /// in regions of `1 << region_shift` bytes, durably.
    pub fn create(file: &B, size: u64, region_shift: u32) -> io::Result<()> {
        assert!(
            SHIFTS.contains(&region_shift),
            "region size 2^{region_shift} is out of range"
        );
        let regions = regions_of(size, region_shift);
        // Cut to the header first: no bit of an older map survives.
        file.set_len_durably(PAGE)?;
        file.set_len_durably(file_len(regions))?;
        file.write_at(&header(region_shift, CLEAN, &[0; 16]), 0)?;
        // Durability point: the map exists before anything relies on it.
        file.sync()
    }

    /// Reads the map of a volume of `size` bytes, its marks and its tag.
    /// A map stopped cleanly has no marks; a bit area cut short (a crash
    /// while growing) cannot say which regions are clean, so all are marked.
    pub fn open(file: B, size: u64) -> io::Result<Opened<B>> {
        let mut h = vec![0u8; PAGE as usize];
        if file.read_at(&mut h, 0).is_err() || &h[..8] != MAGIC {
            return Ok(Opened::Missing(file));
        }
        let word = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().expect("4 bytes"));
        let (version, region_shift, state) = (word(8), word(12), word(16));
        if version != VERSION || !SHIFTS.contains(&region_shift) {
            return Ok(Opened::Missing(file));
        }
        let regions = regions_of(size, region_shift);
        let len = file_len(regions);
        let bits = Bits::new(regions);
        if state != CLEAN {
            let mut area = vec![0u8; (len - PAGE) as usize];
            let whole = file.read_at(&mut area, PAGE).is_ok();
            for (w, marked) in bits.marked.iter().enumerate() {
                let on_disk = match whole {
                    true => u64::from_le_bytes(area[w * 8..w * 8 + 8].try_into().expect("8 bytes")),
                    false => u64::MAX,
                };
                marked.store(on_disk & valid(w, regions), Ordering::Relaxed);
            }
        }
        let tag: [u8; 16] = h[20..36].try_into().expect("16 bytes");
        let mut have = file.size()?;
        if have < len {
            file.set_len_durably(len)?;
            have = len;
        }
        Ok(Opened::Map(RegionMap {
            file,
            region_shift,
            ahead: 0,
            bits: RwLock::new(bits),
            io: Mutex::new(have),
            pending: Mutex::new(Vec::new()),
            unsaved: AtomicBool::new(false),
            tag: Mutex::new(tag),
        }))
    }

    /// Makes [`RegionMap::mark`] mark regions in runs of `regions` when the
    /// region before is marked already (a write stream moving forward), so
    /// that the stream pays one sync per run instead of one per region.
    pub fn mark_ahead(mut self, regions: u64) -> Self {
        self.ahead = regions;
        self
    }

    /// Region size as a power of two.
    pub fn region_shift(&self) -> u32 {
        self.region_shift
    }

    /// Bytes per region.
    pub fn region_bytes(&self) -> u64 {
        1 << self.region_shift
    }

    /// Number of regions.
    pub fn regions(&self) -> u64 {
        self.bits.read().unwrap().regions
    }

    /// The backing the map lives on.
    pub fn backing(&self) -> &B {
        &self.file
    }

    /// Marks the map in use with every region clean: called once whatever
    /// the marks of the last run protected has been dealt with.
    pub fn start(&self) -> io::Result<()> {
        self.reset(IN_USE)
    }

    /// After a clean shutdown (nothing the marks protect is left unsynced,
    /// no writes left): every region clean and the header says so.
    pub fn close_clean(&self) -> io::Result<()> {
        self.reset(CLEAN)
    }

    fn reset(&self, state: u32) -> io::Result<()> {
        let mut len = self.io.lock().unwrap();
        let bits = self.bits.read().unwrap();
        for w in &bits.marked {
            w.store(0, Ordering::SeqCst);
        }
        self.cover(&mut len, bits.regions)?;
        self.file
            .punch_hole(PAGE, pages(bits.regions) as u64 * PAGE)?;
        self.file
            .write_at(&header(self.region_shift, state, &self.tag()), 0)?;
        // Durability point: the cleared bits and the state reach the disk together.
        self.file.sync()?;
        self.unsaved.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Makes the backing long enough for `regions` regions, durably.
    fn cover(&self, len: &mut u64, regions: u64) -> io::Result<()> {
        let want = file_len(regions);
        if *len < want {
            self.file.set_len_durably(want)?;
            *len = want;
        }
        Ok(())
    }

    /// Notes that a write-like operation enters regions `first..=last`.
    /// Returns true when all of them are marked already (durably, on a map
    /// marked only through [`RegionMap::mark`]): the hot path, a few atomic
    /// bit operations and no I/O.
    pub fn enter(&self, first: u64, last: u64) -> bool {
        let bits = self.bits.read().unwrap();
        let mut all = true;
        for r in bits.span(first, last) {
            let (w, m) = bits.touch(r);
            // Read after the touch (SeqCst on both sides): a clear racing
            // with it either sees the touch and keeps the region marked, or
            // this load sees the bit clear and the write marks it again.
            if bits.marked[w].load(Ordering::SeqCst) & m == 0 {
                all = false;
            }
        }
        all
    }

    /// Notes, as [`RegionMap::enter`] does, that regions `first..=last` were
    /// written in this epoch (e.g. when a write completes, so that a region
    /// stays marked for a whole epoch after its last write).
    pub fn touch(&self, first: u64, last: u64) {
        let bits = self.bits.read().unwrap();
        for r in bits.span(first, last) {
            bits.touch(r);
        }
    }

    /// Marks regions `first..=last` durably. Blocks on the map's sync;
    /// regions other writers are waiting for go along in the same sync.
    pub fn mark(&self, first: u64, last: u64) -> io::Result<()> {
        self.pending.lock().unwrap().extend(first..=last);
        let mut len = self.io.lock().unwrap();
        let mut want: Vec<u64> = std::mem::take(&mut *self.pending.lock().unwrap());
        // Ours again, in case an earlier holder took them and failed.
        want.extend(first..=last);
        let bits = self.bits.read().unwrap();
        if self.ahead > 0 && first > 0 && first <= bits.regions && bits.is_marked(first - 1) {
            // The region before is marked: most likely a stream moving forward.
            want.extend(last + 1..(last + self.ahead).min(bits.regions));
        }
        want.retain(|&r| r < bits.regions && !bits.is_marked(r));
        if want.is_empty() {
            return Ok(());
        }
        self.cover(&mut len, bits.regions)?;
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
        // Durability point: the regions are marked on disk before any write into them is issued.
        self.file.sync()?;
        for r in want {
            bits.marked[(r / 64) as usize].fetch_or(1 << (r % 64), Ordering::SeqCst);
        }
        Ok(())
    }

    /// Starts an epoch: forgets which regions were entered and returns those
    /// marked regions that no write entered during the epoch that ends.
    /// Regions written since the previous epoch began stay marked, so a
    /// region under steady writes pays no sync per epoch.
    pub fn quiet(&self) -> Quiet {
        let bits = self.bits.read().unwrap();
        let mut out = Vec::new();
        for (w, t) in bits.touched.iter().enumerate() {
            let old = t.swap(0, Ordering::SeqCst);
            let q = bits.marked[w].load(Ordering::SeqCst) & !old;
            if q != 0 {
                out.push((w, q));
            }
        }
        Quiet(out)
    }

    /// Clears, durably, the `quiet` regions that no write entered since
    /// [`RegionMap::quiet`], except those `keep` names. The caller has made
    /// durable whatever the marks of the quiet regions protected. A region
    /// a write enters while this runs stays marked.
    pub fn clear(&self, quiet: &Quiet, keep: impl Fn(u64) -> bool) -> io::Result<()> {
        let mut len = self.io.lock().unwrap();
        let bits = self.bits.read().unwrap();
        let mut pages = BTreeSet::new();
        for &(w, q) in &quiet.0 {
            let mut m = q & !bits.touched[w].load(Ordering::SeqCst);
            for b in 0..64 {
                if m & (1 << b) != 0 && keep(w as u64 * 64 + b) {
                    m &= !(1 << b);
                }
            }
            if m == 0 {
                continue;
            }
            bits.marked[w].fetch_and(!m, Ordering::SeqCst);
            // A write that touched the region meanwhile may have seen the bit
            // still set and gone ahead: the region stays marked.
            let late = bits.touched[w].load(Ordering::SeqCst) & m;
            if late != 0 {
                bits.marked[w].fetch_or(late, Ordering::SeqCst);
                m &= !late;
            }
            if m != 0 {
                pages.insert(w / WORDS_PER_PAGE);
            }
        }
        if pages.is_empty() {
            return Ok(());
        }
        self.cover(&mut len, bits.regions)?;
        for p in pages {
            self.file.write_at(&bits.page(p), PAGE + p as u64 * PAGE)?;
        }
        // Durability point: cleared bits are written lazily; losing them only costs a recheck.
        self.file.sync()
    }

    /// Marks regions `first..=last` in memory only, lock-free; true when one
    /// of them was clean. They are durable once a later [`RegionMap::save`]
    /// returns.
    pub fn set(&self, first: u64, last: u64) -> bool {
        let bits = self.bits.read().unwrap();
        let mut fresh = false;
        for r in bits.span(first, last) {
            let (w, m) = ((r / 64) as usize, 1u64 << (r % 64));
            if bits.marked[w].load(Ordering::Relaxed) & m == 0 {
                fresh |= bits.marked[w].fetch_or(m, Ordering::SeqCst) & m == 0;
            }
        }
        if fresh {
            self.unsaved.store(true, Ordering::SeqCst);
        }
        fresh
    }

    /// Clears region `r` in memory; the disk follows at the next save.
    pub fn unset(&self, r: u64) {
        let bits = self.bits.read().unwrap();
        if r < bits.regions {
            let m = 1u64 << (r % 64);
            if bits.marked[(r / 64) as usize].fetch_and(!m, Ordering::SeqCst) & m != 0 {
                self.unsaved.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Whether marks or the tag changed in memory since the last save.
    pub fn changed(&self) -> bool {
        self.unsaved.load(Ordering::SeqCst)
    }

    /// Writes the whole map (header, tag and every page of marks) and syncs
    /// it, in use. Every mark set before the call is durable when it
    /// returns `Ok`; one set while it runs is left for the next save.
    pub fn save(&self) -> io::Result<()> {
        let mut len = self.io.lock().unwrap();
        // Cleared before the snapshot: a mark set meanwhile flags it again.
        self.unsaved.store(false, Ordering::SeqCst);
        let written = (|| {
            let bits = self.bits.read().unwrap();
            self.cover(&mut len, bits.regions)?;
            self.file
                .write_at(&header(self.region_shift, IN_USE, &self.tag()), 0)?;
            for p in 0..pages(bits.regions) {
                self.file.write_at(&bits.page(p), PAGE + p as u64 * PAGE)?;
            }
            // Durability point: every mark set before the save is on disk when it returns.
            self.file.sync()
        })();
        if written.is_err() {
            self.unsaved.store(true, Ordering::SeqCst);
        }
        written
    }

    /// Whether region `r` is marked.
    pub fn is_marked(&self, r: u64) -> bool {
        let bits = self.bits.read().unwrap();
        r < bits.regions && bits.is_marked(r)
    }

    /// First marked region at or after `from`.
    pub fn next_marked(&self, from: u64) -> Option<u64> {
        let bits = self.bits.read().unwrap();
        let mut r = from;
        while r < bits.regions {
            let w = bits.marked[(r / 64) as usize].load(Ordering::SeqCst) >> (r % 64);
            if w != 0 {
                let found = r + w.trailing_zeros() as u64;
                return (found < bits.regions).then_some(found);
            }
            r = (r / 64 + 1) * 64;
        }
        None
    }

    /// Number of marked regions.
    pub fn count(&self) -> u64 {
        let bits = self.bits.read().unwrap();
        bits.marked
            .iter()
            .map(|w| w.load(Ordering::Relaxed).count_ones() as u64)
            .sum()
    }

    /// The marked regions, in order.
    pub fn marked(&self) -> Vec<u64> {
        let mut out = Vec::new();
        let mut r = 0;
        while let Some(m) = self.next_marked(r) {
            out.push(m);
            r = m + 1;
        }
        out
    }

    /// The 16-byte tag saved with the map (what the owner says it describes).
    pub fn tag(&self) -> [u8; 16] {
        *self.tag.lock().unwrap()
    }

    /// Sets the tag; it is written with the next save.
    pub fn set_tag(&self, tag: [u8; 16]) {
        *self.tag.lock().unwrap() = tag;
        self.unsaved.store(true, Ordering::SeqCst);
    }

    /// Extends the map in memory to cover a volume of `size` bytes (new
    /// regions clean); the backing grows with the next write of the map.
    pub fn extend(&self, size: u64) {
        let regions = regions_of(size, self.region_shift);
        let mut bits = self.bits.write().unwrap();
        if regions > bits.regions {
            bits.extend(regions);
            self.unsaved.store(true, Ordering::SeqCst);
        }
    }

    /// Grows the map to cover a volume of `size` bytes, the backing's new
    /// length durable when it returns.
    pub fn grow(&self, size: u64) -> io::Result<()> {
        let regions = regions_of(size, self.region_shift);
        let mut len = self.io.lock().unwrap();
        self.bits.write().unwrap().extend(regions);
        self.cover(&mut len, regions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{every_power_cut, SimDisk};
    use std::sync::Arc;

    const MIB: u64 = 1 << 20;

    fn opened<B: Backing>(disk: B, size: u64) -> RegionMap<B> {
        match RegionMap::open(disk, size).unwrap() {
            Opened::Map(map) => map,
            Opened::Missing(_) => panic!("no map"),
        }
    }

    /// A started map of 1 MiB regions over 100 MiB, as the store makes one.
    fn started(disk: SimDisk) -> SimDisk {
        RegionMap::create(&disk, 100 * MIB, 20).unwrap();
        let disk = Arc::new(disk);
        opened(disk.clone(), 100 * MIB).start().unwrap();
        Arc::try_unwrap(disk).ok().expect("one owner")
    }

    #[test]
    fn marked_regions_survive_a_power_cut_and_quiet_ones_are_cleared() {
        let map = opened(started(SimDisk::new(0)), 100 * MIB).mark_ahead(8);
        assert!(!map.enter(3, 4));
        map.mark(3, 4).unwrap();
        assert!(map.enter(3, 4));
        assert!(!map.enter(70, 70));
        map.mark(70, 70).unwrap();
        assert_eq!(map.marked(), vec![3, 4, 70]);

        // First epoch: all three were written in it, so they stay.
        assert!(map.quiet().is_empty());
        // Region 70 is written again; 3 and 4 stay quiet.
        assert!(map.enter(70, 70));
        let q = map.quiet();
        map.clear(&q, |_| false).unwrap();
        assert_eq!(map.marked(), vec![70]);

        let cut = map.backing().power_cut(|_| false);
        assert_eq!(opened(cut, 100 * MIB).marked(), vec![70]);
    }

    #[test]
    fn a_write_stream_marks_regions_ahead() {
        let map = opened(started(SimDisk::new(0)), 100 * MIB).mark_ahead(8);
        map.mark(4, 4).unwrap();
        assert_eq!(map.marked(), vec![4]);
        // Region 5 follows a marked one: the regions after it are marked with it.
        map.mark(5, 5).unwrap();
        assert_eq!(map.marked(), (4..=12).collect::<Vec<_>>());
        // Never beyond the end of the volume.
        map.mark(97, 97).unwrap();
        map.mark(98, 98).unwrap();
        assert_eq!(map.marked()[9..], [97, 98, 99]);
        // Without runs, only what is asked for.
        let plain = opened(started(SimDisk::new(0)), 100 * MIB);
        plain.mark(4, 4).unwrap();
        plain.mark(5, 5).unwrap();
        assert_eq!(plain.marked(), vec![4, 5]);
    }

    #[test]
    fn a_region_touched_during_the_clear_stays_marked() {
        let map = opened(started(SimDisk::new(0)), 10 * MIB);
        map.enter(1, 2);
        map.mark(1, 2).unwrap();
        map.quiet();
        let q = map.quiet();
        assert_eq!(q, Quiet(vec![(0, 0b110)]));
        assert!(map.enter(2, 2));
        map.clear(&q, |_| false).unwrap();
        assert_eq!(map.marked(), vec![2]);
        // What `keep` names stays too.
        let q = map.quiet();
        map.quiet();
        map.clear(&q, |r| r == 2).unwrap();
        assert_eq!(map.marked(), vec![2]);
    }

    #[test]
    fn a_clean_close_leaves_nothing_marked_and_garbage_is_missing() {
        let disk = Arc::new(started(SimDisk::new(0)));
        let map = opened(disk.clone(), 10 * MIB);
        map.mark(5, 5).unwrap();
        assert_eq!(
            opened(disk.power_cut(|_| false), 10 * MIB).marked(),
            vec![5]
        );
        map.close_clean().unwrap();
        assert!(opened(disk.power_cut(|_| false), 10 * MIB)
            .marked()
            .is_empty());
        assert!(matches!(
            RegionMap::open(SimDisk::new(8192), 10 * MIB).unwrap(),
            Opened::Missing(_)
        ));
    }

    #[test]
    fn a_bit_area_cut_short_marks_every_region() {
        let disk = Arc::new(started(SimDisk::new(0)));
        opened(disk.clone(), 10 * MIB).mark(1, 1).unwrap();
        // Grown to 40000 regions, but the crash came before the length did.
        let map = opened(disk.power_cut(|_| true), 40_000 * MIB);
        assert_eq!(map.count(), 40_000);
        assert_eq!(map.next_marked(39_999), Some(39_999));
        assert_eq!(map.next_marked(40_000), None);
    }

    #[test]
    fn growing_keeps_the_marks_and_covers_the_new_regions() {
        let disk = Arc::new(started(SimDisk::new(0)));
        let map = opened(disk.clone(), 10 * MIB);
        map.mark(9, 9).unwrap();
        map.grow(70_000 * MIB).unwrap();
        map.mark(69_999, 69_999).unwrap();
        // Extended in memory only: the next write of the map covers it.
        map.extend(100_000 * MIB);
        map.mark(99_999, 99_999).unwrap();
        let back = opened(disk.power_cut(|_| false), 100_000 * MIB);
        assert_eq!(back.marked(), vec![9, 69_999, 99_999]);
    }

    #[test]
    fn marks_set_in_memory_are_durable_once_saved_with_the_tag() {
        let disk = Arc::new(started(SimDisk::new(0)));
        let map = opened(disk.clone(), 10 * MIB);
        assert!(map.set(2, 3));
        assert!(!map.set(3, 3), "already marked");
        assert!(!map.set(500, 600), "beyond the end");
        map.set_tag([7; 16]);
        assert!(map.changed());
        assert!(opened(disk.power_cut(|_| true), 10 * MIB)
            .marked()
            .is_empty());
        map.save().unwrap();
        assert!(!map.changed());
        let back = opened(disk.power_cut(|_| false), 10 * MIB);
        assert_eq!(back.marked(), vec![2, 3]);
        assert_eq!(back.tag(), [7; 16]);
        map.unset(2);
        assert!(map.changed());
        assert_eq!(map.count(), 1);
    }

    /// Enters regions as a writer does (marking them when one is clean) and
    /// promises them once they are marked.
    fn enter(map: &RegionMap<Arc<SimDisk>>, promised: &mut BTreeSet<u64>, first: u64, last: u64) {
        if map.enter(first, last) || map.mark(first, last).is_ok() {
            promised.extend(first..=last);
        }
    }

    /// Regions 0..8 of 1 MiB. A region is promised once it is marked, and
    /// no longer once a clear that may drop it was started, unless a write
    /// entered it after the epoch began: a clear never loses that mark.
    #[test]
    fn durable_marks_survive_a_power_cut_at_any_point() {
        every_power_cut(
            || started(SimDisk::new(0)),
            |disk| {
                let map = opened(disk.clone(), 8 * MIB).mark_ahead(4);
                let mut promised = BTreeSet::new();
                enter(&map, &mut promised, 1, 2);
                enter(&map, &mut promised, 3, 3);
                enter(&map, &mut promised, 6, 6);
                map.quiet();
                enter(&map, &mut promised, 2, 2);
                let q = map.quiet();
                enter(&map, &mut promised, 6, 6);
                promised.retain(|&r| !q.contains(r) || r == 6);
                let _ = map.clear(&q, |_| false);
                enter(&map, &mut promised, 7, 7);
                promised
            },
            |cut, promised| {
                let back = opened(cut, 8 * MIB);
                for r in promised {
                    assert!(back.is_marked(*r), "region {r} lost: {:?}", back.marked());
                }
            },
        );
    }

    /// The scenario promises what was marked before a save that returned,
    /// unless it was cleared before that save; a mark made after a clear of
    /// the same region is promised with the next save.
    #[test]
    fn saved_marks_survive_a_power_cut_at_any_point() {
        every_power_cut(
            || started(SimDisk::new(0)),
            |disk| {
                let map = opened(disk.clone(), 8 * MIB);
                let mut promised = BTreeSet::new();
                map.set(1, 2);
                map.set(5, 5);
                if map.save().is_ok() {
                    promised.extend([1, 2, 5]);
                }
                map.unset(1);
                promised.remove(&1);
                // Cleared and marked again before the next save: never lost.
                map.unset(5);
                map.set(5, 5);
                map.set(7, 7);
                if map.save().is_ok() {
                    promised.insert(7);
                }
                promised
            },
            |cut, promised| {
                let back = opened(cut, 8 * MIB);
                for r in promised {
                    assert!(back.is_marked(*r), "region {r} lost: {:?}", back.marked());
                }
            },
        );
    }
}
