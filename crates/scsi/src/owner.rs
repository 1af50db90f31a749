//! A logical unit that several nodes present at once (a cluster volume):
//! one node holds its SCSI state (reservations, unit attentions raised by
//! them, mode settings) and runs its commands; the others run only what
//! belongs to their own target port and pass everything else to it.
//!
//! With one node running every command that reads or changes the medium or
//! that state, a reservation change and the commands it fences are ordered
//! in one place: once PERSISTENT RESERVE OUT returns GOOD through any node,
//! no node runs a command of a fenced initiator.

use async_trait::async_trait;

use crate::{Request, Response, Sense};

/// Where a logical unit's commands run at the moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// On this node: it holds the state.
    Here,
    /// On another node, through [`Owner::run`].
    Elsewhere,
    /// Nowhere yet (between two holders): commands fail as an access state
    /// transition, which initiators retry.
    Unknown,
}

/// The node that holds a logical unit's state, as the other nodes reach it.
#[async_trait]
pub trait Owner: Send + Sync {
    /// Where commands run now.
    fn place(&self) -> Place;

    /// Runs `req` on the node that holds the state and returns its answer.
    /// `Err` is the sense for a command that got no answer there (the
    /// initiator cannot tell whether it ran, as with any lost command).
    async fn run(&self, req: &Request<'_>) -> Result<Response, Sense>;

    /// Tells the holding node that `nexus` ended here: it releases what the
    /// nexus held there (a RESERVE). Best effort: it does not wait.
    fn nexus_ended(&self, nexus: &str);

    /// Resets the logical unit on the holding node (a LUN RESET through
    /// this node), so every nexus hears of it there; returns once it has.
    async fn reset(&self);
}
