use thiserror::Error;

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
    #[error("volume {name} is in use by {sessions} iSCSI session(s); log them out first or delete with force")]
    InUse { name: String, sessions: usize },
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
