//! A planned switchover asked of a volume's primary over the member
//! endpoint: whoever runs `volume move-primary` (any data node) asks the
//! node that is the primary, because only that node can stop taking new
//! commands and wait for those in flight before the change of primary is
//! committed. The node that serves a volume registers what answers
//! ([`Handover`]), as it does for its sessions.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::http::Answer;
use crate::{Cluster, ClusterError, NodeId, SnapshotRecord};

/// Body of `/cluster/hand-over`: the volume and the node to hand it to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandOverRequest {
    /// The volume's name.
    pub volume: String,
    /// The node whose in-sync copy becomes the primary.
    pub to: NodeId,
}

/// What the old primary did, as it reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandedOver {
    /// The epoch the new primary was given.
    pub epoch: u64,
    /// Whether the old primary's copy stayed in sync (a planned switchover
    /// every member knows); `false` where the change was made as a
    /// failover, because some member cannot read a planned one.
    pub kept_in_sync: bool,
    /// Microseconds from the moment the old primary stopped taking new
    /// commands until those in flight had finished.
    pub drain_us: u64,
    /// Microseconds from then until the change was committed.
    pub commit_us: u64,
}

/// Body of `/cluster/snapshot`: snapshots to take of volumes the member
/// asked leads, at one point of their write orders.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotRequest {
    /// The volumes (one, or a consistency group).
    pub volumes: Vec<String>,
    /// The snapshot's name on each.
    pub name: String,
    /// The consistency group's name.
    pub group: Option<String>,
}

/// Body of `/cluster/snapshot-delete` and `/cluster/rollback`: one
/// snapshot of a volume.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotRef {
    /// The volume.
    pub volume: String,
    /// The snapshot's id.
    pub id: uuid::Uuid,
}

/// Longest a member waits for the primary it asked to roll a volume back
/// (it rewrites its copy, then each copy in sync, which takes as long as
/// the writes made since the snapshot are large) or to take snapshots (the
/// store's sync of each copy): not the seconds a quick call gets, after
/// which it was reported failed while it went on.
pub const REWRITE_WAIT: Duration = Duration::from_secs(3600);

/// What a member answers when asked to do what only a volume's primary
/// can (hand it over, take or delete its snapshots): the node that serves
/// the volumes on it.
#[async_trait]
pub trait Handover: Send + Sync {
    /// Hands `volume`, which this node leads, to the in-sync copy on `to`;
    /// `Err` says why not, as users read it.
    async fn hand_over(&self, volume: &str, to: NodeId) -> Result<HandedOver, String>;

    /// Takes and records snapshots of volumes this node leads.
    async fn take_snapshots(&self, req: SnapshotRequest) -> Result<Vec<SnapshotRecord>, String>;

    /// Forgets a snapshot of a volume this node leads and deletes it from
    /// the copies.
    async fn delete_snapshot(&self, req: SnapshotRef) -> Result<(), String>;

    /// Rolls a volume this node leads back to one of its snapshots, on
    /// every copy.
    async fn rollback(&self, req: SnapshotRef) -> Result<(), String>;
}

impl Cluster {
    /// Makes this member answer requests to hand over a volume with `h`.
    pub fn serve_handover(&self, h: Arc<dyn Handover>) {
        *self.inner.handover.lock().unwrap() = Some(h);
    }

    /// Asks member `node`, the primary of `volume`, to hand it to `to`
    /// (this node's own handler, when `node` is this node).
    pub async fn hand_over_on(
        &self,
        node: NodeId,
        volume: &str,
        to: NodeId,
    ) -> Result<HandedOver, ClusterError> {
        let req = HandOverRequest {
            volume: volume.to_string(),
            to,
        };
        self.ask_primary(node, "/cluster/hand-over", req, false, async |i, r| {
            i.volume_handler()?.hand_over(&r.volume, r.to).await
        })
        .await
    }

    /// Asks member `node`, the primary of the volumes, to take snapshot
    /// `req` of them (this node's own handler, when `node` is this node).
    pub async fn take_snapshots_on(
        &self,
        node: NodeId,
        req: SnapshotRequest,
    ) -> Result<Vec<SnapshotRecord>, ClusterError> {
        self.ask_primary(node, "/cluster/snapshot", req, true, async |i, r| {
            i.local_take_snapshots(r).await
        })
        .await
    }

    /// Asks member `node`, the primary of the volume, to delete a snapshot.
    pub async fn delete_snapshot_on(
        &self,
        node: NodeId,
        req: SnapshotRef,
    ) -> Result<(), ClusterError> {
        self.ask_primary(
            node,
            "/cluster/snapshot-delete",
            req,
            false,
            async |i, r| i.local_delete_snapshot(r).await,
        )
        .await
    }

    /// Asks member `node`, the primary of the volume, to roll it back.
    pub async fn rollback_on(&self, node: NodeId, req: SnapshotRef) -> Result<(), ClusterError> {
        self.ask_primary(node, "/cluster/rollback", req, true, async |i, r| {
            i.local_rollback(r).await
        })
        .await
    }

    /// Asks member `node`, a volume's primary, at `path` with `req`: this
    /// node's own handler (`local`) when `node` is this node. `rewrites`:
    /// the request may rewrite a whole volume, and is waited for as long as
    /// that takes.
    async fn ask_primary<R: Serialize, T: serde::de::DeserializeOwned>(
        &self,
        node: NodeId,
        path: &str,
        req: R,
        rewrites: bool,
        local: impl AsyncFnOnce(&crate::member::Inner, R) -> Answer<T>,
    ) -> Result<T, ClusterError> {
        if node == self.id() {
            return local(&self.inner, req).await.map_err(ClusterError::Refused);
        }
        let addr = self
            .inner
            .addr_of(node)
            .ok_or_else(|| ClusterError::Remote(format!("node {node} is not a member")))?;
        let caller = match rewrites {
            true => &self.inner.rewrites,
            false => &self.inner.forward,
        };
        caller
            .post::<_, Answer<T>>(&addr, path, &req)
            .await?
            .map_err(ClusterError::Refused)
    }
}

impl crate::member::Inner {
    /// Rolls a volume back through this member's handler.
    pub(crate) async fn local_rollback(&self, req: SnapshotRef) -> Answer<()> {
        self.volume_handler()?.rollback(req).await
    }

    fn volume_handler(&self) -> Result<Arc<dyn Handover>, String> {
        self.handover
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| format!("node {} serves no volumes", self.me.id))
    }

    /// Takes snapshots through this member's handler.
    pub(crate) async fn local_take_snapshots(
        &self,
        req: SnapshotRequest,
    ) -> Answer<Vec<SnapshotRecord>> {
        self.volume_handler()?.take_snapshots(req).await
    }

    /// Deletes a snapshot through this member's handler.
    pub(crate) async fn local_delete_snapshot(&self, req: SnapshotRef) -> Answer<()> {
        self.volume_handler()?.delete_snapshot(req).await
    }

    /// Hands `volume` over through this member's handler.
    pub(crate) async fn local_hand_over(&self, volume: &str, to: NodeId) -> Answer<HandedOver> {
        self.volume_handler()?.hand_over(volume, to).await
    }
}
