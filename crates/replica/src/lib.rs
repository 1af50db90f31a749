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
