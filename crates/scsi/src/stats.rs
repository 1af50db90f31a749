//! What a logical unit counts of the commands initiators send it: reads
//! and writes with their bytes and latencies, commands in flight, and the
//! answers an administrator watches for (CAW miscompares, reservation
//! conflicts, MEDIUM ERROR). Atomics only: counting takes no lock and
//! allocates nothing, so it stays on the I/O path.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

pub use volume::latency::{HistogramSnapshot, LatencyHistogram, LATENCY_BOUNDS_NS};

use crate::op;
use crate::sense::key;
use crate::{Response, Status};

/// The counts of one logical unit since it was made.
#[derive(Debug, Default)]
pub struct UnitStats {
    /// READ commands answered.
    pub reads: AtomicU64,
    /// WRITE commands answered.
    pub writes: AtomicU64,
    /// Bytes read successfully.
    pub read_bytes: AtomicU64,
    /// Bytes written successfully.
    pub written_bytes: AtomicU64,
    /// Latency of READ commands, from arrival at the unit to its answer.
    pub read_latency: LatencyHistogram,
    /// Latency of WRITE commands.
    pub write_latency: LatencyHistogram,
    /// Commands running now.
    pub in_flight: AtomicI64,
    /// COMPARE AND WRITE commands whose compare failed (MISCOMPARE).
    pub caw_miscompares: AtomicU64,
    /// Commands answered RESERVATION CONFLICT.
    pub reservation_conflicts: AtomicU64,
    /// Commands answered MEDIUM ERROR (a block failed its checksum, or the
    /// disk failed a read or write).
    pub medium_errors: AtomicU64,
}

/// What a command is, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Other,
}

fn kind(opcode: u8) -> Kind {
    match opcode {
        op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16 => Kind::Read,
        op::WRITE_6 | op::WRITE_10 | op::WRITE_12 | op::WRITE_16 => Kind::Write,
        _ => Kind::Other,
    }
}

/// The sense key of encoded sense data, fixed (SPC-4 4.5.3) or
/// descriptor (4.5.2) format.
fn sense_key(sense: &[u8]) -> Option<u8> {
    match sense.first()? & 0x7F {
        0x70 | 0x71 => sense.get(2).map(|b| b & 0x0F),
        0x72 | 0x73 => sense.get(1).map(|b| b & 0x0F),
        _ => None,
    }
}

/// A command being counted: counted out of flight when dropped (also when
/// the command is aborted before it answers).
pub struct Counting<'a> {
    stats: &'a UnitStats,
    kind: Kind,
    started: Instant,
}

impl Drop for Counting<'_> {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Relaxed);
    }
}

impl UnitStats {
    /// Counts a command with CDB opcode `opcode` in flight.
    pub fn begin(&self, opcode: u8) -> Counting<'_> {
        self.in_flight.fetch_add(1, Relaxed);
        Counting {
            stats: self,
            kind: kind(opcode),
            started: Instant::now(),
        }
    }

    /// Counts the answer `resp` of the command `c`; `data_out` bytes were
    /// sent with it.
    pub fn end(&self, c: Counting<'_>, data_out: usize, resp: &Response) {
        let ns = c.started.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        let good = resp.status == Status::Good;
        match c.kind {
            Kind::Read => {
                self.reads.fetch_add(1, Relaxed);
                if good {
                    self.read_bytes.fetch_add(resp.data.len() as u64, Relaxed);
                }
                self.read_latency.observe(ns);
            }
            Kind::Write => {
                self.writes.fetch_add(1, Relaxed);
                if good {
                    self.written_bytes.fetch_add(data_out as u64, Relaxed);
                }
                self.write_latency.observe(ns);
            }
            Kind::Other => {}
        }
        match resp.status {
            Status::ReservationConflict => {
                self.reservation_conflicts.fetch_add(1, Relaxed);
            }
            Status::CheckCondition => {
                match resp.sense.as_deref().and_then(sense_key) {
                    Some(key::MISCOMPARE) => self.caw_miscompares.fetch_add(1, Relaxed),
                    Some(key::MEDIUM_ERROR) => self.medium_errors.fetch_add(1, Relaxed),
                    _ => 0,
                };
            }
            _ => {}
        }
        drop(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Sense;

    fn answer(status: Status, sense: Option<Sense>, data: usize) -> Response {
        Response {
            status,
            data: vec![0; data],
            sense: sense.map(|s| s.encode(false)),
            data_out_wanted: None,
        }
    }

    #[test]
    fn reads_writes_and_their_bytes_are_counted_by_opcode() {
        let s = UnitStats::default();
        let c = s.begin(op::READ_10);
        assert_eq!(s.in_flight.load(Relaxed), 1);
        s.end(c, 0, &answer(Status::Good, None, 4096));
        let c = s.begin(op::WRITE_16);
        s.end(c, 8192, &answer(Status::Good, None, 0));
        // A failed write counts as a write, its bytes do not.
        let c = s.begin(op::WRITE_10);
        s.end(
            c,
            512,
            &answer(Status::CheckCondition, Some(Sense::WRITE_ERROR), 0),
        );
        let c = s.begin(op::INQUIRY);
        s.end(c, 0, &answer(Status::Good, None, 36));
        assert_eq!(s.reads.load(Relaxed), 1);
        assert_eq!(s.read_bytes.load(Relaxed), 4096);
        assert_eq!(s.writes.load(Relaxed), 2);
        assert_eq!(s.written_bytes.load(Relaxed), 8192);
        assert_eq!(s.medium_errors.load(Relaxed), 1);
        assert_eq!(s.in_flight.load(Relaxed), 0);
        assert_eq!(s.read_latency.snapshot().count, 1);
        assert_eq!(s.write_latency.snapshot().count, 2);
    }

    #[test]
    fn miscompares_and_conflicts_are_told_apart_in_both_sense_formats() {
        let s = UnitStats::default();
        for d_sense in [false, true] {
            let c = s.begin(op::COMPARE_AND_WRITE);
            let mut r = answer(Status::CheckCondition, None, 0);
            r.sense = Some(Sense::MISCOMPARE.encode(d_sense));
            s.end(c, 1024, &r);
        }
        let c = s.begin(op::WRITE_10);
        s.end(c, 512, &answer(Status::ReservationConflict, None, 0));
        let c = s.begin(op::TEST_UNIT_READY);
        s.end(
            c,
            0,
            &answer(Status::CheckCondition, Some(Sense::INVALID_OPCODE), 0),
        );
        assert_eq!(s.caw_miscompares.load(Relaxed), 2);
        assert_eq!(s.reservation_conflicts.load(Relaxed), 1);
        assert_eq!(s.medium_errors.load(Relaxed), 0);
    }

    #[test]
    fn an_abandoned_command_leaves_flight_without_being_counted() {
        let s = UnitStats::default();
        let c = s.begin(op::READ_16);
        assert_eq!(s.in_flight.load(Relaxed), 1);
        drop(c);
        assert_eq!(s.in_flight.load(Relaxed), 0);
        assert_eq!(s.reads.load(Relaxed), 0);
    }

    #[test]
    fn latencies_fall_in_cumulative_buckets() {
        let h = LatencyHistogram::default();
        h.observe(10_000); // 10 µs: first bucket
        h.observe(3_000_000); // 3 ms: le 5 ms
        h.observe(60_000_000_000); // a minute: only +Inf
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.sum_ns, 60_003_010_000);
        assert_eq!(s.cumulative[0], 1);
        let le_2_5ms = LATENCY_BOUNDS_NS
            .iter()
            .position(|&b| b == 2_500_000)
            .unwrap();
        assert_eq!(s.cumulative[le_2_5ms], 1);
        assert_eq!(s.cumulative[le_2_5ms + 1], 2);
        assert_eq!(*s.cumulative.last().unwrap(), 2);
    }
}
