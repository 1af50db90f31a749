//! A planned switchover, as the old primary runs it: it stops taking new
//! commands (they fail as an access state transition, which initiators
//! retry, and reach the new primary when they do), waits for those in
//! flight, and checks that every copy that stays in sync holds all it
//! acknowledged. Only then may the control plane make another copy the
//! primary without marking this one out of sync.
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
