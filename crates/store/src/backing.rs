//! What a [`LocalVolume`](crate::LocalVolume) keeps its blocks in: the
//! durability toolkit's [`Backing`], the volume's sparse files in service
//! and [`SimDisk`]s in power-cut tests.

pub use durable::{Backing, DiskFault, DiskFaults, FaultyBacking, SimDisk};
