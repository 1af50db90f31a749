//! One Tandem node: the local store's volumes, each bound to an iSCSI target
//! with a stable name and SCSI identity. [`Node`] is the service layer that the
//! HTTP API (and through it the CLI) calls; it holds no protocol logic.
#![forbid(unsafe_code)]

mod access;
mod clustered;
mod error;
mod event_watch;
mod events;
mod identity;
mod metrics;
mod registry;
mod report;
mod service;
mod snapshots;
mod space;

pub use access::{AccessConfig, ChapSecret};
pub use cluster::{ClusterStatus, FloatingAddress, MemberVersion};
pub use clustered::{
    AckWindow, ClusterConfig, Clustered, Maintenance, PeerState, PeerStatus, PrimaryMoved, Removed,
    Unasked, UpgradeCheck,
};
pub use error::NodeError;
pub use events::{now_ms, parse_since, Event, EventKind, EventLog, EventQuery, EVENT_CAP};
pub use identity::{iqn_for, lun_identity, validate_iqn_prefix, DEFAULT_IQN_PREFIX};
pub use metrics::{
    witness_metrics, ClusterMetrics, ClusterVolumeMetrics, MemberMetrics, Metrics, ReplicaMetrics,
    ResyncMetrics, VolumeMetrics,
};
pub use replica::{BusyPolls, PollCount};
pub use report::{
    Agility, CopyLag, Efficiency, FailoverPause, LatencyWindow, Report, Service, Timing,
    VolumeService,
};
pub use service::{Node, NodeConfig, NodeStatus, SessionInfo, VolumeInfo};
pub use snapshots::{utc_time, SnapshotDeleted, SnapshotView};
