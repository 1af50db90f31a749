//! The synchronous file engine behind `LocalVolume`: positional reads and
//! writes, data sync, hole punching and hole finding on one data file. Calls
//! here block; the volume runs them on tokio's blocking pool.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

/// Reads exactly `buf.len()` bytes at `offset`.
pub(crate) fn read_at(f: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    f.read_exact_at(buf, offset)
}

/// Writes all of `buf` at `offset`.
pub(crate) fn write_at(f: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    f.write_all_at(buf, offset)
}

/// Makes every completed write of the file durable.
pub(crate) fn sync(f: &File) -> io::Result<()> {
    // Durability point for volume data: fdatasync of the data file.
    f.sync_data()
}

/// Tells the kernel that `f` is read at random, a few bytes at a time: no
/// readahead. Readahead fills the page cache with large folios, and every
/// small write into a large folio then walks all of its blocks (on ext4, a
/// 32-byte write into a 2 MiB folio walks 512 buffer heads).
pub fn read_at_random(f: &File) -> io::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: posix_fadvise only reads its integer arguments; the fd is owned
    // by `f` and stays open for the duration of the call.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Deallocates `[offset, offset+len)` so it reads as zeros and takes no space;
/// writes zeros where the filesystem cannot punch holes.
pub(crate) fn punch_hole(f: &File, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    #[allow(unsafe_code)]
    // SAFETY: fallocate only reads its integer arguments; the fd is owned by `f`
    // and stays open for the duration of the call.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(err);
    }
    let zeros = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        f.write_all_at(&zeros[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// `lseek(SEEK_DATA / SEEK_HOLE)`: the next offset at or after `offset` that
/// starts data (or a hole). `Ok(None)` when there is none before the end of file.
pub(crate) fn seek(f: &File, offset: u64, data: bool) -> io::Result<Option<u64>> {
    let whence = if data {
        libc::SEEK_DATA
    } else {
        libc::SEEK_HOLE
    };
    #[allow(unsafe_code)]
    // SAFETY: lseek only reads its integer arguments; the fd is owned by `f`.
    // It moves the shared file offset, which this crate never uses (all I/O is positional).
    let rc = unsafe { libc::lseek(f.as_raw_fd(), offset as libc::off_t, whence) };
    if rc >= 0 {
        return Ok(Some(rc as u64));
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(err)
    }
}

/// Bytes free for unprivileged writers and the total size of the filesystem
/// holding `f`.
pub(crate) fn space(f: &File) -> io::Result<(u64, u64)> {
    #[allow(unsafe_code)]
    // SAFETY: fstatvfs writes into the zeroed struct we own; the fd is owned by `f`.
    let (rc, st) = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        let rc = libc::fstatvfs(f.as_raw_fd(), &mut st);
        (rc, st)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let frsize = st.f_frsize;
    Ok((st.f_bavail * frsize, st.f_blocks * frsize))
}

/// Bytes free for unprivileged writers and the total size of the filesystem
/// that holds `path` (a file or a directory).
pub fn filesystem_space(path: &std::path::Path) -> io::Result<(u64, u64)> {
    space(&File::open(path)?)
}

/// Tries to read all of `buf` at `offset` without blocking (`preadv2` with
/// `RWF_NOWAIT`): `Ok(true)` when the data came from the page cache,
/// `Ok(false)` when it would have to wait for the disk (or the kernel or
/// filesystem cannot tell), in which case the caller reads on a worker thread.
pub(crate) fn read_nowait(f: &File, buf: &mut [u8], offset: u64) -> io::Result<bool> {
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    #[allow(unsafe_code)]
    // SAFETY: the iovec points into `buf`, which is live and writable for its
    // whole length during the call; the fd is owned by `f`.
    let n = unsafe {
        libc::preadv2(
            f.as_raw_fd(),
            &iov,
            1,
            offset as libc::off_t,
            libc::RWF_NOWAIT,
        )
    };
    nowait_outcome(n, buf.len())
}

fn nowait_outcome(n: isize, want: usize) -> io::Result<bool> {
    if n >= 0 {
        return Ok(n as usize == want);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::ENOSYS) => {
            Ok(false)
        }
        _ => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nowait_reads_come_from_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        f.set_len(1 << 20).unwrap();
        let data = vec![7u8; 4096];
        write_at(&f, &data, 8192).unwrap();
        // Just written, so in the page cache: served without waiting.
        let mut back = vec![0u8; 4096];
        assert!(read_nowait(&f, &mut back, 8192).unwrap());
        assert_eq!(back, data);
        // Past the end of the file: a short read, not done.
        let mut beyond = vec![0u8; 4096];
        assert!(!read_nowait(&f, &mut beyond, (1 << 20) - 100).unwrap());
    }
}
