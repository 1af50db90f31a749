use std::path::PathBuf;

use thiserror::Error;

/// Why a store operation failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// Another process holds the data directory.
    #[error("data directory {0} is in use by another tandem process")]
    Locked(PathBuf),
    /// A volume of that name exists.
    #[error("volume {0} already exists")]
    Exists(String),
    /// No volume of that name exists.
    #[error("volume {0} does not exist")]
    NotFound(String),
    /// The name cannot be used for a volume.
    #[error("volume name {name:?} is invalid: {why}")]
    InvalidName { name: String, why: &'static str },
    /// Size or block size is unusable.
    #[error("{0}")]
    InvalidSize(String),
    /// A file of the data directory could not be read or written.
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A snapshot of that name exists on the volume.
    #[error("volume {volume} already has a snapshot called {name}")]
    SnapshotExists { volume: String, name: String },
    /// No snapshot of that name exists on the volume.
    #[error("volume {volume} has no snapshot called {name}")]
    SnapshotNotFound { volume: String, name: String },
    /// Clones still read from the volume.
    #[error("volume {volume} has clones ({clones}); delete them first")]
    HasClones { volume: String, clones: String },
    /// A snapshot, clone or rollback could not be done.
    #[error("{0}")]
    Snapshot(String),
    /// A metadata file is damaged.
    #[error("metadata file {} is damaged", path.display())]
    BadMeta {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl StoreError {
    /// Whether the error means the request clashes with existing state.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            StoreError::Exists(_)
                | StoreError::SnapshotExists { .. }
                | StoreError::HasClones { .. }
        )
    }

    /// Whether the error means the request itself is malformed.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            StoreError::InvalidName { .. } | StoreError::InvalidSize(_)
        )
    }

    /// Whether the error means the volume does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            StoreError::NotFound(_) | StoreError::SnapshotNotFound { .. }
        )
    }

    pub(crate) fn io(
        what: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.to_path_buf();
        move |source| StoreError::Io { what, path, source }
    }
}
