//! The primary's view of a replicated volume: a [`Volume`] that applies
//! every write to the local copy and to every in-sync replica before
//! acknowledging it, and tracks what absent replicas miss.
//!
//! Each peer is in one of four states ([`PeerState`]):
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
//!
//! This file holds the write path (fan-out to the peers, losing a peer,
//! acknowledging); the other parts of the role live beside it in
//! `primary/`: `peer.rs` (peer states, links and their supervision),
//! `resync.rs` (copying a peer's dirty regions back), `handover.rs`
//! (draining the role for a planned switchover), `sweeper.rs` (the
//! activity-log sweep), `audit.rs` (when writes were acknowledged) and
//! `control.rs` (what the role asks of the control plane).

mod audit;
mod control;
mod handover;
mod peer;
mod resync;
mod snapshots;
mod sweeper;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use smallvec::SmallVec;
use tokio::task::JoinHandle;
use volume::{BlockState, Unavailable, Volume, VolumeError};

use crate::auth::ClusterKey;
use crate::copy::{off_thread, LocalCopy};
use crate::dirty::DirtyMap;
use crate::link::LinkError;
use crate::ranges::RangeLock;
use crate::wire::{Failure, Op};

pub use audit::AckWindow;
pub use control::{Control, ControlError};
pub use handover::{Drained, HandOverError};
pub use peer::{NotAPeerState, PeerState, PeerStatus, DISK_RETRY_FIRST, DISK_RETRY_MAX};

use audit::AckCounter;
use peer::{AtomicPeerState, Peer};

/// Bytes per region of a peer's dirty map: the unit of incremental resync.
pub const RESYNC_REGION: u64 = 64 << 10;

/// How often the activity log is swept and replicas told to settle.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The halves of a COMPARE AND WRITE and who sent it.
struct Swap<'a> {
    initiator: &'a str,
    compare: &'a [u8],
    write: &'a [u8],
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

/// A replicated volume as served by its primary.
pub struct Primary {
    copy: Arc<LocalCopy>,
    cfg: PrimaryConfig,
    control: Arc<dyn Control>,
    peers: Vec<Arc<Peer>>,
    ranges: RangeLock,
    deposed: AtomicBool,
    stopped: AtomicBool,
    acks: AckCounter,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    /// Held while the persistent reservations go to the copies, so every
    /// copy gets the changes in the order they were made.
    reservations: tokio::sync::Mutex<()>,
    /// Raised while the volume is handed over: no new command is taken.
    fenced: AtomicBool,
    /// Set once this copy's disk failed and the volume is being handed
    /// to an in-sync copy on another node (see [`Primary::local_failed`]).
    abdicating: AtomicBool,
    /// Commands that change the volume running now (see `handover`).
    active: AtomicUsize,
    /// Woken when the last of them ends.
    idle: tokio::sync::Notify,
    /// Held while a snapshot is taken, and while a peer that caught up
    /// on the snapshots it missed enters the write path: no snapshot is
    /// taken in between without it.
    snapshot_order: tokio::sync::Mutex<()>,
    /// Every change of the volume's blocks or size holds it shared while
    /// it runs; a snapshot holds it alone, so no change is in flight while
    /// it is taken. Fair: once a snapshot waits, new changes wait behind it
    /// (the range lock would let a steady stream of them starve it).
    writes: tokio::sync::RwLock<()>,
}

impl std::fmt::Debug for Primary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Primary")
            .field("volume", &self.copy.name())
            .field("epoch", &self.cfg.epoch)
            .finish()
    }
}

/// The epoch of the primary role that last kept this copy's peer maps
/// (0: none, or a copy from before this was recorded).
fn read_maps_epoch(path: &std::path::Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn unavailable(why: Unavailable) -> VolumeError {
    VolumeError::Unavailable(why)
}

impl Primary {
    /// Takes the primary role for `copy` at `cfg.epoch` with the replicas in
    /// `peers`, and starts connecting to them, resyncing and sweeping.
    pub async fn start(
        copy: Arc<LocalCopy>,
        cfg: PrimaryConfig,
        peers: Vec<PeerSpec>,
        control: Arc<dyn Control>,
    ) -> Result<Arc<Primary>, VolumeError> {
        // The peer maps kept here describe what the copies missed up to the
        // end of this node's last primary role. If this copy has since
        // taken writes of another primary, what a copy out of sync missed
        // under that one is in no map here. With two copies that other
        // primary was the peer itself, which misses nothing of its own
        // epoch; with three or more it may have been a third node, so an
        // out-of-sync copy is copied whole.
        // This copy's disk failed a write or a sync since a primary was
        // last told of the regions it may have lost writes in (a hand-over
        // after that failure that was not committed): the copies in sync
        // hold those writes, and a role here would serve without them and
        // copy its regions over theirs. One of them is to take the volume.
        if copy.disk_failed_since_hello() {
            if let Some(p) = peers.iter().find(|p| p.node != cfg.node && p.in_sync) {
                return Err(VolumeError::Io(std::io::Error::other(format!(
                    "this node's copy failed a write or a sync and may miss writes the copy on node {} holds: that copy is to take the volume",
                    p.node
                ))));
            }
        }
        let accepted_before = copy.epoch();
        let maps_epoch = read_maps_epoch(&copy.file("peers-epoch"));
        let others = peers.iter().filter(|p| p.node != cfg.node).count();
        let maps_stale = accepted_before > maps_epoch && others >= 2;
        let current = copy.accept_epoch(cfg.epoch).await?;
        if current > cfg.epoch {
            return Err(unavailable(Unavailable::Deposed {
                epoch: Some(current),
            }));
        }
        // A write an earlier primary sent this copy may still be running
        // here: it passed the epoch check before the epoch above was taken
        // up, and waits for the disk. Landing after this role's writes, it
        // would overwrite what this role acknowledged. No replication
        // connection may change the copy from now on (a new one opens its
        // own session), and those still running finish first.
        copy.open_session().await;
        let v = copy.volume();
        let bytes = v.num_blocks() * v.block_size() as u64;
        let suspect = copy.suspect_ranges();
        let mut list = Vec::new();
        for spec in peers.into_iter().filter(|p| p.node != cfg.node) {
            let path = copy.file(&format!("peer-{}.dirty", spec.node));
            let dirty = match DirtyMap::load(&path, bytes).map_err(VolumeError::Io)? {
                Some(m) if m.region_bytes() == RESYNC_REGION => {
                    if maps_stale && !spec.in_sync {
                        tracing::warn!(
                            volume = copy.name(),
                            node = spec.node,
                            "another primary led the volume since this node's map of what that copy misses: copying everything"
                        );
                        m.mark_all();
                        // So are the maps kept of the snapshots it missed.
                        snapshots::forget_kept_maps(&copy, spec.node);
                    }
                    m
                }
                _ => {
                    let m =
                        DirtyMap::create(&path, RESYNC_REGION, bytes).map_err(VolumeError::Io)?;
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
            let state = if spec.in_sync {
                PeerState::InSync
            } else {
                PeerState::OutOfSync
            };
            list.push(Arc::new(Peer {
                node: spec.node,
                addr: spec.addr,
                state: AtomicPeerState::new(state),
                link: RwLock::new(None),
                dirty: Arc::new(dirty),
                state_change: tokio::sync::Mutex::new(()),
                linked: AtomicBool::new(false),
                unrecorded: AtomicBool::new(false),
                resync: Default::default(),
                away: AtomicBool::new(false),
                wake: tokio::sync::Notify::new(),
                round_trips: Arc::default(),
                disk: Default::default(),
            }));
        }
        copy.set_peer_maps(list.iter().map(|p| p.dirty.clone()).collect());
        for p in &list {
            let m = p.dirty.clone();
            off_thread(move || m.persist()).await?;
        }
        // The maps are this role's from now on (durable before it writes).
        let epoch_file = copy.file("peers-epoch");
        let epoch = cfg.epoch;
        off_thread(move || {
            durable::write_atomic(&epoch_file, epoch.to_string().as_bytes()).map_err(Into::into)
        })
        .await?;
        let me = Arc::new(Primary {
            copy,
            cfg,
            control,
            peers: list,
            ranges: RangeLock::default(),
            deposed: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            acks: AckCounter::default(),
            tasks: std::sync::Mutex::new(Vec::new()),
            reservations: tokio::sync::Mutex::new(()),
            fenced: AtomicBool::new(false),
            abdicating: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
            snapshot_order: tokio::sync::Mutex::new(()),
            writes: tokio::sync::RwLock::new(()),
        });
        if let Err(e) = me.drop_unrecorded_snapshots().await {
            tracing::warn!(
                volume = me.copy.name(),
                "cannot drop the snapshots never recorded: {e}"
            );
        }
        let mut tasks = Vec::new();
        for p in &me.peers {
            tasks.push(tokio::spawn(peer::supervise(
                Arc::downgrade(&me),
                p.clone(),
            )));
        }
        tasks.push(tokio::spawn(sweeper::sweeper(Arc::downgrade(&me))));
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

    /// Snapshot `id` as this copy holds it (its size is the volume's
    /// when it was taken here).
    pub fn snapshot(&self, id: uuid::Uuid) -> Option<crate::wire::SnapshotMark> {
        self.copy
            .snapshots()?
            .list()
            .into_iter()
            .find(|m| m.id == id)
    }

    /// The volume's size in bytes, as this copy has it.
    pub fn volume_bytes(&self) -> u64 {
        let v = self.copy.volume();
        v.num_blocks() * v.block_size() as u64
    }

    /// Checks a request that reached the primary from another node against
    /// the volume as the primary has it. The sender checked it against its
    /// own view, which can be larger for a moment while a resize reaches
    /// the nodes one by one; unchecked, such a write would fail here but be
    /// applied by a replica that already grew, or fail there and cost an
    /// in-sync replica its place.
    pub fn check_request(&self, op: &Op) -> Result<(), VolumeError> {
        let v = self.copy.volume();
        let (bs, n) = (v.block_size(), v.num_blocks());
        match op {
            Op::Read { lba, blocks } => volume::check_range(n, *lba, *blocks as u64),
            Op::Write { lba, data, .. } => {
                volume::check_range(n, *lba, volume::blocks_in(data.len(), bs)?)
            }
            Op::Unmap { lba, blocks } => volume::check_range(n, *lba, *blocks),
            Op::WriteSame {
                lba,
                blocks,
                pattern,
                ..
            } => {
                volume::check_pattern(pattern.len(), bs)?;
                volume::check_range(n, *lba, *blocks)
            }
            Op::CompareAndWrite { lba, data, .. } => {
                let half = data.len() / 2;
                let blocks = volume::compare_and_write_blocks(half, data.len() - half, bs)?;
                volume::check_range(n, *lba, blocks)
            }
            Op::Flush
            | Op::Resize { .. }
            | Op::Ping
            | Op::Settle
            | Op::Command(_)
            | Op::NexusEnded { .. }
            | Op::Reservations { .. }
            | Op::Snapshots(_) => Ok(()),
        }
    }

    fn check_serving(&self) -> Result<(), VolumeError> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(unavailable(Unavailable::RoleEnded));
        }
        if self.deposed.load(Ordering::Acquire) || self.copy.epoch() > self.cfg.epoch {
            self.deposed.store(true, Ordering::Release);
            return Err(unavailable(Unavailable::Deposed {
                epoch: Some(self.copy.epoch()).filter(|&e| e > self.cfg.epoch),
            }));
        }
        if !self
            .control
            .may_acknowledge(self.copy.name(), self.cfg.epoch)
        {
            return Err(unavailable(Unavailable::LeaseLost));
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
        compare: Option<Swap<'_>>,
        local: impl std::future::Future<Output = Result<(), VolumeError>>,
    ) -> Result<(), VolumeError> {
        let _admitted = self.admit()?;
        self.check_serving()?;
        let bs = self.copy.volume().block_size() as u64;
        let (off, len) = (lba * bs, blocks * bs);
        let _writes = self.writes.read().await;
        let _range = self.ranges.lock(lba, blocks).await;
        if let Some(s) = &compare {
            // COMPARE AND WRITE: the range lock makes compare and write one
            // step against every other write of the volume.
            let current = self.copy.volume().read(lba, blocks as u32).await?;
            if let Some(offset) = volume::first_difference(&current, s.compare) {
                // The same command again, applied under an earlier primary
                // that failed before answering: written again, so every
                // copy has it.
                let again = current == s.write
                    && self.copy.applied_compare_and_write(
                        lba,
                        s.initiator,
                        s.compare,
                        s.write,
                        self.cfg.epoch,
                    );
                if !again {
                    return Err(VolumeError::Miscompare { offset });
                }
                tracing::info!(
                    volume = self.copy.name(),
                    lba,
                    "a COMPARE AND WRITE applied before is sent again: applied again"
                );
            }
        }
        // Marked here before any copy writes: where this disk fails that
        // mark, no copy has the write yet.
        let _active = self.copy.enter(off, len).await.map_err(|e| {
            self.copy.disk_failed(&e);
            self.local_failed(e)
        })?;
        // A volume has at most two peers: no allocation per write.
        let mut calls: SmallVec<[_; 2]> = SmallVec::new();
        let mut failures = Vec::new();
        for p in &self.peers {
            match p.state() {
                PeerState::OutOfSync => {
                    p.dirty.mark(off, len);
                }
                // Its out-of-sync record is not committed yet: this write
                // misses it, so it waits for that record like a failure.
                PeerState::Losing => failures.push((p, LinkError::Down(p.addr.clone()))),
                _ => calls.push((p, p.link())),
            }
        }
        // Sent before the local write starts, so both proceed together;
        // each peer gets the link's timeout from here, not from when the
        // answers of the peers before it came (or did not).
        let sent_at = std::time::Instant::now();
        let mut sent: SmallVec<[_; 2]> = SmallVec::new();
        for (p, link) in &calls {
            let call = link
                .as_ref()
                .ok_or_else(|| LinkError::Down(p.addr.clone()))
                .and_then(|l| l.send(self.cfg.epoch, op.clone()));
            sent.push((*p, call));
        }
        // A request alone on its link leaves before the local write starts
        // (its flusher runs now), so the copies write while this one does.
        if sent.iter().any(|(_, c)| c.as_ref().is_ok_and(|c| c.lone())) {
            tokio::task::yield_now().await;
        }
        let local_result = local.await;
        for (p, call) in sent {
            let r = match call {
                Ok(c) => c.wait_from(sent_at).await.map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                failures.push((p, e));
            }
        }
        for (p, e) in failures {
            p.dirty.mark(off, len);
            if let Some(why) = peer::disk_failure(&e) {
                self.disk_failed(p, &why);
            }
            if let LinkError::Failed {
                failure: Failure::StaleEpoch { current },
                ..
            } = &e
            {
                self.deposed.store(true, Ordering::Release);
                return Err(unavailable(Unavailable::Deposed {
                    epoch: Some(*current),
                }));
            }
            self.lose(p, &e).await?;
        }
        if let Err(e) = local_result {
            // Peers may hold the new data while this copy does not: let
            // resync bring them back to this copy's contents (or, where
            // this copy's disk failed, the volume goes to one of them).
            for p in &self.peers {
                p.dirty.mark(off, len);
            }
            self.copy.disk_failed(&e);
            let e = self.local_failed(e);
            if self.abdicating.load(Ordering::SeqCst) {
                // The copies took what this one failed: its activity log
                // keeps these regions marked for as long as this process
                // runs (no sweep clears them), to report them as suspect
                // to the new primary, which resyncs them here.
                std::mem::forget(_active);
            }
            return Err(e);
        }
        self.check_serving()?;
        if let Some(s) = compare {
            self.copy
                .note_compare_and_write(lba, s.initiator, s.compare, s.write, self.cfg.epoch);
        }
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
    async fn lose(&self, p: &Peer, e: &(dyn std::fmt::Display + Sync)) -> Result<(), VolumeError> {
        let _one = p.state_change.lock().await;
        match p.state() {
            PeerState::InSync | PeerState::Losing => {
                if let Some(l) = p.link.write().unwrap().take() {
                    l.close();
                }
                // Out of the write path, but writes that skip it wait for
                // the record below (they queue on `state_change`).
                p.state.store(PeerState::Losing);
                // A primary that may not acknowledge anyway does not try.
                self.check_serving()?;
                if p.away.load(Ordering::Acquire) {
                    tracing::info!(
                        volume = self.copy.name(),
                        node = p.node,
                        "replica kept away, recording it out of sync: {e}"
                    );
                } else {
                    tracing::warn!(
                        volume = self.copy.name(),
                        node = p.node,
                        "replica failed a write, recording it out of sync: {e}"
                    );
                }
                if let Err(why) = self
                    .control
                    .replica_lost(self.copy.name(), p.node, self.cfg.epoch)
                    .await
                {
                    // Not recorded: the peer still counts as in sync, so no
                    // write it missed may be acknowledged. The next write
                    // tries the record again.
                    p.state.store(PeerState::InSync);
                    return Err(unavailable(Unavailable::NotRecorded {
                        node: p.node,
                        why: why.to_string(),
                    }));
                }
                p.state.store(PeerState::OutOfSync);
                Ok(())
            }
            PeerState::Syncing => {
                tracing::info!(
                    volume = self.copy.name(),
                    node = p.node,
                    "resync interrupted: {e}"
                );
                p.state.store(PeerState::OutOfSync);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Sends an operation to every peer that takes writes, all at once
    /// (a slow peer costs one link timeout in all, not one per peer);
    /// peers that fail are lost.
    async fn to_peers(&self, op: Op) -> Result<(), VolumeError> {
        let mut failures = Vec::new();
        let mut links = Vec::new();
        for p in &self.peers {
            match p.state() {
                PeerState::OutOfSync => continue,
                PeerState::Losing => {
                    failures.push((p, LinkError::Down(p.addr.clone())));
                    continue;
                }
                _ => {}
            }
            match p.link() {
                Some(l) => links.push((p, l)),
                None => failures.push((p, LinkError::Down(p.addr.clone()))),
            }
        }
        let sent_at = std::time::Instant::now();
        let sent: Vec<_> = links
            .iter()
            .map(|(p, l)| (*p, l.send(self.cfg.epoch, op.clone())))
            .collect();
        for (p, call) in sent {
            let r = match call {
                Ok(c) => c.wait_from(sent_at).await.map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                failures.push((p, e));
            }
        }
        for (p, e) in failures {
            if let Some(why) = peer::disk_failure(&e) {
                self.disk_failed(p, &why);
            }
            self.lose(p, &e).await?;
        }
        Ok(())
    }
}

impl Drop for Primary {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The volume's operations as the primary runs them. The caller
/// ([`crate::ClusterVolume`]) has checked every range and length against the
/// volume's geometry.
impl Primary {
    /// Reads from the local copy.
    pub async fn read(&self, lba: u64, blocks: u32) -> volume::Result<Vec<u8>> {
        self.check_fence()?;
        self.check_serving()?;
        self.copy.volume().read(lba, blocks).await
    }

    /// As [`Primary::read`], when the local copy has the blocks at
    /// hand; a write always waits for the peers.
    pub fn read_now(&self, lba: u64, blocks: u32) -> Option<volume::Result<Vec<u8>>> {
        self.check_fence().ok()?;
        self.check_serving().ok()?;
        self.copy.volume().read_now(lba, blocks)
    }

    /// Writes `data` to the local copy and every in-sync or syncing peer.
    pub async fn write(&self, lba: u64, data: Bytes, fua: bool) -> volume::Result<()> {
        let v = self.copy.volume();
        let blocks = volume::blocks_in(data.len(), v.block_size())?;
        let mine = data.clone();
        let local = async move {
            // Most writes land in the page cache right away: no boxed
            // future of the volume's for them.
            if !fua {
                if let Some(r) = v.write_now(lba, &mine) {
                    return r;
                }
            }
            v.write(lba, mine, fua).await
        };
        self.replicate(lba, blocks, Op::Write { lba, fua, data }, None, local)
            .await
    }

    /// Makes every completed write durable here and on every peer written to.
    pub async fn flush(&self) -> volume::Result<()> {
        let _admitted = self.admit()?;
        self.check_serving()?;
        let local = self.copy.flush();
        let (l, r) = tokio::join!(local, self.to_peers(Op::Flush));
        r?;
        l.map_err(|e| self.local_failed(e))?;
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
    /// `write` everywhere, atomically against every other write; for
    /// `initiator` (empty when not known), see
    /// [`LocalCopy::applied_compare_and_write`].
    pub async fn compare_and_write(
        &self,
        initiator: &str,
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
        // The replicas get both halves: they apply the write and remember
        // the command, for the primary after a failover to recognise it.
        let mut both = Vec::with_capacity(compare.len() + write.len());
        both.extend_from_slice(&compare);
        both.extend_from_slice(&write);
        let op = Op::CompareAndWrite {
            lba,
            fua,
            initiator: initiator.to_string(),
            data: Bytes::from(both),
        };
        let swap = Swap {
            initiator,
            compare: &compare,
            write: &write,
        };
        self.replicate(lba, blocks, op, Some(swap), local).await
    }

    /// Whether the range at `lba` is mapped, from the local copy.
    pub async fn block_status(&self, lba: u64) -> volume::Result<(BlockState, u64)> {
        self.copy.volume().block_status(lba).await
    }

    /// Keeps the volume's persistent reservations (`state`, encoded) on
    /// this copy and on every peer that takes writes, like a write: a peer
    /// that fails it is recorded out of sync first, and without the
    /// control plane to record that, or without the right to acknowledge,
    /// it fails. A peer out of sync gets them before it is in sync again.
    ///
    /// The peers first: a change that fails there is not in this copy
    /// either, so it can come into force nowhere (this copy is what the
    /// next link gets and what this node starts from as primary again).
    pub async fn save_reservations(&self, state: Bytes) -> volume::Result<()> {
        let _admitted = self.admit()?;
        self.check_serving()?;
        let _order = self.reservations.lock().await;
        self.to_peers(Op::Reservations {
            state: state.clone(),
        })
        .await?;
        self.check_serving()?;
        self.copy.save_reservations(state).await
    }

    /// Grows the volume here, then on the peers: a change of the volume
    /// like a write, so a snapshot waits for it or it for the snapshot
    /// (each copy's snapshot has the size of the others').
    pub async fn resize(&self, blocks: u64) -> volume::Result<()> {
        let _admitted = self.admit()?;
        self.check_serving()?;
        let _writes = self.writes.read().await;
        let _all = self.ranges.lock(0, u64::MAX).await;
        self.copy.grow(blocks).await?;
        let bytes = blocks * self.copy.volume().block_size() as u64;
        for p in &self.peers {
            p.dirty.grow(bytes);
        }
        drop(_all);
        self.to_peers(Op::Resize { blocks }).await
    }
}
