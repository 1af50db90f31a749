//! The actions of the model: one step of one actor (initiator, primary,
//! replica, control plane, node lifecycle), printed as a sentence in traces.

use std::fmt;

use crate::state::{NodeId, NodeName, WriteId, WriteName};

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
    /// `primary`'s `replica_lost` record of `peer` times out (no quorum).
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
    /// Behind a barrier (no write in flight) `primary` records syncing
    /// `peer` in sync in the control plane.
    RecordInSync {
        /// The primary.
        primary: NodeId,
        /// The peer now in sync.
        peer: NodeId,
    },
    /// `primary`'s in-sync record of `peer` times out (no quorum); the peer
    /// stays syncing, the command may still commit later.
    RecordInSyncFails {
        /// The primary.
        primary: NodeId,
        /// The peer.
        peer: NodeId,
    },
    /// A command whose proposer gave up on it commits after all.
    LateCommit,
    /// The control plane promotes in-sync `node` to primary at the next
    /// epoch, the old primary's copy out of sync.
    Promote {
        /// The new primary.
        node: NodeId,
    },
    /// `node`'s view names it primary: it starts its role at the view's
    /// epoch, its copy accepting that epoch first.
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
                "{}'s replica_lost({}) fails: no quorum",
                NodeName(primary),
                NodeName(peer)
            ),
            Action::Acknowledge { primary, write } => {
                write!(f, "{} acknowledges {}", NodeName(primary), WriteName(write))
            }
            Action::Resync { primary, peer } => {
                write!(f, "{} resyncs {}", NodeName(primary), NodeName(peer))
            }
            Action::RecordInSync { primary, peer } => write!(
                f,
                "{} records {} in sync",
                NodeName(primary),
                NodeName(peer)
            ),
            Action::RecordInSyncFails { primary, peer } => write!(
                f,
                "{}'s in-sync record of {} times out: no quorum",
                NodeName(primary),
                NodeName(peer)
            ),
            Action::LateCommit => write!(f, "control plane commits the timed-out record after all"),
            Action::Promote { node } => write!(f, "control plane promotes {}", NodeName(node)),
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
