//! The replicated cluster state and the commands that change it. Pure and
//! deterministic: every node applies the same committed commands in the same
//! order and gets the same state. Invalid commands are answered with an
//! error and change nothing.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

mod floating;
mod maintenance;
mod removal;

pub use floating::FloatingAddress;
pub use removal::{Shortfall, DEFAULT_REPLACE_DELAY_SECS};

/// Node identifier (the Raft node id).
pub type NodeId = u64;

/// Most copies a volume may have.
pub const MAX_REPLICAS: usize = 3;

/// Why the state machine refused a command (the state is unchanged).
/// Messages name the object, as the CLI shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Error)]
#[serde(rename_all = "kebab-case", tag = "refusal")]
pub enum Refusal {
    /// `Init` with another id than the one the cluster has.
    #[error("the cluster already has an id")]
    ClusterIdSet,
    /// A member without a role.
    #[error("node {node} has no role")]
    NoRole { node: NodeId },
    /// Node id 0, which Raft does not take.
    #[error("node id 0 is not valid")]
    NodeIdZero,
    /// An empty, overlong or unprintable member name.
    #[error("node {node}: the name must be 1 to 253 printable characters")]
    BadNodeName { node: NodeId },
    /// A member address over 255 bytes.
    #[error("node {node}: an address is too long")]
    AddressTooLong { node: NodeId },
    /// Another member has the name.
    #[error("another node ({other}) is already named {name}")]
    NodeNameTaken { other: NodeId, name: String },
    /// A data node with copies asked to become a witness.
    #[error("node {node} holds volume copies and cannot become a witness")]
    HoldsCopies { node: NodeId },
    /// No member has this id.
    #[error("node {node} is not a member")]
    NotMember { node: NodeId },
    /// The node holds the only in-sync copy of a volume.
    #[error("node {node} holds the only in-sync copy of volume {volume}; add a replica and let it sync first")]
    OnlyInSyncCopy { node: NodeId, volume: String },
    /// A volume name that cannot be part of an IQN or a directory name.
    #[error("volume name {name:?} is not 1 to 63 of a-z, 0-9, '.' and '-' starting with a letter or digit")]
    BadVolumeName { name: String },
    /// The volume name is taken.
    #[error("volume {name} already exists")]
    VolumeExists { name: String },
    /// No volume has this name.
    #[error("there is no volume {name}")]
    NoVolume { name: String },
    /// A replica count out of 1..=[`MAX_REPLICAS`].
    #[error("volume {name}: {replicas} replicas asked; 1, 2 or 3 are possible")]
    ReplicaCount { name: String, replicas: usize },
    /// A block size that is not a power of two from 512 to 65536.
    #[error("volume {name}: block size {block_size} is not a power of two from 512 to 65536")]
    BlockSize { name: String, block_size: u32 },
    /// A size that is not a positive multiple of the block size.
    #[error("volume {name}: size {size_bytes} is not a positive multiple of the block size {block_size}")]
    Size {
        name: String,
        size_bytes: u64,
        block_size: u32,
    },
    /// A resize below the current size.
    #[error("volume {name} cannot shrink from {from} to {to} bytes")]
    Shrink { name: String, from: u64, to: u64 },
    /// A command made at an epoch the volume has left.
    #[error("volume {volume}: epoch {epoch} is stale (current {current})")]
    StaleEpoch {
        volume: String,
        epoch: u64,
        current: u64,
    },
    /// A state report about the primary's own copy.
    #[error("volume {volume}: the primary's own copy is in sync by definition")]
    PrimaryCopy { volume: String },
    /// The volume has no copy on the node.
    #[error("volume {volume} has no copy on node {node}")]
    NoCopy { volume: String, node: NodeId },
    /// A numbered report not above the last applied one.
    #[error("volume {volume}: report {seq} on node {node} was overtaken by report {last}")]
    ReportOvertaken {
        volume: String,
        node: NodeId,
        seq: u64,
        last: u64,
    },
    /// Promotion of a copy that misses writes.
    #[error("volume {volume}: the copy on node {node} is not in sync and cannot become primary")]
    NotInSync { volume: String, node: NodeId },
    /// A copy placed on a witness.
    #[error("volume {volume}: node {node} is a witness and holds no data")]
    Witness { volume: String, node: NodeId },
    /// A second copy on one node.
    #[error("volume {volume} already has a copy on node {node}")]
    CopyExists { volume: String, node: NodeId },
    /// More than [`MAX_REPLICAS`] copies.
    #[error("volume {volume} already has {MAX_REPLICAS} copies")]
    TooManyCopies { volume: String },
    /// Dropping the primary's copy.
    #[error("volume {volume}: the copy on node {node} is the primary's; move the primary to another in-sync copy first (tandem volume move-primary {volume} --to NODE)")]
    PrimaryNotRemovable { volume: String, node: NodeId },
    /// A planned switchover to the node that is the primary already.
    #[error("volume {volume}: node {node} is the primary already")]
    AlreadyPrimary { volume: String, node: NodeId },
    /// Fewer data nodes than copies asked.
    #[error("{wanted} replicas need {wanted} data nodes; the cluster has {have}")]
    TooFewDataNodes { wanted: usize, have: usize },
    /// The access rules changed since a reseal was made.
    #[error("volume {volume}: the access rules changed meanwhile")]
    AccessChanged { volume: String },
    /// Another data key is recorded already.
    #[error("the cluster records another data key already")]
    DataKeySet,
    /// Every data node holds a copy already.
    #[error("every data node already holds a copy of volume {volume}; join another node first")]
    NoNodeLeft { volume: String },
    /// A floating address that is not an IP address with a prefix length.
    #[error(
        "floating address {address:?} is not an address with a prefix length, as 10.0.0.50/24"
    )]
    BadFloatingAddress { address: String },
    /// An interface name Linux would not take.
    #[error("interface name {interface:?} is not 1 to 15 printable characters without '/' or ':', not starting with '-'")]
    BadInterface { interface: String },
    /// A holder named for a floating address the cluster does not have.
    #[error("the cluster has no floating address")]
    NoFloatingAddress,
    /// A change of holder made on an outdated view of who holds it.
    #[error("the floating address moved meanwhile (now held by {holder:?})")]
    FloatingMoved { holder: Option<NodeId> },
    /// A witness or a non-member named holder of the floating address.
    #[error("node {node} is not a data node and cannot hold the floating address")]
    NotDataNode { node: NodeId },
    /// A node in maintenance named to lead a volume, or reported to hold
    /// writes it is kept away from.
    #[error("volume {volume}: node {node} is in maintenance (tandem node maintenance exit {node} first)")]
    InMaintenance { volume: String, node: NodeId },
    /// Every node a new volume would be placed on is in maintenance.
    #[error("volume {name}: every data node it would be placed on is in maintenance")]
    AllInMaintenance { name: String },
    /// Removing the node would leave volumes without any in-sync copy.
    #[error("node {node} holds the only in-sync copy of volume(s) {}: their data exists only there", .volumes.join(", "))]
    OnlyCopies { node: NodeId, volumes: Vec<String> },
    /// A node removed as dead asked to take part again under its id.
    #[error("node {node} was removed from the cluster as dead and cannot take part again; wipe its data directory and join it as a new node")]
    Removed { node: NodeId },
    /// A copy already being replaced.
    #[error("volume {volume}: the copy on node {node} is being replaced already")]
    BeingReplaced { volume: String, node: NodeId },
    /// A snapshot name the volume has already.
    #[error("volume {volume} has a snapshot named {name} already")]
    SnapshotExists { volume: String, name: String },
    /// No snapshot of that id.
    #[error("volume {volume} has no snapshot {id}")]
    NoSnapshot { volume: String, id: Uuid },
    /// A volume clones were made from (they read its snapshot's data).
    #[error("volume {name} has clones ({clones}); delete them first")]
    HasClones { name: String, clones: String },
}

/// Checks a volume name: it becomes part of an IQN and a directory name, so
/// 1 to 63 of a-z, 0-9, '.' and '-', starting with a letter or digit (the
/// local store's rule).
fn check_name(name: &str) -> Result<(), Refusal> {
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Refusal::BadVolumeName {
            name: name.to_string(),
        })
    }
}

/// Checks a volume's size and block size.
fn check_geometry(name: &str, size_bytes: u64, block_size: u32) -> Result<(), Refusal> {
    if !block_size.is_power_of_two() || !(512..=65536).contains(&block_size) {
        return Err(Refusal::BlockSize {
            name: name.to_string(),
            block_size,
        });
    }
    if size_bytes == 0 || !size_bytes.is_multiple_of(u64::from(block_size)) {
        return Err(Refusal::Size {
            name: name.to_string(),
            size_bytes,
            block_size,
        });
    }
    Ok(())
}

/// Checks that the copy on `node` may lead `v` after `expected_epoch`:
/// the epoch is the current one and the copy is in sync.
fn check_successor(v: &VolumeRecord, node: NodeId, expected_epoch: u64) -> Result<(), Refusal> {
    if expected_epoch != v.epoch {
        return Err(Refusal::StaleEpoch {
            volume: v.name.clone(),
            epoch: expected_epoch,
            current: v.epoch,
        });
    }
    match v.replicas.get(&node) {
        Some(ReplicaState::InSync) => Ok(()),
        Some(_) => Err(Refusal::NotInSync {
            volume: v.name.clone(),
            node,
        }),
        None => Err(Refusal::NoCopy {
            volume: v.name.clone(),
            node,
        }),
    }
}

/// What a member does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Holds volume copies and serves iSCSI.
    Data,
    /// Votes only: the third voter of a two-node cluster.
    Witness,
}

/// A member of the cluster and where to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NodeInfo {
    /// Node id, unique in the cluster.
    pub id: NodeId,
    /// Name for people (host name by default).
    pub name: String,
    /// Data node or witness.
    pub role: Option<Role>,
    /// Control-plane HTTP endpoint, host:port.
    pub cluster_addr: String,
    /// iSCSI portal, host:port (empty for a witness).
    pub iscsi_addr: String,
    /// Replication endpoint, host:port (empty for a witness).
    pub repl_addr: String,
}

impl NodeInfo {
    /// Whether the node may hold volume copies.
    pub fn holds_data(&self) -> bool {
        self.role == Some(Role::Data)
    }
}

/// Whether a copy holds every acknowledged write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum ReplicaState {
    /// Holds every acknowledged write: may become primary.
    InSync,
    /// Misses writes; the primary tracks which.
    OutOfSync,
    /// Catching up. The primary reports how far; the log records only that
    /// it started (entries written before carry `done` and `total`, which
    /// are ignored).
    Syncing,
}

/// A volume of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// Stable id; seeds the SCSI identity with the cluster id.
    pub id: Uuid,
    /// Name, part of the IQN.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Logical block size.
    pub block_size: u32,
    /// Nodes holding a copy and the state of each.
    pub replicas: BTreeMap<NodeId, ReplicaState>,
    /// Node that orders the writes (always an in-sync replica).
    pub primary: NodeId,
    /// Grows with every change of primary, and every time a primary takes
    /// up its role anew; replicas refuse older epochs.
    pub epoch: u64,
    /// Per replica, the number of the last state report applied (see
    /// [`Command::SetReplicaState`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reports: BTreeMap<NodeId, u64>,
    /// Who may log in to the volume on every node, as the nodes' access
    /// rules in JSON, CHAP secrets sealed under the data key (a rule
    /// recorded before they were sealed holds them in clear until its next
    /// change); `None`: every initiator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<String>,
    /// Copies the volume asks for since a member holding one was removed
    /// as dead, while it has fewer (0: as many as it has); see
    /// [`VolumeRecord::copies_wanted`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub wanted: usize,
    /// New copies being filled to replace a copy on a node that stopped
    /// answering: new copy's node → the node whose copy it replaces,
    /// dropped once the new copy is in sync ([`Command::ReplaceCopy`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub replacing: BTreeMap<NodeId, NodeId>,
    /// Its snapshots, oldest first: each held by every in-sync copy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<SnapshotRecord>,
    /// For a clone: the volume and snapshot it was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<CloneOrigin>,
}

/// Where a clone of a cluster volume comes from: each of its copies is
/// made on its node from that node's copy of the snapshot, sharing its
/// unchanged data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneOrigin {
    /// The source volume's id.
    pub volume: Uuid,
    /// The snapshot's id.
    pub snapshot: Uuid,
}

fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}

/// A snapshot of a cluster volume as the state records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Stable id, the same on every copy.
    pub id: Uuid,
    /// Unique among the volume's snapshots.
    pub name: String,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// The volume's size when it was taken.
    pub size_bytes: u64,
    /// The consistency group it was taken in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// One volume's part of [`Command::RecordSnapshots`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakenSnapshot {
    /// The volume.
    pub volume: String,
    /// The epoch of the primary that took it.
    pub epoch: u64,
    /// The snapshot.
    pub snapshot: SnapshotRecord,
}

/// The whole replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ClusterState {
    /// Cluster instance id, set once at init.
    pub cluster_id: Option<Uuid>,
    /// Members by id.
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    /// Volumes by name.
    pub volumes: BTreeMap<String, VolumeRecord>,
    /// Id of the data nodes' key ([`crate::DataKey::id`]), set once; the
    /// key itself never enters the state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_key: Option<String>,
    /// The floating service address, if the cluster has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floating: Option<FloatingAddress>,
    /// The data node that holds the floating address (while its lease
    /// runs); `None` while nobody does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floating_holder: Option<NodeId>,
    /// The data node that last handed the floating address back (it was
    /// stopping), until another takes it: the leader picks it last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floating_released_by: Option<NodeId>,
    /// Members in maintenance ([`Command::SetMaintenance`]): never made
    /// primary of a volume, their copies kept out of the write path.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub maintenance: BTreeSet<NodeId>,
    /// Members removed as dead ([`Command::RemoveDeadNode`]): their ids
    /// are never members again.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub removed: BTreeSet<NodeId>,
    /// How long, in seconds, a copy on a member that stopped answering
    /// waits before the leader places another ([`Command::SetReplaceDelay`];
    /// `None`: [`DEFAULT_REPLACE_DELAY_SECS`], 0: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_delay: Option<u64>,
    /// The newest log version of any entry applied ([`Command::log_version`]):
    /// a build that reads older entries only cannot follow this log, so it
    /// may not start as a member of this cluster or join it (a downgrade
    /// past this version is refused). 0 until an entry of version 1 or
    /// newer is applied.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub required_log_version: u32,
}

/// A change to the state, proposed through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "command")]
pub enum Command {
    /// Sets the cluster id (first entry of a new cluster).
    Init { cluster_id: Uuid },
    /// Adds or updates a member.
    AddNode { info: NodeInfo },
    /// Removes a member and drops its volume copies; refused while it holds
    /// the only in-sync copy of a volume. Where it was the primary, the
    /// in-sync copy with the lowest node id takes over at the next epoch.
    RemoveNode { node: NodeId },
    /// Creates a volume with `replicas` copies on distinct data nodes.
    CreateVolume {
        id: Uuid,
        name: String,
        size_bytes: u64,
        block_size: u32,
        replicas: usize,
    },
    /// Deletes a volume.
    DeleteVolume { name: String },
    /// Grows a volume.
    ResizeVolume { name: String, size_bytes: u64 },
    /// The primary of `epoch` reports a replica's state. A report numbered
    /// `seq` (above 0) is refused unless it is above the last one applied
    /// for that replica: a report the primary gave up waiting for cannot
    /// land after a later one and undo it.
    SetReplicaState {
        volume: String,
        node: NodeId,
        state: ReplicaState,
        epoch: u64,
        #[serde(default)]
        seq: u64,
    },
    /// Makes `node` the primary at `expected_epoch + 1`; the old primary, if
    /// it is not `node`, counts as out of sync from then on.
    Promote {
        volume: String,
        node: NodeId,
        expected_epoch: u64,
    },
    /// A planned switchover: the primary at `expected_epoch`, drained (no
    /// command in flight, every copy that takes writes holding all it
    /// acknowledged), hands the volume to the in-sync copy on `node`, at
    /// `expected_epoch + 1`. Unlike [`Command::Promote`], the old primary's
    /// copy stays in sync: it misses nothing.
    ///
    /// Added after the first release: a member of an earlier version cannot
    /// read this entry (its log refuses the append and it stops following
    /// the log there), so a node proposes it only once every member has
    /// said it knows it ([`crate::LOG_VERSION`]), and [`Command::Promote`]
    /// otherwise.
    MovePrimary {
        volume: String,
        node: NodeId,
        expected_epoch: u64,
    },
    /// Places a new copy of a volume on a data node; it starts out of sync
    /// and the primary brings it up to date.
    AddReplica { volume: String, node: NodeId },
    /// Drops a copy of a volume (not the primary's: move the primary first).
    RemoveReplica { volume: String, node: NodeId },
    /// Replaces who may log in to a volume (on every node).
    SetAccess {
        volume: String,
        access: Option<String>,
    },
    /// Records which key data nodes seal secrets under (its id); the
    /// first id recorded stays.
    SetDataKey { id: String },
    /// Replaces the access rules of a volume with the same rules, their
    /// secrets now sealed, unless they changed meanwhile: `replaces` is
    /// [`access_digest`] of the rules it was made from (the old rules hold
    /// secrets in clear, so the command names them by digest only).
    ResealAccess {
        volume: String,
        replaces: String,
        access: String,
    },
    /// Sets or removes the floating service address; its holder, if any,
    /// keeps the role (and moves to the new address).
    SetFloating { floating: Option<FloatingAddress> },
    /// Makes `node` the holder of the floating address (`None`: nobody),
    /// unless the holder is no longer `expected`: the leader replaces only
    /// the holder it saw silent, and a holder hands it back only while it
    /// has it.
    HoldFloating {
        node: Option<NodeId>,
        expected: Option<NodeId>,
    },
    /// Puts a member in maintenance (`on`) or takes it out. In
    /// maintenance, a node is never made primary of a volume (by a
    /// failover, a planned switchover or the placement of a new volume),
    /// and every copy it holds of a volume it does not lead counts as out
    /// of sync from this entry on: the primaries keep it out of the write
    /// path and track what it misses, which it copies back once it is out
    /// of maintenance. A volume it still leads (put in maintenance by
    /// force) keeps it as primary.
    ///
    /// Log version 2: proposed only once every member reads it (see
    /// [`Command::MovePrimary`]).
    SetMaintenance { node: NodeId, on: bool },
    /// Snapshots the primaries of their volumes took, every in-sync copy
    /// holding them: recorded all together (a consistency group) or none,
    /// refused where a volume's epoch is no longer the one its primary
    /// took it at (that primary ended; the next one drops it) or the name
    /// is taken.
    ///
    /// Log version 3: proposed only once every member reads it (see
    /// [`Command::MovePrimary`]).
    RecordSnapshots { taken: Vec<TakenSnapshot> },
    /// Forgets a snapshot of a volume (its primary deletes it from the
    /// copies; a copy away drops it when it connects).
    ///
    /// Log version 3.
    ForgetSnapshot { volume: String, id: Uuid },
    /// Creates volume `name` as a clone of recorded snapshot `snapshot` of
    /// `source`: a copy on each node that holds one of the source, in sync
    /// where the source's copy is (it holds the snapshot), out of sync
    /// (to be copied whole by the primary) elsewhere; the source's primary
    /// leads it.
    ///
    /// Log version 3.
    CloneVolume {
        id: Uuid,
        name: String,
        source: String,
        snapshot: Uuid,
    },
    /// Removes a member that cannot leave by itself (its disk died, it is
    /// gone): its copies are dropped from every volume, which keeps asking
    /// for as many copies as it had ([`VolumeRecord::wanted`]); a volume it
    /// led goes to another in-sync copy at the next epoch. Refused while
    /// a volume has no in-sync copy on another node. Its id is recorded
    /// as removed: it never takes part again.
    ///
    /// Log version 4, as the two commands below: proposed only once every
    /// other member reads it (see [`Command::MovePrimary`]).
    RemoveDeadNode { node: NodeId },
    /// Places a new copy of `volume` on `with`, out of sync, to replace the
    /// copy on `node` (a node that stopped answering): once the new copy
    /// is in sync, the copy on `node` is dropped. Refused onto a node in
    /// maintenance or one with a copy.
    ReplaceCopy {
        volume: String,
        node: NodeId,
        with: NodeId,
    },
    /// Sets how long a copy on a member that stopped answering waits
    /// before the leader replaces it, in seconds (0: never).
    SetReplaceDelay { secs: u64 },
}

/// The SHA-256 of recorded access rules, in hex: how
/// [`Command::ResealAccess`] names the rules it replaces.
pub fn access_digest(access: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(access.as_bytes()))
}

/// Answer to a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied.
    Done,
    /// Refused; the state is unchanged.
    Refused(Refusal),
}

impl Command {
    /// The log version that brought this kind of entry ([`crate::LOG_VERSION`]
    /// lists them): a member reads it only from that version on.
    pub fn log_version(&self) -> u32 {
        match self {
            Command::Init { .. }
            | Command::AddNode { .. }
            | Command::RemoveNode { .. }
            | Command::CreateVolume { .. }
            | Command::DeleteVolume { .. }
            | Command::ResizeVolume { .. }
            | Command::SetReplicaState { .. }
            | Command::Promote { .. }
            | Command::AddReplica { .. }
            | Command::RemoveReplica { .. }
            | Command::SetAccess { .. }
            | Command::SetDataKey { .. }
            | Command::ResealAccess { .. }
            | Command::SetFloating { .. }
            | Command::HoldFloating { .. } => 0,
            Command::MovePrimary { .. } => 1,
            Command::SetMaintenance { .. } => 2,
            Command::RecordSnapshots { .. }
            | Command::ForgetSnapshot { .. }
            | Command::CloneVolume { .. } => 3,
            Command::RemoveDeadNode { .. }
            | Command::ReplaceCopy { .. }
            | Command::SetReplaceDelay { .. } => 4,
        }
    }
}

impl ClusterState {
    /// Applies one committed log entry: [`ClusterState::apply`], and,
    /// refused or not (the entry is in the log either way), its version
    /// counts towards [`ClusterState::required_log_version`].
    pub fn apply_entry(&mut self, cmd: &Command) -> Outcome {
        self.required_log_version = self.required_log_version.max(cmd.log_version());
        self.apply(cmd)
    }

    /// Applies one command; a refused one changes nothing.
    pub fn apply(&mut self, cmd: &Command) -> Outcome {
        match self.try_apply(cmd) {
            Ok(()) => Outcome::Done,
            Err(why) => Outcome::Refused(why),
        }
    }

    fn volume_mut(&mut self, name: &str) -> Result<&mut VolumeRecord, Refusal> {
        self.volumes.get_mut(name).ok_or_else(|| Refusal::NoVolume {
            name: name.to_string(),
        })
    }

    fn try_apply(&mut self, cmd: &Command) -> Result<(), Refusal> {
        match cmd {
            Command::Init { cluster_id } => {
                if self.cluster_id.is_some_and(|c| c != *cluster_id) {
                    return Err(Refusal::ClusterIdSet);
                }
                self.cluster_id = Some(*cluster_id);
            }
            Command::AddNode { info } => {
                if info.role.is_none() {
                    return Err(Refusal::NoRole { node: info.id });
                }
                if info.id == 0 {
                    return Err(Refusal::NodeIdZero);
                }
                if self.removed.contains(&info.id) {
                    return Err(Refusal::Removed { node: info.id });
                }
                if info.name.is_empty()
                    || info.name.len() > 253
                    || info.name.chars().any(char::is_control)
                {
                    return Err(Refusal::BadNodeName { node: info.id });
                }
                let addrs = [&info.cluster_addr, &info.iscsi_addr, &info.repl_addr];
                if addrs.iter().any(|a| a.len() > 255) {
                    return Err(Refusal::AddressTooLong { node: info.id });
                }
                if let Some(other) = self
                    .nodes
                    .values()
                    .find(|n| n.id != info.id && n.name == info.name)
                {
                    return Err(Refusal::NodeNameTaken {
                        other: other.id,
                        name: info.name.clone(),
                    });
                }
                if let Some(old) = self.nodes.get(&info.id) {
                    let holds = self
                        .volumes
                        .values()
                        .any(|v| v.replicas.contains_key(&old.id));
                    if holds && !info.holds_data() {
                        return Err(Refusal::HoldsCopies { node: info.id });
                    }
                }
                if self.floating_holder == Some(info.id) && !info.holds_data() {
                    self.floating_holder = None;
                }
                self.nodes.insert(info.id, info.clone());
            }
            Command::RemoveNode { node } => {
                if !self.nodes.contains_key(node) {
                    return Err(Refusal::NotMember { node: *node });
                }
                if let Some(v) = self.only_in_sync_copy_on(*node) {
                    return Err(Refusal::OnlyInSyncCopy {
                        node: *node,
                        volume: v.name.clone(),
                    });
                }
                for v in self.volumes.values_mut() {
                    v.replacing
                        .retain(|&new, &mut old| new != *node && old != *node);
                    if v.replicas.remove(node).is_none() || v.primary != *node {
                        continue;
                    }
                    // Checked above: another in-sync copy exists (none on a
                    // node in maintenance, whose copies are out of sync).
                    if let Some((&next, _)) = v
                        .replicas
                        .iter()
                        .find(|(_, st)| **st == ReplicaState::InSync)
                    {
                        v.primary = next;
                        v.epoch += 1;
                    }
                }
                self.nodes.remove(node);
                self.maintenance.remove(node);
                if self.floating_holder == Some(*node) {
                    self.floating_holder = None;
                }
            }
            Command::CreateVolume {
                id,
                name,
                size_bytes,
                block_size,
                replicas,
            } => {
                check_name(name)?;
                if self.volumes.contains_key(name) {
                    return Err(Refusal::VolumeExists { name: name.clone() });
                }
                if !(1..=MAX_REPLICAS).contains(replicas) {
                    return Err(Refusal::ReplicaCount {
                        name: name.clone(),
                        replicas: *replicas,
                    });
                }
                check_geometry(name, *size_bytes, *block_size)?;
                let placed = self.place(*replicas)?;
                // Nodes in maintenance come last in the placement: the
                // first is out of maintenance unless all are.
                let primary = placed[0];
                if self.maintenance.contains(&primary) {
                    return Err(Refusal::AllInMaintenance { name: name.clone() });
                }
                let state_of = |n: NodeId| match self.maintenance.contains(&n) {
                    true => ReplicaState::OutOfSync,
                    false => ReplicaState::InSync,
                };
                self.volumes.insert(
                    name.clone(),
                    VolumeRecord {
                        id: *id,
                        name: name.clone(),
                        size_bytes: *size_bytes,
                        block_size: *block_size,
                        replicas: placed.iter().map(|&n| (n, state_of(n))).collect(),
                        primary,
                        epoch: 1,
                        reports: BTreeMap::new(),
                        access: None,
                        wanted: 0,
                        replacing: BTreeMap::new(),
                        snapshots: Vec::new(),
                        origin: None,
                    },
                );
            }
            Command::DeleteVolume { name } => {
                let id = self
                    .volumes
                    .get(name)
                    .ok_or_else(|| Refusal::NoVolume { name: name.clone() })?
                    .id;
                let clones: Vec<&str> = self
                    .volumes
                    .values()
                    .filter(|v| v.origin.is_some_and(|o| o.volume == id))
                    .map(|v| v.name.as_str())
                    .collect();
                if !clones.is_empty() {
                    return Err(Refusal::HasClones {
                        name: name.clone(),
                        clones: clones.join(", "),
                    });
                }
                self.volumes.remove(name);
            }
            Command::CloneVolume {
                id,
                name,
                source,
                snapshot,
            } => self.clone_volume(*id, name, source, *snapshot)?,
            Command::ResizeVolume { name, size_bytes } => {
                let v = self.volume_mut(name)?;
                if *size_bytes < v.size_bytes {
                    return Err(Refusal::Shrink {
                        name: name.clone(),
                        from: v.size_bytes,
                        to: *size_bytes,
                    });
                }
                check_geometry(name, *size_bytes, v.block_size)?;
                v.size_bytes = *size_bytes;
            }
            Command::SetReplicaState {
                volume,
                node,
                state,
                epoch,
                seq,
            } => {
                let in_maintenance = self.maintenance.contains(node);
                let v = self.volume_mut(volume)?;
                if *epoch != v.epoch {
                    return Err(Refusal::StaleEpoch {
                        volume: volume.clone(),
                        epoch: *epoch,
                        current: v.epoch,
                    });
                }
                if *node == v.primary {
                    return Err(Refusal::PrimaryCopy {
                        volume: volume.clone(),
                    });
                }
                if !v.replicas.contains_key(node) {
                    return Err(Refusal::NoCopy {
                        volume: volume.clone(),
                        node: *node,
                    });
                }
                // A node in maintenance is out of the write path: no report
                // of a primary that raced the entry makes its copy in sync.
                if in_maintenance && *state != ReplicaState::OutOfSync {
                    return Err(Refusal::InMaintenance {
                        volume: volume.clone(),
                        node: *node,
                    });
                }
                let r = v.replicas.get_mut(node).expect("checked above");
                if *seq > 0 {
                    let last = v.reports.get(node).copied().unwrap_or(0);
                    if *seq <= last {
                        return Err(Refusal::ReportOvertaken {
                            volume: volume.clone(),
                            node: *node,
                            seq: *seq,
                            last,
                        });
                    }
                    v.reports.insert(*node, *seq);
                }
                *r = *state;
                self.settle_replacement(volume, *node);
            }
            Command::Promote {
                volume,
                node,
                expected_epoch,
            } => {
                let in_maintenance = self.maintenance.contains(node);
                let v = self.volume_mut(volume)?;
                check_successor(v, *node, *expected_epoch)?;
                // The primary itself may take its role up anew (after a
                // restart) while in maintenance; no other node may lead.
                if in_maintenance && v.primary != *node {
                    return Err(Refusal::InMaintenance {
                        volume: volume.clone(),
                        node: *node,
                    });
                }
                if v.primary != *node {
                    if let Some(old) = v.replicas.get_mut(&v.primary) {
                        *old = ReplicaState::OutOfSync;
                    }
                }
                v.primary = *node;
                v.epoch += 1;
            }
            Command::MovePrimary {
                volume,
                node,
                expected_epoch,
            } => {
                let in_maintenance = self.maintenance.contains(node);
                let old_in_maintenance = self.maintenance.clone();
                let v = self.volume_mut(volume)?;
                check_successor(v, *node, *expected_epoch)?;
                if v.primary == *node {
                    return Err(Refusal::AlreadyPrimary {
                        volume: volume.clone(),
                        node: *node,
                    });
                }
                if in_maintenance {
                    return Err(Refusal::InMaintenance {
                        volume: volume.clone(),
                        node: *node,
                    });
                }
                // A primary in maintenance (left there by force) that hands
                // the volume over is out of the write path from now on.
                if old_in_maintenance.contains(&v.primary) {
                    if let Some(old) = v.replicas.get_mut(&v.primary) {
                        *old = ReplicaState::OutOfSync;
                    }
                }
                v.primary = *node;
                v.epoch += 1;
            }
            Command::AddReplica { volume, node } => {
                match self.nodes.get(node) {
                    Some(n) if n.holds_data() => {}
                    Some(_) => {
                        return Err(Refusal::Witness {
                            volume: volume.clone(),
                            node: *node,
                        })
                    }
                    None => return Err(Refusal::NotMember { node: *node }),
                }
                let v = self.volume_mut(volume)?;
                if v.replicas.contains_key(node) {
                    return Err(Refusal::CopyExists {
                        volume: volume.clone(),
                        node: *node,
                    });
                }
                if v.replicas.len() >= MAX_REPLICAS {
                    return Err(Refusal::TooManyCopies {
                        volume: volume.clone(),
                    });
                }
                v.replicas.insert(*node, ReplicaState::OutOfSync);
                if v.replicas.len() >= v.wanted {
                    v.wanted = 0;
                }
            }
            Command::RemoveReplica { volume, node } => {
                let v = self.volume_mut(volume)?;
                if !v.replicas.contains_key(node) {
                    return Err(Refusal::NoCopy {
                        volume: volume.clone(),
                        node: *node,
                    });
                }
                if v.primary == *node {
                    return Err(Refusal::PrimaryNotRemovable {
                        volume: volume.clone(),
                        node: *node,
                    });
                }
                v.replicas.remove(node);
                v.replacing
                    .retain(|&new, &mut old| new != *node && old != *node);
                // Asked for: the volume keeps the copies it has now.
                v.wanted = 0;
            }
            Command::SetAccess { volume, access } => {
                self.volume_mut(volume)?.access = access.clone();
            }
            Command::ResealAccess {
                volume,
                replaces,
                access,
            } => {
                let v = self.volume_mut(volume)?;
                if v.access.as_deref().map(access_digest).as_ref() != Some(replaces) {
                    return Err(Refusal::AccessChanged {
                        volume: volume.clone(),
                    });
                }
                v.access = Some(access.clone());
            }
            Command::SetDataKey { id } => match &self.data_key {
                Some(have) if have != id => return Err(Refusal::DataKeySet),
                _ => self.data_key = Some(id.clone()),
            },
            Command::SetFloating { floating } => {
                if let Some(f) = floating {
                    f.check()?;
                }
                self.floating = floating.clone();
                if floating.is_none() {
                    self.floating_holder = None;
                    self.floating_released_by = None;
                }
            }
            Command::HoldFloating { node, expected } => {
                if self.floating.is_none() && node.is_some() {
                    return Err(Refusal::NoFloatingAddress);
                }
                if self.floating_holder != *expected {
                    return Err(Refusal::FloatingMoved {
                        holder: self.floating_holder,
                    });
                }
                if let Some(n) = node {
                    if !self.nodes.get(n).is_some_and(NodeInfo::holds_data) {
                        return Err(Refusal::NotDataNode { node: *n });
                    }
                }
                self.floating_released_by = match node {
                    None => *expected,
                    Some(_) => None,
                };
                self.floating_holder = *node;
            }
            Command::SetMaintenance { node, on } => self.set_maintenance(*node, *on)?,
            Command::RemoveDeadNode { node } => self.remove_dead(*node)?,
            Command::ReplaceCopy { volume, node, with } => {
                self.replace_copy(volume, *node, *with)?
            }
            Command::SetReplaceDelay { secs } => self.replace_delay = Some(*secs),
            Command::RecordSnapshots { taken } => self.record_snapshots(taken)?,
            Command::ForgetSnapshot { volume, id } => {
                let v = self.volume_mut(volume)?;
                let before = v.snapshots.len();
                v.snapshots.retain(|s| s.id != *id);
                if v.snapshots.len() == before {
                    return Err(Refusal::NoSnapshot {
                        volume: volume.clone(),
                        id: *id,
                    });
                }
            }
        }
        Ok(())
    }

    /// [`Command::CloneVolume`].
    fn clone_volume(
        &mut self,
        id: Uuid,
        name: &str,
        source: &str,
        snapshot: Uuid,
    ) -> Result<(), Refusal> {
        if self.volumes.contains_key(name) {
            return Err(Refusal::VolumeExists {
                name: name.to_string(),
            });
        }
        check_name(name)?;
        let src = self.volumes.get(source).ok_or_else(|| Refusal::NoVolume {
            name: source.to_string(),
        })?;
        let s = src
            .snapshots
            .iter()
            .find(|s| s.id == snapshot)
            .ok_or_else(|| Refusal::NoSnapshot {
                volume: source.to_string(),
                id: snapshot,
            })?;
        let replicas = src
            .replicas
            .iter()
            .map(|(&n, st)| {
                let held = *st == ReplicaState::InSync && !self.maintenance.contains(&n);
                let state = match held || n == src.primary {
                    true => ReplicaState::InSync,
                    false => ReplicaState::OutOfSync,
                };
                (n, state)
            })
            .collect();
        let clone = VolumeRecord {
            id,
            name: name.to_string(),
            size_bytes: s.size_bytes,
            block_size: src.block_size,
            replicas,
            primary: src.primary,
            epoch: 1,
            reports: BTreeMap::new(),
            access: src.access.clone(),
            wanted: 0,
            replacing: BTreeMap::new(),
            snapshots: Vec::new(),
            origin: Some(CloneOrigin {
                volume: src.id,
                snapshot,
            }),
        };
        self.volumes.insert(name.to_string(), clone);
        Ok(())
    }

    /// [`Command::RecordSnapshots`]: all of them or none.
    fn record_snapshots(&mut self, taken: &[TakenSnapshot]) -> Result<(), Refusal> {
        for (i, t) in taken.iter().enumerate() {
            let v = self
                .volumes
                .get(&t.volume)
                .ok_or_else(|| Refusal::NoVolume {
                    name: t.volume.clone(),
                })?;
            if t.epoch != v.epoch {
                return Err(Refusal::StaleEpoch {
                    volume: t.volume.clone(),
                    epoch: t.epoch,
                    current: v.epoch,
                });
            }
            let twice = taken[..i].iter().any(|o| o.volume == t.volume);
            if twice || v.snapshots.iter().any(|s| s.name == t.snapshot.name) {
                return Err(Refusal::SnapshotExists {
                    volume: t.volume.clone(),
                    name: t.snapshot.name.clone(),
                });
            }
        }
        for t in taken {
            self.volume_mut(&t.volume)?
                .snapshots
                .push(t.snapshot.clone());
        }
        Ok(())
    }

    /// A volume of which `node` holds the only in-sync copy, if any.
    pub fn only_in_sync_copy_on(&self, node: NodeId) -> Option<&VolumeRecord> {
        self.volumes.values().find(|v| {
            v.replicas.get(&node) == Some(&ReplicaState::InSync)
                && v.replicas
                    .iter()
                    .all(|(&n, st)| n == node || *st != ReplicaState::InSync)
        })
    }

    /// Data nodes as (in maintenance, copies held, id): those out of
    /// maintenance first, then those with the fewest copies.
    fn data_nodes_by_load(&self) -> Vec<(bool, usize, NodeId)> {
        let mut load: Vec<(bool, usize, NodeId)> = self
            .nodes
            .values()
            .filter(|i| i.holds_data())
            .map(|i| {
                let copies = self
                    .volumes
                    .values()
                    .filter(|v| v.replicas.contains_key(&i.id))
                    .count();
                (self.maintenance.contains(&i.id), copies, i.id)
            })
            .collect();
        load.sort();
        load
    }

    /// Chooses `n` distinct data nodes, those with the fewest copies first.
    fn place(&self, n: usize) -> Result<Vec<NodeId>, Refusal> {
        let load = self.data_nodes_by_load();
        if load.len() < n {
            return Err(Refusal::TooFewDataNodes {
                wanted: n,
                have: load.len(),
            });
        }
        Ok(load.into_iter().take(n).map(|(_, _, id)| id).collect())
    }

    /// The data node without a copy of `volume` that holds the fewest copies.
    pub fn place_another(&self, volume: &str) -> Result<NodeId, Refusal> {
        let v = self.volumes.get(volume).ok_or_else(|| Refusal::NoVolume {
            name: volume.to_string(),
        })?;
        self.data_nodes_by_load()
            .into_iter()
            .map(|(_, _, id)| id)
            .find(|id| !v.replicas.contains_key(id))
            .ok_or_else(|| Refusal::NoNodeLeft {
                volume: volume.to_string(),
            })
    }

    /// How many volumes `node` is the primary of.
    pub fn primaries_on(&self, node: NodeId) -> usize {
        self.volumes.values().filter(|v| v.primary == node).count()
    }

    /// The member called `name`, or with id `name`.
    pub fn find_node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes
            .values()
            .find(|i| i.name == name)
            .or_else(|| name.parse().ok().and_then(|id| self.nodes.get(&id)))
    }
}

#[cfg(test)]
mod tests;
