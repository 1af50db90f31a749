//! A planned switchover, as the old primary runs it: it stops taking new
//! commands (they fail as an access state transition, which initiators
//! retry, and reach the new primary when they do), waits for those in
//! flight, and checks that every copy that stays in sync holds all it
//! acknowledged. Only then may the control plane make another copy the
//! primary without marking this one out of sync.
//!
//! The same drain serves a primary whose own disk fails a write or a flush
//! while a copy on another node is in sync ([`Primary::local_failed`]):
//! rather than answer the initiator with an error, the role stops taking
//! commands (the failed one is answered as a transition too, and retried on
//! the new primary, which holds it), and the control plane promotes that
//! copy at a new epoch with this one recorded out of sync, as after a
//! failover ([`Primary::drain_failed`]).
//!
//! Every command that changes the volume (a write of any kind, a flush,
//! a reservation change, a resize) is counted while it runs; the fence is
//! raised first and the count read after, and a command counts itself
//! first and reads the fence after, so no command slips past both.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use thiserror::Error;
use volume::{Unavailable, VolumeError};

use super::{PeerState, Primary};

/// Why a primary did not hand its volume over (it serves on as before).
#[derive(Debug, Error)]
pub enum HandOverError {
    /// The target holds no copy this primary writes to.
    #[error("volume {volume}: node {node} holds no copy of it")]
    NoCopy { volume: String, node: u64 },
    /// A copy that stays in sync misses writes, or is being checked.
    #[error("volume {volume}: the copy on node {node} is {state}; wait until it is in sync")]
    NotInSync {
        volume: String,
        node: u64,
        state: PeerState,
    },
    /// A copy still has regions to catch up on.
    #[error("volume {volume}: the copy on node {node} has {bytes} bytes to catch up on; wait until it is in sync")]
    CatchingUp {
        volume: String,
        node: u64,
        bytes: u64,
    },
    /// The target is not connected to this primary.
    #[error("volume {volume}: the copy on node {node} is not connected to the primary")]
    NotConnected { volume: String, node: u64 },
    /// Commands in flight did not finish in time.
    #[error("volume {volume}: {active} commands still in flight after {waited:?}")]
    Busy {
        volume: String,
        active: usize,
        waited: Duration,
    },
    /// Another hand-over (or a rollback) of this role is under way, or
    /// the role was handed over.
    #[error("volume {volume}: a hand-over or rollback of it is under way already")]
    InProgress { volume: String },
    /// This role may not serve (any more).
    #[error("volume {volume}: {source}")]
    NotServing {
        volume: String,
        #[source]
        source: VolumeError,
    },
}

/// A primary that stopped taking new commands and has none in flight.
/// Dropped before [`Drained::keep`], it takes commands again.
#[must_use = "the primary takes commands again once this is dropped"]
pub struct Drained<'a> {
    primary: &'a Primary,
    /// How long the commands in flight took to finish.
    pub waited: Duration,
    kept: bool,
}

impl Drained<'_> {
    /// The volume was handed over: this role takes no command again.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Drained<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.primary.fenced.store(false, Ordering::SeqCst);
            tracing::info!(
                volume = self.primary.copy.name(),
                "hand-over abandoned: taking commands again"
            );
        }
    }
}

/// New commands held off while the volume changes as a whole; taken
/// again when dropped.
pub(super) struct Fenced<'a>(&'a Primary);

impl Drop for Fenced<'_> {
    fn drop(&mut self) {
        self.0.fenced.store(false, Ordering::SeqCst);
    }
}

/// A command that changes the volume, counted while it runs.
pub(super) struct Admitted<'a>(&'a Primary);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Primary {
    /// Counts a command that changes the volume; refused once the role
    /// is handing the volume over.
    pub(super) fn admit(&self) -> Result<Admitted<'_>, VolumeError> {
        self.active.fetch_add(1, Ordering::SeqCst);
        let admitted = Admitted(self);
        self.check_fence()?;
        Ok(admitted)
    }

    /// Refuses a new command while the volume is being handed over.
    pub(super) fn check_fence(&self) -> Result<(), VolumeError> {
        if self.fenced.load(Ordering::SeqCst) {
            return Err(VolumeError::Unavailable(Unavailable::RoleEnded));
        }
        Ok(())
    }

    /// Stops taking new commands, waits up to `limit` for those in
    /// flight, and checks that the copy on `target` and every other copy
    /// that takes writes holds every acknowledged write: in sync, nothing
    /// left to catch up on, and (the target) connected. On success the
    /// role takes no command until the returned guard is dropped without
    /// [`Drained::keep`].
    pub async fn drain(&self, target: u64, limit: Duration) -> Result<Drained<'_>, HandOverError> {
        let volume = || self.copy.name().to_string();
        self.check_serving()
            .map_err(|source| HandOverError::NotServing {
                volume: volume(),
                source,
            })?;
        // Checked before the fence too: a hand-over that cannot happen
        // costs the initiators nothing.
        self.check_successors(target)?;
        let start = Instant::now();
        // One hand-over at a time: only the one that raised the fence may
        // lower it, or an abandoned one would unfence another under way.
        if self.fenced.swap(true, Ordering::SeqCst) {
            return Err(HandOverError::InProgress { volume: volume() });
        }
        let mut drained = Drained {
            primary: self,
            waited: Duration::ZERO,
            kept: false,
        };
        self.wait_idle(start, limit).await?;
        self.check_serving()
            .map_err(|source| HandOverError::NotServing {
                volume: volume(),
                source,
            })?;
        self.check_successors(target)?;
        drained.waited = start.elapsed();
        Ok(drained)
    }

    /// This copy failed a write or a flush with `e`. Where that is its disk
    /// failing (an I/O error, a full filesystem) and a copy on another node
    /// is in sync, connected and recorded so, the role stops taking
    /// commands and asks the control plane to hand the volume to that
    /// copy; the command is answered as a transition (the initiator
    /// retries it on the new primary, which holds it: the copies in sync
    /// took it). Otherwise, or where the control plane does not take the
    /// volume over, the failure is the command's, as before.
    pub(super) fn local_failed(&self, e: VolumeError) -> VolumeError {
        if !matches!(e, VolumeError::Io(_) | VolumeError::NoSpace) {
            return e;
        }
        if self.abdicating.load(Ordering::SeqCst) {
            return VolumeError::Unavailable(Unavailable::RoleEnded);
        }
        let Some(to) = self.successor() else {
            tracing::warn!(
                volume = self.copy.name(),
                "this node's copy failed and no other copy is in sync: the command fails: {e}"
            );
            return e;
        };
        let why = match &e {
            VolumeError::Io(io) => format!("I/O error: {io}"),
            other => other.to_string(),
        };
        if self.abdicating.swap(true, Ordering::SeqCst) {
            return VolumeError::Unavailable(Unavailable::RoleEnded);
        }
        // No new command from now on; those in flight end as they may.
        self.fenced.store(true, Ordering::SeqCst);
        if !self
            .control
            .primary_disk_failed(self.copy.name(), self.cfg.epoch, to, &why)
        {
            self.abdicating.store(false, Ordering::SeqCst);
            self.fenced.store(false, Ordering::SeqCst);
            return e;
        }
        tracing::warn!(
            volume = self.copy.name(),
            epoch = self.cfg.epoch,
            to,
            "this node's disk failed: handing the volume over to the copy on node {to}: {why}"
        );
        VolumeError::Unavailable(Unavailable::RoleEnded)
    }

    /// A copy that can take the volume over from this one: in sync,
    /// recorded so, and connected.
    fn successor(&self) -> Option<u64> {
        self.peers
            .iter()
            .find(|p| {
                p.state() == PeerState::InSync
                    && !p.unrecorded.load(Ordering::Acquire)
                    && p.link().is_some()
            })
            .map(|p| p.node)
    }

    /// After [`Primary::local_failed`] started a hand-over to `target`:
    /// waits up to `limit` for the commands in flight (no new one is
    /// taken) and checks that `target` can still take the volume over.
    /// The control plane then promotes it with this copy recorded out of
    /// sync ([`Primary::drain`]'s checks of the other copies do not apply:
    /// the new primary treats them as after a failover, and the regions
    /// this copy failed are in its activity log, which it reports as
    /// suspect when it returns).
    pub async fn drain_failed(
        &self,
        target: u64,
        limit: Duration,
    ) -> Result<Drained<'_>, HandOverError> {
        let volume = || self.copy.name().to_string();
        if !self.abdicating.load(Ordering::SeqCst) {
            return Err(HandOverError::InProgress { volume: volume() });
        }
        self.fenced.store(true, Ordering::SeqCst);
        let start = Instant::now();
        let mut drained = Drained {
            primary: self,
            waited: Duration::ZERO,
            kept: false,
        };
        self.wait_idle(start, limit).await?;
        let Some(p) = self.peers.iter().find(|p| p.node == target) else {
            return Err(HandOverError::NoCopy {
                volume: volume(),
                node: target,
            });
        };
        let state = p.state();
        if state != PeerState::InSync || p.unrecorded.load(Ordering::Acquire) {
            return Err(HandOverError::NotInSync {
                volume: volume(),
                node: target,
                state,
            });
        }
        drained.waited = start.elapsed();
        Ok(drained)
    }

    /// Waits until no command that changes the volume runs (the fence is
    /// up, so none starts), until `limit` after `start`.
    async fn wait_idle(&self, start: Instant, limit: Duration) -> Result<(), HandOverError> {
        loop {
            let idle = self.idle.notified();
            let active = self.active.load(Ordering::SeqCst);
            if active == 0 {
                return Ok(());
            }
            if start.elapsed() >= limit {
                return Err(HandOverError::Busy {
                    volume: self.copy.name().to_string(),
                    active,
                    waited: start.elapsed(),
                });
            }
            let _ = tokio::time::timeout(Duration::from_millis(10), idle).await;
        }
    }

    /// Holds new commands off (they fail as an access state transition,
    /// which initiators retry) and waits up to `limit` for those in flight,
    /// for a change of the whole volume (a rollback). Commands are taken
    /// again once the guard is dropped.
    pub(super) async fn fence_commands(
        &self,
        limit: Duration,
    ) -> Result<Fenced<'_>, HandOverError> {
        if self.fenced.swap(true, Ordering::SeqCst) {
            return Err(HandOverError::InProgress {
                volume: self.copy.name().to_string(),
            });
        }
        let fenced = Fenced(self);
        self.wait_idle(Instant::now(), limit).await?;
        Ok(fenced)
    }

    /// Whether the copies that stay in sync after a hand-over to `target`
    /// hold everything this role acknowledged.
    fn check_successors(&self, target: u64) -> Result<(), HandOverError> {
        let volume = || self.copy.name().to_string();
        if !self.peers.iter().any(|p| p.node == target) {
            return Err(HandOverError::NoCopy {
                volume: volume(),
                node: target,
            });
        }
        for p in &self.peers {
            // Every copy, not only the target: what a copy out of sync
            // misses is known to this role only (its dirty map), and the
            // new primary would not know which regions to copy.
            let state = p.state();
            if state != PeerState::InSync || p.unrecorded.load(Ordering::Acquire) {
                return Err(HandOverError::NotInSync {
                    volume: volume(),
                    node: p.node,
                    state,
                });
            }
            if p.dirty.count() > 0 {
                return Err(HandOverError::CatchingUp {
                    volume: volume(),
                    node: p.node,
                    bytes: p.dirty.count() * super::RESYNC_REGION,
                });
            }
            if p.node == target && p.link().is_none() {
                return Err(HandOverError::NotConnected {
                    volume: volume(),
                    node: target,
                });
            }
        }
        Ok(())
    }
}
