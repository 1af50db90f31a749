//! The local block store: a data directory holding thin-provisioned volumes.
//!
//! Layout of a data directory:
//! ```text
//! tandem.lock              exclusive lock: one server per directory
//! installation.json        {"id": UUID} — root of every SCSI identity
//! volumes/<uuid>/meta.json id, name, size, block size (written last on create)
//! volumes/<uuid>/data      sparse file holding the blocks
//! volumes/<uuid>/data.crc32c  one crc32c per block (0: unwritten, reads as zeros)
//! volumes/<uuid>/data.dirty   dirty-region bitmap (1 MiB regions) and clean-stop marker
//! volumes/<uuid>.deleting  a volume being deleted (removed on next open)
//! ```
#![deny(unsafe_code)]

mod backing;
mod catalog;
mod checksum;
mod dirty_map;
mod durable;
mod error;
mod local;
mod pool;
mod snapshots;

pub use backing::{Backing, DiskFault, DiskFaults, FaultyBacking, SimDisk};
pub use catalog::{
    read_if_exists, validate_geometry, validate_name, validate_snapshot_name, Store, VolumeMeta,
};
pub use error::StoreError;
pub use local::{LocalVolume, VolumeFiles, REGION_BYTES};
pub use snapshots::{
    DirShelf, OriginRef, Shelf, SimShelf, SnapshotInfo, SnapshotSpace, GRAIN, GRAIN_SHIFT,
};
