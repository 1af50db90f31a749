//! Removing a member that cannot leave by itself (`tandem cluster remove
//! NODE --dead`): its disk died, or it is gone. The checks come first,
//! each refusal saying why; then the leader drops its copies from every
//! volume (the volumes it led fail over to an in-sync copy, every volume
//! keeps asking for as many copies as it had) and takes its vote away
//! ([`cluster::Command::RemoveDeadNode`]). The leader then places the
//! missing copies on other members (see the cluster crate's `replace`).
//!
//! A removed node that comes back learns from the others that it was
//! removed and serves no cluster volume ([`Node::reconcile`] withdraws
//! them; its local data stays on its disk).

use std::time::Duration;

use cluster::{ClusterState, NodeId};
use serde::{Deserialize, Serialize};

use super::handover::PrimaryMoved;
use super::maintenance::{quorum_without, running, successor};
use super::{cluster_err, Clustered};
use crate::{Node, NodeError};

/// The log version that has [`cluster::Command::RemoveDeadNode`] and the
/// re-placement entries.
const REMOVAL_VERSION: u32 = 4;
const _: () = assert!(cluster::LOG_VERSION >= REMOVAL_VERSION);

/// Longest a re-placement delay may be set to (a year).
const MAX_REPLACE_DELAY: Duration = Duration::from_secs(365 * 24 * 3600);

/// What removing a dead member did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    /// The member removed.
    pub node: NodeId,
    /// Its name.
    pub name: String,
    /// Volumes it led that moved first by a planned switchover (only
    /// where it was still heard from and removed with force).
    pub moved: Vec<PrimaryMoved>,
    /// Volumes it led that failed over in the removal, each with its new
    /// primary.
    pub failed_over: Vec<(String, NodeId)>,
    /// Volumes that lost their copy on it, each with the copies it has
    /// now and the copies it asks for.
    pub degraded: Vec<(String, usize, usize)>,
    /// What else was done or will happen, in sentences.
    pub notes: Vec<String>,
}

impl Node {
    /// Removes member `node` (name or id), which cannot leave by itself,
    /// from the cluster. Refused where the other voters would have no
    /// quorum, where a volume has no in-sync copy on another node (its
    /// data exists only there: those volumes are named), where another
    /// member does not read the entry yet, and, unless `force`, where the
    /// node is still heard from (it can leave by itself): with `force`,
    /// the volumes it leads move to an in-sync copy first where they can,
    /// and it is removed anyway.
    pub async fn cluster_remove_dead(&self, node: &str, force: bool) -> Result<Removed, NodeError> {
        let c = self.member()?;
        let state = c.cluster.state();
        let target = super::volumes::member_id(&state, node)?;
        let name = state.nodes[&target].name.clone();
        let refused = |why: String| {
            NodeError::Refused(format!("node {target} ({name}) cannot be removed: {why}"))
        };
        if target == c.cluster.id() {
            return Err(refused(
                "it is the node asked; a running node leaves by itself (tandem cluster leave)"
                    .into(),
            ));
        }
        let status = c.cluster.status().await;
        if status.leader.is_none() {
            return Err(refused("the cluster has no leader now".into()));
        }
        if let Some(why) = quorum_without(&status, target) {
            return Err(refused(why));
        }
        let lost = state.only_copies_on(target);
        if !lost.is_empty() {
            return Err(refused(format!(
                "it holds the only in-sync copy of volume(s) {}: their data exists only there \
                 (bring the node back, or delete those volumes first)",
                lost.join(", ")
            )));
        }
        if status.leader == Some(target) {
            return Err(refused(
                "it leads the cluster, so it runs; it can leave by itself (tandem cluster leave)"
                    .into(),
            ));
        }
        // Every member is asked at once: the node's own answer says it
        // runs, the others' which entries they read.
        let versions = c.cluster.member_versions().await;
        let answers = matches!(versions.get(&target), Some(Ok(_)));
        let older: Vec<String> = versions
            .iter()
            .filter(|(&n, _)| n != target)
            .filter_map(|(n, v)| match v {
                Ok(v) if v.log_version >= REMOVAL_VERSION => None,
                Ok(v) => Some(format!("node {n} reads log version {}", v.log_version)),
                Err(e) => Some(format!("node {n} does not answer ({e})")),
            })
            .collect();
        if !older.is_empty() {
            return Err(refused(format!(
                "{}; the removal needs log version {REMOVAL_VERSION} on every other member",
                older.join(", ")
            )));
        }
        let heard = running(&status, target) || answers;
        let mut done = Removed {
            node: target,
            name: name.clone(),
            ..Removed::default()
        };
        if heard && !force {
            return Err(refused(format!(
                "it is still heard from ({}): a running node leaves by itself (tandem cluster \
                 leave on it) or goes into maintenance; with --force it is removed anyway: the \
                 volumes it leads move to another in-sync copy first, its copies are dropped, \
                 and it is told it was removed and serves no cluster volume from then on",
                if answers {
                    "it answers the cluster endpoint".to_string()
                } else {
                    format!(
                        "the leader heard it {} ms ago",
                        status.last_seen_ms.get(&target).copied().unwrap_or(0)
                    )
                }
            )));
        }
        if heard {
            done.notes.push(format!(
                "forced: node {target} was still heard from; it learns it was removed and \
                 stops serving cluster volumes"
            ));
            for v in state.volumes.values().filter(|v| v.primary == target) {
                let Some(to) = successor(&state, &status, v, target) else {
                    continue;
                };
                match self.move_primary(&v.name, &to.to_string()).await {
                    Ok(m) => done.moved.push(m),
                    Err(e) => done.notes.push(format!(
                        "volume {}: not moved before the removal ({e}); it fails over in it",
                        v.name
                    )),
                }
            }
        }
        let before = c.cluster.state();
        c.cluster.remove_dead(target).await.map_err(cluster_err)?;
        let after = c.cluster.state();
        self.reconcile(&after).await;
        report(&before, &after, target, &mut done);
        tracing::warn!(
            node = target,
            failed_over = done.failed_over.len(),
            degraded = done.degraded.len(),
            "member removed as dead"
        );
        Ok(done)
    }

    /// Sets how long a copy on a silent member waits before the leader
    /// replaces it (`None` or zero: never). Refused while a member does
    /// not read the entry yet.
    pub async fn set_replace_delay(&self, delay: Option<Duration>) -> Result<(), NodeError> {
        let c = self.member()?;
        let delay = delay.unwrap_or_default();
        if delay > MAX_REPLACE_DELAY {
            return Err(NodeError::Invalid(format!(
                "a re-placement delay of {} s is longer than a year",
                delay.as_secs()
            )));
        }
        let older = older_members(&c).await;
        if !older.is_empty() {
            return Err(NodeError::Refused(format!(
                "the re-placement delay is not recorded: {}; it needs log version \
                 {REMOVAL_VERSION} on every member",
                older.join(", ")
            )));
        }
        // Under a second would be recorded as 0, which turns it off.
        let secs = match delay {
            d if d.is_zero() => 0,
            d => d.as_secs().max(1),
        };
        c.cluster
            .propose(cluster::Command::SetReplaceDelay { secs })
            .await
            .map_err(cluster_err)
    }
}

/// Members that do not read log version [`REMOVAL_VERSION`] or do not
/// answer, as sentences.
async fn older_members(c: &Clustered) -> Vec<String> {
    c.cluster
        .member_versions()
        .await
        .iter()
        .filter_map(|(n, v)| match v {
            Ok(v) if v.log_version >= REMOVAL_VERSION => None,
            Ok(v) => Some(format!("node {n} reads log version {}", v.log_version)),
            Err(e) => Some(format!("node {n} does not answer ({e})")),
        })
        .collect()
}

/// What the removal of `node` changed between two states.
fn report(before: &ClusterState, after: &ClusterState, node: NodeId, done: &mut Removed) {
    for v in before.volumes.values() {
        let Some(now) = after.volumes.get(&v.name).filter(|a| a.id == v.id) else {
            continue;
        };
        if v.primary == node && now.primary != node {
            done.failed_over.push((v.name.clone(), now.primary));
        }
        if v.replicas.contains_key(&node) {
            done.degraded
                .push((v.name.clone(), now.replicas.len(), now.copies_wanted()));
        }
    }
    match after.replace_delay_secs() {
        _ if done.degraded.is_empty() => {}
        Some(_) => done.notes.push(
            "the leader places the missing copies on other data nodes with room now; \
             tandem cluster status shows their full sync"
                .into(),
        ),
        None => done.notes.push(
            "re-placement is off: add the missing copies with tandem volume add-replica".into(),
        ),
    }
}
