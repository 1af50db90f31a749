//! Operations on cluster volumes: each one proposed to the control plane,
//! then matched by this node.

use std::sync::Arc;
use std::time::Duration;

use cluster::{ClusterState, Command, NodeId};
use replica::wire::Op;
use replica::Route;

use super::{cluster_err, Clustered, SERVED_TIMEOUT};
use crate::{Node, NodeError};

/// The epoch the cluster state gives a volume it creates; its first
/// primary role runs at the next one.
const CREATED_EPOCH: u64 = 1;

/// The id of the member called `name` (or with id `name`).
pub(super) fn member_id(state: &ClusterState, name: &str) -> Result<NodeId, NodeError> {
    state
        .find_node(name)
        .map(|n| n.id)
        .ok_or_else(|| NodeError::Invalid(format!("no cluster member named {name}")))
}

impl Node {
    /// Proposes `cmd` and, once it is applied, makes this node match.
    pub(super) async fn change(&self, c: &Arc<Clustered>, cmd: Command) -> Result<(), NodeError> {
        c.cluster.propose(cmd).await.map_err(cluster_err)?;
        let state = c.cluster.state();
        self.reconcile(&state).await;
        Ok(())
    }

    /// Grows cluster volume `name` on every node.
    pub(crate) async fn resize_clustered(
        &self,
        c: &Arc<Clustered>,
        name: &str,
        size_bytes: u64,
    ) -> Result<(), NodeError> {
        self.change(
            c,
            Command::ResizeVolume {
                name: name.to_string(),
                size_bytes,
            },
        )
        .await?;
        tracing::info!(volume = name, to = size_bytes, "cluster volume resized");
        Ok(())
    }

    /// Creates a volume through the control plane with `replicas` copies.
    pub(crate) async fn create_clustered(
        &self,
        c: &Arc<Clustered>,
        name: &str,
        size_bytes: u64,
        block_size: u32,
        replicas: usize,
    ) -> Result<(), NodeError> {
        // Checked here, before the proposal, as the store checks a local create.
        store::validate_name(name)?;
        store::validate_geometry(size_bytes, block_size)?;
        let id = uuid::Uuid::new_v4();
        let proposed = c
            .cluster
            .propose(Command::CreateVolume {
                id,
                name: name.to_string(),
                size_bytes,
                block_size,
                replicas,
            })
            .await;
        if let Err(e) = proposed {
            // A proposal retried after its answer got lost is refused
            // because the first attempt created the volume: ours, by its id
            // (once this node has applied that entry).
            let found = || c.cluster.state().volumes.get(name).map(|v| v.id);
            let mut waited = 0;
            while found().is_none() && waited < 20 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                waited += 1;
            }
            if found() != Some(id) {
                return Err(cluster_err(e));
            }
        }
        let state = c.cluster.state();
        self.reconcile(&state).await;
        // The record names a primary and every copy in sync from the
        // start, but the primary serves only once it has taken up the role
        // at an epoch of its own: a caller that writes as soon as this
        // returns (or as soon as the status shows the record) must find it
        // served.
        if let Err(why) = self
            .wait_served(c, name, CREATED_EPOCH, SERVED_TIMEOUT)
            .await
        {
            tracing::warn!(volume = name, "created, but not served yet: {why}");
        }
        Ok(())
    }

    /// Waits up to `timeout` until cluster volume `name` is served: its
    /// primary has taken up the role (the applied record holds its
    /// promotion, past epoch `after`: the one a volume is created at, or
    /// a change of primary gives) and serves it, as this node's role
    /// (primary here) or a forwarded ping (primary elsewhere) shows. `Err`
    /// says what was still missing.
    pub(super) async fn wait_served(
        &self,
        c: &Arc<Clustered>,
        name: &str,
        after: u64,
        timeout: Duration,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let missing = match self.served(c, name, after).await {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(missing);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether cluster volume `name` is served now; `Err` says why not.
    async fn served(&self, c: &Arc<Clustered>, name: &str, after: u64) -> Result<(), String> {
        let state = c.cluster.state();
        let v = state
            .volumes
            .get(name)
            .ok_or("the volume is no longer in the cluster state")?;
        if v.epoch <= after {
            return Err(format!(
                "node {} has not taken up the primary role",
                v.primary
            ));
        }
        let route = {
            let vols = self.exported.lock().await;
            vols.by_id(v.id)
                .and_then(|e| e.cluster.as_ref())
                .map(|p| p.volume.route())
        };
        match route {
            Some(Route::Primary(_)) if v.primary == c.cluster.id() => Ok(()),
            Some(Route::Forward(f)) if v.primary != c.cluster.id() => f
                .call(Op::Ping)
                .await
                .map(drop)
                .map_err(|e| format!("node {} does not serve it yet ({e:?})", v.primary)),
            _ => Err("this node has not taken up its role yet".to_string()),
        }
    }

    /// Adds a copy of cluster volume `name` on `node` (a member's name or
    /// id), or on the data node without one that holds the fewest copies.
    /// The new copy is filled by a full sync while I/O goes on and becomes
    /// in sync when it has everything. Returns the node it was placed on.
    pub async fn add_replica(&self, name: &str, node: Option<&str>) -> Result<NodeId, NodeError> {
        let c = self.member()?;
        let state = c.cluster.state();
        if !state.volumes.contains_key(name) {
            return Err(NodeError::NotFound(name.to_string()));
        }
        let target = match node {
            Some(n) => member_id(&state, n)?,
            None => state
                .place_another(name)
                .map_err(|e| NodeError::Refused(e.to_string()))?,
        };
        c.cluster
            .propose(Command::AddReplica {
                volume: name.to_string(),
                node: target,
            })
            .await
            .map_err(cluster_err)?;
        Ok(target)
    }

    /// Drops the copy of cluster volume `name` on `node` (name or id); not
    /// the primary's (the cluster refuses that: move the primary first).
    /// A removal that leaves a single copy loses the volume's redundancy
    /// and is refused unless `force`.
    pub async fn remove_replica(
        &self,
        name: &str,
        node: &str,
        force: bool,
    ) -> Result<(), NodeError> {
        let c = self.member()?;
        let state = c.cluster.state();
        let v = state
            .volumes
            .get(name)
            .ok_or_else(|| NodeError::NotFound(name.to_string()))?;
        let target = member_id(&state, node)?;
        let left: Vec<NodeId> = v
            .replicas
            .keys()
            .copied()
            .filter(|&n| n != target)
            .collect();
        if !force && v.primary != target && v.replicas.contains_key(&target) && left.len() == 1 {
            return Err(NodeError::Refused(format!(
                "volume {name}: removing the copy on node {target} leaves a single copy (on node {}): \
                 the volume loses its redundancy, and a failure of that node makes it unavailable; \
                 remove it with force to do so anyway",
                left[0]
            )));
        }
        c.cluster
            .propose(Command::RemoveReplica {
                volume: name.to_string(),
                node: target,
            })
            .await
            .map_err(cluster_err)
    }

    /// Deletes a cluster volume everywhere.
    pub(crate) async fn delete_clustered(
        &self,
        c: &Arc<Clustered>,
        name: &str,
    ) -> Result<(), NodeError> {
        self.change(
            c,
            Command::DeleteVolume {
                name: name.to_string(),
            },
        )
        .await
    }
}
