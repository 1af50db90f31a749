//! One node's copy of a replicated volume: the local volume, the highest
//! epoch it has accepted, its identity, and its activity log.
//!
//! The activity log marks, durably and before the write is issued, every
//! region this node writes as a primary; a region is cleared again once it
//! has been quiet for a sweep and the peers' dirty maps that cover its writes
//! are durable. After a crash of the primary, the marked regions are the ones
//! its copy may hold writes that no replica got (they were never
//! acknowledged, but the copies must still converge): a restarted primary
//! resyncs them to its peers, and a deposed one reports them to the new
//! primary when it returns ([`crate::wire::Welcome::suspect`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use volume::{Volume, VolumeError};

pub use crate::dirty::ActivityGuard;
use crate::dirty::{ActivityLog, DirtyMap};
use crate::wire::SnapshotMark;

/// Bytes per activity-log region.
pub const ACTIVITY_REGION: u64 = 4 << 20;

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct CopyMeta {
    copy_id: uuid::Uuid,
    epoch: u64,
}

/// This node's copy of one volume.
pub struct LocalCopy {
    name: String,
    volume: Arc<dyn Volume>,
    meta_path: PathBuf,
    copy_id: uuid::Uuid,
    epoch: AtomicU64,
    epoch_lock: Mutex<()>,
    activity: Arc<ActivityLog>,
    /// Serializes sweeps of the activity log.
    activity_lock: Mutex<()>,
    base: PathBuf,
    peer_maps: RwLock<Vec<Arc<DirtyMap>>>,
    known_copies: RwLock<std::collections::HashMap<u64, [u8; 16]>>,
    /// Number of the newest replication connection; only it may change the
    /// copy (see [`LocalCopy::open_session`]).
    session: tokio::sync::RwLock<u64>,
    /// The volume's persistent reservations as last handed to this copy
    /// while this process ran (see [`LocalCopy::reservations`]).
    reservations: std::sync::Mutex<Option<bytes::Bytes>>,
    /// The latest COMPARE AND WRITEs applied to this copy: see
    /// [`LocalCopy::applied_compare_and_write`].
    compare_and_writes: std::sync::Mutex<std::collections::VecDeque<Applied>>,
    /// What keeps the copy's snapshots, where the volume has them.
    snapshots: std::sync::OnceLock<Arc<dyn CopySnapshots>>,
}

/// The snapshots of one copy, as the store under it keeps them. A cluster
/// volume's copies take each snapshot at the same point of the volume's
/// write order, under the identity its primary chose
/// ([`crate::wire::SnapshotMark`]).
#[async_trait::async_trait]
pub trait CopySnapshots: Send + Sync {
    /// The copy's snapshots, oldest first.
    fn list(&self) -> Vec<SnapshotMark>;

    /// Takes a snapshot of the copy as it is now (every write completed
    /// before is in it); one with the same id held already is done.
    async fn take(&self, mark: &SnapshotMark) -> Result<(), VolumeError>;

    /// Deletes a snapshot; one the copy does not hold is done.
    async fn delete(&self, id: uuid::Uuid) -> Result<(), VolumeError>;

    /// Blocks `[lba, lba + blocks)` of a snapshot's image.
    async fn read(&self, id: uuid::Uuid, lba: u64, blocks: u32) -> Result<Vec<u8>, VolumeError>;

    /// Makes the copy's content the snapshot's again.
    async fn rollback(&self, id: uuid::Uuid) -> Result<(), VolumeError>;
}

/// A COMPARE AND WRITE applied to a copy.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Applied {
    lba: u64,
    /// Digest of its initiator and both halves.
    digest: u64,
    /// Epoch of the primary that applied it.
    epoch: u64,
}

/// How many applied COMPARE AND WRITEs a copy remembers: far more than the
/// commands in flight when a primary fails.
const COMPARE_AND_WRITES_KEPT: usize = 4096;

/// Digest of a COMPARE AND WRITE's initiator and halves, to recognise it
/// when it comes again.
fn compare_and_write_digest(initiator: &str, compare: &[u8], write: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    // Keys fixed at zero: the same bytes give the same digest on every node.
    let mut h = std::hash::DefaultHasher::new();
    initiator.hash(&mut h);
    compare.hash(&mut h);
    write.hash(&mut h);
    h.finish()
}

/// The extension of the file beside a copy that holds the volume's
/// persistent reservations.
const RESERVATIONS: &str = "reservations.json";

/// The volume's persistent reservations as a copy has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedReservations {
    /// The encoded state.
    pub state: bytes::Bytes,
    /// Whether it was handed over while this process ran, so it went
    /// through no loss of power: registrations without APTPL still count.
    /// A state read from disk after a start keeps only what APTPL kept.
    pub current: bool,
}

/// Runs file work that may wait on the disk (a sync) on tokio's blocking pool.
pub(crate) async fn off_thread<T, F>(f: F) -> Result<T, VolumeError>
where
    T: Send + 'static,
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
{
    durable::blocking(f).await.map_err(VolumeError::Io)
}

impl LocalCopy {
    /// Whether a copy was ever started at `base`: the volume beside it is a
    /// copy of a cluster volume, not a local one.
    pub fn exists(base: &Path) -> bool {
        base.with_extension("copy.json").exists()
    }

    /// Opens (or starts) the copy of `volume` whose files live at `base`
    /// (`<base>.copy.json`, `<base>.activity`).
    pub fn open(
        name: &str,
        volume: Arc<dyn Volume>,
        base: &Path,
    ) -> std::io::Result<Arc<LocalCopy>> {
        let meta_path = base.with_extension("copy.json");
        let meta = match std::fs::read(&meta_path) {
            Ok(b) => serde_json::from_slice::<CopyMeta>(&b).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", meta_path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let m = CopyMeta {
                    copy_id: uuid::Uuid::new_v4(),
                    epoch: 0,
                };
                durable::write_atomic(&meta_path, &serde_json::to_vec(&m).expect("serializable"))?;
                m
            }
            Err(e) => return Err(e),
        };
        let bytes = volume.num_blocks() * volume.block_size() as u64;
        let activity = ActivityLog::open(&base.with_extension("activity"), ACTIVITY_REGION, bytes)?;
        if activity.count() > 0 {
            tracing::info!(
                volume = name,
                regions = activity.count(),
                "activity log holds regions written before the last stop"
            );
        }
        Ok(Arc::new(LocalCopy {
            name: name.to_string(),
            volume,
            meta_path,
            copy_id: meta.copy_id,
            epoch: AtomicU64::new(meta.epoch),
            epoch_lock: Mutex::new(()),
            activity: Arc::new(activity),
            activity_lock: Mutex::new(()),
            base: base.to_path_buf(),
            peer_maps: RwLock::default(),
            known_copies: RwLock::default(),
            session: tokio::sync::RwLock::new(0),
            reservations: std::sync::Mutex::new(None),
            compare_and_writes: Default::default(),
            snapshots: std::sync::OnceLock::new(),
        }))
    }

    /// Gives the copy what keeps its snapshots (once; later calls are
    /// ignored).
    pub fn set_snapshots(&self, s: Arc<dyn CopySnapshots>) {
        let _ = self.snapshots.set(s);
    }

    /// What keeps the copy's snapshots, if the volume has them.
    pub fn snapshots(&self) -> Option<&Arc<dyn CopySnapshots>> {
        self.snapshots.get()
    }

    /// Volume name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The local volume.
    pub fn volume(&self) -> &Arc<dyn Volume> {
        &self.volume
    }

    /// Identity of this copy; a new copy (new or wiped node) has a new one.
    pub fn copy_id(&self) -> [u8; 16] {
        *self.copy_id.as_bytes()
    }

    /// Highest epoch this copy accepted writes from.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Raises the accepted epoch to `epoch` (durably); returns the current
    /// one. Writes of older epochs are refused from then on.
    pub async fn accept_epoch(&self, epoch: u64) -> Result<u64, VolumeError> {
        if epoch <= self.epoch() {
            return Ok(self.epoch());
        }
        let _one = self.epoch_lock.lock().await;
        if epoch > self.epoch() {
            let m = CopyMeta {
                copy_id: self.copy_id,
                epoch,
            };
            let path = self.meta_path.clone();
            // The new epoch is durable before any write of it is applied.
            off_thread(move || {
                let json = serde_json::to_vec(&m).expect("serializable");
                Ok(durable::write_atomic(&path, &json)?)
            })
            .await?;
            self.epoch.store(epoch, Ordering::Release);
        }
        Ok(self.epoch())
    }

    /// Makes a new replication connection the only one that may change the
    /// copy, once every request of older ones still running has finished;
    /// returns its number. A primary that gave up on a connection (and
    /// resyncs over a new one) would otherwise see a write it sent on the
    /// old one land after the resync, over newer data: TCP still delivers
    /// what was in flight when a link came back, and a frozen replica reads
    /// it when it wakes.
    pub async fn open_session(&self) -> u64 {
        let mut current = self.session.write().await;
        *current += 1;
        *current
    }

    /// Admits one request of replication connection `session`: held while
    /// the request changes the copy; `None` once a newer connection opened.
    pub async fn in_session(&self, session: u64) -> Option<tokio::sync::RwLockReadGuard<'_, u64>> {
        let current = self.session.read().await;
        (*current == session).then_some(current)
    }

    /// As [`LocalCopy::in_session`] without waiting: `None` also while a
    /// newer connection waits to open (the caller then waits its turn).
    pub fn in_session_now(&self, session: u64) -> Option<tokio::sync::RwLockReadGuard<'_, u64>> {
        let current = self.session.try_read().ok()?;
        (*current == session).then_some(current)
    }

    /// Regions of the activity log, as byte ranges.
    pub fn suspect_ranges(&self) -> Vec<(u64, u64)> {
        self.activity.ranges()
    }

    /// Marks the regions of a write about to be issued as a primary, durably
    /// when one was clean, and counts the write in flight until the guard drops.
    pub async fn enter(&self, offset: u64, len: u64) -> Result<ActivityGuard<'_>, VolumeError> {
        let entered = self.activity.enter(offset, len);
        if !entered.marked() {
            let (log, (first, last)) = (self.activity.clone(), entered.regions());
            // The regions are marked on disk before the write is issued.
            off_thread(move || log.mark(first, last)).await?;
        }
        Ok(entered)
    }

    /// As [`LocalCopy::enter`] when the regions are marked in the log
    /// already; `None`, with nothing counted, when marking them would wait
    /// for the disk.
    pub fn enter_now(&self, offset: u64, len: u64) -> Option<ActivityGuard<'_>> {
        let entered = self.activity.enter(offset, len);
        entered.marked().then_some(entered)
    }

    /// Clears activity-log regions that had no write in flight and none
    /// since the previous sweep, once whatever records their writes for
    /// absent peers (the primary's peer maps) and the data itself are durable.
    pub async fn sweep(&self) -> Result<(), VolumeError> {
        let _one = self.activity_lock.lock().await;
        // Regions written since the last sweep get one more sweep of grace.
        let quiet = self.activity.quiet();
        if quiet.is_empty() {
            return Ok(());
        }
        let maps: Vec<Arc<DirtyMap>> = self.peer_maps.read().unwrap().clone();
        for m in maps.into_iter().filter(|m| m.changed()) {
            off_thread(move || m.persist()).await?;
        }
        // The regions' data is durable on this copy before they leave the log.
        if let Err(e) = self.volume.flush().await {
            self.disk_failed(&e);
            return Err(e);
        }
        let log = self.activity.clone();
        off_thread(move || log.clear(&quiet)).await
    }

    /// Flushes the volume: every completed write is durable once it
    /// returns (see [`LocalCopy::disk_failed`] for a failure).
    pub async fn flush(&self) -> Result<(), VolumeError> {
        let flushed = self.volume.flush().await;
        if let Err(e) = &flushed {
            self.disk_failed(e);
        }
        flushed
    }

    /// The copy's disk failed a write or a sync (`e`, where it is an I/O
    /// error or a full filesystem). A failed sync may have dropped any
    /// write not yet known durable (Linux marks those pages clean and
    /// reports the error once: the next sync succeeds without them), so the
    /// regions of the activity log stay marked until a primary is told of
    /// them at its next hello ([`LocalCopy::suspect_ranges`] in the
    /// welcome) and copies them back; before, a sweep whose sync succeeded
    /// would clear them and leave those writes missing here unnoticed.
    pub fn disk_failed(&self, e: &VolumeError) {
        if matches!(e, VolumeError::Io(_) | VolumeError::NoSpace) {
            self.activity.pin();
        }
    }

    /// Whether the disk failed since the regions of the activity log were
    /// last handed to a primary ([`LocalCopy::disk_failed`]).
    pub fn disk_failed_since_hello(&self) -> bool {
        self.activity.pinned()
    }

    /// A primary was told of the regions of the activity log (a hello's
    /// welcome): it copies them back, and sweeps may clear them again.
    pub fn suspects_handed_over(&self) {
        self.activity.unpin();
    }

    /// Registers (replacing any before) the dirty maps a primary keeps for
    /// its peers; each sweep makes them durable before clearing the log.
    pub fn set_peer_maps(&self, maps: Vec<Arc<DirtyMap>>) {
        *self.peer_maps.write().unwrap() = maps;
    }

    /// Path of a file of this copy with the given extension.
    pub fn file(&self, ext: &str) -> PathBuf {
        self.base.with_extension(ext)
    }

    /// Remembers the identity of a primary's copy seen in its hello.
    pub fn note_copy(&self, node: u64, copy_id: [u8; 16]) {
        if copy_id != [0; 16] {
            self.known_copies.write().unwrap().insert(node, copy_id);
        }
    }

    /// The identity of `node`'s copy, if this node has seen it.
    pub fn known_copy(&self, node: u64) -> Option<[u8; 16]> {
        self.known_copies.read().unwrap().get(&node).copied()
    }

    /// Grows the local volume to `blocks` blocks, the activity log and the
    /// maps a primary keeps of what its peers miss first: a write that
    /// reaches the new blocks the moment the volume has them is counted
    /// and marked like any other (a map too small drops the marks past
    /// its end, and a peer out of sync would never get those writes).
    pub async fn grow(&self, blocks: u64) -> Result<(), VolumeError> {
        let bytes = blocks.saturating_mul(self.volume.block_size() as u64);
        self.activity.grow(bytes);
        for m in self.peer_maps.read().unwrap().iter() {
            m.grow(bytes);
        }
        self.volume.resize(blocks).await
    }

    /// Keeps `state`, the volume's persistent reservations as the primary
    /// has them now, durably beside the copy: whichever copy's node is the
    /// next primary starts from them.
    pub async fn save_reservations(&self, state: bytes::Bytes) -> Result<(), VolumeError> {
        let path = self.file(RESERVATIONS);
        let bytes = state.clone();
        off_thread(move || Ok(durable::write_atomic(&path, &bytes)?)).await?;
        *self.reservations.lock().unwrap() = Some(state);
        Ok(())
    }

    /// Takes `state` as the volume's persistent reservations in force from
    /// now on, without writing it: a new primary that starts from what
    /// APTPL kept on disk hands that on to its peers, not the whole file.
    pub fn hold_reservations(&self, state: bytes::Bytes) {
        *self.reservations.lock().unwrap() = Some(state);
    }

    /// The volume's persistent reservations as this copy has them, if it
    /// holds any (an empty state is none).
    pub fn reservations(&self) -> std::io::Result<Option<SavedReservations>> {
        if let Some(state) = self.reservations.lock().unwrap().clone() {
            return Ok((!state.is_empty()).then_some(SavedReservations {
                state,
                current: true,
            }));
        }
        match std::fs::read(self.file(RESERVATIONS)) {
            Ok(b) => Ok((!b.is_empty()).then(|| SavedReservations {
                state: b.into(),
                current: false,
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Notes that `initiator`'s COMPARE AND WRITE of `compare` and `write`
    /// at `lba` was applied to this copy by the primary of `epoch` (this
    /// node's or another's). Commands of an unknown initiator are not noted.
    pub fn note_compare_and_write(
        &self,
        lba: u64,
        initiator: &str,
        compare: &[u8],
        write: &[u8],
        epoch: u64,
    ) {
        if initiator.is_empty() {
            return;
        }
        let mut kept = self.compare_and_writes.lock().unwrap();
        if kept.len() == COMPARE_AND_WRITES_KEPT {
            kept.pop_front();
        }
        kept.push_back(Applied {
            lba,
            digest: compare_and_write_digest(initiator, compare, write),
            epoch,
        });
    }

    /// Whether `initiator`'s COMPARE AND WRITE of these very halves at `lba`
    /// was applied to this copy lately (while this process ran) by a
    /// primary older than `epoch`; a match is forgotten, so it is
    /// recognised once.
    ///
    /// When a primary fails with a COMPARE AND WRITE in flight, the
    /// initiator hears "access state transition" and sends it again; if it
    /// had been applied, the blocks now hold its own write half and the
    /// compare fails, though nothing else changed them: an ATS lock
    /// holder (VMFS) takes that for a lost lock. The new primary recognises
    /// the command (same initiator, same halves, applied before this
    /// primary's time, the blocks holding exactly its write half) and
    /// applies it again instead. Under one primary nothing is recognised:
    /// there, an equal command is a new one, and must miscompare.
    pub fn applied_compare_and_write(
        &self,
        lba: u64,
        initiator: &str,
        compare: &[u8],
        write: &[u8],
        epoch: u64,
    ) -> bool {
        if initiator.is_empty() {
            return false;
        }
        let d = compare_and_write_digest(initiator, compare, write);
        let mut kept = self.compare_and_writes.lock().unwrap();
        match kept
            .iter()
            .rposition(|a| a.lba == lba && a.digest == d && a.epoch < epoch)
        {
            Some(i) => {
                kept.remove(i);
                true
            }
            None => false,
        }
    }

    /// Removes the copy's replication files (the volume is being deleted).
    pub fn remove_files(&self) -> std::io::Result<()> {
        for path in [
            self.file("activity"),
            self.file(RESERVATIONS),
            self.meta_path.clone(),
        ] {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use volume::MemVolume;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn epoch_and_identity_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("vol");
        let v: Arc<dyn Volume> = Arc::new(MemVolume::new(512, 1 << 16));
        let c = LocalCopy::open("vol", v.clone(), &base).unwrap();
        let id = c.copy_id();
        assert_eq!(c.accept_epoch(5).await.unwrap(), 5);
        assert_eq!(c.accept_epoch(3).await.unwrap(), 5, "epochs never go back");
        drop(c);
        let c = LocalCopy::open("vol", v, &base).unwrap();
        assert_eq!(c.copy_id(), id);
        assert_eq!(c.epoch(), 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_replication_connection_waits_for_the_old_ones_requests_and_fences_them() {
        let dir = tempfile::tempdir().unwrap();
        let v: Arc<dyn Volume> = Arc::new(MemVolume::new(512, 1 << 10));
        let c = LocalCopy::open("vol", v, &dir.path().join("vol")).unwrap();
        let old = c.open_session().await;
        let running = c.in_session(old).await.expect("the only connection");
        // The newer connection is welcomed only after the request of the
        // older one still running has finished.
        let newer = {
            let c = c.clone();
            tokio::spawn(async move { c.open_session().await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!newer.is_finished(), "welcomed while an older request ran");
        drop(running);
        let new = newer.await.unwrap();
        assert!(new > old);
        // From then on the older connection changes nothing.
        assert!(c.in_session(old).await.is_none());
        assert!(c.in_session(new).await.is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn activity_log_is_durable_and_cleared_when_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("vol");
        let v: Arc<dyn Volume> = Arc::new(MemVolume::new(512, 1 << 16));
        let c = LocalCopy::open("vol", v.clone(), &base).unwrap();
        {
            let _g = c.enter(ACTIVITY_REGION * 2 + 5, 4096).await.unwrap();
            // Durable while the write is in flight: a reopen (crash) sees it.
            let again = LocalCopy::open("vol", v.clone(), &base).unwrap();
            assert_eq!(
                again.suspect_ranges(),
                vec![(ACTIVITY_REGION * 2, ACTIVITY_REGION)]
            );
            c.sweep().await.unwrap();
            assert_eq!(c.suspect_ranges().len(), 1, "busy region stays");
        }
        let peer = Arc::new(DirtyMap::create(&dir.path().join("peer"), 1 << 16, 1 << 25).unwrap());
        peer.mark(0, 1);
        c.set_peer_maps(vec![peer.clone()]);
        c.sweep().await.unwrap();
        assert_eq!(
            c.suspect_ranges().len(),
            1,
            "recently touched region gets a grace sweep"
        );
        c.sweep().await.unwrap();
        assert!(c.suspect_ranges().is_empty());
        assert!(
            !peer.changed(),
            "peer maps are made durable before the log is cleared"
        );
        let again = LocalCopy::open("vol", v, &base).unwrap();
        assert!(again.suspect_ranges().is_empty());
    }
}
