//! Small files that must survive a crash whole: written to a temp file,
//! fsynced, renamed over the target, then the directory fsynced.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A step of a durable file operation that failed: which step, on which file.
#[derive(Debug)]
pub struct FileError {
    /// The step, e.g. "cannot sync".
    pub what: &'static str,
    /// The file or directory it was done to.
    pub path: PathBuf,
    /// What the system said.
    pub source: io::Error,
}

impl FileError {
    fn at(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FileError {
        let path = path.to_path_buf();
        move |source| FileError { what, path, source }
    }
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.what, self.path.display())
    }
}

impl std::error::Error for FileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// For callers that speak `io::Error`: the kind is kept, the message names
/// the step and the file.
impl From<FileError> for io::Error {
    fn from(e: FileError) -> io::Error {
        io::Error::new(e.source.kind(), e)
    }
}

/// Writes `bytes` to `path` so that after a crash the file holds either the
/// old or the new contents, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    write_atomic_mode(path, bytes, 0o644)
}

/// As [`write_atomic`], the file readable and writable by `mode` only (e.g.
/// 0o600 for secrets: the file never exists with wider permissions).
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    replace_with(path, mode, |f| {
        let mut f: &File = f;
        f.write_all(bytes)
    })
}

/// Replaces `path` with a file that `fill` writes from scratch, atomically:
/// `fill` gets an empty temp file beside `path` (created with `mode`), and
/// only once what it wrote is durable does the file take the real name. A
/// crash at any point leaves the old file or the complete new one. The
/// value `fill` returns may keep the file open: after the rename it is the
/// file at `path`.
pub fn replace_with<T>(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&File) -> io::Result<T>,
) -> Result<T, FileError> {
    let dir = path.parent().expect("a file path has a parent");
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(FileError::at("cannot create", &tmp))?;
    let made = fill(&f).map_err(FileError::at("cannot write", &tmp))?;
    // Durability point: the new contents are on disk before they get the real name.
    f.sync_all().map_err(FileError::at("cannot sync", &tmp))?;
    fs::rename(&tmp, path).map_err(FileError::at("cannot rename into place", path))?;
    sync_dir(dir)?;
    Ok(made)
}

/// Makes the directory entries of `dir` (creations, renames, removals) durable.
pub fn sync_dir(dir: &Path) -> Result<(), FileError> {
    // Durability point: the rename/creation is recorded in the directory itself.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(FileError::at("cannot sync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_whole_files_with_their_mode_and_names_the_failed_step() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("meta.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert!(!p.with_extension("tmp").exists());
        // A temp file left by a crash is replaced, not an obstacle.
        fs::write(p.with_extension("tmp"), b"stale").unwrap();
        let secret = dir.path().join("secret");
        write_atomic_mode(&secret, b"s", 0o600).unwrap();
        let mode = fs::metadata(&secret).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // A failed fill leaves the old contents in place.
        let e = replace_with(&p, 0o644, |_| -> io::Result<()> {
            Err(io::Error::other("full"))
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("cannot write {}", p.with_extension("tmp").display())
        );
        assert_eq!(fs::read(&p).unwrap(), b"two");

        let missing = dir.path().join("none").join("f");
        let e = io::Error::from(write_atomic(&missing, b"x").unwrap_err());
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().starts_with("cannot create"));
    }
}
