//! Latency histograms kept in atomics: the SCSI layer times the commands
//! of a logical unit with them, the replication link the round trips to a
//! copy. Counting takes no lock and allocates nothing, so it stays on the
//! I/O path; a [`HistogramSnapshot`] is what a scrape or a report reads.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds of the latency histogram's buckets, in nanoseconds (50 µs
/// to 10 s); slower commands fall in the last, unbounded one.
pub const LATENCY_BOUNDS_NS: [u64; 17] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A latency histogram kept in atomics: one count per bucket (not
/// cumulative), the count and the sum.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BOUNDS_NS.len() + 1],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

/// A histogram as read at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistogramSnapshot {
    /// Observations at most each bound of [`LATENCY_BOUNDS_NS`], cumulative
    /// (as Prometheus' `le` buckets are); `count` holds the `+Inf` one.
    pub cumulative: [u64; LATENCY_BOUNDS_NS.len()],
    /// Every observation.
    pub count: u64,
    /// Their sum, in nanoseconds.
    pub sum_ns: u64,
}

impl LatencyHistogram {
    /// Counts one observation of `ns` nanoseconds.
    pub fn observe(&self, ns: u64) {
        let i = LATENCY_BOUNDS_NS
            .iter()
            .position(|&b| ns <= b)
            .unwrap_or(LATENCY_BOUNDS_NS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// The histogram now. Read without a lock: an observation counted while
    /// it is read may show in one field and not yet in another.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut s = HistogramSnapshot::default();
        let mut running = 0;
        for (i, c) in s.cumulative.iter_mut().enumerate() {
            running += self.buckets[i].load(Relaxed);
            *c = running;
        }
        // Never fewer in +Inf than in the last bound.
        s.count = self.count.load(Relaxed).max(running);
        s.sum_ns = self.sum_ns.load(Relaxed);
        s
    }
}

impl HistogramSnapshot {
    /// What was observed after `earlier`, a snapshot of the same histogram
    /// taken before this one. A histogram that started again in between
    /// (fewer observations than `earlier`) gives this snapshot whole.
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        if self.count < earlier.count {
            return self.clone();
        }
        let count = self.count - earlier.count;
        let mut d = HistogramSnapshot {
            count,
            sum_ns: self.sum_ns.saturating_sub(earlier.sum_ns),
            ..Default::default()
        };
        let pairs = self.cumulative.iter().zip(earlier.cumulative);
        for (d, (now, then)) in d.cumulative.iter_mut().zip(pairs) {
            // Snapshots are read without a lock: never below zero, never
            // above the count.
            *d = now.saturating_sub(then).min(count);
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_observations_since_an_earlier_snapshot_are_the_difference() {
        let h = LatencyHistogram::default();
        h.observe(40_000);
        h.observe(3_000_000);
        let before = h.snapshot();
        h.observe(60_000);
        h.observe(20_000_000_000);
        let d = h.snapshot().since(&before);
        assert_eq!(d.count, 2);
        assert_eq!(d.sum_ns, 20_000_060_000);
        assert_eq!(d.cumulative[0], 0, "nothing new at 50 µs or below");
        assert_eq!(d.cumulative[1], 1, "the 60 µs one");
        assert_eq!(
            d.cumulative[LATENCY_BOUNDS_NS.len() - 1],
            1,
            "the 20 s one is above every bound"
        );
        let restarted = LatencyHistogram::default();
        restarted.observe(1);
        assert_eq!(restarted.snapshot().since(&before), restarted.snapshot());
    }
}
