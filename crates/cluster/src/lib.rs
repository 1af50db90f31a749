//! Tandem's control plane: which nodes are members, which volumes exist,
//! where their copies are, which copies hold every acknowledged write, and
//! which node is each volume's primary at which epoch. It lives in a Raft log
//! run by openraft over a redb database on every member; block writes never
//! pass through it.
//!
//! # Use
//!
//! [`Cluster::init`] starts a one-member cluster and returns the join token;
//! [`Cluster::join`] adds a member through any existing one (requests reach
//! the leader, which adds the node as a learner, waits until it has caught
//! up and makes it a voter: data nodes and witnesses all vote);
//! [`Cluster::open`] restarts a member from its directory after a stop or a
//! crash. [`Cluster::propose`] runs a [`Command`] through the leader,
//! [`Cluster::subscribe`] follows the applied [`ClusterState`],
//! [`Cluster::status`] reports leader, term, indexes and the leader's view of
//! who is alive, [`Cluster::leave`] removes this member.
//!
//! # Map
//!
//! | module         | what it is                                                          |
//! |----------------|---------------------------------------------------------------------|
//! | `member`       | a running member: init, join, open, leave, status, proposals        |
//! | [`state`]      | the replicated state and the commands that change it (pure)         |
//! | [`raft_store`] | Raft log, vote and applied state in `raft.redb`                     |
//! | `raft_net`     | openraft's network: Raft calls as member requests                   |
//! | `http`         | the member endpoint: Raft calls, join, leave, proposals, heartbeats |
//! | [`sessions`]   | each data node's iSCSI sessions, asked for across the cluster       |
//! | [`handover`]   | a planned switchover, asked of the volume's primary                 |
//! | [`net`]        | authenticated HTTP between members (the cluster secret)             |
//! | `lease`        | heartbeats and leases: when a member may act as primary             |
//! | `failover`     | the leader's policy: promote an in-sync copy of a silent primary    |
//! | `replace`      | the leader's policy: new copies for volumes short of copies         |
//! | `removed`      | how a member removed as dead learns it when it comes back           |
//! | [`data_key`]   | the data nodes' key, under which secrets in the state are sealed    |
//! | `status`       | what a member reports: [`ClusterStatus`]                            |
//! | `token`        | the join token                                                      |
//! | `files`        | the member's own small files, replaced atomically                   |
//! | `error`        | what goes wrong, as [`ClusterError`]                                |
//!
//! # Files
//!
//! A member's directory holds `node.json` (its [`NodeInfo`]), `cluster.key`
//! (the 32-byte cluster secret in hex, mode 0600), on a data node
//! `data.key` (the data key in hex, mode 0600, see [`data_key`]) and
//! `raft.redb` (vote, log, applied state and snapshot).
//!
//! # Join token
//!
//! `tandem-join:<cluster id>:<secret hex>`: the cluster's UUID and the 64 hex
//! digits of the secret. Whoever holds it can join, so it is handled like a
//! password. Members authenticate every call both ways with the secret (see
//! [`net`]).
//!
//! # Leases and failover
//!
//! A primary acts only while its lease runs (`lease`: heartbeats to the
//! leader, the timing, and why a lease always ends before its holder can be
//! replaced); the leader promotes an in-sync copy of a volume whose primary
//! went silent (`failover`). The timing constants are [`HEARTBEAT`],
//! [`LEASE`], [`DEAD_AFTER`] and [`ELECTION_MARGIN`].

#![forbid(unsafe_code)]
// openraft dictates its (large) storage error type; results carry it as is.
#![allow(clippy::result_large_err)]

pub mod data_key;
mod error;
mod failover;
mod files;
mod floating;
pub mod handover;
mod http;
mod lease;
mod member;
pub mod net;
mod raft_net;
pub mod raft_store;
mod removed;
mod replace;
pub mod sessions;
pub mod state;
mod status;
mod token;

pub use data_key::{DataKey, SealError};
pub use error::ClusterError;
pub use handover::{HandOverRequest, HandedOver, Handover, SnapshotRef, SnapshotRequest};
pub use lease::{DEAD_AFTER, ELECTION_MARGIN, HEARTBEAT, LEASE};
pub use member::{default_dir, Cluster};
pub use net::Key;
pub use sessions::{MemberSession, SessionSource};
pub use state::{
    access_digest, CloneOrigin, ClusterState, Command, FloatingAddress, NodeId, NodeInfo, Outcome,
    Refusal, ReplicaState, Role, Shortfall, SnapshotRecord, TakenSnapshot, VolumeRecord,
    DEFAULT_REPLACE_DELAY_SECS,
};
pub use status::{ClusterStatus, MemberEvents, MemberVersion, PendingReplacement};
pub use token::join_token;

/// The newest Raft log entries this build reads and writes, as members
/// report it in their status ([`ClusterStatus::log_version`]): 0 for the
/// first release (which does not report it), 1 with
/// [`Command::MovePrimary`], 2 with [`Command::SetMaintenance`], 3 with
/// [`Command::RecordSnapshots`], [`Command::ForgetSnapshot`] and
/// [`Command::CloneVolume`], 4 with [`Command::RemoveDeadNode`],
/// [`Command::ReplaceCopy`] and [`Command::SetReplaceDelay`]. An entry
/// a member cannot read stops it following the log, so an entry of a
/// newer version is proposed only once every member reports that version
/// ([`Cluster::log_versions`]).
pub const LOG_VERSION: u32 = 4;

use std::io::Cursor;

use openraft::BasicNode;

openraft::declare_raft_types!(
    /// Raft types of the control plane.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = BasicNode,
);
