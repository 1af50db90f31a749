//! What a member reports about the cluster: [`ClusterStatus`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use openraft::ServerState;
use serde::{Deserialize, Serialize};

use crate::lease::DEAD_AFTER;
use crate::member::Inner;
use crate::{ClusterState, NodeId};

/// How a member sees the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// This node.
    pub me: NodeId,
    /// Current leader, if any.
    pub leader: Option<NodeId>,
    /// Raft term.
    pub term: u64,
    /// Last applied (hence committed) log index.
    pub applied: u64,
    /// Last index in this node's log (committed or not).
    #[serde(default)]
    pub last_log_index: u64,
    /// Last log index covered by this node's snapshot (0: none yet).
    #[serde(default)]
    pub snapshot: u64,
    /// Voting members.
    pub voters: Vec<NodeId>,
    /// Milliseconds since the leader last heard from each member (leader's view).
    pub last_seen_ms: BTreeMap<NodeId, u64>,
    /// The replicated state.
    pub state: ClusterState,
    /// The newest log entries this member reads ([`crate::LOG_VERSION`];
    /// 0 from a member that does not report it).
    #[serde(default)]
    pub log_version: u32,
    /// This member's release (`CARGO_PKG_VERSION`); empty from a member
    /// that does not report it.
    #[serde(default)]
    pub version: String,
    /// Whether this member learnt that it was removed from the cluster
    /// as dead (it serves no cluster volume).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
}

/// What a member says it runs, as [`crate::Cluster::member_versions`]
/// asks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberVersion {
    /// Its release; empty from a member too old to report it.
    pub version: String,
    /// The newest log entries it reads ([`crate::LOG_VERSION`]).
    pub log_version: u32,
}

/// A copy on a data node the leader has not heard from lately, which the
/// leader replaces once the node has been silent for the re-placement
/// delay ([`crate::ClusterState::replace_delay_secs`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingReplacement {
    /// The volume.
    pub volume: String,
    /// The silent node holding the copy.
    pub node: NodeId,
    /// Milliseconds until the leader places a new copy (0: due now;
    /// `None`: the leader has not heard from the node in its time, so it
    /// counts from its own election).
    pub in_ms: Option<u64>,
}

impl ClusterStatus {
    /// Copies on silent data nodes (not in maintenance, not already being
    /// replaced) that the leader will replace, and when; empty while
    /// re-placement is off or no leader's view is known.
    pub fn pending_replacements(&self) -> Vec<PendingReplacement> {
        let Some(delay_ms) = self.state.replace_delay_secs().map(|s| s * 1000) else {
            return Vec::new();
        };
        if self.last_seen_ms.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for v in self.state.volumes.values() {
            for &n in v.replicas.keys() {
                if n == v.primary
                    || self.reachable(n)
                    || self.leader == Some(n)
                    || self.state.in_maintenance(n)
                    || v.being_replaced(n)
                {
                    continue;
                }
                out.push(PendingReplacement {
                    volume: v.name.clone(),
                    node: n,
                    in_ms: self
                        .last_seen_ms
                        .get(&n)
                        .map(|&ms| delay_ms.saturating_sub(ms)),
                });
            }
        }
        out
    }

    /// Whether the leader heard from `node` within [`DEAD_AFTER`] (false
    /// when no leader's view is known).
    pub fn reachable(&self, node: NodeId) -> bool {
        self.last_seen_ms
            .get(&node)
            .is_some_and(|&ms| u128::from(ms) < DEAD_AFTER.as_millis())
    }
}

impl Inner {
    /// This member's status; liveness only when it leads.
    pub(crate) fn local_status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow().clone();
        let seen = self.seen.lock().unwrap();
        ClusterStatus {
            me: self.me.id,
            leader: m.current_leader,
            term: m.current_term,
            applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            last_log_index: m.last_log_index.unwrap_or(0),
            snapshot: m.snapshot.map(|l| l.index).unwrap_or(0),
            voters: m.membership_config.membership().voter_ids().collect(),
            last_seen_ms: if m.state == ServerState::Leader {
                seen.iter()
                    .map(|(n, t)| (*n, t.elapsed().as_millis() as u64))
                    .collect()
            } else {
                BTreeMap::new()
            },
            state: (*self.store.state()).clone(),
            log_version: crate::LOG_VERSION,
            version: env!("CARGO_PKG_VERSION").to_string(),
            removed: self.removed.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// What a member counts of its failover work, for metrics.
#[derive(Debug, Default)]
pub(crate) struct Events {
    /// Volumes this member promoted a copy of as leader, their primary
    /// having gone silent.
    pub(crate) failovers: AtomicU64,
    /// Times this member's lease ran out without being renewed.
    pub(crate) lease_expirations: AtomicU64,
}

impl Events {
    pub(crate) fn snapshot(&self) -> MemberEvents {
        MemberEvents {
            failovers: self.failovers.load(Relaxed),
            lease_expirations: self.lease_expirations.load(Relaxed),
        }
    }
}

/// Failovers a member made and leases of its own that ran out, since it
/// started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemberEvents {
    /// Volumes promoted to another copy by this member as leader.
    pub failovers: u64,
    /// Times this member's lease ran out without being renewed.
    pub lease_expirations: u64,
}
