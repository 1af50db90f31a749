//! Tandem's durability toolkit: the few ways a crate makes something
//! survive a crash, written once and tested once under a simulated power cut.
//!
//! - [`write_atomic`] / [`replace_with`]: a small file replaced whole (temp
//!   file, fsync, rename, fsync of the directory), so a crash leaves the old
//!   or the new contents, never a mix.
//! - [`blocking`]: the hop of file work that may wait on the disk onto
//!   tokio's blocking pool, so it never stalls a runtime worker.
//! - [`Backing`]: positional storage with an explicit durability point; a
//!   [`std::fs::File`] in service, a [`SimDisk`] in tests, which cuts the
//!   power in-process and shows what a real machine could be left with.
//! - [`RegionMap`]: a bitmap of fixed-size regions of a volume over a
//!   backing, in one on-disk format: the store's dirty-region bitmap, the
//!   replica's activity log and a primary's map of what each peer misses.
#![deny(unsafe_code)]

mod backing;
mod blocking;
mod faulty;
mod file_io;
mod region_map;
mod replace;
mod sim_disk;

pub use backing::Backing;
pub use blocking::blocking;
pub use faulty::{DiskFault, DiskFaults, FaultyBacking};
pub use file_io::{filesystem_space, read_at_random};
pub use region_map::{Opened, Quiet, RegionMap};
pub use replace::{replace_with, sync_dir, write_atomic, write_atomic_mode, FileError};
pub use sim_disk::{every_power_cut, SimDisk};
