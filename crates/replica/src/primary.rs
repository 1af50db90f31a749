//! The primary's view of a replicated volume: a [`Volume`] that applies
//! every write to the local copy and to every in-sync replica before
//! acknowledging it, and tracks what absent replicas miss.
//!
//! Each peer is in one of three modes:
//! - in sync: it has every acknowledged write. A write it fails makes the
//!   primary record it out of sync in the control plane *before* the write
//!   is acknowledged, so a replica without an acknowledged write is never
//!   promoted.
//! - syncing: it is catching up. Writes are sent to it, but its failures
//!   only mark regions dirty.
//! - losing: it failed a write and the record that it is out of sync is
//!   being committed. Writes do not go to it, but none is acknowledged until
//!   that record has committed; if it cannot be, they fail.
//! - out of sync (recorded): writes only mark its dirty map.
//!
//! The dirty map of a peer has [`RESYNC_REGION`] granularity (64 KiB). It is
//! kept in memory and made durable by the activity-log sweep before the
//! activity log forgets the regions of those writes, so after a crash of the
//! primary "peer map ∪ activity log" still covers every region a peer may
//! miss. When a peer comes back the primary copies only its dirty regions,
//! under the same range lock as writes, then switches it to in sync behind a
//! barrier (no write in flight) and records that in the control plane.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use volume::{BlockState, Volume, VolumeError};

use crate::auth::ClusterKey;
use crate::copy::{off_thread, LocalCopy};
use crate::dirty::DirtyMap;
use crate::link::{Link, LinkError};
use crate::ranges::RangeLock;
use crate::wire::{Failure, Hello, Mode, Op};

/// Bytes per region of a peer's dirty map: the unit of incremental resync.
pub const RESYNC_REGION: u64 = 64 << 10;

/// Largest run of dirty regions copied by one resync request.
const RESYNC_CHUNK: u64 = 1 << 20;

/// How often the activity log is swept and replicas told to settle.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

const IN_SYNC: u8 = 0;
const SYNCING: u8 = 1;
const OUT_OF_SYNC: u8 = 2;
const LOSING: u8 = 3;

/// What the replicated volume asks of the control plane.
#[async_trait]
pub trait Control: Send + Sync + 'static {
    /// Whether this node may still acknowledge writes of `volume` as its
    /// primary at `epoch`: false once its lease may have expired (a new
    /// primary could be promoted) or once the cluster state it follows no
    /// longer names it primary at that epoch.
    fn may_acknowledge(&self, volume: &str, epoch: u64) -> bool;

    /// Records durably (a committed control-plane change) that `node`'s copy
    /// of `volume` misses writes. Called before a write it missed is
    /// acknowledged; must give up (fail) within about a lease rather than wait
    /// for a quorum that may never come back.
    async fn replica_lost(&self, volume: &str, node: u64, epoch: u64) -> Result<(), String>;

    /// Records durably that `node`'s copy holds every acknowledged write again.
    async fn replica_in_sync(&self, volume: &str, node: u64, epoch: u64) -> Result<(), String>;

    /// Reports resync progress (best effort, for status displays).
    async fn replica_syncing(&self, volume: &str, node: u64, epoch: u64, done: u64, total: u64);
}

/// A replica of the volume as the control plane places it.
#[derive(Debug, Clone)]
pub struct PeerSpec {
    /// Node id.
    pub node: u64,
    /// Replication address (host:port).
    pub addr: String,
    /// Whether the control plane records the replica as holding every write.
    pub in_sync: bool,
}

/// Settings of a primary.
#[derive(Debug, Clone)]
pub struct PrimaryConfig {
    /// This node's id.
    pub node: u64,
    /// The epoch the control plane gave this primary.
    pub epoch: u64,
    /// Cluster secret for replication connections.
    pub key: ClusterKey,
    /// Time a replica gets to answer a request before it counts as gone.
    pub timeout: Duration,
}

/// When a primary acknowledged writes of a volume, for audits: two nodes
/// must never acknowledge writes of one volume at the same time. Times are
/// wall-clock microseconds since the Unix epoch, taken after the last check
/// that this node may still act as primary.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AckWindow {
    /// Epoch the writes were acknowledged under.
    pub epoch: u64,
    /// Writes acknowledged.
    pub writes: u64,
    /// First acknowledgement.
    pub first_us: u64,
    /// Last acknowledgement.
    pub last_us: u64,
}

#[derive(Default)]
struct AckCounter {
    writes: AtomicU64,
    first_us: AtomicU64,
    last_us: AtomicU64,
}

impl AckCounter {
    fn record(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1)
            .max(1);
        let _ = self
            .first_us
            .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
        self.last_us.fetch_max(now, Ordering::AcqRel);
        self.writes.fetch_add(1, Ordering::AcqRel);
    }
}

/// A peer as status displays show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerStatus {
    /// Node id.
    pub node: u64,
    /// "in-sync", "syncing" or "out-of-sync" (also while that is being recorded).
    pub state: String,
    /// Whether a connection is up.
    pub connected: bool,
    /// Bytes the peer is known to miss.
    pub dirty_bytes: u64,
    /// Bytes copied by the running resync.
    pub resync_done: u64,
    /// Bytes the running resync set out to copy.
    pub resync_total: u64,
}

struct Peer {
    node: u64,
    addr: String,
    mode: AtomicU8,
    link: RwLock<Option<Arc<Link>>>,
    dirty: Arc<DirtyMap>,
    /// Serializes control-plane changes of this peer's state.
    state_change: tokio::sync::Mutex<()>,
    /// Whether this primary role ever had a link to the peer.
    linked: AtomicBool,
    /// In sync here, but the control plane has not recorded it so yet.
    unrecorded: AtomicBool,
    done: AtomicU64,
    total: AtomicU64,
}

impl Peer {
    fn mode(&self) -> u8 {
        self.mode.load(Ordering::Acquire)
    }

    fn link(&self) -> Option<Arc<Link>> {
        self.link
            .read()
            .unwrap()
            .as_ref()
            .filter(|l| l.is_alive())
            .cloned()
    }
}

/// A replicated volume as served by its primary.
pub struct ReplicatedVolume {
    copy: Arc<LocalCopy>,
    cfg: PrimaryConfig,
    control: Arc<dyn Control>,
    peers: Vec<Arc<Peer>>,
    ranges: RangeLock,
    deposed: AtomicBool,
    stopped: AtomicBool,
    acks: AckCounter,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for ReplicatedVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicatedVolume")
            .field("volume", &self.copy.name())
            .field("epoch", &self.cfg.epoch)
            .finish()
    }
}

fn unavailable(why: impl Into<String>) -> VolumeError {
    VolumeError::Unavailable(why.into())
}

impl ReplicatedVolume {
    /// Takes the primary role for `copy` at `cfg.epoch` with the replicas in
    /// `peers`, and starts connecting to them, resyncing and sweeping.
    pub async fn start(
        copy: Arc<LocalCopy>,
        cfg: PrimaryConfig,
        peers: Vec<PeerSpec>,
        control: Arc<dyn Control>,
    ) -> Result<Arc<ReplicatedVolume>, VolumeError> {
        let current = copy.accept_epoch(cfg.epoch).await?;
        if current > cfg.epoch {
            return Err(unavailable(format!(
                "volume {}: this copy already follows epoch {current}, newer than {}",
                copy.name(),
                cfg.epoch
            )));
        }
        let v = copy.volume();
        let bytes = v.num_blocks() * v.block_size() as u64;
        let suspect = copy.suspect_ranges();
        let mut list = Vec::new();
        for spec in peers.into_iter().filter(|p| p.node != cfg.node) {
            let path = copy.file(&format!("peer-{}.dirty", spec.node));
            let dirty = match DirtyMap::load(&path, bytes).map_err(VolumeError::Io)? {
                Some(m) if m.region_bytes() == RESYNC_REGION => m,
                _ => {
                    let m = DirtyMap::new(RESYNC_REGION, bytes, Some(path));
                    if let Some(id) = copy.known_copy(spec.node) {
                        m.set_tag(id);
                    } else if !spec.in_sync {
                        // Nothing tells what an out-of-sync copy we never
                        // tracked misses: copy everything.
                        m.mark_all();
                    }
                    m
                }
            };
            // Regions this copy wrote without knowing whether peers got them.
            dirty.mark_ranges(&suspect);
            let mode = if spec.in_sync { IN_SYNC } else { OUT_OF_SYNC };
            list.push(Arc::new(Peer {
                node: spec.node,
                addr: spec.addr,
                mode: AtomicU8::new(mode),
                link: RwLock::new(None),
                dirty: Arc::new(dirty),
                state_change: tokio::sync::Mutex::new(()),
                linked: AtomicBool::new(false),
                unrecorded: AtomicBool::new(false),
                done: AtomicU64::new(0),
                total: AtomicU64::new(0),
            }));
        }
        copy.set_peer_maps(list.iter().map(|p| p.dirty.clone()).collect());
        for p in &list {
            let m = p.dirty.clone();
            off_thread(move || m.persist()).await?;
        }
        let me = Arc::new(ReplicatedVolume {
            copy,
            cfg,
            control,
            peers: list,
            ranges: RangeLock::default(),
            deposed: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            acks: AckCounter::default(),
            tasks: std::sync::Mutex::new(Vec::new()),
        });
        let mut tasks = Vec::new();
        for p in &me.peers {
            tasks.push(tokio::spawn(supervise(Arc::downgrade(&me), p.clone())));
        }
        tasks.push(tokio::spawn(sweeper(Arc::downgrade(&me))));
        *me.tasks.lock().unwrap() = tasks;
        tracing::info!(
            volume = me.copy.name(),
            epoch = me.cfg.epoch,
            peers = me.peers.len(),
            "serving as primary"
        );
        Ok(me)
    }

    /// Gives up the primary role: background work stops, I/O fails from now on.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        for p in &self.peers {
            if let Some(l) = p.link.write().unwrap().take() {
                l.close();
            }
        }
    }

    /// The epoch this primary writes with.
    pub fn epoch(&self) -> u64 {
        self.cfg.epoch
    }

    /// The writes this primary acknowledged, if any.
    pub fn acknowledged(&self) -> Option<AckWindow> {
        let writes = self.acks.writes.load(Ordering::Acquire);
        (writes > 0).then(|| AckWindow {
            epoch: self.cfg.epoch,
            writes,
            first_us: self.acks.first_us.load(Ordering::Acquire),
            last_us: self.acks.last_us.load(Ordering::Acquire),
        })
    }

    /// State of every peer.
    pub fn peer_status(&self) -> Vec<PeerStatus> {
        self.peers
            .iter()
            .map(|p| PeerStatus {
                node: p.node,
                state: match p.mode() {
                    IN_SYNC if p.dirty.count() == 0 => "in-sync",
                    IN_SYNC | SYNCING => "syncing",
                    _ => "out-of-sync",
                }
                .into(),
                connected: p.link().is_some(),
                dirty_bytes: p.dirty.count() * RESYNC_REGION,
                resync_done: p.done.load(Ordering::Relaxed),
                resync_total: p.total.load(Ordering::Relaxed),
            })
            .collect()
    }

    fn check_serving(&self) -> Result<(), VolumeError> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(unavailable("this node gave up the primary role"));
        }
        if self.deposed.load(Ordering::Acquire) || self.copy.epoch() > self.cfg.epoch {
            self.deposed.store(true, Ordering::Release);
            return Err(unavailable("a newer primary has taken over the volume"));
        }
        if !self
            .control
            .may_acknowledge(self.copy.name(), self.cfg.epoch)
        {
            return Err(unavailable(
                "this node lost contact with the control plane (lease expired) or no longer leads the volume",
            ));
        }
        Ok(())
    }

    /// Applies a change to the local copy and every in-sync or syncing peer,
    /// then handles peers that failed it. `range` is in blocks.
    async fn replicate(
        &self,
        lba: u64,
        blocks: u64,
        op: Op,
        compare: Option<Bytes>,
        local: impl std::future::Future<Output = Result<(), VolumeError>>,
    ) -> Result<(), VolumeError> {
        self.check_serving()?;
        let bs = self.copy.volume().block_size() as u64;
        let (off, len) = (lba * bs, blocks * bs);
        let _range = self.ranges.lock(lba, blocks).await;
        if let Some(compare) = compare {
            // COMPARE AND WRITE: the range lock makes compare and write one
            // step against every other write of the volume.
            let current = self.copy.volume().read(lba, blocks as u32).await?;
            if let Some(offset) = volume::first_difference(&current, &compare) {
                return Err(VolumeError::Miscompare { offset });
            }
        }
        let _active = self.copy.enter(off, len).await?;
        let mut calls = Vec::with_capacity(self.peers.len());
        let mut failures = Vec::new();
        for p in &self.peers {
            match p.mode() {
                OUT_OF_SYNC => {
                    p.dirty.mark(off, len);
                }
                // Its out-of-sync record is not committed yet: this write
                // misses it, so it waits for that record like a failure.
                LOSING => failures.push((p, LinkError::Down(p.addr.clone()))),
                _ => calls.push((p, p.link())),
            }
        }
        // Sent before the local write starts, so both proceed together.
        let mut sent = Vec::with_capacity(calls.len());
        for (p, link) in &calls {
            let call = link
                .as_ref()
                .ok_or_else(|| LinkError::Down(p.addr.clone()))
                .and_then(|l| l.send(self.cfg.epoch, op.clone()));
            sent.push((*p, call));
        }
        let local_result = local.await;
        for (p, call) in sent {
            let r = match call {
                Ok(c) => c.wait().await.map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                failures.push((p, e));
            }
        }
        for (p, e) in failures {
            p.dirty.mark(off, len);
            if let LinkError::Failed {
                failure: Failure::StaleEpoch { current },
                ..
            } = &e
            {
                self.deposed.store(true, Ordering::Release);
                return Err(unavailable(format!(
                    "volume {}: node {} follows a newer primary (epoch {current})",
                    self.copy.name(),
                    p.node
                )));
            }
            self.lose(p, &e).await?;
        }
        if local_result.is_err() {
            // Peers may hold the new data while this copy does not: let
            // resync bring them back to this copy's contents.
            for p in &self.peers {
                p.dirty.mark(off, len);
            }
        }
        local_result?;
        self.check_serving()?;
        self.acks.record();
        Ok(())
    }

    /// A peer failed a request (or a write skipped it while it was being
    /// lost): out of the write path, recorded in the control plane before
    /// any write it missed is acknowledged. Returns once that record has
    /// committed; an error means the caller's write must fail.
    ///
    /// Callers may hold a range of the write ordering: nothing that holds
    /// `state_change` waits for ranges, so this cannot deadlock.
    async fn lose(&self, p: &Peer, e: &LinkError) -> Result<(), VolumeError> {
        let _one = p.state_change.lock().await;
        match p.mode() {
            IN_SYNC | LOSING => {
                if let Some(l) = p.link.write().unwrap().take() {
                    l.close();
                }
                // Out of the write path, but writes that skip it wait for
                // the record below (they queue on `state_change`).
                p.mode.store(LOSING, Ordering::Release);
                // A primary that may not acknowledge anyway does not try.
                self.check_serving()?;
                tracing::warn!(
                    volume = self.copy.name(),
                    node = p.node,
                    "replica failed a write, recording it out of sync: {e}"
                );
                if let Err(why) = self
                    .control
                    .replica_lost(self.copy.name(), p.node, self.cfg.epoch)
                    .await
                {
                    // Not recorded: the peer still counts as in sync, so no
                    // write it missed may be acknowledged. The next write
                    // tries the record again.
                    p.mode.store(IN_SYNC, Ordering::Release);
                    return Err(unavailable(format!(
                        "volume {}: replica on node {} failed and the control plane could not record it: {why}",
                        self.copy.name(),
                        p.node
                    )));
                }
                p.mode.store(OUT_OF_SYNC, Ordering::Release);
                Ok(())
            }
            SYNCING => {
                tracing::info!(
                    volume = self.copy.name(),
                    node = p.node,
                    "resync interrupted: {e}"
                );
                p.mode.store(OUT_OF_SYNC, Ordering::Release);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Sends an operation to every peer that takes writes; peers that fail are lost.
    async fn to_peers(&self, op: Op) -> Result<(), VolumeError> {
        let mut failures = Vec::new();
        for p in &self.peers {
            match p.mode() {
                OUT_OF_SYNC => continue,
                LOSING => {
                    failures.push((p, LinkError::Down(p.addr.clone())));
                    continue;
                }
                _ => {}
            }
            let r = match p.link() {
                Some(l) => l.call(self.cfg.epoch, op.clone()).await.map(|_| ()),
                None => Err(LinkError::Down(p.addr.clone())),
            };
            if let Err(e) = r {
                failures.push((p, e));
            }
        }
        for (p, e) in failures {
            self.lose(p, &e).await?;
        }
        Ok(())
    }

    /// Copies the dirty regions of `p` over `link`; then, behind a barrier,
    /// switches it to in sync and records that.
    async fn resync(&self, p: &Peer, link: &Link) -> Result<(), String> {
        let v = self.copy.volume();
        let bs = v.block_size() as u64;
        let was = p.mode();
        if was == LOSING {
            return Err("its out-of-sync record is not committed yet".into());
        }
        if was == OUT_OF_SYNC
            && p.mode
                .compare_exchange(OUT_OF_SYNC, SYNCING, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return Err("its state changed".into());
        }
        let total = p.dirty.count() * RESYNC_REGION;
        p.total.store(total, Ordering::Relaxed);
        p.done.store(0, Ordering::Relaxed);
        let name = self.copy.name().to_string();
        // An in-sync peer only reconciles regions where unacknowledged
        // writes may differ: it stays in sync for the control plane.
        let report = was != IN_SYNC;
        if total > 0 {
            tracing::info!(volume = %name, node = p.node, bytes = total, "resync starts");
            if report {
                self.control
                    .replica_syncing(&name, p.node, self.cfg.epoch, 0, total)
                    .await;
            }
        }
        let mut last_report = Instant::now();
        let regions_per_chunk = RESYNC_CHUNK / RESYNC_REGION;
        let mut cursor = 0;
        while let Some(first) = p.dirty.next_set(cursor) {
            if self.stopped.load(Ordering::Acquire) || matches!(p.mode(), OUT_OF_SYNC | LOSING) {
                return Err("stopped".into());
            }
            let mut n = 1;
            while n < regions_per_chunk && p.dirty.is_set(first + n) {
                n += 1;
            }
            cursor = first + n;
            let lba = first * RESYNC_REGION / bs;
            let end = ((first + n) * RESYNC_REGION / bs).min(v.num_blocks());
            if lba >= end {
                continue;
            }
            let blocks = end - lba;
            let _range = self.ranges.lock(lba, blocks).await;
            self.copy_range(link, lba, blocks)
                .await
                .map_err(|e| format!("copying blocks {lba}..{}: {e}", lba + blocks))?;
            for r in first..first + n {
                p.dirty.clear(r);
            }
            let done = p.done.fetch_add(n * RESYNC_REGION, Ordering::Relaxed) + n * RESYNC_REGION;
            if report && last_report.elapsed() > Duration::from_secs(1) {
                last_report = Instant::now();
                self.control
                    .replica_syncing(&name, p.node, self.cfg.epoch, done, total)
                    .await;
            }
        }
        link.call(self.cfg.epoch, Op::Flush)
            .await
            .map_err(|e| e.to_string())?;
        if p.mode() == IN_SYNC {
            if total > 0 {
                tracing::info!(volume = %name, node = p.node, "reconciled regions written before the last stop");
            }
            return Ok(());
        }
        {
            // Barrier: no write in flight, so none issued while the peer was
            // syncing can still fail after it counts as in sync. Taken
            // without `state_change`: a write holding a range may wait for
            // that lock in `lose`.
            let _all = self.ranges.lock(0, u64::MAX).await;
            if p.dirty.count() > 0 || !link.is_alive() {
                return Ok(());
            }
            if p.mode
                .compare_exchange(SYNCING, IN_SYNC, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return Ok(());
            }
        }
        // Records are committed in the order the peer's state changed: a
        // write that fails it from now on records it lost after this.
        let _one = p.state_change.lock().await;
        if p.mode() != IN_SYNC {
            // Lost again (and recorded so) since the barrier.
            return Ok(());
        }
        p.dirty.set_tag(link.welcome().copy_id);
        p.unrecorded.store(true, Ordering::Release);
        self.record_in_sync(p).await?;
        tracing::info!(volume = %name, node = p.node, bytes = total, "replica in sync");
        Ok(())
    }

    /// Records that `p`, in the write path as in sync, holds every write,
    /// the caller holding `state_change`. When that fails the peer stays in
    /// sync here: a record given up on may still commit later, so a write it
    /// misses must still be recorded (after it). The supervisor tries again.
    async fn record_in_sync(&self, p: &Peer) -> Result<(), String> {
        if let Err(why) = self
            .control
            .replica_in_sync(self.copy.name(), p.node, self.cfg.epoch)
            .await
        {
            return Err(format!("recording the replica in sync failed: {why}"));
        }
        p.unrecorded.store(false, Ordering::Release);
        Ok(())
    }
}

impl ReplicatedVolume {
    /// Makes blocks `[lba, lba + blocks)` of the peer behind `link` equal to
    /// this copy's, the caller holding the range: written blocks are sent as
    /// data, unwritten ones unmapped, so the peer's copy stays as thin as
    /// this one and its checksums match block for block.
    async fn copy_range(&self, link: &Link, lba: u64, blocks: u64) -> Result<(), String> {
        let v = self.copy.volume();
        let bs = v.block_size() as usize;
        let data = Bytes::from(
            v.read(lba, blocks as u32)
                .await
                .map_err(|e| format!("reading the local copy: {e}"))?,
        );
        // Which blocks hold written data: mapped ones (a written block of
        // zeros included) and any that does not read as zeros.
        let mut written = Vec::with_capacity(blocks as usize);
        let mut at = lba;
        while at < lba + blocks {
            let (state, n) = v
                .block_status(at)
                .await
                .map_err(|e| format!("reading the local copy's allocation: {e}"))?;
            let n = n.clamp(1, lba + blocks - at);
            written.extend((0..n).map(|_| state == BlockState::Mapped));
            at += n;
        }
        for (i, block) in data.chunks(bs).enumerate() {
            written[i] |= block.iter().any(|&b| b != 0);
        }
        // One request per run of written or unwritten blocks, all in flight
        // together.
        let mut calls = Vec::new();
        let mut start = 0;
        while start < written.len() {
            let kind = written[start];
            let end = written[start..]
                .iter()
                .position(|&w| w != kind)
                .map_or(written.len(), |k| start + k);
            let run_lba = lba + start as u64;
            let op = if kind {
                Op::Write {
                    lba: run_lba,
                    fua: false,
                    data: data.slice(start * bs..end * bs),
                }
            } else {
                Op::Unmap {
                    lba: run_lba,
                    blocks: (end - start) as u64,
                }
            };
            calls.push(link.send(self.cfg.epoch, op).map_err(|e| e.to_string())?);
            start = end;
        }
        for c in calls {
            c.wait().await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// Keeps a connection to one peer and resyncs it whenever it misses writes.
async fn supervise(me: Weak<ReplicatedVolume>, p: Arc<Peer>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(v) = me.upgrade() else { return };
        if v.stopped.load(Ordering::Acquire) {
            return;
        }
        let link = match p.link() {
            Some(l) => Some(l),
            None => {
                let hello = Hello {
                    mode: Mode::Replicate,
                    node: v.cfg.node,
                    epoch: v.cfg.epoch,
                    copy_id: v.copy.copy_id(),
                    volume: v.copy.name().to_string(),
                };
                match Link::connect(&p.addr, &v.cfg.key, &hello, v.cfg.timeout).await {
                    Ok(l) => {
                        let l = Arc::new(l);
                        if v.welcomed(&p, &l).await {
                            backoff = Duration::from_millis(100);
                            Some(l)
                        } else {
                            l.close();
                            None
                        }
                    }
                    Err(e) => {
                        tracing::debug!(
                            volume = v.copy.name(),
                            node = p.node,
                            "replica unreachable: {e}"
                        );
                        if let LinkError::Refused { reason, .. } = &e {
                            if reason.contains("stale") {
                                v.deposed.store(true, Ordering::Release);
                            }
                        }
                        None
                    }
                }
            }
        };
        if p.mode() == LOSING {
            // A write failed it while this node could not record that (its
            // lease had run out): record it now, or no resync can start.
            if let Err(e) = v.lose(&p, &LinkError::Down(p.addr.clone())).await {
                tracing::debug!(volume = v.copy.name(), node = p.node, "{e}");
            }
        }
        if p.mode() == IN_SYNC && p.unrecorded.load(Ordering::Acquire) {
            let _one = p.state_change.lock().await;
            if p.mode() == IN_SYNC && p.unrecorded.load(Ordering::Acquire) {
                match v.record_in_sync(&p).await {
                    Ok(()) => {
                        tracing::info!(volume = v.copy.name(), node = p.node, "replica in sync")
                    }
                    Err(e) => tracing::info!(volume = v.copy.name(), node = p.node, "{e}"),
                }
            }
        }
        if let Some(l) = link {
            if p.mode() != IN_SYNC || p.dirty.count() > 0 {
                if let Err(e) = v.resync(&p, &l).await {
                    tracing::info!(volume = v.copy.name(), node = p.node, "resync paused: {e}");
                    if !l.is_alive() {
                        let _ = v.lose(&p, &LinkError::Down(p.addr.clone())).await;
                    }
                }
            }
        }
        drop(v);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

impl ReplicatedVolume {
    /// A new connection to `p` answered: check which copy it is, take its
    /// suspect regions, and put it in the write path when it may be.
    /// Returns whether the link was taken; if not, the caller drops it and
    /// tries again later.
    async fn welcomed(&self, p: &Peer, l: &Arc<Link>) -> bool {
        let w = l.welcome();
        if w.epoch > self.cfg.epoch {
            self.deposed.store(true, Ordering::Release);
            return false;
        }
        let reconnect = p.linked.swap(true, Ordering::AcqRel);
        let tag = p.dirty.tag();
        if tag != w.copy_id {
            if tag != [0; 16] {
                tracing::warn!(
                    volume = self.copy.name(),
                    node = p.node,
                    "the replica's copy was replaced, copying everything"
                );
                p.dirty.mark_all();
                if self
                    .lose(p, &LinkError::Down(p.addr.clone()))
                    .await
                    .is_err()
                {
                    return false;
                }
            } else if p.mode() != IN_SYNC {
                p.dirty.mark_all();
            }
            p.dirty.set_tag(w.copy_id);
        }
        p.dirty.mark_ranges(&w.suspect);
        if reconnect && p.mode() == IN_SYNC {
            // The link broke while this primary acknowledged writes: the
            // replica may have restarted and lost writes it had not flushed
            // yet, which a SYNCHRONIZE CACHE from now on would promise. It
            // counts as out of sync (recorded) until the resync has copied
            // its suspect regions back.
            if self
                .lose(p, &LinkError::Down(p.addr.clone()))
                .await
                .is_err()
            {
                return false;
            }
        }
        *p.link.write().unwrap() = Some(l.clone());
        true
    }
}

/// Sweeps the activity log and lets replicas settle theirs.
async fn sweeper(me: Weak<ReplicatedVolume>) {
    loop {
        tokio::time::sleep(SWEEP_INTERVAL).await;
        let Some(v) = me.upgrade() else { return };
        if v.stopped.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = v.copy.sweep().await {
            tracing::warn!(volume = v.copy.name(), "activity log sweep failed: {e}");
            continue;
        }
        for p in &v.peers {
            if p.mode() != OUT_OF_SYNC {
                if let Some(l) = p.link() {
                    let _ = l.call(v.cfg.epoch, Op::Settle).await;
                }
            }
        }
    }
}

impl Drop for ReplicatedVolume {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The volume's operations as the primary runs them. The caller
/// ([`crate::ClusterVolume`]) has checked every range and length against the
/// volume's geometry.
impl ReplicatedVolume {
    /// Reads from the local copy.
    pub async fn read(&self, lba: u64, blocks: u32) -> volume::Result<Vec<u8>> {
        self.check_serving()?;
        self.copy.volume().read(lba, blocks).await
    }

    /// As [`ReplicatedVolume::read`], when the local copy has the blocks at
    /// hand; a write always waits for the peers.
    pub fn read_now(&self, lba: u64, blocks: u32) -> Option<volume::Result<Vec<u8>>> {
        self.check_serving().ok()?;
        self.copy.volume().read_now(lba, blocks)
    }

    /// Writes `data` to the local copy and every in-sync or syncing peer.
    pub async fn write(&self, lba: u64, data: Bytes, fua: bool) -> volume::Result<()> {
        let blocks = volume::blocks_in(data.len(), self.copy.volume().block_size())?;
        let local = self.copy.volume().write(lba, data.clone(), fua);
        self.replicate(lba, blocks, Op::Write { lba, fua, data }, None, local)
            .await
    }

    /// Makes every completed write durable here and on every peer written to.
    pub async fn flush(&self) -> volume::Result<()> {
        self.check_serving()?;
        let local = self.copy.volume().flush();
        let (l, r) = tokio::join!(local, self.to_peers(Op::Flush));
        l?;
        r?;
        self.check_serving()
    }

    /// Deallocates the range here and on the peers.
    pub async fn unmap(&self, lba: u64, blocks: u64) -> volume::Result<()> {
        let local = self.copy.volume().unmap(lba, blocks);
        self.replicate(lba, blocks, Op::Unmap { lba, blocks }, None, local)
            .await
    }

    /// WRITE SAME here and on the peers.
    pub async fn write_same(
        &self,
        lba: u64,
        blocks: u64,
        pattern: Bytes,
        unmap: bool,
        fua: bool,
    ) -> volume::Result<()> {
        let local = self
            .copy
            .volume()
            .write_same(lba, blocks, pattern.clone(), unmap, fua);
        let op = Op::WriteSame {
            lba,
            blocks,
            unmap,
            fua,
            pattern,
        };
        self.replicate(lba, blocks, op, None, local).await
    }

    /// Compares `compare` with the local copy and, when equal, writes
    /// `write` everywhere, atomically against every other write.
    pub async fn compare_and_write(
        &self,
        lba: u64,
        compare: Bytes,
        write: Bytes,
        fua: bool,
    ) -> volume::Result<()> {
        let blocks = volume::compare_and_write_blocks(
            compare.len(),
            write.len(),
            self.copy.volume().block_size(),
        )?;
        let local = self.copy.volume().write(lba, write.clone(), fua);
        let op = Op::Write {
            lba,
            fua,
            data: write,
        };
        self.replicate(lba, blocks, op, Some(compare), local).await
    }

    /// Whether the range at `lba` is mapped, from the local copy.
    pub async fn block_status(&self, lba: u64) -> volume::Result<(BlockState, u64)> {
        self.copy.volume().block_status(lba).await
    }

    /// Grows the volume here, then on the peers.
    pub async fn resize(&self, blocks: u64) -> volume::Result<()> {
        self.check_serving()?;
        let _all = self.ranges.lock(0, u64::MAX).await;
        self.copy.volume().resize(blocks).await?;
        self.copy.grown();
        let bytes = blocks * self.copy.volume().block_size() as u64;
        for p in &self.peers {
            p.dirty.grow(bytes);
        }
        drop(_all);
        self.to_peers(Op::Resize { blocks }).await
    }
}
