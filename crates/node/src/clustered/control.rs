//! The control-plane side of a primary: what a primary role asks of the
//! cluster through this node's membership.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use cluster::{Command, ReplicaState};
use replica::{ControlError, PeerState};

use super::{Clustered, RECORD_TIMEOUT};
use crate::{Event, EventKind, EventLog};

/// What a primary asks of the control plane, through this node's membership.
pub(super) struct ControlPlaneLink {
    pub(super) cluster: Weak<Clustered>,
    /// The node, which hands a volume over when its copy here fails.
    pub(super) node: Weak<crate::Node>,
    /// Number of the last report made per (volume, replica node): reports
    /// are numbered so that one given up on cannot land after a later one.
    pub(super) reports: std::sync::Mutex<HashMap<(String, u64), u64>>,
    /// The node's event history: copies out of sync, resyncs.
    pub(super) events: Arc<EventLog>,
}

#[async_trait]
impl replica::Control for ControlPlaneLink {
    fn may_acknowledge(&self, volume: &str, epoch: u64) -> bool {
        // The lease is granted only once this node has applied every change
        // the leader had committed when it answered, so the state read here
        // is at least that fresh: a node restarted with an old state, or one
        // deposed while it was frozen, finds out before it acknowledges.
        self.cluster.upgrade().is_some_and(|c| {
            c.cluster.lease_valid()
                && c.cluster
                    .state()
                    .volumes
                    .get(volume)
                    .is_some_and(|v| v.primary == c.cluster.id() && v.epoch == epoch)
        })
    }

    async fn replica_lost(&self, volume: &str, node: u64, epoch: u64) -> Result<(), ControlError> {
        // Writes wait for this record: without a quorum it gives up rather
        // than hold them until one returns.
        let record = self.set(volume, node, PeerState::OutOfSync, epoch);
        let recorded = match tokio::time::timeout(RECORD_TIMEOUT, record).await {
            Ok(r) => r,
            Err(_) => Err(ControlError::NoQuorum {
                waited: RECORD_TIMEOUT,
            }),
        };
        if recorded.is_ok() {
            // Queued only: the writes waiting for this record do not wait for it.
            self.events.record(
                Event::new(EventKind::CopyOutOfSync)
                    .volume(volume)
                    .node(&self.node_name(node))
                    .with("epoch", epoch),
            );
        }
        recorded
    }

    async fn replica_in_sync(
        &self,
        volume: &str,
        node: u64,
        epoch: u64,
    ) -> Result<(), ControlError> {
        self.set(volume, node, PeerState::InSync, epoch).await?;
        let size = self.cluster.upgrade().map_or(0, |c| {
            c.cluster
                .state()
                .volumes
                .get(volume)
                .map_or(0, |v| v.size_bytes)
        });
        self.events
            .resync_ended(volume, &self.node_name(node), size);
        Ok(())
    }

    fn replica_detached(&self, volume: &str, node: u64, why: &str) {
        // Queued only: the write that found the copy failing does not wait.
        self.events.record(
            Event::new(EventKind::CopyDetached)
                .volume(volume)
                .node(&self.node_name(node))
                .with("reason", why),
        );
    }

    fn primary_disk_failed(&self, volume: &str, epoch: u64, to: u64, why: &str) -> bool {
        let (Some(node), Some(c)) = (self.node.upgrade(), self.cluster.upgrade()) else {
            return false;
        };
        self.events.record(
            Event::new(EventKind::CopyDetached)
                .volume(volume)
                .node(&self.node_name(c.cluster.id()))
                .with("reason", format!("disk failed: {why}"))
                .with("to", self.node_name(to)),
        );
        let volume = volume.to_string();
        // On its own: the command that found the disk failing is answered
        // at once (as a transition), and the drain waits for it to end.
        tokio::spawn(async move {
            match node.hand_over_failed(&volume, epoch, to).await {
                Ok(h) => tracing::info!(
                    volume,
                    to,
                    epoch = h.epoch,
                    "the volume went to the copy on node {to}: this node's disk failed"
                ),
                Err(e) => tracing::warn!(
                    volume,
                    to,
                    "handing the volume over after this node's disk failed did not happen: {e}"
                ),
            }
        });
        true
    }

    fn recorded_snapshots(&self, volume: &str) -> Option<Vec<uuid::Uuid>> {
        let c = self.cluster.upgrade()?;
        let state = c.cluster.state();
        let v = state.volumes.get(volume)?;
        Some(v.snapshots.iter().map(|s| s.id).collect())
    }

    async fn replica_syncing(&self, volume: &str, node: u64, epoch: u64) {
        // The primary set out the bytes to copy before it reports the start.
        let bytes = self.cluster.upgrade().map_or(0, |c| {
            c.server
                .get(volume)
                .and_then(|v| v.primary())
                .and_then(|p| p.peer_status().into_iter().find(|s| s.node == node))
                .map_or(0, |s| s.resync_total)
        });
        self.events
            .resync_started(volume, &self.node_name(node), bytes);
        let _ = self.set(volume, node, PeerState::Syncing, epoch).await;
    }
}

/// How the cluster state records a primary's view of a peer: a peer being
/// lost is recorded out of sync (that record is what it waits for).
fn recorded(state: PeerState) -> ReplicaState {
    match state {
        PeerState::InSync => ReplicaState::InSync,
        PeerState::Syncing => ReplicaState::Syncing,
        PeerState::OutOfSync | PeerState::Losing => ReplicaState::OutOfSync,
    }
}

impl ControlPlaneLink {
    /// The name of member `node` (its id while the state does not name it).
    fn node_name(&self, node: u64) -> String {
        self.cluster
            .upgrade()
            .and_then(|c| c.cluster.state().nodes.get(&node).map(|i| i.name.clone()))
            .unwrap_or_else(|| node.to_string())
    }

    async fn set(
        &self,
        volume: &str,
        node: u64,
        state: PeerState,
        epoch: u64,
    ) -> Result<(), ControlError> {
        let c = self.cluster.upgrade().ok_or(ControlError::Stopping)?;
        // Numbered in the order the primary makes its reports, above any
        // report applied so far (by this node or an earlier primary).
        let seq = {
            let applied = c
                .cluster
                .state()
                .volumes
                .get(volume)
                .and_then(|v| v.reports.get(&node).copied())
                .unwrap_or(0);
            let mut reports = self.reports.lock().unwrap();
            let last = reports.entry((volume.to_string(), node)).or_insert(0);
            *last = (*last).max(applied) + 1;
            *last
        };
        c.cluster
            .propose(Command::SetReplicaState {
                volume: volume.to_string(),
                node,
                state: recorded(state),
                epoch,
                seq,
            })
            .await
            .map_err(|e| match e {
                cluster::ClusterError::Refused(why) => ControlError::Refused(why),
                e => ControlError::Unavailable(e.to_string()),
            })
    }
}
