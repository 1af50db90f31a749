//! Small files that must survive a crash whole: written to a temp file,
//! fsynced, renamed over the target, then the directory fsynced.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::StoreError;

/// Writes `bytes` to `path` so that after a crash the file holds either the old
/// or the new contents, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    write_atomic_mode(path, bytes, 0o644)
}

/// As [`write_atomic`], the file readable and writable by `mode` only (e.g.
/// 0o600 for secrets: the file never exists with wider permissions).
pub(crate) fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    let dir = path.parent().expect("a file path has a parent");
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(StoreError::io("cannot create", &tmp))?;
    f.write_all(bytes)
        .map_err(StoreError::io("cannot write", &tmp))?;
    // Durability point: the new contents are on disk before they get the real name.
    f.sync_all().map_err(StoreError::io("cannot sync", &tmp))?;
    fs::rename(&tmp, path).map_err(StoreError::io("cannot rename into place", path))?;
    sync_dir(dir)
}

/// Makes the directory entries of `dir` (creations, renames, removals) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    // Durability point: the rename/creation is recorded in the directory itself.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("cannot sync directory", dir))
}
