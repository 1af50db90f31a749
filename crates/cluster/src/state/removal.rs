//! Members removed as dead ([`crate::Command::RemoveDeadNode`]) and the
//! copies that replace what they held ([`crate::Command::ReplaceCopy`],
//! [`crate::Command::AddReplica`]): the volumes keep asking for the number
//! of copies they had, and the leader places new ones after the
//! re-placement delay ([`crate::Command::SetReplaceDelay`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ClusterState, NodeId, Refusal, ReplicaState, VolumeRecord, MAX_REPLICAS};

/// How long a copy on a member that stopped answering waits before the
/// leader places another one, unless the cluster records another delay:
/// an hour, as vSAN waits for an absent host.
pub const DEFAULT_REPLACE_DELAY_SECS: u64 = 60 * 60;

/// A volume that holds fewer copies than it asks for, or whose copy on a
/// node is being replaced: what the cluster state says of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shortfall {
    /// The volume.
    pub volume: String,
    /// Copies it asks for.
    pub wanted: usize,
    /// Copies in sync, not counting one being replaced.
    pub in_sync: usize,
    /// New copies being filled, each with the node whose copy it replaces
    /// (`None`: a copy that was missing).
    pub filling: BTreeMap<NodeId, Option<NodeId>>,
}

impl VolumeRecord {
    /// The number of copies the volume asks for: the number it had when a
    /// member holding one was removed as dead, until it has them again;
    /// otherwise the number it has (a new copy that replaces another
    /// counting once with it).
    pub fn copies_wanted(&self) -> usize {
        self.wanted
            .max(self.replicas.len().saturating_sub(self.replacing.len()))
    }

    /// Copies the volume asks for and does not have.
    pub fn copies_missing(&self) -> usize {
        self.wanted.saturating_sub(self.replicas.len())
    }

    /// Whether a new copy is being filled to replace the one on `node`.
    pub fn being_replaced(&self, node: NodeId) -> bool {
        self.replacing.values().any(|&n| n == node)
    }
}

impl ClusterState {
    /// The re-placement delay in seconds (`None`: re-placement is off).
    pub fn replace_delay_secs(&self) -> Option<u64> {
        match self.replace_delay {
            None => Some(DEFAULT_REPLACE_DELAY_SECS),
            Some(0) => None,
            Some(s) => Some(s),
        }
    }

    /// Whether `node` was a member removed as dead: it never takes part
    /// again under that id.
    pub fn was_removed(&self, node: NodeId) -> bool {
        self.removed.contains(&node)
    }

    /// The volumes that hold a copy on `node` and no in-sync copy on any
    /// other node: removing `node` would leave them without their data.
    pub fn only_copies_on(&self, node: NodeId) -> Vec<String> {
        self.volumes
            .values()
            .filter(|v| {
                v.replicas.contains_key(&node)
                    && !v
                        .replicas
                        .iter()
                        .any(|(&n, st)| n != node && *st == ReplicaState::InSync)
            })
            .map(|v| v.name.clone())
            .collect()
    }

    /// Volumes short of copies or with a copy being replaced.
    pub fn shortfalls(&self) -> Vec<Shortfall> {
        self.volumes
            .values()
            .filter(|v| v.copies_missing() > 0 || !v.replacing.is_empty())
            .map(|v| Shortfall {
                volume: v.name.clone(),
                wanted: v.copies_wanted(),
                in_sync: v
                    .replicas
                    .iter()
                    .filter(|(n, st)| **st == ReplicaState::InSync && !v.being_replaced(**n))
                    .count(),
                filling: v
                    .replicas
                    .iter()
                    .filter(|(_, st)| **st != ReplicaState::InSync)
                    .filter(|(n, _)| {
                        v.replacing.contains_key(n) || (v.wanted > 0 && !v.being_replaced(**n))
                    })
                    .map(|(&n, _)| (n, v.replacing.get(&n).copied()))
                    .collect(),
            })
            .collect()
    }

    /// The data node out of maintenance and without a copy of `v` that
    /// holds the fewest copies, among those `up` accepts: where the leader
    /// places a copy it replaces.
    pub fn replacement_for(&self, v: &VolumeRecord, up: impl Fn(NodeId) -> bool) -> Option<NodeId> {
        self.data_nodes_by_load()
            .into_iter()
            .filter(|&(maintained, _, id)| !maintained && up(id))
            .map(|(_, _, id)| id)
            .find(|id| !v.replicas.contains_key(id))
    }

    /// Applies [`crate::Command::RemoveDeadNode`].
    pub(super) fn remove_dead(&mut self, node: NodeId) -> Result<(), Refusal> {
        if !self.nodes.contains_key(&node) {
            return Err(Refusal::NotMember { node });
        }
        let lost = self.only_copies_on(node);
        if !lost.is_empty() {
            return Err(Refusal::OnlyCopies {
                node,
                volumes: lost,
            });
        }
        let maintenance = self.maintenance.clone();
        for v in self.volumes.values_mut() {
            // A copy being filled to replace another does not count.
            let had = v.replicas.len() - v.replacing.len();
            v.replacing
                .retain(|&new, &mut old| new != node && old != node);
            if v.replicas.remove(&node).is_none() {
                continue;
            }
            v.reports.remove(&node);
            v.wanted = v.wanted.max(had);
            if v.primary != node {
                continue;
            }
            // Checked above: another in-sync copy exists. One out of
            // maintenance leads rather than one in it (whose copies are
            // out of sync unless it leads them, so this is the rare case
            // of a forced entry).
            let next = v
                .replicas
                .iter()
                .filter(|(_, st)| **st == ReplicaState::InSync)
                .map(|(&n, _)| n)
                .min_by_key(|n| (maintenance.contains(n), *n))
                .expect("checked above: another in-sync copy");
            v.primary = next;
            v.epoch += 1;
        }
        self.nodes.remove(&node);
        self.maintenance.remove(&node);
        if self.floating_holder == Some(node) {
            self.floating_holder = None;
        }
        if self.floating_released_by == Some(node) {
            self.floating_released_by = None;
        }
        self.removed.insert(node);
        Ok(())
    }

    /// Applies [`crate::Command::ReplaceCopy`].
    pub(super) fn replace_copy(
        &mut self,
        volume: &str,
        node: NodeId,
        with: NodeId,
    ) -> Result<(), Refusal> {
        match self.nodes.get(&with) {
            Some(n) if n.holds_data() => {}
            Some(_) => {
                return Err(Refusal::Witness {
                    volume: volume.to_string(),
                    node: with,
                })
            }
            None => return Err(Refusal::NotMember { node: with }),
        }
        if self.maintenance.contains(&with) {
            return Err(Refusal::InMaintenance {
                volume: volume.to_string(),
                node: with,
            });
        }
        let v = self.volume_mut(volume)?;
        if !v.replicas.contains_key(&node) {
            return Err(Refusal::NoCopy {
                volume: volume.to_string(),
                node,
            });
        }
        if v.primary == node {
            return Err(Refusal::PrimaryNotRemovable {
                volume: volume.to_string(),
                node,
            });
        }
        if v.being_replaced(node) {
            return Err(Refusal::BeingReplaced {
                volume: volume.to_string(),
                node,
            });
        }
        if v.replicas.contains_key(&with) {
            return Err(Refusal::CopyExists {
                volume: volume.to_string(),
                node: with,
            });
        }
        if v.replicas.len() >= MAX_REPLICAS {
            return Err(Refusal::TooManyCopies {
                volume: volume.to_string(),
            });
        }
        v.replicas.insert(with, ReplicaState::OutOfSync);
        v.replacing.insert(with, node);
        Ok(())
    }

    /// After a copy's state changed: a new copy in sync ends the
    /// replacement it was placed for, and the copy it replaces is
    /// dropped (unless it leads the volume meanwhile).
    pub(super) fn settle_replacement(&mut self, volume: &str, node: NodeId) {
        let Some(v) = self.volumes.get_mut(volume) else {
            return;
        };
        if v.replicas.get(&node) != Some(&ReplicaState::InSync) {
            return;
        }
        if let Some(old) = v.replacing.remove(&node) {
            if v.primary != old {
                v.replicas.remove(&old);
                v.reports.remove(&old);
            }
        }
    }
}
