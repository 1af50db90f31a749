//! The protocol's steps: which actions each actor may take in a state, and
//! the state each one leads to. Names follow `replica::primary` (peers,
//! modes, `lose`, `replica_lost`, resync), `node::clustered` (taking up
//! the primary role) and `cluster` (promote, reports, lease, heartbeat,
//! applied view).

use crate::action::Action;
use crate::control::{keep_number, unrecorded};
use crate::primary::{depose, record_failed, role_mut};
use crate::state::{Answer, Mode, NodeId, Peer, ReplicaState, Role, State, MAX_NODES, MAX_WRITES};
use crate::{Protocol, Variant};

impl Protocol {
    fn node_ids(&self) -> std::ops::Range<NodeId> {
        0..self.bounds.nodes
    }

    /// Whether `n` runs a primary role that may acknowledge a write now:
    /// not deposed, its lease runs, its copy accepted no newer epoch, and
    /// its applied view says "primary = me at this epoch".
    pub fn serving(&self, s: &State, n: NodeId) -> bool {
        let node = &s.nodes[n];
        node.role.is_some_and(|r| {
            node.up
                && node.lease
                && !r.deposed
                && node.accepted == r.epoch
                && node.view.primary == n
                && node.view.epoch == r.epoch
        })
    }

    /// Whether `n` acknowledges writes into its own copy alone (only in
    /// [`Variant::RestartAsPlainDisk`]: a restarted node before it learns
    /// its role).
    pub fn plain_disk(&self, s: &State, n: NodeId) -> bool {
        self.variant == Variant::RestartAsPlainDisk && s.nodes[n].up && s.nodes[n].restarted
    }

    /// Whether `n` would acknowledge a write issued now.
    pub fn may_acknowledge(&self, s: &State, n: NodeId) -> bool {
        self.serving(s, n) || self.plain_disk(s, n)
    }

    pub(crate) fn candidate_actions(&self, s: &State, out: &mut Vec<Action>) {
        if s.next_write < self.bounds.writes {
            for via in self.node_ids().filter(|&n| s.nodes[n].up) {
                out.push(Action::Write {
                    via,
                    write: s.next_write,
                });
            }
        }
        for primary in self.node_ids() {
            let Some(role) = s.nodes[primary].role else {
                continue;
            };
            for (write, answers) in role.writes.iter().enumerate() {
                let Some(answers) = answers else { continue };
                for peer in self.node_ids() {
                    if answers[peer] == Answer::Sent {
                        out.push(Action::Deliver {
                            primary,
                            write,
                            peer,
                        });
                        out.push(Action::PeerFails {
                            primary,
                            write,
                            peer,
                        });
                    }
                }
                out.push(Action::Acknowledge { primary, write });
            }
            for peer in self.node_ids().filter(|&p| p != primary) {
                let p = role.peers[peer];
                if p.recording {
                    out.push(Action::RecordLost { primary, peer });
                    out.push(Action::RecordLostFails { primary, peer });
                }
                match p.mode {
                    Mode::OutOfSync => out.push(Action::Resync { primary, peer }),
                    Mode::Syncing => out.push(Action::MarkInSync { primary, peer }),
                    Mode::InSync if p.unrecorded => {
                        out.push(Action::RecordInSync { primary, peer });
                        out.push(Action::RecordInSyncFails { primary, peer });
                    }
                    Mode::InSync => {}
                }
            }
        }
        for node in self.node_ids() {
            out.push(Action::Promote { node });
            out.push(Action::FailoverSlowly { node });
            out.push(Action::TakeUp { node });
            out.push(Action::TakeUpFails { node });
            out.push(Action::TakeRole { node });
            out.push(Action::Apply { node });
            out.push(Action::Heartbeat { node });
            out.push(Action::LeaseExpires { node });
            out.push(Action::Crash { node });
            out.push(Action::Restart { node });
        }
        out.push(Action::FailoverCommits);
        for command in s.pending.into_iter().flatten() {
            out.push(Action::LateCommit { command });
        }
        out.push(Action::ControlPlaneLost);
        out.push(Action::ControlPlaneBack);
    }

    /// The state after `a`, or `None` where `a` is not possible in `s` (or
    /// would change nothing).
    pub(crate) fn step(&self, s: &State, a: Action) -> Option<State> {
        let mut t = *s;
        match a {
            Action::Write { via, write } => {
                if write != s.next_write || write >= self.bounds.writes || !s.nodes[via].up {
                    return None;
                }
                if self.plain_disk(s, via) {
                    // The bug: a restarted node takes the write as a plain
                    // local disk would.
                    t.nodes[via].copy = s.nodes[via].copy.with(write);
                    t.acknowledged = s.acknowledged.with(write);
                } else {
                    let target = if self.serving(s, via) {
                        via
                    } else {
                        s.nodes[via].view.primary
                    };
                    if !self.serving(s, target) {
                        return None;
                    }
                    self.start_write(&mut t, target, write);
                }
                t.next_write += 1;
            }
            Action::Deliver {
                primary,
                write,
                peer,
            } => {
                let role = s.nodes[primary].role?;
                if role.writes[write]?[peer] != Answer::Sent || !s.nodes[peer].up {
                    return None;
                }
                if s.nodes[peer].accepted > role.epoch {
                    depose(&mut t, primary);
                } else {
                    let r = t.nodes[peer];
                    t.nodes[peer].accepted = role.epoch;
                    t.nodes[peer].copy = r.copy.with(write);
                    role_mut(&mut t, primary).writes[write].as_mut()?[peer] = Answer::Done;
                }
            }
            Action::PeerFails {
                primary,
                write,
                peer,
            } => {
                if s.nodes[primary].role?.writes[write]?[peer] != Answer::Sent {
                    return None;
                }
                self.lose(role_mut(&mut t, primary), write, peer);
            }
            Action::RecordLost { primary, peer } => {
                let role = s.nodes[primary].role?;
                if !role.peers[peer].recording || !s.control_up {
                    return None;
                }
                let report = self.report(s, primary, peer, ReplicaState::OutOfSync, role.epoch);
                if self.propose(&mut t, primary, report) {
                    keep_number(&mut t, primary, report);
                    let r = role_mut(&mut t, primary);
                    r.peers[peer] = Peer::new(Mode::OutOfSync);
                    for answers in r.writes.iter_mut().flatten() {
                        if answers[peer] == Answer::AwaitRecord {
                            answers[peer] = Answer::Done;
                        }
                    }
                } else {
                    // Refused: "epoch is stale".
                    record_failed(role_mut(&mut t, primary), peer);
                }
            }
            Action::RecordLostFails { primary, peer } => {
                let role = s.nodes[primary].role?;
                if !role.peers[peer].recording || !self.times_out(&mut t) {
                    return None;
                }
                let report = self.report(s, primary, peer, ReplicaState::OutOfSync, role.epoch);
                if self.leave_pending(&mut t, report) {
                    keep_number(&mut t, primary, report);
                }
                record_failed(role_mut(&mut t, primary), peer);
            }
            Action::Acknowledge { primary, write } => {
                let answers = s.nodes[primary].role?.writes[write]?;
                let waiting = answers
                    .iter()
                    .any(|a| matches!(a, Answer::Sent | Answer::AwaitRecord));
                if waiting || !self.serving(s, primary) {
                    return None;
                }
                t.acknowledged = s.acknowledged.with(write);
                role_mut(&mut t, primary).writes[write] = None;
            }
            Action::Resync { primary, peer } => {
                let role = s.nodes[primary].role?;
                let p = role.peers[peer];
                if role.deposed || p.mode != Mode::OutOfSync || p.recording || !s.nodes[peer].up {
                    return None;
                }
                if s.nodes[peer].accepted > role.epoch {
                    // The peer follows a newer primary: refused as stale.
                    depose(&mut t, primary);
                } else {
                    t.nodes[peer].copy = s.nodes[peer].copy.union(s.nodes[primary].copy);
                    t.nodes[peer].accepted = role.epoch;
                    role_mut(&mut t, primary).peers[peer].mode = Mode::Syncing;
                }
            }
            Action::MarkInSync { primary, peer } => {
                let role = s.nodes[primary].role?;
                if role.deposed || role.peers[peer].mode != Mode::Syncing || role.busy() {
                    return None;
                }
                let p = &mut role_mut(&mut t, primary).peers[peer];
                p.mode = Mode::InSync;
                p.unrecorded = true;
            }
            Action::RecordInSync { primary, peer } => {
                let role = s.nodes[primary].role?;
                if !unrecorded(&role, peer) || !s.control_up {
                    return None;
                }
                let report = self.report(s, primary, peer, ReplicaState::InSync, role.epoch);
                if !self.propose(&mut t, primary, report) {
                    // Refused ("epoch is stale"): nothing changes, and
                    // trying again changes nothing either.
                    return None;
                }
                keep_number(&mut t, primary, report);
                role_mut(&mut t, primary).peers[peer].unrecorded = false;
            }
            Action::RecordInSyncFails { primary, peer } => {
                let role = s.nodes[primary].role?;
                if !unrecorded(&role, peer) || !self.times_out(&mut t) {
                    return None;
                }
                let report = self.report(s, primary, peer, ReplicaState::InSync, role.epoch);
                let left = self.leave_pending(&mut t, report);
                if left {
                    keep_number(&mut t, primary, report);
                }
                if self.variant == Variant::BackToSyncing {
                    // The bug: out of sync again at its next failure, with
                    // no record, while this one may still commit.
                    let p = &mut role_mut(&mut t, primary).peers[peer];
                    p.mode = Mode::Syncing;
                    p.unrecorded = false;
                } else if !left {
                    // The peer stays in sync, the record is tried again.
                    return None;
                }
            }
            Action::LateCommit { command } => {
                let slot = s.pending.iter().position(|&c| c == Some(command))?;
                if !s.control_up {
                    return None;
                }
                t.pending[slot] = None;
                t.pending.sort_unstable();
                // Applied or refused: its proposer does not learn which.
                t.committed.apply(command);
            }
            Action::Promote { node } => {
                let promote = self.failover(s, node)?;
                if !t.committed.apply(promote) {
                    return None;
                }
                t.failovers += 1;
            }
            Action::FailoverSlowly { node } => {
                let promote = self.failover(s, node)?;
                if s.slow_failovers >= self.bounds.slow_failovers {
                    return None;
                }
                t.promoting = Some(promote);
                t.failovers += 1;
                t.slow_failovers += 1;
            }
            Action::FailoverCommits => {
                let promote = s.promoting?;
                if !s.control_up {
                    return None;
                }
                t.promoting = None;
                t.committed.apply(promote);
            }
            Action::TakeUp { node } => {
                let promote = self.taking_up(s, node)?;
                if !s.control_up || !self.propose(&mut t, node, promote) {
                    return None;
                }
                t.nodes[node].taken_up = s.nodes[node].view.epoch + 1;
            }
            Action::TakeUpFails { node } => {
                let promote = self.taking_up(s, node)?;
                if !self.times_out(&mut t) || !self.leave_pending(&mut t, promote) {
                    return None;
                }
            }
            Action::TakeRole { node } => {
                let n = s.nodes[node];
                let own_epoch = n.taken_up == n.view.epoch;
                if !n.up
                    || n.role.is_some()
                    || n.view.primary != node
                    || (!own_epoch && self.variant != Variant::RoleFromStaleView)
                    || n.accepted > n.view.epoch
                {
                    return None;
                }
                let mut peers = [Peer::new(Mode::OutOfSync); MAX_NODES];
                for (p, st) in peers.iter_mut().zip(n.view.replicas) {
                    if st == ReplicaState::InSync {
                        p.mode = Mode::InSync;
                    }
                }
                let t_node = &mut t.nodes[node];
                t_node.accepted = n.view.epoch;
                t_node.taken_up = 0;
                t_node.role = Some(Role {
                    epoch: n.view.epoch,
                    deposed: false,
                    peers,
                    writes: [None; MAX_WRITES],
                });
            }
            Action::Apply { node } => {
                let n = s.nodes[node];
                if !n.up || n.view.index >= s.committed.index {
                    return None;
                }
                let view = s.committed;
                t.nodes[node].view = view;
                if n.role
                    .is_some_and(|r| view.primary != node || view.epoch != r.epoch)
                {
                    t.nodes[node].role = None;
                }
            }
            Action::Heartbeat { node } => {
                let n = s.nodes[node];
                let caught_up = n.view.index == s.committed.index
                    || self.variant == Variant::LeaseWithoutCaughtUpView;
                if !n.up
                    || !s.control_up
                    || !caught_up
                    || self.being_replaced(s, node)
                    || (n.lease && !n.restarted)
                {
                    return None;
                }
                t.nodes[node].lease = true;
                t.nodes[node].restarted = false;
            }
            Action::LeaseExpires { node } => {
                if !s.nodes[node].lease {
                    return None;
                }
                t.nodes[node].lease = false;
            }
            Action::Crash { node } => {
                if !s.nodes[node].up || s.crashes >= self.bounds.crashes {
                    return None;
                }
                let n = &mut t.nodes[node];
                n.up = false;
                n.lease = false;
                n.restarted = false;
                n.role = None;
                n.taken_up = 0;
                n.reported = [0; MAX_NODES];
                t.crashes += 1;
            }
            Action::Restart { node } => {
                if s.nodes[node].up {
                    return None;
                }
                t.nodes[node].up = true;
                // Only the plain-disk bug acts on it: otherwise a restarted
                // node forwards writes to the primary its view names (as
                // any node does), and that one checks it may acknowledge.
                t.nodes[node].restarted = self.variant == Variant::RestartAsPlainDisk;
            }
            Action::ControlPlaneLost => {
                if !s.control_up || s.outages >= self.bounds.outages {
                    return None;
                }
                t.control_up = false;
                t.outages += 1;
            }
            Action::ControlPlaneBack => {
                if s.control_up {
                    return None;
                }
                t.control_up = true;
            }
        }
        t.went_back |= went_back(s, &t);
        Some(t)
    }
}

/// Whether the committed epoch or index, an accepted epoch or an applied
/// view went backwards from `s` to `t`.
fn went_back(s: &State, t: &State) -> bool {
    t.committed.epoch < s.committed.epoch
        || t.committed.index < s.committed.index
        || s.nodes.iter().zip(&t.nodes).any(|(a, b)| {
            b.accepted < a.accepted || b.view.index < a.view.index || b.view.epoch < a.view.epoch
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;
    use crate::{Bounds, Protocol, Variant};

    fn run(p: &Protocol, actions: &[Action]) -> State {
        p.replay(actions)
    }

    /// `A` takes up epoch 2, starts its role and gets a lease.
    const START: [Action; 3] = [
        Action::TakeUp { node: 0 },
        Action::TakeRole { node: 0 },
        Action::Heartbeat { node: 0 },
    ];

    #[test]
    fn a_forwarded_write_is_acknowledged_once_every_copy_has_it() {
        let p = Protocol::new(Variant::Fixed, Bounds::SMALL);
        let mut actions = START.to_vec();
        actions.push(Action::Write { via: 1, write: 0 });
        let s = run(&p, &actions);
        let ack = Action::Acknowledge {
            primary: 0,
            write: 0,
        };
        assert!(p.step(&s, ack).is_none(), "acknowledged before B has it");
        actions.extend([
            Action::Deliver {
                primary: 0,
                write: 0,
                peer: 1,
            },
            ack,
        ]);
        let s = run(&p, &actions);
        assert!(s.acknowledged.has(0));
        assert!(s.nodes[0].copy.has(0) && s.nodes[1].copy.has(0));
    }

    #[test]
    fn a_write_waits_for_a_pending_replica_lost_record() {
        let p = Protocol::new(Variant::Fixed, Bounds::SMALL);
        let mut actions = START.to_vec();
        actions.extend([
            Action::Write { via: 0, write: 0 },
            Action::PeerFails {
                primary: 0,
                write: 0,
                peer: 1,
            },
            Action::Write { via: 0, write: 1 },
        ]);
        let s = run(&p, &actions);
        let role = s.nodes[0].role.unwrap();
        assert_eq!(role.writes[1].unwrap()[1], Answer::AwaitRecord);
        let ack = Action::Acknowledge {
            primary: 0,
            write: 1,
        };
        assert!(p.step(&s, ack).is_none());
        // No quorum: the record fails, and so do both writes.
        actions.extend([
            Action::ControlPlaneLost,
            Action::RecordLostFails {
                primary: 0,
                peer: 1,
            },
        ]);
        let s = run(&p, &actions);
        assert!(!s.nodes[0].role.unwrap().busy());
        assert!(s.acknowledged.is_empty());
    }

    #[test]
    fn a_restarted_node_forwards_writes_to_the_primary() {
        let fixed = Protocol::new(Variant::Fixed, Bounds::SMALL);
        let mut actions = START.to_vec();
        actions.extend([Action::Crash { node: 1 }, Action::Restart { node: 1 }]);
        let s = run(&fixed, &actions);
        let s = fixed.step(&s, Action::Write { via: 1, write: 0 }).unwrap();
        assert!(s.acknowledged.is_empty());
        assert!(
            s.nodes[0].role.unwrap().writes[0].is_some(),
            "forwarded to A"
        );

        let buggy = Protocol::new(Variant::RestartAsPlainDisk, Bounds::SMALL);
        let s = run(&buggy, &actions);
        let s = buggy.step(&s, Action::Write { via: 1, write: 0 }).unwrap();
        assert!(s.acknowledged.has(0) && !s.nodes[0].copy.has(0));
    }

    #[test]
    fn promotion_waits_for_the_old_primarys_lease() {
        let p = Protocol::new(Variant::Fixed, Bounds::SMALL);
        let s = run(&p, &START);
        assert!(p.step(&s, Action::Promote { node: 1 }).is_none());
        let s = run(
            &p,
            &[&START[..], &[Action::LeaseExpires { node: 0 }]].concat(),
        );
        let s = p.step(&s, Action::Promote { node: 1 }).unwrap();
        assert_eq!((s.committed.primary, s.committed.epoch), (1, 3));
        assert_eq!(s.committed.replicas[0], ReplicaState::OutOfSync);
    }

    #[test]
    fn a_role_starts_only_at_an_epoch_of_its_own() {
        let p = Protocol::new(Variant::Fixed, Bounds::SMALL);
        let s = p.initial();
        assert!(
            p.step(&s, Action::TakeRole { node: 0 }).is_none(),
            "a role at the epoch of the volume's creation"
        );
        let s = run(&p, &START[..1]);
        assert_eq!((s.committed.epoch, s.nodes[0].taken_up), (2, 2));
        assert_eq!(s.nodes[0].view, s.committed, "applied by its proposer");
        let s = run(&p, &START);
        assert_eq!(s.nodes[0].role.unwrap().epoch, 2);
        assert_eq!(s.nodes[0].taken_up, 0, "used by the role");

        // After a crash the node takes up yet another epoch.
        let mut actions = START.to_vec();
        actions.extend([Action::Crash { node: 0 }, Action::Restart { node: 0 }]);
        let s = run(&p, &actions);
        assert!(p.step(&s, Action::TakeRole { node: 0 }).is_none());
        actions.extend([Action::TakeUp { node: 0 }, Action::TakeRole { node: 0 }]);
        assert_eq!(run(&p, &actions).nodes[0].role.unwrap().epoch, 3);

        // The variant starts the role straight from the view.
        let stale = Protocol::new(Variant::RoleFromStaleView, Bounds::SMALL);
        assert!(stale.step(&s, Action::TakeUp { node: 0 }).is_none());
        let s = stale.step(&stale.initial(), Action::TakeRole { node: 0 });
        assert_eq!(s.unwrap().nodes[0].role.unwrap().epoch, 1);
    }

    #[test]
    fn a_report_is_refused_for_an_older_epoch_or_a_later_report() {
        let mut r = Protocol::new(Variant::Fixed, Bounds::SMALL)
            .initial()
            .committed;
        let report = |state, epoch, seq| Command::SetReplicaState {
            node: 1,
            state,
            epoch,
            seq,
        };
        assert!(r.apply(report(ReplicaState::OutOfSync, 1, 2)));
        assert!(!r.apply(report(ReplicaState::InSync, 1, 1)), "overtaken");
        assert!(!r.apply(report(ReplicaState::InSync, 1, 2)), "overtaken");
        assert_eq!(r.replicas[1], ReplicaState::OutOfSync);
        assert!(r.apply(report(ReplicaState::InSync, 1, 0)), "unnumbered");
        let promote = Command::Promote {
            node: 0,
            expected_epoch: 1,
        };
        assert!(r.apply(promote));
        assert!(!r.apply(promote), "expected epoch is stale");
        assert_eq!((r.primary, r.epoch, r.index), (0, 2, 4));
        assert!(!r.apply(report(ReplicaState::OutOfSync, 1, 3)), "epoch");
        assert!(!r.apply(report(ReplicaState::OutOfSync, 2, 1)), "primary");
    }
}
