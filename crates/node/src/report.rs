//! What the storage saved and how well it served: [`Node::report`]. The
//! figures come from what the node already keeps, never estimated where
//! there is nothing to go by: the volumes and snapshots in the catalog
//! (efficiency), the event history (agility, pauses, time degraded) and
//! the latency histograms and error counters the metrics read (quality of
//! service). A figure with nothing behind it is `None` ("no data yet").

use std::collections::BTreeMap;

use scsi::stats::{HistogramSnapshot, LATENCY_BOUNDS_NS};
use serde::{Deserialize, Serialize};

use crate::events::{now_ms, Event, EventKind};
use crate::Node;

/// The report of one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// When it was made, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Events the history holds, and the time of the oldest.
    pub events: usize,
    /// Time of the oldest event kept (`None`: none yet).
    pub events_since_ms: Option<u64>,
    /// Space saved.
    pub efficiency: Efficiency,
    /// How long the common operations took.
    pub agility: Agility,
    /// How well the volumes were served.
    pub service: Service,
}

/// Space the volumes take against what they present.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Efficiency {
    /// Volumes with data on this node.
    pub volumes: usize,
    /// Their size, as initiators see it.
    pub logical_bytes: u64,
    /// What their data takes on the filesystem.
    pub allocated_bytes: u64,
    /// What thin provisioning saved: logical less allocated.
    pub thin_saved_bytes: u64,
    /// Snapshots in sight.
    pub snapshots: usize,
    /// What they take on the filesystem.
    pub snapshot_bytes: u64,
    /// What they saved against one full copy of the volume's data each.
    pub snapshot_saved_bytes: u64,
    /// Clones.
    pub clones: usize,
    /// What the clones' own data takes.
    pub clone_bytes: u64,
    /// What they saved: the data of the volumes they were made from, which
    /// full copies would have duplicated (origins deleted since count 0).
    pub clone_saved_bytes: u64,
}

/// Times of one kind of operation, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    /// How many the history holds.
    pub count: usize,
    /// Median.
    pub p50_us: Option<u64>,
    /// 99th percentile.
    pub p99_us: Option<u64>,
}

/// How long the common operations took, from the event history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agility {
    /// `volume create`, as the node that made it answered.
    pub create: Timing,
    /// `volume resize`.
    pub resize: Timing,
    /// A failover: the I/O pause, from the last sign of life of the old
    /// primary to the new one serving.
    pub failover: Timing,
    /// A resync of a returning copy, start to in sync.
    pub resync: Timing,
    /// Bytes those resyncs set out to copy, all together.
    pub resync_bytes: u64,
}

/// One failover's pause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverPause {
    /// When the new primary served.
    pub time_ms: u64,
    /// The volume.
    pub volume: String,
    /// The old primary and the new one.
    pub from: String,
    /// The new primary.
    pub to: String,
    /// The I/O pause (`None`: no sign of life of the old primary was seen).
    pub pause_us: Option<u64>,
}

/// One volume's service on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeService {
    /// The volume.
    pub name: String,
    /// Milliseconds with a copy out of sync, over the history.
    pub degraded_ms: u64,
    /// Whether a copy is out of sync now (as the history has it).
    pub degraded_now: bool,
    /// Commands answered MEDIUM ERROR since the node started.
    pub medium_errors: u64,
    /// Commands answered RESERVATION CONFLICT.
    pub reservation_conflicts: u64,
    /// COMPARE AND WRITE miscompares.
    pub caw_miscompares: u64,
    /// Reads and writes answered since the node started.
    pub commands: u64,
    /// 99th percentile of read latency, in microseconds (an upper bound:
    /// the histogram's bucket); `None` without reads.
    pub read_p99_us: Option<u64>,
    /// 99th percentile of write latency, in microseconds.
    pub write_p99_us: Option<u64>,
    /// The same over the last hour.
    #[serde(default)]
    pub last_hour: LatencyWindow,
    /// The same over the last day.
    #[serde(default)]
    pub last_day: LatencyWindow,
    /// Where this node is the volume's primary: how far each other copy
    /// is behind (mirroring is synchronous, so an in-sync copy is behind by
    /// the round trip each write waits for).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replication: Vec<CopyLag>,
}

/// How far one copy of a volume is behind its primary (this node).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyLag {
    /// The node that holds it.
    pub node: String,
    /// Whether the link to it is up.
    pub connected: bool,
    /// Bytes it is known to miss (0 for a copy in sync).
    pub behind_bytes: u64,
    /// 99th percentile of the round trip of the writes sent to it since
    /// this node became primary, in microseconds (the histogram's bucket
    /// bound); `None` before the first.
    pub round_trip_p99_us: Option<u64>,
}

/// Latency percentiles of one volume over a recent window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyWindow {
    /// Seconds the window covers: its length, or less while the node has
    /// not run that long (it counts since the node started).
    pub seconds: u64,
    /// Reads and writes answered in the window.
    pub commands: u64,
    /// 99th percentile of read latency in the window, in microseconds (an
    /// upper bound: the histogram's bucket); `None` without reads.
    pub read_p99_us: Option<u64>,
    /// 99th percentile of write latency in the window.
    pub write_p99_us: Option<u64>,
}

/// How often the latency histograms are sampled for the report's windows.
pub const LATENCY_SAMPLE_EVERY_MS: u64 = 60_000;
/// Samples older than an hour are kept one per this much, up to a day.
const LATENCY_SAMPLE_COARSE_MS: u64 = 15 * 60_000;
const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;

/// One reading of every volume's latency histograms.
#[derive(Debug, Clone)]
struct LatencySample {
    time_ms: u64,
    /// Per volume: reads and their latency, writes and theirs.
    volumes: BTreeMap<String, (HistogramSnapshot, HistogramSnapshot)>,
}

/// Readings of the volumes' latency histograms over the last day, so the
/// report can give percentiles of the last hour and day: one a minute for
/// the last hour, one a quarter of an hour before that (at most about 160
/// readings, a few hundred bytes per volume each). Kept in memory: the
/// histograms themselves start again with the node.
#[derive(Debug, Default)]
pub struct LatencyHistory {
    samples: std::sync::Mutex<std::collections::VecDeque<LatencySample>>,
}

impl LatencyHistory {
    /// Whether a reading is due at `now_ms`.
    pub fn due(&self, now_ms: u64) -> bool {
        let samples = self.samples.lock().unwrap();
        samples
            .back()
            .is_none_or(|s| now_ms.saturating_sub(s.time_ms) >= LATENCY_SAMPLE_EVERY_MS)
    }

    /// Keeps a reading taken at `now_ms` and thins out the old ones.
    pub fn record(
        &self,
        now_ms: u64,
        volumes: BTreeMap<String, (HistogramSnapshot, HistogramSnapshot)>,
    ) {
        let mut samples = self.samples.lock().unwrap();
        samples.push_back(LatencySample {
            time_ms: now_ms,
            volumes,
        });
        // Older than a day and a bit: the day's window starts after them.
        while samples.len() > 1 && now_ms.saturating_sub(samples[1].time_ms) >= DAY_MS {
            samples.pop_front();
        }
        // Older than an hour: one per coarse step.
        let mut kept: std::collections::VecDeque<LatencySample> =
            std::collections::VecDeque::with_capacity(samples.len());
        for s in samples.drain(..) {
            let old = now_ms.saturating_sub(s.time_ms) > HOUR_MS;
            match kept.back() {
                Some(prev) if old && s.time_ms - prev.time_ms < LATENCY_SAMPLE_COARSE_MS => {}
                _ => kept.push_back(s),
            }
        }
        *samples = kept;
    }

    /// Percentiles of `volume` over the `window_ms` up to `now_ms`, `now`
    /// being its histograms at that moment: measured from the oldest
    /// reading at most the window old (the node's start when none is).
    pub fn window(
        &self,
        volume: &str,
        now_ms: u64,
        window_ms: u64,
        now: (&HistogramSnapshot, &HistogramSnapshot),
    ) -> LatencyWindow {
        let samples = self.samples.lock().unwrap();
        let base = samples
            .iter()
            .find(|s| now_ms.saturating_sub(s.time_ms) <= window_ms)
            .and_then(|s| Some((s.time_ms, s.volumes.get(volume)?)));
        let (reads, writes, since_ms) = match base {
            Some((t, (r, w))) => (now.0.since(r), now.1.since(w), t),
            // No reading of the volume in the window: it is newer than
            // them all, or the node just started.
            None => (
                now.0.clone(),
                now.1.clone(),
                samples
                    .front()
                    .map_or(now_ms, |s| s.time_ms.max(now_ms.saturating_sub(window_ms))),
            ),
        };
        LatencyWindow {
            seconds: now_ms.saturating_sub(since_ms) / 1000,
            commands: reads.count + writes.count,
            read_p99_us: histogram_percentile(&reads, 99.0).map(|ns| ns / 1000),
            write_p99_us: histogram_percentile(&writes, 99.0).map(|ns| ns / 1000),
        }
    }
}

/// How well the volumes were served.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Every failover in the history, oldest first.
    pub failovers: Vec<FailoverPause>,
    /// Every volume presented here, and those the history names.
    pub volumes: Vec<VolumeService>,
}

/// The `p`-th percentile (0 < p <= 100) of `values` by the nearest-rank
/// method: the smallest value at least `p` % of them are at most.
/// `None` for no values.
pub fn percentile(values: &[u64], p: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// The times of `values` as a [`Timing`].
pub fn timing(values: &[u64]) -> Timing {
    Timing {
        count: values.len(),
        p50_us: percentile(values, 50.0),
        p99_us: percentile(values, 99.0),
    }
}

/// The `p`-th percentile of a latency histogram in nanoseconds, as the
/// upper bound of the bucket it falls in; past the last bound, that bound
/// (the histogram knows no more). `None` for an empty histogram.
pub fn histogram_percentile(h: &HistogramSnapshot, p: f64) -> Option<u64> {
    if h.count == 0 {
        return None;
    }
    let rank = ((p / 100.0) * h.count as f64).ceil().max(1.0) as u64;
    let bound = h
        .cumulative
        .iter()
        .position(|&c| c >= rank)
        .map_or(LATENCY_BOUNDS_NS[LATENCY_BOUNDS_NS.len() - 1], |i| {
            LATENCY_BOUNDS_NS[i]
        });
    Some(bound)
}

/// Per volume, the milliseconds up to `now_ms` with a copy out of sync, and
/// whether one still is. A copy falls out of sync when it is recorded so or
/// when its node was the primary a failover replaced; it is back at the end
/// of its resync. Time counts once however many copies are out.
pub fn degraded(events: &[Event], now_ms: u64) -> BTreeMap<String, (u64, bool)> {
    // Per volume: the copies out of sync and since when the volume was degraded.
    let mut open: BTreeMap<String, (Vec<String>, u64)> = BTreeMap::new();
    let mut total: BTreeMap<String, u64> = BTreeMap::new();
    for e in events {
        let Some(volume) = e.volume.as_deref() else {
            continue;
        };
        let out = match e.kind {
            EventKind::CopyOutOfSync => e.node.clone(),
            EventKind::Failover => e.text("from").map(str::to_string),
            EventKind::ResyncEnd => {
                let Some((copies, since)) = open.get_mut(volume) else {
                    continue;
                };
                copies.retain(|c| Some(c) != e.node.as_ref());
                if copies.is_empty() {
                    *total.entry(volume.to_string()).or_default() +=
                        e.time_ms.saturating_sub(*since);
                    open.remove(volume);
                }
                continue;
            }
            EventKind::VolumeDelete => {
                if let Some((_, since)) = open.remove(volume) {
                    *total.entry(volume.to_string()).or_default() +=
                        e.time_ms.saturating_sub(since);
                }
                continue;
            }
            _ => continue,
        };
        let Some(copy) = out else { continue };
        let (copies, _) = open
            .entry(volume.to_string())
            .or_insert_with(|| (Vec::new(), e.time_ms));
        if !copies.contains(&copy) {
            copies.push(copy);
        }
        total.entry(volume.to_string()).or_default();
    }
    total
        .into_iter()
        .map(|(v, ms)| match open.get(&v) {
            Some((_, since)) => (v, (ms + now_ms.saturating_sub(*since), true)),
            None => (v, (ms, false)),
        })
        .collect()
}

/// The agility figures of `events`.
pub fn agility(events: &[Event]) -> Agility {
    let times = |kind: EventKind, field: &str| -> Vec<u64> {
        events
            .iter()
            .filter(|e| e.kind == kind)
            .filter_map(|e| e.number(field))
            .collect()
    };
    Agility {
        create: timing(&times(EventKind::VolumeCreate, "us")),
        resize: timing(&times(EventKind::VolumeResize, "us")),
        failover: timing(&times(EventKind::Failover, "pause_us")),
        resync: timing(&times(EventKind::ResyncEnd, "us")),
        resync_bytes: times(EventKind::ResyncEnd, "bytes").iter().sum(),
    }
}

impl Node {
    /// Reads every volume's latency histograms into the history the
    /// report's windows come from, when a reading is due.
    pub(crate) async fn sample_latency(&self) {
        let now = now_ms();
        if !self.latency.due(now) {
            return;
        }
        let volumes = self
            .each_exported(|e| {
                let s = e.lun.stats();
                (
                    e.name.clone(),
                    (s.read_latency.snapshot(), s.write_latency.snapshot()),
                )
            })
            .await
            .into_iter()
            .collect();
        self.latency.record(now, volumes);
    }

    /// The report of this node now.
    pub async fn report(&self) -> Report {
        let events = self.events.all();
        let now = now_ms();
        let metrics = self.metrics().await;
        let volumes = self.list_volumes().await;
        let mut efficiency = Efficiency::default();
        let allocated_of: BTreeMap<&str, u64> = volumes
            .iter()
            .map(|v| (v.name.as_str(), v.allocated_bytes))
            .collect();
        for v in volumes.iter().filter(|v| self.store.get(&v.name).is_some()) {
            efficiency.volumes += 1;
            efficiency.logical_bytes += v.size_bytes;
            efficiency.allocated_bytes += v.allocated_bytes;
            efficiency.snapshots += v.snapshots;
            efficiency.snapshot_bytes += v.snapshot_bytes;
            efficiency.snapshot_saved_bytes +=
                (v.snapshots as u64 * v.allocated_bytes).saturating_sub(v.snapshot_bytes);
            if let Some(origin) = &v.clone_of {
                efficiency.clones += 1;
                efficiency.clone_bytes += v.allocated_bytes;
                let source = origin.split('@').next().unwrap_or_default();
                efficiency.clone_saved_bytes += allocated_of.get(source).copied().unwrap_or(0);
            }
        }
        efficiency.thin_saved_bytes = efficiency
            .logical_bytes
            .saturating_sub(efficiency.allocated_bytes);
        let degraded = degraded(&events, now);
        let mut service = Service {
            failovers: events
                .iter()
                .filter(|e| e.kind == EventKind::Failover)
                .map(|e| FailoverPause {
                    time_ms: e.time_ms,
                    volume: e.volume.clone().unwrap_or_default(),
                    from: e.text("from").unwrap_or_default().to_string(),
                    to: e.text("to").unwrap_or_default().to_string(),
                    pause_us: e.number("pause_us"),
                })
                .collect(),
            volumes: Vec::new(),
        };
        let mut named: BTreeMap<String, VolumeService> = degraded
            .iter()
            .map(|(v, &(ms, now))| {
                (
                    v.clone(),
                    VolumeService {
                        name: v.clone(),
                        degraded_ms: ms,
                        degraded_now: now,
                        ..Default::default()
                    },
                )
            })
            .collect();
        for m in &metrics.volumes {
            let s = named
                .entry(m.name.clone())
                .or_insert_with(|| VolumeService {
                    name: m.name.clone(),
                    ..Default::default()
                });
            s.medium_errors = m.medium_errors;
            s.reservation_conflicts = m.reservation_conflicts;
            s.caw_miscompares = m.caw_miscompares;
            s.commands = m.reads + m.writes;
            s.read_p99_us = histogram_percentile(&m.read_latency, 99.0).map(|ns| ns / 1000);
            s.write_p99_us = histogram_percentile(&m.write_latency, 99.0).map(|ns| ns / 1000);
            let now_h = (&m.read_latency, &m.write_latency);
            s.last_hour = self.latency.window(&m.name, now, HOUR_MS, now_h);
            s.last_day = self.latency.window(&m.name, now, DAY_MS, now_h);
        }
        for r in metrics.cluster.iter().flat_map(|c| &c.resync) {
            let s = named
                .entry(r.volume.clone())
                .or_insert_with(|| VolumeService {
                    name: r.volume.clone(),
                    ..Default::default()
                });
            s.replication.push(CopyLag {
                node: r.node.clone(),
                connected: r.connected,
                behind_bytes: r.out_of_sync_bytes,
                round_trip_p99_us: histogram_percentile(&r.round_trips, 99.0).map(|ns| ns / 1000),
            });
        }
        service.volumes = named.into_values().collect();
        Report {
            time_ms: now,
            events: events.len(),
            events_since_ms: events.first().map(|e| e.time_ms),
            efficiency,
            agility: agility(&events),
            service,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64, e: Event) -> Event {
        Event { time_ms: ms, ..e }
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7], 50.0), Some(7));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[40, 10, 30, 20], 50.0), Some(20));
        assert_eq!(percentile(&[40, 10, 30, 20], 99.0), Some(40));
        let hundred: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(percentile(&hundred, 50.0), Some(50));
        assert_eq!(percentile(&hundred, 99.0), Some(99));
        assert_eq!(percentile(&hundred, 100.0), Some(100));
        let t = timing(&[5, 1, 3]);
        assert_eq!((t.count, t.p50_us, t.p99_us), (3, Some(3), Some(5)));
    }

    #[test]
    fn histogram_percentiles_are_the_bound_of_their_bucket() {
        let empty = HistogramSnapshot::default();
        assert_eq!(histogram_percentile(&empty, 99.0), None);
        // 98 commands at most 50 µs, 2 at most 1 ms.
        let mut h = HistogramSnapshot::default();
        for (i, c) in h.cumulative.iter_mut().enumerate() {
            *c = if LATENCY_BOUNDS_NS[i] < 1_000_000 {
                98
            } else {
                100
            };
        }
        h.count = 100;
        assert_eq!(histogram_percentile(&h, 50.0), Some(50_000));
        assert_eq!(histogram_percentile(&h, 98.0), Some(50_000));
        assert_eq!(histogram_percentile(&h, 99.0), Some(1_000_000));
        // Past the last bound: the last bound.
        let slow = HistogramSnapshot {
            count: 3,
            ..Default::default()
        };
        assert_eq!(
            histogram_percentile(&slow, 99.0),
            Some(LATENCY_BOUNDS_NS[LATENCY_BOUNDS_NS.len() - 1])
        );
    }

    #[test]
    fn degraded_time_counts_overlapping_copies_once_and_the_open_interval_to_now() {
        let out = |v: &str, n: &str| Event::new(EventKind::CopyOutOfSync).volume(v).node(n);
        let back = |v: &str, n: &str| Event::new(EventKind::ResyncEnd).volume(v).node(n);
        let failover = Event::new(EventKind::Failover)
            .volume("b")
            .with("from", "n1")
            .with("to", "n2");
        let events = vec![
            at(1_000, out("a", "n2")),
            at(2_000, out("a", "n3")),
            at(3_000, back("a", "n2")),
            at(5_000, back("a", "n3")),
            at(6_000, failover),
            at(7_000, out("a", "n2")),
            at(7_500, back("a", "n2")),
            // A resync of a copy never recorded out of sync changes nothing.
            at(8_000, back("c", "n2")),
        ];
        let d = degraded(&events, 10_000);
        assert_eq!(d["a"], (4_000 + 500, false));
        assert_eq!(d["b"], (4_000, true));
        assert!(!d.contains_key("c"));
    }

    #[test]
    fn latency_windows_count_what_came_after_the_oldest_reading_in_them() {
        let h = scsi::stats::LatencyHistogram::default();
        let w = scsi::stats::LatencyHistogram::default();
        let history = LatencyHistory::default();
        let reading = |h: &scsi::stats::LatencyHistogram, w: &scsi::stats::LatencyHistogram| {
            BTreeMap::from([("vm".to_string(), (h.snapshot(), w.snapshot()))])
        };
        // Slow reads a day and a half ago, then a reading a minute for two
        // days: the old readings are thinned to one a quarter hour.
        for _ in 0..100 {
            h.observe(2_000_000_000);
        }
        let start = 10 * DAY_MS;
        let mut t = start;
        while t <= start + 2 * DAY_MS {
            if t == start + DAY_MS / 2 {
                for _ in 0..100 {
                    h.observe(2_000_000_000);
                }
            }
            if t == start + 2 * DAY_MS - HOUR_MS / 2 {
                for _ in 0..1000 {
                    h.observe(40_000);
                    w.observe(300_000);
                }
            }
            assert!(history.due(t));
            history.record(t, reading(&h, &w));
            assert!(!history.due(t + LATENCY_SAMPLE_EVERY_MS - 1));
            t += LATENCY_SAMPLE_EVERY_MS;
        }
        let now = t - LATENCY_SAMPLE_EVERY_MS;
        let kept = history.samples.lock().unwrap().len();
        assert!((140..=160).contains(&kept), "{kept} readings kept");
        let (r, wr) = (h.snapshot(), w.snapshot());
        let hour = history.window("vm", now, HOUR_MS, (&r, &wr));
        assert_eq!(hour.seconds, 3600);
        assert_eq!(hour.commands, 2000, "only the last half hour's");
        assert_eq!(hour.read_p99_us, Some(50));
        assert_eq!(hour.write_p99_us, Some(500));
        let day = history.window("vm", now, DAY_MS, (&r, &wr));
        assert!(
            day.seconds <= 86_400 && day.seconds > 86_400 - 15 * 60,
            "{day:?}"
        );
        assert_eq!(day.commands, 2000, "the slow reads are older than a day");
        assert_eq!(day.read_p99_us, Some(50));
        // A volume no reading knows: everything its histograms hold.
        let fresh = history.window("new", now, HOUR_MS, (&r, &wr));
        assert_eq!(fresh.commands, r.count + wr.count);
        // No reading at all yet: since the node started.
        let empty = LatencyHistory::default();
        assert_eq!(empty.window("vm", now, HOUR_MS, (&r, &wr)).seconds, 0);
    }

    #[test]
    fn agility_reads_the_times_of_each_kind() {
        let created = |ms: u64| Event::new(EventKind::VolumeCreate).with("us", ms);
        let events = vec![
            created(10),
            created(30),
            created(20),
            Event::new(EventKind::Failover).with("pause_us", 1800u64),
            // A failover whose pause is unknown is not counted as 0.
            Event::new(EventKind::Failover),
            Event::new(EventKind::ResyncEnd)
                .with("us", 250u64)
                .with("bytes", 4096u64),
            Event::new(EventKind::ResyncEnd)
                .with("us", 150u64)
                .with("bytes", 1024u64),
        ];
        let a = agility(&events);
        assert_eq!(a.create.count, 3);
        assert_eq!(a.create.p50_us, Some(20));
        assert_eq!(a.create.p99_us, Some(30));
        assert_eq!(a.failover.count, 1);
        assert_eq!(a.failover.p50_us, Some(1800));
        assert_eq!(a.resync.p99_us, Some(250));
        assert_eq!(a.resync.p50_us, Some(150));
        assert_eq!(a.resync_bytes, 5120);
        assert_eq!(a.resize, Timing::default());
    }
}
