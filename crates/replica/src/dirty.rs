//! Dirty-region bitmaps: which regions of a volume may differ between copies.
//!
//! One bit stands for `region` bytes. Setting bits is lock-free (one atomic
//! OR, so the write path pays nothing when a region is already dirty); a map
//! with a file can be made durable with [`DirtyMap::persist`], which rewrites
//! the file in place and syncs it.
//!
//! File layout: `"TNDMDIRT" | version u32 | region u64 | bits u64 | tag [16] |
//! bitmap bytes` (big endian). A torn rewrite leaves each page either the old
//! or the new contents; callers only rely on bits being durable after
//! `persist` returned, and on bits they cleared possibly coming back (which
//! costs a needless copy of a region, never a missed one).

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

const MAGIC: &[u8; 8] = b"TNDMDIRT";
const VERSION: u32 = 1;
const HEADER: usize = 8 + 4 + 8 + 8 + 16;

/// A bitmap of regions, optionally backed by a file.
pub struct DirtyMap {
    region: u64,
    bits: RwLock<Vec<AtomicU64>>,
    nbits: AtomicU64,
    tag: Mutex<[u8; 16]>,
    file: Option<PathBuf>,
    changed: AtomicBool,
    writing: Mutex<()>,
}

impl std::fmt::Debug for DirtyMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirtyMap")
            .field("region", &self.region)
            .field("regions", &self.regions())
            .field("dirty", &self.count())
            .finish()
    }
}

fn words(nbits: u64) -> usize {
    nbits.div_ceil(64) as usize
}

impl DirtyMap {
    /// An all-clean map of `region`-byte regions over `volume_bytes`, saved to `file` on persist.
    pub fn new(region: u64, volume_bytes: u64, file: Option<PathBuf>) -> DirtyMap {
        assert!(region > 0, "region size must be positive");
        let nbits = volume_bytes.div_ceil(region);
        DirtyMap {
            region,
            bits: RwLock::new((0..words(nbits)).map(|_| AtomicU64::new(0)).collect()),
            nbits: AtomicU64::new(nbits),
            tag: Mutex::new([0; 16]),
            file,
            changed: AtomicBool::new(true),
            writing: Mutex::new(()),
        }
    }

    /// Loads a map saved by [`DirtyMap::persist`], grown to `volume_bytes`;
    /// `Ok(None)` when there is no file.
    pub fn load(path: &Path, volume_bytes: u64) -> std::io::Result<Option<DirtyMap>> {
        let mut f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut all = Vec::new();
        f.read_to_end(&mut all)?;
        let bad = |what: &str| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {what}", path.display()),
            )
        };
        if all.len() < HEADER || &all[..8] != MAGIC {
            return Err(bad("not a dirty-region bitmap"));
        }
        let u64_at = |o: usize| u64::from_be_bytes(all[o..o + 8].try_into().expect("8 bytes"));
        if u32::from_be_bytes(all[8..12].try_into().expect("4 bytes")) != VERSION {
            return Err(bad("unknown bitmap version"));
        }
        let region = u64_at(12);
        let nbits = u64_at(20);
        if region == 0 || all.len() < HEADER + words(nbits) * 8 {
            return Err(bad("truncated bitmap"));
        }
        let map = DirtyMap::new(region, volume_bytes.max(nbits * region), Some(path.into()));
        *map.tag.lock().unwrap() = all[28..44].try_into().expect("16 bytes");
        {
            let bits = map.bits.read().unwrap();
            for (i, w) in all[HEADER..HEADER + words(nbits) * 8]
                .chunks_exact(8)
                .enumerate()
            {
                bits[i].store(
                    u64::from_be_bytes(w.try_into().expect("8 bytes")),
                    Ordering::Relaxed,
                );
            }
        }
        map.changed.store(false, Ordering::Relaxed);
        Ok(Some(map))
    }

    /// Bytes per region.
    pub fn region_bytes(&self) -> u64 {
        self.region
    }

    /// Number of regions.
    pub fn regions(&self) -> u64 {
        self.nbits.load(Ordering::Acquire)
    }

    /// Extends the map to cover `volume_bytes` (new regions clean).
    pub fn grow(&self, volume_bytes: u64) {
        let nbits = volume_bytes.div_ceil(self.region);
        let mut bits = self.bits.write().unwrap();
        while bits.len() < words(nbits) {
            bits.push(AtomicU64::new(0));
        }
        if nbits > self.nbits.load(Ordering::Acquire) {
            self.nbits.store(nbits, Ordering::Release);
            self.changed.store(true, Ordering::Release);
        }
    }

    /// The 16-byte tag saved with the map (the copy it describes).
    pub fn tag(&self) -> [u8; 16] {
        *self.tag.lock().unwrap()
    }

    /// Sets the tag saved with the map.
    pub fn set_tag(&self, tag: [u8; 16]) {
        *self.tag.lock().unwrap() = tag;
        self.changed.store(true, Ordering::Release);
    }

    /// Marks every region touched by `len` bytes at byte `offset`; true when
    /// one of them was clean before.
    pub fn mark(&self, offset: u64, len: u64) -> bool {
        if len == 0 {
            return false;
        }
        let first = offset / self.region;
        let last = ((offset + len - 1) / self.region).min(self.regions().saturating_sub(1));
        let bits = self.bits.read().unwrap();
        let mut fresh = false;
        for r in first..=last {
            let bit = 1u64 << (r % 64);
            let Some(word) = bits.get((r / 64) as usize) else {
                break;
            };
            if word.load(Ordering::Relaxed) & bit == 0 {
                fresh |= word.fetch_or(bit, Ordering::AcqRel) & bit == 0;
            }
        }
        if fresh {
            self.changed.store(true, Ordering::Release);
        }
        fresh
    }

    /// Marks the whole volume.
    pub fn mark_all(&self) {
        let n = self.regions();
        self.mark(0, n * self.region);
    }

    /// Whether region `r` is marked.
    pub fn is_set(&self, r: u64) -> bool {
        let bits = self.bits.read().unwrap();
        bits.get((r / 64) as usize)
            .is_some_and(|w| w.load(Ordering::Acquire) & (1 << (r % 64)) != 0)
    }

    /// Clears region `r`.
    pub fn clear(&self, r: u64) {
        let bits = self.bits.read().unwrap();
        if let Some(w) = bits.get((r / 64) as usize) {
            if w.fetch_and(!(1 << (r % 64)), Ordering::AcqRel) & (1 << (r % 64)) != 0 {
                self.changed.store(true, Ordering::Release);
            }
        }
    }

    /// First marked region at or after `from`.
    pub fn next_set(&self, from: u64) -> Option<u64> {
        let n = self.regions();
        let bits = self.bits.read().unwrap();
        let mut r = from;
        while r < n {
            let w = bits[(r / 64) as usize].load(Ordering::Acquire) >> (r % 64);
            if w != 0 {
                let found = r + w.trailing_zeros() as u64;
                return (found < n).then_some(found);
            }
            r = (r / 64 + 1) * 64;
        }
        None
    }

    /// Number of marked regions.
    pub fn count(&self) -> u64 {
        let bits = self.bits.read().unwrap();
        bits.iter()
            .map(|w| w.load(Ordering::Relaxed).count_ones() as u64)
            .sum()
    }

    /// Marked regions as merged byte ranges `(offset, len)`.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut r = 0;
        while let Some(s) = self.next_set(r) {
            let off = s * self.region;
            match out.last_mut() {
                Some((o, l)) if *o + *l == off => *l += self.region,
                _ => out.push((off, self.region)),
            }
            r = s + 1;
        }
        out
    }

    /// Marks the regions of byte ranges from another map (or a peer).
    pub fn mark_ranges(&self, ranges: &[(u64, u64)]) {
        for &(off, len) in ranges {
            let end = off.saturating_add(len).min(self.regions() * self.region);
            if end > off {
                self.mark(off, end - off);
            }
        }
    }

    /// Whether the map changed since it was last persisted.
    pub fn changed(&self) -> bool {
        self.changed.load(Ordering::Acquire)
    }

    /// Writes the map to its file and syncs it (blocking). Every bit set
    /// before the call is durable when it returns `Ok`.
    pub fn persist(&self) -> std::io::Result<()> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let _one_writer = self.writing.lock().unwrap();
        // Cleared before the snapshot: a bit set meanwhile marks it again.
        self.changed.store(false, Ordering::Release);
        let nbits = self.regions();
        let mut buf = Vec::with_capacity(HEADER + words(nbits) * 8);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&VERSION.to_be_bytes());
        buf.extend_from_slice(&self.region.to_be_bytes());
        buf.extend_from_slice(&nbits.to_be_bytes());
        buf.extend_from_slice(&self.tag());
        {
            let bits = self.bits.read().unwrap();
            for w in bits.iter().take(words(nbits)) {
                buf.extend_from_slice(&w.load(Ordering::Acquire).to_be_bytes());
            }
        }
        let result = (|| {
            let existed = path.exists();
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)?;
            f.write_all_at(&buf, 0)?;
            // The bitmap is durable before any write it covers is issued.
            f.sync_data()?;
            if !existed {
                if let Some(dir) = path.parent() {
                    std::fs::File::open(dir)?.sync_all()?;
                }
            }
            Ok(())
        })();
        if result.is_err() {
            self.changed.store(true, Ordering::Release);
        }
        result
    }

    /// Removes the map's file.
    pub fn remove_file(&self) -> std::io::Result<()> {
        match &self.file {
            Some(p) => match std::fs::remove_file(p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
            None => Ok(()),
        }
    }
}

/// Writes `bytes` to `path` durably: temporary file, sync, rename, sync the directory.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_clears_and_merges_ranges() {
        let m = DirtyMap::new(1 << 20, 10 << 20, None);
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
        let m = DirtyMap::new(4096, 4096 * 200, None);
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
        let m = DirtyMap::new(65536, 1 << 30, Some(p.clone()));
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
}
