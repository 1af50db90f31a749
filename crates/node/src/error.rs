use thiserror::Error;

use crate::{SessionInfo, Unasked};

/// `items` one after the other, separated by commas.
fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a node operation failed, in terms an administrator can act on.
#[derive(Debug, Error)]
pub enum NodeError {
    /// No volume has this name.
    #[error("volume {0} does not exist")]
    NotFound(String),
    /// The request itself is wrong (bad size, bad name, ...).
    #[error("{0}")]
    Invalid(String),
    /// The volume is in use by logged-in initiators.
    #[error(
        "volume {name} is in use by {} iSCSI session(s): {}; log them out first or delete with force",
        .sessions.len(),
        list(.sessions)
    )]
    InUse {
        name: String,
        sessions: Vec<SessionInfo>,
    },
    /// Initiators are logged in to the volume, and the operation would
    /// change its content under them.
    #[error(
        "volume {name} is in use by {} iSCSI session(s): {}; log them out first or {what} with force (which logs them out)",
        .sessions.len(),
        list(.sessions)
    )]
    Busy {
        name: String,
        sessions: Vec<SessionInfo>,
        what: &'static str,
    },
    /// Some data nodes could not be asked whether initiators are logged in
    /// to the volume through them.
    #[error(
        "volume {name}: cannot ask {} for its iSCSI sessions, so initiators may be logged in there; \
         if it is down (its sessions ended with it), delete with force",
        list(.nodes)
    )]
    SessionsUnknown { name: String, nodes: Vec<Unasked> },
    /// The local store refused the operation.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The cluster control plane failed the operation.
    #[error("cluster: {0}")]
    Cluster(String),
    /// The cluster refused the change (it conflicts with the cluster state).
    #[error("refused by the cluster: {0}")]
    Refused(String),
    /// The volume refused the operation.
    #[error("volume {name}: {source}")]
    Volume {
        name: String,
        source: volume::VolumeError,
    },
}
