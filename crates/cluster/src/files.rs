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
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| local(&tmp, e))?;
    f.write_all(bytes).map_err(|e| local(&tmp, e))?;
    f.sync_all().map_err(|e| local(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| local(path, e))?;
    if let Some(d) = path.parent() {
        std::fs::File::open(d)
            .and_then(|d| d.sync_all())
            .map_err(|e| local(d, e))?;
    }
    Ok(())
}
