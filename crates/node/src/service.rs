use std::path::PathBuf;
use std::sync::Arc;

use portal::Targets;
use scsi::reservations::{PersistentState, StateStore};
use scsi::xcopy::UnitDirectory;
use scsi::LogicalUnit;
use serde::{Deserialize, Serialize};
use store::{LocalVolume, Store};
use tokio::sync::Mutex;
use volume::Volume;

use crate::clustered::Unasked;
use crate::identity::{iqn_for, lun_identity};
use crate::registry::{Exported, Registry};
use crate::{AccessConfig, NodeError};

/// Settings of the node's service layer.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Prefix of every exported IQN (`<prefix>:<volume name>`).
    pub iqn_prefix: String,
}

/// What an administrator sees of one volume.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Volume name, unique on the node.
    pub name: String,
    /// Stable volume id.
    pub id: String,
    /// Size presented to initiators, in bytes.
    pub size_bytes: u64,
    /// Logical block size in bytes.
    pub block_size: u32,
    /// Space the volume takes on the backing store, in bytes.
    pub allocated_bytes: u64,
    /// iSCSI target name the volume is exported under.
    pub iqn: String,
    /// LUN of the volume within its target.
    pub lun: u32,
    /// NAA identifier (VPD 0x83) as hex.
    pub naa: String,
    /// Unit serial number (VPD 0x80).
    pub serial: String,
    /// Number of iSCSI sessions logged in to the volume: through any node
    /// of the cluster for a cluster volume (those of `sessions_unknown`
    /// aside), through this node for a local one.
    pub sessions: usize,
    /// Each of those sessions: who, from where, through which node.
    #[serde(default)]
    pub logged_in: Vec<SessionInfo>,
    /// Data nodes that could not be asked for their sessions of this
    /// cluster volume: `sessions` leaves theirs out.
    #[serde(default)]
    pub sessions_unknown: Vec<Unasked>,
    /// Initiators allowed to log in; empty: every initiator.
    #[serde(default)]
    pub allowed_initiators: Vec<String>,
    /// CHAP user initiators authenticate as, when CHAP is on (the secret is never shown).
    #[serde(default)]
    pub chap_user: Option<String>,
    /// CHAP user the target answers mutual CHAP with.
    #[serde(default)]
    pub mutual_chap_user: Option<String>,
    /// Snapshots of the volume in sight (those kept only for clones aside).
    #[serde(default)]
    pub snapshots: usize,
    /// Space all of its snapshots take on the backing store, in bytes.
    #[serde(default)]
    pub snapshot_bytes: u64,
    /// For a clone: `volume@snapshot` it was made from.
    #[serde(default)]
    pub clone_of: Option<String>,
}

/// An iSCSI session logged in to a volume.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionInfo {
    /// The initiator's name (its IQN).
    pub initiator: String,
    /// The address the initiator connects from, `host:port`.
    pub address: String,
    /// The cluster member the session is logged in through; `None` on a
    /// node outside a cluster.
    #[serde(default)]
    pub node: Option<String>,
}

impl std::fmt::Display for SessionInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} from {}", self.initiator, self.address)?;
        match &self.node {
            Some(n) => write!(f, " through {n}"),
            None => Ok(()),
        }
    }
}

/// What an administrator sees of the node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeStatus {
    /// Installation UUID, root of every SCSI identity this node presents.
    pub installation_id: String,
    /// Tandem version.
    pub version: String,
    /// Data directory.
    pub data_dir: String,
    /// Number of volumes.
    pub volumes: usize,
    /// Total size of all volumes, in bytes.
    pub provisioned_bytes: u64,
    /// Total space the volumes take on the backing store, in bytes.
    pub allocated_bytes: u64,
    /// Bytes free on the data directory's filesystem (`None`: it could not
    /// be asked).
    #[serde(default)]
    pub filesystem_free_bytes: Option<u64>,
    /// Size of the data directory's filesystem, in bytes.
    #[serde(default)]
    pub filesystem_total_bytes: Option<u64>,
}

impl NodeStatus {
    /// How many bytes the thin volumes may still write beyond what the data
    /// filesystem has free (0: every volume can be filled).
    pub fn overcommitted_bytes(&self) -> u64 {
        let unwritten = self.provisioned_bytes.saturating_sub(self.allocated_bytes);
        self.filesystem_free_bytes
            .map_or(0, |free| unwritten.saturating_sub(free))
    }
}

/// The service layer: every volume operation of the API and CLI goes through here.
pub struct Node {
    pub(crate) store: Arc<Store>,
    pub(crate) targets: Arc<Targets>,
    pub(crate) config: NodeConfig,
    /// Every exported volume; the lock also serializes catalog changes and
    /// the cluster reconcile.
    pub(crate) exported: Mutex<Registry>,
    /// The cluster side, once this node is a member.
    pub(crate) cluster: std::sync::OnceLock<Arc<crate::Clustered>>,
    /// What happened here: failovers, resyncs, volume changes, ...
    pub(crate) events: Arc<crate::EventLog>,
    /// When each cluster member last showed a sign of life, as this node
    /// learnt it (the I/O pause of a failover counts from there).
    pub(crate) alive: crate::event_watch::Alive,
    /// Readings of the latency histograms for the report's windows.
    pub(crate) latency: crate::report::LatencyHistory,
}

/// File in an export's unit directory that holds its persistent reservations.
const RESERVATIONS: &str = "reservations.json";

/// Saves a logical unit's persistent reservations in its unit directory.
struct UnitStateFile {
    path: PathBuf,
}

#[async_trait::async_trait]
impl StateStore for UnitStateFile {
    async fn save(&self, bytes: Vec<u8>) -> Result<(), scsi::Sense> {
        let path = self.path.clone();
        durable::blocking(move || Ok(durable::write_atomic(&path, &bytes)?))
            .await
            .map_err(|e| {
                tracing::error!(path = %self.path.display(), "cannot save persistent reservations: {e}");
                scsi::sense_of(&volume::VolumeError::Io(e))
            })
    }
}

/// How one volume is exported.
pub(crate) struct ExportSpec {
    pub(crate) name: String,
    pub(crate) id: uuid::Uuid,
    pub(crate) local: Option<Arc<LocalVolume>>,
    pub(crate) served: Arc<dyn Volume>,
    pub(crate) identity: scsi::LunIdentity,
    /// Where the logical unit keeps its state (persistent reservations).
    pub(crate) unit_dir: PathBuf,
    pub(crate) access: AccessConfig,
    /// For a volume other nodes present too: where its commands run and
    /// its reservations are kept, in place of `unit_dir`.
    pub(crate) shared: Option<SharedUnit>,
}

/// How the logical unit of a volume that several nodes present reaches
/// the node in charge of it.
pub(crate) struct SharedUnit {
    pub(crate) owner: Arc<dyn scsi::Owner>,
    pub(crate) store: Arc<dyn StateStore>,
}

impl Node {
    /// Opens every volume of `store` and exports it through `targets`.
    pub async fn start(
        store: Arc<Store>,
        targets: Arc<Targets>,
        config: NodeConfig,
    ) -> Result<Node, NodeError> {
        let events = Arc::new(crate::EventLog::open(store.data_dir()));
        targets.observe_refusals(crate::event_watch::refusals_to(&events));
        let node = Node {
            store,
            targets,
            config,
            exported: Mutex::new(Registry::default()),
            cluster: std::sync::OnceLock::new(),
            events,
            alive: Default::default(),
            latency: Default::default(),
        };
        {
            let member = cluster::Cluster::exists(&cluster::default_dir(node.store.data_dir()));
            let mut exported = node.exported.lock().await;
            for meta in node.store.list() {
                if member && node.is_cluster_copy(&meta.name) {
                    // Written as a plain local volume, a copy would take
                    // writes no other copy has: it is presented only in the
                    // role the cluster state gives it (`reconcile`).
                    tracing::info!(volume = %meta.name, "copy of a cluster volume: presented once the cluster state says who leads it");
                    continue;
                }
                let e = node.export(&meta)?;
                exported.insert(e);
            }
        }
        Ok(node)
    }

    pub(crate) fn export(&self, meta: &store::VolumeMeta) -> Result<Exported, NodeError> {
        let volume = self.store.open_volume(&meta.name)?;
        let iqn = iqn_for(&self.config.iqn_prefix, &meta.name);
        let identity = lun_identity(self.store.installation_id(), meta.id, &iqn);
        let access = match self.store.read_access(&meta.name)? {
            None => AccessConfig::default(),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                NodeError::Invalid(format!(
                    "the access rules of volume {} are unreadable ({e}); fix or remove access.json in its directory",
                    meta.name
                ))
            })?,
        };
        self.export_as(ExportSpec {
            name: meta.name.clone(),
            id: meta.id,
            local: Some(volume.clone()),
            served: volume,
            identity,
            unit_dir: self.local_unit_dir(&meta.name)?,
            access,
            shared: None,
        })
    }

    /// Whether this node's volume `name` is a copy of a cluster volume.
    pub(crate) fn is_cluster_copy(&self, name: &str) -> bool {
        self.store
            .volume_dir(name)
            .is_some_and(|d| replica::LocalCopy::exists(&d.join(crate::clustered::COPY_BASE)))
    }

    /// The unit directory of a volume with data on this node.
    pub(crate) fn local_unit_dir(&self, name: &str) -> Result<PathBuf, NodeError> {
        self.store
            .volume_dir(name)
            .ok_or_else(|| NodeError::NotFound(name.to_string()))
    }

    /// Exports a volume through the targets.
    pub(crate) fn export_as(&self, x: ExportSpec) -> Result<Exported, NodeError> {
        let iqn = x.identity.target_name.clone();
        let directory: Arc<dyn UnitDirectory> = self.targets.clone();
        let unit = LogicalUnit::new(x.served.clone(), x.identity)
            .with_directory(Arc::downgrade(&directory));
        let unit = match x.shared {
            // The state is taken up when this node is put in charge.
            Some(shared) => unit
                .with_reservations(PersistentState::default(), shared.store)
                .with_owner(shared.owner),
            None => {
                let path = x.unit_dir.join(RESERVATIONS);
                let saved = match store::read_if_exists(&path)? {
                    None => PersistentState::default(),
                    Some(bytes) => PersistentState::decode(&bytes).unwrap_or_else(|e| {
                        tracing::error!(volume = %x.name, "persistent reservations unreadable, starting without: {e}");
                        PersistentState::default()
                    }),
                };
                unit.with_reservations(saved, Arc::new(UnitStateFile { path }))
            }
        };
        let lun = Arc::new(unit);
        self.targets
            .insert_with_access(iqn.clone(), lun.clone(), x.access.target_access());
        tracing::info!(volume = %x.name, %iqn, "volume exported");
        Ok(Exported {
            name: x.name,
            id: x.id,
            served: x.served,
            local: x.local,
            lun,
            iqn,
            access: x.access,
            cluster: None,
        })
    }

    /// The sessions logged in to `e` through this node.
    pub(crate) fn local_sessions(&self, e: &Exported) -> Vec<SessionInfo> {
        let me = self.clustered().map(|c| c.cluster().me().name.clone());
        self.targets
            .sessions(&e.iqn)
            .into_iter()
            .map(|s| SessionInfo {
                initiator: s.initiator,
                address: s.address.to_string(),
                node: me.clone(),
            })
            .collect()
    }

    /// Describes `e` with the sessions of this node; a cluster volume's
    /// are then replaced by those of every node ([`Node::count_sessions`]).
    pub(crate) fn info(&self, name: &str, e: &Exported) -> VolumeInfo {
        let logged_in = self.local_sessions(e);
        let identity = e.lun.identity();
        VolumeInfo {
            name: name.to_string(),
            id: e.id.to_string(),
            size_bytes: e.served.num_blocks() * e.served.block_size() as u64,
            block_size: e.served.block_size(),
            allocated_bytes: match e.local {
                Some(_) => self.store.allocated_bytes(name).unwrap_or(0),
                None => 0,
            },
            iqn: e.iqn.clone(),
            lun: 0,
            naa: identity.naa.iter().map(|b| format!("{b:02x}")).collect(),
            serial: identity.serial.clone(),
            sessions: logged_in.len(),
            logged_in,
            sessions_unknown: Vec::new(),
            allowed_initiators: e.access.allowed_initiators.clone(),
            chap_user: e.access.chap.as_ref().map(|c| c.user.clone()),
            mutual_chap_user: e.access.mutual_chap.as_ref().map(|c| c.user.clone()),
            snapshots: e
                .local
                .as_ref()
                .map_or(0, |l| l.snapshots().iter().filter(|s| !s.hidden).count()),
            snapshot_bytes: match e.local {
                Some(_) => self.store.snapshot_allocated_bytes(name).unwrap_or(0),
                None => 0,
            },
            clone_of: self.store.clone_origin(name),
        }
    }

    /// Replaces who may log in to a volume and how they authenticate. New
    /// logins follow the new rules at once; sessions already logged in stay.
    /// A cluster volume's rules hold on every node.
    pub async fn set_access(
        &self,
        name: &str,
        access: AccessConfig,
    ) -> Result<VolumeInfo, NodeError> {
        access.validate()?;
        if let Some(c) = self.clustered() {
            if c.cluster().state().volumes.contains_key(name) {
                self.set_access_clustered(&c, name, &access).await?;
                return self.volume(name).await;
            }
        }
        let mut exported = self.exported.lock().await;
        let e = exported
            .local_mut(name)
            .ok_or_else(|| NodeError::NotFound(name.to_string()))?;
        let json = serde_json::to_vec_pretty(&access).expect("plain data encodes");
        self.store.write_access(name, &json)?;
        self.apply_access(name, e, access);
        Ok(self.info(name, e))
    }

    /// Makes new logins to `e` follow `access`.
    pub(crate) fn apply_access(&self, name: &str, e: &mut Exported, access: AccessConfig) {
        self.targets.set_access(&e.iqn, access.target_access());
        e.access = access;
        tracing::info!(
            volume = name,
            initiators = e.access.allowed_initiators.len(),
            chap = e.access.chap.is_some(),
            mutual = e.access.mutual_chap.is_some(),
            "volume access changed"
        );
    }

    /// The logical unit a volume is exported as.
    pub async fn logical_unit(&self, name: &str) -> Result<Arc<LogicalUnit>, NodeError> {
        self.exported
            .lock()
            .await
            .get(name)
            .map(|e| e.lun.clone())
            .ok_or_else(|| NodeError::NotFound(name.to_string()))
    }

    /// Creates a thin volume of `size_bytes` and exports it at once. On a
    /// cluster member the volume is created through the control plane with
    /// `replicas` copies (default 2, or 1 with a single data node).
    pub async fn create_volume(
        &self,
        name: &str,
        size_bytes: u64,
        block_size: u32,
        replicas: Option<usize>,
    ) -> Result<VolumeInfo, NodeError> {
        let began = std::time::Instant::now();
        let info = self
            .make_volume(name, size_bytes, block_size, replicas)
            .await?;
        self.events.record(
            crate::Event::new(crate::EventKind::VolumeCreate)
                .volume(name)
                .with("bytes", size_bytes)
                .with("us", began.elapsed().as_micros() as u64),
        );
        Ok(info)
    }

    async fn make_volume(
        &self,
        name: &str,
        size_bytes: u64,
        block_size: u32,
        replicas: Option<usize>,
    ) -> Result<VolumeInfo, NodeError> {
        self.check_file_limit(name, size_bytes)?;
        if let Some(c) = self.clustered() {
            // A local volume of that name (made before the node joined the
            // cluster) would keep the cluster's volume from being presented
            // here: the name is taken.
            if self.store.get(name).is_some() && !self.is_cluster_copy(name) {
                return Err(NodeError::Store(store::StoreError::Exists(
                    name.to_string(),
                )));
            }
            let data_nodes = c
                .cluster()
                .state()
                .nodes
                .values()
                .filter(|n| n.holds_data())
                .count();
            let n = replicas.unwrap_or(data_nodes.clamp(1, 2));
            self.create_clustered(&c, name, size_bytes, block_size, n)
                .await?;
            return match self.volume(name).await {
                Ok(info) => Ok(info),
                // Placed on other nodes only: describe it from the cluster state.
                Err(NodeError::NotFound(_)) => Ok(self.remote_info(&c, name)),
                Err(e) => Err(e),
            };
        }
        if replicas.is_some_and(|r| r > 1) {
            return Err(NodeError::Invalid(
                "replicas need a cluster: run `tandem cluster init` (and join other nodes) first"
                    .into(),
            ));
        }
        let mut exported = self.exported.lock().await;
        let meta = self.store.create(name, size_bytes, block_size)?;
        let e = match self.export(&meta) {
            Ok(e) => e,
            Err(err) => {
                let _ = self.store.delete(name);
                return Err(err);
            }
        };
        let info = self.info(name, &e);
        exported.insert(e);
        tracing::info!(volume = name, size_bytes, "volume created");
        Ok(info)
    }

    pub(crate) fn remote_info(&self, c: &crate::Clustered, name: &str) -> VolumeInfo {
        let state = c.cluster().state();
        let v = state.volumes.get(name);
        VolumeInfo {
            name: name.to_string(),
            id: v.map(|v| v.id.to_string()).unwrap_or_default(),
            size_bytes: v.map(|v| v.size_bytes).unwrap_or(0),
            block_size: v.map(|v| v.block_size).unwrap_or(0),
            allocated_bytes: 0,
            iqn: iqn_for(&self.config.iqn_prefix, name),
            lun: 0,
            naa: String::new(),
            serial: String::new(),
            sessions: 0,
            logged_in: Vec::new(),
            sessions_unknown: Vec::new(),
            allowed_initiators: Vec::new(),
            chap_user: None,
            mutual_chap_user: None,
            snapshots: 0,
            snapshot_bytes: 0,
            clone_of: None,
        }
    }

    /// Lists every volume, sorted by name.
    pub async fn list_volumes(&self) -> Vec<VolumeInfo> {
        let mut infos = self.local_infos().await;
        self.count_sessions(&mut infos).await;
        infos
    }

    /// Every volume, sorted by name, with this node's sessions only.
    async fn local_infos(&self) -> Vec<VolumeInfo> {
        self.each_exported(|e| self.info(&e.name, e)).await
    }

    /// `f` of every exported volume, sorted by name, under the registry's
    /// lock.
    pub(crate) async fn each_exported<T>(&self, f: impl FnMut(&Exported) -> T) -> Vec<T> {
        let exported = self.exported.lock().await;
        exported.by_name().into_iter().map(f).collect()
    }

    /// Describes one volume.
    pub async fn volume(&self, name: &str) -> Result<VolumeInfo, NodeError> {
        let info = {
            let exported = self.exported.lock().await;
            let e = exported
                .get(name)
                .ok_or_else(|| NodeError::NotFound(name.to_string()))?;
            self.info(name, e)
        };
        let mut infos = [info];
        self.count_sessions(&mut infos).await;
        let [info] = infos;
        Ok(info)
    }

    /// Puts in the sessions of the cluster volumes among `infos` on every
    /// data node, asked once for all of them (without the registry's lock:
    /// the nodes asked may be asking this one meanwhile).
    async fn count_sessions(&self, infos: &mut [VolumeInfo]) {
        let Some(c) = self.clustered() else { return };
        let state = c.cluster().state();
        let clustered = |info: &VolumeInfo| {
            state
                .volumes
                .get(&info.name)
                .filter(|v| v.id.to_string() == info.id)
                .map(|v| v.id)
        };
        if !infos.iter().any(|i| clustered(i).is_some()) {
            return;
        }
        let census = self.census(&c).await;
        for info in infos {
            if let Some(id) = clustered(info) {
                info.logged_in = census.of(id);
                info.sessions = info.logged_in.len();
                info.sessions_unknown = census.unasked.clone();
            }
        }
    }

    /// Grows a volume to `size_bytes`; initiators see CAPACITY DATA HAS
    /// CHANGED. A cluster volume grows on every node.
    pub async fn resize_volume(
        &self,
        name: &str,
        size_bytes: u64,
    ) -> Result<VolumeInfo, NodeError> {
        let before = self
            .exported
            .lock()
            .await
            .get(name)
            .map(|e| e.served.num_blocks() * e.served.block_size() as u64);
        let began = std::time::Instant::now();
        let info = self.grow_volume(name, size_bytes).await?;
        if before != Some(info.size_bytes) {
            self.events.record(
                crate::Event::new(crate::EventKind::VolumeResize)
                    .volume(name)
                    .with("from_bytes", before.unwrap_or(0))
                    .with("bytes", info.size_bytes)
                    .with("us", began.elapsed().as_micros() as u64),
            );
        }
        Ok(info)
    }

    async fn grow_volume(&self, name: &str, size_bytes: u64) -> Result<VolumeInfo, NodeError> {
        let clustered = self
            .clustered()
            .filter(|c| c.cluster().state().volumes.contains_key(name));
        let exported = self.exported.lock().await;
        let e = exported
            .get(name)
            .ok_or_else(|| NodeError::NotFound(name.to_string()))?;
        let bs = e.served.block_size() as u64;
        if size_bytes == 0 || !size_bytes.is_multiple_of(bs) {
            return Err(NodeError::Invalid(format!(
                "size {} is not a positive multiple of the {bs}-byte block size of volume {name}",
                crate::space::human(size_bytes)
            )));
        }
        // The same limits as a new volume's (a file cannot be larger).
        store::validate_geometry(size_bytes, bs as u32)?;
        let current = e.served.num_blocks() * bs;
        if size_bytes < current {
            return Err(NodeError::Invalid(format!(
                "volume {name} is {}; shrinking it to {} is not supported",
                crate::space::human(current),
                crate::space::human(size_bytes)
            )));
        }
        self.check_file_limit(name, size_bytes)?;
        if let Some(c) = clustered {
            drop(exported);
            self.resize_clustered(&c, name, size_bytes).await?;
            return self.volume(name).await;
        }
        // A cluster volume the cluster no longer has is being released
        // here, not resized.
        let local = e
            .local
            .as_ref()
            .filter(|_| e.cluster.is_none())
            .ok_or_else(|| NodeError::NotFound(name.to_string()))?;
        if size_bytes > current {
            local
                .resize(size_bytes / bs)
                .await
                .map_err(|source| NodeError::Volume {
                    name: name.to_string(),
                    source,
                })?;
            e.lun.capacity_changed();
            tracing::info!(
                volume = name,
                from = current,
                to = size_bytes,
                "volume resized"
            );
        }
        Ok(self.info(name, e))
    }

    /// Deletes a volume and its data. Refused while initiators are logged in,
    /// unless `force`, which logs them out first. A cluster volume counts
    /// the sessions of every data node; a node that cannot be asked (down
    /// or cut off: from here they look the same) refuses the delete too,
    /// unless `force`, the administrator's word that its sessions may go.
    /// Forced, every node drops its sessions as it applies the delete; a
    /// node that was down does so when it comes back.
    pub async fn delete_volume(&self, name: &str, force: bool) -> Result<(), NodeError> {
        let began = std::time::Instant::now();
        self.remove_volume(name, force).await?;
        self.events.record(
            crate::Event::new(crate::EventKind::VolumeDelete)
                .volume(name)
                .with("us", began.elapsed().as_micros() as u64),
        );
        Ok(())
    }

    async fn remove_volume(&self, name: &str, force: bool) -> Result<(), NodeError> {
        if let Some(c) = self.clustered() {
            let record = c.cluster().state().volumes.get(name).map(|v| v.id);
            if let Some(id) = record {
                if !force {
                    let census = self.census(&c).await;
                    let sessions = census.of(id);
                    if !sessions.is_empty() {
                        return Err(NodeError::InUse {
                            name: name.to_string(),
                            sessions,
                        });
                    }
                    if !census.unasked.is_empty() {
                        return Err(NodeError::SessionsUnknown {
                            name: name.to_string(),
                            nodes: census.unasked,
                        });
                    }
                }
                return self.delete_clustered(&c, name).await;
            }
        }
        let mut exported = self.exported.lock().await;
        // A cluster volume the cluster no longer has is released by the
        // reconcile (role stopped, copy and files removed), not here.
        let e = exported
            .local_mut(name)
            .ok_or_else(|| NodeError::NotFound(name.to_string()))?;
        let sessions = self.local_sessions(e);
        if !sessions.is_empty() && !force {
            return Err(NodeError::InUse {
                name: name.to_string(),
                sessions,
            });
        }
        self.targets.remove(&e.iqn);
        exported.remove(name);
        self.store.delete(name)?;
        tracing::info!(volume = name, "volume deleted");
        Ok(())
    }

    /// Makes every acknowledged write of every volume durable (used at shutdown).
    pub async fn flush_all(&self) -> Result<(), NodeError> {
        let exported = self.exported.lock().await;
        for e in exported.by_name() {
            let Some(local) = &e.local else { continue };
            // Durability point at shutdown: everything written so far reaches stable storage.
            local.flush().await.map_err(|source| NodeError::Volume {
                name: e.name.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Refuses a size for volume `name` larger than the data filesystem
    /// takes in one file, before any file is made or grown.
    fn check_file_limit(&self, name: &str, size_bytes: u64) -> Result<(), NodeError> {
        match crate::space::file_limit_below(self.store.data_dir(), size_bytes) {
            None => Ok(()),
            Some(limit) => Err(NodeError::Invalid(format!(
                "volume {name}: {} is more than the data filesystem of this node takes in \
                 one file (at most {}); choose a smaller size, or a data directory on a \
                 filesystem that takes larger files (XFS, Btrfs)",
                crate::space::human(size_bytes),
                crate::space::human(limit)
            ))),
        }
    }

    /// Summarizes the node (without asking other nodes for sessions).
    pub async fn status(&self) -> NodeStatus {
        let volumes = self.local_infos().await;
        let space = durable::filesystem_space(self.store.data_dir())
            .map_err(
                |e| tracing::debug!(error = %e, "cannot ask the data filesystem for its space"),
            )
            .ok();
        NodeStatus {
            installation_id: self.store.installation_id().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            data_dir: self.store.data_dir().display().to_string(),
            volumes: volumes.len(),
            provisioned_bytes: volumes.iter().map(|v| v.size_bytes).sum(),
            allocated_bytes: volumes.iter().map(|v| v.allocated_bytes).sum(),
            filesystem_free_bytes: space.map(|(free, _)| free),
            filesystem_total_bytes: space.map(|(_, total)| total),
        }
    }
}
