//! Positional storage with an explicit durability point: what a volume keeps
//! its blocks, checksums and region maps in. In service that is a file;
//! [`SimDisk`](crate::SimDisk) is a disk in memory that remembers what was
//! made durable, so a test can cut the power in-process and see what a real
//! machine could be left with.

use std::fs::File;
use std::io;

use crate::file_io;

/// Positional storage with an explicit durability point.
pub trait Backing: Send + Sync + 'static {
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Reads without waiting for a disk; `Ok(false)` means "not now".
    fn read_nowait(&self, _buf: &mut [u8], _offset: u64) -> io::Result<bool> {
        Ok(false)
    }
    /// Writes all of `buf` at `offset` (volatile until [`Backing::sync`]).
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable.
    fn sync(&self) -> io::Result<()>;
    /// Deallocates a range: it reads as zeros afterwards.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()>;
    /// The next offset at or after `offset` starting data (or a hole).
    fn seek(&self, offset: u64, data: bool) -> io::Result<Option<u64>>;
    /// Sets the length and makes it durable.
    fn set_len_durably(&self, len: u64) -> io::Result<()>;
    /// The current length in bytes.
    fn size(&self) -> io::Result<u64>;
    /// (free, total) bytes of the space behind the storage.
    fn space(&self) -> io::Result<(u64, u64)>;
}

impl Backing for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        file_io::read_at(self, buf, offset)
    }
    fn read_nowait(&self, buf: &mut [u8], offset: u64) -> io::Result<bool> {
        file_io::read_nowait(self, buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        file_io::write_at(self, buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        file_io::sync(self)
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        file_io::punch_hole(self, offset, len)
    }
    fn seek(&self, offset: u64, data: bool) -> io::Result<Option<u64>> {
        file_io::seek(self, offset, data)
    }
    fn set_len_durably(&self, len: u64) -> io::Result<()> {
        self.set_len(len)?;
        // Durability point: the new length is on disk before the metadata says so.
        self.sync_all()
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn space(&self) -> io::Result<(u64, u64)> {
        file_io::space(self)
    }
}

/// A shared backing, so a test can keep a handle on the disk it cuts.
impl<B: Backing> Backing for std::sync::Arc<B> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_at(buf, offset)
    }
    fn read_nowait(&self, buf: &mut [u8], offset: u64) -> io::Result<bool> {
        (**self).read_nowait(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_at(buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        (**self).sync()
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        (**self).punch_hole(offset, len)
    }
    fn seek(&self, offset: u64, data: bool) -> io::Result<Option<u64>> {
        (**self).seek(offset, data)
    }
    fn set_len_durably(&self, len: u64) -> io::Result<()> {
        (**self).set_len_durably(len)
    }
    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }
    fn space(&self) -> io::Result<(u64, u64)> {
        (**self).space()
    }
}
