//! Snapshots and clones of a volume, in grains of 64 KiB (docs/snapshots.md).
//!
//! A volume's snapshots form a chain, oldest first, ending in the head (the
//! volume's own data). A write into a grain the newest snapshot does not
//! keep copies the grain's current content into that snapshot first, durably,
//! then writes; a snapshot reads a grain from the first image, walking
//! toward the head, that keeps it. A clone is a head whose grains read from
//! an origin snapshot until it writes them (copy-up).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use durable::{Opened, RegionMap};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::backing::{Backing, SimDisk};
use crate::checksum::{Sums, ENTRY};
use crate::dirty_map::DirtyMap;
use crate::local::Files;

/// Grain size as a power of two: 64 KiB (why: docs/snapshots.md).
pub const GRAIN_SHIFT: u32 = 16;
/// Bytes per grain.
pub const GRAIN: u64 = 1 << GRAIN_SHIFT;
/// Bytes of one slot of the snapshot table; a table has two.
const SLOT: u64 = 4 << 20;
const TABLE_MAGIC: &[u8; 8] = b"TNDMSNAP";
const TABLE_VERSION: u32 = 1;
/// magic, version, sequence, length, crc32c.
const TABLE_HEADER: usize = 8 + 4 + 8 + 4 + 4;
const TABLE: &str = "table";

/// Where the files of a volume's snapshots live: a directory in service,
/// simulated disks in tests.
pub trait Shelf<B>: Send + Sync + 'static {
    /// An existing backing, or `None` when there is none of that name.
    fn open(&self, name: &str) -> io::Result<Option<B>>;
    /// A new empty backing whose existence is durable when this returns.
    fn create(&self, name: &str) -> io::Result<B>;
    /// Removes a backing (none of that name is fine).
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Every backing's name.
    fn names(&self) -> io::Result<Vec<String>>;
}

/// A directory of snapshot files, made when the first one is.
pub struct DirShelf {
    dir: PathBuf,
}

impl DirShelf {
    /// The shelf in `dir` (which need not exist yet).
    pub fn new(dir: PathBuf) -> DirShelf {
        DirShelf { dir }
    }

    fn sync(&self) -> io::Result<()> {
        durable::sync_dir(&self.dir).map_err(io::Error::from)
    }
}

impl Shelf<File> for DirShelf {
    fn open(&self, name: &str) -> io::Result<Option<File>> {
        match OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.dir.join(name))
        {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn create(&self, name: &str) -> io::Result<File> {
        if !self.dir.exists() {
            fs::DirBuilder::new().mode(0o700).create(&self.dir)?;
            if let Some(parent) = self.dir.parent() {
                durable::sync_dir(parent).map_err(io::Error::from)?;
            }
        }
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.dir.join(name))?;
        // Durability point: the new file's name is in the directory before anything refers to it.
        self.sync()?;
        Ok(f)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        match fs::remove_file(self.dir.join(name)) {
            Ok(()) => self.sync(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn names(&self) -> io::Result<Vec<String>> {
        match fs::read_dir(&self.dir) {
            Ok(entries) => entries
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}

/// Simulated disks by name, for power-cut tests: a created disk exists at
/// once (as a created file does after its directory is synced).
#[derive(Default)]
pub struct SimShelf {
    disks: Mutex<BTreeMap<String, Arc<SimDisk>>>,
}

impl SimShelf {
    /// An empty shelf.
    pub fn new() -> SimShelf {
        SimShelf::default()
    }

    /// The shelf a power cut leaves: `cut` turns each disk into what it
    /// comes back as.
    pub fn power_cut(&self, mut cut: impl FnMut(&SimDisk) -> SimDisk) -> SimShelf {
        let disks = self.disks.lock().unwrap();
        SimShelf {
            disks: Mutex::new(
                disks
                    .iter()
                    .map(|(n, d)| (n.clone(), Arc::new(cut(d))))
                    .collect(),
            ),
        }
    }

    /// Every disk on the shelf.
    pub fn disks(&self) -> Vec<Arc<SimDisk>> {
        self.disks.lock().unwrap().values().cloned().collect()
    }
}

impl Shelf<Arc<SimDisk>> for Arc<SimShelf> {
    fn open(&self, name: &str) -> io::Result<Option<Arc<SimDisk>>> {
        Ok(self.disks.lock().unwrap().get(name).cloned())
    }
    fn create(&self, name: &str) -> io::Result<Arc<SimDisk>> {
        let d = Arc::new(SimDisk::new(0));
        self.disks.lock().unwrap().insert(name.into(), d.clone());
        Ok(d)
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.disks.lock().unwrap().remove(name);
        Ok(())
    }
    fn names(&self) -> io::Result<Vec<String>> {
        Ok(self.disks.lock().unwrap().keys().cloned().collect())
    }
}

/// What the table records about one snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Stable id; names the snapshot's files and a clone's origin.
    pub id: Uuid,
    /// Unique among the volume's snapshots.
    pub name: String,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// The volume's size when the snapshot was taken.
    pub size_bytes: u64,
    /// Deleted while clones still read from it: kept, out of sight, until
    /// the last of them is gone.
    #[serde(default)]
    pub hidden: bool,
    /// The consistency group it was taken in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// Where a clone's grains come from until it writes them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct OriginRef {
    /// The source volume's id.
    pub volume: Uuid,
    /// The snapshot of it the clone started as.
    pub snapshot: Uuid,
}

/// What a snapshot's grains take on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSpace {
    /// Bytes of written blocks the snapshot keeps in its own files.
    pub kept_bytes: u64,
    /// Of those, the bytes deleting it would free (the rest pass to the
    /// next older snapshot, which needs them).
    pub exclusive_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct TableBody {
    images: Vec<SnapshotInfo>,
    /// A rollback to this snapshot started and has not finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rollback: Option<Uuid>,
}

/// The snapshot table: two slots, each a header and a JSON body; a change
/// goes to the slot not holding the newest valid copy.
struct Table<B> {
    file: B,
    seq: u64,
    slot: u64,
    body: TableBody,
}

impl<B: Backing> Table<B> {
    fn create(file: B) -> io::Result<Table<B>> {
        file.set_len_durably(2 * SLOT)?;
        Ok(Table {
            file,
            seq: 0,
            slot: 1,
            body: TableBody::default(),
        })
    }

    fn read(file: B) -> io::Result<Table<B>> {
        let mut best: Option<(u64, u64, TableBody)> = None;
        // The highest sequence number a slot header carries, valid or not.
        let mut seen = 0;
        for slot in 0..2 {
            let mut h = [0u8; TABLE_HEADER];
            if file.read_at(&mut h, slot * SLOT).is_err() || &h[..8] != TABLE_MAGIC {
                continue;
            }
            let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
            let seq = u64::from_le_bytes(h[12..20].try_into().expect("8 bytes"));
            seen = seen.max(seq);
            let len = u32::from_le_bytes(h[20..24].try_into().expect("4 bytes")) as u64;
            let crc = u32::from_le_bytes(h[24..28].try_into().expect("4 bytes"));
            if version != TABLE_VERSION || len > SLOT - TABLE_HEADER as u64 {
                continue;
            }
            let mut body = vec![0u8; len as usize];
            if file
                .read_at(&mut body, slot * SLOT + TABLE_HEADER as u64)
                .is_err()
                || crc32c::crc32c(&body) != crc
            {
                continue;
            }
            let Ok(body) = serde_json::from_slice::<TableBody>(&body) else {
                continue;
            };
            if best.as_ref().is_none_or(|(s, _, _)| seq > *s) {
                best = Some((seq, slot, body));
            }
        }
        let (seq, slot, body) = match best {
            Some(b) => b,
            // Never written whole: the first snapshot failed, or a cut took
            // it before its sync. No snapshot was ever recorded.
            None if seen <= 1 => (0, 1, TableBody::default()),
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the snapshot table is damaged: neither of its copies is readable",
                ))
            }
        };
        Ok(Table {
            file,
            seq,
            slot,
            body,
        })
    }

    /// Replaces the table with `body`, durably.
    fn write(&mut self, body: TableBody) -> io::Result<()> {
        let json = serde_json::to_vec(&body).expect("the table serializes");
        if json.len() as u64 > SLOT - TABLE_HEADER as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the volume has too many snapshots to record another; delete some",
            ));
        }
        let seq = self.seq + 1;
        let slot = 1 - self.slot;
        let mut buf = Vec::with_capacity(TABLE_HEADER + json.len());
        buf.extend_from_slice(TABLE_MAGIC);
        buf.extend_from_slice(&TABLE_VERSION.to_le_bytes());
        buf.extend_from_slice(&seq.to_le_bytes());
        buf.extend_from_slice(&(json.len() as u32).to_le_bytes());
        buf.extend_from_slice(&crc32c::crc32c(&json).to_le_bytes());
        buf.extend_from_slice(&json);
        self.file.write_at(&buf, slot * SLOT)?;
        // Durability point: the new table is on disk before anything relies on it.
        self.file.sync()?;
        self.seq = seq;
        self.slot = slot;
        self.body = body;
        Ok(())
    }
}

/// One snapshot's image: the grains it keeps, their checksums and the map
/// of which grains those are.
struct Image<B: Backing> {
    id: Uuid,
    size_bytes: u64,
    data: B,
    sums: B,
    held: RegionMap<B>,
}

impl<B: Backing> Image<B> {
    fn grains(&self) -> u64 {
        self.size_bytes.div_ceil(GRAIN)
    }

    fn keeps(&self, g: u64) -> bool {
        self.held.is_marked(g)
    }
}

fn names_of(id: Uuid) -> [String; 3] {
    [
        format!("{id}.data"),
        format!("{id}.crc32c"),
        format!("{id}.held"),
    ]
}

/// Opens a region map that must exist and be in use.
fn open_map<B: Backing>(file: B, size: u64, what: &str) -> io::Result<RegionMap<B>> {
    match RegionMap::open(file, size)? {
        Opened::Map(m) => Ok(m),
        Opened::Missing(_) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} is damaged"),
        )),
    }
}

/// A clone's grain map over `file`: opened, or made when `file` is empty (a
/// new clone).
pub(crate) fn grain_map<B: Backing>(file: B, size: u64) -> io::Result<RegionMap<B>> {
    match RegionMap::open(file, size)? {
        Opened::Map(m) => Ok(m),
        Opened::Missing(file) if file.size()? == 0 => new_map(file, size),
        Opened::Missing(_) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the clone's grain map is damaged",
        )),
    }
}

/// A new grain map over `file` for `size` bytes, in use and empty.
fn new_map<B: Backing>(file: B, size: u64) -> io::Result<RegionMap<B>> {
    RegionMap::create(&file, size, GRAIN_SHIFT)?;
    let map = open_map(file, size, "a new grain map")?;
    // In use from the start: a clean map's bits are not read back.
    map.start()?;
    Ok(map)
}

/// A clone's origin, opened.
pub(crate) struct Origin<B: Backing> {
    /// The source volume's snapshots (and head).
    pub(crate) source: Arc<Images<B>>,
    pub(crate) snapshot: Uuid,
    /// Grains the clone holds itself.
    pub(crate) held: RegionMap<B>,
}

/// Data and checksums of a run of blocks.
pub(crate) type Blocks = (Vec<u8>, Sums);

/// A volume's snapshots, its origin when it is a clone, and what copying
/// between them and the head needs.
pub(crate) struct Images<B: Backing> {
    files: Arc<Files<B>>,
    map: Arc<DirtyMap<B>>,
    blocks: Arc<AtomicU64>,
    /// `None`: the volume cannot keep snapshots (a bare simulated volume).
    shelf: Option<Box<dyn Shelf<B>>>,
    table: Mutex<Option<Table<B>>>,
    /// Oldest first.
    chain: RwLock<Arc<Vec<Arc<Image<B>>>>>,
    /// The chain is not empty: the write path's one check.
    any: AtomicBool,
    pub(crate) origin: Option<Origin<B>>,
    /// Held while grains are copied, images added or removed.
    copy: Mutex<()>,
    /// Grains writers wait to have copied: whoever holds `copy` next
    /// copies all of them, with one round of syncs.
    wanted: Mutex<BTreeSet<u64>>,
}

fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

impl<B: Backing> Images<B> {
    /// Loads a volume's snapshots from its shelf: drops files no table
    /// names and frees grains whose bit was never set (a copy a power cut
    /// interrupted). With a rollback pending, the caller finishes it.
    pub(crate) fn open(
        files: Arc<Files<B>>,
        map: Arc<DirtyMap<B>>,
        blocks: Arc<AtomicU64>,
        shelf: Option<Box<dyn Shelf<B>>>,
        origin: Option<Origin<B>>,
    ) -> io::Result<Images<B>> {
        let opened = match &shelf {
            Some(shelf) => shelf.open(TABLE)?,
            None => None,
        };
        let table = match opened {
            Some(f) => Some(Table::read(f)?),
            None => None,
        };
        let mut chain = Vec::new();
        let mut named = vec![TABLE.to_string()];
        if let Some(t) = &table {
            for info in &t.body.images {
                let [d, s, h] = names_of(info.id);
                let missing = || {
                    other(format!(
                        "snapshot {} is missing its files; the snapshot table names it",
                        info.name
                    ))
                };
                let shelf = shelf.as_ref().expect("a table was read from it");
                let data = shelf.open(&d)?.ok_or_else(missing)?;
                let sums = shelf.open(&s)?.ok_or_else(missing)?;
                let held = shelf.open(&h)?.ok_or_else(missing)?;
                let held = open_map(held, info.size_bytes, &format!("snapshot {}", info.name))?;
                named.extend([d, s, h]);
                chain.push(Arc::new(Image {
                    id: info.id,
                    size_bytes: info.size_bytes,
                    data,
                    sums,
                    held,
                }));
            }
        }
        if let Some(shelf) = &shelf {
            for name in shelf.names()? {
                if !named.contains(&name) {
                    tracing::info!(file = %name, "removing a snapshot file no snapshot names (an interrupted create or delete)");
                    shelf.remove(&name)?;
                }
            }
        }
        let images = Images {
            files,
            map,
            blocks,
            shelf,
            any: AtomicBool::new(!chain.is_empty()),
            table: Mutex::new(table),
            chain: RwLock::new(Arc::new(chain)),
            origin,
            copy: Mutex::new(()),
            wanted: Mutex::new(BTreeSet::new()),
        };
        images.scrub()?;
        Ok(images)
    }

    fn shelf(&self) -> io::Result<&dyn Shelf<B>> {
        self.shelf.as_deref().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "this volume has no place to keep snapshots",
            )
        })
    }

    fn bs(&self) -> u64 {
        self.files.bs
    }

    fn grain_blocks(&self) -> u64 {
        GRAIN / self.bs()
    }

    /// Grains covering blocks `[lba, lba + n)`.
    fn grains(&self, lba: u64, n: u64) -> std::ops::RangeInclusive<u64> {
        let per = self.grain_blocks();
        lba / per..=(lba + n.max(1) - 1) / per
    }

    fn chain(&self) -> Arc<Vec<Arc<Image<B>>>> {
        self.chain.read().unwrap().clone()
    }

    /// The snapshots, oldest first.
    pub(crate) fn list(&self) -> Vec<SnapshotInfo> {
        match &*self.table.lock().unwrap() {
            Some(t) => t.body.images.clone(),
            None => Vec::new(),
        }
    }

    /// A rollback a power cut interrupted.
    pub(crate) fn pending_rollback(&self) -> Option<Uuid> {
        self.table
            .lock()
            .unwrap()
            .as_ref()
            .and_then(|t| t.body.rollback)
    }

    /// Whether a clone reads some of blocks `[lba, lba + n)` from its origin.
    pub(crate) fn reads_through(&self, lba: u64, n: u64) -> bool {
        match &self.origin {
            None => false,
            Some(o) => self.grains(lba, n).any(|g| !o.held.is_marked(g)),
        }
    }

    /// Whether a write into blocks `[lba, lba + n)` must copy a grain first:
    /// one atomic load for a volume with no snapshots that is not a clone.
    pub(crate) fn needs_copy(&self, lba: u64, n: u64) -> bool {
        if self.reads_through(lba, n) {
            return true;
        }
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let chain = self.chain();
        let Some(newest) = chain.last() else {
            return false;
        };
        self.grains(lba, n)
            .any(|g| g < newest.grains() && !newest.keeps(g))
    }

    /// Blocks `[lba, lba + n)` of the head as they read now: the clone's
    /// own grains from its files, the others from its origin.
    pub(crate) fn head_blocks(&self, lba: u64, n: u64) -> io::Result<Blocks> {
        let Some(o) = &self.origin else {
            return self.files.read(lba, n);
        };
        let bs = self.bs() as usize;
        let mut data = volume::buffer::take((n * self.bs()) as usize);
        let mut sums = Sums::from_elem(0, (n * ENTRY) as usize);
        for (a, b) in self.pieces(lba, n) {
            let g = a / self.grain_blocks();
            let (d, s) = if o.held.is_marked(g) {
                self.files.read(a, b - a)?
            } else {
                o.source.view(o.snapshot, a, b - a)?
            };
            let at = (a - lba) as usize;
            data[at * bs..][..d.len()].copy_from_slice(&d);
            sums[at * ENTRY as usize..][..s.len()].copy_from_slice(&s);
            volume::buffer::give(d);
        }
        Ok((data, sums))
    }

    /// Blocks `[lba, lba + n)` cut at grain boundaries: `(first, end)` pairs.
    fn pieces(&self, lba: u64, n: u64) -> impl Iterator<Item = (u64, u64)> {
        let per = self.grain_blocks();
        let end = lba + n;
        let mut at = lba;
        std::iter::from_fn(move || {
            (at < end).then(|| {
                let stop = ((at / per + 1) * per).min(end);
                let piece = (at, stop);
                at = stop;
                piece
            })
        })
    }

    /// Blocks `[lba, lba + n)` of snapshot `id`'s image; blocks past its
    /// size read as unwritten.
    pub(crate) fn view(&self, id: Uuid, lba: u64, n: u64) -> io::Result<Blocks> {
        loop {
            let chain = self.chain();
            if let Some(read) = self.view_in(&chain, id, lba, n)? {
                return Ok(read);
            }
        }
    }

    /// As [`Images::view`] over `chain`; `None` when a snapshot came or went
    /// meanwhile (read again).
    fn view_in(
        &self,
        chain: &Arc<Vec<Arc<Image<B>>>>,
        id: Uuid,
        lba: u64,
        n: u64,
    ) -> io::Result<Option<Blocks>> {
        let i = chain
            .iter()
            .position(|img| img.id == id)
            .ok_or_else(|| other(format!("snapshot {id} is gone")))?;
        let bs = self.bs();
        let size = chain[i].size_bytes / bs;
        let mut data = vec![0u8; (n * bs) as usize];
        let mut sums = Sums::from_elem(0, (n * ENTRY) as usize);
        for (a, b) in self.pieces(lba, n) {
            if a >= size {
                break;
            }
            let b = b.min(size);
            let g = a / self.grain_blocks();
            let at = ((a - lba) * bs) as usize..((b - lba) * bs) as usize;
            let at_sums = ((a - lba) * ENTRY) as usize..((b - lba) * ENTRY) as usize;
            loop {
                if let Some(img) = chain[i..].iter().find(|img| img.keeps(g)) {
                    img.data.read_at(&mut data[at.clone()], a * bs)?;
                    img.sums.read_at(&mut sums[at_sums.clone()], a * ENTRY)?;
                    break;
                }
                let (d, s) = self.head_blocks(a, b - a)?;
                if !self.current(chain) {
                    volume::buffer::give(d);
                    return Ok(None);
                }
                // A write copies the grain out before it changes the head:
                // still kept nowhere after the read, the head held the
                // snapshot's content when it was read.
                if !chain[i..].iter().any(|img| img.keeps(g)) {
                    data[at.clone()].copy_from_slice(&d);
                    sums[at_sums.clone()].copy_from_slice(&s);
                    volume::buffer::give(d);
                    break;
                }
                volume::buffer::give(d);
            }
        }
        Ok(Some((data, sums)))
    }

    /// Whether `chain` is still the volume's chain (no image came or went).
    fn current(&self, chain: &Arc<Vec<Arc<Image<B>>>>) -> bool {
        Arc::ptr_eq(chain, &self.chain.read().unwrap())
    }

    /// Copies, before a write into blocks `[lba, lba + n)`, each grain the
    /// newest snapshot does not keep into it, and, for a clone, each grain
    /// it does not hold up from its origin: durably, so that the write can
    /// change the head.
    ///
    /// Writers that wait meanwhile leave their grains in `wanted`: the next
    /// one to copy copies them all, so concurrent first writes share syncs.
    ///
    /// An unmap (`unmap`) of a whole grain a clone does not hold copies
    /// nothing up: the grain is held from then on, as a hole.
    pub(crate) fn prepare_write(&self, lba: u64, n: u64, unmap: bool) -> io::Result<()> {
        self.wanted.lock().unwrap().extend(self.grains(lba, n));
        let _copying = self.copy.lock().unwrap();
        let mut grains = std::mem::take(&mut *self.wanted.lock().unwrap());
        // Our own grains too: a holder that took them may have failed.
        grains.extend(self.grains(lba, n));
        let chain = self.chain();
        if let Some(newest) = chain.last() {
            let todo: Vec<u64> = grains
                .iter()
                .copied()
                .filter(|&g| g < newest.grains() && !newest.keeps(g))
                .collect();
            let size = newest.size_bytes / self.bs();
            self.copy_into(
                &newest.data,
                &newest.sums,
                &newest.held,
                &todo,
                size,
                |a, n| self.head_blocks(a, n),
            )?;
        }
        if let Some(o) = &self.origin {
            let blocks = self.blocks.load(Ordering::Acquire);
            let last = blocks.saturating_sub(1) / self.grain_blocks();
            let per = self.grain_blocks();
            let whole = |g: u64| unmap && g * per >= lba && ((g + 1) * per).min(blocks) <= lba + n;
            let (bare, todo): (Vec<u64>, Vec<u64>) = grains
                .iter()
                .copied()
                .filter(|&g| g <= last && !o.held.is_marked(g))
                .partition(|&g| whole(g));
            let files = &self.files;
            self.copy_into(&files.data, &files.sums, &o.held, &todo, blocks, |a, n| {
                o.source.view(o.snapshot, a, n)
            })?;
            for run in runs(&bare) {
                o.held.mark(*run.start(), *run.end())?;
            }
        }
        Ok(())
    }

    /// Copies grains `todo` (blocks below `limit`) as `read` finds them into
    /// `data`/`sums`, makes them durable, then sets their bits in `held`.
    /// A copy that fails leaves no data behind where it can (the next open
    /// frees what it cannot).
    #[allow(clippy::too_many_arguments)]
    fn copy_into(
        &self,
        data: &B,
        sums: &B,
        held: &RegionMap<B>,
        todo: &[u64],
        limit: u64,
        read: impl Fn(u64, u64) -> io::Result<Blocks>,
    ) -> io::Result<()> {
        if todo.is_empty() {
            return Ok(());
        }
        let copied = (|| {
            let mut wrote = false;
            for &g in todo {
                let (a, b) = self.grain_range(g, limit);
                let (d, s) = read(a, b - a)?;
                wrote |= self.put(data, sums, a, &d, &s)?;
            }
            if wrote {
                // Durability point: the copied grains are on disk before their bits say so.
                data.sync()?;
                sums.sync()?;
            }
            for run in runs(todo) {
                held.mark(*run.start(), *run.end())?;
            }
            Ok(())
        })();
        if copied.is_err() {
            let bs = self.bs();
            for &g in todo.iter().filter(|&&g| !held.is_marked(g)) {
                let (a, b) = self.grain_range(g, limit);
                let _ = data.punch_hole(a * bs, (b - a) * bs);
                let _ = sums.punch_hole(a * ENTRY, (b - a) * ENTRY);
            }
        }
        copied
    }

    /// Blocks of grain `g` below `limit`.
    fn grain_range(&self, g: u64, limit: u64) -> (u64, u64) {
        let per = self.grain_blocks();
        (g * per, ((g + 1) * per).min(limit))
    }

    /// Writes the written blocks of a run into `data`/`sums` at `lba`
    /// (unwritten ones stay holes); whether anything was written.
    fn put(&self, data: &B, sums: &B, lba: u64, d: &[u8], s: &[u8]) -> io::Result<bool> {
        let bs = self.bs() as usize;
        let mut wrote = false;
        for (first, end, written) in block_runs(d, s, bs) {
            if written {
                data.write_at(&d[first * bs..end * bs], (lba + first as u64) * bs as u64)?;
                sums.write_at(
                    &s[first * ENTRY as usize..end * ENTRY as usize],
                    (lba + first as u64) * ENTRY,
                )?;
                wrote = true;
            }
        }
        Ok(wrote)
    }

    /// Takes a snapshot of the head as it is now; the caller holds the
    /// volume's write gate, so no write is in flight.
    pub(crate) fn create(&self, info: SnapshotInfo) -> io::Result<()> {
        let _copying = self.copy.lock().unwrap();
        // Durability point: every write acknowledged before the snapshot is in it, even without FUA.
        self.files.sync()?;
        if let Some(o) = &self.origin {
            o.held.save()?;
        }
        let shelf = self.shelf()?;
        let [d, s, h] = names_of(info.id);
        let data = shelf.create(&d)?;
        data.set_len_durably(info.size_bytes)?;
        let sums = shelf.create(&s)?;
        sums.set_len_durably(info.size_bytes / self.bs() * ENTRY)?;
        let held = new_map(shelf.create(&h)?, info.size_bytes)?;
        let image = Arc::new(Image {
            id: info.id,
            size_bytes: info.size_bytes,
            data,
            sums,
            held,
        });
        let mut table = self.table.lock().unwrap();
        if table.is_none() {
            *table = Some(Table::create(shelf.create(TABLE)?)?);
        }
        let t = table.as_mut().expect("made above");
        let mut body = t.body.clone();
        body.images.push(info);
        t.write(body)?;
        let mut chain = self.chain.write().unwrap();
        let mut next = (**chain).clone();
        next.push(image);
        *chain = Arc::new(next);
        self.any.store(true, Ordering::Release);
        Ok(())
    }

    /// Marks a snapshot hidden (deleted while clones read from it).
    pub(crate) fn hide(&self, id: Uuid) -> io::Result<()> {
        self.edit(|body| {
            if let Some(i) = body.images.iter_mut().find(|i| i.id == id) {
                i.hidden = true;
            }
        })
    }

    fn edit(&self, change: impl FnOnce(&mut TableBody)) -> io::Result<()> {
        let mut table = self.table.lock().unwrap();
        let t = table
            .as_mut()
            .ok_or_else(|| other("the volume has no snapshots".into()))?;
        let mut body = t.body.clone();
        change(&mut body);
        t.write(body)
    }

    /// Deletes a snapshot: the grains the next older snapshot reads through
    /// it pass to that one, the rest are freed.
    pub(crate) fn delete(&self, id: Uuid) -> io::Result<()> {
        if self.pending_rollback() == Some(id) {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                "a rollback to this snapshot has not finished",
            ));
        }
        let _copying = self.copy.lock().unwrap();
        let chain = self.chain();
        let i = chain
            .iter()
            .position(|img| img.id == id)
            .ok_or_else(|| other(format!("snapshot {id} is gone")))?;
        let img = &chain[i];
        if i > 0 {
            let older = &chain[i - 1];
            let size = older.size_bytes / self.bs();
            let todo: Vec<u64> = img
                .held
                .marked()
                .into_iter()
                .filter(|&g| g < older.grains() && !older.keeps(g))
                .collect();
            let bs = self.bs();
            self.copy_into(
                &older.data,
                &older.sums,
                &older.held,
                &todo,
                size,
                |a, n| {
                    let mut d = vec![0u8; (n * bs) as usize];
                    let mut s = Sums::from_elem(0, (n * ENTRY) as usize);
                    img.data.read_at(&mut d, a * bs)?;
                    img.sums.read_at(&mut s, a * ENTRY)?;
                    Ok((d, s))
                },
            )?;
        }
        self.edit(|body| body.images.retain(|i| i.id != id))?;
        {
            let mut c = self.chain.write().unwrap();
            let next: Vec<_> = c.iter().filter(|img| img.id != id).cloned().collect();
            self.any.store(!next.is_empty(), Ordering::Release);
            *c = Arc::new(next);
        }
        for name in names_of(id) {
            if let Err(e) = self.shelf()?.remove(&name) {
                tracing::warn!(file = %name, error = %e, "cannot remove a deleted snapshot's file; the next open removes it");
            }
        }
        Ok(())
    }

    /// Makes the head's content snapshot `id`'s again: every grain some
    /// snapshot from `id` on keeps (the grains written since) is rewritten
    /// through the write path, and blocks past the snapshot's size are
    /// unmapped. Recorded in the table first, so an interrupted rollback is
    /// finished at the next open.
    /// A rollback that fails is forgotten (it is not finished at the next
    /// open, over writes made since): the volume holds part of the
    /// snapshot's content, and the error says to run it again.
    pub(crate) fn rollback(&self, id: Uuid) -> io::Result<()> {
        self.edit(|body| body.rollback = Some(id))?;
        if let Err(e) = self.roll_back(id) {
            if let Err(forget) = self.edit(|body| body.rollback = None) {
                tracing::error!(error = %forget, "cannot forget a failed rollback; the next open finishes it");
            }
            return Err(io::Error::new(
                e.kind(),
                format!("the rollback stopped half done ({e}); run it again"),
            ));
        }
        self.edit(|body| body.rollback = None)
    }

    /// Finishes a rollback a crash interrupted, before the volume serves;
    /// one whose snapshot is gone is forgotten, logged.
    pub(crate) fn finish_rollback(&self) -> io::Result<()> {
        let Some(id) = self.pending_rollback() else {
            return Ok(());
        };
        if !self.chain().iter().any(|img| img.id == id) {
            tracing::error!(snapshot = %id, "an interrupted rollback names a snapshot that is gone; the volume holds part of its content");
            return self.edit(|body| body.rollback = None);
        }
        tracing::warn!(snapshot = %id, "finishing a rollback a crash interrupted");
        self.roll_back(id)?;
        self.edit(|body| body.rollback = None)
    }

    fn roll_back(&self, id: Uuid) -> io::Result<()> {
        let chain = self.chain();
        let i = chain
            .iter()
            .position(|img| img.id == id)
            .ok_or_else(|| other(format!("snapshot {id} is gone")))?;
        let size = chain[i].size_bytes / self.bs();
        let mut grains: Vec<u64> = chain[i..]
            .iter()
            .flat_map(|img| img.held.marked())
            .filter(|&g| g < chain[i].grains())
            .collect();
        grains.sort_unstable();
        grains.dedup();
        let bs = self.bs();
        for g in grains {
            let (a, b) = self.grain_range(g, size);
            let (d, s) = self.view(id, a, b - a)?;
            if let Some(i) = crate::checksum::first_bad(&d, &s, bs as usize) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "block {} of the snapshot does not match its checksum (damaged on disk)",
                        a + i as u64
                    ),
                ));
            }
            self.write_head(a, &d, &s)?;
        }
        let blocks = self.blocks.load(Ordering::Acquire);
        if blocks > size {
            let zeros = vec![0u8; GRAIN as usize];
            let unwritten = Sums::from_elem(0, (GRAIN / bs * ENTRY) as usize);
            // Past the snapshot's end the volume had no blocks then: unmap, grain by grain.
            for (a, b) in self.pieces(size, blocks - size) {
                let n = (b - a) as usize;
                self.write_head(
                    a,
                    &zeros[..n * bs as usize],
                    &unwritten[..n * ENTRY as usize],
                )?;
            }
        }
        // Durability point: the rolled-back head is on disk before the table forgets the rollback.
        self.files.sync()
    }

    /// Writes blocks with their checksums into the head, as a write does:
    /// grains copied out (and up) first, dirty regions marked, unwritten
    /// blocks punched.
    fn write_head(&self, lba: u64, d: &[u8], s: &[u8]) -> io::Result<()> {
        let n = s.len() as u64 / ENTRY;
        self.prepare_write(lba, n, false)?;
        let (first, last) = self.files.regions(lba, n);
        if !self.map.enter(first, last) {
            self.map.mark(first, last)?;
        }
        let bs = self.bs() as usize;
        let _locks = self.files.lock(lba, n);
        for (a, b, written) in block_runs(d, s, bs) {
            let at = lba + a as u64;
            let count = (b - a) as u64;
            if written {
                self.files.write_data(&d[a * bs..b * bs], at * bs as u64)?;
                self.files
                    .sums
                    .write_at(&s[a * ENTRY as usize..b * ENTRY as usize], at * ENTRY)?;
            } else {
                self.files
                    .data
                    .punch_hole(at * bs as u64, count * bs as u64)?;
                self.files.sums.punch_hole(at * ENTRY, count * ENTRY)?;
            }
        }
        Ok(())
    }

    /// What each snapshot keeps and what deleting it would free, oldest first.
    pub(crate) fn space(&self) -> io::Result<Vec<(Uuid, SnapshotSpace)>> {
        let chain = self.chain();
        let mut out = Vec::new();
        for (i, img) in chain.iter().enumerate() {
            let size = img.size_bytes / self.bs();
            let mut space = SnapshotSpace::default();
            for g in img.held.marked() {
                let (a, b) = self.grain_range(g, size);
                let mut s = Sums::from_elem(0, ((b - a) * ENTRY) as usize);
                img.sums.read_at(&mut s, a * ENTRY)?;
                let written = s
                    .chunks_exact(ENTRY as usize)
                    .filter(|e| *e != [0; 4])
                    .count() as u64
                    * self.bs();
                space.kept_bytes += written;
                let passes_on = i > 0 && g < chain[i - 1].grains() && !chain[i - 1].keeps(g);
                if !passes_on {
                    space.exclusive_bytes += written;
                }
            }
            out.push((img.id, space));
        }
        Ok(out)
    }

    /// Frees data a copy left where its bit was never set (a power cut or a
    /// failed write between the copy and the bit): in every snapshot's
    /// files, and in a clone's own files.
    fn scrub(&self) -> io::Result<()> {
        let bs = self.bs();
        for img in self.chain().iter() {
            let blocks = img.size_bytes / bs;
            self.punch_unheld(&img.data, &img.sums, &img.held, blocks)?;
        }
        if let Some(o) = &self.origin {
            let blocks = self.blocks.load(Ordering::Acquire);
            let _locks = self.files.lock(0, blocks);
            self.punch_unheld(&self.files.data, &self.files.sums, &o.held, blocks)?;
        }
        Ok(())
    }

    fn punch_unheld(&self, data: &B, sums: &B, held: &RegionMap<B>, blocks: u64) -> io::Result<()> {
        let bs = self.bs();
        let end = blocks * bs;
        let mut punched = 0u64;
        let mut at = 0;
        while at < end {
            let Some(start) = data.seek(at, true)? else {
                break;
            };
            if start >= end {
                break;
            }
            let stop = data.seek(start, false)?.unwrap_or(end).min(end);
            let mut g = start >> GRAIN_SHIFT;
            while g << GRAIN_SHIFT < stop {
                if !held.is_marked(g) {
                    let (a, b) = self.grain_range(g, blocks);
                    data.punch_hole(a * bs, (b - a) * bs)?;
                    sums.punch_hole(a * ENTRY, (b - a) * ENTRY)?;
                    punched += 1;
                }
                g += 1;
            }
            at = stop.max(start + 1);
        }
        if punched > 0 {
            tracing::info!(
                grains = punched,
                "freed grains a copy had written but never recorded (an interrupted write)"
            );
            data.sync()?;
            sums.sync()?;
        }
        Ok(())
    }

    /// Grows a clone's map with the volume.
    pub(crate) fn grow(&self, size: u64) -> io::Result<()> {
        match &self.origin {
            Some(o) => o.held.grow(size),
            None => Ok(()),
        }
    }

    /// For a clone, the first block in `[lba, end)` whose grain it reads
    /// from its origin; `None` when there is none (or it is not a clone).
    pub(crate) fn first_from_origin(&self, lba: u64, end: u64) -> Option<u64> {
        let o = self.origin.as_ref()?;
        let per = self.grain_blocks();
        (lba / per..end.div_ceil(per))
            .find(|&g| !o.held.is_marked(g))
            .map(|g| (g * per).max(lba))
    }

    /// As [`Images::head_blocks`], with no write to those blocks half done;
    /// with the first block that does not match its checksum.
    pub(crate) fn head_blocks_settled(
        &self,
        lba: u64,
        n: u64,
    ) -> io::Result<(Vec<u8>, Option<u64>)> {
        let _locks = self.files.lock(lba, n);
        let (d, s) = self.head_blocks(lba, n)?;
        let bad = crate::checksum::first_bad(&d, &s, self.bs() as usize).map(|i| lba + i as u64);
        Ok((d, bad))
    }

    /// Whether the grain of block `lba` of a clone reads from its origin.
    pub(crate) fn reads_origin_at(&self, lba: u64) -> bool {
        self.reads_through(lba, 1)
    }

    /// Blocks a clone reads from its origin from `lba` to the end of its grain.
    pub(crate) fn rest_of_grain(&self, lba: u64) -> u64 {
        let per = self.grain_blocks();
        (lba / per + 1) * per - lba
    }
}

/// Runs of equal "written" state in blocks of `bs` bytes and their checksum
/// entries: `(first, end, written)` in blocks. A block is unwritten when its
/// entry is 0 and it holds only zeros (a written block whose crc32c happens
/// to be 0 has the entry 0 too, and must not be taken for a hole).
fn block_runs(data: &[u8], sums: &[u8], bs: usize) -> Vec<(usize, usize, bool)> {
    let written: Vec<bool> = sums
        .chunks_exact(ENTRY as usize)
        .zip(data.chunks_exact(bs))
        .map(|(e, block)| e != [0; 4] || !crate::checksum::is_zero(block))
        .collect();
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=written.len() {
        if i == written.len() || written[i] != written[start] {
            out.push((start, i, written[start]));
            start = i;
        }
    }
    out
}

/// Consecutive grains as inclusive runs.
fn runs(grains: &[u64]) -> Vec<std::ops::RangeInclusive<u64>> {
    let mut out: Vec<std::ops::RangeInclusive<u64>> = Vec::new();
    for &g in grains {
        match out.last_mut() {
            Some(r) if *r.end() + 1 == g => *r = *r.start()..=g,
            _ => out.push(g..=g),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_join_neighbours() {
        assert_eq!(runs(&[1, 2, 3, 7, 9, 10]), vec![1..=3, 7..=7, 9..=10]);
        assert!(runs(&[]).is_empty());
    }

    #[test]
    fn block_runs_split_written_from_unwritten() {
        let s = [[0u8; 4], [1, 0, 0, 0], [2, 0, 0, 0], [0; 4], [0; 4]].concat();
        let mut d = vec![0u8; 5 * 8];
        d[8] = 1;
        d[16] = 2;
        // A written block whose checksum is 0 is still written.
        d[36] = 9;
        assert_eq!(
            block_runs(&d, &s, 8),
            vec![(0, 1, false), (1, 3, true), (3, 4, false), (4, 5, true)]
        );
    }

    #[test]
    fn a_torn_table_slot_leaves_the_previous_table() {
        let disk = Arc::new(SimDisk::new(0));
        let mut t = Table::create(disk.clone()).unwrap();
        let info = |n: &str| SnapshotInfo {
            id: Uuid::new_v4(),
            name: n.into(),
            created: 1,
            size_bytes: 4096,
            hidden: false,
            group: None,
        };
        t.write(TableBody {
            images: vec![info("a")],
            rollback: None,
        })
        .unwrap();
        let second = TableBody {
            images: vec![info("a"), info("b")],
            rollback: None,
        };
        t.write(second.clone()).unwrap();
        assert_eq!(Table::read(disk.clone()).unwrap().body, second);
        // A third write that never reached the disk whole: the second stands.
        disk.power_off_after(0);
        assert!(t
            .write(TableBody {
                images: vec![],
                rollback: None
            })
            .is_err());
        let back = disk.power_cut(|_| false);
        assert_eq!(Table::read(back).unwrap().body, second);
        // Bytes of a slot damaged after the fact: the other slot is read.
        let d = SimDisk::new(0);
        let mut t = Table::create(Arc::new(d)).unwrap();
        t.write(TableBody::default()).unwrap();
        t.write(second.clone()).unwrap();
        let slot = t.slot;
        let file = t.file.clone();
        file.corrupt(slot * SLOT + TABLE_HEADER as u64 + 3, 0xff);
        assert_eq!(Table::read(file).unwrap().body, TableBody::default());
    }
}
