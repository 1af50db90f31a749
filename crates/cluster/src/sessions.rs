//! The iSCSI sessions of every data node, asked for over the member
//! endpoint. Which initiators are logged in is a node's own business until
//! someone must act on a volume as a whole (delete it, show who uses it):
//! then each data node is asked for its sessions at that moment.
//!
//! Why asked, not recorded in the Raft log: a session comes and goes with
//! a TCP connection, often many per host and reconnecting at every path
//! flap; a log entry per login would make every login wait for a quorum
//! (and fail without one, when initiators need to log in most), and the
//! records of a node that died would outlive its sessions, blocking every
//! delete until someone cleared them. Asking gives the count as it is,
//! and a node that cannot be asked is named as such rather than counted
//! as having none.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::http::Answer;
use crate::{Cluster, ClusterError, NodeId};

/// One iSCSI session logged in to a cluster volume through a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSession {
    /// Id of the volume (its record's `id`).
    pub volume: Uuid,
    /// The initiator's name (its IQN).
    pub initiator: String,
    /// The address the initiator connects from, `host:port`.
    pub address: String,
}

/// What a member answers when asked for its sessions: the node that serves
/// iSCSI on it. A member without one (a witness, a node still starting)
/// answers that it has no sessions to report, which callers take as "not
/// known", never as "none".
pub trait SessionSource: Send + Sync {
    /// Every session logged in to a cluster volume through this node;
    /// `None` when the node serves no iSCSI (any more).
    fn sessions(&self) -> Option<Vec<MemberSession>>;

    /// Ends every session logged in to cluster volume `volume` through
    /// this node (its initiators may log in again at once); how many.
    fn log_out(&self, volume: uuid::Uuid) -> usize {
        let _ = volume;
        0
    }
}

impl Cluster {
    /// Makes this member answer requests for its sessions from `source`.
    pub fn serve_sessions(&self, source: std::sync::Arc<dyn SessionSource>) {
        *self.inner.sessions.lock().unwrap() = Some(source);
    }

    /// The sessions logged in through member `node`, asked of it now (or
    /// of this node's source, when `node` is this node).
    pub async fn sessions_of(&self, node: NodeId) -> Result<Vec<MemberSession>, ClusterError> {
        if node == self.id() {
            return self.inner.local_sessions().map_err(ClusterError::Remote);
        }
        let addr = self
            .inner
            .addr_of(node)
            .ok_or_else(|| ClusterError::Remote(format!("node {node} is not a member")))?;
        self.inner
            .caller
            .post::<_, Answer<Vec<MemberSession>>>(&addr, "/cluster/sessions", &())
            .await?
            .map_err(ClusterError::Remote)
    }
}

impl Cluster {
    /// Has member `node` end the sessions logged in to `volume` through it
    /// (this node's source, when `node` is this node); how many it ended.
    pub async fn log_out_on(
        &self,
        node: NodeId,
        volume: uuid::Uuid,
    ) -> Result<usize, ClusterError> {
        if node == self.id() {
            return self
                .inner
                .local_log_out(volume)
                .map_err(ClusterError::Remote);
        }
        let addr = self
            .inner
            .addr_of(node)
            .ok_or_else(|| ClusterError::Remote(format!("node {node} is not a member")))?;
        self.inner
            .caller
            .post::<_, Answer<usize>>(&addr, "/cluster/log-out", &volume)
            .await?
            .map_err(ClusterError::Remote)
    }
}

impl crate::member::Inner {
    /// Ends this member's sessions of `volume`, through its source.
    pub(crate) fn local_log_out(&self, volume: uuid::Uuid) -> Answer<usize> {
        let source = self.sessions.lock().unwrap().clone();
        source
            .map(|s| s.log_out(volume))
            .ok_or_else(|| format!("node {} serves no iSCSI sessions", self.me.id))
    }

    /// This member's sessions, from its source; `Err` when it has none.
    pub(crate) fn local_sessions(&self) -> Answer<Vec<MemberSession>> {
        let source = self.sessions.lock().unwrap().clone();
        source
            .and_then(|s| s.sessions())
            .ok_or_else(|| format!("node {} serves no iSCSI sessions", self.me.id))
    }
}
