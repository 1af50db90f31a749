use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::RwLock;
use volume::{
    blocks_in, check_range, first_difference, BlockState, Provisioning, Result, Volume, VolumeError,
};

use crate::backing::Backing;
use crate::catalog::VolumeMeta;
use crate::durable::write_atomic;
use crate::pool::IoPool;

/// Largest read tried inline from the page cache before handing it to a
/// worker thread: copying more than this would hold up the async worker.
const INLINE_READ_MAX: usize = 256 * 1024;

/// Most that may be written between two looks at the filesystem's free
/// space; closer to the soft threshold the looks come more often.
const SPACE_CHECK_BYTES: u64 = 64 << 20;
const SPACE_CHECK_MIN: u64 = 1 << 20;
/// The soft threshold: free space below this share of the filesystem (but
/// never more than `SOFT_THRESHOLD_MAX`) counts as low.
const SOFT_THRESHOLD_PERCENT: u64 = 10;
const SOFT_THRESHOLD_MAX: u64 = 8 << 30;

/// A thin volume stored as a sparse file. Unwritten and unmapped blocks are
/// holes: they read as zeros and take no space.
///
/// Atomicity of COMPARE AND WRITE: every write-like operation holds `gate`
/// shared; compare-and-write holds it exclusively, so no other write can land
/// between its compare and its write. Reads take no lock.
pub struct LocalVolume<B: Backing = std::fs::File> {
    file: Arc<B>,
    block_size: u32,
    num_blocks: AtomicU64,
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
}

impl LocalVolume<std::fs::File> {
    pub(crate) fn new(file: std::fs::File, meta: VolumeMeta, meta_path: PathBuf) -> Self {
        LocalVolume::build(file, meta, Some(meta_path))
    }
}

impl<B: Backing> LocalVolume<B> {
    /// A volume over any backing, e.g. a [`SimDisk`](crate::SimDisk) for
    /// power-cut tests; its metadata is kept in memory only.
    pub fn with_backing(backing: B, block_size: u32, num_blocks: u64) -> Self {
        let meta = VolumeMeta {
            id: uuid::Uuid::nil(),
            name: "simulated".into(),
            size_bytes: num_blocks * block_size as u64,
            block_size,
            created: 0,
        };
        LocalVolume::build(backing, meta, None)
    }

    fn build(file: B, meta: VolumeMeta, meta_path: Option<PathBuf>) -> Self {
        LocalVolume {
            file: Arc::new(file),
            block_size: meta.block_size,
            num_blocks: AtomicU64::new(meta.size_bytes / meta.block_size as u64),
            gate: RwLock::new(()),
            closed: AtomicBool::new(false),
            meta: Mutex::new(meta),
            meta_path,
            low_space: AtomicBool::new(false),
            // Look at the free space with the first write.
            since_space_check: AtomicU64::new(SPACE_CHECK_BYTES),
            space_check_every: AtomicU64::new(SPACE_CHECK_BYTES),
        }
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
        F: FnOnce(&B) -> std::io::Result<T> + Send + 'static,
    {
        let file = self.file.clone();
        match IoPool::global().run(move || f(&file)).await {
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
        F: FnOnce(&B) -> std::io::Result<T> + Send + 'static,
    {
        let file = self.file.clone();
        match tokio::task::spawn_blocking(move || f(&file)).await {
            Ok(r) => r.map_err(VolumeError::from_io),
            Err(e) => Err(VolumeError::Io(std::io::Error::other(e))),
        }
    }

    async fn write_unlocked(&self, lba: u64, data: Bytes, fua: bool) -> Result<()> {
        let off = lba * self.block_size as u64;
        let len = data.len() as u64;
        let check = self.since_space_check.fetch_add(len, Ordering::Relaxed) + len
            >= self.space_check_every.load(Ordering::Relaxed);
        if check {
            self.since_space_check.store(0, Ordering::Relaxed);
        }
        let written = self.blocking(move |f| f.write_at(&data, off)).await;
        if check || written.is_err() {
            self.look_at_space().await;
        }
        if let Err(VolumeError::NoSpace) = written {
            self.low_space.store(true, Ordering::Relaxed);
        }
        written?;
        if fua {
            self.slow(|f| f.sync()).await?;
        }
        Ok(())
    }

    /// Compares the filesystem's free space with the soft threshold, and
    /// decides when to look again: after a quarter of the way to the threshold.
    async fn look_at_space(&self) {
        if let Ok((free, total)) = self.blocking(|f| f.space()).await {
            let threshold = (total / 100 * SOFT_THRESHOLD_PERCENT).min(SOFT_THRESHOLD_MAX);
            self.low_space.store(free < threshold, Ordering::Relaxed);
            let next =
                (free.saturating_sub(threshold) / 4).clamp(SPACE_CHECK_MIN, SPACE_CHECK_BYTES);
            self.space_check_every.store(next, Ordering::Relaxed);
        }
    }

    async fn read_unlocked(&self, lba: u64, blocks: u64) -> Result<Vec<u8>> {
        let off = lba * self.block_size as u64;
        let len = blocks as usize * self.block_size as usize;
        if len <= INLINE_READ_MAX {
            // Data already in the page cache is copied right here; only reads
            // that would wait for the disk go to a worker thread.
            let mut buf = vec![0u8; len];
            if self
                .file
                .read_nowait(&mut buf, off)
                .map_err(VolumeError::from_io)?
            {
                return Ok(buf);
            }
        }
        self.blocking(move |f| {
            let mut buf = vec![0u8; len];
            f.read_at(&mut buf, off)?;
            Ok(buf)
        })
        .await
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
        self.check_open()?;
        check_range(self.num_blocks(), lba, blocks as u64)?;
        if blocks as usize * self.block_size as usize > volume::MAX_IO_BYTES {
            return Err(VolumeError::BadLength {
                len: blocks as usize * self.block_size as usize,
                block_size: self.block_size,
            });
        }
        self.read_unlocked(lba, blocks as u64).await
    }

    async fn write(&self, lba: u64, data: Bytes, fua: bool) -> Result<()> {
        self.check_open()?;
        let n = blocks_in(data.len(), self.block_size)?;
        check_range(self.num_blocks(), lba, n)?;
        let _shared = self.gate.read().await;
        self.write_unlocked(lba, data, fua).await
    }

    async fn flush(&self) -> Result<()> {
        self.check_open()?;
        self.slow(|f| f.sync()).await
    }

    async fn unmap(&self, lba: u64, blocks: u64) -> Result<()> {
        self.check_open()?;
        check_range(self.num_blocks(), lba, blocks)?;
        let bs = self.block_size as u64;
        let _shared = self.gate.read().await;
        // Space comes back: look at it again with the next write.
        self.since_space_check
            .store(SPACE_CHECK_BYTES, Ordering::Relaxed);
        self.slow(move |f| f.punch_hole(lba * bs, blocks * bs))
            .await
    }

    async fn compare_and_write(
        &self,
        lba: u64,
        compare: Bytes,
        write: Bytes,
        fua: bool,
    ) -> Result<()> {
        self.check_open()?;
        let n = blocks_in(compare.len(), self.block_size)?;
        if write.len() != compare.len() {
            return Err(VolumeError::BadLength {
                len: write.len(),
                block_size: self.block_size,
            });
        }
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
        let bs = self.block_size as u64;
        let end = n * bs;
        let off = lba * bs;
        let (state, until) = self
            .blocking(move |f| {
                let next_data = match f.seek(off, true) {
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
                let next_hole = f.seek(off, false)?.unwrap_or(end).min(end);
                Ok((BlockState::Mapped, next_hole))
            })
            .await?;
        // Holes are found at filesystem-block granularity; round outward to whole blocks.
        let until_block = until.div_ceil(bs).clamp(lba + 1, n);
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
        self.slow(move |f| f.set_len_durably(size)).await?;
        let mut meta = self.meta.lock().unwrap().clone();
        meta.size_bytes = size;
        if let Some(path) = self.meta_path.clone() {
            let json = serde_json::to_vec_pretty(&meta).expect("metadata serializes");
            tokio::task::spawn_blocking(move || write_atomic(&path, &json))
                .await
                .map_err(|e| VolumeError::Io(std::io::Error::other(e)))?
                .map_err(|e| VolumeError::Io(std::io::Error::other(e.to_string())))?;
        }
        *self.meta.lock().unwrap() = meta;
        self.num_blocks.store(blocks, Ordering::Release);
        Ok(())
    }
}
