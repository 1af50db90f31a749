//! The member's own files (`node.json`, `cluster.key`, `data.key`): each
//! is replaced whole, so a crash leaves either the old or the new content.

use std::path::Path;

use crate::ClusterError;

/// A [`ClusterError::Local`] for `path`.
pub(crate) fn local(path: &Path, e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Local {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Replaces `path` with `bytes`, readable by the owner only: written to a
/// temporary file, fsynced, renamed over `path`, the directory fsynced, so
/// the new content is durable when this returns and a crash never leaves a
/// half-written file.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ClusterError> {
    durable::write_atomic_mode(path, bytes, 0o600).map_err(|e| local(&e.path, e.source))
}
