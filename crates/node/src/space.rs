//! What the data filesystem can hold, asked before a volume is made or grown,
//! and sizes as the messages about it show them.

use std::fs::File;
use std::path::Path;

/// A size for people: `128 MiB` when it is a whole number of a binary
/// unit, else the exact bytes (`1000 bytes`), so that no message rounds.
pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["PiB", "TiB", "GiB", "MiB", "KiB", "bytes"];
    for (i, unit) in UNITS.iter().enumerate() {
        let shift = 10 * (UNITS.len() - 1 - i) as u32;
        if shift > 0 && bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

/// The largest file the filesystem holding `dir` takes, when it is smaller
/// than `size`: found by sizing an empty (sparse) file there, which takes no
/// space, and removed again. `None` when a file of `size` fits, or when the
/// filesystem cannot be asked (the volume's own files then report it).
pub(crate) fn file_limit_below(dir: &Path, size: u64) -> Option<u64> {
    let probe = dir.join(format!(".size-probe-{}", uuid::Uuid::new_v4()));
    let file = File::create(&probe).ok()?;
    let too_large =
        |len: u64| matches!(file.set_len(len), Err(e) if e.raw_os_error() == Some(EFBIG));
    let limit = if too_large(size) {
        // The largest length the filesystem accepts, between 0 and `size`.
        let (mut ok, mut bad) = (0u64, size);
        while bad - ok > 1 {
            let mid = ok + (bad - ok) / 2;
            if too_large(mid) {
                bad = mid;
            } else {
                ok = mid;
            }
        }
        Some(ok)
    } else {
        None
    };
    drop(file);
    let _ = std::fs::remove_file(&probe);
    limit
}

/// `EFBIG`, "File too large" (Linux).
const EFBIG: i32 = 27;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_shown_in_whole_units_or_exact_bytes() {
        assert_eq!(human(128 << 20), "128 MiB");
        assert_eq!(human(1 << 30), "1 GiB");
        assert_eq!(human(3 << 29), "1536 MiB");
        assert_eq!(human(100 << 50), "100 PiB");
        assert_eq!(human(1000), "1000 bytes");
        assert_eq!(human(0), "0 bytes");
    }

    #[test]
    fn a_file_larger_than_the_filesystem_takes_is_found_before_it_is_made() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(file_limit_below(dir.path(), 1 << 30), None);
        // ext4 takes files up to 16 TiB; XFS, Btrfs and tmpfs up to 2^63 - 1
        // bytes, the largest length there is.
        if let Some(limit) = file_limit_below(dir.path(), i64::MAX as u64) {
            assert!(limit >= 1 << 30 && limit < i64::MAX as u64, "{limit}");
            assert_eq!(file_limit_below(dir.path(), limit), None);
            assert_eq!(file_limit_below(dir.path(), limit + 1), Some(limit));
        }
        // The probe is gone.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
