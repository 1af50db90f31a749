//! Initiators for scenarios that fault the cluster, in the manner of
//! Jepsen's clients. Each writer reconnects as soon as its connection or
//! login fails (as a multipath initiator retries its paths), writes numbered
//! blocks (see `testkit::history`) in three ways — FUA; plain, made durable
//! by a later SYNCHRONIZE CACHE on the same session; plain and never synced
//! — and records what it issued, what the target acknowledged, and when.
//!
//! Writers own disjoint extents, so the history of each block is that of one
//! sequential writer. A write whose answer never came (connection lost or
//! timed out) may still be applied later, so a writer that picks extents at
//! random never writes that extent again: a late write could otherwise land
//! over a newer acknowledged one and look like a lost write.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use testkit::history::{block, History};
use testkit::{rw16, Initiator, Outcome};

use super::cluster::{BLOCK, EXTENT};
use super::log::now_us;
use super::node_prefix;

/// SYNCHRONIZE CACHE (10) of the whole volume (SBC-4 5.24).
const SYNC_CACHE: [u8; 10] = [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// How a writer picks the extents it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Every write goes to an extent not written before, in order from the
    /// start of the range: no later write can hide a lost one.
    Fresh,
    /// Random extents of the range.
    Random,
}

/// What a writer sends, as weights.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    /// WRITE (16) with FUA: durable once acknowledged.
    pub fua: u32,
    /// WRITE (16) without FUA: durable once a later SYNCHRONIZE CACHE on
    /// the same session returned GOOD.
    pub plain: u32,
    /// SYNCHRONIZE CACHE (10).
    pub sync: u32,
}

impl Mix {
    /// FUA writes only.
    pub const FUA: Mix = Mix {
        fua: 1,
        plain: 0,
        sync: 0,
    };
    /// FUA writes, plain writes and cache flushes.
    pub const MIXED: Mix = Mix {
        fua: 2,
        plain: 2,
        sync: 1,
    };
}

/// Settings of one writer.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Volume written.
    pub volume: String,
    /// Portals, one per connection in turn.
    pub portals: Vec<SocketAddr>,
    /// The extents this writer owns (of [`EXTENT`] blocks each).
    pub extents: Range<u64>,
    /// How extents are picked.
    pub pick: Pick,
    /// What is sent.
    pub mix: Mix,
    /// Limit for connecting and logging in.
    pub login_timeout: Duration,
    /// Limit for one command; a command unanswered by then is abandoned
    /// with its connection.
    pub io_timeout: Duration,
    /// Pause before the next connection after one failed.
    pub reconnect_pause: Duration,
    /// Pause before retrying a command refused with "access state transition".
    pub transition_pause: Duration,
    /// Retries after "access state transition" before the writer gives up
    /// the command and reconnects.
    pub transition_retries: u32,
    /// Seed of the writer's choices.
    pub seed: u64,
}

impl LoadConfig {
    /// FUA writes to fresh extents through `portal`, reconnecting every
    /// couple of milliseconds, with short limits: an initiator that finds a
    /// restarting node's portal the moment it listens.
    pub fn hammer(volume: &str, portal: SocketAddr, extents: Range<u64>) -> LoadConfig {
        LoadConfig {
            volume: volume.to_string(),
            portals: vec![portal],
            extents,
            pick: Pick::Fresh,
            mix: Mix::FUA,
            login_timeout: Duration::from_millis(500),
            io_timeout: Duration::from_millis(1500),
            reconnect_pause: Duration::from_millis(2),
            transition_pause: Duration::from_millis(2),
            transition_retries: 5,
            seed: 0,
        }
    }

    /// A writer as a multipath initiator behaves: limits of a few seconds,
    /// retries for a while when the volume changes hands.
    pub fn steady(
        volume: &str,
        portals: Vec<SocketAddr>,
        extents: Range<u64>,
        pick: Pick,
        mix: Mix,
    ) -> LoadConfig {
        LoadConfig {
            volume: volume.to_string(),
            portals,
            extents,
            pick,
            mix,
            login_timeout: Duration::from_secs(1),
            io_timeout: Duration::from_secs(4),
            reconnect_pause: Duration::from_millis(5),
            transition_pause: Duration::from_millis(20),
            transition_retries: 25,
            seed: 0,
        }
    }
}

/// A write the target acknowledged (status GOOD).
#[derive(Debug, Clone)]
pub struct Ack {
    /// Write number.
    pub seq: u64,
    /// First block.
    pub lba: u64,
    /// Portal of the session.
    pub portal: SocketAddr,
    /// When the answer arrived, microseconds since the Unix epoch.
    pub at_us: u64,
    /// Whether it was a FUA write (else plain).
    pub fua: bool,
}

/// Counts of what a writer did.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Sessions logged in.
    pub sessions: u64,
    /// Connections or logins that failed.
    pub no_session: u64,
    /// Writes sent.
    pub writes: u64,
    /// Writes answered GOOD.
    pub acknowledged: u64,
    /// Writes known durable (FUA, or plain and then synced).
    pub durable: u64,
    /// Writes answered with an error (not acknowledged).
    pub failed: u64,
    /// Writes left unanswered when their connection died or timed out.
    pub abandoned: u64,
    /// SYNCHRONIZE CACHE answered GOOD.
    pub syncs: u64,
}

/// What a writer did.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Issued and durable writes per block.
    pub history: History,
    /// Every acknowledged write, in order.
    pub acks: Vec<Ack>,
    /// Counts.
    pub tally: Tally,
    /// The first extent a [`Pick::Fresh`] writer has not written.
    pub next_fresh: u64,
    /// The first few errors the target answered (not acknowledged writes).
    pub errors: Vec<String>,
}

/// A writer running in the background until finished.
pub struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    turned_away: Arc<AtomicU64>,
    last_ack_us: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Ledger>,
}

/// How a command ended.
enum Answer {
    Good,
    /// A final error: the command is over, and not acknowledged.
    Error(Outcome),
    /// Still "access state transition" after the retries: over, not
    /// acknowledged; the writer tries another connection.
    Transition,
    /// No answer: the connection died or the limit passed. The command may
    /// still be executed later.
    Lost,
}

impl Load {
    /// Starts a writer; `seq` numbers the writes of every writer of the test.
    pub fn start(cfg: LoadConfig, seq: Arc<AtomicU64>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let turned_away = Arc::new(AtomicU64::new(0));
        let last_ack_us = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            stop: stop.clone(),
            acked: acked.clone(),
            turned_away: turned_away.clone(),
            last_ack_us: last_ack_us.clone(),
            seq,
            ledger: Ledger {
                next_fresh: cfg.extents.start,
                ..Ledger::default()
            },
            rng: StdRng::seed_from_u64(cfg.seed),
            tainted: HashSet::new(),
            cfg,
        };
        Load {
            stop,
            acked,
            turned_away,
            last_ack_us,
            task: tokio::spawn(writer.run()),
        }
    }

    /// Writes acknowledged so far, and when the last one was (µs since the
    /// Unix epoch, 0: none yet).
    pub fn progress(&self) -> (u64, u64) {
        (
            self.acked.load(Ordering::Acquire),
            self.last_ack_us.load(Ordering::Acquire),
        )
    }

    /// Connections or logins that failed plus writes answered with an
    /// error so far: how often the writer tried and got nowhere.
    pub fn turned_away(&self) -> u64 {
        self.turned_away.load(Ordering::Acquire)
    }

    /// Waits until `n` more writes than `since` are acknowledged; false
    /// when `limit` passes first.
    pub async fn acknowledged_beyond(&self, since: u64, n: u64, limit: Duration) -> bool {
        let t = Instant::now();
        while self.progress().0 < since + n {
            if t.elapsed() > limit {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Stops writing and hands over what was done.
    pub async fn finish(self) -> Ledger {
        self.stop.store(true, Ordering::Release);
        self.task.await.expect("writer task")
    }
}

struct Writer {
    cfg: LoadConfig,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    turned_away: Arc<AtomicU64>,
    last_ack_us: Arc<AtomicU64>,
    seq: Arc<AtomicU64>,
    ledger: Ledger,
    rng: StdRng,
    /// Extents with a write that was never answered.
    tainted: HashSet<u64>,
}

impl Writer {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    async fn run(mut self) -> Ledger {
        let target = format!("{}:{}", node_prefix(), self.cfg.volume);
        let mut turn = 0;
        while !self.stopped() {
            let portal = self.cfg.portals[turn % self.cfg.portals.len()];
            turn += 1;
            match Initiator::try_normal(portal, &target, self.cfg.login_timeout).await {
                Some(s) => {
                    self.ledger.tally.sessions += 1;
                    if !self.session(s, portal).await {
                        break;
                    }
                }
                None => {
                    self.ledger.tally.no_session += 1;
                    self.turned_away.fetch_add(1, Ordering::AcqRel);
                }
            }
            tokio::time::sleep(self.cfg.reconnect_pause).await;
        }
        self.ledger
    }

    /// Writes over one session until it fails; false when the writer has
    /// no extent left to write.
    async fn session(&mut self, mut s: Initiator, portal: SocketAddr) -> bool {
        // Plain writes acknowledged on this session since its last flush.
        let mut unsynced: Vec<(u64, u64)> = Vec::new();
        let Mix { fua, plain, sync } = self.cfg.mix;
        while !self.stopped() {
            let roll = self.rng.gen_range(0..fua + plain + sync);
            if roll >= fua + plain {
                if unsynced.is_empty() {
                    continue;
                }
                match self.command(&mut s, &SYNC_CACHE, &[], &mut unsynced).await {
                    Answer::Good => {
                        self.ledger.tally.syncs += 1;
                        for (lba, seq) in unsynced.drain(..) {
                            self.ledger.history.durable(lba, EXTENT, seq);
                            self.ledger.tally.durable += 1;
                        }
                    }
                    // The flush failed: those writes may be gone.
                    Answer::Error(o) => {
                        self.note(format!("SYNCHRONIZE CACHE via {portal}"), &o);
                        unsynced.clear();
                    }
                    Answer::Transition | Answer::Lost => return true,
                }
                continue;
            }
            let with_fua = roll < fua;
            let Some(extent) = self.next_extent() else {
                return false;
            };
            let seq = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
            let lba = extent * EXTENT;
            let mut data = Vec::with_capacity(EXTENT as usize * BLOCK);
            for b in lba..lba + EXTENT {
                data.extend(block(seq, b, BLOCK));
            }
            self.ledger.history.issued(lba, EXTENT, seq);
            self.ledger.tally.writes += 1;
            let cdb = rw16(0x8A, lba, EXTENT as u32, with_fua);
            match self.command(&mut s, &cdb, &data, &mut unsynced).await {
                Answer::Good => {
                    let at_us = now_us();
                    self.ledger.tally.acknowledged += 1;
                    self.acked.fetch_add(1, Ordering::AcqRel);
                    self.last_ack_us.store(at_us, Ordering::Release);
                    self.ledger.acks.push(Ack {
                        seq,
                        lba,
                        portal,
                        at_us,
                        fua: with_fua,
                    });
                    if with_fua {
                        self.ledger.history.durable(lba, EXTENT, seq);
                        self.ledger.tally.durable += 1;
                    } else {
                        unsynced.push((lba, seq));
                    }
                }
                Answer::Error(o) => {
                    self.ledger.tally.failed += 1;
                    self.turned_away.fetch_add(1, Ordering::AcqRel);
                    self.note(format!("write {seq} at LBA {lba} via {portal}"), &o);
                }
                Answer::Transition => {
                    self.ledger.tally.failed += 1;
                    self.turned_away.fetch_add(1, Ordering::AcqRel);
                    return true;
                }
                Answer::Lost => {
                    self.ledger.tally.abandoned += 1;
                    self.tainted.insert(extent);
                    return true;
                }
            }
        }
        true
    }

    /// The next extent to write, `None` when none is left.
    fn next_extent(&mut self) -> Option<u64> {
        let range = self.cfg.extents.clone();
        match self.cfg.pick {
            Pick::Fresh => {
                let e = self.ledger.next_fresh;
                (e < range.end).then(|| {
                    self.ledger.next_fresh += 1;
                    e
                })
            }
            Pick::Random => {
                if self.tainted.len() as u64 >= range.end - range.start {
                    return None;
                }
                loop {
                    let e = self.rng.gen_range(range.clone());
                    if !self.tainted.contains(&e) {
                        return Some(e);
                    }
                }
            }
        }
    }

    /// Runs one command, retrying as an initiator does: at once after a
    /// unit attention, after a pause while the access state is in
    /// transition.
    async fn command(
        &mut self,
        s: &mut Initiator,
        cdb: &[u8],
        data: &[u8],
        unsynced: &mut Vec<(u64, u64)>,
    ) -> Answer {
        let mut transitions = 0;
        let mut attentions = 0;
        loop {
            let o = match tokio::time::timeout(self.cfg.io_timeout, s.run(cdb, data, 0)).await {
                Ok(Some(o)) => o,
                _ => return Answer::Lost,
            };
            if o.status == 0 {
                return Answer::Good;
            }
            match (o.status, o.sense_key, o.asc) {
                // POWER ON, RESET, OR BUS DEVICE RESET OCCURRED: what the
                // cache held may be gone (SPC-5 6.4.1).
                (2, 6, (0x29, _)) if attentions < 8 => {
                    attentions += 1;
                    unsynced.clear();
                }
                (2, 6, _) if attentions < 8 => attentions += 1,
                (2, 2, (0x04, 0x0A)) => {
                    if transitions == self.cfg.transition_retries {
                        return Answer::Transition;
                    }
                    transitions += 1;
                    tokio::time::sleep(self.cfg.transition_pause).await;
                }
                _ => return Answer::Error(o),
            }
        }
    }

    fn note(&mut self, what: String, o: &Outcome) {
        if self.ledger.errors.len() < 20 {
            self.ledger.errors.push(format!(
                "{what}: status {:#x} sense key {:#x} asc {:02x?}",
                o.status, o.sense_key, o.asc
            ));
        }
    }
}

/// Reads blocks `0..blocks` of `volume` through `portal`, retrying as an
/// initiator does for up to `limit`.
pub async fn read_volume(
    portal: SocketAddr,
    volume: &str,
    blocks: u64,
    limit: Duration,
) -> Result<Vec<u8>, String> {
    const CHUNK: u64 = 1024;
    let target = format!("{}:{volume}", node_prefix());
    let start = Instant::now();
    let mut out = Vec::with_capacity((blocks as usize) * BLOCK);
    let mut last = String::from("no session");
    'session: while start.elapsed() < limit {
        let Some(mut s) = Initiator::try_normal(portal, &target, Duration::from_secs(3)).await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while (out.len() as u64) < blocks * BLOCK as u64 {
            let lba = out.len() as u64 / BLOCK as u64;
            let n = CHUNK.min(blocks - lba) as u32;
            let cdb = rw16(0x88, lba, n, false);
            let o = match tokio::time::timeout(
                Duration::from_secs(10),
                s.run(&cdb, &[], n * BLOCK as u32),
            )
            .await
            {
                Ok(Some(o)) => o,
                _ => {
                    last = format!("no answer to the read at LBA {lba}");
                    continue 'session;
                }
            };
            match (o.status, o.sense_key, o.asc) {
                (0, _, _) => out.extend_from_slice(&o.data),
                (2, 6, _) => {}
                (2, 2, (0x04, 0x0A)) => {
                    last = format!("LBA {lba}: access state transition");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if start.elapsed() > limit {
                        break 'session;
                    }
                }
                _ => {
                    return Err(format!(
                        "reading LBA {lba} through {portal} failed: status {:#x} sense key {:#x} asc {:02x?}",
                        o.status, o.sense_key, o.asc
                    ))
                }
            }
        }
        return Ok(out);
    }
    Err(format!(
        "reading {volume} through {portal} did not finish within {limit:?}: {last}"
    ))
}

/// Reads the first `blocks` blocks of `volume` through `portal` and checks
/// each against the history: the errors name the block, the acknowledged
/// write it must show at least, and what it shows.
pub async fn check_volume(
    portal: SocketAddr,
    volume: &str,
    blocks: u64,
    h: &History,
) -> Result<(), String> {
    let data = read_volume(portal, volume, blocks, Duration::from_secs(60)).await?;
    h.check_range(0, &data, BLOCK).map_err(|errors| {
        format!(
            "{} blocks wrong when read through {portal}:\n  {}",
            errors.len(),
            errors[..errors.len().min(20)].join("\n  ")
        )
    })
}
