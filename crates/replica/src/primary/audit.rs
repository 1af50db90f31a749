//! When a primary acknowledged writes: the window an audit compares across
//! nodes.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::Primary;

/// When a primary acknowledged writes of a volume, for audits: two nodes
/// must never acknowledge writes of one volume at the same time. Times are
/// wall-clock microseconds since the Unix epoch, taken after the last check
/// that this node may still act as primary.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AckWindow {
    /// Epoch the writes were acknowledged under.
    pub epoch: u64,
    /// Writes acknowledged.
    pub writes: u64,
    /// First acknowledgement.
    pub first_us: u64,
    /// Last acknowledgement.
    pub last_us: u64,
}

#[derive(Default)]
pub(super) struct AckCounter {
    writes: AtomicU64,
    first_us: AtomicU64,
    last_us: AtomicU64,
}

impl AckCounter {
    pub(super) fn record(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1)
            .max(1);
        let _ = self
            .first_us
            .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
        self.last_us.fetch_max(now, Ordering::AcqRel);
        self.writes.fetch_add(1, Ordering::AcqRel);
    }
}

impl Primary {
    /// The writes this primary acknowledged, if any.
    pub fn acknowledged(&self) -> Option<AckWindow> {
        let writes = self.acks.writes.load(Ordering::Acquire);
        (writes > 0).then(|| AckWindow {
            epoch: self.cfg.epoch,
            writes,
            first_us: self.acks.first_us.load(Ordering::Acquire),
            last_us: self.acks.last_us.load(Ordering::Acquire),
        })
    }
}
