//! The one record of what this node exports: every volume, local or
//! cluster, keyed by its volume id, with what its export is made of.
//!
//! The two endpoints keep tables of their own, fed only from here: the
//! iSCSI portal's targets (by IQN, with their sessions) as a volume is
//! exported or withdrawn, and the replication endpoint's volumes (by name,
//! for connections from other nodes) as a cluster copy is presented or
//! released.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use cluster::NodeId;
use replica::ClusterVolume;
use scsi::{LogicalUnit, PortGroup};
use store::LocalVolume;
use volume::Volume;

use crate::AccessConfig;

/// One exported volume.
pub(crate) struct Exported {
    /// Volume name, unique on the node.
    pub(crate) name: String,
    /// Stable volume id.
    pub(crate) id: uuid::Uuid,
    /// What initiators' commands go to: the local volume, or the cluster
    /// volume over it.
    pub(crate) served: Arc<dyn Volume>,
    /// This node's data of the volume; `None` for a cluster volume whose
    /// copies are all on other nodes.
    pub(crate) local: Option<Arc<LocalVolume>>,
    pub(crate) lun: Arc<LogicalUnit>,
    pub(crate) iqn: String,
    pub(crate) access: AccessConfig,
    /// The cluster side of a cluster volume.
    pub(crate) cluster: Option<Presented>,
}

/// How a cluster volume is presented here, beside its export.
pub(crate) struct Presented {
    /// The volume initiators reach; it routes I/O by this node's role.
    pub(crate) volume: Arc<ClusterVolume>,
    /// Where the logical unit keeps its state.
    pub(crate) unit_dir: PathBuf,
    /// The access rules (as recorded) the export follows.
    pub(crate) access: Option<String>,
    /// (primary, epoch, holders) the current route was set up for.
    pub(crate) current: Option<(NodeId, u64, Vec<NodeId>)>,
    /// (primary, epoch) of the last route set up here, kept while a new
    /// one waits: a change of it is a reset for the initiators.
    pub(crate) led_by: Option<(NodeId, u64)>,
    /// The ALUA port groups the logical unit reports.
    pub(crate) groups: Vec<PortGroup>,
}

/// Every exported volume, by id.
#[derive(Default)]
pub(crate) struct Registry {
    by_id: BTreeMap<uuid::Uuid, Exported>,
}

impl Registry {
    /// The volume named `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&Exported> {
        self.by_id.values().find(|e| e.name == name)
    }

    /// The volume named `name`, to change.
    pub(crate) fn get_mut(&mut self, name: &str) -> Option<&mut Exported> {
        self.by_id.values_mut().find(|e| e.name == name)
    }

    /// The local (not cluster) volume named `name`, to change.
    pub(crate) fn local_mut(&mut self, name: &str) -> Option<&mut Exported> {
        self.get_mut(name).filter(|e| e.cluster.is_none())
    }

    /// The volume with id `id`.
    pub(crate) fn by_id(&self, id: uuid::Uuid) -> Option<&Exported> {
        self.by_id.get(&id)
    }

    /// The volume with id `id`, to change.
    pub(crate) fn by_id_mut(&mut self, id: uuid::Uuid) -> Option<&mut Exported> {
        self.by_id.get_mut(&id)
    }

    /// Adds (or replaces) a volume.
    pub(crate) fn insert(&mut self, e: Exported) {
        self.by_id.insert(e.id, e);
    }

    /// Takes out the volume named `name`.
    pub(crate) fn remove(&mut self, name: &str) -> Option<Exported> {
        let id = self.get(name)?.id;
        self.by_id.remove(&id)
    }

    /// Every volume, sorted by name.
    pub(crate) fn by_name(&self) -> Vec<&Exported> {
        let mut all: Vec<&Exported> = self.by_id.values().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Every cluster volume presented here.
    pub(crate) fn presented(&self) -> impl Iterator<Item = (&Exported, &Presented)> {
        self.by_id
            .values()
            .filter_map(|e| e.cluster.as_ref().map(|p| (e, p)))
    }
}
