//! The durable dirty-region bitmap: which regions of a volume may hold writes
//! whose data and checksums disagree after a power cut (dm-integrity's
//! bitmap mode). A region is made durably dirty before the first write into
//! it is issued; flushes clear regions that stayed quiet; an open after an
//! unclean stop recomputes the checksums of every dirty region from the data.
//!
//! The bitmap is the durability toolkit's region map (its file layout and
//! its power-cut tests live there), marked durably, a write stream marking
//! [`AHEAD`] regions at a time.

pub(crate) use durable::{Opened, RegionMap as DirtyMap};

/// Regions marked at once ahead of a sequential write stream, so that it
/// pays one bitmap sync per this many regions instead of one per region.
pub(crate) const AHEAD: u64 = 8;
