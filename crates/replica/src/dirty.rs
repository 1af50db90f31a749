//! The replica's region bitmaps, both kept in the durability toolkit's
//! [`RegionMap`] format:
//! - [`DirtyMap`]: the regions a peer may miss. Marking is lock-free (one
//!   atomic OR, so the write path pays nothing when a region is already
//!   dirty); the marks are made durable in bulk by [`DirtyMap::persist`].
//! - [`ActivityLog`]: the regions this node writes as a primary, each marked
//!   durably before the first write into it is issued, cleared once quiet.
//!
//! A torn write of a map leaves each page either the old or the new
//! contents; callers only rely on marks being durable once they were
//! persisted (or marked, in the log), and on marks they cleared possibly
//! coming back (which costs a needless copy of a region, never a missed one).
//!
//! Maps written by older versions (`"TNDMDIRT" | version u32 | region u64 |
//! bits u64 | tag [16] | bitmap bytes`, big endian) are read, and replaced
//! atomically by a map in the current format, when loaded.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::RwLock;

use durable::{Backing, Opened, Quiet, RegionMap};

const LEGACY_MAGIC: &[u8; 8] = b"TNDMDIRT";
const LEGACY_VERSION: u32 = 1;
const LEGACY_HEADER: usize = 8 + 4 + 8 + 8 + 16;

fn invalid(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {what}", path.display()),
    )
}

/// The shift of `region`-byte regions.
fn shift_of(region: u64) -> io::Result<u32> {
    if region.is_power_of_two() && ((1 << 12)..=(1 << 40)).contains(&region) {
        return Ok(region.trailing_zeros());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("a region of {region} bytes is not a power of two from 4 KiB to 1 TiB"),
    ))
}

/// A new map on `file`, in use, every region clean.
fn fresh<B: Backing>(file: B, region: u64, volume_bytes: u64) -> io::Result<RegionMap<B>> {
    RegionMap::create(&file, volume_bytes, shift_of(region)?)?;
    let map = opened(file, volume_bytes)?;
    map.start()?;
    Ok(map)
}

fn opened<B: Backing>(file: B, volume_bytes: u64) -> io::Result<RegionMap<B>> {
    match RegionMap::open(file, volume_bytes)? {
        Opened::Map(map) => Ok(map),
        Opened::Missing(_) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a dirty-region bitmap",
        )),
    }
}

/// Creates the map file at `path` (replacing any): a new map, then
/// `prepare`d, durable under its name before it is returned.
fn create_file(
    path: &Path,
    region: u64,
    volume_bytes: u64,
    prepare: impl FnOnce(&RegionMap<File>) -> io::Result<()>,
) -> io::Result<RegionMap<File>> {
    Ok(durable::replace_with(path, 0o644, |f| {
        let map = fresh(f.try_clone()?, region, volume_bytes)?;
        prepare(&map)?;
        Ok(map)
    })?)
}

/// Loads the map file at `path` for a volume of `volume_bytes`; `Ok(None)`
/// when there is none. A map in the older layout is converted.
fn load_file(path: &Path, volume_bytes: u64) -> io::Result<Option<RegionMap<File>>> {
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut magic = [0u8; 8];
    if file.read_exact_at(&mut magic, 0).is_ok() && &magic == LEGACY_MAGIC {
        return convert(file, path, volume_bytes).map(Some);
    }
    match opened(file, volume_bytes) {
        Ok(map) => Ok(Some(map)),
        Err(e) => Err(invalid(path, &e.to_string())),
    }
}

/// Reads a map in the older layout and replaces it by the same marks and
/// tag in the current format.
fn convert(mut file: File, path: &Path, volume_bytes: u64) -> io::Result<RegionMap<File>> {
    let mut all = Vec::new();
    file.read_to_end(&mut all)?;
    if all.len() < LEGACY_HEADER {
        return Err(invalid(path, "truncated bitmap"));
    }
    let u64_at = |o: usize| u64::from_be_bytes(all[o..o + 8].try_into().expect("8 bytes"));
    if u32::from_be_bytes(all[8..12].try_into().expect("4 bytes")) != LEGACY_VERSION {
        return Err(invalid(path, "unknown bitmap version"));
    }
    let (region, nbits) = (u64_at(12), u64_at(20));
    let words = nbits.div_ceil(64) as usize;
    if region == 0 || all.len() < LEGACY_HEADER + words * 8 {
        return Err(invalid(path, "truncated bitmap"));
    }
    let tag: [u8; 16] = all[28..44].try_into().expect("16 bytes");
    let bytes = volume_bytes.max(nbits.saturating_mul(region));
    let map = create_file(path, region, bytes, |map| {
        map.set_tag(tag);
        let area = &all[LEGACY_HEADER..LEGACY_HEADER + words * 8];
        for (w, word) in area.chunks_exact(8).enumerate() {
            let mut bits = u64::from_be_bytes(word.try_into().expect("8 bytes"));
            while bits != 0 {
                let r = w as u64 * 64 + bits.trailing_zeros() as u64;
                if r < nbits {
                    map.set(r, r);
                }
                bits &= bits - 1;
            }
        }
        map.save()
    })?;
    tracing::info!(
        path = %path.display(),
        regions = map.count(),
        "dirty-region bitmap converted to the current format"
    );
    Ok(map)
}

/// Marked regions of `map` as merged byte ranges `(offset, len)`.
fn ranges_of<B: Backing>(map: &RegionMap<B>) -> Vec<(u64, u64)> {
    let region = map.region_bytes();
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut r = 0;
    while let Some(s) = map.next_marked(r) {
        let off = s * region;
        match out.last_mut() {
            Some((o, l)) if *o + *l == off => *l += region,
            _ => out.push((off, region)),
        }
        r = s + 1;
    }
    out
}

/// A bitmap of the regions a peer may miss, kept in a file (or any backing).
pub struct DirtyMap<B: Backing = File> {
    map: RegionMap<B>,
}

impl<B: Backing> std::fmt::Debug for DirtyMap<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirtyMap")
            .field("region", &self.region_bytes())
            .field("regions", &self.regions())
            .field("dirty", &self.count())
            .finish()
    }
}

impl DirtyMap {
    /// A new all-clean map of `region`-byte regions over `volume_bytes`, in
    /// a new file at `path` (replacing any), durable when it returns.
    pub fn create(path: &Path, region: u64, volume_bytes: u64) -> io::Result<DirtyMap> {
        let map = create_file(path, region, volume_bytes, |_| Ok(()))?;
        Ok(DirtyMap { map })
    }

    /// Loads a map saved by [`DirtyMap::persist`], grown to `volume_bytes`;
    /// `Ok(None)` when there is no file.
    pub fn load(path: &Path, volume_bytes: u64) -> io::Result<Option<DirtyMap>> {
        Ok(load_file(path, volume_bytes)?.map(|map| DirtyMap { map }))
    }
}

impl<B: Backing> DirtyMap<B> {
    /// A new all-clean map of `region`-byte regions over `volume_bytes` on
    /// `file` (e.g. a simulated disk).
    pub fn over(file: B, region: u64, volume_bytes: u64) -> io::Result<DirtyMap<B>> {
        Ok(DirtyMap {
            map: fresh(file, region, volume_bytes)?,
        })
    }

    /// The map saved on `file`, grown to `volume_bytes`.
    pub fn open(file: B, volume_bytes: u64) -> io::Result<DirtyMap<B>> {
        Ok(DirtyMap {
            map: opened(file, volume_bytes)?,
        })
    }

    /// Bytes per region.
    pub fn region_bytes(&self) -> u64 {
        self.map.region_bytes()
    }

    /// Number of regions.
    pub fn regions(&self) -> u64 {
        self.map.regions()
    }

    /// Extends the map to cover `volume_bytes` (new regions clean).
    pub fn grow(&self, volume_bytes: u64) {
        self.map.extend(volume_bytes);
    }

    /// The 16-byte tag saved with the map (the copy it describes).
    pub fn tag(&self) -> [u8; 16] {
        self.map.tag()
    }

    /// Sets the tag saved with the map.
    pub fn set_tag(&self, tag: [u8; 16]) {
        self.map.set_tag(tag);
    }

    /// Marks every region touched by `len` bytes at byte `offset`; true when
    /// one of them was clean before.
    pub fn mark(&self, offset: u64, len: u64) -> bool {
        if len == 0 {
            return false;
        }
        let shift = self.map.region_shift();
        self.map.set(offset >> shift, (offset + len - 1) >> shift)
    }

    /// Marks the whole volume.
    pub fn mark_all(&self) {
        self.map.set(0, u64::MAX);
    }

    /// Whether region `r` is marked.
    pub fn is_set(&self, r: u64) -> bool {
        self.map.is_marked(r)
    }

    /// Clears region `r`.
    pub fn clear(&self, r: u64) {
        self.map.unset(r);
    }

    /// First marked region at or after `from`.
    pub fn next_set(&self, from: u64) -> Option<u64> {
        self.map.next_marked(from)
    }

    /// Number of marked regions.
    pub fn count(&self) -> u64 {
        self.map.count()
    }

    /// Marked regions as merged byte ranges `(offset, len)`.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        ranges_of(&self.map)
    }

    /// Marks the regions of byte ranges from another map (or a peer).
    pub fn mark_ranges(&self, ranges: &[(u64, u64)]) {
        let size = self.regions() * self.region_bytes();
        for &(off, len) in ranges {
            let end = off.saturating_add(len).min(size);
            if end > off {
                self.mark(off, end - off);
            }
        }
    }

    /// Whether the map changed since it was last persisted.
    pub fn changed(&self) -> bool {
        self.map.changed()
    }

    /// Writes the map and syncs it (blocking). Every mark set before the
    /// call is durable when it returns `Ok`.
    pub fn persist(&self) -> io::Result<()> {
        self.map.save()
    }
}

/// The activity log of a copy: the regions this node writes as a primary,
/// each marked durably before the first write into it is issued. A region
/// is cleared once it had no write in flight and none entered or completed
/// for a whole sweep, after what records its writes elsewhere is durable.
pub struct ActivityLog<B: Backing = File> {
    map: RegionMap<B>,
    /// Writes in flight per region: a region with one is never cleared.
    in_flight: RwLock<Vec<AtomicU32>>,
    /// Regions kept marked whatever a sweep finds (see
    /// [`ActivityLog::pin`]).
    pinned: std::sync::Mutex<std::collections::BTreeSet<u64>>,
}

impl ActivityLog {
    /// The log in the file at `path`, with the marks of the last run; a new
    /// one of `region`-byte regions over `volume_bytes` when there is none.
    pub fn open(path: &Path, region: u64, volume_bytes: u64) -> io::Result<ActivityLog> {
        let map = match load_file(path, volume_bytes)? {
            Some(map) => map,
            None => create_file(path, region, volume_bytes, |_| Ok(()))?,
        };
        Ok(ActivityLog::with(map))
    }
}

impl<B: Backing> ActivityLog<B> {
    fn with(map: RegionMap<B>) -> ActivityLog<B> {
        let counts = (0..map.regions()).map(|_| AtomicU32::new(0)).collect();
        ActivityLog {
            map,
            in_flight: RwLock::new(counts),
            pinned: Default::default(),
        }
    }

    /// A new log of `region`-byte regions over `volume_bytes` on `file`
    /// (e.g. a simulated disk), every region clean.
    #[cfg(test)]
    pub fn over(file: B, region: u64, volume_bytes: u64) -> io::Result<ActivityLog<B>> {
        Ok(ActivityLog::with(fresh(file, region, volume_bytes)?))
    }

    /// The log saved on `file`, with its marks, as a restart finds it.
    #[cfg(test)]
    pub fn reopen(file: B, volume_bytes: u64) -> io::Result<ActivityLog<B>> {
        Ok(ActivityLog::with(opened(file, volume_bytes)?))
    }

    /// Number of marked regions.
    pub fn count(&self) -> u64 {
        self.map.count()
    }

    /// Marked regions, as byte ranges.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        ranges_of(&self.map)
    }

    /// Counts a write of `len` bytes at byte `offset` in flight until the
    /// guard drops. When [`ActivityGuard::marked`] is false, its regions
    /// must be marked ([`ActivityLog::mark`]) before the write is issued.
    /// The hot path: a few atomic operations and no I/O.
    pub fn enter(&self, offset: u64, len: u64) -> ActivityGuard<'_, B> {
        let shift = self.map.region_shift();
        let first = offset >> shift;
        let last = (offset + len.max(1) - 1) >> shift;
        {
            let counts = self.in_flight.read().unwrap();
            for r in first..=last {
                if let Some(c) = counts.get(r as usize) {
                    c.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
        // Counted before the map is asked: a sweep that finds the region
        // quiet meanwhile sees the write in flight and keeps it.
        let marked = self.map.enter(first, last);
        ActivityGuard {
            log: self,
            first,
            last,
            marked,
        }
    }

    /// Marks regions `first..=last` durably (blocking; one sync shared with
    /// other writers waiting).
    pub fn mark(&self, first: u64, last: u64) -> io::Result<()> {
        self.map.mark(first, last)
    }

    /// Starts a sweep: the marked regions no write entered or completed
    /// since the previous sweep.
    pub fn quiet(&self) -> Quiet {
        self.map.quiet()
    }

    /// Clears the `quiet` regions, durably (blocking), but for those a write
    /// entered since or still has in flight, and those pinned. The caller
    /// has made durable whatever the log's marks protect for those regions.
    pub fn clear(&self, quiet: &Quiet) -> io::Result<()> {
        let counts = self.in_flight.read().unwrap();
        let pinned = self.pinned.lock().unwrap().clone();
        self.map.clear(quiet, |r| {
            pinned.contains(&r)
                || counts
                    .get(r as usize)
                    .is_some_and(|c| c.load(Ordering::Acquire) > 0)
        })
    }

    /// Keeps every region marked now marked until [`ActivityLog::unpin`],
    /// whatever later sweeps find: the disk failed a write or a sync, and
    /// what was written there but not yet known durable may be gone even
    /// once a later sync succeeds (Linux drops the pages a failed
    /// writeback leaves and reports that once).
    pub fn pin(&self) {
        let mut pinned = self.pinned.lock().unwrap();
        let mut r = 0;
        while let Some(m) = self.map.next_marked(r) {
            pinned.insert(m);
            r = m + 1;
        }
    }

    /// Whether regions are pinned.
    pub fn pinned(&self) -> bool {
        !self.pinned.lock().unwrap().is_empty()
    }

    /// Lets sweeps clear the pinned regions again: they were handed to
    /// whoever copies them back.
    pub fn unpin(&self) {
        self.pinned.lock().unwrap().clear();
    }

    /// Extends the log after the volume grew to `volume_bytes`.
    pub fn grow(&self, volume_bytes: u64) {
        // The counts grow first, under their lock, so a write into a new
        // region is counted in flight from the moment the map has it (and
        // its guard never takes one from a count it did not add to).
        let mut counts = self.in_flight.write().unwrap();
        let region = 1u64 << self.map.region_shift();
        let regions = volume_bytes.div_ceil(region);
        while (counts.len() as u64) < regions {
            counts.push(AtomicU32::new(0));
        }
        self.map.extend(volume_bytes);
    }
}

/// Counts a primary's write in flight in the activity log.
pub struct ActivityGuard<'a, B: Backing = File> {
    log: &'a ActivityLog<B>,
    first: u64,
    last: u64,
    marked: bool,
}

impl<B: Backing> ActivityGuard<'_, B> {
    /// Whether the write's regions were marked already.
    pub fn marked(&self) -> bool {
        self.marked
    }

    /// The write's regions, first and last.
    pub fn regions(&self) -> (u64, u64) {
        (self.first, self.last)
    }
}

impl<B: Backing> Drop for ActivityGuard<'_, B> {
    fn drop(&mut self) {
        // The grace sweep counts from completion.
        self.log.map.touch(self.first, self.last);
        let counts = self.log.in_flight.read().unwrap();
        for r in self.first..=self.last {
            if let Some(c) = counts.get(r as usize) {
                c.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use durable::{every_power_cut, SimDisk};
    use std::collections::BTreeSet;
    use std::sync::Arc;

    const MIB: u64 = 1 << 20;

    #[test]
    fn marks_clears_and_merges_ranges() {
        let m = DirtyMap::over(SimDisk::new(0), 1 << 20, 10 << 20).unwrap();
        assert_eq!(m.regions(), 10);
        assert!(m.mark(512, 4096));
        assert!(!m.mark(0, 1), "already dirty");
        assert!(m.mark((2 << 20) - 1, 2), "spans regions 1 and 2");
        assert_eq!(m.count(), 3);
        assert_eq!(m.ranges(), vec![(0, 3 << 20)]);
        m.clear(1);
        assert_eq!(m.ranges(), vec![(0, 1 << 20), (2 << 20, 1 << 20)]);
        assert_eq!(m.next_set(1), Some(2));
        assert_eq!(m.next_set(3), None);
        m.mark((100 << 20) - 1, 1);
        assert_eq!(m.count(), 2, "marks past the end are ignored");
    }

    #[test]
    fn next_set_crosses_words_and_stops_at_the_end() {
        let m = DirtyMap::over(SimDisk::new(0), 4096, 4096 * 200).unwrap();
        m.mark(4096 * 130, 1);
        assert_eq!(m.next_set(0), Some(130));
        assert_eq!(m.next_set(131), None);
        m.mark_all();
        assert_eq!(m.count(), 200);
        m.grow(4096 * 300);
        assert_eq!(m.regions(), 300);
        assert_eq!(m.count(), 200, "grown regions start clean");
    }

    #[test]
    fn persists_and_loads_with_tag() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("peer.dirty");
        let m = DirtyMap::create(&p, 65536, 1 << 30).unwrap();
        m.mark(65536 * 7, 10);
        m.mark(1 << 29, 65536 * 3);
        m.set_tag([9; 16]);
        m.persist().unwrap();
        assert!(!m.changed());
        let back = DirtyMap::load(&p, 1 << 30).unwrap().unwrap();
        assert_eq!(back.ranges(), m.ranges());
        assert_eq!(back.tag(), [9; 16]);
        m.clear(7);
        m.persist().unwrap();
        let back = DirtyMap::load(&p, 2 << 30).unwrap().unwrap();
        assert_eq!(back.count(), 3);
        assert_eq!(back.regions(), (2u64 << 30) / 65536);
        assert!(DirtyMap::load(&dir.path().join("none"), 1)
            .unwrap()
            .is_none());
        std::fs::write(&p, b"garbage").unwrap();
        assert!(DirtyMap::load(&p, 1).is_err());
    }

    /// A map as older versions wrote it.
    fn legacy(region: u64, nbits: u64, tag: [u8; 16], set: &[u64]) -> Vec<u8> {
        let mut words = vec![0u64; nbits.div_ceil(64) as usize];
        for &r in set {
            words[(r / 64) as usize] |= 1 << (r % 64);
        }
        let mut out = LEGACY_MAGIC.to_vec();
        out.extend_from_slice(&LEGACY_VERSION.to_be_bytes());
        out.extend_from_slice(&region.to_be_bytes());
        out.extend_from_slice(&nbits.to_be_bytes());
        out.extend_from_slice(&tag);
        for w in words {
            out.extend_from_slice(&w.to_be_bytes());
        }
        out
    }

    #[test]
    fn maps_of_the_older_format_load_and_are_rewritten_in_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vol.peer-2.dirty");
        std::fs::write(&p, legacy(65536, 16384, [4; 16], &[0, 63, 64, 9000])).unwrap();
        let m = DirtyMap::load(&p, 1 << 30).unwrap().unwrap();
        assert_eq!(m.region_bytes(), 65536);
        assert_eq!(m.tag(), [4; 16]);
        let want = vec![(0, 65536), (65536 * 63, 65536 * 2), (65536 * 9000, 65536)];
        assert_eq!(m.ranges(), want);
        assert!(!m.changed(), "already written in the current format");
        let on_disk = std::fs::read(&p).unwrap();
        assert_eq!(&on_disk[..8], b"TNDMDRTY");
        // The rewritten file keeps working as a map: marks persist into it.
        m.mark(65536 * 100, 1);
        m.persist().unwrap();
        drop(m);
        let back = DirtyMap::load(&p, 1 << 30).unwrap().unwrap();
        assert_eq!(back.tag(), [4; 16]);
        assert_eq!(back.count(), 5);

        // The activity log, in 4 MiB regions, the same way.
        let a = dir.path().join("vol.activity");
        std::fs::write(&a, legacy(4 * MIB, 8, [0; 16], &[2, 7])).unwrap();
        let log = ActivityLog::open(&a, 4 * MIB, 32 * MIB).unwrap();
        assert_eq!(log.ranges(), vec![(8 * MIB, 4 * MIB), (28 * MIB, 4 * MIB)]);
        let log = ActivityLog::open(&a, 4 * MIB, 32 * MIB).unwrap();
        assert_eq!(log.count(), 2);
        assert_eq!(&std::fs::read(&a).unwrap()[..8], b"TNDMDRTY");
    }

    #[test]
    fn the_activity_log_keeps_busy_and_recent_regions_for_a_sweep() {
        let log = ActivityLog::over(SimDisk::new(0), 4 * MIB, 32 * MIB).unwrap();
        let g = log.enter(8 * MIB + 5, 4096);
        assert!(!g.marked());
        assert_eq!(g.regions(), (2, 2));
        log.mark(2, 2).unwrap();
        assert!(log.enter(8 * MIB, 1).marked());
        // Busy: stays however many sweeps pass.
        for _ in 0..3 {
            let q = log.quiet();
            log.clear(&q).unwrap();
        }
        assert_eq!(log.count(), 1);
        drop(g);
        // Completed during the last sweep: one more sweep of grace.
        let q = log.quiet();
        assert!(q.is_empty());
        let q = log.quiet();
        log.clear(&q).unwrap();
        assert_eq!(log.count(), 0);
        log.grow(64 * MIB);
        let g = log.enter(60 * MIB, 1);
        assert!(!g.marked());
        assert_eq!(g.regions(), (15, 15));
    }

    #[test]
    fn a_write_into_regions_the_log_just_grew_to_is_counted_and_released() {
        let log = ActivityLog::over(SimDisk::new(0), 4 * MIB, 32 * MIB).unwrap();
        log.grow(64 * MIB);
        let g = log.enter(60 * MIB, 1);
        log.mark(15, 15).unwrap();
        // In flight in a grown region: no sweep clears it.
        for _ in 0..3 {
            let q = log.quiet();
            log.clear(&q).unwrap();
        }
        assert_eq!(log.count(), 1);
        drop(g);
        // Its count went back to zero (not below): the region is quiet
        // again after the grace sweep.
        let q = log.quiet();
        log.clear(&q).unwrap();
        let q = log.quiet();
        log.clear(&q).unwrap();
        assert_eq!(log.count(), 0);
    }

    /// What a map reopened after a power cut must hold: every promised
    /// region of `region` bytes (with none promised, it may be missing).
    fn assert_kept(back: io::Result<Vec<(u64, u64)>>, region: u64, promised: &BTreeSet<u64>) {
        let Ok(ranges) = back else {
            assert!(promised.is_empty(), "no map, yet {promised:?} promised");
            return;
        };
        for r in promised {
            let at = r * region;
            assert!(
                ranges.iter().any(|&(o, l)| o <= at && at < o + l),
                "region {r} lost: {ranges:?}"
            );
        }
    }

    /// A region is promised once its write may be issued (the guard says it
    /// is marked, or marking it succeeded); a sweep forgets only regions no
    /// write was in flight in, entered or completed since the sweep began.
    #[test]
    fn the_activity_log_keeps_every_region_written_through_a_power_cut() {
        let region = 4 * MIB;
        every_power_cut(
            || SimDisk::new(0),
            |disk| {
                let mut promised = BTreeSet::new();
                let Ok(log) = ActivityLog::over(disk.clone(), region, 32 * MIB) else {
                    return promised;
                };
                let write = |promised: &mut BTreeSet<u64>, offset: u64, len: u64| {
                    let g = log.enter(offset, len);
                    let (first, last) = g.regions();
                    if g.marked() || log.mark(first, last).is_ok() {
                        promised.extend(first..=last);
                    }
                    g
                };
                drop(write(&mut promised, region + 5, region));
                let busy = write(&mut promised, 5 * region, 1);
                drop(write(&mut promised, 7 * region, 1));
                log.quiet();
                let q = log.quiet();
                // Entered between the start of the sweep and its clear.
                drop(write(&mut promised, 2 * region, 1));
                promised.retain(|&r| r == 2 || r == 5 || !q.contains(r));
                let _ = log.clear(&q);
                drop(busy);
                drop(write(&mut promised, 0, 1));
                promised
            },
            |cut, promised| {
                let back = ActivityLog::reopen(cut, 32 * MIB).map(|log| log.ranges());
                assert_kept(back, region, promised);
            },
        );
    }

    /// Marks of a peer's map are promised once persisted; a region cleared
    /// (resynced) and marked again before the next persist is never lost.
    #[test]
    fn a_peer_map_keeps_every_persisted_mark_through_a_power_cut() {
        every_power_cut(
            || SimDisk::new(0),
            |disk| {
                let mut promised = BTreeSet::new();
                let Ok(m) = DirtyMap::over(disk.clone(), 65536, 64 * MIB) else {
                    return promised;
                };
                m.mark(0, 3 * 65536);
                m.mark(700 * 65536, 1);
                m.set_tag([1; 16]);
                if m.persist().is_ok() {
                    promised.extend([0, 1, 2, 700]);
                }
                m.clear(0);
                promised.remove(&0);
                m.clear(700);
                m.mark(700 * 65536, 1);
                m.mark(1000 * 65536, 1);
                if m.persist().is_ok() {
                    promised.insert(1000);
                }
                promised
            },
            |cut, promised| {
                let back = DirtyMap::open(cut, 64 * MIB);
                if let (Ok(m), false) = (&back, promised.is_empty()) {
                    assert_eq!(m.tag(), [1; 16]);
                }
                assert_kept(back.map(|m| m.ranges()), 65536, promised);
            },
        );
    }

    #[test]
    fn shared_backings_work_for_both_maps() {
        let disk = Arc::new(SimDisk::new(0));
        let m = DirtyMap::over(disk.clone(), 65536, MIB).unwrap();
        m.mark(0, 1);
        m.persist().unwrap();
        assert_eq!(
            DirtyMap::open(disk.power_cut(|_| false), MIB)
                .unwrap()
                .count(),
            1
        );
    }
}
