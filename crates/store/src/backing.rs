//! What a [`LocalVolume`](crate::LocalVolume) keeps its blocks in. In
//! service that is the volume's sparse data file; [`SimDisk`] is a disk in
//! memory that remembers what was made durable, so a test can cut the power
//! in-process and see what a real machine could be left with.

use std::fs::File;
use std::io;
use std::sync::Mutex;

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

/// A disk in memory that loses, at a power cut, whatever was written after
/// the last sync, or any part of it.
pub struct SimDisk {
    state: Mutex<SimState>,
}

struct SimState {
    /// What survives a power cut for sure.
    durable: Vec<u8>,
    /// What reads see now.
    current: Vec<u8>,
    /// Writes since the last sync, in order: (offset, bytes).
    pending: Vec<(u64, Vec<u8>)>,
}

impl SimDisk {
    /// A zeroed disk of `len` bytes, all of it durable.
    pub fn new(len: u64) -> SimDisk {
        SimDisk::from_image(vec![0; len as usize])
    }

    fn from_image(image: Vec<u8>) -> SimDisk {
        SimDisk {
            state: Mutex::new(SimState {
                durable: image.clone(),
                current: image,
                pending: Vec::new(),
            }),
        }
    }

    /// Cuts the power: returns the disk as it comes back, holding what was
    /// durable plus those unsynced writes `survives(i)` picks (the i-th since
    /// the last sync), applied in order. A write can partly survive at block
    /// granularity by picking it; the caller decides the pattern.
    pub fn power_cut(&self, survives: impl Fn(usize) -> bool) -> SimDisk {
        let s = self.state.lock().unwrap();
        let mut image = s.durable.clone();
        for (i, (off, bytes)) in s.pending.iter().enumerate() {
            if survives(i) {
                let at = *off as usize;
                image[at..at + bytes.len()].copy_from_slice(bytes);
            }
        }
        SimDisk::from_image(image)
    }

    /// Flips bits of the byte at `offset`, durably and behind the back of
    /// any writer: the disk itself went bad there.
    pub fn corrupt(&self, offset: u64, mask: u8) {
        let mut s = self.state.lock().unwrap();
        let at = offset as usize;
        s.durable[at] ^= mask;
        s.current[at] ^= mask;
    }

    /// Writes since the last sync.
    pub fn unsynced(&self) -> usize {
        self.state.lock().unwrap().pending.len()
    }
}

fn range(len: usize, offset: u64, n: usize) -> io::Result<std::ops::Range<usize>> {
    let start = offset as usize;
    if offset > len as u64 || start + n > len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "beyond the end of the simulated disk",
        ));
    }
    Ok(start..start + n)
}

impl Backing for SimDisk {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let s = self.state.lock().unwrap();
        let r = range(s.current.len(), offset, buf.len())?;
        buf.copy_from_slice(&s.current[r]);
        Ok(())
    }
    fn read_nowait(&self, buf: &mut [u8], offset: u64) -> io::Result<bool> {
        // All of it is in memory: the inline paths run as over a page cache.
        self.read_at(buf, offset).map(|()| true)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut s = self.state.lock().unwrap();
        let r = range(s.current.len(), offset, buf.len())?;
        s.current[r].copy_from_slice(buf);
        s.pending.push((offset, buf.to_vec()));
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        let mut s = self.state.lock().unwrap();
        s.durable = s.current.clone();
        s.pending.clear();
        Ok(())
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_at(&vec![0; len as usize], offset)
    }
    fn seek(&self, offset: u64, data: bool) -> io::Result<Option<u64>> {
        // Everything counts as data: no holes are tracked.
        let len = self.state.lock().unwrap().current.len() as u64;
        Ok(match (data, offset < len) {
            (true, true) => Some(offset),
            (true, false) => None,
            (false, _) => Some(len),
        })
    }
    fn set_len_durably(&self, len: u64) -> io::Result<()> {
        let mut s = self.state.lock().unwrap();
        s.current.resize(len as usize, 0);
        s.durable = s.current.clone();
        s.pending.clear();
        Ok(())
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.state.lock().unwrap().current.len() as u64)
    }
    fn space(&self) -> io::Result<(u64, u64)> {
        Ok((1 << 40, 1 << 40))
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
