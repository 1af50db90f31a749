//! The actions of the model: one step of one actor (initiator, primary,
//! replica, control plane, node lifecycle), printed as a sentence in traces.

use std::fmt;

use crate::state::{Command, NodeId, NodeName, WriteId, WriteName};

/// One step of one actor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// The initiator issues `write` through node `via`; a node that is not
    /// the primary forwards it to the primary its view names, and that
    /// node writes its copy and sends the write to its peers.
    Write {
        /// The node the initiator talks to.
        via: NodeId,
        /// The write.
        write: WriteId,
    },
    /// `peer` receives `write` from `primary` and answers: it applies it, or
    /// refuses it as of a stale epoch (which deposes `primary`).
    Deliver {
        /// The sender.
        primary: NodeId,
        /// The write.
        write: WriteId,
        /// The receiver.
        peer: NodeId,
    },
    /// `primary` gets no answer in time from `peer` for `write` (message
    /// lost, link down, peer crashed or slow) and calls `lose` on it.
    PeerFails {
        /// The sender.
        primary: NodeId,
        /// The write.
        write: WriteId,
        /// The peer that failed.
        peer: NodeId,
    },
    /// The control plane decides `primary`'s `replica_lost` record of `peer`:
    /// it commits, or is refused for a stale epoch.
    RecordLost {
        /// The recording primary.
        primary: NodeId,
        /// The lost peer.
        peer: NodeId,
    },
    /// `primary`'s `replica_lost` record of `peer` times out (no quorum, or
    /// a slow commit); every write waiting for it fails, and the command
    /// may still commit later.
    RecordLostFails {
        /// The recording primary.
        primary: NodeId,
        /// The lost peer.
        peer: NodeId,
    },
    /// `primary` acknowledges `write` to the initiator.
    Acknowledge {
        /// The acknowledging primary.
        primary: NodeId,
        /// The write.
        write: WriteId,
    },
    /// `primary` copies what out-of-sync `peer` misses and sends it writes
    /// from now on (syncing).
    Resync {
        /// The primary.
        primary: NodeId,
        /// The peer brought up to date.
        peer: NodeId,
    },
    /// Behind a barrier (no write in flight) `primary` counts syncing `peer`
    /// in sync: writes go to it, and its failures are recorded.
    MarkInSync {
        /// The primary.
        primary: NodeId,
        /// The peer now in sync.
        peer: NodeId,
    },
    /// `primary` records `peer`, in sync in its memory, in sync in the
    /// control plane (again, if an earlier try timed out); the record
    /// commits or is refused.
    RecordInSync {
        /// The primary.
        primary: NodeId,
        /// The peer.
        peer: NodeId,
    },
    /// `primary`'s in-sync record of `peer` times out (no quorum, or a slow
    /// commit); the peer stays in sync in the primary's memory (in the fixed
    /// design), and the command may still commit later.
    RecordInSyncFails {
        /// The primary.
        primary: NodeId,
        /// The peer.
        peer: NodeId,
    },
    /// A command whose proposer gave up on it commits after all (or is
    /// refused), maybe after later commands.
    LateCommit {
        /// The command.
        command: Command,
    },
    /// The leader fails over: it promotes in-sync `node` to primary at the
    /// next epoch, the old primary's copy out of sync, once the old primary
    /// holds no lease.
    Promote {
        /// The new primary.
        node: NodeId,
    },
    /// The leader decides to promote in-sync `node` (the old primary holds
    /// no lease), and the promotion commits only at a later step (a slow
    /// commit): until then the leader answers the other members' heartbeats
    /// from the state before it, and the old primary's not at all (in
    /// [`crate::Variant::LeaseDuringPromotion`]: from the state before it
    /// too).
    FailoverSlowly {
        /// The new primary.
        node: NodeId,
    },
    /// The leader's slow promotion commits (or is refused).
    FailoverCommits,
    /// `node`'s view names it primary and it runs no role: it proposes to
    /// promote itself from the view's epoch, and the promotion commits or
    /// is refused.
    TakeUp {
        /// The node.
        node: NodeId,
    },
    /// `node`'s promotion of itself times out (no quorum, or a slow
    /// commit); it may still commit later.
    TakeUpFails {
        /// The node.
        node: NodeId,
    },
    /// `node`'s view names it primary at the epoch it took up (in
    /// [`crate::Variant::RoleFromStaleView`]: at any epoch): it starts its
    /// role at that epoch, its copy accepting the epoch first, its peers'
    /// modes from the view.
    TakeRole {
        /// The node.
        node: NodeId,
    },
    /// `node` applies the committed record; a role the record no longer
    /// gives it stops.
    Apply {
        /// The node.
        node: NodeId,
    },
    /// The leader answers `node`'s heartbeat: its lease runs.
    Heartbeat {
        /// The node.
        node: NodeId,
    },
    /// `node`'s lease runs out.
    LeaseExpires {
        /// The node.
        node: NodeId,
    },
    /// `node` crashes: it keeps its copy, accepted epoch and view.
    Crash {
        /// The node.
        node: NodeId,
    },
    /// `node` starts again.
    Restart {
        /// The node.
        node: NodeId,
    },
    /// The control plane loses its quorum.
    ControlPlaneLost,
    /// The control plane has a quorum again.
    ControlPlaneBack,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Action::Write { via, write } => {
                write!(
                    f,
                    "initiator issues {} through {}",
                    WriteName(write),
                    NodeName(via)
                )
            }
            Action::Deliver {
                primary,
                write,
                peer,
            } => write!(
                f,
                "{} receives {} from {}",
                NodeName(peer),
                WriteName(write),
                NodeName(primary)
            ),
            Action::PeerFails {
                primary,
                write,
                peer,
            } => write!(
                f,
                "{} gets no answer from {} for {}: lose({})",
                NodeName(primary),
                NodeName(peer),
                WriteName(write),
                NodeName(peer)
            ),
            Action::RecordLost { primary, peer } => write!(
                f,
                "control plane decides {}'s replica_lost({})",
                NodeName(primary),
                NodeName(peer)
            ),
            Action::RecordLostFails { primary, peer } => write!(
                f,
                "{}'s replica_lost({}) times out",
                NodeName(primary),
                NodeName(peer)
            ),
            Action::Acknowledge { primary, write } => {
                write!(f, "{} acknowledges {}", NodeName(primary), WriteName(write))
            }
            Action::Resync { primary, peer } => {
                write!(f, "{} resyncs {}", NodeName(primary), NodeName(peer))
            }
            Action::MarkInSync { primary, peer } => write!(
                f,
                "{} counts {} in sync (barrier)",
                NodeName(primary),
                NodeName(peer)
            ),
            Action::RecordInSync { primary, peer } => write!(
                f,
                "control plane decides {}'s in-sync record of {}",
                NodeName(primary),
                NodeName(peer)
            ),
            Action::RecordInSyncFails { primary, peer } => write!(
                f,
                "{}'s in-sync record of {} times out",
                NodeName(primary),
                NodeName(peer)
            ),
            Action::LateCommit { command } => {
                write!(f, "control plane decides the timed-out {command} after all")
            }
            Action::Promote { node } => write!(f, "control plane promotes {}", NodeName(node)),
            Action::FailoverSlowly { node } => write!(
                f,
                "leader proposes to promote {}; the commit is slow",
                NodeName(node)
            ),
            Action::FailoverCommits => write!(f, "control plane decides the leader's promotion"),
            Action::TakeUp { node } => write!(
                f,
                "control plane decides {}'s promotion of itself",
                NodeName(node)
            ),
            Action::TakeUpFails { node } => {
                write!(f, "{}'s promotion of itself times out", NodeName(node))
            }
            Action::TakeRole { node } => write!(f, "{} takes the primary role", NodeName(node)),
            Action::Apply { node } => write!(f, "{} applies the committed state", NodeName(node)),
            Action::Heartbeat { node } => write!(f, "{} gets a lease", NodeName(node)),
            Action::LeaseExpires { node } => write!(f, "{}'s lease expires", NodeName(node)),
            Action::Crash { node } => write!(f, "{} crashes", NodeName(node)),
            Action::Restart { node } => write!(f, "{} restarts", NodeName(node)),
            Action::ControlPlaneLost => write!(f, "control plane loses its quorum"),
            Action::ControlPlaneBack => write!(f, "control plane has a quorum again"),
        }
    }
}
