//! The protocol's steps: which actions each actor may take in a state, and
//! the state each one leads to. Names follow `replica::primary` (peers,
//! modes, `lose`, `replica_lost`, resync) and `cluster` (promote, lease,
//! heartbeat, applied view).

use crate::action::Action;
use crate::state::{
    Answer, Mode, NodeId, Peer, ReplicaState, Role, State, Undecided, WriteId, MAX_NODES,
    MAX_WRITES,
};
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
                if role.peers[peer].recording {
                    out.push(Action::RecordLost { primary, peer });
                    out.push(Action::RecordLostFails { primary, peer });
                }
                match role.peers[peer].mode {
                    Mode::OutOfSync => out.push(Action::Resync { primary, peer }),
                    Mode::Syncing => {
                        out.push(Action::RecordInSync { primary, peer });
                        out.push(Action::RecordInSyncFails { primary, peer });
                    }
                    Mode::InSync => {}
                }
            }
        }
        for node in self.node_ids() {
            out.push(Action::Promote { node });
            out.push(Action::TakeRole { node });
            out.push(Action::Apply { node });
            out.push(Action::Heartbeat { node });
            out.push(Action::LeaseExpires { node });
            out.push(Action::Crash { node });
            out.push(Action::Restart { node });
        }
        out.push(Action::LateCommit);
        out.push(Action::ControlPlaneLost);
        out.push(Action::ControlPlaneBack);
    }

    /// The state after `a`, or `None` where `a` is not possible in `s`.
    pub(crate) fn step(&self, s: &State, a: Action) -> Option<State> {
        let mut t = *s;
        match a {
            Action::Write { via, write } => {
                if write != s.next_write || write >= self.bounds.writes || !s.nodes[via].up {
                    return None;
                }
                if s.nodes[via].restarted {
                    // The fixed design exports nothing writable before a
                    // lease with a caught-up view; the bug takes the write
                    // as a plain local disk would.
                    if !self.plain_disk(s, via) {
                        return None;
                    }
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
                if s.committed.epoch == role.epoch {
                    t.committed.replicas[peer] = ReplicaState::OutOfSync;
                    t.committed.index += 1;
                    let r = role_mut(&mut t, primary);
                    r.peers[peer] = Peer {
                        mode: Mode::OutOfSync,
                        recording: false,
                    };
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
                if !role.peers[peer].recording || s.control_up {
                    return None;
                }
                self.leave_undecided(&mut t, peer, ReplicaState::OutOfSync, role.epoch);
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
            Action::RecordInSync { primary, peer } => {
                let role = s.nodes[primary].role?;
                if role.deposed
                    || role.peers[peer].mode != Mode::Syncing
                    || role.busy()
                    || !s.control_up
                    || s.committed.epoch != role.epoch
                {
                    return None;
                }
                t.committed.replicas[peer] = ReplicaState::InSync;
                t.committed.index += 1;
                role_mut(&mut t, primary).peers[peer].mode = Mode::InSync;
            }
            Action::RecordInSyncFails { primary, peer } => {
                let role = s.nodes[primary].role?;
                if role.deposed
                    || role.peers[peer].mode != Mode::Syncing
                    || role.busy()
                    || s.control_up
                {
                    return None;
                }
                // The peer stays syncing ("recorded on a later try"); only
                // a command left to commit late changes the state.
                if !self.leave_undecided(&mut t, peer, ReplicaState::InSync, role.epoch) {
                    return None;
                }
            }
            Action::LateCommit => {
                let cmd = s.undecided?;
                if !s.control_up {
                    return None;
                }
                if cmd.epoch == s.committed.epoch {
                    t.committed.replicas[cmd.peer] = cmd.state;
                    t.committed.index += 1;
                }
                t.undecided = None;
            }
            Action::Promote { node } => {
                let old = s.committed.primary;
                let failovers = s.committed.epoch - 1;
                if !s.control_up
                    || node == old
                    || s.committed.replicas[node] != ReplicaState::InSync
                    || !s.nodes[node].up
                    || s.nodes[old].lease
                    || failovers >= self.bounds.failovers
                {
                    return None;
                }
                t.committed.replicas[old] = ReplicaState::OutOfSync;
                t.committed.primary = node;
                t.committed.epoch += 1;
                t.committed.index += 1;
            }
            Action::TakeRole { node } => {
                let n = s.nodes[node];
                let stale_role_allowed = self.variant == Variant::RoleFromStaleView;
                if !n.up
                    || (n.restarted && !stale_role_allowed)
                    || n.view.primary != node
                    || n.role.is_some_and(|r| r.epoch >= n.view.epoch)
                    || n.accepted > n.view.epoch
                {
                    return None;
                }
                let mut peers = [Peer {
                    mode: Mode::OutOfSync,
                    recording: false,
                }; MAX_NODES];
                for (p, st) in peers.iter_mut().zip(n.view.replicas) {
                    if st == ReplicaState::InSync {
                        p.mode = Mode::InSync;
                    }
                }
                t.nodes[node].accepted = n.view.epoch;
                t.nodes[node].role = Some(Role {
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
                if !n.up || !s.control_up || !caught_up || (n.lease && !n.restarted) {
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
                t.crashes += 1;
            }
            Action::Restart { node } => {
                if s.nodes[node].up {
                    return None;
                }
                t.nodes[node].up = true;
                t.nodes[node].restarted = true;
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
        if t.committed.index > s.committed.index && a != Action::LateCommit {
            // Raft commits in log order: a timed-out command still in the
            // log commits before any later one, or never.
            t.undecided = None;
        }
        t.went_back |= went_back(s, &t);
        Some(t)
    }

    /// Leaves a timed-out command to commit later, if the bounds allow one
    /// more; tells whether it did.
    fn leave_undecided(&self, t: &mut State, peer: NodeId, state: ReplicaState, epoch: u8) -> bool {
        if t.undecided.is_some() || t.late >= self.bounds.late_commits {
            return false;
        }
        t.undecided = Some(Undecided { peer, state, epoch });
        t.late += 1;
        true
    }

    /// The primary writes its copy and sends the write to every peer not
    /// out of sync; a peer whose `replica_lost` record is pending is not
    /// skipped: the write waits for that record.
    fn start_write(&self, t: &mut State, primary: NodeId, write: WriteId) {
        t.nodes[primary].copy = t.nodes[primary].copy.with(write);
        let role = role_mut(t, primary);
        let mut answers = [Answer::Skipped; MAX_NODES];
        for peer in self.node_ids().filter(|&p| p != primary) {
            let p = role.peers[peer];
            answers[peer] = match p.mode {
                Mode::OutOfSync => Answer::Skipped,
                Mode::InSync | Mode::Syncing if p.recording => Answer::AwaitRecord,
                Mode::InSync | Mode::Syncing => Answer::Sent,
            };
        }
        role.writes[write] = Some(answers);
    }

    /// `primary.rs`'s `lose`: `peer` failed `write`.
    fn lose(&self, role: &mut Role, write: WriteId, peer: NodeId) {
        let p = &mut role.peers[peer];
        let answer = if p.recording {
            // Serialized behind the pending record: wait for its outcome.
            Answer::AwaitRecord
        } else {
            match p.mode {
                Mode::InSync => {
                    p.recording = true;
                    if self.variant == Variant::MarkBeforeCommit {
                        // The bug: out of the write path before the record
                        // commits, so writes issued meanwhile skip the peer.
                        p.mode = Mode::OutOfSync;
                    }
                    Answer::AwaitRecord
                }
                Mode::Syncing => {
                    // The control plane already counts it out of sync.
                    p.mode = Mode::OutOfSync;
                    Answer::Done
                }
                Mode::OutOfSync => Answer::Done,
            }
        };
        if let Some(answers) = role.writes[write].as_mut() {
            answers[peer] = answer;
        }
    }
}

fn role_mut(t: &mut State, n: NodeId) -> &mut Role {
    t.nodes[n]
        .role
        .as_mut()
        .expect("the step checked that the node has a role")
}

/// A peer answered with a newer epoch: the role acknowledges nothing more,
/// every write in flight fails.
fn depose(t: &mut State, primary: NodeId) {
    let r = role_mut(t, primary);
    r.deposed = true;
    r.writes = [None; MAX_WRITES];
}

/// The `replica_lost` record of `peer` did not commit: the peer counts as in
/// sync again, and every write waiting for the record fails.
fn record_failed(role: &mut Role, peer: NodeId) {
    role.peers[peer] = Peer {
        mode: Mode::InSync,
        recording: false,
    };
    for w in role.writes.iter_mut() {
        if w.is_some_and(|answers| answers[peer] == Answer::AwaitRecord) {
            *w = None;
        }
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
    use crate::{Bounds, Protocol, Variant};

    fn run(p: &Protocol, actions: &[Action]) -> State {
        actions.iter().fold(p.initial(), |s, &a| {
            p.step(&s, a)
                .unwrap_or_else(|| panic!("{a} is not possible in {s:?}"))
        })
    }

    const START: [Action; 2] = [Action::TakeRole { node: 0 }, Action::Heartbeat { node: 0 }];

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
    fn a_restarted_node_takes_no_write_before_its_lease() {
        let fixed = Protocol::new(Variant::Fixed, Bounds::SMALL);
        let mut actions = START.to_vec();
        actions.extend([Action::Crash { node: 1 }, Action::Restart { node: 1 }]);
        let s = run(&fixed, &actions);
        assert!(fixed.step(&s, Action::Write { via: 1, write: 0 }).is_none());
        let s = run(
            &fixed,
            &[actions.clone(), vec![Action::Heartbeat { node: 1 }]].concat(),
        );
        let s = fixed.step(&s, Action::Write { via: 1, write: 0 }).unwrap();
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
        assert_eq!((s.committed.primary, s.committed.epoch), (1, 2));
        assert_eq!(s.committed.replicas[0], ReplicaState::OutOfSync);
    }
}
