//! The primary role's write path (`replica::primary`): a write goes to
//! the local copy and to every peer in the write path, a peer that fails
//! it is `lose`d, and a role that meets a newer epoch is deposed.

use crate::state::{Answer, Mode, NodeId, Role, State, WriteId, MAX_NODES, MAX_WRITES};
use crate::{Protocol, Variant};

impl Protocol {
    /// The primary writes its copy and sends the write to every peer not
    /// out of sync; a peer whose `replica_lost` record is pending is not
    /// skipped: the write waits for that record.
    pub(crate) fn start_write(&self, t: &mut State, primary: NodeId, write: WriteId) {
        t.nodes[primary].copy = t.nodes[primary].copy.with(write);
        let role = role_mut(t, primary);
        let mut answers = [Answer::Skipped; MAX_NODES];
        for peer in (0..self.bounds.nodes).filter(|&p| p != primary) {
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
    pub(crate) fn lose(&self, role: &mut Role, write: WriteId, peer: NodeId) {
        let p = &mut role.peers[peer];
        let answer = if p.recording {
            // Serialized behind the pending record: wait for its outcome.
            Answer::AwaitRecord
        } else {
            match p.mode {
                Mode::InSync => {
                    // In sync recorded or not: a record that timed out may
                    // still commit, so the failure is recorded after it.
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

pub(crate) fn role_mut(t: &mut State, n: NodeId) -> &mut Role {
    t.nodes[n]
        .role
        .as_mut()
        .expect("the step checked that the node has a role")
}

/// A peer answered with a newer epoch: the role acknowledges nothing more,
/// every write in flight fails.
pub(crate) fn depose(t: &mut State, primary: NodeId) {
    let r = role_mut(t, primary);
    r.deposed = true;
    r.writes = [None; MAX_WRITES];
}

/// The `replica_lost` record of `peer` did not commit: the peer counts as in
/// sync again (recorded so or not, as before), and every write waiting for
/// the record fails.
pub(crate) fn record_failed(role: &mut Role, peer: NodeId) {
    let p = &mut role.peers[peer];
    p.mode = Mode::InSync;
    p.recording = false;
    for w in role.writes.iter_mut() {
        if w.is_some_and(|answers| answers[peer] == Answer::AwaitRecord) {
            *w = None;
        }
    }
}
