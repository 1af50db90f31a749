//! The node's event history: failovers, resyncs, volume changes, refused
//! logins and the like, as this node saw them. Each event is kept in memory
//! (the newest [`EVENT_CAP`]), written to `<data dir>/events.jsonl` by a
//! thread of its own (whoever records one only appends to a queue: the I/O
//! path never waits for the disk here), and logged as one `tracing` line
//! with the field `event=<kind>`.
//!
//! The file is a ring of two generations: once `events.jsonl` holds half
//! the cap it becomes `events.1.jsonl` (the older generation goes) and a new
//! one starts, so the files never hold more than [`EVENT_CAP`] events (about
//! 200 bytes each).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most events a node keeps, in memory and on disk.
pub const EVENT_CAP: usize = 10_000;

/// Events waiting for the writer thread; past this the newest are kept in
/// memory only (and a warning says so).
const QUEUE: usize = 4096;

/// The newer generation of the ring on disk.
const CURRENT: &str = "events.jsonl";
/// The older generation.
const PREVIOUS: &str = "events.1.jsonl";

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A volume's primary was replaced after it went silent.
    Failover,
    /// A volume's primary was handed over on purpose (move-primary, maintenance).
    PrimaryMoved,
    /// A resync of a copy started.
    ResyncStart,
    /// A resync of a copy finished: the copy is in sync again.
    ResyncEnd,
    /// A copy was recorded as missing writes.
    CopyOutOfSync,
    /// A copy was detached because its disk failed or answered too late;
    /// its primary tries it again with a growing wait.
    CopyDetached,
    /// A volume was created.
    VolumeCreate,
    /// A volume was grown.
    VolumeResize,
    /// A volume was deleted.
    VolumeDelete,
    /// A snapshot was taken.
    SnapshotCreate,
    /// A snapshot was deleted.
    SnapshotDelete,
    /// The portal refused a login.
    LoginRefused,
    /// Commands were answered MEDIUM ERROR (a checksum or disk failure).
    ChecksumError,
    /// The space behind a volume fell below its soft threshold.
    SpaceLow,
    /// The space behind a volume is above its soft threshold again.
    SpaceOk,
    /// A cluster member stopped answering, as this node sees it.
    NodeDown,
    /// A cluster member answers again, as this node sees it.
    NodeUp,
    /// A cluster member entered maintenance.
    MaintenanceEnter,
    /// A cluster member left maintenance.
    MaintenanceExit,
}

impl EventKind {
    /// Every kind, in the order documentation lists them.
    pub const ALL: [EventKind; 19] = [
        EventKind::Failover,
        EventKind::PrimaryMoved,
        EventKind::ResyncStart,
        EventKind::ResyncEnd,
        EventKind::CopyOutOfSync,
        EventKind::CopyDetached,
        EventKind::VolumeCreate,
        EventKind::VolumeResize,
        EventKind::VolumeDelete,
        EventKind::SnapshotCreate,
        EventKind::SnapshotDelete,
        EventKind::LoginRefused,
        EventKind::ChecksumError,
        EventKind::SpaceLow,
        EventKind::SpaceOk,
        EventKind::NodeDown,
        EventKind::NodeUp,
        EventKind::MaintenanceEnter,
        EventKind::MaintenanceExit,
    ];

    /// The kind's name (`event=` in the log, `kind` in JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Failover => "failover",
            EventKind::PrimaryMoved => "primary-moved",
            EventKind::ResyncStart => "resync-start",
            EventKind::ResyncEnd => "resync-end",
            EventKind::CopyOutOfSync => "copy-out-of-sync",
            EventKind::CopyDetached => "copy-detached",
            EventKind::VolumeCreate => "volume-create",
            EventKind::VolumeResize => "volume-resize",
            EventKind::VolumeDelete => "volume-delete",
            EventKind::SnapshotCreate => "snapshot-create",
            EventKind::SnapshotDelete => "snapshot-delete",
            EventKind::LoginRefused => "login-refused",
            EventKind::ChecksumError => "checksum-error",
            EventKind::SpaceLow => "space-low",
            EventKind::SpaceOk => "space-ok",
            EventKind::NodeDown => "node-down",
            EventKind::NodeUp => "node-up",
            EventKind::MaintenanceEnter => "maintenance-enter",
            EventKind::MaintenanceExit => "maintenance-exit",
        }
    }

    /// The kind named `s` (as [`EventKind::as_str`] writes it).
    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing that happened, as the history keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Its number on this node: each event's is above the one before.
    pub seq: u64,
    /// When, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// What happened.
    pub kind: EventKind,
    /// The volume it concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// The node it concerns (a copy's, a member's), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The figures of this kind (docs/events.md lists them), such as `us`
    /// (how long it took, in microseconds), `bytes`, `pause_us`.
    #[serde(default)]
    pub fields: BTreeMap<String, Value>,
}

impl Event {
    /// A new event of `kind` (numbered and timed when recorded).
    pub fn new(kind: EventKind) -> Event {
        Event {
            seq: 0,
            time_ms: 0,
            kind,
            volume: None,
            node: None,
            fields: BTreeMap::new(),
        }
    }

    /// The same, about `volume`.
    pub fn volume(mut self, volume: &str) -> Event {
        self.volume = Some(volume.to_string());
        self
    }

    /// The same, about `node`.
    pub fn node(mut self, node: &str) -> Event {
        self.node = Some(node.to_string());
        self
    }

    /// The same, with `key` set to `value`.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Event {
        self.fields.insert(key.to_string(), value.into());
        self
    }

    /// The field `key` as a whole number, when it is one.
    pub fn number(&self, key: &str) -> Option<u64> {
        self.fields.get(key).and_then(Value::as_u64)
    }

    /// The field `key` as text, when it is text.
    pub fn text(&self, key: &str) -> Option<&str> {
        self.fields.get(key).and_then(Value::as_str)
    }

    /// The fields as `key=value` pairs, in key order.
    pub fn fields_line(&self) -> String {
        self.fields
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) if !s.contains(' ') && !s.is_empty() => format!("{k}={s}"),
                v => format!("{k}={v}"),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Which events a query wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Only those numbered above this.
    pub after: Option<u64>,
    /// Only those at or after this time (milliseconds since the epoch).
    pub since_ms: Option<u64>,
    /// Only these kinds (empty: every kind).
    pub kinds: Vec<EventKind>,
    /// At most this many, the newest (oldest first still).
    pub limit: Option<usize>,
}

/// Milliseconds since the Unix epoch now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The time `since` names, in milliseconds since the epoch: a span back
/// from `now_ms` (`90s`, `10m`, `2h`, `7d`) or a UTC date and time
/// (`2026-11-30`, `2026-11-30T14:05:00Z`).
pub fn parse_since(since: &str, now_ms: u64) -> Result<u64, String> {
    let s = since.trim();
    let bad = || {
        format!(
            "since {since:?}: give a span back from now (90s, 10m, 2h, 7d) or a UTC time (2026-11-30 or 2026-11-30T14:05:00Z)"
        )
    };
    if let Some(unit) = s.chars().last().filter(|c| "smhd".contains(*c)) {
        if let Ok(n) = s[..s.len() - 1].parse::<u64>() {
            let secs = match unit {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                _ => 86_400,
            };
            return Ok(now_ms.saturating_sub(n.saturating_mul(secs * 1000)));
        }
    }
    let (date, time) = s.split_once('T').unwrap_or((s, "00:00:00Z"));
    let time = time.strip_suffix('Z').ok_or_else(bad)?;
    let num = |p: Option<&str>| p.and_then(|x| x.parse::<u64>().ok()).ok_or_else(bad);
    let mut d = date.split('-');
    let (y, m, day) = (num(d.next())?, num(d.next())?, num(d.next())?);
    let mut t = time.split(':');
    let (hh, mm, ss) = (num(t.next())?, num(t.next())?, num(t.next())?);
    if d.next().is_some()
        || t.next().is_some()
        || !(1970..=9999).contains(&y)
        || !(1..=12).contains(&m)
        || !(1..=31).contains(&day)
        || hh > 23
        || mm > 59
        || ss > 60
    {
        return Err(bad());
    }
    // Days since 1970-01-01 of a proleptic Gregorian date.
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(((days * 86_400) + hh * 3600 + mm * 60 + ss) * 1000)
}

struct Ring {
    events: VecDeque<Event>,
    next_seq: u64,
    cap: usize,
}

/// A node's event history.
pub struct EventLog {
    ring: Mutex<Ring>,
    queue: Mutex<Option<SyncSender<Event>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Resyncs under way: (volume, node) → when it started, bytes to copy.
    resyncs: Mutex<HashMap<(String, String), (Instant, u64)>>,
    /// Wakes those who follow the history.
    changed: tokio::sync::watch::Sender<u64>,
}

impl EventLog {
    /// Opens the history kept in `dir`, keeping at most [`EVENT_CAP`] events.
    pub fn open(dir: &Path) -> EventLog {
        EventLog::open_with_cap(dir, EVENT_CAP)
    }

    /// Opens the history kept in `dir`, keeping at most `cap` events (at
    /// least 2). A history that cannot be read is started anew (a warning
    /// says why); one that cannot be written is kept in memory only.
    pub fn open_with_cap(dir: &Path, cap: usize) -> EventLog {
        let cap = cap.max(2);
        let (events, current_lines) = load(dir, cap);
        let next_seq = events.back().map_or(1, |e| e.seq + 1);
        let (tx, rx) = sync_channel(QUEUE);
        let writer = {
            let dir = dir.to_path_buf();
            std::thread::Builder::new()
                .name("tandem-events".into())
                .spawn(move || write_events(dir, cap, current_lines, rx))
                .map_err(|e| tracing::warn!("event history kept in memory only: {e}"))
                .ok()
        };
        EventLog {
            ring: Mutex::new(Ring {
                events,
                next_seq,
                cap,
            }),
            queue: Mutex::new(writer.as_ref().map(|_| tx)),
            writer: Mutex::new(writer),
            resyncs: Mutex::new(HashMap::new()),
            changed: tokio::sync::watch::channel(next_seq - 1).0,
        }
    }

    /// Records `event` now: numbered, timed, kept, queued for the file and
    /// logged. Never waits for the disk.
    pub fn record(&self, mut event: Event) -> u64 {
        event.time_ms = now_ms();
        let seq = {
            let mut ring = self.ring.lock().unwrap();
            event.seq = ring.next_seq;
            ring.next_seq += 1;
            if ring.events.len() == ring.cap {
                ring.events.pop_front();
            }
            ring.events.push_back(event.clone());
            event.seq
        };
        tracing::info!(
            event = event.kind.as_str(),
            seq,
            volume = event.volume.as_deref().unwrap_or(""),
            node = event.node.as_deref().unwrap_or(""),
            fields = %event.fields_line(),
            "{}",
            event.kind
        );
        if let Some(tx) = self.queue.lock().unwrap().as_ref() {
            if let Err(TrySendError::Full(e)) = tx.try_send(event) {
                tracing::warn!(
                    seq = e.seq,
                    "event history: the writer is behind; this event is kept in memory only"
                );
            }
        }
        self.changed.send_replace(seq);
        seq
    }

    /// The events `q` asks for, oldest first.
    pub fn query(&self, q: &EventQuery) -> Vec<Event> {
        let ring = self.ring.lock().unwrap();
        let mut out: Vec<Event> = ring
            .events
            .iter()
            .filter(|e| q.after.is_none_or(|a| e.seq > a))
            .filter(|e| q.since_ms.is_none_or(|s| e.time_ms >= s))
            .filter(|e| q.kinds.is_empty() || q.kinds.contains(&e.kind))
            .cloned()
            .collect();
        if let Some(limit) = q.limit {
            let skip = out.len().saturating_sub(limit);
            out.drain(..skip);
        }
        out
    }

    /// Every event kept, oldest first.
    pub fn all(&self) -> Vec<Event> {
        self.query(&EventQuery::default())
    }

    /// Waits until an event numbered above `after` is recorded, or `for_at_most` passes.
    pub async fn wait_after(&self, after: u64, for_at_most: std::time::Duration) {
        let mut rx = self.changed.subscribe();
        let _ = tokio::time::timeout(for_at_most, rx.wait_for(|&s| s > after)).await;
    }

    /// Records that a resync of `node`'s copy of `volume` started, with
    /// `bytes` to copy.
    pub fn resync_started(&self, volume: &str, node: &str, bytes: u64) {
        self.resyncs.lock().unwrap().insert(
            (volume.to_string(), node.to_string()),
            (Instant::now(), bytes),
        );
        self.record(
            Event::new(EventKind::ResyncStart)
                .volume(volume)
                .node(node)
                .with("bytes", bytes),
        );
    }

    /// Records that `node`'s copy of `volume` is in sync again; `size` is
    /// the volume's size, to tell a full copy from an incremental one.
    /// The bytes and time are those of the resync recorded as started
    /// (none: the copy missed nothing that needed copying).
    pub fn resync_ended(&self, volume: &str, node: &str, size: u64) {
        let started = self
            .resyncs
            .lock()
            .unwrap()
            .remove(&(volume.to_string(), node.to_string()));
        let (us, bytes) = started.map_or((0, 0), |(at, bytes)| {
            (at.elapsed().as_micros() as u64, bytes)
        });
        let how = if size > 0 && bytes >= size {
            "full"
        } else {
            "incremental"
        };
        self.record(
            Event::new(EventKind::ResyncEnd)
                .volume(volume)
                .node(node)
                .with("bytes", bytes)
                .with("us", us)
                .with("how", how),
        );
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        // The writer ends once the queue closes, having written what it holds.
        self.queue.lock().unwrap().take();
        if let Some(w) = self.writer.lock().unwrap().take() {
            let _ = w.join();
        }
    }
}

/// Reads the events kept in `dir` (at most `cap`, the newest), and how many
/// lines the newer file holds.
fn load(dir: &Path, cap: usize) -> (VecDeque<Event>, usize) {
    let mut events = VecDeque::new();
    let mut current_lines = 0;
    for name in [PREVIOUS, CURRENT] {
        let path = dir.join(name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                tracing::warn!(path = %path.display(), "event history not read: {e}");
                continue;
            }
        };
        for (i, line) in BufReader::new(file).lines().enumerate() {
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(path = %path.display(), line = i + 1, "event history read up to here: {e}");
                    break;
                }
            };
            if name == CURRENT {
                current_lines += 1;
            }
            // A line cut short by a crash while it was written is skipped.
            match serde_json::from_str::<Event>(&line) {
                Ok(e) => {
                    if events.len() == cap {
                        events.pop_front();
                    }
                    events.push_back(e);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), line = i + 1, "event skipped: {e}")
                }
            }
        }
    }
    (events, current_lines)
}

/// The writer thread: appends each event to the newer file, rotating it
/// at half the cap.
fn write_events(dir: PathBuf, cap: usize, mut lines: usize, rx: Receiver<Event>) {
    let half = cap.div_ceil(2);
    let mut file: Option<File> = None;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        for e in batch {
            if lines >= half {
                file = None;
                if let Err(err) = rotate(&dir) {
                    tracing::warn!(dir = %dir.display(), "event history not rotated: {err}");
                }
                lines = 0;
            }
            if file.is_none() {
                file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join(CURRENT))
                    .map_err(|err| tracing::warn!(dir = %dir.display(), "event history not written: {err}"))
                    .ok();
            }
            let Some(f) = file.as_mut() else { continue };
            let mut line = serde_json::to_vec(&e).expect("an event serializes");
            line.push(b'\n');
            match f.write_all(&line) {
                Ok(()) => lines += 1,
                Err(err) => {
                    tracing::warn!(seq = e.seq, "event not written to the history: {err}");
                    file = None;
                }
            }
        }
        // Durable once the batch is on disk: the history survives a power cut
        // up to here.
        if let Some(f) = file.as_ref() {
            if let Err(err) = f.sync_data() {
                tracing::warn!("event history not synced: {err}");
            }
        }
    }
}

/// Makes the newer file the older one (the older one goes).
fn rotate(dir: &Path) -> std::io::Result<()> {
    std::fs::rename(dir.join(CURRENT), dir.join(PREVIOUS))?;
    // The rename is durable before the new file takes events.
    durable::sync_dir(dir).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume_created(name: &str, us: u64) -> Event {
        Event::new(EventKind::VolumeCreate)
            .volume(name)
            .with("us", us)
    }

    #[test]
    fn events_are_numbered_and_kept_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = EventLog::open(dir.path());
            assert_eq!(log.record(volume_created("a", 5)), 1);
            assert_eq!(log.record(volume_created("b", 7)), 2);
        }
        let log = EventLog::open(dir.path());
        let all = log.all();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].volume.as_deref(), Some("a"));
        assert_eq!(all[1].number("us"), Some(7));
        assert!(all[0].time_ms > 0 && all[0].time_ms <= all[1].time_ms);
        // Numbering goes on after the reopen.
        assert_eq!(log.record(volume_created("c", 1)), 3);
    }

    #[test]
    fn the_ring_keeps_the_newest_events_within_its_cap_in_memory_and_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = EventLog::open_with_cap(dir.path(), 10);
            for i in 0..25 {
                log.record(volume_created(&format!("v{i}"), i));
                assert!(log.all().len() <= 10);
            }
            let all = log.all();
            assert_eq!(all.len(), 10);
            assert_eq!(all[0].seq, 16);
            assert_eq!(all[9].seq, 25);
        }
        let lines = |name: &str| {
            std::fs::read_to_string(dir.path().join(name))
                .map(|s| s.lines().count())
                .unwrap_or(0)
        };
        // Two generations of at most half the cap each.
        assert!(lines(CURRENT) <= 5 && lines(PREVIOUS) <= 5);
        assert!(lines(CURRENT) + lines(PREVIOUS) <= 10);
        let log = EventLog::open_with_cap(dir.path(), 10);
        let all = log.all();
        assert_eq!(all.last().unwrap().seq, 25);
        assert!(all.len() >= 5, "{} kept", all.len());
        assert!(all.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
    }

    #[test]
    fn a_line_cut_short_is_skipped_and_the_rest_read() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = EventLog::open(dir.path());
            log.record(volume_created("a", 1));
            log.record(volume_created("b", 2));
        }
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(CURRENT))
            .unwrap();
        f.write_all(b"{\"seq\":3,\"time_ms\":1,\"ki").unwrap();
        drop(f);
        let log = EventLog::open(dir.path());
        assert_eq!(log.all().len(), 2);
        assert_eq!(log.record(volume_created("c", 1)), 3);
    }

    #[test]
    fn queries_filter_by_number_time_kind_and_limit() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path());
        log.record(volume_created("a", 1));
        log.record(Event::new(EventKind::NodeDown).node("b"));
        log.record(volume_created("c", 1));
        log.record(Event::new(EventKind::NodeUp).node("b"));
        let kinds = |q: &EventQuery| log.query(q).iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(
            kinds(&EventQuery {
                kinds: vec![EventKind::VolumeCreate],
                ..Default::default()
            }),
            [1, 3]
        );
        assert_eq!(
            kinds(&EventQuery {
                after: Some(2),
                ..Default::default()
            }),
            [3, 4]
        );
        assert_eq!(
            kinds(&EventQuery {
                limit: Some(3),
                ..Default::default()
            }),
            [2, 3, 4]
        );
        assert_eq!(
            kinds(&EventQuery {
                since_ms: Some(now_ms() + 60_000),
                ..Default::default()
            }),
            Vec::<u64>::new()
        );
    }

    #[test]
    fn a_resync_end_carries_the_bytes_and_time_of_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path());
        log.resync_started("vm", "b", 4 << 20);
        std::thread::sleep(std::time::Duration::from_millis(20));
        log.resync_ended("vm", "b", 1 << 30);
        log.resync_started("vm", "c", 1 << 30);
        log.resync_ended("vm", "c", 1 << 30);
        let ends = log.query(&EventQuery {
            kinds: vec![EventKind::ResyncEnd],
            ..Default::default()
        });
        assert_eq!(ends[0].number("bytes"), Some(4 << 20));
        assert!(ends[0].number("us").unwrap() >= 20_000);
        assert_eq!(ends[0].text("how"), Some("incremental"));
        assert_eq!(ends[1].text("how"), Some("full"));
    }

    #[test]
    fn since_reads_spans_back_and_utc_times() {
        let now = 1_000_000_000_000;
        assert_eq!(parse_since("90s", now), Ok(now - 90_000));
        assert_eq!(parse_since("10m", now), Ok(now - 600_000));
        assert_eq!(parse_since("2h", now), Ok(now - 7_200_000));
        assert_eq!(parse_since("7d", now), Ok(now - 604_800_000));
        assert_eq!(parse_since("1970-01-01", now), Ok(0));
        assert_eq!(
            parse_since("2000-03-01T00:00:00Z", now),
            Ok(951_868_800_000)
        );
        assert_eq!(
            parse_since("2026-11-30T14:05:09Z", now),
            Ok(1_796_047_509_000)
        );
        // The inverse of the civil time the snapshots name themselves by.
        assert_eq!(crate::utc_time(1_796_047_509), [2026, 11, 30, 14, 5, 9]);
        for bad in [
            "",
            "10x",
            "yesterday",
            "2026-13-01",
            "2026-11-30T25:00:00Z",
            "2026-11-30T14:05:00",
        ] {
            assert!(parse_since(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn kinds_read_back_by_name() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
        }
        assert_eq!(EventKind::parse("nonsense"), None);
    }
}
