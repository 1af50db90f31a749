//! A planned switchover (`volume move-primary`): the volume's primary
//! stops taking new commands, lets those in flight finish, and the control
//! plane makes the in-sync copy on another running node the primary at a
//! new epoch, the old primary's copy staying in sync. Initiators see at
//! most "access state transition" (NOT READY), which they retry, and reach
//! the new primary when they do.
//!
//! It is a failover without the wait for a silent primary's lease: the old
//! primary fences itself instead (its role takes no command once drained),
//! and the new one takes up its role as after a failover.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cluster::{Command, HandedOver, NodeId, ReplicaState, LOG_VERSION};
use serde::{Deserialize, Serialize};

use super::{cluster_err, Clustered, SERVED_TIMEOUT};
use crate::{Node, NodeError};

/// Time the commands in flight get to finish once the primary stops
/// taking new ones: more than a write may take (a peer's answer, then the
/// record of its loss).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The log version that has [`Command::MovePrimary`].
const MOVE_PRIMARY_VERSION: u32 = 1;
const _: () = assert!(LOG_VERSION >= MOVE_PRIMARY_VERSION);

/// What a planned switchover did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimaryMoved {
    /// The volume.
    pub volume: String,
    /// The old primary.
    pub from: NodeId,
    /// The new primary.
    pub to: NodeId,
    /// The epoch the new primary serves at.
    pub epoch: u64,
    /// Whether the old primary's copy stayed in sync (see
    /// [`HandedOver::kept_in_sync`]).
    pub kept_in_sync: bool,
    /// Microseconds the commands in flight took to finish.
    pub drain_us: u64,
    /// Microseconds from the moment the old primary stopped taking
    /// commands until the new one served, as this node saw it (the old
    /// primary's drain and commit, then the wait here for the new
    /// primary): about the longest a command waited.
    pub paused_us: u64,
}

/// Why a primary hands its volume over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// A planned switchover: every copy stays in sync.
    Planned,
    /// The primary's copy failed a write or a flush as primary at `epoch`.
    DiskFailed { epoch: u64 },
}

/// Answers the cluster's requests to hand over a volume this node leads.
pub(super) struct Switchover {
    pub(super) node: Weak<Node>,
}

#[async_trait]
impl cluster::Handover for Switchover {
    async fn hand_over(&self, volume: &str, to: NodeId) -> Result<HandedOver, String> {
        let node = self.node.upgrade().ok_or("the node is stopping")?;
        // In a task of its own: a request dropped midway (its client gone,
        // a timeout) must not cut the hand-over short between the drain
        // and what follows the commit (taking the role up again when the
        // change did not happen).
        let volume = volume.to_string();
        tokio::spawn(async move { node.hand_over(&volume, to).await })
            .await
            .map_err(|e| format!("the hand-over failed: {e}"))?
            .map_err(|e| e.to_string())
    }

    async fn take_snapshots(
        &self,
        req: cluster::SnapshotRequest,
    ) -> Result<Vec<cluster::SnapshotRecord>, String> {
        let node = self.node.upgrade().ok_or("the node is stopping")?;
        // In a task of its own: a request dropped midway must not cut the
        // snapshot short between its copies and its record.
        tokio::spawn(async move { node.take_cluster_snapshots(req).await })
            .await
            .map_err(|e| format!("the snapshot failed: {e}"))?
            .map_err(|e| e.to_string())
    }

    async fn rollback(&self, req: cluster::SnapshotRef) -> Result<(), String> {
        let node = self.node.upgrade().ok_or("the node is stopping")?;
        tokio::spawn(async move { node.rollback_as_primary(req).await })
            .await
            .map_err(|e| format!("the rollback failed: {e}"))?
            .map_err(|e| e.to_string())
    }

    async fn delete_snapshot(&self, req: cluster::SnapshotRef) -> Result<(), String> {
        let node = self.node.upgrade().ok_or("the node is stopping")?;
        tokio::spawn(async move { node.forget_cluster_snapshot(req).await })
            .await
            .map_err(|e| format!("deleting the snapshot failed: {e}"))?
            .map_err(|e| e.to_string())
    }
}

impl Node {
    /// Makes the in-sync copy of cluster volume `name` on `to` (a member's
    /// name or id) its primary: a planned switchover, run by the current
    /// primary wherever this is asked. Refused, with the reason, when that
    /// copy is not in sync, its node is not running, or it is the primary
    /// already. Returns once the new primary serves the volume.
    pub async fn move_primary(&self, name: &str, to: &str) -> Result<PrimaryMoved, NodeError> {
        let c = self.member()?;
        let state = c.cluster.state();
        let v = state
            .volumes
            .get(name)
            .ok_or_else(|| NodeError::NotFound(name.to_string()))?;
        let target = super::volumes::member_id(&state, to)?;
        let refused = |why: String| NodeError::Refused(format!("volume {name}: {why}"));
        if v.primary == target {
            return Err(refused(format!("node {target} is the primary already")));
        }
        if state.in_maintenance(target) {
            return Err(refused(format!(
                "node {target} is in maintenance (tandem node maintenance exit {target} first)"
            )));
        }
        match v.replicas.get(&target) {
            Some(ReplicaState::InSync) => {}
            Some(st) => {
                return Err(refused(format!(
                    "the copy on node {target} is {}, not in sync; wait until it is",
                    match st {
                        ReplicaState::OutOfSync => "out of sync",
                        _ => "syncing",
                    }
                )))
            }
            None => return Err(refused(format!("node {target} holds no copy of it"))),
        }
        let status = c.cluster.status().await;
        if status.leader.is_none() {
            return Err(refused("the cluster has no leader now".to_string()));
        }
        if !status.reachable(target) {
            return Err(refused(format!(
                "node {target} is not running (the leader has not heard from it lately)"
            )));
        }
        let from = v.primary;
        let handed = c
            .cluster
            .hand_over_on(from, name, target)
            .await
            .map_err(cluster_err)?;
        let committed = Instant::now();
        // The new primary takes up its role at an epoch of its own.
        if let Err(why) = self
            .wait_served(&c, name, handed.epoch, SERVED_TIMEOUT)
            .await
        {
            return Err(refused(format!(
                "node {target} was made the primary at epoch {}, but does not serve yet: {why}",
                handed.epoch
            )));
        }
        let state = c.cluster.state();
        let now = state.volumes.get(name).map(|v| v.primary);
        if now != Some(target) {
            // A failover followed at once (the new primary died): say so
            // rather than report a move that no longer holds.
            return Err(refused(format!(
                "node {target} was made the primary at epoch {}, but {} leads it now",
                handed.epoch,
                now.map_or("no node".to_string(), |n| format!("node {n}"))
            )));
        }
        let epoch = state.volumes.get(name).map_or(handed.epoch, |v| v.epoch);
        let moved = PrimaryMoved {
            volume: name.to_string(),
            from,
            to: target,
            epoch,
            kept_in_sync: handed.kept_in_sync,
            drain_us: handed.drain_us,
            paused_us: handed.drain_us + handed.commit_us + committed.elapsed().as_micros() as u64,
        };
        tracing::info!(
            volume = name,
            from,
            to = target,
            epoch,
            drain_us = moved.drain_us,
            paused_us = moved.paused_us,
            "primary moved"
        );
        self.events.record(
            crate::Event::new(crate::EventKind::PrimaryMoved)
                .volume(name)
                .node(
                    &c.cluster
                        .state()
                        .nodes
                        .get(&target)
                        .map_or_else(|| target.to_string(), |i| i.name.clone()),
                )
                .with(
                    "from",
                    state
                        .nodes
                        .get(&from)
                        .map_or_else(|| from.to_string(), |i| i.name.clone()),
                )
                .with("epoch", epoch)
                .with("pause_us", moved.paused_us),
        );
        Ok(moved)
    }

    /// Hands cluster volume `name`, which this node leads, to the in-sync
    /// copy on `to`: drains this node's primary role, then commits the
    /// change. When the change cannot be committed, the role is taken up
    /// anew (at a new epoch, so a change committed late is refused).
    pub(crate) async fn hand_over(&self, name: &str, to: NodeId) -> Result<HandedOver, NodeError> {
        self.hand_over_as(name, to, Why::Planned).await
    }

    /// Hands cluster volume `name`, which this node leads at `epoch` and
    /// whose copy here failed a write or a flush, to the in-sync copy on
    /// `to`: the role drained (it stopped taking commands when its disk
    /// failed), the control plane promotes that copy with this one recorded
    /// out of sync, as after a failover. When that cannot be committed the
    /// role is taken up anew (and its next failure tries again, or goes to
    /// the initiator where no copy is in sync).
    pub(crate) async fn hand_over_failed(
        &self,
        name: &str,
        epoch: u64,
        to: NodeId,
    ) -> Result<HandedOver, NodeError> {
        let result = self.hand_over_as(name, to, Why::DiskFailed { epoch }).await;
        if result.is_err() {
            // The role fenced itself when its disk failed and serves no
            // more: it is taken up anew, as after a hand-over that did not
            // commit (unless the volume moved on meanwhile).
            if let Ok(c) = self.member() {
                let id = c.cluster.state().volumes.get(name).map(|v| v.id);
                if let Some(id) = id {
                    let mut vols = self.exported.lock().await;
                    if let Some(p) = vols.by_id_mut(id).and_then(|e| e.cluster.as_mut()) {
                        if p.current.as_ref().is_some_and(|(_, e, _)| *e == epoch) {
                            p.current = None;
                        }
                    }
                }
                c.wake.notify_one();
            }
        }
        result
    }

    async fn hand_over_as(
        &self,
        name: &str,
        to: NodeId,
        why: Why,
    ) -> Result<HandedOver, NodeError> {
        let c = self.member()?;
        let state = c.cluster.state();
        let v = state
            .volumes
            .get(name)
            .ok_or_else(|| NodeError::NotFound(name.to_string()))?
            .clone();
        let me = c.cluster.id();
        let refused = |why: String| NodeError::Refused(format!("volume {name}: {why}"));
        if v.primary != me {
            return Err(refused(format!(
                "node {me} is not its primary (node {} is)",
                v.primary
            )));
        }
        let role = {
            let vols = self.exported.lock().await;
            vols.by_id(v.id)
                .and_then(|e| e.cluster.as_ref())
                .and_then(|p| p.volume.primary())
        };
        let Some(role) = role.filter(|p| p.epoch() == v.epoch) else {
            return Err(refused(format!(
                "node {me} is still taking up its primary role; try again"
            )));
        };
        if let Why::DiskFailed { epoch } = why {
            if epoch != v.epoch {
                return Err(refused(format!(
                    "the role whose disk failed (epoch {epoch}) is no longer this node's"
                )));
            }
        }
        // A member that cannot read the planned switchover would stop
        // following the log at it: then the change is made as a failover
        // (the old primary's copy resyncs what it may miss).
        // This copy's disk failed: it may miss what the others hold, so
        // it is recorded out of sync, as after a failover.
        let planned = why == Why::Planned
            && c.cluster
                .log_versions()
                .await
                .values()
                .all(|r| r.as_ref().is_ok_and(|&l| l >= MOVE_PRIMARY_VERSION));
        let drained = match why {
            Why::Planned => role.drain(to, DRAIN_TIMEOUT).await,
            Why::DiskFailed { .. } => role.drain_failed(to, DRAIN_TIMEOUT).await,
        }
        .map_err(|e| NodeError::Refused(e.to_string()))?;
        let drain_us = drained.waited.as_micros() as u64;
        let cmd = if planned {
            Command::MovePrimary {
                volume: name.to_string(),
                node: to,
                expected_epoch: v.epoch,
            }
        } else {
            Command::Promote {
                volume: name.to_string(),
                node: to,
                expected_epoch: v.epoch,
            }
        };
        let committing = Instant::now();
        let outcome = tokio::time::timeout(super::RECORD_TIMEOUT, c.cluster.propose(cmd)).await;
        // Never taken back: whether a change that failed here commits
        // later is not known, and this role must not acknowledge anything
        // meanwhile that the new primary might not have.
        drained.keep();
        let commit_us = committing.elapsed().as_micros() as u64;
        let failed = match outcome {
            Ok(Ok(())) => None,
            // Committed late, or applied here late: the state says.
            Ok(Err(e)) => Some(cluster_err(e)),
            Err(_) => Some(NodeError::Cluster(
                "the control plane did not commit the change in time".to_string(),
            )),
        };
        let moved = c
            .cluster
            .state()
            .volumes
            .get(name)
            // The new primary may have taken its own epoch already.
            .is_some_and(|r| r.id == v.id && r.primary == to && r.epoch > v.epoch);
        if !moved {
            // The drained role serves no more: take the role up anew, at
            // the next epoch (which a late commit of the change then
            // cannot pass).
            {
                let mut vols = self.exported.lock().await;
                if let Some(p) = vols.by_id_mut(v.id).and_then(|e| e.cluster.as_mut()) {
                    p.current = None;
                }
            }
            c.wake.notify_one();
            let why = failed
                .unwrap_or_else(|| NodeError::Cluster("the change was not applied".to_string()));
            tracing::warn!(
                volume = name,
                to,
                "hand-over failed, taking the role up again: {why}"
            );
            return Err(why);
        }
        tracing::info!(
            volume = name,
            to,
            epoch = v.epoch + 1,
            planned,
            disk_failed = why != Why::Planned,
            drain_us,
            commit_us,
            "volume handed over"
        );
        Ok(HandedOver {
            epoch: v.epoch + 1,
            kept_in_sync: planned,
            drain_us,
            commit_us,
        })
    }
}

impl Clustered {
    /// Makes this member answer the cluster's requests to hand over the
    /// volumes `node` leads.
    pub(super) fn serve_handover(&self, node: &Arc<Node>) {
        self.cluster.serve_handover(Arc::new(Switchover {
            node: Arc::downgrade(node),
        }));
    }
}
