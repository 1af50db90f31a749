//! The control-plane side of a primary: what a primary role asks of the
//! cluster through this node's membership.

use std::collections::HashMap;
use std::sync::Weak;

use async_trait::async_trait;
use cluster::{Command, ReplicaState};
use replica::{ControlError, PeerState};

use super::{Clustered, RECORD_TIMEOUT};

/// What a primary asks of the control plane, through this node's membership.
pub(super) struct ControlPlaneLink {
    pub(super) cluster: Weak<Clustered>,
    /// Number of the last report made per (volume, replica node): reports
    /// are numbered so that one given up on cannot land after a later one.
    pub(super) reports: std::sync::Mutex<HashMap<(String, u64), u64>>,
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
        match tokio::time::timeout(RECORD_TIMEOUT, record).await {
            Ok(r) => r,
            Err(_) => Err(ControlError::NoQuorum {
                waited: RECORD_TIMEOUT,
            }),
        }
    }

    async fn replica_in_sync(
        &self,
        volume: &str,
        node: u64,
        epoch: u64,
    ) -> Result<(), ControlError> {
        self.set(volume, node, PeerState::InSync, epoch).await
    }

    fn recorded_snapshots(&self, volume: &str) -> Option<Vec<uuid::Uuid>> {
        let c = self.cluster.upgrade()?;
        let state = c.cluster.state();
        let v = state.volumes.get(volume)?;
        Some(v.snapshots.iter().map(|s| s.id).collect())
    }

    async fn replica_syncing(&self, volume: &str, node: u64, epoch: u64) {
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
