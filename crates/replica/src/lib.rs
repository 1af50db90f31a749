//! Synchronous mirroring of a [`Volume`] across the nodes of a cluster.
//!
//! - [`wire`]: the replication protocol (pure, fuzzable).
//! - [`auth`]: mutual authentication of the two ends with the cluster secret.
//! - [`copy::LocalCopy`]: one node's copy of a volume, its accepted epoch and
//!   its activity log.
//! - [`server::ReplicaServer`]: applies a primary's writes to local copies
//!   (refusing stale epochs) and executes I/O forwarded by other nodes.
//! - [`primary::ReplicatedVolume`]: the primary's volume; a write is
//!   acknowledged once every in-sync copy has it, absent copies are tracked
//!   in dirty maps and resynced incrementally.
//! - [`forward::ForwardVolume`]: the route of a non-primary node, which
//!   forwards I/O to the primary.
//! - [`export::ClusterVolume`]: what the SCSI layer holds, one per exported
//!   volume: it owns the geometry, checks every request once and sends it
//!   down the [`export::Route`] the control plane sets (primary, forward, or
//!   waiting).
#![forbid(unsafe_code)]

pub mod auth;
pub mod copy;
pub mod dirty;
pub mod export;
pub mod forward;
pub mod link;
pub mod primary;
pub mod ranges;
pub mod server;
pub mod wire;

pub use auth::ClusterKey;
pub use copy::LocalCopy;
pub use export::{ClusterVolume, Route};
pub use forward::ForwardVolume;
pub use primary::{
    AckWindow, Control, ControlError, PeerSpec, PeerState, PeerStatus, PrimaryConfig,
    ReplicatedVolume,
};
pub use server::ReplicaServer;
