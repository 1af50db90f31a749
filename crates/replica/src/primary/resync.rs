//! Resync: copying the regions a peer misses back to it, then switching it
//! to in sync behind a barrier and recording that.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use thiserror::Error;
use volume::{BlockState, VolumeError};

use super::{ControlError, Peer, PeerState, Primary, RESYNC_REGION};
use crate::link::{Link, LinkError};
use crate::wire::Op;

/// Largest run of dirty regions copied by one resync request.
const RESYNC_CHUNK: u64 = 1 << 20;

impl Primary {
    /// Copies the dirty regions of `p` over `link`; then, behind a barrier,
    /// switches it to in sync and records that.
    pub(super) async fn resync(&self, p: &Peer, link: &Link) -> Result<(), ResyncError> {
        let v = self.copy.volume();
        let bs = v.block_size() as u64;
        let was = p.state();
        if was == PeerState::Losing {
            return Err(ResyncError::NotRecorded);
        }
        if was == PeerState::OutOfSync
            && p.state
                .compare_exchange(PeerState::OutOfSync, PeerState::Syncing)
                .is_err()
        {
            return Err(ResyncError::StateChanged);
        }
        let total = p.dirty.count() * RESYNC_REGION;
        p.total.store(total, Ordering::Relaxed);
        p.done.store(0, Ordering::Relaxed);
        let name = self.copy.name().to_string();
        // An in-sync peer only reconciles regions where unacknowledged
        // writes may differ: it stays in sync for the control plane.
        let report = was != PeerState::InSync;
        if total > 0 {
            tracing::info!(volume = %name, node = p.node, bytes = total, "resync starts");
            if report {
                self.control
                    .replica_syncing(&name, p.node, self.cfg.epoch)
                    .await;
            }
        }
        let regions_per_chunk = RESYNC_CHUNK / RESYNC_REGION;
        let mut cursor = 0;
        while let Some(first) = p.dirty.next_set(cursor) {
            if self.stopped.load(Ordering::Acquire)
                || matches!(p.state(), PeerState::OutOfSync | PeerState::Losing)
            {
                return Err(ResyncError::Stopped);
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
                .map_err(|cause| ResyncError::Copy {
                    start: lba,
                    end: lba + blocks,
                    cause,
                })?;
            for r in first..first + n {
                p.dirty.clear(r);
            }
            p.done.fetch_add(n * RESYNC_REGION, Ordering::Relaxed);
        }
        link.call(self.cfg.epoch, Op::Flush)
            .await
            .map_err(ResyncError::Flush)?;
        if p.state() == PeerState::InSync {
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
            if p.state
                .compare_exchange(PeerState::Syncing, PeerState::InSync)
                .is_err()
            {
                return Ok(());
            }
        }
        // Records are committed in the order the peer's state changed: a
        // write that fails it from now on records it lost after this.
        let _one = p.state_change.lock().await;
        if p.state() != PeerState::InSync {
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
    pub(super) async fn record_in_sync(&self, p: &Peer) -> Result<(), ResyncError> {
        self.control
            .replica_in_sync(self.copy.name(), p.node, self.cfg.epoch)
            .await
            .map_err(ResyncError::Record)?;
        p.unrecorded.store(false, Ordering::Release);
        Ok(())
    }
}

impl Primary {
    /// Makes blocks `[lba, lba + blocks)` of the peer behind `link` equal to
    /// this copy's, the caller holding the range: written blocks are sent as
    /// data, unwritten ones unmapped, so the peer's copy stays as thin as
    /// this one and its checksums match block for block.
    async fn copy_range(&self, link: &Link, lba: u64, blocks: u64) -> Result<(), CopyError> {
        let v = self.copy.volume();
        let bs = v.block_size() as usize;
        let data = Bytes::from(v.read(lba, blocks as u32).await.map_err(CopyError::Read)?);
        // Which blocks hold written data: mapped ones (a written block of
        // zeros included) and any that does not read as zeros.
        let mut written = Vec::with_capacity(blocks as usize);
        let mut at = lba;
        while at < lba + blocks {
            let (state, n) = v.block_status(at).await.map_err(CopyError::Allocation)?;
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
            calls.push(link.send(self.cfg.epoch, op).map_err(CopyError::Link)?);
            start = end;
        }
        for c in calls {
            c.wait().await.map_err(CopyError::Link)?;
        }
        Ok(())
    }
}

/// Why a resync stopped before the peer was in sync.
#[derive(Debug, Error)]
pub(super) enum ResyncError {
    /// The peer failed a write and the record of that is not committed yet.
    #[error("its out-of-sync record is not committed yet")]
    NotRecorded,
    /// The peer's state changed under the resync.
    #[error("its state changed")]
    StateChanged,
    /// The primary stopped, or the peer was lost again.
    #[error("stopped")]
    Stopped,
    /// A run of dirty blocks could not be copied.
    #[error("copying blocks {start}..{end}: {cause}")]
    Copy {
        start: u64,
        end: u64,
        cause: CopyError,
    },
    /// The peer did not make the copied blocks durable.
    #[error("flushing the replica: {0}")]
    Flush(LinkError),
    /// The peer is in sync but the control plane did not record it.
    #[error("recording the replica in sync failed: {0}")]
    Record(ControlError),
}

/// Why a range could not be copied to a peer.
#[derive(Debug, Error)]
pub(super) enum CopyError {
    /// The local copy could not be read.
    #[error("reading the local copy: {0}")]
    Read(VolumeError),
    /// The local copy's allocation could not be read.
    #[error("reading the local copy's allocation: {0}")]
    Allocation(VolumeError),
    /// The peer did not take the data.
    #[error("{0}")]
    Link(LinkError),
}
