//! What goes wrong in the control plane.

use thiserror::Error;

/// What went wrong in the control plane.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// A member could not be reached.
    #[error("cannot reach {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    /// A member does not share the cluster secret.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// A member answered with an error.
    #[error("{0}")]
    Remote(String),
    /// The cluster has no leader (no quorum).
    #[error("the cluster has no leader right now (is a majority of members up?)")]
    NoLeader,
    /// The command was refused.
    #[error("refused: {0}")]
    Refused(String),
    /// The local state could not be read or written.
    #[error("cluster state in {path}: {reason}")]
    Local { path: String, reason: String },
    /// A join token that is not one.
    #[error("the join token is not valid (expected tandem-join:<cluster id>:<secret>)")]
    BadToken,
    /// This data node does not hold the cluster's data key (yet).
    #[error("no data key here: {0}")]
    NoDataKey(String),
    /// The Raft engine failed.
    #[error("raft: {0}")]
    Raft(String),
}
