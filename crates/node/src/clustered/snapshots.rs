//! Snapshots of cluster volumes (docs/snapshots.md, "Cluster volumes"):
//! asked of any node, taken by the volume's primary at one point of its
//! write order on every in-sync copy, then recorded in the cluster state,
//! which lists them on every node. A snapshot the state does not record
//! was never acknowledged: the next primary role drops it.

use std::sync::Arc;

use async_trait::async_trait;
use cluster::{
    Command, SnapshotRecord, SnapshotRef, SnapshotRequest, TakenSnapshot, VolumeRecord, LOG_VERSION,
};
use replica::wire::SnapshotMark;
use replica::{CopySnapshots, Primary};
use store::{SnapshotInfo, StoreError};
use volume::VolumeError;

use super::{cluster_err, Clustered, RECORD_TIMEOUT, SERVED_TIMEOUT};
use crate::snapshots::{SnapshotDeleted, SnapshotView};
use crate::{Node, NodeError};

/// The log version that records snapshots ([`Command::RecordSnapshots`]).
const SNAPSHOT_VERSION: u32 = 3;
const _: () = assert!(LOG_VERSION >= SNAPSHOT_VERSION);

/// A copy's snapshots as the local store keeps them.
pub(super) struct StoreSnapshots {
    pub(super) store: Arc<store::Store>,
    pub(super) volume: Arc<store::LocalVolume>,
}

fn store_error(e: StoreError) -> VolumeError {
    VolumeError::Io(std::io::Error::other(e.to_string()))
}

#[async_trait]
impl CopySnapshots for StoreSnapshots {
    fn list(&self) -> Vec<SnapshotMark> {
        self.volume
            .snapshots()
            .into_iter()
            .filter(|s| !s.hidden)
            .map(|s| SnapshotMark {
                id: s.id,
                name: s.name,
                created: s.created,
                group: s.group,
                size_bytes: s.size_bytes,
            })
            .collect()
    }

    async fn take(&self, mark: &SnapshotMark) -> Result<(), VolumeError> {
        let info = SnapshotInfo {
            id: mark.id,
            name: mark.name.clone(),
            created: mark.created,
            size_bytes: 0,
            hidden: false,
            group: mark.group.clone(),
        };
        self.volume
            .take_snapshot_as(info)
            .await
            .map(drop)
            .map_err(store_error)
    }

    async fn delete(&self, id: uuid::Uuid) -> Result<(), VolumeError> {
        if !self.volume.snapshots().iter().any(|s| s.id == id) {
            return Ok(());
        }
        // A clone's copy here reads from it: hidden, freed with the clone.
        let name = self.volume.meta().name;
        if self.store.clones_of_snapshot(&name, id).is_empty() {
            self.volume.delete_snapshot(id).await.map_err(store_error)
        } else {
            self.volume.hide_snapshot(id).await.map_err(store_error)
        }
    }

    async fn read(&self, id: uuid::Uuid, lba: u64, blocks: u32) -> Result<Vec<u8>, VolumeError> {
        self.volume.read_snapshot(id, lba, blocks).await
    }

    async fn rollback(&self, id: uuid::Uuid) -> Result<(), VolumeError> {
        self.volume.rollback(id).await.map_err(store_error)
    }
}

/// Refuses while a member runs a version that cannot read the log's
/// snapshot entries. A member down now counts with the version it
/// reported last: a snapshot is most wanted while a copy is away.
async fn every_member_records_snapshots(c: &Clustered) -> Result<(), NodeError> {
    for (member, version) in c.cluster.log_versions_last_known().await {
        match version {
            Ok(v) if v >= SNAPSHOT_VERSION => {}
            Ok(v) => {
                return Err(NodeError::Refused(format!(
                    "node {member} runs a version that does not record snapshots (log version {v}, {SNAPSHOT_VERSION} needed): upgrade it first"
                )))
            }
            Err(e) => {
                return Err(NodeError::Refused(format!(
                    "node {member} cannot be asked which version it runs ({e}); snapshots and clones of cluster volumes need every member to record them"
                )))
            }
        }
    }
    Ok(())
}

/// The snapshot of cluster volume `v` the cluster records as `name`.
fn recorded_snapshot<'a>(v: &'a VolumeRecord, name: &str) -> Result<&'a SnapshotRecord, NodeError> {
    v.snapshots.iter().find(|s| s.name == name).ok_or_else(|| {
        NodeError::Store(StoreError::SnapshotNotFound {
            volume: v.name.clone(),
            name: name.to_string(),
        })
    })
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Node {
    /// The cluster's record of volume `name`, when it is a cluster volume.
    pub(crate) fn cluster_volume(&self, name: &str) -> Option<VolumeRecord> {
        self.clustered()?
            .cluster()
            .state()
            .volumes
            .get(name)
            .cloned()
    }

    /// Takes snapshot `name` of cluster volumes, through their primary
    /// (one node must lead them all for a consistency group).
    pub(crate) async fn create_cluster_snapshots(
        &self,
        volumes: &[String],
        name: &str,
        group: Option<&str>,
    ) -> Result<Vec<SnapshotView>, NodeError> {
        let c = self.member()?;
        store::validate_snapshot_name(name)?;
        let state = c.cluster.state();
        let mut names: Vec<String> = volumes.to_vec();
        names.sort();
        names.dedup();
        let mut primary = None;
        for n in &names {
            let v = state
                .volumes
                .get(n)
                .ok_or_else(|| NodeError::NotFound(n.clone()))?;
            if v.snapshots.iter().any(|s| s.name == name) {
                return Err(NodeError::Store(StoreError::SnapshotExists {
                    volume: n.clone(),
                    name: name.to_string(),
                }));
            }
            match primary {
                None => primary = Some((v.primary, n.clone())),
                Some((p, ref first)) if p != v.primary => {
                    return Err(NodeError::Refused(format!(
                        "a consistency group of cluster volumes needs one primary for all: node {p} leads {first}, node {} leads {n} (tandem volume move-primary {n} --to {p})",
                        v.primary
                    )));
                }
                Some(_) => {}
            }
        }
        let Some((primary, _)) = primary else {
            return Err(NodeError::Invalid("name at least one volume".into()));
        };
        every_member_records_snapshots(&c).await?;
        let req = SnapshotRequest {
            volumes: names,
            name: name.to_string(),
            group: group
                .map(str::to_string)
                .or_else(|| (volumes.len() > 1).then(|| name.to_string())),
        };
        let taken = c
            .cluster
            .take_snapshots_on(primary, req.clone())
            .await
            .map_err(cluster_err)?;
        for (v, s) in req.volumes.iter().zip(&taken) {
            let mut e = crate::events::Event::new(crate::events::EventKind::SnapshotCreate)
                .volume(v)
                .with("snapshot", s.name.as_str());
            if let Some(g) = &s.group {
                e = e.with("group", g.as_str());
            }
            self.events.record(e);
        }
        Ok(req
            .volumes
            .iter()
            .zip(taken)
            .map(|(v, s)| self.cluster_view(v, &s, None))
            .collect())
    }

    /// On the primary: takes the snapshots, then records them; a snapshot
    /// the state refuses is deleted again.
    pub(crate) async fn take_cluster_snapshots(
        &self,
        req: SnapshotRequest,
    ) -> Result<Vec<SnapshotRecord>, NodeError> {
        let c = self.member()?;
        let state = c.cluster.state();
        let me = c.cluster.id();
        let refused = |why: String| NodeError::Refused(why);
        let mut roles: Vec<(Arc<Primary>, SnapshotMark, u64, String)> = Vec::new();
        let created = now_secs();
        for name in &req.volumes {
            let v = state
                .volumes
                .get(name)
                .ok_or_else(|| NodeError::NotFound(name.clone()))?;
            if v.primary != me {
                return Err(refused(format!(
                    "volume {name}: node {me} is not its primary (node {} is)",
                    v.primary
                )));
            }
            let role = self.primary_role(v).await.ok_or_else(|| {
                refused(format!(
                    "volume {name}: node {me} is still taking up its primary role; try again"
                ))
            })?;
            let mark = SnapshotMark {
                id: uuid::Uuid::new_v4(),
                name: req.name.clone(),
                created,
                group: req.group.clone(),
                size_bytes: v.size_bytes,
            };
            roles.push((role, mark, v.epoch, name.clone()));
        }
        let parts: Vec<(&Primary, SnapshotMark)> = roles
            .iter()
            .map(|(p, m, _, _)| (p.as_ref(), m.clone()))
            .collect();
        Primary::take_snapshots(&parts)
            .await
            .map_err(|e| NodeError::Cluster(format!("snapshot {}: not taken: {e}", req.name)))?;
        let records: Vec<SnapshotRecord> = roles
            .iter()
            .map(|(p, m, _, _)| SnapshotRecord {
                id: m.id,
                name: m.name.clone(),
                created: m.created,
                // As the primary's copy took it (a resize may follow at once).
                size_bytes: p.snapshot(m.id).map_or(p.volume_bytes(), |s| s.size_bytes),
                group: m.group.clone(),
            })
            .collect();
        let cmd = Command::RecordSnapshots {
            taken: roles
                .iter()
                .zip(&records)
                .map(|((_, _, epoch, volume), s)| TakenSnapshot {
                    volume: volume.clone(),
                    epoch: *epoch,
                    snapshot: s.clone(),
                })
                .collect(),
        };
        match tokio::time::timeout(RECORD_TIMEOUT, c.cluster.propose(cmd)).await {
            Ok(Ok(())) => {}
            Ok(Err(cluster::ClusterError::Refused(why))) => {
                // Never recorded: deleted again from every copy.
                for (p, m, _, _) in &roles {
                    if let Err(e) = p.delete_snapshot(m.id).await {
                        tracing::warn!(snapshot = %m.name, "cannot delete a snapshot the cluster refused: {e}");
                    }
                }
                return Err(NodeError::Refused(format!(
                    "snapshot {}: the cluster refused its record: {why}",
                    req.name
                )));
            }
            Ok(Err(e)) => {
                return Err(NodeError::Cluster(format!(
                    "snapshot {} was taken but its record may not have committed ({e}): if `tandem snapshot list` does not show it, it is dropped and its name free again once the volume's primary changes",
                    req.name
                )))
            }
            Err(_) => {
                return Err(NodeError::Cluster(format!(
                    "snapshot {} was taken but the control plane did not commit its record in time: if `tandem snapshot list` does not show it, it is dropped and its name free again once the volume's primary changes",
                    req.name
                )))
            }
        }
        for (_, m, _, volume) in &roles {
            tracing::info!(volume = %volume, snapshot = %m.name, id = %m.id, "snapshot of a cluster volume taken and recorded");
        }
        Ok(records)
    }

    /// This node's primary role of `v` at its current epoch, if it serves.
    async fn primary_role(&self, v: &VolumeRecord) -> Option<Arc<Primary>> {
        let vols = self.exported.lock().await;
        vols.by_id(v.id)
            .and_then(|e| e.cluster.as_ref())
            .and_then(|p| p.volume.primary())
            .filter(|p| p.epoch() == v.epoch)
    }

    /// Deletes a snapshot of a cluster volume, through its primary.
    pub(crate) async fn delete_cluster_snapshot(
        &self,
        v: &VolumeRecord,
        name: &str,
    ) -> Result<SnapshotDeleted, NodeError> {
        let c = self.member()?;
        let s = recorded_snapshot(v, name)?;
        c.cluster
            .delete_snapshot_on(
                v.primary,
                SnapshotRef {
                    volume: v.name.clone(),
                    id: s.id,
                },
            )
            .await
            .map_err(cluster_err)?;
        crate::event_watch::snapshot_deleted(&self.events, &v.name, name);
        Ok(SnapshotDeleted {
            kept_for_clones: Vec::new(),
        })
    }

    /// On the primary: forgets the snapshot in the cluster state, then
    /// deletes it from the copies (those away drop it when they connect,
    /// and a role that starts drops what the state does not list).
    pub(crate) async fn forget_cluster_snapshot(&self, req: SnapshotRef) -> Result<(), NodeError> {
        let c = self.member()?;
        let state = c.cluster.state();
        let v = state
            .volumes
            .get(&req.volume)
            .ok_or_else(|| NodeError::NotFound(req.volume.clone()))?;
        let role = self.primary_role(v).await;
        let cmd = Command::ForgetSnapshot {
            volume: req.volume.clone(),
            id: req.id,
        };
        match tokio::time::timeout(RECORD_TIMEOUT, c.cluster.propose(cmd)).await {
            Ok(r) => r.map_err(cluster_err)?,
            Err(_) => {
                return Err(NodeError::Cluster(
                    "the control plane did not commit the deletion in time".into(),
                ))
            }
        }
        match role {
            Some(p) => {
                if let Err(e) = p.delete_snapshot(req.id).await {
                    tracing::warn!(volume = %req.volume, "the snapshot's files stay until the volume's primary changes: {e}");
                }
            }
            None => {
                tracing::info!(volume = %req.volume, "snapshot forgotten; its files go when the primary role starts")
            }
        }
        tracing::info!(volume = %req.volume, id = %req.id, "snapshot of a cluster volume deleted");
        Ok(())
    }

    /// The snapshots of cluster volume `v` as the cluster records them,
    /// with the space they take in this node's copy, where it has one.
    pub(crate) async fn cluster_snapshots(&self, v: &VolumeRecord) -> Vec<SnapshotView> {
        let space = match self.store.get(&v.name) {
            Some(m) if m.id == v.id => self.store.snapshot_space(&v.name).await.ok(),
            _ => None,
        };
        v.snapshots
            .iter()
            .map(|s| {
                let sp = space
                    .as_ref()
                    .and_then(|all| all.iter().find(|(i, _)| i.id == s.id).map(|(_, sp)| *sp));
                self.cluster_view(&v.name, s, sp)
            })
            .collect()
    }

    fn cluster_view(
        &self,
        volume: &str,
        s: &SnapshotRecord,
        space: Option<store::SnapshotSpace>,
    ) -> SnapshotView {
        let space = space.unwrap_or_default();
        SnapshotView {
            volume: volume.to_string(),
            name: s.name.clone(),
            id: s.id.to_string(),
            created: s.created,
            size_bytes: s.size_bytes,
            kept_bytes: space.kept_bytes,
            exclusive_bytes: space.exclusive_bytes,
            hidden: false,
            group: s.group.clone(),
            clones: Vec::new(),
        }
    }

    /// Makes cluster volume `new` a clone of a snapshot of cluster volume
    /// `source` (one taken now, named `clone-NEW`, without `snapshot`):
    /// each node holding a copy of the source makes the clone's copy from
    /// its own copy of the snapshot.
    pub(crate) async fn clone_cluster_volume(
        &self,
        source: &VolumeRecord,
        snapshot: Option<&str>,
        new: &str,
    ) -> Result<(), NodeError> {
        let c = self.member()?;
        store::validate_name(new)?;
        if c.cluster.state().volumes.contains_key(new) || self.store.get(new).is_some() {
            return Err(NodeError::Store(StoreError::Exists(new.to_string())));
        }
        every_member_records_snapshots(&c).await?;
        let snapshot_id = match snapshot {
            Some(name) => recorded_snapshot(source, name)?.id,
            None => {
                let name = format!("clone-{new}");
                let taken = self
                    .create_cluster_snapshots(std::slice::from_ref(&source.name), &name, None)
                    .await?;
                let id = taken.first().map(|t| t.id.clone()).unwrap_or_default();
                id.parse()
                    .map_err(|_| NodeError::Cluster(format!("snapshot {name}: no id")))?
            }
        };
        let id = uuid::Uuid::new_v4();
        let proposed = c
            .cluster
            .propose(Command::CloneVolume {
                id,
                name: new.to_string(),
                source: source.name.clone(),
                snapshot: snapshot_id,
            })
            .await;
        if let Err(e) = proposed {
            if c.cluster.state().volumes.get(new).map(|v| v.id) != Some(id) {
                return Err(cluster_err(e));
            }
        }
        let state = c.cluster.state();
        self.reconcile(&state).await;
        if let Err(why) = self.wait_served(&c, new, 1, SERVED_TIMEOUT).await {
            tracing::warn!(volume = new, "cloned, but not served yet: {why}");
        }
        tracing::info!(source = %source.name, clone = new, "cluster volume cloned");
        Ok(())
    }

    /// Rolls cluster volume `v` back to its snapshot `snapshot`, through
    /// its primary, on every copy. Refused while initiators are logged in
    /// to it through any node (or a node cannot be asked), unless `force`,
    /// which has every node log them out first.
    pub(crate) async fn rollback_cluster_volume(
        &self,
        v: &VolumeRecord,
        snapshot: &str,
        force: bool,
    ) -> Result<(), NodeError> {
        let c = self.member()?;
        let s = recorded_snapshot(v, snapshot)?;
        let census = self.census(&c).await;
        let sessions = census.of(v.id);
        if !force {
            if !sessions.is_empty() {
                return Err(NodeError::Busy {
                    name: v.name.clone(),
                    sessions,
                    what: "roll back",
                });
            }
            if let Some(u) = census.unasked.first() {
                return Err(NodeError::Refused(format!(
                    "volume {}: node {} could not be asked whether initiators are logged in ({}); --force rolls back all the same",
                    v.name, u.node, u.reason
                )));
            }
        } else {
            let state = c.cluster.state();
            for n in state.nodes.values().filter(|n| n.holds_data()) {
                match c.cluster.log_out_on(n.id, v.id).await {
                    Ok(0) => {}
                    Ok(k) => {
                        tracing::warn!(volume = %v.name, node = %n.name, sessions = k, "logged out for a forced rollback")
                    }
                    Err(e) => {
                        tracing::warn!(volume = %v.name, node = %n.name, "cannot log initiators out there: {e}")
                    }
                }
            }
        }
        c.cluster
            .rollback_on(
                v.primary,
                SnapshotRef {
                    volume: v.name.clone(),
                    id: s.id,
                },
            )
            .await
            .map_err(cluster_err)?;
        tracing::info!(volume = %v.name, snapshot, "cluster volume rolled back");
        Ok(())
    }

    /// On the primary: rolls the volume back on every copy.
    pub(crate) async fn rollback_as_primary(&self, req: SnapshotRef) -> Result<(), NodeError> {
        let c = self.member()?;
        let state = c.cluster.state();
        let v = state
            .volumes
            .get(&req.volume)
            .ok_or_else(|| NodeError::NotFound(req.volume.clone()))?;
        let role = self.primary_role(v).await.ok_or_else(|| {
            NodeError::Refused(format!(
                "volume {}: this node does not serve it as its primary now; try again",
                req.volume
            ))
        })?;
        role.rollback(req.id, ROLLBACK_DRAIN)
            .await
            .map_err(|e| NodeError::Cluster(format!("volume {}: rollback: {e}", req.volume)))
    }
}

/// Time the commands in flight get to finish before a rollback.
const ROLLBACK_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);
