//! The control-plane side of a step: the commands a node or the leader
//! proposes (`ControlPlaneLink::set` in node, the node's `hold`, `cluster::failover`), how a
//! report is numbered, and when a command times out or may commit late.

use crate::state::{Command, Mode, NodeId, ReplicaState, Role, State};
use crate::{Protocol, Variant};

impl Protocol {
    /// The promotion the leader proposes when it fails over to `node`: the
    /// control plane has a quorum and no promotion of the leader is in
    /// flight, `node` is in sync and up, the old primary holds no
    /// lease (its lease is certainly over when the leader finds it silent),
    /// and the bounds allow one more failover.
    pub(crate) fn failover(&self, s: &State, node: NodeId) -> Option<Command> {
        let old = s.committed.primary;
        let possible = s.control_up
            && s.promoting.is_none()
            && node != old
            && s.committed.replicas[node] == ReplicaState::InSync
            && s.nodes[node].up
            && !s.nodes[old].lease
            && s.failovers < self.bounds.failovers;
        possible.then_some(Command::Promote {
            node,
            expected_epoch: s.committed.epoch,
        })
    }

    /// Whether the leader leaves `node`'s heartbeats unanswered: it decided
    /// to replace `node` as primary and the promotion is not decided yet
    /// (`cluster`'s `replacing`, changed and read under the lock heartbeat
    /// answers take). Once it is, a lease needs a view that holds it (the
    /// answer carries at least the leader's applied index). Never in
    /// [`Variant::LeaseDuringPromotion`].
    pub(crate) fn being_replaced(&self, s: &State, node: NodeId) -> bool {
        // The node being replaced is still the committed primary: no other
        // failover is decided while one is pending, and a node's promotion
        // of itself leaves the primary as it is.
        self.variant != Variant::LeaseDuringPromotion
            && s.promoting.is_some()
            && s.committed.primary == node
    }

    /// The promotion `node` proposes for itself before it starts a primary
    /// role (the node's `hold`): its view names it primary, it runs no
    /// role, and it has not yet taken up the view's epoch. `None` in
    /// [`Variant::RoleFromStaleView`], which starts roles without one.
    pub(crate) fn taking_up(&self, s: &State, node: NodeId) -> Option<Command> {
        let n = s.nodes[node];
        let wanted = self.variant != Variant::RoleFromStaleView
            && n.up
            && n.role.is_none()
            && n.view.primary == node
            && n.taken_up != n.view.epoch;
        wanted.then_some(Command::Promote {
            node,
            expected_epoch: n.view.epoch,
        })
    }

    /// The report `primary` makes on `peer` (`ControlPlaneLink::set` in node): numbered
    /// above its own last report on `peer` and above the last one its view
    /// holds (unnumbered in [`Variant::UnnumberedReports`]).
    pub(crate) fn report(
        &self,
        s: &State,
        primary: NodeId,
        peer: NodeId,
        state: ReplicaState,
        epoch: u8,
    ) -> Command {
        let n = &s.nodes[primary];
        let seq = if self.variant == Variant::UnnumberedReports {
            0
        } else {
            n.reported[peer].max(n.view.reports[peer]) + 1
        };
        Command::SetReplicaState {
            node: peer,
            state,
            epoch,
            seq,
        }
    }

    /// `proposer`'s `command` commits now, or is refused; tells whether it
    /// was applied.
    ///
    /// `Cluster::propose` returns once the proposer applied the command too
    /// (it waits up to 5 s for that), so the proposer's view holds it. Where
    /// that wait times out, the proposer's view lags its own command; in the
    /// designs that start a role only at an epoch of their own such a node
    /// can only do less (its reports change only replica states and report
    /// numbers, which its role and its own numbering already hold; after its
    /// own promotion it starts no role and gets no lease before it applies),
    /// so the model leaves that case out. [`Variant::RoleFromStaleView`]
    /// keeps it: a restart starts the role from that lagging view.
    pub(crate) fn propose(&self, t: &mut State, proposer: NodeId, command: Command) -> bool {
        if !t.committed.apply(command) {
            return false;
        }
        if self.variant != Variant::RoleFromStaleView {
            t.nodes[proposer].view = t.committed;
        }
        true
    }

    /// Whether a command may time out now: without a quorum, or with one
    /// if the bounds allow one more slow commit (counted in `t`).
    pub(crate) fn times_out(&self, t: &mut State) -> bool {
        if !t.control_up {
            return true;
        }
        if t.slow >= self.bounds.slow_commits {
            return false;
        }
        t.slow += 1;
        true
    }

    /// Leaves a timed-out command to commit later, if the bounds allow one
    /// more; tells whether it did.
    pub(crate) fn leave_pending(&self, t: &mut State, command: Command) -> bool {
        if t.late >= self.bounds.late_commits {
            return false;
        }
        let slot = t
            .pending
            .iter()
            .position(Option::is_none)
            .expect("late_commits is at most MAX_PENDING");
        t.pending[slot] = Some(command);
        t.pending.sort_unstable();
        t.late += 1;
        true
    }
}

/// Whether `peer` is in sync in `role`'s memory and not yet recorded so,
/// with no `replica_lost` record pending (the in-sync record may be tried).
pub(crate) fn unrecorded(role: &Role, peer: NodeId) -> bool {
    let p = role.peers[peer];
    p.mode == Mode::InSync && p.unrecorded && !p.recording
}

/// `primary` keeps the number of `report`, which committed or may still:
/// its next report on that copy is numbered above it. (A report that is
/// refused, or times out and never commits, gives its number back: no
/// command carries it any more, so the next report may as well reuse it.)
pub(crate) fn keep_number(t: &mut State, primary: NodeId, report: Command) {
    if let Command::SetReplicaState { node, seq, .. } = report {
        t.nodes[primary].reported[node] = seq;
    }
}
