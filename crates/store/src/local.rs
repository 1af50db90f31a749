use std::collections::BTreeSet;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use smallvec::SmallVec;
use tokio::sync::RwLock;
use volume::{
    blocks_in, check_range, first_difference, BlockState, Provisioning, Result, Volume, VolumeError,
};

use crate::backing::Backing;
use crate::catalog::VolumeMeta;
use crate::checksum::{self, Sums, ENTRY};
use crate::dirty_map::{DirtyMap, Opened, AHEAD};
use crate::pool::IoPool;
use crate::snapshots::{Images, Origin, Shelf, SnapshotInfo, SnapshotSpace};
use crate::StoreError;

/// Size of a dirty region: the unit the dirty-region bitmap tracks and an
/// unclean stop rechecks. 1 MiB keeps the bitmap small (16 KiB per 128 GiB)
/// and the recheck after a crash short, while random writes settle into
/// already-dirty regions quickly.
pub const REGION_BYTES: u64 = 1 << 20;

/// Lock stripes that keep a block's data and checksum updates together
/// against other writers and rechecking readers.
const STRIPES: u64 = 256;

/// Largest read tried inline from the page cache before handing it to a
/// worker thread. Copying 1 MiB from the cache holds the async thread for
/// about 100-200 µs, less than handing the read to a worker and back costs
/// (1 MiB sequential reads at qd8: 1.9 GB/s through workers, 2.4 inline).
const INLINE_READ_MAX: usize = 1024 * 1024;

/// Largest write done inline, on the calling (async) thread, into the page
/// cache. Handing a small write to a worker thread and back costs more CPU
/// than the write itself (two thread wake-ups).
const INLINE_WRITE_MAX: usize = 128 * 1024;
/// Largest piece of data handed to the kernel in one write call. Linux
/// (6.x, ext4 with large folios) caches a large write in one large folio,
/// and every later 4 KiB write into that folio walks all its blocks: after a
/// volume was filled by 1 MiB writes, 4 KiB scattered writes at qd32 ran at
/// 28 k IOPS here, against 64 k after a fill in 64 KiB pieces.
const WRITE_CHUNK: usize = 64 * 1024;
/// Page size of the cache: an inline write covers whole pages, so the
/// kernel never has to read a page from disk to merge it.
const PAGE: u64 = 4096;
/// An inline write slower than this that slept in the kernel (it throttled
/// dirty pages or waited on the journal) sends writes to the worker threads
/// for `INLINE_PAUSE`, so the async threads do not keep stalling. A write
/// that was only slow because the scheduler ran another thread meanwhile
/// (two busy processes on two CPUs do that all the time) says nothing about
/// the disk and pauses nothing.
const INLINE_SLOW: Duration = Duration::from_millis(2);
const INLINE_PAUSE: Duration = Duration::from_secs(1);

/// Most that may be written between two looks at the filesystem's free
/// space; closer to the soft threshold the looks come more often.
const SPACE_CHECK_BYTES: u64 = 64 << 20;
const SPACE_CHECK_MIN: u64 = 1 << 20;
/// The soft threshold: free space below this share of the filesystem (but
/// never more than `SOFT_THRESHOLD_MAX`) counts as low.
const SOFT_THRESHOLD_PERCENT: u64 = 10;
const SOFT_THRESHOLD_MAX: u64 = 8 << 30;
/// Most checksum entries one block-status query reads to split allocated
/// space into written and unwritten blocks (64 KiB of sidecar).
const STATUS_SCAN_BLOCKS: u64 = 16 * 1024;

/// The three stores of one volume: its blocks, their checksums (one
/// crc32c per block) and the dirty-region bitmap.
pub struct VolumeFiles<B> {
    /// The blocks.
    pub data: B,
    /// The checksum sidecar.
    pub sums: B,
    /// The dirty-region bitmap.
    pub dirty: B,
}

/// What a read found in the page cache.
enum Cached {
    /// Data and checksums were there and match.
    Hit(Vec<u8>),
    /// Some of it was not (or the read is too long to copy inline): a
    /// worker reads it.
    Miss,
    /// A block does not match its checksum (or a write raced the read).
    Bad,
}

/// Stripe locks held by one operation; a write of up to 3 MiB takes at most
/// four, and holds them without allocating.
type Guards<'a> = SmallVec<[MutexGuard<'a, ()>; 4]>;

/// Data and checksums, with the locks that keep them in step.
pub(crate) struct Files<B> {
    pub(crate) data: B,
    pub(crate) sums: B,
    pub(crate) bs: u64,
    region_shift: u32,
    stripes: Vec<Mutex<()>>,
}

impl<B: Backing> Files<B> {
    /// First and last dirty region of blocks `[lba, lba + blocks)`.
    pub(crate) fn regions(&self, lba: u64, blocks: u64) -> (u64, u64) {
        (
            (lba * self.bs) >> self.region_shift,
            ((lba + blocks) * self.bs - 1) >> self.region_shift,
        )
    }

    /// Blocks `[first, end)` of region `r`.
    fn region_blocks(&self, r: u64) -> (u64, u64) {
        let per = (1u64 << self.region_shift) / self.bs;
        (r * per, (r + 1) * per)
    }

    /// Takes the stripe locks of every region the blocks lie in, in order.
    pub(crate) fn lock(&self, lba: u64, blocks: u64) -> Guards<'_> {
        self.stripes_of(lba, blocks)
            .map(|i| self.stripes[i].lock().unwrap())
            .collect()
    }

    /// The stripes covering the regions of the blocks, in ascending order
    /// (the order every writer takes them in).
    fn stripes_of(&self, lba: u64, blocks: u64) -> impl Iterator<Item = usize> {
        let (first, last) = self.regions(lba, blocks);
        let all = STRIPES as usize;
        let (a, b) = ((first % STRIPES) as usize, (last % STRIPES) as usize);
        // Every stripe, one run of them, or a run that wraps past the last
        // stripe: then the low ones come first.
        let (low, high) = if last - first + 1 >= STRIPES {
            (0..all, 0..0)
        } else if a <= b {
            (a..b + 1, 0..0)
        } else {
            (0..b + 1, a..all)
        };
        low.chain(high)
    }

    /// Writes blocks and their checksums.
    fn write(&self, lba: u64, data: &[u8]) -> io::Result<()> {
        let sums = checksum::entries(data, self.bs as usize, false);
        let _locks = self.lock(lba, data.len() as u64 / self.bs);
        self.write_data(data, lba * self.bs)?;
        self.sums.write_at(&sums, lba * ENTRY)
    }

    /// Writes into the data file at most `WRITE_CHUNK` bytes per call: the
    /// page cache sizes its folios after the write, and small 4 KiB writes
    /// into a region once filled by large writes then cost less (see
    /// `WRITE_CHUNK`).
    pub(crate) fn write_data(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let mut at = 0;
        for chunk in data.chunks(WRITE_CHUNK) {
            self.data.write_at(chunk, offset + at)?;
            at += chunk.len() as u64;
        }
        Ok(())
    }

    /// Writes whole cached pages of blocks and their checksums right here,
    /// when that cannot wait for the disk or for another writer: `None`
    /// when the write is not page-aligned, larger than `INLINE_WRITE_MAX`,
    /// its checksum page is not in the page cache (updating it would read
    /// the disk), or another write holds its blocks.
    fn write_inline(&self, lba: u64, data: &[u8]) -> Option<io::Result<()>> {
        let off = lba * self.bs;
        let len = data.len();
        if !off.is_multiple_of(PAGE) || !(len as u64).is_multiple_of(PAGE) || len > INLINE_WRITE_MAX
        {
            return None;
        }
        let blocks = len as u64 / self.bs;
        let mut probe = [0u8; INLINE_WRITE_MAX / 512 * ENTRY as usize];
        let probe = &mut probe[..(blocks * ENTRY) as usize];
        if !matches!(self.sums.read_nowait(probe, lba * ENTRY), Ok(true)) {
            return None;
        }
        let sums = checksum::entries(data, self.bs as usize, false);
        let _locks = self.try_lock(lba, blocks)?;
        Some(
            self.write_data(data, off)
                .and_then(|()| self.sums.write_at(&sums, lba * ENTRY)),
        )
    }

    /// As [`Files::lock`], without waiting: `None` when a stripe is taken.
    fn try_lock(&self, lba: u64, blocks: u64) -> Option<Guards<'_>> {
        self.stripes_of(lba, blocks)
            .map(|i| self.stripes[i].try_lock().ok())
            .collect()
    }

    /// Reads blocks and their checksums.
    pub(crate) fn read(&self, lba: u64, blocks: u64) -> io::Result<(Vec<u8>, Sums)> {
        let mut data = volume::buffer::take((blocks * self.bs) as usize);
        let mut sums = Sums::from_elem(0, (blocks * ENTRY) as usize);
        self.data.read_at(&mut data, lba * self.bs)?;
        self.sums.read_at(&mut sums, lba * ENTRY)?;
        Ok((data, sums))
    }

    /// Reads blocks with no write to them half done, and finds the first one
    /// that does not match its checksum.
    fn read_settled(&self, lba: u64, blocks: u64) -> io::Result<(Vec<u8>, Option<u64>)> {
        let _locks = self.lock(lba, blocks);
        let (data, sums) = self.read(lba, blocks)?;
        let bad = checksum::first_bad(&data, &sums, self.bs as usize);
        Ok((data, bad.map(|i| lba + i as u64)))
    }

    /// Deallocates blocks; their checksums go back to "unwritten".
    fn unmap(&self, lba: u64, blocks: u64) -> io::Result<()> {
        let _locks = self.lock(lba, blocks);
        self.data.punch_hole(lba * self.bs, blocks * self.bs)?;
        self.sums.punch_hole(lba * ENTRY, blocks * ENTRY)
    }

    /// Recomputes the checksums of blocks from the data as it is.
    fn rebuild(&self, lba: u64, blocks: u64) -> io::Result<()> {
        let _locks = self.lock(lba, blocks);
        checksum::rebuild(&self.data, &self.sums, self.bs, lba, blocks)
    }

    /// Makes data and checksums durable.
    pub(crate) fn sync(&self) -> io::Result<()> {
        // Durability point for volume data and its checksums: fdatasync of both files.
        self.data.sync()?;
        self.sums.sync()
    }
}

/// A thin volume stored as a sparse file. Unwritten and unmapped blocks are
/// holes: they read as zeros and take no space.
///
/// Every block carries a crc32c in a sidecar file, checked on every read; a
/// block that fails it is reported as a medium error, never returned. A
/// durable dirty-region bitmap says where data and checksums may disagree
/// after a power cut, so an unclean stop rechecks only those regions.
///
/// Atomicity of COMPARE AND WRITE: every write-like operation holds `gate`
/// shared; compare-and-write holds it exclusively, so no other write can land
/// between its compare and its write. Reads take no lock.
pub struct LocalVolume<B: Backing = std::fs::File> {
    files: Arc<Files<B>>,
    map: Arc<DirtyMap<B>>,
    block_size: u32,
    num_blocks: Arc<AtomicU64>,
    /// Snapshots, and the origin of a clone.
    images: Arc<Images<B>>,
    gate: RwLock<()>,
    closed: AtomicBool,
    meta: Mutex<VolumeMeta>,
    /// Where the metadata lives (`None` for a simulated disk).
    meta_path: Option<PathBuf>,
    /// Free space of the filesystem is below the soft threshold.
    low_space: AtomicBool,
    /// Bytes written since the free space was last looked at.
    since_space_check: AtomicU64,
    /// Bytes to write before the next look.
    space_check_every: AtomicU64,
    /// Regions where a failed write or unmap may have left data and
    /// checksums apart: their checksums are recomputed, not trusted, and they
    /// stay dirty until that has been done.
    suspect: Mutex<BTreeSet<u64>>,
    /// Clock of `inline_after`.
    clock: Instant,
    /// Microseconds on `clock` before which writes go to the worker threads
    /// (an inline write was slow).
    inline_after: AtomicU64,
    /// Writes done inline so far.
    inline_writes: AtomicU64,
}

/// How often the calling thread has given up its CPU to wait (for a lock,
/// the disk, writeback throttling) so far; `None` where that is not known,
/// which makes every slow inline write count as one that waited.
#[allow(unsafe_code)]
fn voluntary_switches() -> Option<i64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct it is given and touches nothing else.
    let r = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
    // SAFETY: a successful getrusage has written the whole struct.
    (r == 0).then(|| unsafe { usage.assume_init() }.ru_nvcsw)
}

/// Whether the calling thread waited since [`voluntary_switches`] said
/// `before`; when that is not known, it may have.
fn waited_since(before: Option<i64>) -> bool {
    match (before, voluntary_switches()) {
        (Some(a), Some(b)) => a != b,
        _ => true,
    }
}

/// Runs `f` on a handle of its own on `on` on tokio's blocking pool.
async fn on_blocking_pool<S, T, F>(on: &Arc<S>, f: F) -> Result<T>
where
    S: Send + Sync + 'static,
    T: Send + 'static,
    F: FnOnce(&S) -> io::Result<T> + Send + 'static,
{
    let on = on.clone();
    durable::blocking(move || f(&on))
        .await
        .map_err(VolumeError::from_io)
}

impl LocalVolume<std::fs::File> {
    /// A volume of the data directory: its files, its snapshot files on
    /// `shelf` and, for a clone, its origin.
    pub(crate) fn with_snapshots(
        files: VolumeFiles<std::fs::File>,
        meta: VolumeMeta,
        meta_path: PathBuf,
        shelf: Box<dyn Shelf<std::fs::File>>,
        origin: Option<Origin<std::fs::File>>,
    ) -> io::Result<Self> {
        LocalVolume::open(
            files,
            meta,
            Some(meta_path),
            REGION_BYTES,
            Some(shelf),
            origin,
        )
    }
}

impl<B: Backing> LocalVolume<B> {
    /// A volume over any backing, e.g. [`SimDisk`](crate::SimDisk)s for
    /// power-cut tests; its metadata is kept in memory only. Empty `sums` and
    /// `dirty` backings are set up from the data; `region_bytes` (a power of
    /// two, at least one block) sizes the dirty regions of a new bitmap.
    pub fn with_backing(
        files: VolumeFiles<B>,
        block_size: u32,
        num_blocks: u64,
        region_bytes: u64,
    ) -> Result<Self> {
        let meta = VolumeMeta::simulated(block_size, num_blocks);
        LocalVolume::open(files, meta, None, region_bytes, None, None).map_err(VolumeError::from_io)
    }

    /// A volume over any backing whose snapshots live on `shelf`; with
    /// `origin` (a source volume, one of its snapshots and the backing of
    /// the clone's grain map, empty for a new clone) it is a clone.
    pub fn with_shelf(
        files: VolumeFiles<B>,
        block_size: u32,
        num_blocks: u64,
        region_bytes: u64,
        shelf: Box<dyn Shelf<B>>,
        origin: Option<(&LocalVolume<B>, uuid::Uuid, B)>,
    ) -> Result<Self> {
        let meta = VolumeMeta::simulated(block_size, num_blocks);
        let origin = match origin {
            None => None,
            Some((source, snapshot, held)) => Some(
                source
                    .origin_for(snapshot, held, meta.size_bytes)
                    .map_err(VolumeError::from_io)?,
            ),
        };
        LocalVolume::open(files, meta, None, region_bytes, Some(shelf), origin)
            .map_err(VolumeError::from_io)
    }

    /// What a clone of snapshot `snapshot` reads through: its grain map
    /// `held` opened (made first when it is empty) for a clone of `size` bytes.
    pub(crate) fn origin_for(
        &self,
        snapshot: uuid::Uuid,
        held: B,
        size: u64,
    ) -> io::Result<Origin<B>> {
        if !self.images.list().iter().any(|s| s.id == snapshot) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("snapshot {snapshot} of the clone's source is gone"),
            ));
        }
        let held = crate::snapshots::grain_map(held, size)?;
        Ok(Origin {
            source: self.images.clone(),
            snapshot,
            held,
        })
    }

    /// Opens a volume's files: rechecks the dirty regions of an unclean stop,
    /// or builds every checksum when the volume has none yet.
    fn open(
        files: VolumeFiles<B>,
        meta: VolumeMeta,
        meta_path: Option<PathBuf>,
        region_bytes: u64,
        shelf: Option<Box<dyn Shelf<B>>>,
        origin: Option<Origin<B>>,
    ) -> io::Result<Self> {
        assert!(region_bytes.is_power_of_two() && region_bytes >= meta.block_size as u64);
        let VolumeFiles { data, sums, dirty } = files;
        let bs = meta.block_size as u64;
        let num_blocks = meta.size_bytes / bs;
        if sums.size()? < num_blocks * ENTRY {
            sums.set_len_durably(num_blocks * ENTRY)?;
        }
        let (map, recover) = match DirtyMap::open(dirty, meta.size_bytes)? {
            Opened::Map(map) => {
                let recover = map.marked();
                (map, Some(recover))
            }
            Opened::Missing(dirty) => {
                tracing::info!(
                    volume = %meta.name,
                    "volume has no checksums yet: computing them from its data"
                );
                checksum::rebuild(&data, &sums, bs, 0, num_blocks)?;
                // Durability point: every checksum is on disk before the map says all is clean.
                sums.sync()?;
                DirtyMap::create(&dirty, meta.size_bytes, region_bytes.trailing_zeros())?;
                match DirtyMap::open(dirty, meta.size_bytes)? {
                    Opened::Map(map) => (map, None),
                    Opened::Missing(_) => {
                        return Err(io::Error::other(
                            "the new dirty-region bitmap is unreadable",
                        ))
                    }
                }
            }
        };
        let map = map.mark_ahead(AHEAD);
        let files = Files {
            data,
            sums,
            bs,
            region_shift: map.region_shift(),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        };
        if let Some(recover) = recover.filter(|r| !r.is_empty()) {
            tracing::warn!(
                volume = %meta.name,
                regions = recover.len(),
                region_bytes = 1u64 << files.region_shift,
                "volume was not shut down cleanly: recomputing the checksums of its dirty regions"
            );
            for r in recover {
                let (first, end) = files.region_blocks(r);
                if first < num_blocks {
                    files.rebuild(first, end.min(num_blocks) - first)?;
                }
            }
            // Durability point: recomputed checksums are on disk before the bitmap forgets the regions.
            files.sums.sync()?;
        }
        map.start()?;
        let files = Arc::new(files);
        let map = Arc::new(map);
        let blocks = Arc::new(AtomicU64::new(num_blocks));
        let images = Images::open(files.clone(), map.clone(), blocks.clone(), shelf, origin)?;
        images.finish_rollback()?;
        Ok(LocalVolume {
            files,
            map,
            block_size: meta.block_size,
            num_blocks: blocks,
            images: Arc::new(images),
            gate: RwLock::new(()),
            closed: AtomicBool::new(false),
            meta: Mutex::new(meta),
            meta_path,
            low_space: AtomicBool::new(false),
            // Look at the free space with the first write.
            since_space_check: AtomicU64::new(SPACE_CHECK_BYTES),
            space_check_every: AtomicU64::new(SPACE_CHECK_BYTES),
            suspect: Mutex::new(BTreeSet::new()),
            clock: Instant::now(),
            inline_after: AtomicU64::new(0),
            inline_writes: AtomicU64::new(0),
        })
    }

    /// How many writes were done inline, without a worker thread.
    pub fn inline_writes(&self) -> u64 {
        self.inline_writes.load(Ordering::Relaxed)
    }

    /// Writes inline when that is cheap and cannot wait long (see
    /// [`Files::write_inline`]); `None`: hand the write to a worker.
    fn write_inline(&self, lba: u64, data: &[u8]) -> Option<Result<()>> {
        let start = self.clock.elapsed();
        if (start.as_micros() as u64) < self.inline_after.load(Ordering::Relaxed) {
            return None;
        }
        let slept = voluntary_switches();
        let r = self.files.write_inline(lba, data)?;
        let took = self.clock.elapsed() - start;
        if took > INLINE_SLOW && waited_since(slept) {
            let resume = (start + took + INLINE_PAUSE).as_micros() as u64;
            self.inline_after.store(resume, Ordering::Relaxed);
            tracing::debug!(volume = %self.meta.lock().unwrap().name, ?took, "slow inline write: writes go to the worker threads for a while");
        }
        self.inline_writes.fetch_add(1, Ordering::Relaxed);
        Some(r.map_err(VolumeError::from_io))
    }

    /// The volume's current metadata.
    pub fn meta(&self) -> VolumeMeta {
        self.meta.lock().unwrap().clone()
    }

    /// Refuses all further I/O (the volume was deleted).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            Err(VolumeError::Closed)
        } else {
            Ok(())
        }
    }

    /// Runs a positional read or write on the I/O pool.
    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Files<B>) -> std::io::Result<T> + Send + 'static,
    {
        let files = self.files.clone();
        match IoPool::global().run(move || f(&files)).await {
            Ok(r) => r.map_err(VolumeError::from_io),
            Err(e) => Err(VolumeError::Io(e)),
        }
    }

    /// Runs a call that may wait on the disk for long (fdatasync, hole
    /// punching, extent scans) on tokio's growing blocking pool, so it never
    /// holds up the I/O pool's few workers.
    async fn slow<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Files<B>) -> std::io::Result<T> + Send + 'static,
    {
        on_blocking_pool(&self.files, f).await
    }

    /// Makes sure the regions of blocks `[lba, lba + blocks)` are durably
    /// dirty before anything is written there: an atomic bit test when they
    /// are, one bitmap sync (shared with other writers) when not.
    async fn enter(&self, lba: u64, blocks: u64) -> Result<()> {
        let (first, last) = self.files.regions(lba, blocks);
        if self.map.enter(first, last) {
            return Ok(());
        }
        self.on_map(move |map| map.mark(first, last)).await
    }

    /// Runs a call on the dirty-region bitmap (it may wait for a sync) on
    /// tokio's blocking pool.
    async fn on_map<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&DirtyMap<B>) -> std::io::Result<T> + Send + 'static,
    {
        on_blocking_pool(&self.map, f).await
    }

    /// Runs a call on the snapshots (it may copy grains and wait for syncs)
    /// on tokio's blocking pool.
    async fn on_images<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Images<B>) -> std::io::Result<T> + Send + 'static,
    {
        on_blocking_pool(&self.images, f).await
    }

    /// Before a write into blocks `[lba, lba + blocks)`: copies the grains a
    /// snapshot (or, for a clone, the clone itself) still needs, durably.
    /// Nothing but one atomic load on a volume with no snapshots.
    async fn prepare(&self, lba: u64, blocks: u64, unmap: bool) -> Result<()> {
        if !self.images.needs_copy(lba, blocks) {
            return Ok(());
        }
        // A copy takes checksums as they are: those a failed write left
        // apart are made whole first, or the copy would keep them so.
        self.heal_suspects().await?;
        let copied = self
            .on_images(move |i| i.prepare_write(lba, blocks, unmap))
            .await;
        if let Err(VolumeError::NoSpace) = copied {
            self.low_space.store(true, Ordering::Relaxed);
        }
        copied
    }

    /// Remembers that a failed write or unmap may have left the data and
    /// checksums of these blocks apart.
    fn suspect(&self, lba: u64, blocks: u64) {
        let (first, last) = self.files.regions(lba, blocks);
        self.suspect.lock().unwrap().extend(first..=last);
    }

    /// What a failed write leaves behind: suspect regions, and a full
    /// filesystem noted as low on space.
    fn after_write(&self, lba: u64, blocks: u64, written: &Result<()>) {
        if written.is_err() {
            self.suspect(lba, blocks);
        }
        if let Err(VolumeError::NoSpace) = written {
            self.low_space.store(true, Ordering::Relaxed);
        }
    }

    /// Refuses reads of a deleted volume, outside it, or too long.
    fn check_read(&self, lba: u64, blocks: u32) -> Result<()> {
        self.check_open()?;
        check_range(self.num_blocks(), lba, blocks as u64)?;
        let len = blocks as usize * self.block_size as usize;
        if len > volume::MAX_IO_BYTES {
            return Err(VolumeError::BadLength {
                len,
                block_size: self.block_size,
            });
        }
        Ok(())
    }

    /// Refuses writes to a deleted volume, outside it, or of part of a
    /// block; returns the number of blocks.
    fn check_write(&self, lba: u64, data: &[u8]) -> Result<u64> {
        self.check_open()?;
        let n = blocks_in(data.len(), self.block_size)?;
        check_range(self.num_blocks(), lba, n)?;
        Ok(n)
    }

    async fn write_unlocked(&self, lba: u64, data: Bytes, fua: bool) -> Result<()> {
        let len = data.len() as u64;
        let blocks = len / self.block_size as u64;
        self.enter(lba, blocks).await?;
        self.prepare(lba, blocks, false).await?;
        let check = self.since_space_check.fetch_add(len, Ordering::Relaxed) + len
            >= self.space_check_every.load(Ordering::Relaxed);
        if check {
            self.since_space_check.store(0, Ordering::Relaxed);
        }
        let written = match self.write_inline(lba, &data) {
            Some(r) => r,
            None => self.blocking(move |f| f.write(lba, &data)).await,
        };
        if check || written.is_err() {
            self.look_at_space().await;
        }
        self.after_write(lba, blocks, &written);
        written?;
        if fua {
            self.slow(|f| f.sync()).await?;
        }
        Ok(())
    }

    /// Compares the filesystem's free space with the soft threshold, and
    /// decides when to look again: after a quarter of the way to the threshold.
    async fn look_at_space(&self) {
        if let Ok((free, total)) = self.blocking(|f| f.data.space()).await {
            let threshold = (total / 100 * SOFT_THRESHOLD_PERCENT).min(SOFT_THRESHOLD_MAX);
            self.low_space.store(free < threshold, Ordering::Relaxed);
            let next =
                (free.saturating_sub(threshold) / 4).clamp(SPACE_CHECK_MIN, SPACE_CHECK_BYTES);
            self.space_check_every.store(next, Ordering::Relaxed);
        }
    }

    /// Data and checksums already in the page cache are copied right here,
    /// on the calling thread; only reads that would wait for the disk, or
    /// are longer than `INLINE_READ_MAX`, go to a worker.
    fn read_cached(&self, lba: u64, blocks: u64) -> Result<Cached> {
        let bs = self.block_size as usize;
        if blocks as usize * bs > INLINE_READ_MAX {
            return Ok(Cached::Miss);
        }
        let mut buf = volume::buffer::take(blocks as usize * bs);
        let mut sums = Sums::from_elem(0, blocks as usize * ENTRY as usize);
        let cached = self
            .files
            .data
            .read_nowait(&mut buf, lba * bs as u64)
            .map_err(VolumeError::from_io)?
            && self
                .files
                .sums
                .read_nowait(&mut sums, lba * ENTRY)
                .map_err(VolumeError::from_io)?;
        if cached && checksum::first_bad(&buf, &sums, bs).is_none() {
            return Ok(Cached::Hit(buf));
        }
        volume::buffer::give(buf);
        Ok(if cached { Cached::Bad } else { Cached::Miss })
    }

    async fn read_unlocked(&self, lba: u64, blocks: u64) -> Result<Vec<u8>> {
        let bs = self.block_size as usize;
        if self.images.reads_through(lba, blocks) {
            let (buf, sums) = self.on_images(move |i| i.head_blocks(lba, blocks)).await?;
            return match checksum::first_bad(&buf, &sums, bs) {
                None => Ok(buf),
                Some(_) => {
                    volume::buffer::give(buf);
                    self.read_settled(lba, blocks).await
                }
            };
        }
        match self.read_cached(lba, blocks)? {
            Cached::Hit(buf) => return Ok(buf),
            Cached::Bad => return self.read_settled(lba, blocks).await,
            Cached::Miss => {}
        }
        let (buf, bad) = self
            .blocking(move |f| {
                let (buf, sums) = f.read(lba, blocks)?;
                let bad = checksum::first_bad(&buf, &sums, bs);
                Ok((buf, bad))
            })
            .await?;
        match bad {
            None => Ok(buf),
            Some(_) => {
                volume::buffer::give(buf);
                self.read_settled(lba, blocks).await
            }
        }
    }

    /// A read that failed its checksums, looked at again with no write to
    /// those blocks half done (a write racing the read is not corruption).
    /// What still fails is a medium error, except in regions a failed write
    /// left suspect, whose checksums are recomputed instead.
    async fn read_settled(&self, lba: u64, blocks: u64) -> Result<Vec<u8>> {
        let (buf, bad) = self.settled(lba, blocks).await?;
        let Some(bad) = bad else {
            return Ok(buf);
        };
        let (first, last) = self.files.regions(lba, blocks);
        let suspects: Vec<u64> = self
            .suspect
            .lock()
            .unwrap()
            .range(first..=last)
            .copied()
            .collect();
        let in_suspect = suspects.contains(&self.files.regions(bad, 1).0);
        if in_suspect {
            self.heal(suspects).await?;
            let (buf, bad) = self.settled(lba, blocks).await?;
            return match bad {
                None => Ok(buf),
                Some(bad) => Err(self.corrupt(bad)),
            };
        }
        Err(self.corrupt(bad))
    }

    /// Blocks read with no write to them half done (a clone's from its
    /// origin where it reads from there), and the first that fails its
    /// checksum.
    async fn settled(&self, lba: u64, blocks: u64) -> Result<(Vec<u8>, Option<u64>)> {
        if self.images.reads_through(lba, blocks) {
            self.on_images(move |i| i.head_blocks_settled(lba, blocks))
                .await
        } else {
            self.blocking(move |f| f.read_settled(lba, blocks)).await
        }
    }

    /// Reports a block whose data does not match its checksum.
    fn corrupt(&self, lba: u64) -> VolumeError {
        tracing::error!(
            volume = %self.meta.lock().unwrap().name,
            lba,
            "block does not match its checksum: the data on disk is damaged; reporting a medium error"
        );
        VolumeError::Medium {
            lba,
            reason: "the data does not match its checksum".into(),
        }
    }

    /// Heals every suspect region (see [`LocalVolume::heal`]).
    async fn heal_suspects(&self) -> Result<()> {
        let suspects: Vec<u64> = self.suspect.lock().unwrap().iter().copied().collect();
        self.heal(suspects).await
    }

    /// Recomputes the checksums of suspect regions from their data and stops
    /// suspecting them.
    async fn heal(&self, regions: Vec<u64>) -> Result<()> {
        if regions.is_empty() {
            return Ok(());
        }
        let n = self.num_blocks();
        let rs = regions.clone();
        self.slow(move |f| {
            for r in rs {
                let (first, end) = f.region_blocks(r);
                if first < n {
                    f.rebuild(first, end.min(n) - first)?;
                }
            }
            f.sums.sync()
        })
        .await?;
        let mut suspect = self.suspect.lock().unwrap();
        for r in regions {
            suspect.remove(&r);
        }
        Ok(())
    }
}

/// Snapshots, rollback and what clones read (docs/snapshots.md).
impl<B: Backing> LocalVolume<B> {
    /// The volume's snapshots, oldest first (hidden ones too).
    pub fn snapshots(&self) -> Vec<SnapshotInfo> {
        self.images.list()
    }

    /// The snapshot called `name`.
    pub fn snapshot(&self, name: &str) -> Option<SnapshotInfo> {
        let all = self.snapshots();
        let named = |hidden: bool| all.iter().find(|s| s.name == name && s.hidden == hidden);
        named(false).or_else(|| named(true)).cloned()
    }

    /// Takes a snapshot called `name`: every write acknowledged before it
    /// is in it, none acknowledged after.
    pub async fn take_snapshot(
        &self,
        name: &str,
        hidden: bool,
    ) -> std::result::Result<SnapshotInfo, StoreError> {
        self.presync().await?;
        let _exclusive = self.gate.write().await;
        self.snapshot_now(name, None, hidden).await
    }

    /// Takes the snapshot `info` describes (its id, name, time and group
    /// as given: a cluster volume's copies each take the snapshot its
    /// primary chose, under one identity). Every write completed before
    /// it is in it, none completed after. Taking one that exists already
    /// (the same id) is done.
    pub async fn take_snapshot_as(
        &self,
        info: SnapshotInfo,
    ) -> std::result::Result<SnapshotInfo, StoreError> {
        if let Some(s) = self.snapshots().into_iter().find(|s| s.id == info.id) {
            return Ok(s);
        }
        self.presync().await?;
        let _exclusive = self.gate.write().await;
        self.snapshot_with(info).await
    }

    /// Syncs the volume before its writes are stopped for a snapshot, so
    /// that the sync made while they wait has little left to write.
    async fn presync(&self) -> std::result::Result<(), StoreError> {
        self.slow(|f| f.sync())
            .await
            .map_err(|e| self.snapshot_error(e))
    }

    /// Takes a snapshot of each volume at one point of their write orders:
    /// writes to all of them wait while it is taken. The volumes come in the
    /// order their gates are taken (callers sort them by name).
    pub async fn take_group(
        volumes: &[Arc<LocalVolume<B>>],
        name: &str,
        group: &str,
    ) -> std::result::Result<Vec<SnapshotInfo>, StoreError> {
        for v in volumes {
            v.check_new_snapshot(name)?;
        }
        for v in volumes {
            v.presync().await?;
        }
        let mut gates = Vec::with_capacity(volumes.len());
        for v in volumes {
            gates.push(v.gate.write().await);
        }
        let mut taken: Vec<(&Arc<LocalVolume<B>>, SnapshotInfo)> = Vec::new();
        for v in volumes {
            match v.snapshot_now(name, Some(group.to_string()), false).await {
                Ok(s) => taken.push((v, s)),
                Err(e) => {
                    // All of the group or none of it.
                    for (v, s) in taken {
                        if let Err(undo) = v.delete_snapshot_now(s.id) {
                            tracing::warn!(volume = %v.meta().name, snapshot = %s.name, error = %undo, "cannot remove part of a group snapshot that failed");
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(taken.into_iter().map(|(_, s)| s).collect())
    }

    fn check_new_snapshot(&self, name: &str) -> std::result::Result<(), StoreError> {
        crate::catalog::validate_snapshot_name(name)?;
        self.check_open()
            .map_err(|e| StoreError::Snapshot(e.to_string()))?;
        if self.snapshot(name).is_some_and(|s| !s.hidden) {
            return Err(StoreError::SnapshotExists {
                volume: self.meta().name,
                name: name.to_string(),
            });
        }
        Ok(())
    }

    /// Takes the snapshot; the caller holds the write gate.
    async fn snapshot_now(
        &self,
        name: &str,
        group: Option<String>,
        hidden: bool,
    ) -> std::result::Result<SnapshotInfo, StoreError> {
        let info = SnapshotInfo {
            id: uuid::Uuid::new_v4(),
            name: name.to_string(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            size_bytes: self.num_blocks() * self.block_size as u64,
            hidden,
            group,
        };
        self.snapshot_with(info).await
    }

    /// Takes the snapshot `info` describes (its size is the volume's now);
    /// the caller holds the write gate.
    async fn snapshot_with(
        &self,
        mut info: SnapshotInfo,
    ) -> std::result::Result<SnapshotInfo, StoreError> {
        self.check_new_snapshot(&info.name)?;
        // A snapshot keeps checksums as they are: those a failed write left
        // apart are made whole first.
        self.heal_suspects()
            .await
            .map_err(|e| self.snapshot_error(e))?;
        info.size_bytes = self.num_blocks() * self.block_size as u64;
        let made = info.clone();
        self.on_images(move |i| i.create(made))
            .await
            .map_err(|e| self.snapshot_error(e))?;
        tracing::info!(volume = %self.meta().name, snapshot = %info.name, "snapshot taken");
        Ok(info)
    }

    fn snapshot_error(&self, e: VolumeError) -> StoreError {
        match e {
            VolumeError::NoSpace => StoreError::Snapshot(
                "no space left on the data filesystem for the snapshot's files".into(),
            ),
            e => StoreError::Snapshot(e.to_string()),
        }
    }

    /// Deletes a snapshot for good: the grains an older snapshot reads
    /// through it pass to that one, the rest are freed.
    pub async fn delete_snapshot(&self, id: uuid::Uuid) -> std::result::Result<(), StoreError> {
        self.on_images(move |i| i.delete(id))
            .await
            .map_err(|e| self.snapshot_error(e))
    }

    /// As [`LocalVolume::delete_snapshot`], on the calling thread.
    pub(crate) fn delete_snapshot_now(
        &self,
        id: uuid::Uuid,
    ) -> std::result::Result<(), StoreError> {
        self.images
            .delete(id)
            .map_err(|e| self.snapshot_error(VolumeError::from_io(e)))
    }

    /// Hides a snapshot that clones still read from: it goes when they do.
    pub async fn hide_snapshot(&self, id: uuid::Uuid) -> std::result::Result<(), StoreError> {
        self.on_images(move |i| i.hide(id))
            .await
            .map_err(|e| self.snapshot_error(e))
    }

    /// Makes the volume's content the snapshot's again (blocks past its
    /// size are unmapped). Writes wait meanwhile; a crash in the middle is
    /// finished at the next open.
    pub async fn rollback(&self, id: uuid::Uuid) -> std::result::Result<(), StoreError> {
        let _exclusive = self.gate.write().await;
        self.check_open()
            .map_err(|e| StoreError::Snapshot(e.to_string()))?;
        self.on_images(move |i| i.rollback(id))
            .await
            .map_err(|e| self.snapshot_error(e))?;
        tracing::info!(volume = %self.meta().name, snapshot = %id, "rolled back");
        Ok(())
    }

    /// Blocks `[lba, lba + blocks)` of a snapshot's image, checked against
    /// their checksums.
    pub async fn read_snapshot(&self, id: uuid::Uuid, lba: u64, blocks: u32) -> Result<Vec<u8>> {
        let n = blocks as u64;
        let (buf, sums) = self.on_images(move |i| i.view(id, lba, n)).await?;
        match checksum::first_bad(&buf, &sums, self.block_size as usize) {
            None => Ok(buf),
            Some(i) => Err(self.corrupt(lba + i as u64)),
        }
    }

    /// What each snapshot keeps and what deleting it would free.
    pub async fn snapshot_space(
        &self,
    ) -> std::result::Result<Vec<(uuid::Uuid, SnapshotSpace)>, StoreError> {
        self.on_images(|i| i.space())
            .await
            .map_err(|e| self.snapshot_error(e))
    }
}

#[async_trait]
impl<B: Backing> Volume for LocalVolume<B> {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.num_blocks.load(Ordering::Acquire)
    }

    fn provisioning(&self) -> Provisioning {
        Provisioning::Thin
    }

    fn write_cache(&self) -> bool {
        // Writes land in the page cache, which is volatile until fdatasync.
        true
    }

    fn low_on_space(&self) -> bool {
        self.low_space.load(Ordering::Relaxed)
    }

    async fn read(&self, lba: u64, blocks: u32) -> Result<Vec<u8>> {
        self.check_read(lba, blocks)?;
        self.read_unlocked(lba, blocks as u64).await
    }

    async fn write(&self, lba: u64, data: Bytes, fua: bool) -> Result<()> {
        self.check_write(lba, &data)?;
        let _shared = self.gate.read().await;
        self.write_unlocked(lba, data, fua).await
    }

    fn read_now(&self, lba: u64, blocks: u32) -> Option<Result<Vec<u8>>> {
        if let Err(e) = self.check_read(lba, blocks) {
            return Some(Err(e));
        }
        if self.images.reads_through(lba, blocks as u64) {
            return None;
        }
        match self.read_cached(lba, blocks as u64) {
            Ok(Cached::Hit(buf)) => Some(Ok(buf)),
            Ok(Cached::Miss | Cached::Bad) => None,
            Err(e) => Some(Err(e)),
        }
    }

    fn write_now(&self, lba: u64, data: &Bytes) -> Option<Result<()>> {
        let blocks = match self.check_write(lba, data) {
            Ok(n) => n,
            Err(e) => return Some(Err(e)),
        };
        let _shared = self.gate.try_read().ok()?;
        // Regions not yet durably dirty need a bitmap sync first, and a
        // look at the free space is due now and then: both wait.
        let (first, last) = self.files.regions(lba, blocks);
        let len = data.len() as u64;
        if !self.map.enter(first, last)
            || self.images.needs_copy(lba, blocks)
            || self.since_space_check.load(Ordering::Relaxed) + len
                >= self.space_check_every.load(Ordering::Relaxed)
        {
            return None;
        }
        let written = self.write_inline(lba, data)?;
        self.since_space_check.fetch_add(len, Ordering::Relaxed);
        self.after_write(lba, blocks, &written);
        Some(written)
    }

    async fn flush(&self) -> Result<()> {
        self.check_open()?;
        let quiet = self.map.quiet();
        if !quiet.is_empty() {
            // Every write issued before the epoch began completes before the
            // sync below, so the quiet regions hold nothing unsynced once it returns.
            drop(self.gate.write().await);
        }
        self.slow(|f| f.sync()).await?;
        let suspects: Vec<u64> = self.suspect.lock().unwrap().iter().copied().collect();
        // A failed write is healed by the next flush; until then its regions stay dirty.
        let _ = self.heal(suspects).await;
        if quiet.is_empty() {
            return Ok(());
        }
        let keep = self.suspect.lock().unwrap().clone();
        self.on_map(move |map| map.clear(&quiet, |r| keep.contains(&r)))
            .await
    }

    async fn unmap(&self, lba: u64, blocks: u64) -> Result<()> {
        self.check_open()?;
        check_range(self.num_blocks(), lba, blocks)?;
        let _shared = self.gate.read().await;
        self.enter(lba, blocks).await?;
        self.prepare(lba, blocks, true).await?;
        // Space comes back: look at it again with the next write.
        self.since_space_check
            .store(SPACE_CHECK_BYTES, Ordering::Relaxed);
        let done = self.slow(move |f| f.unmap(lba, blocks)).await;
        if done.is_err() {
            self.suspect(lba, blocks);
        }
        done
    }

    async fn compare_and_write(
        &self,
        lba: u64,
        compare: Bytes,
        write: Bytes,
        fua: bool,
    ) -> Result<()> {
        self.check_open()?;
        let n = volume::compare_and_write_blocks(compare.len(), write.len(), self.block_size)?;
        check_range(self.num_blocks(), lba, n)?;
        let _exclusive = self.gate.write().await;
        let current = self.read_unlocked(lba, n).await?;
        if let Some(offset) = first_difference(&current, &compare) {
            return Err(VolumeError::Miscompare { offset });
        }
        self.write_unlocked(lba, write, fua).await
    }

    async fn block_status(&self, lba: u64) -> Result<(BlockState, u64)> {
        self.check_open()?;
        let n = self.num_blocks();
        check_range(n, lba, 1)?;
        if self.images.reads_origin_at(lba) {
            // Read from the origin: reported mapped, which is never wrong.
            let rest = self.images.rest_of_grain(lba).min(n - lba);
            return Ok((BlockState::Mapped, rest));
        }
        let bs = self.block_size as u64;
        let end = n * bs;
        let off = lba * bs;
        let (state, until) = self
            .blocking(move |f| {
                let next_data = match f.data.seek(off, true) {
                    Ok(d) => d.unwrap_or(end).min(end),
                    // No SEEK_DATA on this filesystem: report everything mapped.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        return Ok((BlockState::Mapped, end))
                    }
                    Err(e) => return Err(e),
                };
                if next_data > off {
                    return Ok((BlockState::Deallocated, next_data));
                }
                let next_hole = f.data.seek(off, false)?.unwrap_or(end).min(end);
                // Inside allocated space (filesystem blocks may be larger
                // than logical ones), the sidecar tells written blocks from
                // unwritten ones: an unwritten block has the entry 0.
                let blocks = (next_hole.div_ceil(bs) * bs - off) / bs;
                let scan = blocks.clamp(1, STATUS_SCAN_BLOCKS);
                let mut sums = vec![0u8; (scan * ENTRY) as usize];
                f.sums.read_at(&mut sums, lba * ENTRY)?;
                let written = |i: usize| sums[i * ENTRY as usize..][..ENTRY as usize] != [0; 4];
                let first = written(0);
                let run = (1..scan as usize)
                    .find(|&i| written(i) != first)
                    .map_or(scan, |i| i as u64);
                let state = if first {
                    BlockState::Mapped
                } else {
                    BlockState::Deallocated
                };
                Ok((state, off + run * bs))
            })
            .await?;
        // Holes are found at filesystem-block granularity; round outward to whole blocks.
        let mut until_block = until.div_ceil(bs).clamp(lba + 1, n);
        // A clone's run ends where it reads from its origin again.
        if let Some(stop) = self.images.first_from_origin(lba, until_block) {
            until_block = until_block.min(stop).max(lba + 1);
        }
        Ok((state, until_block - lba))
    }

    async fn resize(&self, blocks: u64) -> Result<()> {
        self.check_open()?;
        let _exclusive = self.gate.write().await;
        let current = self.num_blocks();
        if blocks < current {
            return Err(VolumeError::Shrink {
                current,
                requested: blocks,
            });
        }
        let size = blocks
            .checked_mul(self.block_size as u64)
            .ok_or(VolumeError::OutOfRange {
                lba: blocks,
                blocks: 0,
                num_blocks: current,
            })?;
        self.slow(move |f| {
            f.data.set_len_durably(size)?;
            f.sums.set_len_durably(blocks * ENTRY)
        })
        .await?;
        self.on_map(move |map| map.grow(size)).await?;
        self.on_images(move |i| i.grow(size)).await?;
        let mut meta = self.meta.lock().unwrap().clone();
        meta.size_bytes = size;
        if let Some(path) = self.meta_path.clone() {
            let json = serde_json::to_vec_pretty(&meta).expect("metadata serializes");
            durable::blocking(move || Ok(durable::write_atomic(&path, &json)?))
                .await
                .map_err(VolumeError::Io)?;
        }
        *self.meta.lock().unwrap() = meta;
        self.num_blocks.store(blocks, Ordering::Release);
        Ok(())
    }
}

/// A clean close: once nothing holds the volume any more, data and checksums
/// are made durable and the bitmap is marked clean, so the next open has
/// nothing to recheck. Skipped for a deleted volume and while a failed write
/// is not healed (its regions stay dirty and are rechecked at the next open).
impl<B: Backing> Drop for LocalVolume<B> {
    fn drop(&mut self) {
        if self.closed.load(Ordering::SeqCst) || !self.suspect.lock().unwrap().is_empty() {
            return;
        }
        let name = self.meta.lock().unwrap().name.clone();
        match self.files.sync().and_then(|()| self.map.close_clean()) {
            Ok(()) => tracing::debug!(volume = %name, "volume closed cleanly"),
            Err(e) => {
                tracing::warn!(volume = %name, error = %e, "volume could not be closed cleanly; its dirty regions are rechecked at the next open")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_sleeps_has_waited_and_one_that_computes_has_not() {
        let before = voluntary_switches();
        assert!(before.is_some(), "Linux counts a thread's waits");
        std::thread::sleep(Duration::from_millis(3));
        assert!(waited_since(before));
        let before = voluntary_switches();
        let sum: u64 = (0..10_000u64).map(|i| i.wrapping_mul(i) % 7).sum();
        assert!(sum > 0);
        assert!(!waited_since(before), "computing is not waiting");
    }
}
