//! Maintenance of a member, built on the planned switchover: before a
//! data node is stopped for planned work, every volume it leads moves to
//! an in-sync copy on another running node (`volume move-primary` for
//! each), so stopping it costs the initiators no failover. Then the
//! cluster state records it in maintenance ([`Command::SetMaintenance`]):
//! it is never made primary, every node reports its ALUA port group as
//! standby (multipath moves away), and the primaries keep its copies out
//! of the write path, tracking what they miss. Leaving maintenance clears
//! the record: the primaries send it the regions it missed, and
//! primaries may be moved back to spread them.
//!
//! [`Node::upgrade_check`] answers the question asked before any stop:
//! can this member be stopped now without loss of availability?

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cluster::{ClusterState, ClusterStatus, Command, NodeId, ReplicaState, LOG_VERSION};
use serde::{Deserialize, Serialize};

use super::handover::PrimaryMoved;
use super::{cluster_err, Clustered};
use crate::{Node, NodeError};

/// The log version that has [`Command::SetMaintenance`].
const MAINTENANCE_VERSION: u32 = 2;
const _: () = assert!(LOG_VERSION >= MAINTENANCE_VERSION);

/// Longest `maintenance exit --rebalance` waits for the node's copies to
/// catch up before it moves primaries back.
const REBALANCE_WAIT: Duration = Duration::from_secs(60);

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
    /// Whether the cluster state records the node in maintenance now.
    #[serde(default)]
    pub recorded: bool,
    /// What else was done or will happen, in sentences.
    #[serde(default)]
    pub notes: Vec<String>,
}

/// Whether a member may be stopped now ([`Node::upgrade_check`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeCheck {
    /// The member.
    pub node: NodeId,
    /// Its name.
    pub name: String,
    /// Whether it can be stopped now without loss of availability.
    pub can_stop: bool,
    /// Whether the cluster state records it in maintenance.
    pub in_maintenance: bool,
    /// Why it cannot be stopped now (empty when it can).
    pub blockers: Vec<String>,
    /// What stopping it now does besides (failovers, resyncs).
    pub notes: Vec<String>,
}

/// Whether the leader counts `node` as running (the leader itself is).
pub(super) fn running(status: &ClusterStatus, node: NodeId) -> bool {
    status.leader == Some(node) || status.reachable(node)
}

/// Why the voters other than `node` have no quorum, if they have none.
pub(super) fn quorum_without(status: &ClusterStatus, node: NodeId) -> Option<String> {
    let alive = status
        .voters
        .iter()
        .filter(|&&n| n != node && running(status, n))
        .count();
    (alive * 2 <= status.voters.len()).then(|| {
        format!(
            "without node {node} the cluster has {alive} of {} voters running, no quorum: \
             start the witness or another member first",
            status.voters.len()
        )
    })
}

/// The in-sync copy of `v` on a running data node other than `node`, not
/// in maintenance, that leads the fewest volumes.
pub(super) fn successor(
    state: &ClusterState,
    status: &ClusterStatus,
    v: &cluster::VolumeRecord,
    node: NodeId,
) -> Option<NodeId> {
    v.replicas
        .iter()
        .filter(|(&n, st)| {
            n != node
                && **st == ReplicaState::InSync
                && running(status, n)
                && !state.in_maintenance(n)
        })
        .map(|(&n, _)| n)
        .min_by_key(|&n| (state.primaries_on(n), n))
}

fn state_name(st: ReplicaState) -> &'static str {
    match st {
        ReplicaState::InSync => "in-sync",
        ReplicaState::Syncing => "syncing",
        ReplicaState::OutOfSync => "out-of-sync",
    }
}

fn copy_states(state: &ClusterState, node: NodeId) -> BTreeMap<String, String> {
    state
        .volumes
        .values()
        .filter_map(|v| {
            v.replicas
                .get(&node)
                .map(|st| (v.name.clone(), state_name(*st).to_string()))
        })
        .collect()
}

impl Node {
    /// The member `node` names (this node when `None`).
    fn maintained(c: &Clustered, node: Option<&str>) -> Result<NodeId, NodeError> {
        match node {
            Some(n) => super::volumes::member_id(&c.cluster.state(), n),
            None => Ok(c.cluster.id()),
        }
    }

    /// Puts `node` (a member's name or id; this node when `None`) in
    /// maintenance: moves every volume it leads to an in-sync copy on
    /// another running data node, then records it in maintenance. Refused,
    /// before anything moves, where a volume has no such copy or where the
    /// other members would have no quorum without `node` (a two-node
    /// cluster whose witness is down), unless `force`: then those volumes
    /// stay (and fail over, or wait, once the node stops). A witness is
    /// only checked for quorum. Where a member cannot read the record yet
    /// (an older version), the primaries move and nothing is recorded.
    pub async fn maintenance_enter(
        &self,
        node: Option<&str>,
        force: bool,
    ) -> Result<Maintenance, NodeError> {
        let c = self.member()?;
        let me = Self::maintained(&c, node)?;
        let state = c.cluster.state();
        let status = c.cluster.status().await;
        if status.leader.is_none() {
            return Err(NodeError::Refused(format!(
                "node {me} cannot enter maintenance: the cluster has no leader now"
            )));
        }
        let mut problems = Vec::new();
        let no_quorum = quorum_without(&status, me);
        if let Some(why) = &no_quorum {
            problems.push((String::new(), why.clone()));
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
                "node {me} cannot enter maintenance: {}; with --force, those volumes stop \
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
        if no_quorum.is_some() {
            done.notes.push(format!(
                "forced: once node {me} stops, the cluster has no quorum and no volume \
                 acknowledges a write that needs a record until it returns"
            ));
        }
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
        for (volume, _) in &done.left {
            done.notes.push(format!(
                "forced: node {me} still leads volume {volume}; it stops when the node \
                 does, or fails over where an in-sync copy runs elsewhere"
            ));
        }
        let versions = c.cluster.log_versions().await;
        let older: Vec<String> = versions
            .iter()
            .filter_map(|(n, v)| match v {
                Ok(l) if *l >= MAINTENANCE_VERSION => None,
                Ok(l) => Some(format!("node {n} reads log version {l}")),
                Err(e) => Some(format!("node {n} does not answer ({e})")),
            })
            .collect();
        if older.is_empty() {
            c.cluster
                .propose(Command::SetMaintenance { node: me, on: true })
                .await
                .map_err(cluster_err)?;
            done.recorded = true;
        } else {
            done.notes.push(format!(
                "not recorded in the cluster state ({}; maintenance needs log version \
                 {MAINTENANCE_VERSION}): its copies resync when it returns, as after any stop",
                older.join(", ")
            ));
        }
        let state = c.cluster.state();
        self.reconcile(&state).await;
        done.copies = copy_states(&state, me);
        tracing::info!(
            node = me,
            moved = done.moved.len(),
            left = done.left.len(),
            recorded = done.recorded,
            "node in maintenance"
        );
        Ok(done)
    }

    /// Takes `node` (this node when `None`) out of maintenance: the
    /// primaries send its copies what they missed. Reports the state of
    /// each copy it holds; with `rebalance`, waits (up to a minute) for
    /// them to be in sync and moves volumes back to it while their primary
    /// leads at least two volumes more.
    pub async fn maintenance_exit(
        &self,
        node: Option<&str>,
        rebalance: bool,
    ) -> Result<Maintenance, NodeError> {
        let c = self.member()?;
        let me = Self::maintained(&c, node)?;
        let mut done = Maintenance {
            node: me,
            ..Maintenance::default()
        };
        if c.cluster.state().in_maintenance(me) {
            c.cluster
                .propose(Command::SetMaintenance {
                    node: me,
                    on: false,
                })
                .await
                .map_err(cluster_err)?;
            self.reconcile(&c.cluster.state()).await;
        } else {
            done.notes.push(format!("node {me} was not in maintenance"));
        }
        if rebalance {
            // A node just started is heard from within a heartbeat or two,
            // and its copies catch up after: wait for both, for a while.
            let deadline = Instant::now() + REBALANCE_WAIT;
            let caught_up = |s: &ClusterState| {
                s.volumes.values().all(|v| {
                    v.replicas
                        .get(&me)
                        .is_none_or(|st| *st == ReplicaState::InSync)
                })
            };
            loop {
                let up = running(&c.cluster.status().await, me);
                if up && caught_up(&c.cluster.state()) {
                    break;
                }
                if Instant::now() >= deadline {
                    if !up {
                        return Err(NodeError::Refused(format!(
                            "node {me} is out of maintenance but not running (the leader has \
                             not heard from it for {} s): no primary moved back",
                            REBALANCE_WAIT.as_secs()
                        )));
                    }
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let state = c.cluster.state();
            let mut led: BTreeMap<NodeId, usize> = BTreeMap::new();
            for v in state.volumes.values() {
                *led.entry(v.primary).or_default() += 1;
            }
            for v in state.volumes.values() {
                let (mine, theirs) = (
                    led.get(&me).copied().unwrap_or(0),
                    led.get(&v.primary).copied().unwrap_or(0),
                );
                if v.primary == me || !v.replicas.contains_key(&me) || theirs < mine + 2 {
                    continue;
                }
                if let Some(st) = v
                    .replicas
                    .get(&me)
                    .filter(|st| **st != ReplicaState::InSync)
                {
                    done.left.push((
                        v.name.clone(),
                        format!(
                            "the copy on node {me} is {} after {} s; run exit --rebalance again \
                             once it is in sync",
                            state_name(*st),
                            REBALANCE_WAIT.as_secs()
                        ),
                    ));
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
        tracing::info!(
            node = me,
            moved = done.moved.len(),
            "node out of maintenance"
        );
        Ok(done)
    }

    /// Whether `node` (this node when `None`) can be stopped now without
    /// loss of availability: the other voters keep a quorum, and every
    /// volume it leads has an in-sync copy on another running data node
    /// out of maintenance. Each reason it cannot is listed; so is what a
    /// stop does besides (a failover of each volume it still leads).
    pub async fn upgrade_check(&self, node: Option<&str>) -> Result<UpgradeCheck, NodeError> {
        let c = self.member()?;
        let me = Self::maintained(&c, node)?;
        let state = c.cluster.state();
        let status = c.cluster.status().await;
        let mut check = UpgradeCheck {
            node: me,
            name: state
                .nodes
                .get(&me)
                .map(|n| n.name.clone())
                .unwrap_or_default(),
            in_maintenance: state.in_maintenance(me),
            ..UpgradeCheck::default()
        };
        if status.leader.is_none() {
            check
                .blockers
                .push("the cluster has no leader now: no member can be stopped safely".into());
            return Ok(check);
        }
        if let Some(why) = quorum_without(&status, me) {
            check.blockers.push(why);
        }
        for v in state.volumes.values().filter(|v| v.primary == me) {
            match successor(&state, &status, v, me) {
                None => check.blockers.push(format!(
                    "volume {}: node {me} leads it and no other running data node holds an \
                     in-sync copy",
                    v.name
                )),
                Some(to) => check.notes.push(format!(
                    "volume {}: node {me} leads it; a stop now fails it over to node {to} (a \
                     pause of about 2 s); tandem node maintenance enter {me} moves it first \
                     without one",
                    v.name
                )),
            }
        }
        let copies = state
            .volumes
            .values()
            .filter(|v| v.primary != me && v.replicas.contains_key(&me))
            .count();
        if copies > 0 && !check.in_maintenance {
            check.notes.push(format!(
                "node {me} holds {copies} copy(ies) that go out of sync when it stops and \
                 resync when it returns"
            ));
        }
        check.can_stop = check.blockers.is_empty();
        Ok(check)
    }
}
