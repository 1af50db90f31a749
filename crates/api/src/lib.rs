//! Tandem's management API (HTTP + JSON, version 1) and its client.
//!
//! Routes:
//! - `GET    /v1/status`                      node summary: volumes, space of the
//!   data filesystem, listen addresses, cluster members and their liveness
//! - `GET    /v1/volumes`                     list volumes
//! - `POST   /v1/volumes`                     create `{name, size_bytes, block_size?}`
//! - `GET    /v1/volumes/{name}`              describe one volume (a cluster
//!   volume's sessions on every node, each with the node it is logged in through)
//! - `PATCH  /v1/volumes/{name}`              grow `{size_bytes}`
//! - `DELETE /v1/volumes/{name}?force=true`   delete; refused while initiators
//!   are logged in through any node, or while a node cannot be asked (force
//!   logs initiators out)
//! - `PUT    /v1/volumes/{name}/access`       replace access rules
//!   `{allowed_initiators: [..], chap: {user, secret}?, mutual_chap: {user, secret}?}`
//! - `POST   /v1/volumes/{name}/replicas`     add a copy `{node?}` → `{node}`
//! - `DELETE /v1/volumes/{name}/replicas/{node}?force=true` drop the copy on
//!   a member; refused when it would leave a single copy, unless forced
//! - `POST   /v1/volumes/{name}/move-primary` planned switchover `{to}` to
//!   the in-sync copy on a running member → what it did ([`PrimaryMoved`])
//! - `POST   /v1/cluster/maintenance/enter` move every volume a node leads
//!   elsewhere and record it in maintenance `{node?, force?}` → what moved
//!   ([`Maintenance`])
//! - `POST   /v1/cluster/maintenance/exit`  out of maintenance (its copies
//!   resync), and with `rebalance` primaries moved back to it
//!   `{node?, rebalance?}`
//! - `POST   /v1/cluster/upgrade-check`     whether a member `{node?}` can
//!   be stopped now without loss of availability, and why ([`UpgradeCheck`])
//! - `GET    /v1/cluster`                     cluster status, replication
//!   progress, when this node acknowledged writes as a primary, and every
//!   member's release and log version (not asked with `?versions=false`)
//! - `POST   /v1/cluster/init`                make this node a new cluster → `{token, endpoint}`
//! - `POST   /v1/cluster/join`                join `{seed, token}`
//! - `POST   /v1/cluster/leave`               leave the cluster
//! - `POST   /v1/cluster/remove`              remove a member that cannot
//!   leave by itself `{node, dead, force?}` → what it did ([`Removed`])
//! - `PUT    /v1/cluster/replace-delay`       how long a copy on a silent
//!   member waits before the leader replaces it `{secs}` (0: never)
//! - `GET    /v1/events?since=&after=&kind=&limit=&wait=` the node's event
//!   history, oldest first ([`node::Event`]); `wait` (seconds) holds the
//!   answer until a matching event comes, for `tandem events --follow`
//! - `GET    /v1/report`                      efficiency, agility and quality
//!   of service from the catalog, the event history and the metrics
//!   ([`node::Report`])
//! - `GET    /v1/health`                      the node's health in one word and
//!   why ([`Health`]): members down, copies out of sync, space
//! - `GET    /metrics`                        the node's metrics, OpenMetrics
//!   when asked for, else the Prometheus text format 0.0.4 (also served alone,
//!   without the token, by [`metrics_router`] on `serve --metrics-listen`)
//!
//! The web dashboard's page and assets (`GET /`, `/dashboard/...`) are
//! served without the token (they hold no data); every other request
//! carries `Authorization: Bearer <token>`, the token the server keeps in
//! `<data dir>/api.token` (mode 0600). Errors are `{"error": "..."}` with
//! 400 (bad request), 401 (no or wrong token), 404 (no such volume), 409
//! (exists / in use / sessions not known on some node / refused by the
//! cluster) or 500.
#![forbid(unsafe_code)]

mod client;
mod dashboard;
mod events;
mod health;
mod metrics;
mod server;
mod snapshots;

pub use client::{ApiClient, ClientError};
pub use events::{EventsQuery, MAX_WAIT as EVENTS_MAX_WAIT};
pub use health::{Health, HealthState};
pub use metrics::{
    encode as encode_metrics, metrics_router, witness_metrics_router,
    CONTENT_TYPE as METRICS_CONTENT_TYPE,
};
pub use node::{
    AckWindow, Maintenance, MemberVersion, PeerState, PeerStatus, PrimaryMoved, Removed,
    UpgradeCheck,
};
pub use server::{router, serving_router};
pub use snapshots::{CloneVolume, CreateSnapshots, Rollback};

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

/// Body of `POST /v1/cluster/remove`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RemoveMember {
    /// Member (name or id).
    pub node: String,
    /// Whether the member is gone (the only removal there is: a running
    /// member leaves by itself).
    #[serde(default)]
    pub dead: bool,
    /// Remove it even though it is still heard from.
    #[serde(default)]
    pub force: bool,
}

/// Body of `PUT /v1/cluster/replace-delay`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetReplaceDelay {
    /// Seconds a copy on a silent member waits before the leader replaces
    /// it; 0 turns re-placement off.
    pub secs: u64,
}

/// Body of `PUT /v1/cluster/floating`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetFloating {
    /// The floating service address, or `None` to remove it.
    pub floating: Option<node::FloatingAddress>,
}

/// Answer of `POST /v1/cluster/init`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterToken {
    /// Join token for other nodes (holds the cluster secret: keep it private).
    pub token: String,
    /// This node's cluster endpoint (`host:port`), the seed other nodes
    /// join through (empty from a server that did not say).
    #[serde(default)]
    pub endpoint: String,
}

/// Where a serving node listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listeners {
    /// iSCSI portal.
    pub iscsi: String,
    /// Management API.
    pub api: String,
    /// Control-plane endpoint (used once the node is a cluster member).
    pub cluster: String,
    /// Replication endpoint (used once the node is a cluster member).
    pub replication: String,
}

/// Whether a cluster member is alive, as the leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    /// The leader heard from it lately (or it is the leader).
    Up,
    /// The leader has not heard from it for longer than a failover waits.
    Down,
    /// No leader could be asked.
    Unknown,
}

impl Liveness {
    /// How the leader in `status` sees member `node`.
    pub fn of(status: &node::ClusterStatus, node: u64) -> Liveness {
        if status.leader == Some(node) {
            Liveness::Up
        } else if status.last_seen_ms.is_empty() {
            Liveness::Unknown
        } else if status.reachable(node) {
            Liveness::Up
        } else {
            Liveness::Down
        }
    }
}

impl std::fmt::Display for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Liveness::Up => "up",
            Liveness::Down => "DOWN",
            Liveness::Unknown => "unknown",
        })
    }
}

/// A cluster member as `GET /v1/status` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberSummary {
    /// Member id.
    pub id: u64,
    /// Member name.
    pub name: String,
    /// Whether it holds data (`false`: a witness).
    pub data: bool,
    /// Its control-plane endpoint.
    pub endpoint: String,
    /// Whether it is alive.
    pub liveness: Liveness,
}

/// The cluster a node belongs to, as `GET /v1/status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterSummary {
    /// Cluster instance id.
    pub cluster_id: Option<String>,
    /// This node's member id.
    pub me: u64,
    /// Name of the leader, if one is known.
    pub leader: Option<String>,
    /// Every member.
    pub members: Vec<MemberSummary>,
}

/// Answer of `GET /v1/status`: the node's summary, where it listens and the
/// cluster it belongs to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    /// Identity, volumes and space.
    #[serde(flatten)]
    pub node: node::NodeStatus,
    /// Where the node listens (`None` from a server that did not say).
    #[serde(default)]
    pub listen: Option<Listeners>,
    /// Its cluster (`None`: it is not a member).
    #[serde(default)]
    pub cluster: Option<ClusterSummary>,
}

/// Body of `POST /v1/volumes/{name}/replicas`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AddReplica {
    /// Member (name or id) to hold the new copy; none: the data node without
    /// a copy that holds the fewest copies.
    #[serde(default)]
    pub node: Option<String>,
}

/// Body of `POST /v1/volumes/{name}/move-primary`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MovePrimary {
    /// Member (name or id) whose in-sync copy becomes the primary.
    pub to: String,
}

/// Body of `POST /v1/cluster/upgrade-check`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpgradeCheckRequest {
    /// Member (name or id); none: the node asked.
    #[serde(default)]
    pub node: Option<String>,
}

/// Body of `POST /v1/cluster/maintenance/{enter,exit}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MaintenanceRequest {
    /// Member (name or id); none: the node asked.
    #[serde(default)]
    pub node: Option<String>,
    /// Enter even where volumes cannot move (they stay).
    #[serde(default)]
    pub force: bool,
    /// On exit, move primaries back to the node.
    #[serde(default)]
    pub rebalance: bool,
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
    /// Every member's release and log version, as each answered.
    #[serde(default)]
    pub versions: std::collections::BTreeMap<u64, MemberVersion>,
    /// Members that did not say their version, with why.
    #[serde(default)]
    pub versions_unknown: std::collections::BTreeMap<u64, String>,
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
