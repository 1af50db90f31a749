//! Small files that must survive a crash whole, replaced through the
//! durability toolkit; a failure is a [`StoreError`] naming the step and
//! the file.

use std::path::Path;

use durable::FileError;

use crate::StoreError;

impl From<FileError> for StoreError {
    fn from(e: FileError) -> StoreError {
        StoreError::Io {
            what: e.what,
            path: e.path,
            source: e.source,
        }
    }
}

/// Writes `bytes` to `path` so that after a crash the file holds either the
/// old or the new contents, never a mix.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    Ok(durable::write_atomic(path, bytes)?)
}

/// As [`write_atomic`], the file readable and writable by `mode` only.
pub(crate) fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    Ok(durable::write_atomic_mode(path, bytes, mode)?)
}

/// Makes the directory entries of `dir` (creations, renames, removals) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    Ok(durable::sync_dir(dir)?)
}
