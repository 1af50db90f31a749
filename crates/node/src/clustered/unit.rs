//! A cluster volume's SCSI state lives with its primary: the logical unit
//! of every other node passes the commands that meet that state on to the
//! primary's logical unit, and the primary keeps the persistent
//! reservations on every copy that takes writes, so the node that leads
//! the volume next starts from them.
//!
//! Why through the primary and not the Raft log: a reservation fences
//! writes, and every write of the volume is ordered by the primary. A
//! change made there, under the unit's fence, is in force for the next
//! command of every node at once, with no node applying a log entry later
//! than another. Copies get the new state like a write (a copy that fails
//! it is recorded out of sync first), so a failover keeps it; without a
//! quorum the primary may not acknowledge, and the change fails.

use std::sync::{Arc, Weak};

use async_trait::async_trait;
use bytes::Bytes;
use replica::wire::{Answer, Command};
use replica::{ClusterVolume, LocalCopy, Route};
use scsi::reservations::{PersistentState, StateStore};
use scsi::{LogicalUnit, Place, Request, Response, Sense, Status};

/// How this node's logical unit of a cluster volume reaches the primary's.
pub(super) struct ToPrimary(pub(super) Arc<ClusterVolume>);

#[async_trait]
impl scsi::Owner for ToPrimary {
    fn place(&self) -> Place {
        // Asked for every command: read in place, no handle taken.
        self.0.with_route(|r| match r {
            Route::Primary(_) => Place::Here,
            Route::Forward(_) => Place::Elsewhere,
            Route::Waiting => Place::Unknown,
        })
    }

    async fn run(&self, req: &Request<'_>) -> Result<Response, Sense> {
        let command = Command {
            nexus: req.initiator.to_string(),
            cdb: Bytes::copy_from_slice(req.cdb),
            expected_len: req.expected_len,
            data: req.data_out.clone(),
        };
        let a = self
            .0
            .command(command)
            .await
            .map_err(|e| scsi::sense_of(&e))?;
        let Some(status) = Status::from_code(a.status) else {
            tracing::warn!(volume = %self.0.name(), status = a.status, "the primary answered a command with an unknown status");
            return Err(Sense::ALUA_TRANSITION);
        };
        Ok(Response {
            status,
            data: a.data.to_vec(),
            sense: (!a.sense.is_empty()).then(|| a.sense.to_vec()),
            data_out_wanted: a.data_out_wanted,
        })
    }

    fn nexus_ended(&self, nexus: &str) {
        self.0.nexus_ended(nexus);
    }

    async fn reset(&self) {
        self.0.reset().await;
    }
}

/// The primary's logical unit as commands from other nodes reach it.
pub(super) struct FromOthers(pub(super) Weak<LogicalUnit>);

#[async_trait]
impl replica::Unit for FromOthers {
    async fn run(&self, c: Command) -> Answer {
        let Some(lu) = self.0.upgrade() else {
            // The volume stops being presented here: retried elsewhere.
            return Answer {
                status: Status::CheckCondition as u8,
                sense: Bytes::from(Sense::ALUA_TRANSITION.encode(false)),
                data: Bytes::new(),
                data_out_wanted: None,
            };
        };
        let r = lu
            .execute_forwarded(Request {
                cdb: &c.cdb,
                data_out: c.data,
                expected_len: c.expected_len,
                initiator: &c.nexus,
            })
            .await;
        Answer {
            status: r.status as u8,
            sense: r.sense.map(Bytes::from).unwrap_or_default(),
            data: Bytes::from(r.data),
            data_out_wanted: r.data_out_wanted,
        }
    }

    fn nexus_ended(&self, nexus: &str) {
        if let Some(lu) = self.0.upgrade() {
            lu.nexus_removed(nexus);
        }
    }

    async fn reset(&self) {
        if let Some(lu) = self.0.upgrade() {
            lu.reset().await;
        }
    }
}

/// Saves the persistent reservations the primary's logical unit changes
/// on every copy that takes writes.
pub(super) struct OnEveryCopy(pub(super) Arc<ClusterVolume>);

#[async_trait]
impl StateStore for OnEveryCopy {
    async fn save(&self, bytes: Vec<u8>) -> Result<(), Sense> {
        self.0
            .save_reservations(Bytes::from(bytes))
            .await
            .map_err(|e| {
                tracing::warn!(volume = %self.0.name(), "persistent reservation change not kept: {e}");
                scsi::sense_of(&e)
            })
    }
}

/// The persistent reservations a new primary starts from: as this copy
/// last got them while the node ran (whatever their APTPL, as no power
/// was lost), or as read from disk after a start (only with APTPL).
pub(super) fn reservations_of(copy: &LocalCopy) -> PersistentState {
    let decoded = match copy.reservations() {
        Ok(None) => return PersistentState::default(),
        Ok(Some(s)) if s.current => PersistentState::decode_current(&s.state),
        Ok(Some(s)) => PersistentState::decode(&s.state),
        Err(e) => {
            tracing::error!(volume = %copy.name(), "persistent reservations unreadable, starting without: {e}");
            return PersistentState::default();
        }
    };
    decoded.unwrap_or_else(|e| {
        tracing::error!(volume = %copy.name(), "persistent reservations unreadable, starting without: {e}");
        PersistentState::default()
    })
}
