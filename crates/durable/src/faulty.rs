//! A backing whose disk fails or slows down when a test says so: the test
//! hook for what a node does when its storage returns EIO, turns read-only,
//! fills up or answers late. Nothing in service builds one; a test wraps
//! the backings of one node's volume in it and keeps the [`DiskFaults`]
//! handle to break and heal that disk while the volume runs.
//!
//! Writes, syncs, hole punches and length changes fail as the fault says;
//! reads keep working (a disk that failed its writes still reads what it
//! holds, as a filesystem remounted read-only does). Latency is added to
//! every write and sync, on the thread that does the I/O; a slow disk
//! answers no read without waiting, so a volume does that I/O on the
//! blocking pool, never on the thread of the caller.
//!
//! By default a failed write or sync changes nothing. A disk switched with
//! [`DiskFaults::lose_unsynced`] fails as Linux's page cache does: a sync
//! that fails drops every write made since the last sync that succeeded
//! (the pages are marked clean and the error is reported once, so the next
//! sync succeeds without them: "fsyncgate"), and a write that fails may
//! leave its first part written.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::Backing;

/// How a [`FaultyBacking`]'s writes fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DiskFault {
    /// Writes and syncs succeed.
    None = 0,
    /// Writes and syncs fail with EIO, as a dying disk's.
    Eio = 1,
    /// Writes and syncs fail with EROFS, as after the filesystem was
    /// remounted read-only on an error.
    ReadOnly = 2,
    /// Writes and syncs fail with ENOSPC, as on a full filesystem.
    Full = 3,
}

impl DiskFault {
    fn from_u8(v: u8) -> DiskFault {
        match v {
            1 => DiskFault::Eio,
            2 => DiskFault::ReadOnly,
            3 => DiskFault::Full,
            _ => DiskFault::None,
        }
    }

    /// The error the operating system gives for this fault.
    fn error(self) -> Option<io::Error> {
        // Linux's numbers: EIO 5, ENOSPC 28, EROFS 30.
        let errno = match self {
            DiskFault::None => return None,
            DiskFault::Eio => 5,
            DiskFault::Full => 28,
            DiskFault::ReadOnly => 30,
        };
        Some(io::Error::from_raw_os_error(errno))
    }
}

/// The switch a test keeps to break, slow down and heal the disk behind
/// every [`FaultyBacking`] made with it.
#[derive(Debug, Default)]
pub struct DiskFaults {
    fault: AtomicU8,
    latency_us: AtomicU64,
    failed: AtomicU64,
    lose_unsynced: AtomicBool,
    /// Bytes written since [`DiskFaults::fail_a_sync_while`].
    written: AtomicU64,
    /// Whether a sync is to fail while `written` is in
    /// `fail_sync_from..fail_sync_to`.
    sync_fault_armed: AtomicBool,
    fail_sync_from: AtomicU64,
    fail_sync_to: AtomicU64,
}

impl DiskFaults {
    /// A disk that works, shared by the backings made with it.
    pub fn new() -> Arc<DiskFaults> {
        Arc::default()
    }

    /// From now on writes and syncs fail as `fault` says (`DiskFault::None`
    /// heals the disk).
    pub fn fail(&self, fault: DiskFault) {
        self.fault.store(fault as u8, Ordering::SeqCst);
    }

    /// From now on every write and sync takes `latency` longer.
    pub fn slow(&self, latency: Duration) {
        self.latency_us
            .store(latency.as_micros() as u64, Ordering::SeqCst);
    }

    /// From now on (`on`) a failed sync drops the writes made since the
    /// last sync that succeeded, and a failed write leaves its first half
    /// written, as on Linux (see the module's comment).
    pub fn lose_unsynced(&self, on: bool) {
        self.lose_unsynced.store(on, Ordering::SeqCst);
    }

    /// The first sync made while the bytes written since this call
    /// (through any backing made with this) are within `written` fails
    /// with EIO, once; writes, and the other syncs, work. A sync made
    /// beyond the range ends it.
    pub fn fail_a_sync_while(&self, written: std::ops::Range<u64>) {
        self.written.store(0, Ordering::SeqCst);
        self.fail_sync_from.store(written.start, Ordering::SeqCst);
        self.fail_sync_to.store(written.end, Ordering::SeqCst);
        self.sync_fault_armed.store(true, Ordering::SeqCst);
    }

    /// As [`DiskFaults::check`], for a sync.
    fn check_sync(&self) -> io::Result<()> {
        self.check()?;
        if !self.sync_fault_armed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let written = self.written.load(Ordering::SeqCst);
        if written < self.fail_sync_from.load(Ordering::SeqCst) {
            return Ok(());
        }
        let fails = written < self.fail_sync_to.load(Ordering::SeqCst);
        if self.sync_fault_armed.swap(false, Ordering::SeqCst) && fails {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(5));
        }
        Ok(())
    }

    fn loses_unsynced(&self) -> bool {
        self.lose_unsynced.load(Ordering::SeqCst)
    }

    /// The disk works again at full speed.
    pub fn heal(&self) {
        self.fail(DiskFault::None);
        self.slow(Duration::ZERO);
    }

    /// The fault in force.
    pub fn fault(&self) -> DiskFault {
        DiskFault::from_u8(self.fault.load(Ordering::SeqCst))
    }

    /// Operations failed so far.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::SeqCst)
    }

    /// Called before each write or sync: waits out the latency, then fails
    /// it if the disk is broken.
    fn check(&self) -> io::Result<()> {
        let us = self.latency_us.load(Ordering::SeqCst);
        if us > 0 {
            std::thread::sleep(Duration::from_micros(us));
        }
        match self.fault().error() {
            Some(e) => {
                self.failed.fetch_add(1, Ordering::SeqCst);
                Err(e)
            }
            None => Ok(()),
        }
    }
}

/// A [`Backing`] over another whose writes fail or slow down as its
/// [`DiskFaults`] say (see the module's comment).
pub struct FaultyBacking<B> {
    inner: B,
    faults: Arc<DiskFaults>,
    /// What the writes since the last sync that succeeded replaced, in
    /// order: (offset, old bytes), kept while unsynced writes can be lost.
    unsynced: Mutex<Vec<(u64, Vec<u8>)>>,
}

impl<B: Backing> FaultyBacking<B> {
    /// `inner`, broken and healed through `faults`.
    pub fn new(inner: B, faults: Arc<DiskFaults>) -> FaultyBacking<B> {
        FaultyBacking {
            inner,
            faults,
            unsynced: Mutex::new(Vec::new()),
        }
    }

    /// Remembers what `len` bytes at `offset` hold before a write changes
    /// them, so a failed sync can drop that write.
    fn keep_old(&self, offset: u64, len: usize) {
        if !self.faults.loses_unsynced() {
            return;
        }
        let mut old = vec![0; len];
        // Past the end (a file that grows) the old bytes are zeros.
        let _ = self.inner.read_at(&mut old, offset);
        self.unsynced.lock().unwrap().push((offset, old));
    }

    /// A sync failed: the writes since the last one that succeeded are
    /// gone (newest first, so the oldest bytes are what is left).
    fn drop_unsynced(&self) {
        let lost = std::mem::take(&mut *self.unsynced.lock().unwrap());
        if !self.faults.loses_unsynced() {
            return;
        }
        for (offset, old) in lost.iter().rev() {
            let _ = self.inner.write_at(old, *offset);
        }
    }

    /// The backing under the faults.
    pub fn inner(&self) -> &B {
        &self.inner
    }
}

impl<B: Backing> Backing for FaultyBacking<B> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn read_nowait(&self, buf: &mut [u8], offset: u64) -> io::Result<bool> {
        // A slow disk has nothing at hand without waiting: its users go to
        // the blocking pool for every access (a volume writes in place of
        // the caller only what it expects not to wait for).
        if self.faults.latency_us.load(Ordering::SeqCst) > 0 {
            return Ok(false);
        }
        self.inner.read_nowait(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if let Err(e) = self.faults.check() {
            if self.faults.loses_unsynced() {
                // Torn: the first half (whole 512-byte sectors) got written.
                let part = buf.len() / 2 / 512 * 512;
                if part > 0 {
                    self.keep_old(offset, part);
                    let _ = self.inner.write_at(&buf[..part], offset);
                }
            }
            return Err(e);
        }
        self.keep_old(offset, buf.len());
        self.inner.write_at(buf, offset)?;
        self.faults
            .written
            .fetch_add(buf.len() as u64, Ordering::SeqCst);
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        if let Err(e) = self.faults.check_sync() {
            self.drop_unsynced();
            return Err(e);
        }
        self.inner.sync()?;
        self.unsynced.lock().unwrap().clear();
        Ok(())
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.faults.check()?;
        self.keep_old(offset, len as usize);
        self.inner.punch_hole(offset, len)
    }
    fn seek(&self, offset: u64, data: bool) -> io::Result<Option<u64>> {
        self.inner.seek(offset, data)
    }
    fn set_len_durably(&self, len: u64) -> io::Result<()> {
        self.faults.check()?;
        self.inner.set_len_durably(len)
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn space(&self) -> io::Result<(u64, u64)> {
        self.inner.space()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SimDisk;

    #[test]
    fn writes_fail_as_the_fault_says_and_reads_go_on() {
        let faults = DiskFaults::new();
        let b = FaultyBacking::new(SimDisk::new(4096), faults.clone());
        b.write_at(b"good", 0).unwrap();
        b.sync().unwrap();
        for (fault, errno) in [
            (DiskFault::Eio, 5),
            (DiskFault::ReadOnly, 30),
            (DiskFault::Full, 28),
        ] {
            faults.fail(fault);
            assert_eq!(faults.fault(), fault);
            let e = b.write_at(b"lost", 0).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(errno), "{fault:?}");
            assert_eq!(b.sync().unwrap_err().raw_os_error(), Some(errno));
            assert!(b.punch_hole(0, 4).is_err());
            assert!(b.set_len_durably(8).is_err());
            let mut buf = [0; 4];
            b.read_at(&mut buf, 0).unwrap();
            assert_eq!(&buf, b"good", "a failed write changes nothing");
        }
        assert_eq!(faults.failed(), 12);
        faults.heal();
        b.write_at(b"back", 0).unwrap();
        b.sync().unwrap();
        let mut buf = [0; 4];
        b.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"back");
    }

    #[test]
    fn a_failed_sync_drops_the_unsynced_writes_as_linux_does() {
        let faults = DiskFaults::new();
        faults.lose_unsynced(true);
        let b = FaultyBacking::new(SimDisk::new(4096), faults.clone());
        b.write_at(b"old!", 0).unwrap();
        b.sync().unwrap();
        b.write_at(b"new!", 0).unwrap();
        b.write_at(b"more", 8).unwrap();
        faults.fail(DiskFault::Eio);
        assert!(b.sync().is_err());
        // Reported once: the next sync succeeds, without the writes.
        faults.heal();
        b.sync().unwrap();
        let mut buf = [0; 12];
        b.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"old!\0\0\0\0\0\0\0\0");
        // A failed write leaves its first half.
        faults.fail(DiskFault::Eio);
        assert!(b.write_at(&[7; 2048], 1024).is_err());
        let mut buf = [0; 2048];
        b.read_at(&mut buf, 1024).unwrap();
        assert_eq!(&buf[..1024], &[7; 1024][..]);
        assert_eq!(&buf[1024..], &[0; 1024][..]);
    }

    #[test]
    fn a_sync_fails_once_after_so_many_bytes_are_written() {
        let faults = DiskFaults::new();
        faults.lose_unsynced(true);
        let b = FaultyBacking::new(SimDisk::new(4096), faults.clone());
        faults.fail_a_sync_while(8..16);
        b.write_at(b"abcd", 0).unwrap();
        b.sync().unwrap();
        b.write_at(b"efgh", 4).unwrap();
        b.write_at(b"ijkl", 8).unwrap();
        assert!(b.sync().is_err(), "8 bytes written since: this one fails");
        assert_eq!(faults.failed(), 1);
        // Once: writes and syncs work after it, without the dropped writes.
        b.write_at(b"mnop", 12).unwrap();
        b.sync().unwrap();
        let mut buf = [0; 16];
        b.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"abcd\0\0\0\0\0\0\0\0mnop");
        // A sync beyond the range ends it without failing.
        faults.fail_a_sync_while(4..8);
        b.write_at(b"qrstuvwx", 0).unwrap();
        b.sync().unwrap();
        b.sync().unwrap();
        assert_eq!(faults.failed(), 1);
    }

    #[test]
    fn a_slow_disk_answers_late() {
        let faults = DiskFaults::new();
        let b = FaultyBacking::new(SimDisk::new(4096), faults.clone());
        faults.slow(Duration::from_millis(50));
        let mut buf = [0; 4];
        assert!(!b.read_nowait(&mut buf, 0).unwrap(), "nothing at hand");
        let t = std::time::Instant::now();
        b.write_at(b"late", 0).unwrap();
        b.sync().unwrap();
        assert!(t.elapsed() >= Duration::from_millis(100));
        faults.heal();
        let t = std::time::Instant::now();
        b.write_at(b"soon", 0).unwrap();
        assert!(t.elapsed() < Duration::from_millis(50));
    }
}
