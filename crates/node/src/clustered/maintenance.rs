//! Maintenance of a data node, built on the planned switchover: before a
//! node is stopped for planned work, every volume it leads moves to an
//! in-sync copy on another running node (`volume move-primary` for each),
//! so stopping it costs the initiators no failover; after it returns and
//! its copies have caught up, primaries may be moved back to spread them.
//!
//! Nothing is recorded in the cluster state: a node "in maintenance" is one
//! that leads no volume. Its copies go out of sync when it stops (the
//! primaries track what they miss) and resync when it returns, as after
//! any stop.

use std::collections::BTreeMap;

use cluster::{ClusterState, NodeId, ReplicaState};
use serde::{Deserialize, Serialize};

use super::handover::PrimaryMoved;
use crate::{Node, NodeError};

/// What entering or leaving maintenance did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maintenance {
    /// The node.
    pub node: NodeId,
    /// The switchovers made, in order.
    pub moved: Vec<PrimaryMoved>,
    /// Volumes left as they were, each with why.
    pub left: Vec<(String, String)>,
    /// Each volume the node holds a copy of, and that copy's recorded
    /// state (`in-sync`, `syncing`, `out-of-sync`).
    pub copies: BTreeMap<String, String>,
}

/// The in-sync copy of `v` on a running data node other than `node`
/// that leads the fewest volumes.
fn successor(
    state: &ClusterState,
    status: &cluster::ClusterStatus,
    v: &cluster::VolumeRecord,
    node: NodeId,
) -> Option<NodeId> {
    v.replicas
        .iter()
        .filter(|(&n, st)| n != node && **st == ReplicaState::InSync && status.reachable(n))
        .map(|(&n, _)| n)
        .min_by_key(|&n| (state.primaries_on(n), n))
}

fn copy_states(state: &ClusterState, node: NodeId) -> BTreeMap<String, String> {
    state
        .volumes
        .values()
        .filter_map(|v| {
            v.replicas.get(&node).map(|st| {
                let s = match st {
                    ReplicaState::InSync => "in-sync",
                    ReplicaState::Syncing => "syncing",
                    ReplicaState::OutOfSync => "out-of-sync",
                };
                (v.name.clone(), s.to_string())
            })
        })
        .collect()
}

impl Node {
    /// Moves every volume `node` (a member's name or id; this node when
    /// `None`) leads to an in-sync copy on another running data node.
    /// Refused, before anything moves, where a volume has no such copy or
    /// where the other members would have no quorum without `node` (a
    /// two-node cluster whose witness is down), unless `force`: then those
    /// volumes stay (and fail over, or wait, once the node stops).
    pub async fn maintenance_enter(
        &self,
        node: Option<&str>,
        force: bool,
    ) -> Result<Maintenance, NodeError> {
        let c = self.member()?;
        let state = c.cluster.state();
        let me = match node {
            Some(n) => super::volumes::member_id(&state, n)?,
            None => c.cluster.id(),
        };
        if !state.nodes.get(&me).is_some_and(|n| n.holds_data()) {
            return Err(NodeError::Invalid(format!(
                "node {me} is not a data node: it holds no volumes"
            )));
        }
        let status = c.cluster.status().await;
        let mut problems = Vec::new();
        let others = status.voters.iter().filter(|&&n| n != me);
        let alive = others.filter(|&&n| status.reachable(n)).count();
        if alive * 2 <= status.voters.len() {
            problems.push((
                String::new(),
                format!(
                    "without node {me} the cluster has {alive} of {} voters running, no quorum: \
                     start the witness or another member first",
                    status.voters.len()
                ),
            ));
        }
        let mut plan = Vec::new();
        for v in state.volumes.values().filter(|v| v.primary == me) {
            match successor(&state, &status, v, me) {
                Some(to) => plan.push((v.name.clone(), to)),
                None => problems.push((
                    v.name.clone(),
                    "no in-sync copy on another running data node".to_string(),
                )),
            }
        }
        if !problems.is_empty() && !force {
            let list: Vec<String> = problems
                .iter()
                .map(|(v, why)| match v.as_str() {
                    "" => why.clone(),
                    v => format!("volume {v}: {why}"),
                })
                .collect();
            return Err(NodeError::Refused(format!(
                "node {me} cannot enter maintenance: {}; with force, those volumes stop \
                 when the node does (or fail over, where they can)",
                list.join("; ")
            )));
        }
        let mut done = Maintenance {
            node: me,
            left: problems
                .into_iter()
                .filter(|(v, _)| !v.is_empty())
                .collect(),
            ..Maintenance::default()
        };
        for (name, to) in plan {
            match self.move_primary(&name, &to.to_string()).await {
                Ok(m) => done.moved.push(m),
                Err(e) if force => done.left.push((name, e.to_string())),
                Err(e) => {
                    return Err(NodeError::Refused(format!(
                        "node {me}: {} volume(s) moved, then {e}",
                        done.moved.len()
                    )))
                }
            }
        }
        done.copies = copy_states(&c.cluster.state(), me);
        tracing::info!(
            node = me,
            moved = done.moved.len(),
            left = done.left.len(),
            "node in maintenance"
        );
        Ok(done)
    }

    /// Reports the state of each copy `node` (this node when `None`)
    /// holds; with `rebalance`, moves volumes whose copy there is in sync
    /// back to it while their primary leads at least two volumes more.
    pub async fn maintenance_exit(
        &self,
        node: Option<&str>,
        rebalance: bool,
    ) -> Result<Maintenance, NodeError> {
        let c = self.member()?;
        let state = c.cluster.state();
        let me = match node {
            Some(n) => super::volumes::member_id(&state, n)?,
            None => c.cluster.id(),
        };
        let mut done = Maintenance {
            node: me,
            ..Maintenance::default()
        };
        if rebalance {
            let status = c.cluster.status().await;
            if !status.reachable(me) {
                return Err(NodeError::Refused(format!(
                    "node {me} is not running (the leader has not heard from it lately)"
                )));
            }
            let mut led: BTreeMap<NodeId, usize> = BTreeMap::new();
            for v in state.volumes.values() {
                *led.entry(v.primary).or_default() += 1;
            }
            for v in state.volumes.values() {
                let (mine, theirs) = (
                    led.get(&me).copied().unwrap_or(0),
                    led.get(&v.primary).copied().unwrap_or(0),
                );
                if v.primary == me
                    || v.replicas.get(&me) != Some(&ReplicaState::InSync)
                    || theirs < mine + 2
                {
                    continue;
                }
                match self.move_primary(&v.name, &me.to_string()).await {
                    Ok(m) => {
                        *led.entry(v.primary).or_default() -= 1;
                        *led.entry(me).or_default() += 1;
                        done.moved.push(m);
                    }
                    Err(e) => done.left.push((v.name.clone(), e.to_string())),
                }
            }
        }
        done.copies = copy_states(&c.cluster.state(), me);
        Ok(done)
    }
}
