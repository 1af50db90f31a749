//! Synchronous mirroring of a volume across the nodes of a cluster. Only
//! the types re-exported here are the crate's interface; the replication
//! protocol ([`wire`]) is public for fuzzing and tools.
//!
//! - [`wire`]: the replication protocol (pure, fuzzable).
//! - [`auth`]: mutual authentication of the two ends with the cluster secret.
//! - [`copy::LocalCopy`]: one node's copy of a volume, its accepted epoch and
//!   its activity log.
//! - [`server::ReplicaServer`]: applies a primary's writes to local copies
//!   (refusing stale epochs) and executes I/O forwarded by other nodes.
//! - [`primary::Primary`]: the primary role; a write is acknowledged once
//!   every in-sync copy has it, absent copies are tracked in dirty maps and
//!   resynced incrementally.
//! - [`forward::Forwarder`]: the route of a non-primary node, which
//!   forwards I/O to the primary.
//! - [`export::ClusterVolume`]: what the SCSI layer holds, one per exported
//!   volume: it owns the geometry, checks every request once and sends it
//!   down the [`export::Route`] the control plane sets (primary, forward, or
//!   waiting).
#![forbid(unsafe_code)]

mod auth;
mod copy;
mod dirty;
mod export;
mod forward;
mod frames;
mod link;
mod primary;
mod ranges;
mod server;
pub mod wire;

pub use auth::ClusterKey;
pub use copy::{CopySnapshots, LocalCopy, SavedReservations};
pub use export::{ClusterVolume, Route, Unit};
pub use forward::Forwarder;
pub use primary::{
    AckWindow, Control, ControlError, Drained, HandOverError, NotAPeerState, PeerSpec, PeerState,
    PeerStatus, Primary, PrimaryConfig, DISK_RETRY_FIRST, DISK_RETRY_MAX,
};
pub use server::ReplicaServer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The busy-poll budget in nanoseconds; see [`set_busy_poll`].
static BUSY_POLL_NANOS: AtomicU64 = AtomicU64::new(0);

/// Sets how long replication connections made from now on poll before they
/// sleep, for the whole process: a replica, after each request, polls its
/// connection for the next one; a primary (or a forwarding node) waiting
/// for the answer to its only request in flight on a connection polls for
/// it. Only while requests (answers) come one at a time. Zero (the default)
/// never polls.
///
/// Waking a thread from an idle CPU costs tens of µs, most of all in a
/// virtual machine, and a mirrored write at queue depth 1 waits for two
/// such wake-ups; polling trades CPU time for them: each connection that
/// polls keeps a runtime thread busy while writes come one at a time.
pub fn set_busy_poll(d: Duration) {
    BUSY_POLL_NANOS.store(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
}

/// How long replication connections poll before they sleep.
pub fn busy_poll() -> Duration {
    Duration::from_nanos(BUSY_POLL_NANOS.load(Ordering::Relaxed))
}

/// Polls of this process, for requests (a copy's) and for answers (a
/// primary's), that got what they waited for and that ran out of time.
static BUSY_POLLS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// What a poll waited for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum PollFor {
    Request = 0,
    Answer = 2,
}

/// Counts one poll: it got what it waited for (`caught`) or ran out.
fn count_poll(what: PollFor, caught: bool) {
    BUSY_POLLS[what as usize + usize::from(!caught)].fetch_add(1, Ordering::Relaxed);
}

/// How many polls of this process got what they waited for and how many
/// ran out of time, since it started: polling that mostly runs out costs
/// CPU for nothing, and a longer (or no) budget serves better.
pub fn busy_polls() -> BusyPolls {
    let at = |i: usize| BUSY_POLLS[i].load(Ordering::Relaxed);
    BusyPolls {
        requests: PollCount {
            caught: at(0),
            expired: at(1),
        },
        answers: PollCount {
            caught: at(2),
            expired: at(3),
        },
    }
}

/// See [`busy_polls`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusyPolls {
    /// A copy's polls for the next request.
    pub requests: PollCount,
    /// A primary's (or forwarding node's) polls for an answer.
    pub answers: PollCount,
}

/// Polls of one kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollCount {
    /// Polls that got what they waited for.
    pub caught: u64,
    /// Polls that ran out of time.
    pub expired: u64,
}
