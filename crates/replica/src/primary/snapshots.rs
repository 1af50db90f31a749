//! Snapshots of a replicated volume (docs/snapshots.md, "Cluster
//! volumes"): the primary orders a snapshot like a write and every copy
//! that holds all acknowledged writes takes it at the same point.
//!
//! - Taking one: new writes wait while the ones in flight finish; this copy takes it, then every
//!   in-sync peer. A peer that fails it, or that is catching up, is
//!   recorded out of sync before the snapshot counts as taken.
//! - A peer out of sync misses the snapshot. What it misses of it is what
//!   its dirty map held at that moment: the map is kept beside the copy
//!   under the snapshot's id (`peer-N.snap-ID.dirty`). When the peer
//!   returns, before it takes writes again, each snapshot it misses is
//!   caught up in order: those regions (and the ones it may hold
//!   unacknowledged writes in) are copied from the snapshot's image into
//!   its copy, and it takes the snapshot. Without a kept map (a new copy,
//!   another primary meanwhile), the whole image is copied. Then the
//!   ordinary resync brings its copy up to this one.
//! - A peer holding a snapshot this copy does not (one that a primary that
//!   failed took before it was recorded) drops it when it connects.

use std::sync::atomic::Ordering;

use volume::{Unavailable, VolumeError};

use super::resync::ResyncError;
use super::{Peer, PeerState, Primary, RESYNC_REGION};
use crate::copy::off_thread;
use crate::dirty::DirtyMap;
use crate::link::{Call, Link, LinkError};
use crate::wire::{Failure, Op, SnapshotMark, SnapshotOp};

/// Most bytes one request of a snapshot's catch-up carries.
const CATCH_UP_IO: u64 = 1 << 20;

/// Requests of a catch-up in flight at once.
const CATCH_UP_WINDOW: usize = 8;

impl Primary {
    /// Takes a snapshot of every volume in `parts` at one point of their
    /// write orders: writes to all of them wait while it is taken on each
    /// copy that holds every acknowledged write. Callers order the parts
    /// (by volume name) so that groups never wait for each other.
    ///
    /// On success every in-sync copy holds each snapshot, and each copy
    /// that does not is recorded out of sync with what it misses kept.
    /// On failure the snapshots taken are deleted again (a copy that
    /// cannot be reached drops it when it connects next).
    pub async fn take_snapshots(parts: &[(&Primary, SnapshotMark)]) -> Result<(), VolumeError> {
        let mut admitted = Vec::with_capacity(parts.len());
        for (p, _) in parts {
            admitted.push(p.admit()?);
            p.check_serving()?;
            if p.copy.snapshots().is_none() {
                return Err(VolumeError::Io(std::io::Error::other(format!(
                    "volume {}: its copy keeps no snapshots",
                    p.copy.name()
                ))));
            }
        }
        let mut order = Vec::with_capacity(parts.len());
        for (p, _) in parts {
            order.push(p.snapshot_order.lock().await);
        }
        let mut fences = Vec::with_capacity(parts.len());
        for (p, _) in parts {
            fences.push(p.writes.write().await);
        }
        for (i, (p, mark)) in parts.iter().enumerate() {
            if let Err(e) = p.snapshot_fenced(mark).await {
                for (q, m) in &parts[..=i] {
                    q.drop_snapshot_everywhere(m).await;
                }
                return Err(e);
            }
        }
        drop(fences);
        // A primary that may no longer acknowledge (deposed, its lease
        // run out) never has the snapshots recorded: they go again.
        if let Some(e) = parts.iter().find_map(|(p, _)| p.check_serving().err()) {
            for (p, m) in parts {
                p.drop_snapshot_everywhere(m).await;
            }
            return Err(e);
        }
        Ok(())
    }

    /// Takes `mark` here and on every in-sync peer, the caller holding
    /// the volume's writes back (none in flight).
    async fn snapshot_fenced(&self, mark: &SnapshotMark) -> Result<(), VolumeError> {
        let store = self.copy.snapshots().expect("checked by the caller");
        let began = std::time::Instant::now();
        store.take(mark).await?;
        // A copy in sync takes it as this one did (the store's sync of the
        // copy): about as long, twice, and the link's timeout.
        let allowed = self.cfg.timeout + 2 * began.elapsed();
        let take = Op::Snapshots(SnapshotOp::Take(mark.clone()));
        let missed = self.to_copies_in_sync(&take, allowed).await?;
        for (p, why) in missed {
            tracing::info!(
                volume = self.copy.name(),
                node = p.node,
                snapshot = %mark.name,
                "the copy misses the snapshot: {why}"
            );
            self.lose(p, &format!("it misses snapshot {}: {why}", mark.name))
                .await?;
        }
        for p in &self.peers {
            if p.state() != PeerState::InSync {
                self.keep_snapshot_map(p, mark).await;
            }
        }
        Ok(())
    }

    /// Sends `op` (a change of the whole copy: a snapshot or a rollback)
    /// to every peer in sync with nothing left to reconcile, each within
    /// `allowed`, the caller holding the volume's writes back. Returns the
    /// peers that did not take it, with why: those, and every other peer
    /// not out of sync already (its copy differs from this one, and would
    /// after the change too). A peer that has seen a newer epoch deposes
    /// this role.
    async fn to_copies_in_sync(
        &self,
        op: &Op,
        allowed: std::time::Duration,
    ) -> Result<Vec<(&Peer, String)>, VolumeError> {
        let mut missed: Vec<(&Peer, String)> = Vec::new();
        for p in &self.peers {
            let link = match p.state() {
                // Regions of it may hold writes no copy acknowledged, which
                // differ between the copies.
                PeerState::InSync if p.dirty.count() > 0 => {
                    missed.push((
                        p,
                        "it still reconciles regions written before its last stop".into(),
                    ));
                    continue;
                }
                PeerState::InSync => p.link(),
                PeerState::Syncing => {
                    missed.push((p, "it is catching up".into()));
                    continue;
                }
                PeerState::Losing => {
                    missed.push((p, "it failed a write".into()));
                    continue;
                }
                PeerState::OutOfSync => continue,
            };
            let Some(l) = link else {
                missed.push((p, "it is not connected".into()));
                continue;
            };
            match l.call_at_most(self.cfg.epoch, op.clone(), allowed).await {
                Ok(_) => {}
                Err(LinkError::Failed {
                    failure: Failure::StaleEpoch { current },
                    ..
                }) => {
                    self.deposed.store(true, Ordering::Release);
                    return Err(VolumeError::Unavailable(Unavailable::Deposed {
                        epoch: Some(current),
                    }));
                }
                Err(e) => missed.push((p, e.to_string())),
            }
        }
        Ok(missed)
    }

    /// Keeps what `p` misses of snapshot `mark` (its dirty map now, no
    /// write in flight). Without it the catch-up copies the whole image,
    /// so a failure here costs time, never data.
    async fn keep_snapshot_map(&self, p: &Peer, mark: &SnapshotMark) {
        let path = self.snapshot_map_path(p.node, mark.id);
        let ranges = p.dirty.ranges();
        let tag = p.dirty.tag();
        let v = self.copy.volume();
        let bytes = v.num_blocks() * v.block_size() as u64;
        let kept = off_thread(move || {
            let m = DirtyMap::create(&path, RESYNC_REGION, bytes)?;
            m.mark_ranges(&ranges);
            m.set_tag(tag);
            m.persist()
        })
        .await;
        if let Err(e) = kept {
            tracing::warn!(
                volume = self.copy.name(),
                node = p.node,
                snapshot = %mark.name,
                "cannot keep what the copy misses of the snapshot (it will be copied whole): {e}"
            );
            let _ = std::fs::remove_file(self.snapshot_map_path(p.node, mark.id));
        }
    }

    fn snapshot_map_path(&self, node: u64, id: uuid::Uuid) -> std::path::PathBuf {
        self.copy
            .file(&format!("peer-{node}.snap-{}.dirty", id.simple()))
    }

    /// Deletes a snapshot here and on every peer that takes writes; a
    /// peer that cannot be reached drops it when it connects next.
    async fn drop_snapshot_everywhere(&self, mark: &SnapshotMark) {
        let delete = Op::Snapshots(SnapshotOp::Delete { id: mark.id });
        for p in &self.peers {
            if let Some(l) = p.link() {
                if let Err(e) = l.call(self.cfg.epoch, delete.clone()).await {
                    tracing::info!(volume = self.copy.name(), node = p.node, snapshot = %mark.name, "the copy keeps the snapshot until it connects again: {e}");
                }
            }
            let _ = std::fs::remove_file(self.snapshot_map_path(p.node, mark.id));
        }
        if let Some(s) = self.copy.snapshots() {
            if let Err(e) = s.delete(mark.id).await {
                tracing::warn!(volume = self.copy.name(), snapshot = %mark.name, "cannot delete the snapshot here: {e}");
            }
        }
    }

    /// Deletes snapshot `id` of the volume: here and on every copy that
    /// takes writes (the others drop it when they connect next).
    pub async fn delete_snapshot(&self, id: uuid::Uuid) -> Result<(), VolumeError> {
        let _admitted = self.admit()?;
        self.check_serving()?;
        let _order = self.snapshot_order.lock().await;
        let Some(store) = self.copy.snapshots() else {
            return Ok(());
        };
        let Some(mark) = store.list().into_iter().find(|m| m.id == id) else {
            return Ok(());
        };
        self.drop_snapshot_everywhere(&mark).await;
        Ok(())
    }

    /// Makes the volume's content snapshot `id`'s again on this copy and
    /// every in-sync peer. New commands fail meanwhile as an access state
    /// transition (initiators retry them once it is done) and those in
    /// flight finish first (up to `limit`). A peer that fails it, or is
    /// catching up or out of sync, is recorded out of sync and copied whole
    /// when it returns: what it misses is no longer known.
    pub async fn rollback(
        &self,
        id: uuid::Uuid,
        limit: std::time::Duration,
    ) -> Result<(), VolumeError> {
        self.check_serving()?;
        let Some(store) = self.copy.snapshots() else {
            return Err(VolumeError::Io(std::io::Error::other(
                "this copy keeps no snapshots",
            )));
        };
        let Some(mark) = store.list().into_iter().find(|m| m.id == id) else {
            return Err(VolumeError::Io(std::io::Error::other(format!(
                "this copy holds no snapshot {id}"
            ))));
        };
        // Fenced before the snapshot order is taken: a snapshot (or a
        // delete) counts as a command in flight while it waits for that
        // order, so one let in after the rollback took it would hold the
        // rollback up until it gave up.
        let _fence = self
            .fence_commands(limit)
            .await
            .map_err(|e| VolumeError::Io(std::io::Error::other(e.to_string())))?;
        let _order = self.snapshot_order.lock().await;
        // Peers catching up stop first, so that no chunk of theirs lands
        // (and clears its regions) after the copy changed under it.
        for p in &self.peers {
            if p.state() == PeerState::Syncing {
                self.lose(p, &"the volume is rolled back").await?;
            }
        }
        let _all = self.ranges.lock(0, u64::MAX).await;
        let bytes = self.volume_bytes();
        // Every region changes: logged first, as a write's, so that this
        // copy is resynced whole if it stops in the middle.
        let _active = self.copy.enter(0, bytes).await?;
        let began = std::time::Instant::now();
        if let Err(e) = store.rollback(id).await {
            // This copy may hold part of the snapshot's content now, which
            // no peer does: every peer is sent every region (an in-sync one
            // reconciles them and stays in sync), for the copies to agree
            // with the one reads come from.
            for p in &self.peers {
                p.dirty.mark_all();
                p.wake.notify_one();
            }
            return Err(e);
        }
        // A copy in sync rewrites what this one did: it gets about as long
        // as this copy took (twice, and the link's timeout), not only the
        // link's timeout, after which it would be lost and copied whole.
        let allowed = self.cfg.timeout + 2 * began.elapsed();
        let op = Op::Snapshots(SnapshotOp::Rollback { id });
        let missed = self.to_copies_in_sync(&op, allowed).await?;
        // Marked whole before the record: a record that fails leaves the
        // copy in sync for the control plane, and it is then reconciled
        // whole when it returns rather than counted in sync as it is.
        for (p, why) in missed {
            p.dirty.mark_all();
            self.lose(p, &format!("it missed the rollback: {why}"))
                .await?;
        }
        for p in &self.peers {
            if p.state() != PeerState::InSync {
                p.dirty.mark_all();
            }
        }
        tracing::info!(
            volume = self.copy.name(),
            snapshot = %mark.name,
            "volume rolled back on every copy in sync"
        );
        Ok(())
    }

    /// At the start of the role: drops the snapshots of this copy that the
    /// control plane does not record (taken by an earlier role that ended
    /// before it recorded them: never acknowledged), and the kept maps of
    /// snapshots gone.
    pub(super) async fn drop_unrecorded_snapshots(&self) -> Result<(), VolumeError> {
        let (Some(store), Some(recorded)) = (
            self.copy.snapshots(),
            self.control.recorded_snapshots(self.copy.name()),
        ) else {
            return Ok(());
        };
        let mine = store.list();
        for m in mine.iter().filter(|m| !recorded.contains(&m.id)) {
            tracing::warn!(
                volume = self.copy.name(),
                snapshot = %m.name,
                "dropping a snapshot that was never recorded (its primary ended first)"
            );
            store.delete(m.id).await?;
        }
        forget_maps_of_snapshots_gone(&self.copy, &store.list());
        Ok(())
    }

    /// A peer just connected: it drops the snapshots this copy does not
    /// hold. Returns whether it holds every snapshot this copy does; an
    /// in-sync peer that does not is recorded out of sync (the caller
    /// keeps it out of the write path when that fails).
    pub(super) async fn reconcile_snapshots(&self, p: &Peer, link: &Link) -> Result<(), String> {
        let Some(store) = self.copy.snapshots() else {
            return Ok(());
        };
        let _order = self.snapshot_order.lock().await;
        let mine = store.list();
        if !self.snapshots_in_use(&mine) {
            return Ok(());
        }
        let theirs = self.peer_snapshots(link).await?;
        for t in theirs.iter().filter(|t| !mine.iter().any(|m| m.id == t.id)) {
            tracing::info!(
                volume = self.copy.name(),
                node = p.node,
                snapshot = %t.name,
                "the copy drops a snapshot the primary does not hold"
            );
            link.call(
                self.cfg.epoch,
                Op::Snapshots(SnapshotOp::Delete { id: t.id }),
            )
            .await
            .map_err(|e| format!("dropping snapshot {} there: {e}", t.name))?;
        }
        let missing = mine.iter().any(|m| !theirs.iter().any(|t| t.id == m.id));
        if missing && p.state() == PeerState::InSync {
            self.lose(p, &"it misses a snapshot")
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Whether the peers are asked about snapshots: only where the volume
    /// has some, here or recorded (then every member reads the protocol's
    /// snapshot operations; a member of an earlier version would close the
    /// link at one). A copy left with one that was never recorded while
    /// the volume has none drops it if it leads the volume one day.
    fn snapshots_in_use(&self, mine: &[SnapshotMark]) -> bool {
        !mine.is_empty()
            || self
                .control
                .recorded_snapshots(self.copy.name())
                .is_some_and(|r| !r.is_empty())
    }

    /// The snapshots the copy at the end of `link` holds.
    async fn peer_snapshots(&self, link: &Link) -> Result<Vec<SnapshotMark>, String> {
        let answer = link
            .call(self.cfg.epoch, Op::Snapshots(SnapshotOp::List))
            .await
            .map_err(|e| {
                format!(
                    "listing its snapshots: {e} (a node of a version without snapshots of cluster volumes closes the link here: a volume with snapshots needs every copy on a version that keeps them)"
                )
            })?;
        serde_json::from_slice(&answer).map_err(|e| format!("its list of snapshots: {e}"))
    }

    /// Before a peer out of sync takes writes again: brings it every
    /// snapshot it misses, oldest first. Returns holding the snapshot
    /// order, for the caller to put the peer in the write path before
    /// another snapshot can be taken without it.
    pub(super) async fn catch_up_snapshots(
        &self,
        p: &Peer,
        link: &Link,
    ) -> Result<Option<tokio::sync::MutexGuard<'_, ()>>, ResyncError> {
        let Some(store) = self.copy.snapshots() else {
            return Ok(None);
        };
        loop {
            let order = self.snapshot_order.lock().await;
            let mine = store.list();
            if !self.snapshots_in_use(&mine) {
                return Ok(Some(order));
            }
            let theirs = self
                .peer_snapshots(link)
                .await
                .map_err(ResyncError::Snapshot)?;
            // Snapshots are taken oldest first: the first one the peer
            // misses, and every later one it holds goes first.
            let Some(first) = mine
                .iter()
                .position(|m| !theirs.iter().any(|t| t.id == m.id))
            else {
                return Ok(Some(order));
            };
            for later in &mine[first + 1..] {
                if theirs.iter().any(|t| t.id == later.id) {
                    link.call(
                        self.cfg.epoch,
                        Op::Snapshots(SnapshotOp::Delete { id: later.id }),
                    )
                    .await
                    .map_err(|cause| ResyncError::SnapshotLink {
                        what: format!("dropping snapshot {} there", later.name),
                        cause,
                    })?;
                }
            }
            let mark = mine[first].clone();
            drop(order);
            self.catch_up_one(p, link, &mark).await?;
        }
    }

    /// Makes the peer's copy the image of snapshot `mark` and has it take
    /// the snapshot.
    async fn catch_up_one(
        &self,
        p: &Peer,
        link: &Link,
        mark: &SnapshotMark,
    ) -> Result<(), ResyncError> {
        let store = self.copy.snapshots().expect("checked by the caller");
        let v = self.copy.volume();
        let bs = v.block_size() as u64;
        let image_blocks = match mark.size_bytes {
            0 => v.num_blocks(),
            b => (b / bs).min(v.num_blocks()),
        };
        let path = self.snapshot_map_path(p.node, mark.id);
        let bytes = v.num_blocks() * bs;
        let kept = off_thread(move || DirtyMap::load(&path, bytes)).await;
        // The regions to copy: what the peer missed when the snapshot was
        // taken and where it may hold writes nobody acknowledged; all of
        // them without a kept map of this copy of the peer's.
        let all_regions = bytes.div_ceil(RESYNC_REGION);
        let regions = match kept {
            Ok(Some(m)) if m.tag() == link.welcome().copy_id && m.tag() != [0; 16] => {
                m.mark_ranges(&link.welcome().suspect);
                Some(m)
            }
            _ => None,
        };
        let next = |from: u64| match &regions {
            Some(m) => m.next_set(from),
            None => (from < all_regions).then_some(from),
        };
        let is_set = |r: u64| match &regions {
            Some(m) => m.is_set(r),
            None => r < all_regions,
        };
        // Each region written holds the snapshot's image on the peer from
        // then on, not this copy's head (a chunk of an earlier resync may
        // have brought it writes made after the snapshot, and cleared the
        // region): the resync after the catch-up copies them all again.
        // Durable before the peer takes the snapshot, which ends its
        // catch-up: a later role knows them from this map alone.
        match &regions {
            Some(m) => p.dirty.mark_ranges(&m.ranges()),
            None => p.dirty.mark_all(),
        }
        let dirty = p.dirty.clone();
        off_thread(move || dirty.persist())
            .await
            .map_err(|e| ResyncError::Snapshot(format!("keeping what the copy misses: {e}")))?;
        let total = regions.as_ref().map_or(all_regions, |m| m.count()) * RESYNC_REGION;
        tracing::info!(
            volume = self.copy.name(),
            node = p.node,
            snapshot = %mark.name,
            bytes = total,
            whole = regions.is_none(),
            "catching up a snapshot the copy misses"
        );
        let began = std::time::Instant::now();
        let mut calls: Vec<Call<'_>> = Vec::new();
        let mut cursor = 0;
        while let Some(first) = next(cursor) {
            if self.stopped.load(Ordering::Acquire) || p.away.load(Ordering::Acquire) {
                let _ = super::resync::answered(calls).await;
                return Err(ResyncError::Stopped);
            }
            let mut n = 1;
            while n * RESYNC_REGION < CATCH_UP_IO && is_set(first + n) {
                n += 1;
            }
            cursor = first + n;
            let lba = first * RESYNC_REGION / bs;
            let end = ((first + n) * RESYNC_REGION / bs).min(image_blocks);
            if lba >= end {
                continue;
            }
            let data = match store.read(mark.id, lba, (end - lba) as u32).await {
                Ok(d) => d,
                Err(e) => {
                    let _ = super::resync::answered(calls).await;
                    return Err(ResyncError::Snapshot(format!(
                        "reading blocks {lba}..{end} of snapshot {}: {e}",
                        mark.name
                    )));
                }
            };
            let op = if data.iter().all(|&b| b == 0) {
                Op::Unmap {
                    lba,
                    blocks: end - lba,
                }
            } else {
                Op::Write {
                    lba,
                    fua: false,
                    data: volume::buffer::into_bytes(data),
                }
            };
            if calls.len() >= CATCH_UP_WINDOW {
                let done = std::mem::take(&mut calls);
                super::resync::answered(done)
                    .await
                    .map_err(|cause| copying(&mark.name, cause))?;
            }
            match link.send(self.cfg.epoch, op) {
                Ok(c) => calls.push(c),
                Err(e) => {
                    let _ = super::resync::answered(calls).await;
                    return Err(copying(&mark.name, e));
                }
            }
        }
        super::resync::answered(calls)
            .await
            .map_err(|cause| copying(&mark.name, cause))?;
        // The peer's copy is the snapshot's image now: it takes the
        // snapshot (which makes those blocks durable first), in order with
        // the deletes: one deleted meanwhile went to the copies already.
        let _order = self.snapshot_order.lock().await;
        if !store.list().iter().any(|m| m.id == mark.id) {
            return Ok(());
        }
        link.call(
            self.cfg.epoch,
            Op::Snapshots(SnapshotOp::Take(mark.clone())),
        )
        .await
        .map_err(|cause| ResyncError::SnapshotLink {
            what: format!("taking snapshot {}", mark.name),
            cause,
        })?;
        let _ = std::fs::remove_file(self.snapshot_map_path(p.node, mark.id));
        tracing::info!(
            volume = self.copy.name(),
            node = p.node,
            snapshot = %mark.name,
            bytes = total,
            ms = began.elapsed().as_millis() as u64,
            "snapshot caught up"
        );
        Ok(())
    }
}

/// The peer failed a request that copies snapshot `name`'s image to it:
/// where its disk failed, it is detached as for a failed write.
fn copying(name: &str, cause: crate::link::LinkError) -> ResyncError {
    ResyncError::SnapshotLink {
        what: format!("copying the image of snapshot {name}"),
        cause,
    }
}

/// Removes the maps kept of the snapshots the copy on `node` missed: they
/// no longer tell what it misses (its catch-up copies the images whole).
pub(super) fn forget_kept_maps(copy: &crate::copy::LocalCopy, node: u64) {
    let prefix = format!("peer-{node}.snap-");
    remove_kept_maps(copy, |name| name.starts_with(&prefix));
}

/// Removes the maps kept of snapshots this copy no longer holds.
fn forget_maps_of_snapshots_gone(copy: &crate::copy::LocalCopy, held: &[SnapshotMark]) {
    remove_kept_maps(copy, |name| {
        let id = name
            .split_once(".snap-")
            .and_then(|(_, id)| id.strip_suffix(".dirty"));
        !held
            .iter()
            .any(|m| Some(m.id.simple().to_string().as_str()) == id)
    });
}

/// Removes the kept maps (`peer-N.snap-ID.dirty` beside the copy) whose
/// name, from `peer-` on, `gone` picks.
fn remove_kept_maps(copy: &crate::copy::LocalCopy, gone: impl Fn(&str) -> bool) {
    let probe = copy.file("peer-x.snap-x.dirty");
    let (Some(dir), Some(base)) = (
        probe.parent(),
        probe
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix("peer-x.snap-x.dirty")),
    ) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(kept) = name.to_str().and_then(|n| n.strip_prefix(base)) else {
            continue;
        };
        if kept.starts_with("peer-")
            && kept.contains(".snap-")
            && kept.ends_with(".dirty")
            && gone(kept)
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
