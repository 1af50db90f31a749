//! How fast a resync copies: as fast as the peer takes it while no client
//! writes, held back while client writes are being served.
//!
//! The policy: the resync keeps up to [`Policy::idle_window`] chunks of
//! [`Policy::idle_chunk`] in flight while the volume sees no client write,
//! of which at most [`Policy::idle_data`] bytes of data (chunks that only
//! unmap carry none).
//! A client write acknowledged makes it yield for [`Policy::quiet`] from
//! then on: one chunk of [`Policy::busy_chunk`] in flight at a time
//! ([`Policy::busy_window`]), so a client write to the same blocks waits
//! for little, and at most [`Policy::busy_rate`] bytes a second, where a
//! chunk costs the bytes it sends as data plus [`Policy::request_cost`] for
//! every request (so that unmapping the unwritten parts of a volume is
//! cheap but not free). When the client has been quiet that long the
//! resync takes the full window again at once.

use std::time::{Duration, Instant};

/// The limits a resync keeps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Policy {
    /// Largest chunk, in bytes, while no client writes.
    pub(crate) idle_chunk: u64,
    /// Chunks in flight while no client writes.
    pub(crate) idle_window: usize,
    /// Bytes of data in flight while no client writes: no chunk starts
    /// that could take it beyond this, unless none is in flight.
    pub(crate) idle_data: u64,
    /// Largest chunk, in bytes, while client writes are being served.
    pub(crate) busy_chunk: u64,
    /// Chunks in flight while client writes are being served.
    pub(crate) busy_window: usize,
    /// Bytes a second the resync may send while client writes are being
    /// served.
    pub(crate) busy_rate: u64,
    /// What one request costs against `busy_rate`, besides its data.
    pub(crate) request_cost: u64,
    /// How long after the last client write the resync still yields.
    pub(crate) quiet: Duration,
}

/// The policy every primary uses when idle: up to 8 chunks of 4 MiB (which
/// cost less CPU per byte than smaller ones) in flight, of which 8 MiB of
/// data: many times what a 25 Gb/s link holds in a round trip, in few
/// enough buffers that the buffer pool keeps most of them (32 MiB of data
/// left it allocating and zeroing most of them again), while chunks that
/// only unmap (a sparse volume's full sync) still overlap their waits; one
/// chunk of 1 MiB and 64 MiB/s while the volume takes client writes, so the
/// resync costs the client little of the CPUs and of the link both share,
/// and still moves about 200 GiB an hour.
pub(crate) const POLICY: Policy = Policy {
    idle_chunk: 4 << 20,
    idle_window: 8,
    idle_data: 8 << 20,
    busy_chunk: 1 << 20,
    busy_window: 1,
    busy_rate: 64 << 20,
    request_cost: 64 << 10,
    quiet: Duration::from_millis(500),
};

/// The state of [`Policy`] for one running resync.
#[derive(Debug)]
pub(crate) struct Throttle {
    policy: Policy,
    /// Client writes acknowledged when last looked at.
    writes: u64,
    /// Until when the resync yields to client writes.
    busy_until: Option<Instant>,
    /// Earliest start of the next chunk under the rate limit.
    next_start: Instant,
}

impl Throttle {
    /// A throttle for a resync starting at `now`, the volume having
    /// acknowledged `writes` client writes so far.
    pub(crate) fn new(policy: Policy, now: Instant, writes: u64) -> Throttle {
        Throttle {
            policy,
            writes,
            busy_until: None,
            next_start: now,
        }
    }

    /// Takes the count of client writes acknowledged so far: any new one
    /// makes the resync yield for [`Policy::quiet`] from `now`.
    pub(crate) fn observe(&mut self, now: Instant, writes: u64) {
        if writes != self.writes {
            self.writes = writes;
            self.busy_until = Some(now + self.policy.quiet);
        }
    }

    /// Whether the resync yields to client writes at `now`.
    pub(crate) fn yielding(&self, now: Instant) -> bool {
        self.busy_until.is_some_and(|t| now < t)
    }

    /// Chunks that may be in flight at `now`.
    pub(crate) fn window(&self, now: Instant) -> usize {
        if self.yielding(now) {
            self.policy.busy_window.max(1)
        } else {
            self.policy.idle_window.max(1)
        }
    }

    /// Whether the oldest chunk must be answered before another starts at
    /// `now`, with `chunks` in flight carrying `data` bytes of data.
    pub(crate) fn full(&self, now: Instant, chunks: usize, data: u64) -> bool {
        chunks >= self.window(now)
            || (chunks > 0
                && !self.yielding(now)
                && data + self.policy.idle_chunk > self.policy.idle_data)
    }

    /// Largest chunk, in bytes, to start at `now`.
    pub(crate) fn chunk(&self, now: Instant) -> u64 {
        if self.yielding(now) {
            self.policy.busy_chunk
        } else {
            self.policy.idle_chunk
        }
    }

    /// Bytes a second the resync is held to at `now`; `None` when it is not.
    pub(crate) fn limit(&self, now: Instant) -> Option<u64> {
        self.yielding(now).then_some(self.policy.busy_rate.max(1))
    }

    /// How long the next chunk must wait at `now` under the rate limit.
    pub(crate) fn delay(&self, now: Instant) -> Duration {
        match self.limit(now) {
            Some(_) => self.next_start.saturating_duration_since(now),
            None => Duration::ZERO,
        }
    }

    /// Counts a chunk started at `now` that sent `data` bytes as data in
    /// `requests` requests. Time not used under the limit is not saved up:
    /// the limit holds from the first chunk after a pause.
    pub(crate) fn started(&mut self, now: Instant, data: u64, requests: u64) {
        let Some(rate) = self.limit(now) else {
            self.next_start = now;
            return;
        };
        let cost = data + requests * self.policy.request_cost;
        let secs = cost as f64 / rate as f64;
        self.next_start = self.next_start.max(now) + Duration::from_secs_f64(secs);
    }
}

/// Bytes a second over the last measured interval.
#[derive(Debug)]
pub(crate) struct RateMeter {
    since: Instant,
    bytes: u64,
    rate: u64,
}

/// Shortest interval a rate is measured over.
const RATE_INTERVAL: Duration = Duration::from_millis(500);

impl RateMeter {
    /// A meter started at `now`.
    pub(crate) fn new(now: Instant) -> RateMeter {
        RateMeter {
            since: now,
            bytes: 0,
            rate: 0,
        }
    }

    /// Counts `bytes` done at `now`; returns the rate of the last full
    /// interval (0 until one has passed).
    pub(crate) fn add(&mut self, now: Instant, bytes: u64) -> u64 {
        self.bytes += bytes;
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed >= RATE_INTERVAL {
            self.rate = (self.bytes as f64 / elapsed.as_secs_f64()) as u64;
            self.since = now;
            self.bytes = 0;
        }
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn idle_resync_has_the_full_window_and_no_limit() {
        let t0 = Instant::now();
        let mut t = Throttle::new(POLICY, t0, 42);
        t.observe(t0, 42);
        assert!(!t.yielding(t0));
        assert_eq!(t.window(t0), POLICY.idle_window);
        assert_eq!(t.chunk(t0), POLICY.idle_chunk);
        assert_eq!(t.limit(t0), None);
        // Chunks that only unmap fill the window; chunks of data stop at
        // the data limit, though one always goes.
        assert!(!t.full(t0, POLICY.idle_window - 1, 0));
        assert!(t.full(t0, POLICY.idle_window, 0));
        assert!(!t.full(t0, 0, 0));
        let fit = (POLICY.idle_data / POLICY.idle_chunk) as usize;
        assert!((1..POLICY.idle_window).contains(&fit));
        let carrying = |n: usize| n as u64 * POLICY.idle_chunk;
        assert!(!t.full(t0, fit - 1, carrying(fit - 1)));
        assert!(t.full(t0, fit, carrying(fit)));
        for i in 0..100 {
            let now = t0 + i * MS;
            t.started(now, 1 << 20, 1);
            assert_eq!(t.delay(now), Duration::ZERO);
        }
    }

    #[test]
    fn a_client_write_makes_it_yield_until_the_client_is_quiet() {
        let t0 = Instant::now();
        let mut t = Throttle::new(POLICY, t0, 0);
        t.observe(t0 + 10 * MS, 1);
        let busy = t0 + 10 * MS;
        assert!(t.yielding(busy));
        assert_eq!(t.window(busy), 1);
        assert!(t.full(busy, 1, 0));
        assert!(!t.full(busy, 0, 0));
        assert_eq!(t.chunk(busy), POLICY.busy_chunk);
        const { assert!(POLICY.busy_chunk < POLICY.idle_chunk) };
        assert_eq!(t.limit(busy), Some(POLICY.busy_rate));
        // The same count again is no new write: quiet counts from the last.
        t.observe(busy + 400 * MS, 1);
        assert!(t.yielding(busy + 499 * MS));
        assert!(!t.yielding(busy + POLICY.quiet));
        assert_eq!(t.window(busy + POLICY.quiet), POLICY.idle_window);
        assert_eq!(t.chunk(busy + POLICY.quiet), POLICY.idle_chunk);
        // A write later starts it again.
        t.observe(busy + 600 * MS, 2);
        assert!(t.yielding(busy + 1000 * MS));
        assert!(!t.yielding(busy + 1100 * MS));
    }

    #[test]
    fn while_yielding_chunks_are_paced_to_the_rate() {
        let policy = Policy {
            busy_rate: 10 << 20,
            request_cost: 0,
            ..POLICY
        };
        let t0 = Instant::now();
        let mut t = Throttle::new(policy, t0, 0);
        t.observe(t0, 1);
        assert_eq!(t.delay(t0), Duration::ZERO, "the first chunk goes at once");
        t.started(t0, 1 << 20, 1);
        // 1 MiB at 10 MiB/s: the next may start 100 ms later.
        let d = t.delay(t0);
        assert!(d > 99 * MS && d <= 100 * MS, "{d:?}");
        assert_eq!(t.delay(t0 + 100 * MS), Duration::ZERO);
        // Simulate a resync that always waits as told: 20 chunks of 1 MiB
        // take 2 s, whatever the rhythm it is asked at.
        let mut now = t0 + 100 * MS;
        for _ in 0..20 {
            t.observe(now, 1 + now.duration_since(t0).as_millis() as u64);
            now += t.delay(now);
            t.started(now, 1 << 20, 1);
            now += 3 * MS;
        }
        let took = now.duration_since(t0 + 100 * MS);
        assert!(
            took >= Duration::from_millis(1900) && took <= Duration::from_millis(2100),
            "{took:?}"
        );
    }

    #[test]
    fn requests_cost_even_without_data_and_pauses_are_not_saved_up() {
        let policy = Policy {
            busy_rate: 1 << 20,
            request_cost: 64 << 10,
            ..POLICY
        };
        let t0 = Instant::now();
        let mut t = Throttle::new(policy, t0, 0);
        t.observe(t0, 1);
        // An unmapped chunk: one request, no data, 1/16 s.
        t.started(t0, 0, 1);
        let d = t.delay(t0);
        assert!(d > 62 * MS && d <= 63 * MS, "{d:?}");
        // After a long pause the limit holds from the next chunk on.
        let later = t0 + 300 * MS;
        t.observe(later, 2);
        assert_eq!(t.delay(later), Duration::ZERO);
        t.started(later, 1 << 20, 1);
        assert!(t.delay(later) > Duration::from_millis(1000));
        // Once the client is quiet, nothing waits.
        let quiet = later + policy.quiet;
        assert_eq!(t.delay(quiet), Duration::ZERO);
        t.started(quiet, 1 << 20, 1);
        assert_eq!(t.delay(quiet), Duration::ZERO);
    }

    #[test]
    fn the_meter_reports_the_last_full_interval() {
        let t0 = Instant::now();
        let mut m = RateMeter::new(t0);
        assert_eq!(m.add(t0 + 100 * MS, 1 << 20), 0);
        assert_eq!(m.add(t0 + 500 * MS, 1 << 20), 4 << 20);
        // Within the next interval it still reports the last one.
        assert_eq!(m.add(t0 + 600 * MS, 100 << 20), 4 << 20);
        assert_eq!(m.add(t0 + 1000 * MS, 0), 200 << 20);
    }
}
