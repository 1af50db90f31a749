//! What the primary role asks of the control plane, and how that fails.

use std::time::Duration;

use async_trait::async_trait;
use thiserror::Error;

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
    async fn replica_lost(&self, volume: &str, node: u64, epoch: u64) -> Result<(), ControlError>;

    /// Records durably that `node`'s copy holds every acknowledged write again.
    async fn replica_in_sync(
        &self,
        volume: &str,
        node: u64,
        epoch: u64,
    ) -> Result<(), ControlError>;

    /// Records that a resync of `node`'s copy started (best effort, for
    /// status displays). Its progress is not recorded: the primary reports
    /// it in [`Primary::peer_status`](super::Primary::peer_status).
    async fn replica_syncing(&self, volume: &str, node: u64, epoch: u64);

    /// Reports that `node`'s copy of `volume` was detached because its disk
    /// failed or it answered too late (`why`: "disk failed: ..." with what
    /// its storage said, or "too slow: ..."), once per episode: the copy is
    /// recorded out of sync through [`Control::replica_lost`] as well, and
    /// tried again by the primary with a growing wait. Must not wait.
    fn replica_detached(&self, volume: &str, node: u64, why: &str) {
        let _ = (volume, node, why);
    }

    /// This node's copy of `volume`, which it leads at `epoch`, failed a
    /// write or a flush (`why`) while the copy on `to` is in sync: the
    /// control plane is to hand the volume to that copy, with this one
    /// recorded out of sync, after the role drained
    /// ([`Primary::drain_failed`](super::Primary::drain_failed)). Returns
    /// whether it set out to; if not, the failure goes to the initiator.
    /// Must not wait (the hand-over runs on its own).
    fn primary_disk_failed(&self, volume: &str, epoch: u64, to: u64, why: &str) -> bool {
        let _ = (volume, epoch, to, why);
        false
    }

    /// The snapshots of `volume` the control plane records, by id, oldest
    /// first; `None` while the cluster keeps no snapshots of its volumes
    /// (some member would not read the replication protocol's snapshot
    /// operations). A primary role starting drops the snapshots of its
    /// copy the record does not list: they were never acknowledged.
    fn recorded_snapshots(&self, volume: &str) -> Option<Vec<uuid::Uuid>> {
        let _ = volume;
        None
    }
}

/// Why the control plane did not record a change of a peer's state.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ControlError {
    /// No quorum committed the record in the time a write may wait for it.
    #[error("no quorum committed the record within {} s", waited.as_secs_f32())]
    NoQuorum { waited: Duration },
    /// This node is shutting down.
    #[error("the node is stopping")]
    Stopping,
    /// The control plane refused the change (for instance, its epoch is
    /// no longer the volume's).
    #[error("the control plane refused the record: {0}")]
    Refused(String),
    /// The control plane could not be asked (no leader, unreachable, ...).
    #[error("the control plane could not record it: {0}")]
    Unavailable(String),
}
