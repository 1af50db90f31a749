//! The peers of a primary: the state each is in, the link to it, and the
//! task that keeps that link up and sends the peer to resync when it misses
//! writes.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use volume::latency::{HistogramSnapshot, LatencyHistogram};

use super::resync::Progress;
use super::{Primary, RESYNC_REGION};
use crate::dirty::DirtyMap;
use crate::link::{Link, LinkError};
use crate::wire::{Hello, Mode, Op, Refusal};

/// How long a copy whose disk failed is left alone before the first try
/// to bring it back; each try that finds the disk failing again doubles the
/// wait, up to [`DISK_RETRY_MAX`].
pub const DISK_RETRY_FIRST: Duration = Duration::from_secs(1);

/// Longest wait between two tries to bring back a copy whose disk fails.
pub const DISK_RETRY_MAX: Duration = Duration::from_secs(30);

/// A copy's disk failed: why, and when to try it again.
#[derive(Debug, Clone)]
pub(super) struct DiskFailure {
    /// What the copy's storage said.
    pub(super) why: String,
    /// Tries that found the disk failing, the first failure included.
    pub(super) tries: u32,
    /// No resync (nor link) is tried before then.
    pub(super) retry_at: Instant,
}

/// The wait after the `tries`-th failure of a copy's disk.
pub(super) fn disk_retry_after(tries: u32) -> Duration {
    DISK_RETRY_FIRST
        .saturating_mul(1 << tries.saturating_sub(1).min(16))
        .min(DISK_RETRY_MAX)
}

/// Why a copy is detached, where a request failed because the copy's disk
/// did ("disk failed: " and what its storage said, also when its copy
/// could not record the primary's epoch at the hello) or because it
/// answered too late (a slow disk, a busy node or a cut link): not for a
/// link that broke or a node that is down, which are tried again at once.
pub(super) fn disk_failure(e: &LinkError) -> Option<String> {
    match e {
        LinkError::Failed { failure, .. } => failure
            .disk_failure()
            .map(|why| format!("disk failed: {why}")),
        LinkError::Timeout(_) => Some(format!("too slow: {e}")),
        // Its copy could not record the primary's epoch.
        LinkError::Refused {
            refusal: Refusal::Failed,
            message,
            ..
        } => Some(format!("disk failed: {message}")),
        _ => None,
    }
}

/// A peer's state as its primary sees it (see [`crate::primary`]).
/// Status displays and JSON name the states `in-sync`, `syncing`,
/// `out-of-sync` and `losing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[repr(u8)]
pub enum PeerState {
    /// Holds every acknowledged write; a write it fails is recorded before
    /// that write is acknowledged.
    InSync = 0,
    /// Catching up: writes go to it, its failures only mark regions dirty.
    Syncing = 1,
    /// Recorded as missing writes: writes only mark its dirty map.
    OutOfSync = 2,
    /// Failed a write; the record that it is out of sync is being committed,
    /// and no write waits for it any more but none is acknowledged before
    /// that record.
    Losing = 3,
}

impl PeerState {
    /// The name status displays use (the same as in JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::InSync => "in-sync",
            PeerState::Syncing => "syncing",
            PeerState::OutOfSync => "out-of-sync",
            PeerState::Losing => "losing",
        }
    }
}

impl std::fmt::Display for PeerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A byte that is not a [`PeerState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("{0} is not a peer state")]
pub struct NotAPeerState(pub u8);

impl TryFrom<u8> for PeerState {
    type Error = NotAPeerState;

    fn try_from(v: u8) -> Result<PeerState, NotAPeerState> {
        match v {
            0 => Ok(PeerState::InSync),
            1 => Ok(PeerState::Syncing),
            2 => Ok(PeerState::OutOfSync),
            3 => Ok(PeerState::Losing),
            v => Err(NotAPeerState(v)),
        }
    }
}

/// A [`PeerState`] the write path reads without a lock.
pub(super) struct AtomicPeerState(AtomicU8);

impl AtomicPeerState {
    pub(super) fn new(s: PeerState) -> AtomicPeerState {
        AtomicPeerState(AtomicU8::new(s as u8))
    }

    pub(super) fn load(&self) -> PeerState {
        PeerState::try_from(self.0.load(Ordering::Acquire)).expect("only peer states are stored")
    }

    pub(super) fn store(&self, s: PeerState) {
        self.0.store(s as u8, Ordering::Release);
    }

    /// Moves from `current` to `new`; `Err` holds the state found instead.
    pub(super) fn compare_exchange(
        &self,
        current: PeerState,
        new: PeerState,
    ) -> Result<(), PeerState> {
        self.0
            .compare_exchange(
                current as u8,
                new as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map(|_| ())
            .map_err(|v| PeerState::try_from(v).expect("only peer states are stored"))
    }
}

/// A peer as status displays show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerStatus {
    /// Node id.
    pub node: u64,
    /// In sync, syncing (also an in-sync peer reconciling regions written
    /// before the last stop) or out of sync (also while that is being
    /// recorded): never [`PeerState::Losing`]. In JSON `"in-sync"`,
    /// `"syncing"` or `"out-of-sync"`.
    pub state: PeerState,
    /// Whether a connection is up.
    pub connected: bool,
    /// Bytes the peer is known to miss.
    pub dirty_bytes: u64,
    /// Bytes copied by the running resync.
    pub resync_done: u64,
    /// Bytes the running resync set out to copy.
    pub resync_total: u64,
    /// Bytes the running (or the last) resync sent as data: the written
    /// blocks of its regions.
    #[serde(default)]
    pub resync_data_bytes: u64,
    /// Bytes the running (or the last) resync unmapped on the peer: the
    /// unwritten blocks of its regions, which it does not read.
    #[serde(default)]
    pub resync_unmapped_bytes: u64,
    /// Bytes of dirty regions the running resync copies a second, lately;
    /// 0 when none runs.
    #[serde(default)]
    pub resync_rate: u64,
    /// Bytes a second the running resync is held to while it yields to
    /// client writes; `None` when it is not held.
    #[serde(default)]
    pub resync_limit: Option<u64>,
    /// Whether the running resync yields to client writes now (fewer
    /// chunks in flight, held to `resync_limit`).
    #[serde(default)]
    pub resync_yielding: bool,
    /// Round trips of the I/O requests (writes, unmaps, flushes, pings)
    /// sent to the peer while this node is its primary. Not in JSON: the
    /// metrics show it.
    #[serde(skip)]
    pub round_trips: HistogramSnapshot,
    /// Why the copy is detached and tried again only after a wait: its
    /// disk failed ("disk failed: I/O error: Read-only file system (os
    /// error 30)") or answered too late ("too slow: ..."); `None` while it
    /// works (and from a node that does not report it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detached: Option<String>,
}

impl PeerStatus {
    /// Whether the peer holds every acknowledged write, with nothing left
    /// to reconcile.
    pub fn in_sync(&self) -> bool {
        self.state == PeerState::InSync
    }
}

/// A replica as its primary tracks it.
pub(super) struct Peer {
    pub(super) node: u64,
    pub(super) addr: String,
    pub(super) state: AtomicPeerState,
    pub(super) link: RwLock<Option<Arc<Link>>>,
    pub(super) dirty: Arc<DirtyMap>,
    /// Serializes control-plane changes of this peer's state.
    pub(super) state_change: tokio::sync::Mutex<()>,
    /// Whether this primary role ever had a link to the peer.
    pub(super) linked: AtomicBool,
    /// In sync here, but the control plane has not recorded it so yet.
    pub(super) unrecorded: AtomicBool,
    /// What the running (or the last) resync did (reported by status, not
    /// recorded).
    pub(super) resync: Progress,
    /// Kept out of the write path on purpose ([`Primary::hold_away`]).
    pub(super) away: AtomicBool,
    /// Wakes the peer's supervisor (it was held away or let back).
    pub(super) wake: tokio::sync::Notify,
    /// Round trips of the I/O requests sent to the peer, over every link
    /// this primary role made to it.
    pub(super) round_trips: Arc<LatencyHistogram>,
    /// Set while the copy's disk fails: it is detached (out of sync) and
    /// tried again with a growing wait, not at once.
    pub(super) disk: std::sync::Mutex<Option<DiskFailure>>,
}

impl Peer {
    pub(super) fn state(&self) -> PeerState {
        self.state.load()
    }

    pub(super) fn link(&self) -> Option<Arc<Link>> {
        self.link
            .read()
            .unwrap()
            .as_ref()
            .filter(|l| l.is_alive())
            .cloned()
    }

    /// When the copy's disk failed, the time to try it again.
    fn disk_retry_at(&self) -> Option<Instant> {
        self.disk.lock().unwrap().as_ref().map(|d| d.retry_at)
    }
}

impl Primary {
    /// Keeps the copy on `node` out of the write path (`away`), as while
    /// its node is in maintenance, or lets it back. Held away, the peer is
    /// recorded out of sync (writes wait for that record as for any lost
    /// peer), its link is closed and not made again, and writes mark its
    /// dirty map; let back, it is connected and sent its dirty regions.
    /// Returns whether anything changed (false also for a node that is not
    /// a peer).
    pub fn hold_away(&self, node: u64, away: bool) -> bool {
        let Some(p) = self.peers.iter().find(|p| p.node == node) else {
            return false;
        };
        if p.away.swap(away, Ordering::AcqRel) == away {
            return false;
        }
        tracing::info!(
            volume = self.copy.name(),
            node,
            away,
            "replica held away from the write path: {away}"
        );
        p.wake.notify_one();
        true
    }

    /// State of every peer.
    pub fn peer_status(&self) -> Vec<PeerStatus> {
        self.peers
            .iter()
            .map(|p| PeerStatus {
                node: p.node,
                state: match p.state() {
                    PeerState::InSync if p.dirty.count() == 0 => PeerState::InSync,
                    PeerState::InSync | PeerState::Syncing => PeerState::Syncing,
                    PeerState::OutOfSync | PeerState::Losing => PeerState::OutOfSync,
                },
                connected: p.link().is_some(),
                dirty_bytes: p.dirty.count() * RESYNC_REGION,
                resync_done: p.resync.done.load(Ordering::Relaxed),
                resync_total: p.resync.total.load(Ordering::Relaxed),
                resync_data_bytes: p.resync.data.load(Ordering::Relaxed),
                resync_unmapped_bytes: p.resync.unmapped.load(Ordering::Relaxed),
                resync_rate: p.resync.rate.load(Ordering::Relaxed),
                resync_limit: Some(p.resync.limit.load(Ordering::Relaxed)).filter(|&l| l > 0),
                resync_yielding: p.resync.yielding.load(Ordering::Relaxed),
                round_trips: p.round_trips.snapshot(),
                detached: p.disk.lock().unwrap().as_ref().map(|d| d.why.clone()),
            })
            .collect()
    }

    /// A request to `p` failed because its disk did or it answered too
    /// late (`why`, see [`disk_failure`]): the copy is detached, the caller records it out of
    /// sync as for any failure, and it is not tried again before a wait
    /// that grows with each try that finds the disk failing. The first
    /// failure is logged and reported to the control plane (an event);
    /// the tries after it are logged quietly.
    pub(super) fn disk_failed(&self, p: &Peer, why: &str) {
        // The link is not used again: the copy names the regions its disk
        // may have dropped writes in (`LocalCopy::disk_failed` keeps them
        // for that) only in the welcome of its next connection, and a
        // resync over this one would take them for copied.
        if let Some(l) = p.link.write().unwrap().take() {
            l.close();
        }
        let mut d = p.disk.lock().unwrap();
        let now = Instant::now();
        if d.as_ref().is_some_and(|d| now < d.retry_at) {
            // More requests of the same try (writes in flight together).
            return;
        }
        let tries = d.as_ref().map_or(0, |d| d.tries) + 1;
        let wait = disk_retry_after(tries);
        let first = d.is_none();
        *d = Some(DiskFailure {
            why: why.to_string(),
            tries,
            retry_at: now + wait,
        });
        drop(d);
        if first {
            tracing::warn!(
                volume = self.copy.name(),
                node = p.node,
                "replica detached (out of sync, tried again in {wait:?}): {why}"
            );
            self.control.replica_detached(self.copy.name(), p.node, why);
        } else {
            tracing::info!(
                volume = self.copy.name(),
                node = p.node,
                tries,
                "replica still fails, tried again in {wait:?}: {why}"
            );
        }
    }

    /// `p` is in sync again: whatever failed of its disk works now.
    pub(super) fn disk_works(&self, p: &Peer) {
        if p.disk.lock().unwrap().take().is_some() {
            tracing::info!(
                volume = self.copy.name(),
                node = p.node,
                "replica works again: the copy is back in sync"
            );
        }
    }
}

/// Keeps a connection to one peer and resyncs it whenever it misses writes.
pub(super) async fn supervise(me: Weak<Primary>, p: Arc<Peer>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(v) = me.upgrade() else { return };
        if v.stopped.load(Ordering::Acquire) {
            return;
        }
        if p.away.load(Ordering::Acquire) {
            // Held away (its node is in maintenance): out of the write path,
            // recorded out of sync; writes mark its dirty map meanwhile.
            if p.state() != PeerState::OutOfSync {
                if let Err(e) = v.lose(&p, &"its node is in maintenance").await {
                    tracing::info!(volume = v.copy.name(), node = p.node, "{e}");
                }
            }
            if p.state() == PeerState::OutOfSync {
                if let Some(l) = p.link.write().unwrap().take() {
                    l.close();
                }
            }
            drop(v);
            let _ = tokio::time::timeout(backoff, p.wake.notified()).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            continue;
        }
        if let Some(at) = p.disk_retry_at() {
            // Its disk failed: left detached (out of sync, not linked)
            // until the time to try it again, not tried again at once.
            let now = Instant::now();
            if at > now && p.state() == PeerState::OutOfSync {
                if let Some(l) = p.link.write().unwrap().take() {
                    l.close();
                }
                drop(v);
                let _ = tokio::time::timeout(at - now, p.wake.notified()).await;
                continue;
            }
        }
        let link = match p.link() {
            Some(l) => Some(l),
            None => {
                let hello = Hello {
                    mode: Mode::Replicate,
                    node: v.cfg.node,
                    epoch: v.cfg.epoch,
                    copy_id: v.copy.copy_id(),
                    volume: v.copy.name().to_string(),
                };
                match Link::connect(
                    &p.addr,
                    &v.cfg.key,
                    &hello,
                    v.cfg.timeout,
                    Some(p.round_trips.clone()),
                )
                .await
                {
                    Ok(l) => {
                        let l = Arc::new(l);
                        if v.welcomed(&p, &l).await {
                            backoff = Duration::from_millis(100);
                            Some(l)
                        } else {
                            l.close();
                            None
                        }
                    }
                    Err(e) => {
                        tracing::debug!(
                            volume = v.copy.name(),
                            node = p.node,
                            "replica unreachable: {e}"
                        );
                        // Its copy's disk failed as it took up this epoch
                        // (a node that does not answer is tried again at once).
                        if matches!(e, LinkError::Refused { .. }) {
                            if let Some(why) = disk_failure(&e) {
                                v.disk_failed(&p, &why);
                            }
                        }
                        if let LinkError::Refused {
                            refusal: Refusal::StaleEpoch { .. },
                            ..
                        } = &e
                        {
                            v.deposed.store(true, Ordering::Release);
                        }
                        None
                    }
                }
            }
        };
        if p.state() == PeerState::Losing {
            // A write failed it while this node could not record that (its
            // lease had run out): record it now, or no resync can start.
            if let Err(e) = v.lose(&p, &LinkError::Down(p.addr.clone())).await {
                tracing::debug!(volume = v.copy.name(), node = p.node, "{e}");
            }
        }
        if p.state() == PeerState::InSync && p.unrecorded.load(Ordering::Acquire) {
            let _one = p.state_change.lock().await;
            if p.state() == PeerState::InSync && p.unrecorded.load(Ordering::Acquire) {
                match v.record_in_sync(&p).await {
                    Ok(()) => {
                        tracing::info!(volume = v.copy.name(), node = p.node, "replica in sync")
                    }
                    Err(e) => tracing::info!(volume = v.copy.name(), node = p.node, "{e}"),
                }
            }
        }
        if let Some(l) = link {
            if p.state() != PeerState::InSync || p.dirty.count() > 0 {
                if let Err(e) = v.resync(&p, &l).await {
                    tracing::info!(volume = v.copy.name(), node = p.node, "resync paused: {e}");
                    if let Some(why) = e.disk_failure() {
                        // Detached: out of the write path until it is tried again.
                        v.disk_failed(&p, &why);
                        let _ = v.lose(&p, &e).await;
                    }
                    if !l.is_alive() {
                        let _ = v.lose(&p, &LinkError::Down(p.addr.clone())).await;
                    }
                }
            }
        }
        drop(v);
        let _ = tokio::time::timeout(backoff, p.wake.notified()).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

impl Primary {
    /// A new connection to `p` answered: check which copy it is, take its
    /// suspect regions, and put it in the write path when it may be.
    /// Returns whether the link was taken; if not, the caller drops it and
    /// tries again later.
    async fn welcomed(&self, p: &Peer, l: &Arc<Link>) -> bool {
        let w = l.welcome();
        if w.epoch > self.cfg.epoch {
            self.deposed.store(true, Ordering::Release);
            return false;
        }
        let reconnect = p.linked.swap(true, Ordering::AcqRel);
        let tag = p.dirty.tag();
        if tag != w.copy_id {
            if tag != [0; 16] {
                tracing::warn!(
                    volume = self.copy.name(),
                    node = p.node,
                    "the replica's copy was replaced, copying everything"
                );
                p.dirty.mark_all();
                if self
                    .lose(p, &LinkError::Down(p.addr.clone()))
                    .await
                    .is_err()
                {
                    return false;
                }
            } else if p.state() != PeerState::InSync {
                p.dirty.mark_all();
            }
            p.dirty.set_tag(w.copy_id);
        }
        p.dirty.mark_ranges(&w.suspect);
        if !w.suspect.is_empty() {
            // Durable before the link is used: from the first Settle it
            // gets, the copy may forget them (its welcome handed them
            // over), and this node's activity log does not hold them; a
            // sweep here persists the maps only when it clears something.
            let dirty = p.dirty.clone();
            if let Err(e) = crate::copy::off_thread(move || dirty.persist()).await {
                tracing::warn!(
                    volume = self.copy.name(),
                    node = p.node,
                    "cannot keep the regions the copy names as suspect: {e}"
                );
                return false;
            }
        }
        if reconnect && p.state() == PeerState::InSync {
            // The link broke while this primary acknowledged writes: the
            // replica may have restarted and lost writes it had not flushed
            // yet, which a SYNCHRONIZE CACHE from now on would promise. It
            // counts as out of sync (recorded) until the resync has copied
            // its suspect regions back.
            if self
                .lose(p, &LinkError::Down(p.addr.clone()))
                .await
                .is_err()
            {
                return false;
            }
        }
        // A snapshot it holds that this copy does not goes; one it misses
        // takes it out of sync, to be caught up before it takes writes.
        if let Err(e) = self.reconcile_snapshots(p, l).await {
            tracing::info!(volume = self.copy.name(), node = p.node, "{e}");
            return false;
        }
        // Every copy that takes writes holds the volume's persistent
        // reservations as they are now: a new link gets them before it
        // enters the write path, in order with the changes made meanwhile
        // (they wait for the same lock, and reach it through the link).
        let _order = self.reservations.lock().await;
        if let Err(e) = self.hand_over_reservations(l).await {
            tracing::info!(volume = self.copy.name(), node = p.node, "{e}");
            return false;
        }
        *p.link.write().unwrap() = Some(l.clone());
        true
    }

    /// Sends the peer at the end of `link` the persistent reservations this
    /// copy holds. The caller holds `reservations`, so no change is made
    /// meanwhile.
    pub(super) async fn hand_over_reservations(&self, link: &Link) -> Result<(), String> {
        let state = match self.copy.reservations() {
            Ok(saved) => saved.map(|s| s.state).unwrap_or_default(),
            Err(e) => return Err(format!("reading the persistent reservations: {e}")),
        };
        link.call(self.cfg.epoch, Op::Reservations { state })
            .await
            .map(drop)
            .map_err(|e| format!("handing over the persistent reservations: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [PeerState; 4] = [
        PeerState::InSync,
        PeerState::Syncing,
        PeerState::OutOfSync,
        PeerState::Losing,
    ];

    #[test]
    fn every_state_survives_the_atomic() {
        for s in ALL {
            assert_eq!(PeerState::try_from(s as u8), Ok(s));
            let a = AtomicPeerState::new(s);
            assert_eq!(a.load(), s);
            for t in ALL {
                a.store(s);
                let moved = a.compare_exchange(t, PeerState::Losing);
                if s == t {
                    assert_eq!(moved, Ok(()));
                    assert_eq!(a.load(), PeerState::Losing);
                } else {
                    assert_eq!(moved, Err(s));
                    assert_eq!(a.load(), s);
                }
            }
        }
        assert_eq!(PeerState::try_from(4), Err(NotAPeerState(4)));
    }

    #[test]
    fn status_json_names_the_states_as_before() {
        for s in ALL {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{s}\""),
                "JSON and displays use one name"
            );
        }
        let st = PeerStatus {
            node: 2,
            state: PeerState::OutOfSync,
            connected: true,
            dirty_bytes: 65536,
            resync_done: 1,
            resync_total: 3,
            resync_data_bytes: 4,
            resync_unmapped_bytes: 5,
            resync_rate: 6,
            resync_limit: Some(7),
            resync_yielding: true,
            round_trips: Default::default(),
            detached: None,
        };
        let json = r#"{"node":2,"state":"out-of-sync","connected":true,"dirty_bytes":65536,"resync_done":1,"resync_total":3,"resync_data_bytes":4,"resync_unmapped_bytes":5,"resync_rate":6,"resync_limit":7,"resync_yielding":true}"#;
        assert_eq!(serde_json::to_string(&st).unwrap(), json);
        assert_eq!(serde_json::from_str::<PeerStatus>(json).unwrap(), st);
        // The status of a node that does not report the resync's figures
        // yet still reads, with none of them.
        let before = r#"{"node":2,"state":"out-of-sync","connected":true,"dirty_bytes":65536,"resync_done":1,"resync_total":3}"#;
        let old = serde_json::from_str::<PeerStatus>(before).unwrap();
        assert_eq!(
            (old.resync_rate, old.resync_limit, old.resync_yielding),
            (0, None, false)
        );
    }
}
