//! A node as a member of a cluster: it follows the replicated cluster state
//! and makes this machine match it. Every data node exports every volume
//! over iSCSI under the cluster-wide identity (NAA and serial from the
//! cluster id and volume id, the same on every node) and access rules. Where the state
//! places a copy here, the node keeps it (created with the cluster-wide
//! volume id) and serves it to the primary over the replication endpoint.
//! The export's access role follows the state: the primary mirrors writes to
//! its peers (ALUA active/optimized), every other node forwards I/O to the
//! primary (active/non-optimized), whether it holds a copy or not.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use cluster::{
    Cluster, ClusterState, ClusterStatus, Command, NodeId, NodeInfo, ReplicaState, Role,
};
use replica::{
    ClusterKey, ClusterVolume, ControlError, Forwarder, LocalCopy, PeerSpec, PeerState, Primary,
    PrimaryConfig, ReplicaServer, Route,
};
use scsi::{AccessState, PortGroup};

use crate::identity::{iqn_for, lun_identity};
use crate::registry::{Presented, Registry};
use crate::{Node, NodeError};

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

/// Where in a volume's directory the files of its cluster copy start
/// (`replica.copy.json`, `replica.activity`, ...).
pub(crate) const COPY_BASE: &str = "replica";

/// Time a replica or primary gets to answer a replication request.
const REPL_TIMEOUT: Duration = Duration::from_secs(2);

/// Time the control plane gets to commit that a replica misses writes
/// before the writes waiting for that record fail.
const RECORD_TIMEOUT: Duration = Duration::from_secs(2);

/// Time a node waits for the data key before it refuses to record access
/// rules with secrets.
const DATA_KEY_TIMEOUT: Duration = Duration::from_secs(5);

/// The cluster side of a node.
pub struct Clustered {
    cluster: Cluster,
    server: Arc<ReplicaServer>,
    key: ClusterKey,
    control: Arc<Control>,
    /// Per volume, the epoch this process took the primary role up at (by
    /// promoting itself), not yet used by a role; `None` while the
    /// promotion is being proposed.
    taken_up: std::sync::Mutex<HashMap<String, Option<u64>>>,
    /// Wakes the reconcile loop (a role was taken up).
    wake: tokio::sync::Notify,
}

/// The access rules the cluster records for `v`, secrets opened with this
/// data node's key.
fn access_of(c: &Clustered, v: &cluster::VolumeRecord) -> Result<crate::AccessConfig, NodeError> {
    match &v.access {
        None => Ok(crate::AccessConfig::default()),
        Some(record) => {
            crate::AccessConfig::from_record(record, c.cluster.data_key().as_ref(), v.id).map_err(
                |e| {
                    NodeError::Cluster(format!(
                        "volume {}: the access rules in the cluster state: {e}",
                        v.name
                    ))
                },
            )
        }
    }
}

/// What a primary asks of the control plane, through this node's membership.
struct Control {
    cluster: Weak<Clustered>,
    /// Number of the last report made per (volume, replica node): reports
    /// are numbered so that one given up on cannot land after a later one.
    reports: std::sync::Mutex<HashMap<(String, u64), u64>>,
}

#[async_trait]
impl replica::Control for Control {
    fn may_acknowledge(&self, volume: &str, epoch: u64) -> bool {
        // The lease is granted only once this node has applied every change
        // the leader had committed when it answered, so the state read here
        // is at least that fresh: a node restarted with an old state, or one
        // deposed while it was frozen, finds out before it acknowledges.
        self.cluster.upgrade().is_some_and(|c| {
            c.cluster.lease_valid()
                && c.cluster
                    .state()
                    .volumes
                    .get(volume)
                    .is_some_and(|v| v.primary == c.cluster.id() && v.epoch == epoch)
        })
    }

    async fn replica_lost(&self, volume: &str, node: u64, epoch: u64) -> Result<(), ControlError> {
        // Writes wait for this record: without a quorum it gives up rather
        // than hold them until one returns.
        let record = self.set(volume, node, PeerState::OutOfSync, epoch);
        match tokio::time::timeout(RECORD_TIMEOUT, record).await {
            Ok(r) => r,
            Err(_) => Err(ControlError::NoQuorum {
                waited: RECORD_TIMEOUT,
            }),
        }
    }

    async fn replica_in_sync(
        &self,
        volume: &str,
        node: u64,
        epoch: u64,
    ) -> Result<(), ControlError> {
        self.set(volume, node, PeerState::InSync, epoch).await
    }

    async fn replica_syncing(&self, volume: &str, node: u64, epoch: u64) {
        let _ = self.set(volume, node, PeerState::Syncing, epoch).await;
    }
}

/// How the cluster state records a primary's view of a peer: a peer being
/// lost is recorded out of sync (that record is what it waits for).
fn recorded(state: PeerState) -> ReplicaState {
    match state {
        PeerState::InSync => ReplicaState::InSync,
        PeerState::Syncing => ReplicaState::Syncing,
        PeerState::OutOfSync | PeerState::Losing => ReplicaState::OutOfSync,
    }
}

impl Control {
    async fn set(
        &self,
        volume: &str,
        node: u64,
        state: PeerState,
        epoch: u64,
    ) -> Result<(), ControlError> {
        let c = self.cluster.upgrade().ok_or(ControlError::Stopping)?;
        // Numbered in the order the primary makes its reports, above any
        // report applied so far (by this node or an earlier primary).
        let seq = {
            let applied = c
                .cluster
                .state()
                .volumes
                .get(volume)
                .and_then(|v| v.reports.get(&node).copied())
                .unwrap_or(0);
            let mut reports = self.reports.lock().unwrap();
            let last = reports.entry((volume.to_string(), node)).or_insert(0);
            *last = (*last).max(applied) + 1;
            *last
        };
        c.cluster
            .propose(Command::SetReplicaState {
                volume: volume.to_string(),
                node,
                state: recorded(state),
                epoch,
                seq,
            })
            .await
            .map_err(|e| match e {
                cluster::ClusterError::Refused(why) => ControlError::Refused(why),
                e => ControlError::Unavailable(e.to_string()),
            })
    }
}

/// The id of the member called `name` (or with id `name`).
fn member_id(state: &ClusterState, name: &str) -> Result<NodeId, NodeError> {
    state
        .find_node(name)
        .map(|n| n.id)
        .ok_or_else(|| NodeError::Invalid(format!("no cluster member named {name}")))
}

/// This data node's data key, waiting a little for it (a node that just
/// joined or started fetches it from another data node).
async fn data_key(c: &Clustered) -> Result<cluster::DataKey, NodeError> {
    c.cluster
        .wait_data_key(DATA_KEY_TIMEOUT)
        .await
        .ok_or_else(|| {
            NodeError::Cluster(
                "this node has not received the cluster's data key yet; try again".into(),
            )
        })
}

/// Seals the CHAP secrets of `v` that the state holds in clear (recorded
/// by a node from before secrets were sealed): done by the volume's
/// primary, once it holds the data key; tried again at the next reconcile
/// if it fails.
async fn reseal(c: &Clustered, v: &cluster::VolumeRecord) {
    let Some(record) = v.access.as_deref() else {
        return;
    };
    if !crate::AccessConfig::record_has_clear_secret(record) || !c.cluster.lease_valid() {
        return;
    }
    let Some(key) = c.cluster.data_key() else {
        return;
    };
    let Ok(rules) = crate::AccessConfig::from_record(record, Some(&key), v.id) else {
        return;
    };
    let cmd = Command::ResealAccess {
        volume: v.name.clone(),
        replaces: cluster::access_digest(record),
        access: match rules.to_record(Some(&key), v.id) {
            Ok(sealed) => sealed,
            Err(_) => return,
        },
    };
    match tokio::time::timeout(RECORD_TIMEOUT, c.cluster.propose(cmd)).await {
        Ok(Ok(())) => tracing::info!(volume = %v.name, "CHAP secrets in the cluster state sealed"),
        Ok(Err(e)) => tracing::warn!(volume = %v.name, "sealing the CHAP secrets: {e}"),
        Err(_) => tracing::warn!(volume = %v.name, "sealing the CHAP secrets: no answer"),
    }
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
    /// Replication status of the volumes this node is primary of.
    pub async fn peer_status(&self) -> BTreeMap<String, Vec<replica::PeerStatus>> {
        let vols = self.exported.lock().await;
        vols.presented()
            .filter_map(|(e, p)| Some((e.name.clone(), p.volume.primary()?.peer_status())))
            .collect()
    }

    /// Per cluster volume presented here: when this node acknowledged
    /// writes as its primary.
    pub async fn acknowledged(&self) -> BTreeMap<String, Vec<replica::AckWindow>> {
        let vols = self.exported.lock().await;
        vols.presented()
            .map(|(e, p)| (e.name.clone(), p.volume.acknowledged()))
            .filter(|(_, w)| !w.is_empty())
            .collect()
    }

    /// Whether this node is a cluster member.
    pub fn clustered(&self) -> Option<Arc<Clustered>> {
        self.cluster.get().cloned()
    }

    fn me(cfg: &ClusterConfig) -> NodeInfo {
        NodeInfo {
            id: 0,
            name: cfg.name.clone(),
            role: Some(Role::Data),
            cluster_addr: format!("{}:{}", cfg.advertise, cfg.cluster_listen.port()),
            iscsi_addr: format!("{}:{}", cfg.advertise, cfg.iscsi_port),
            repl_addr: format!("{}:{}", cfg.advertise, cfg.repl_listen.port()),
        }
    }

    fn cluster_dir(&self) -> std::path::PathBuf {
        cluster::default_dir(self.store.data_dir())
    }

    /// Rejoins the cluster this node was a member of, if any (at start).
    pub async fn resume_cluster(self: &Arc<Self>, cfg: &ClusterConfig) -> Result<bool, NodeError> {
        let dir = self.cluster_dir();
        if !Cluster::exists(&dir) {
            return Ok(false);
        }
        let c = Cluster::open(&dir, cfg.cluster_listen)
            .await
            .map_err(cluster_err)?;
        self.enter(c, cfg).await?;
        Ok(true)
    }

    /// Creates a cluster with this node as first member; returns the join token.
    pub async fn cluster_init(self: &Arc<Self>, cfg: &ClusterConfig) -> Result<String, NodeError> {
        if self.cluster.get().is_some() {
            return Err(NodeError::Invalid(
                "this node is already a cluster member".into(),
            ));
        }
        let (c, token) = Cluster::init(&self.cluster_dir(), Node::me(cfg), cfg.cluster_listen)
            .await
            .map_err(cluster_err)?;
        self.enter(c, cfg).await?;
        Ok(token)
    }

    /// Joins the cluster of `token` through the member at `seed`.
    pub async fn cluster_join(
        self: &Arc<Self>,
        cfg: &ClusterConfig,
        seed: &str,
        token: &str,
    ) -> Result<(), NodeError> {
        if self.cluster.get().is_some() {
            return Err(NodeError::Invalid(
                "this node is already a cluster member".into(),
            ));
        }
        let c = Cluster::join(
            &self.cluster_dir(),
            Node::me(cfg),
            cfg.cluster_listen,
            seed,
            token,
        )
        .await
        .map_err(cluster_err)?;
        self.enter(c, cfg).await
    }

    /// The cluster as this node sees it. Access rules are left out (they
    /// may hold CHAP secrets; `volume show` gives them without).
    pub async fn cluster_status(&self) -> Result<ClusterStatus, NodeError> {
        let mut status = self.member()?.cluster.status().await;
        for v in status.state.volumes.values_mut() {
            v.access = None;
        }
        Ok(status)
    }

    /// Leaves the cluster: its copies are dropped and its primaries handed to
    /// in-sync copies; refused while it holds the only in-sync copy of a volume.
    pub async fn cluster_leave(&self) -> Result<(), NodeError> {
        let c = self.member()?;
        c.cluster.leave().await.map_err(cluster_err)?;
        // The cluster no longer sends this node its log: drop the copies
        // here (the cluster state already did) rather than keep serving them.
        let mut vols = self.exported.lock().await;
        let names: Vec<String> = vols.presented().map(|(e, _)| e.name.clone()).collect();
        for name in names {
            self.release(&c, &mut vols, &name);
        }
        Ok(())
    }

    async fn enter(self: &Arc<Self>, c: Cluster, cfg: &ClusterConfig) -> Result<(), NodeError> {
        let key = ClusterKey::new(c.secret().bytes().to_vec());
        let server = ReplicaServer::new(key.clone());
        let listener = tokio::net::TcpListener::bind(cfg.repl_listen)
            .await
            .map_err(|e| {
                NodeError::Cluster(format!(
                    "cannot listen for replication on {}: {e}",
                    cfg.repl_listen
                ))
            })?;
        tokio::spawn(server.clone().serve(listener));
        let clustered = Arc::new_cyclic(|weak| Clustered {
            cluster: c,
            server,
            key,
            control: Arc::new(Control {
                cluster: weak.clone(),
                reports: std::sync::Mutex::new(HashMap::new()),
            }),
            taken_up: std::sync::Mutex::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
        });
        if self.cluster.set(clustered.clone()).is_err() {
            return Err(NodeError::Invalid(
                "this node is already a cluster member".into(),
            ));
        }
        // The first reconcile happens before this returns, so a node that
        // opens its portal afterwards never presents a copy without a role.
        let mut watch = clustered.cluster.subscribe();
        let first = watch.borrow_and_update().clone();
        self.reconcile(&first).await;
        let node = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(n) = node.upgrade() else { return };
                let state = watch.borrow_and_update().clone();
                n.reconcile(&state).await;
                // Changes wake us at once; the tick retries what failed.
                let Some(c) = n.clustered() else { return };
                drop(n);
                let woken = async {
                    tokio::select! {
                        _ = watch.changed() => {}
                        _ = c.wake.notified() => {}
                    }
                };
                let _ = tokio::time::timeout(Duration::from_millis(500), woken).await;
            }
        });
        Ok(())
    }

    /// Makes this node match the cluster state: every data node presents
    /// every volume, with a copy where the state places one.
    pub(crate) async fn reconcile(&self, state: &ClusterState) {
        let Some(c) = self.clustered() else { return };
        let Some(cluster_id) = state.cluster_id else {
            return;
        };
        let me = c.cluster.id();
        let presents = state.nodes.get(&me).is_some_and(|n| n.holds_data());
        let mut vols = self.exported.lock().await;
        if presents {
            for v in state.volumes.values() {
                if let Err(e) = self.hold(&c, &mut vols, cluster_id, v, state).await {
                    tracing::warn!(volume = %v.name, "cannot take up the cluster's volume here yet: {e}");
                }
            }
        }
        let gone: Vec<String> = vols
            .presented()
            .filter(|(e, _)| !presents || state.volumes.get(&e.name).is_none_or(|v| v.id != e.id))
            .map(|(e, _)| e.name.clone())
            .collect();
        for name in gone {
            self.release(&c, &mut vols, &name);
        }
    }

    /// Stops presenting `name` and removes the local copy, if any.
    fn release(&self, c: &Clustered, vols: &mut Registry, name: &str) {
        let Some(e) = vols.remove(name) else {
            return;
        };
        self.targets.remove(&e.iqn);
        let Some(p) = e.cluster else {
            return;
        };
        p.volume.set_route(Route::Waiting);
        let Some(copy) = p.volume.copy() else {
            if let Err(e) = std::fs::remove_dir_all(&p.unit_dir) {
                tracing::warn!(volume = %name, "removing {}: {e}", p.unit_dir.display());
            }
            tracing::info!(volume = %name, "no longer presented here");
            return;
        };
        c.server.remove(name);
        let _ = copy.remove_files();
        if let Err(e) = self.store.delete(name) {
            tracing::warn!(volume = %name, "removing the local copy failed: {e}");
        } else {
            tracing::info!(volume = %name, "local copy removed (volume deleted or moved)");
        }
    }

    /// Where the logical unit of a volume without a copy here keeps its state.
    fn presented_dir(&self, id: uuid::Uuid) -> std::path::PathBuf {
        self.store.data_dir().join("presented").join(id.to_string())
    }

    /// Opens (creating it if needed) this node's copy of `v`; a local
    /// volume of that name is its copy (checked by the caller).
    fn open_copy(
        &self,
        v: &cluster::VolumeRecord,
    ) -> Result<(Arc<LocalCopy>, Arc<store::LocalVolume>), NodeError> {
        if self.store.get(&v.name).is_none() {
            tracing::info!(volume = %v.name, "creating the local copy");
            self.store
                .create_with_id(&v.name, v.size_bytes, v.block_size, v.id)?;
        }
        let local = self.store.open_volume(&v.name)?;
        let base = self.local_unit_dir(&v.name)?.join(COPY_BASE);
        let copy = LocalCopy::open(&v.name, local.clone(), &base)
            .map_err(|e| NodeError::Cluster(format!("volume {}: opening the copy: {e}", v.name)))?;
        Ok((copy, local))
    }

    /// Exports `v` here: over this node's copy when the state places one
    /// here, else forwarding everything to the primary.
    fn present(
        &self,
        c: &Clustered,
        cluster_id: uuid::Uuid,
        v: &cluster::VolumeRecord,
        exported: &mut Registry,
    ) -> Result<(), NodeError> {
        let me = c.cluster.id();
        let here = self.store.get(&v.name);
        if here.as_ref().is_some_and(|m| m.id != v.id) {
            return Err(NodeError::Invalid(format!(
                "a local volume named {} exists on this node; rename or delete it",
                v.name
            )));
        }
        let (role, local, unit_dir) = if v.replicas.contains_key(&me) {
            let (copy, local) = self.open_copy(v)?;
            let role = ClusterVolume::over_copy(copy);
            c.server.add(role.clone());
            (role, Some(local), self.local_unit_dir(&v.name)?)
        } else {
            if here.is_some() {
                // A copy the cluster dropped while this node was away.
                if let Some(old) = exported.remove(&v.name) {
                    self.targets.remove(&old.iqn);
                }
                self.store.delete(&v.name)?;
                tracing::info!(volume = %v.name, "stale local copy removed");
            }
            let dir = self.presented_dir(v.id);
            std::fs::create_dir_all(&dir).map_err(|e| {
                NodeError::Cluster(format!(
                    "volume {}: creating {}: {e}",
                    v.name,
                    dir.display()
                ))
            })?;
            let blocks = v.size_bytes / v.block_size as u64;
            let role = ClusterVolume::recorded(&v.name, v.block_size, blocks);
            (role, None, dir)
        };
        let iqn = iqn_for(&self.config.iqn_prefix, &v.name);
        let mut identity = lun_identity(cluster_id, v.id, &iqn);
        // One target port group per node: ALUA tells initiators which node leads.
        identity.port_group = me as u16;
        identity.relative_port = me as u16;
        if let Some(old) = exported.remove(&v.name) {
            self.targets.remove(&old.iqn);
        }
        let access = access_of(c, v)?;
        let mut e = self.export_as(crate::service::Export {
            name: v.name.clone(),
            id: v.id,
            local,
            served: role.clone(),
            identity,
            unit_dir: unit_dir.clone(),
            access,
        })?;
        // Until the cluster state gives this node its role (`hold`), every
        // command that touches the medium fails as an access state
        // transition, and REPORT TARGET PORT GROUPS says so.
        e.lun.set_port_groups(vec![PortGroup {
            id: me as u16,
            state: AccessState::Transitioning,
            preferred: false,
            ports: vec![me as u16],
            status: 0,
        }]);
        e.cluster = Some(Presented {
            volume: role,
            unit_dir,
            access: v.access.clone(),
            current: None,
            groups: Vec::new(),
        });
        exported.insert(e);
        Ok(())
    }

    async fn hold(
        &self,
        c: &Arc<Clustered>,
        vols: &mut Registry,
        cluster_id: uuid::Uuid,
        v: &cluster::VolumeRecord,
        state: &ClusterState,
    ) -> Result<(), NodeError> {
        let me = c.cluster.id();
        let copy_here = v.replicas.contains_key(&me);
        let has_copy = |vols: &Registry| {
            vols.by_id(v.id)
                .and_then(|e| e.cluster.as_ref())
                .map(|p| p.volume.copy().is_some())
        };
        if has_copy(vols).is_some_and(|copy| copy != copy_here) {
            // A copy was placed here or taken away: present it anew.
            self.release(c, vols, &v.name);
        }
        if has_copy(vols).is_none() {
            self.present(c, cluster_id, v, vols)?;
        }
        let e = vols.by_id_mut(v.id).expect("presented above");
        let recorded = e.cluster.as_ref().expect("presented above").access.clone();
        if recorded != v.access {
            let access = access_of(c, v)?;
            self.apply_access(&v.name, e, access);
        }
        let lun = e.lun.clone();
        let slot = e.cluster.as_mut().expect("presented above");
        slot.access = v.access.clone();
        let grew = slot
            .volume
            .grow_to(v.size_bytes / v.block_size as u64)
            .await
            .map_err(|source| NodeError::Volume {
                name: v.name.clone(),
                source,
            })?;
        if grew {
            lun.capacity_changed();
        }
        if v.primary == me {
            reseal(c, v).await;
        }
        let holders: Vec<NodeId> = v.replicas.keys().copied().collect();
        let desired = (v.primary, v.epoch, holders.clone());
        if slot.current.as_ref() != Some(&desired) {
            if v.primary == me
                && copy_here
                && c.taken_up.lock().unwrap().get(&v.name) != Some(&Some(v.epoch))
            {
                // Every primary role runs at an epoch of its own, taken up
                // through the control plane first: reports an earlier role
                // (before a restart, or before a change of the copies) gave
                // up waiting for can then never land in this role's time,
                // and the role starts from a state that holds every change
                // committed before it. Until then the volume waits.
                slot.volume.set_route(Route::Waiting);
                slot.current = None;
                self.take_up(c, v);
                return Ok(());
            }
            self.take_role(c, &slot.volume, v, state)
                .await
                .map_err(|source| NodeError::Volume {
                    name: v.name.clone(),
                    source,
                })?;
            slot.current = Some(desired);
            tracing::info!(volume = %v.name, primary = v.primary, epoch = v.epoch, me, copy = copy_here, "volume role set");
        }
        // Every data node presents the volume: the primary's port group is
        // active/optimized, every other node's active/non-optimized.
        let groups: Vec<PortGroup> = state
            .nodes
            .values()
            .filter(|n| n.holds_data())
            .map(|n| PortGroup {
                id: n.id as u16,
                state: if n.id == v.primary {
                    AccessState::ActiveOptimized
                } else {
                    AccessState::ActiveNonOptimized
                },
                preferred: n.id == v.primary,
                ports: vec![n.id as u16],
                status: 0,
            })
            .collect();
        if slot.groups != groups {
            lun.set_port_groups(groups.clone());
            slot.groups = groups;
        }
        Ok(())
    }

    /// Promotes this node to the next epoch of `v`, in the background (the
    /// control plane may have no quorum, and other volumes must not wait):
    /// the applied promotion wakes the reconcile that builds the role.
    fn take_up(&self, c: &Arc<Clustered>, v: &cluster::VolumeRecord) {
        {
            let mut taken = c.taken_up.lock().unwrap();
            if taken.get(&v.name) == Some(&None) {
                return; // being proposed
            }
            taken.insert(v.name.clone(), None);
        }
        let (c, name, epoch) = (c.clone(), v.name.clone(), v.epoch);
        tokio::spawn(async move {
            let promote = c.cluster.propose(Command::Promote {
                volume: name.clone(),
                node: c.cluster.id(),
                expected_epoch: epoch,
            });
            let outcome = match tokio::time::timeout(RECORD_TIMEOUT, promote).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err("the control plane did not answer".to_string()),
            };
            let mut taken = c.taken_up.lock().unwrap();
            match outcome {
                Ok(()) => {
                    tracing::info!(volume = %name, epoch = epoch + 1, "taking up the primary role");
                    taken.insert(name, Some(epoch + 1));
                    c.wake.notify_one();
                }
                Err(why) => {
                    tracing::warn!(volume = %name, "cannot take up the primary role yet: {why}");
                    taken.remove(&name);
                }
            }
        });
    }

    /// Sets this node's role for `v`: primary (mirroring to the other
    /// copies) or forwarding to the primary.
    async fn take_role(
        &self,
        c: &Arc<Clustered>,
        volume: &ClusterVolume,
        v: &cluster::VolumeRecord,
        state: &ClusterState,
    ) -> Result<(), volume::VolumeError> {
        let me = c.cluster.id();
        let copy = volume.copy().filter(|_| v.primary == me);
        let Some(copy) = copy else {
            let addr = state
                .nodes
                .get(&v.primary)
                .map(|i| i.repl_addr.clone())
                .unwrap_or_default();
            let f = Forwarder::new(
                &v.name,
                volume.copy().cloned(),
                me,
                addr,
                c.key.clone(),
                REPL_TIMEOUT,
            );
            volume.set_route(Route::Forward(Arc::new(f)));
            return Ok(());
        };
        let peers = v
            .replicas
            .iter()
            .filter(|(&n, _)| n != me)
            .map(|(&n, st)| PeerSpec {
                node: n,
                addr: state
                    .nodes
                    .get(&n)
                    .map(|i| i.repl_addr.clone())
                    .unwrap_or_default(),
                in_sync: *st == ReplicaState::InSync,
            })
            .collect();
        let cfg = PrimaryConfig {
            node: me,
            epoch: v.epoch,
            key: c.key.clone(),
            timeout: REPL_TIMEOUT,
        };
        // Stop the old role before the new primary takes the copy.
        volume.set_route(Route::Waiting);
        let control: Arc<dyn replica::Control> = c.control.clone();
        let p = Primary::start(copy.clone(), cfg, peers, control).await?;
        volume.set_route(Route::Primary(p));
        // Used: the next primary role of this volume takes up its own epoch.
        c.taken_up.lock().unwrap().remove(&v.name);
        Ok(())
    }

    /// Replaces the access rules of cluster volume `name` on every node.
    pub(crate) async fn set_access_clustered(
        &self,
        c: &Arc<Clustered>,
        name: &str,
        access: &crate::AccessConfig,
    ) -> Result<(), NodeError> {
        let id = c
            .cluster
            .state()
            .volumes
            .get(name)
            .map(|v| v.id)
            .ok_or_else(|| NodeError::NotFound(name.to_string()))?;
        let json = if *access == crate::AccessConfig::default() {
            None
        } else {
            // Only rules with CHAP secrets need the data key.
            let key = match access.chap {
                Some(_) => Some(data_key(c).await?),
                None => None,
            };
            let record = access
                .to_record(key.as_ref(), id)
                .map_err(|e| NodeError::Cluster(format!("volume {name}: access rules: {e}")))?;
            Some(record)
        };
        self.change(
            c,
            Command::SetAccess {
                volume: name.to_string(),
                access: json,
            },
        )
        .await
    }

    /// Proposes `cmd` and, once it is applied, makes this node match.
    async fn change(&self, c: &Arc<Clustered>, cmd: Command) -> Result<(), NodeError> {
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
        Ok(())
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
    /// the primary's (the cluster refuses that).
    pub async fn remove_replica(&self, name: &str, node: &str) -> Result<(), NodeError> {
        let c = self.member()?;
        let state = c.cluster.state();
        if !state.volumes.contains_key(name) {
            return Err(NodeError::NotFound(name.to_string()));
        }
        let target = member_id(&state, node)?;
        c.cluster
            .propose(Command::RemoveReplica {
                volume: name.to_string(),
                node: target,
            })
            .await
            .map_err(cluster_err)
    }

    fn member(&self) -> Result<Arc<Clustered>, NodeError> {
        self.clustered()
            .ok_or_else(|| NodeError::Invalid("this node is not a cluster member".into()))
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
