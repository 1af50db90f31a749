//! Who holds the floating service address, decided by the leader: a live
//! data node, recorded in the cluster state ([`Command::HoldFloating`]).
//!
//! A holder adds the address to its interface only while its lease runs
//! and the state it has applied names it (and drops it a margin before the
//! lease ends). The leader replaces a holder it has not heard from for
//! [`DEAD_AFTER`](crate::DEAD_AFTER), and only after its own election
//! grace, exactly as it replaces a silent primary ([`crate::failover`], reasoning in
//! [`crate::lease`]): the old holder's lease, and so its address, is gone
//! at least `DEAD_AFTER - LEASE` before the new holder learns of its
//! role. A holder that stops hands the address back itself
//! ([`Cluster::release_floating`](crate::Cluster::release_floating)) after
//! removing it, so the leader gives it to another node at its next round
//! (a leader elected meanwhile too, without its grace: nobody holds it).
//!
//! The leader picks the live data node that is primary of the most volumes
//! (the lowest id among equals): an initiator on the floating address then
//! reaches most volumes without a forwarded hop. A live holder keeps the
//! address even when another node becomes primary of more volumes: moving
//! it would break every session on it for one hop saved.

use std::time::Instant;

use crate::lease::DEAD_AFTER;
use crate::member::{Inner, LeaderWrite};
use crate::{ClusterState, Command, NodeId};

/// On the leader: gives the floating address to a live data node if
/// nobody holds it or its holder fell silent. Within its election grace
/// (`in_grace`) only an address that was handed back: its holder removed
/// it before it said so, and nobody held it since, so there is no lease
/// granted by an earlier leader to wait out.
pub(crate) async fn assign(s: &Inner, state: &ClusterState, in_grace: bool) {
    if state.floating.is_none() {
        return;
    }
    let handed_back = state.floating_holder.is_none() && state.floating_released_by.is_some();
    if in_grace && !handed_back {
        return;
    }
    let holder = state.floating_holder;
    // Deciding and fencing are one step against heartbeat answers, as for
    // a promotion (see `failover::run`).
    let candidate = {
        let seen = s.seen.lock().unwrap();
        let alive = |n: NodeId| seen.get(&n).is_some_and(|t| t.elapsed() < DEAD_AFTER);
        if holder.is_some_and(alive) {
            return;
        }
        let candidate = choose(state, alive);
        if let (Some(_), Some(old)) = (candidate, holder) {
            s.replacing.lock().unwrap().insert(old);
        }
        candidate
    };
    let Some(node) = candidate else {
        tracing::debug!(?holder, "floating address: no live data node to hold it");
        return;
    };
    tracing::warn!(old = ?holder, new = node, "floating address: giving it to a live data node");
    let started = Instant::now();
    let outcome = s
        .write(Command::HoldFloating {
            node: Some(node),
            expected: holder,
        })
        .await;
    if let Some(old) = holder {
        let _seen = s.seen.lock().unwrap();
        s.replacing.lock().unwrap().remove(&old);
    }
    match outcome {
        Ok(()) => tracing::info!(
            node,
            ms = started.elapsed().as_millis() as u64,
            "floating address holder recorded"
        ),
        Err(LeaderWrite::Refused(why)) => {
            tracing::warn!("floating address holder refused: {why}")
        }
        Err(LeaderWrite::Raft(e)) => tracing::warn!("floating address holder refused: {e}"),
        Err(LeaderWrite::NotLeader) => {}
    }
}

/// The live data node that is primary of the most volumes, the lowest id
/// among equals; the node that just handed the address back (it is
/// stopping, and still counts as alive for a while) only if no other is
/// alive.
fn choose(state: &ClusterState, alive: impl Fn(NodeId) -> bool) -> Option<NodeId> {
    state
        .nodes
        .values()
        .filter(|n| n.holds_data() && alive(n.id))
        .map(|n| {
            let released = state.floating_released_by == Some(n.id);
            (released, std::cmp::Reverse(state.primaries_on(n.id)), n.id)
        })
        .min()
        .map(|(_, _, id)| id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NodeInfo, Role};

    fn state() -> ClusterState {
        let mut s = ClusterState::default();
        for (id, role) in [(1, Role::Data), (2, Role::Data), (3, Role::Witness)] {
            s.apply(&Command::AddNode {
                info: NodeInfo {
                    id,
                    name: format!("n{id}"),
                    role: Some(role),
                    ..NodeInfo::default()
                },
            });
        }
        s
    }

    #[test]
    fn prefers_the_live_data_node_with_most_primaries_never_a_witness() {
        let mut s = state();
        assert_eq!(choose(&s, |_| true), Some(1));
        for name in ["a", "b"] {
            s.apply(&Command::CreateVolume {
                id: uuid::Uuid::new_v4(),
                name: name.into(),
                size_bytes: 1 << 20,
                block_size: 512,
                replicas: 2,
            });
            let v = s.volumes.get(name).unwrap().clone();
            s.apply(&Command::Promote {
                volume: v.name.clone(),
                node: 2,
                expected_epoch: v.epoch,
            });
        }
        assert_eq!(choose(&s, |_| true), Some(2));
        assert_eq!(choose(&s, |n| n != 2), Some(1));
        assert_eq!(choose(&s, |n| n == 3), None);
        // The node that handed it back goes last, but is not left out.
        s.apply(&Command::SetFloating {
            floating: Some(crate::FloatingAddress {
                address: "10.0.0.50/24".into(),
                interface: "eth0".into(),
            }),
        });
        s.apply(&Command::HoldFloating {
            node: Some(2),
            expected: None,
        });
        s.apply(&Command::HoldFloating {
            node: None,
            expected: Some(2),
        });
        assert_eq!(s.floating_released_by, Some(2));
        assert_eq!(choose(&s, |_| true), Some(1));
        assert_eq!(choose(&s, |n| n == 2), Some(2));
        s.apply(&Command::HoldFloating {
            node: Some(1),
            expected: None,
        });
        assert_eq!(s.floating_released_by, None);
    }
}
