//! A node as a member of a cluster: it follows the replicated cluster state
//! and makes this machine match it. Every data node exports every volume
//! over iSCSI under the cluster-wide identity (NAA and serial from the
//! cluster id and volume id, the same on every node) and access rules. Where the state
//! places a copy here, the node keeps it (created with the cluster-wide
//! volume id) and serves it to the primary over the replication endpoint.
//! The export's access role follows the state: the primary mirrors writes to
//! its peers (ALUA active/optimized), every other node forwards I/O to the
//! primary (active/non-optimized), whether it holds a copy or not.

mod access;
mod control;
mod floating;
mod handover;
mod heard;
mod maintenance;
mod membership;
mod present;
mod removal;
mod sessions;
mod snapshots;
mod status;
mod unit;
mod volumes;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cluster::Cluster;
use replica::{ClusterKey, ReplicaServer};

pub use handover::PrimaryMoved;
pub use maintenance::{Maintenance, UpgradeCheck};
pub use removal::Removed;
pub use sessions::Unasked;
pub use status::{AckWindow, PeerState, PeerStatus};

use crate::{Node, NodeError};
use control::ControlPlaneLink;

/// How a node takes part in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Name of this node in the cluster.
    pub name: String,
    /// Where the control-plane endpoint listens.
    pub cluster_listen: SocketAddr,
    /// Where the replication endpoint listens.
    pub repl_listen: SocketAddr,
    /// Host name or address other nodes and initiators reach this node at.
    pub advertise: String,
    /// iSCSI port of this node.
    pub iscsi_port: u16,
}

impl ClusterConfig {
    /// The control-plane endpoint other nodes reach this one at
    /// (`advertise:port`), the one `tandem cluster join` takes.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.advertise, self.cluster_listen.port())
    }
}

/// Where in a volume's directory the files of its cluster copy start
/// (`replica.copy.json`, `replica.activity`, ...).
pub(crate) const COPY_BASE: &str = "replica";

/// Time a replica or primary gets to answer a replication request.
const REPL_TIMEOUT: Duration = Duration::from_secs(2);

/// Time the control plane gets to commit that a replica misses writes
/// before the writes waiting for that record fail.
const RECORD_TIMEOUT: Duration = Duration::from_secs(2);

/// Time a node that forwards gives the primary to answer a command: more
/// than the primary may take for a write (a peer's answer, then the record
/// of its loss), so a command is not answered "transition" here while the
/// primary still applies it, and sent again to the same primary (a COMPARE
/// AND WRITE would then miscompare against itself). A change of primary
/// ends the wait at once.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Time a new primary role waits, before it serves, for its lease and
/// state and for the connections to its peers (see `present::ready_to_serve`).
const ROLE_SETTLE: Duration = Duration::from_millis(500);

/// Time `volume create` waits for the new volume's primary to serve it.
const SERVED_TIMEOUT: Duration = Duration::from_secs(5);

/// Time a node waits for the data key before it refuses to record access
/// rules with secrets.
const DATA_KEY_TIMEOUT: Duration = Duration::from_secs(5);

/// The cluster side of a node.
pub struct Clustered {
    cluster: Cluster,
    server: Arc<ReplicaServer>,
    key: ClusterKey,
    control: Arc<ControlPlaneLink>,
    /// Per volume, the epoch this process took the primary role up at (by
    /// promoting itself), not yet used by a role; `None` while the
    /// promotion is being proposed.
    taken_up: std::sync::Mutex<HashMap<String, Option<u64>>>,
    /// Wakes the reconcile loop (a role was taken up).
    wake: tokio::sync::Notify,
    /// Volumes whose access rules this node is sealing right now.
    sealing: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The floating service address, where this node holds it.
    floating: floating::FloatingHolder,
    /// This node's iSCSI port, which the portal also takes on the floating
    /// address.
    iscsi_port: u16,
}

fn cluster_err(e: cluster::ClusterError) -> NodeError {
    match e {
        cluster::ClusterError::Refused(why) => NodeError::Refused(why),
        e @ cluster::ClusterError::BadToken => NodeError::Invalid(e.to_string()),
        e => NodeError::Cluster(e.to_string()),
    }
}

impl Clustered {
    /// This node's member of the control plane.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }
}

impl Node {
    /// Whether this node is a cluster member.
    pub fn clustered(&self) -> Option<Arc<Clustered>> {
        self.cluster.get().cloned()
    }

    fn member(&self) -> Result<Arc<Clustered>, NodeError> {
        self.clustered()
            .ok_or_else(|| NodeError::Invalid("this node is not a cluster member".into()))
    }
}
