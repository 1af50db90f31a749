//! Tandem's management API (HTTP + JSON, version 1) and its client.
//!
//! Routes:
//! - `GET    /v1/status`                      node summary
//! - `GET    /v1/volumes`                     list volumes
//! - `POST   /v1/volumes`                     create `{name, size_bytes, block_size?}`
//! - `GET    /v1/volumes/{name}`              describe one volume
//! - `PATCH  /v1/volumes/{name}`              grow `{size_bytes}`
//! - `DELETE /v1/volumes/{name}?force=true`   delete (force logs initiators out)
//! - `PUT    /v1/volumes/{name}/access`       replace access rules
//!   `{allowed_initiators: [..], chap: {user, secret}?, mutual_chap: {user, secret}?}`
//! - `POST   /v1/volumes/{name}/replicas`     add a copy `{node?}` → `{node}`
//! - `DELETE /v1/volumes/{name}/replicas/{node}` drop the copy on a member
//! - `GET    /v1/cluster`                     cluster status, replication
//!   progress, and when this node acknowledged writes as a primary
//! - `POST   /v1/cluster/init`                make this node a new cluster → `{token}`
//! - `POST   /v1/cluster/join`                join `{seed, token}`
//! - `POST   /v1/cluster/leave`               leave the cluster
//!
//! Every request carries `Authorization: Bearer <token>`, the token the server
//! keeps in `<data dir>/api.token` (mode 0600). Errors are `{"error": "..."}`
//! with 400 (bad request), 401 (no or wrong token), 404 (no such volume),
//! 409 (exists / in use / refused by the cluster) or 500.
#![forbid(unsafe_code)]

mod client;
mod server;

pub use client::{ApiClient, ClientError};
pub use server::router;

use serde::{Deserialize, Serialize};

/// The default management API address: loopback only.
pub const DEFAULT_API_ADDR: &str = "127.0.0.1:7260";

/// Body of `POST /v1/volumes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateVolume {
    /// Volume name: `[a-z0-9][a-z0-9.-]{0,62}`.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Logical block size, 512 (default) or 4096.
    #[serde(default = "default_block_size")]
    pub block_size: u32,
    /// Copies on distinct nodes (cluster members only; default 2, or 1 with one data node).
    #[serde(default)]
    pub replicas: Option<usize>,
}

/// Body of `POST /v1/cluster/join`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinCluster {
    /// Cluster endpoint (host:port) of any member.
    pub seed: String,
    /// Join token printed by `tandem cluster init`.
    pub token: String,
}

/// Answer of `POST /v1/cluster/init`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterToken {
    /// Join token for other nodes (holds the cluster secret: keep it private).
    pub token: String,
}

/// Body of `POST /v1/volumes/{name}/replicas`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AddReplica {
    /// Member (name or id) to hold the new copy; none: the data node without
    /// a copy that holds the fewest copies.
    #[serde(default)]
    pub node: Option<String>,
}

/// Answer of `POST /v1/volumes/{name}/replicas`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaPlaced {
    /// Id of the node that holds the new copy.
    pub node: u64,
}

/// Answer of `GET /v1/cluster`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterView {
    /// Control-plane status.
    pub status: node::ClusterStatus,
    /// For volumes this node is primary of: the state of each replica.
    pub replication: std::collections::BTreeMap<String, Vec<PeerStatus>>,
    /// For volumes held here: when this node acknowledged writes as their
    /// primary, one window per primary role (no two nodes' windows of a
    /// volume may overlap).
    #[serde(default)]
    pub acknowledged: std::collections::BTreeMap<String, Vec<AckWindow>>,
}

/// One replica of a volume as its primary sees it, in [`ClusterView`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerStatus {
    /// Id of the node that holds the replica.
    pub node: u64,
    /// In JSON `"in-sync"`, `"syncing"` or `"out-of-sync"`.
    pub state: PeerState,
    /// Whether the primary's connection to the replica is up.
    pub connected: bool,
    /// Bytes the replica is known to miss.
    pub dirty_bytes: u64,
    /// Bytes copied by the running resync.
    pub resync_done: u64,
    /// Bytes the running resync set out to copy.
    pub resync_total: u64,
}

impl PeerStatus {
    /// Whether the replica holds every acknowledged write, with nothing
    /// left to reconcile.
    pub fn in_sync(&self) -> bool {
        self.state == PeerState::InSync
    }
}

/// How far a replica is from its primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerState {
    /// Holds every acknowledged write, with nothing left to reconcile.
    InSync,
    /// Catching up (also an in-sync replica reconciling regions written
    /// before the last stop).
    Syncing,
    /// Recorded as missing writes, or being recorded so.
    OutOfSync,
}

impl PeerState {
    /// The name status displays use (the same as in JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::InSync => "in-sync",
            PeerState::Syncing => "syncing",
            PeerState::OutOfSync => "out-of-sync",
        }
    }
}

impl std::fmt::Display for PeerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a node acknowledged writes of a volume as its primary, in one
/// primary role, in [`ClusterView`]. Times are wall-clock microseconds
/// since the Unix epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AckWindow {
    /// Epoch the writes were acknowledged under.
    pub epoch: u64,
    /// Writes acknowledged.
    pub writes: u64,
    /// First acknowledgement.
    pub first_us: u64,
    /// Last acknowledgement.
    pub last_us: u64,
}

impl From<node::PeerStatus> for PeerStatus {
    fn from(p: node::PeerStatus) -> Self {
        PeerStatus {
            node: p.node,
            state: match p.state {
                node::PeerState::InSync => PeerState::InSync,
                node::PeerState::Syncing => PeerState::Syncing,
                node::PeerState::OutOfSync => PeerState::OutOfSync,
            },
            connected: p.connected,
            dirty_bytes: p.dirty_bytes,
            resync_done: p.resync_done,
            resync_total: p.resync_total,
        }
    }
}

impl From<node::AckWindow> for AckWindow {
    fn from(w: node::AckWindow) -> Self {
        AckWindow {
            epoch: w.epoch,
            writes: w.writes,
            first_us: w.first_us,
            last_us: w.last_us,
        }
    }
}

fn default_block_size() -> u32 {
    512
}

/// Body of `PATCH /v1/volumes/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResizeVolume {
    /// New size in bytes (grow only).
    pub size_bytes: u64,
}

/// Body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, naming the object.
    pub error: String,
}
