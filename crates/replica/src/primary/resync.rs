//! Resync: copying the regions a peer misses back to it, then switching it
//! to in sync behind a barrier and recording that.
//!
//! The dirty regions are copied in chunks, several in flight at once (as
//! large and as many as the [`throttle`] allows): each chunk holds
//! its range of the write ordering from before its blocks are looked at
//! until the peer has answered every request of it, so the copy never
//! overtakes a client write of the same blocks nor is overtaken by one. The
//! local copy's allocation is asked first: written blocks are read and sent
//! as data, unwritten ones are unmapped on the peer without being read.

mod throttle;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;
use volume::{BlockState, VolumeError};

use super::{ControlError, Peer, PeerState, Primary, RESYNC_REGION};
use crate::link::{Call, Link, LinkError};
use crate::ranges::RangeGuard;
use crate::wire::Op;
use throttle::{RateMeter, Throttle, POLICY};

/// Most bytes one unmap of a resync covers: a chunk that is all unwritten
/// takes the unwritten dirty regions after it along, so a thin volume costs
/// a request per 64 MiB it does not hold rather than one per chunk.
const UNMAP_SPAN: u64 = 64 << 20;

/// Most bytes of data one write request of a resync carries. A chunk's
/// written runs go out in requests of at most this size: each is read into
/// a buffer of the pool (as its frame is on the peer) and goes back to it
/// once sent, where a request of a whole 4 MiB chunk took a fresh
/// allocation on both nodes (zeroed, and page-faulted in) every time.
const DATA_REQUEST: u64 = 1 << 20;

/// Most bytes of data a resync sends between two flushes it asks of the
/// peer while it copies; a quarter of the dirty bytes when that is less,
/// but not below [`FLUSH_EVERY_MIN`]. Each flush starts the peer's disk on
/// what it took so far while the copy goes on (its page cache would
/// otherwise hold all of it for the flush at the end, which took up to a
/// quarter of a 1 GiB resync here), and the next waits for it, so a peer
/// whose disk is slower than the link holds at most about twice this
/// unwritten.
const FLUSH_EVERY: u64 = 128 << 20;

/// Fewest bytes of data between two flushes of a resync.
const FLUSH_EVERY_MIN: u64 = 1 << 20;

/// Longest a resync held back by its rate limit sleeps before it looks
/// again whether the client is still writing.
const PACE_STEP: Duration = Duration::from_millis(50);

/// What the running (or the last) resync of a peer did, for status.
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// Bytes of dirty regions copied.
    pub(super) done: AtomicU64,
    /// Bytes of dirty regions it set out to copy.
    pub(super) total: AtomicU64,
    /// Bytes sent as data.
    pub(super) data: AtomicU64,
    /// Bytes unmapped on the peer, not read.
    pub(super) unmapped: AtomicU64,
    /// Bytes of dirty regions copied a second, lately; 0 when none runs.
    pub(super) rate: AtomicU64,
    /// Bytes a second it is held to; 0 when it is not held.
    pub(super) limit: AtomicU64,
    /// Whether it yields to client writes now.
    pub(super) yielding: AtomicBool,
}

impl Progress {
    /// A resync of `total` bytes starts: the counts start again.
    fn start(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        for c in [
            &self.done,
            &self.data,
            &self.unmapped,
            &self.rate,
            &self.limit,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        self.yielding.store(false, Ordering::Relaxed);
    }

    /// Nothing runs any more: no rate, no limit; the counts stay.
    fn stop(&self) {
        self.rate.store(0, Ordering::Relaxed);
        self.limit.store(0, Ordering::Relaxed);
        self.yielding.store(false, Ordering::Relaxed);
    }
}

/// Bytes a chunk (or a whole resync) sent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Sent {
    /// Bytes sent as data.
    data: u64,
    /// Bytes unmapped.
    unmapped: u64,
    /// Requests sent.
    requests: u64,
}

/// A chunk whose requests are sent and not all answered yet.
struct Flight<'a> {
    /// The chunk's range of the write ordering, held until it is answered.
    _range: RangeGuard<'a>,
    /// The range of the unwritten regions it took along, if any.
    _along: Option<RangeGuard<'a>>,
    calls: Vec<Call<'a>>,
    /// Bytes it sent as data.
    data: u64,
    /// First dirty region of the chunk.
    first: u64,
    /// Dirty regions in the chunk.
    regions: u64,
    /// Blocks `[lba, end)`, for errors.
    lba: u64,
    end: u64,
}

impl Flight<'_> {
    /// Waits for every answer to the chunk, then lets its range go; the
    /// first failure, if any.
    async fn settle(self) -> Result<(), LinkError> {
        answered(self.calls).await
    }
}

/// Waits for the answer to every call (each within the link's timeout, which
/// closes the link when it runs out); the first failure, if any.
pub(super) async fn answered(calls: Vec<Call<'_>>) -> Result<(), LinkError> {
    let mut result = Ok(());
    for c in calls {
        let r = c.wait().await;
        if result.is_ok() {
            result = r.map(|_| ());
        }
    }
    result
}

impl Primary {
    /// Copies the dirty regions of `p` over `link`; then, behind a barrier,
    /// switches it to in sync and records that.
    pub(super) async fn resync(&self, p: &Peer, link: &Link) -> Result<(), ResyncError> {
        let was = p.state();
        if was == PeerState::Losing {
            return Err(ResyncError::NotRecorded);
        }
        if was == PeerState::OutOfSync {
            // Out of the write path still: the snapshots it misses first,
            // and it takes writes again before another can be taken.
            let _order = self.catch_up_snapshots(p, link).await?;
            if p.state
                .compare_exchange(PeerState::OutOfSync, PeerState::Syncing)
                .is_err()
            {
                return Err(ResyncError::StateChanged);
            }
        }
        let total = p.dirty.count() * RESYNC_REGION;
        p.resync.start(total);
        let name = self.copy.name().to_string();
        // An in-sync peer only reconciles regions where unacknowledged
        // writes may differ: it stays in sync for the control plane.
        let report = was != PeerState::InSync;
        if total > 0 {
            tracing::info!(volume = %name, node = p.node, bytes = total, "resync starts");
            if report {
                self.control
                    .replica_syncing(&name, p.node, self.cfg.epoch)
                    .await;
            }
        }
        let began = Instant::now();
        let copied = self.copy_dirty(p, link).await;
        p.resync.stop();
        let sent = copied?;
        let copy_took = began.elapsed();
        link.call(self.cfg.epoch, Op::Flush)
            .await
            .map_err(ResyncError::Flush)?;
        let took = began.elapsed();
        let summary = |what: &str| {
            tracing::info!(
                volume = %name,
                node = p.node,
                bytes = total,
                data = sent.data,
                unmapped = sent.unmapped,
                requests = sent.requests,
                ms = took.as_millis() as u64,
                flush_ms = (took - copy_took).as_millis() as u64,
                bytes_per_s = (total as f64 / took.as_secs_f64().max(1e-6)) as u64,
                "{what}"
            )
        };
        if p.state() == PeerState::InSync {
            if total > 0 {
                summary("reconciled regions written before the last stop");
            }
            return Ok(());
        }
        {
            // Barrier: no write in flight, so none issued while the peer was
            // syncing can still fail after it counts as in sync. Taken
            // without `state_change`: a write holding a range may wait for
            // that lock in `lose`.
            let _all = self.ranges.lock(0, u64::MAX).await;
            if p.dirty.count() > 0 || !link.is_alive() {
                return Ok(());
            }
            // A change of the reservations made while the peer was out of
            // sync did not reach it: it gets them as they are, and none
            // can change until it counts as in sync and takes the changes.
            let _order = self.reservations.lock().await;
            self.hand_over_reservations(link)
                .await
                .map_err(ResyncError::Reservations)?;
            if p.state
                .compare_exchange(PeerState::Syncing, PeerState::InSync)
                .is_err()
            {
                return Ok(());
            }
        }
        // Records are committed in the order the peer's state changed: a
        // write that fails it from now on records it lost after this.
        let _one = p.state_change.lock().await;
        if p.state() != PeerState::InSync {
            // Lost again (and recorded so) since the barrier.
            return Ok(());
        }
        p.dirty.set_tag(link.welcome().copy_id);
        p.unrecorded.store(true, Ordering::Release);
        self.record_in_sync(p).await?;
        self.disk_works(p);
        summary("replica in sync");
        Ok(())
    }

    /// Copies every dirty region of `p` over `link`, chunks pipelined as the
    /// throttle allows, and clears each region once the peer has answered
    /// for it. Returns what was sent.
    async fn copy_dirty(&self, p: &Peer, link: &Link) -> Result<Sent, ResyncError> {
        let mut flights = VecDeque::new();
        let mut flushing = None;
        let copied = self.copy_chunks(p, link, &mut flights, &mut flushing).await;
        // However the copy ended, no chunk lets its range go before the peer
        // has answered all of it: a request of it still on its way could
        // otherwise land on the peer after a later write of the same blocks
        // (a client's, or the next resync's). Each answer comes, or the
        // link's timeout closes the link.
        for f in flights {
            let _ = f.settle().await;
        }
        // A flush that failed may have dropped what the peer took before
        // it, though a later one succeeds: the resync fails as for its
        // last flush.
        let flushed = match flushing {
            Some(f) => f.wait().await.map(drop),
            None => Ok(()),
        };
        match flushed {
            // Whatever else stopped the copy, the copy's disk failing is
            // what the supervisor must hear of.
            Err(e) if super::peer::disk_failure(&e).is_some() => Err(ResyncError::Flush(e)),
            flushed => {
                let sent = copied?;
                flushed.map_err(ResyncError::Flush)?;
                Ok(sent)
            }
        }
    }

    /// The loop of [`Primary::copy_dirty`]; chunks not yet answered when it
    /// returns are left in `flights`, and a flush of the peer not yet
    /// answered in `flushing`.
    async fn copy_chunks<'a>(
        &'a self,
        p: &Peer,
        link: &'a Link,
        flights: &mut VecDeque<Flight<'a>>,
        flushing: &mut Option<Call<'a>>,
    ) -> Result<Sent, ResyncError> {
        let v = self.copy.volume();
        let bs = v.block_size() as u64;
        let client_writes = || self.acknowledged().map_or(0, |w| w.writes);
        let mut throttle = Throttle::new(POLICY, Instant::now(), client_writes());
        let mut meter = RateMeter::new(Instant::now());
        let mut sent = Sent::default();
        let mut unflushed = 0;
        let flush_every = (p.dirty.count() * RESYNC_REGION / 4).clamp(FLUSH_EVERY_MIN, FLUSH_EVERY);
        let mut cursor = 0;
        while let Some(first) = p.dirty.next_set(cursor) {
            if self.stopped.load(Ordering::Acquire)
                || p.away.load(Ordering::Acquire)
                || matches!(p.state(), PeerState::OutOfSync | PeerState::Losing)
            {
                return Err(ResyncError::Stopped);
            }
            // Room in the window, and the rate limit's time come. Chunks in
            // flight are answered before any wait, so a paused resync holds
            // no range a client write could need.
            let regions_per_chunk = loop {
                let now = Instant::now();
                throttle.observe(now, client_writes());
                p.resync
                    .limit
                    .store(throttle.limit(now).unwrap_or(0), Ordering::Relaxed);
                p.resync
                    .yielding
                    .store(throttle.yielding(now), Ordering::Relaxed);
                let data = flights.iter().map(|f| f.data).sum();
                if throttle.full(now, flights.len(), data) {
                    let f = flights.pop_front().expect("a full window holds a chunk");
                    self.land(p, f, &mut meter).await?;
                    continue;
                }
                let delay = throttle.delay(now);
                if delay.is_zero() {
                    break (throttle.chunk(now) / RESYNC_REGION).max(1);
                }
                while let Some(f) = flights.pop_front() {
                    self.land(p, f, &mut meter).await?;
                }
                tokio::time::sleep(delay.min(PACE_STEP)).await;
            };
            let mut n = 1;
            while n < regions_per_chunk && p.dirty.is_set(first + n) {
                n += 1;
            }
            cursor = first + n;
            let lba = first * RESYNC_REGION / bs;
            let end = ((first + n) * RESYNC_REGION / bs).min(v.num_blocks());
            if lba >= end {
                continue;
            }
            let range = self.ranges.lock(lba, end - lba).await;
            let (along, n, end) = match self.unwritten_along(p, first, n, lba, end).await {
                Ok(Some((guard, m, to))) => (Some(guard), m, to),
                Ok(None) => (None, n, end),
                Err(cause) => {
                    return Err(ResyncError::Copy {
                        start: lba,
                        end,
                        cause: CopyError::Allocation(cause),
                    })
                }
            };
            cursor = first + n;
            let (calls, chunk) = self
                .send_range(link, lba, end - lba)
                .await
                .map_err(|cause| ResyncError::Copy {
                    start: lba,
                    end,
                    cause,
                })?;
            throttle.started(Instant::now(), chunk.data, chunk.requests);
            sent.data += chunk.data;
            sent.unmapped += chunk.unmapped;
            sent.requests += chunk.requests;
            p.resync.data.fetch_add(chunk.data, Ordering::Relaxed);
            p.resync
                .unmapped
                .fetch_add(chunk.unmapped, Ordering::Relaxed);
            flights.push_back(Flight {
                _range: range,
                _along: along,
                calls,
                data: chunk.data,
                first,
                regions: n,
                lba,
                end,
            });
            unflushed += chunk.data;
            if unflushed >= flush_every {
                unflushed = 0;
                // No range is held while the last flush may still run: a
                // client write waits for a chunk, not for the copy's disk.
                // This empties the pipeline once per flush.
                while let Some(f) = flights.pop_front() {
                    self.land(p, f, &mut meter).await?;
                }
                if let Some(f) = flushing.take() {
                    f.wait().await.map_err(ResyncError::Flush)?;
                }
                *flushing = Some(
                    link.send(self.cfg.epoch, Op::Flush)
                        .map_err(ResyncError::Flush)?,
                );
            }
        }
        while let Some(f) = flights.pop_front() {
            self.land(p, f, &mut meter).await?;
        }
        Ok(sent)
    }

    /// When blocks `[lba, end)` (dirty regions `first..first + n`, their
    /// range held) are all unwritten here, takes the unwritten dirty
    /// regions right after them along, up to [`UNMAP_SPAN`] in all: holds
    /// their range too, and returns it with the chunk's regions and end
    /// block. `None` when there is nothing to take along.
    async fn unwritten_along(
        &self,
        p: &Peer,
        first: u64,
        n: u64,
        lba: u64,
        end: u64,
    ) -> Result<Option<(RangeGuard<'_>, u64, u64)>, VolumeError> {
        let v = self.copy.volume();
        let bs = v.block_size() as u64;
        let region_end = |r: u64| (r * RESYNC_REGION / bs).min(v.num_blocks());
        let (state, run) = v.block_status(lba).await?;
        if state != BlockState::Deallocated || lba + run <= end {
            return Ok(None);
        }
        // Regions up to where the unwritten run went when looked at without
        // their range held: only a guess until it is.
        let most = (UNMAP_SPAN / RESYNC_REGION).max(n);
        let mut m = n;
        while m < most && p.dirty.is_set(first + m) && region_end(first + m + 1) <= lba + run {
            m += 1;
        }
        if m == n {
            return Ok(None);
        }
        let along = self.ranges.lock(end, region_end(first + m) - end).await;
        let (state, run) = v.block_status(end).await?;
        if state != BlockState::Deallocated {
            return Ok(None);
        }
        while m > n && region_end(first + m) > end + run {
            m -= 1;
        }
        Ok((m > n).then(|| (along, m, region_end(first + m))))
    }

    /// Waits for every answer to a chunk, then clears its regions and lets
    /// its range go.
    async fn land(
        &self,
        p: &Peer,
        f: Flight<'_>,
        meter: &mut RateMeter,
    ) -> Result<(), ResyncError> {
        let (first, regions, lba, end) = (f.first, f.regions, f.lba, f.end);
        f.settle().await.map_err(|e| ResyncError::Copy {
            start: lba,
            end,
            cause: CopyError::Link(e),
        })?;
        for r in first..first + regions {
            p.dirty.clear(r);
        }
        let bytes = regions * RESYNC_REGION;
        p.resync.done.fetch_add(bytes, Ordering::Relaxed);
        let rate = meter.add(Instant::now(), bytes);
        p.resync.rate.store(rate, Ordering::Relaxed);
        Ok(())
    }

    /// Records that `p`, in the write path as in sync, holds every write,
    /// the caller holding `state_change`. When that fails the peer stays in
    /// sync here: a record given up on may still commit later, so a write it
    /// misses must still be recorded (after it). The supervisor tries again.
    pub(super) async fn record_in_sync(&self, p: &Peer) -> Result<(), ResyncError> {
        self.control
            .replica_in_sync(self.copy.name(), p.node, self.cfg.epoch)
            .await
            .map_err(ResyncError::Record)?;
        p.unrecorded.store(false, Ordering::Release);
        Ok(())
    }
}

impl Primary {
    /// Sends what makes blocks `[lba, lba + blocks)` of the peer behind
    /// `link` equal to this copy's, the caller holding the range: written
    /// blocks (a written block of zeros included) are read and sent as
    /// data, unwritten ones unmapped without being read, so the peer's copy
    /// stays as thin as this one and its checksums match block for block.
    /// Returns the requests, unanswered, and what they send.
    async fn send_range<'l>(
        &self,
        link: &'l Link,
        lba: u64,
        blocks: u64,
    ) -> Result<(Vec<Call<'l>>, Sent), CopyError> {
        let v = self.copy.volume();
        let bs = v.block_size() as u64;
        let end = lba + blocks;
        // Runs of written and unwritten blocks, neighbours of one kind merged.
        let mut runs: Vec<(bool, u64, u64)> = Vec::new();
        let mut at = lba;
        while at < end {
            let (state, n) = v.block_status(at).await.map_err(CopyError::Allocation)?;
            let n = n.clamp(1, end - at);
            let written = state == BlockState::Mapped;
            match runs.last_mut() {
                Some((w, _, len)) if *w == written => *len += n,
                _ => runs.push((written, at, n)),
            }
            at += n;
        }
        let mut calls = Vec::with_capacity(runs.len());
        let mut sent = Sent::default();
        // Written runs go out in requests of at most DATA_REQUEST bytes.
        let most = (DATA_REQUEST / bs).max(1);
        let requests = runs.into_iter().flat_map(|(written, at, n)| {
            let step = if written { most } else { n };
            (at..at + n)
                .step_by(step as usize)
                .map(move |from| (written, from, step.min(at + n - from)))
        });
        for (written, at, n) in requests {
            let op = if written {
                match v.read(at, n as u32).await {
                    Ok(data) => Op::Write {
                        lba: at,
                        fua: false,
                        data: volume::buffer::into_bytes(data),
                    },
                    Err(e) => {
                        // The range is held until what was sent is answered.
                        let _ = answered(calls).await;
                        return Err(CopyError::Read(e));
                    }
                }
            } else {
                Op::Unmap { lba: at, blocks: n }
            };
            match link.send(self.cfg.epoch, op) {
                Ok(c) => calls.push(c),
                Err(e) => {
                    let _ = answered(calls).await;
                    return Err(CopyError::Link(e));
                }
            }
            if written {
                sent.data += n * bs;
            } else {
                sent.unmapped += n * bs;
            }
            sent.requests += 1;
        }
        Ok((calls, sent))
    }
}

/// Why a resync stopped before the peer was in sync.
#[derive(Debug, Error)]
pub(super) enum ResyncError {
    /// The peer failed a write and the record of that is not committed yet.
    #[error("its out-of-sync record is not committed yet")]
    NotRecorded,
    /// The peer's state changed under the resync.
    #[error("its state changed")]
    StateChanged,
    /// The primary stopped, or the peer was lost again.
    #[error("stopped")]
    Stopped,
    /// A run of dirty blocks could not be copied.
    #[error("copying blocks {start}..{end}: {cause}")]
    Copy {
        start: u64,
        end: u64,
        cause: CopyError,
    },
    /// The peer did not make the copied blocks durable.
    #[error("flushing the replica: {0}")]
    Flush(LinkError),
    /// The peer did not take the volume's persistent reservations.
    #[error("{0}")]
    Reservations(String),
    /// A snapshot the peer misses could not be brought to it.
    #[error("catching up a snapshot: {0}")]
    Snapshot(String),
    /// The peer failed a request of a snapshot's catch-up (`what`).
    #[error("catching up a snapshot: {what}: {cause}")]
    SnapshotLink { what: String, cause: LinkError },
    /// The peer is in sync but the control plane did not record it.
    #[error("recording the replica in sync failed: {0}")]
    Record(ControlError),
}

impl ResyncError {
    /// What the peer's storage said, where the resync stopped because the
    /// peer's disk failed.
    pub(super) fn disk_failure(&self) -> Option<String> {
        match self {
            ResyncError::Copy {
                cause: CopyError::Link(e),
                ..
            }
            | ResyncError::Flush(e)
            | ResyncError::SnapshotLink { cause: e, .. } => super::peer::disk_failure(e),
            _ => None,
        }
    }
}

/// Why a range could not be copied to a peer.
#[derive(Debug, Error)]
pub(super) enum CopyError {
    /// The local copy could not be read.
    #[error("reading the local copy: {0}")]
    Read(VolumeError),
    /// The local copy's allocation could not be read.
    #[error("reading the local copy's allocation: {0}")]
    Allocation(VolumeError),
    /// The peer did not take the data.
    #[error("{0}")]
    Link(LinkError),
}
