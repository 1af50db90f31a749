//! Members in maintenance ([`crate::Command::SetMaintenance`]): out of
//! the write path on purpose and never made primary. The refusals that
//! keep them so sit in the commands that change primaries and copy
//! states.

use super::{ClusterState, NodeId, Refusal, ReplicaState};

impl ClusterState {
    /// Whether `node` is in maintenance.
    pub fn in_maintenance(&self, node: NodeId) -> bool {
        self.maintenance.contains(&node)
    }

    /// Applies [`crate::Command::SetMaintenance`]: entering marks every
    /// copy the node holds of a volume it does not lead out of sync (the
    /// primaries track what it misses from now on); leaving changes no
    /// copy (the primaries report them syncing, then in sync).
    pub(super) fn set_maintenance(&mut self, node: NodeId, on: bool) -> Result<(), Refusal> {
        if !self.nodes.contains_key(&node) {
            return Err(Refusal::NotMember { node });
        }
        if !on {
            self.maintenance.remove(&node);
            return Ok(());
        }
        self.maintenance.insert(node);
        for v in self.volumes.values_mut() {
            if v.primary == node {
                continue;
            }
            if let Some(st) = v.replicas.get_mut(&node) {
                *st = ReplicaState::OutOfSync;
            }
        }
        Ok(())
    }
}
