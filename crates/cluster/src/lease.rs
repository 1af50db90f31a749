//! Leases: how long a member may act as a volume's primary, and the
//! heartbeats that renew them.
//!
//! Every member sends a heartbeat to the leader every [`HEARTBEAT`]
//! (200 ms). The leader answers only after a fresh round of Raft heartbeats
//! confirmed that a quorum still follows it, and the answer carries the
//! leader's commit index at that moment. A member's lease runs [`LEASE`]
//! (1 s) from the moment it *sent* the last answered heartbeat
//! ([`Cluster::lease_valid_until`](crate::Cluster::lease_valid_until)),
//! and is taken only once the member has applied the log up to that index: while a lease runs, the cluster state
//! the member follows is at least as new as the state the leader had when
//! it answered. A primary acknowledges writes only while its lease runs and
//! that state names it primary at its epoch, so a member restarted with an
//! old state, or frozen while the others moved on, finds out that it was
//! replaced before it acknowledges anything.
//!
//! The leader records the moment it *answered* each heartbeat, which is
//! later than the send. It declares a data node dead when it has not heard
//! from it for [`DEAD_AFTER`] (1.5 s) and then promotes a live in-sync copy
//! of each volume that node was primary of ([`crate::failover`]; the dead
//! primary's copy becomes out of sync in the same step, the epoch grows by
//! one). A copy that misses
//! writes is never promoted; such a volume waits for its primary.
//!
//! So a lease always ends at least `DEAD_AFTER - LEASE` (0.5 s) before the
//! leader may replace its holder. A newly elected leader has heard nobody;
//! every lease the previous leader granted was confirmed by a quorum before
//! this election, so none outlives it by more than `LEASE`: the new leader
//! waits `LEASE` plus [`ELECTION_MARGIN`] (300 ms) after its election
//! before it replaces anyone.
//! Either way, when a new primary exists, the old one has stopped
//! acknowledging writes, and every copy refuses its older epoch anyway.
//!
//! Durations are measured on each node's monotonic clock; no synchronized
//! wall clocks are needed, only clock *rates* within a few percent of each
//! other (the margins are 30–50 % of the lease). Request timestamps are
//! checked against wall clocks within 30 s, for replay protection only.
//!
//! A dead primary is replaced about `DEAD_AFTER` (plus up to 100 ms) after
//! its last heartbeat, about 1.6 s; if it was also the Raft leader, after
//! the election (0.4–0.7 s election timeout; followers refuse to vote until
//! 0.7 s after they last heard the old leader, so about 1–1.2 s) and then
//! `LEASE` and `ELECTION_MARGIN`: about 2.6 s.

use std::sync::Weak;
use std::time::{Duration, Instant};

use crate::http::{Answer, NodeRequest};
use crate::member::Inner;

/// How often every member tells the leader it is alive.
pub const HEARTBEAT: Duration = Duration::from_millis(200);
/// How long a member may act as primary after sending an answered heartbeat.
pub const LEASE: Duration = Duration::from_millis(1000);
/// How long the leader waits without a heartbeat before declaring a node dead.
pub const DEAD_AFTER: Duration = Duration::from_millis(1500);
/// How long a new leader waits past `LEASE` after its election before it
/// replaces a primary it has not heard from.
pub const ELECTION_MARGIN: Duration = Duration::from_millis(300);

// A lease must end before the leader can give its volumes to another node.
const _: () = assert!(DEAD_AFTER.as_millis() > LEASE.as_millis());

/// Whether this node still leads: a quorum answered a fresh round of
/// heartbeats (bounded by `LEASE`, since a later answer is useless). Gives
/// the index of the last entry committed at that moment, which this node
/// has applied when it returns.
pub(crate) async fn confirm_leadership(s: &Inner) -> Option<u64> {
    match tokio::time::timeout(LEASE, s.raft.ensure_linearizable()).await {
        Ok(Ok(read)) => Some(read.map(|l| l.index).unwrap_or(0)),
        _ => None,
    }
}

/// Keeps this node's lease: a heartbeat to the leader, answered only while
/// the leader has a quorum, extends it to `LEASE` after the send time, once
/// this node has applied everything the leader had committed by then.
pub(crate) async fn heartbeats(me: Weak<Inner>) {
    // The end of the last lease counted as run out.
    let mut counted: Option<Instant> = None;
    // Heartbeats unanswered in a row.
    let mut unanswered = 0u32;
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        let Some(s) = me.upgrade() else { return };
        let until = *s.lease_until.lock().unwrap();
        if let Some(t) = until.filter(|t| *t <= Instant::now() && counted != Some(*t)) {
            counted = Some(t);
            s.events
                .lease_expirations
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let sent = Instant::now();
        let committed = match s.leader() {
            Some(l) if l == s.me.id => {
                // The leader has applied its read index when this returns.
                let confirmed = if s.store.state().nodes.contains_key(&l) {
                    confirm_leadership(&s).await
                } else {
                    None
                };
                // As `h_heartbeat` answers the other members.
                confirmed.and_then(|committed| {
                    let mut seen = s.seen.lock().unwrap();
                    if s.replacing.lock().unwrap().contains(&l) {
                        return None;
                    }
                    seen.insert(l, Instant::now());
                    Some(committed.max(s.store.applied_index()))
                })
            }
            Some(l) => match s.addr_of(l) {
                Some(addr) => match s
                    .caller
                    .post::<_, Answer<u64>>(
                        &addr,
                        "/cluster/heartbeat",
                        &NodeRequest { node: s.me.id },
                    )
                    .await
                {
                    Ok(Ok(index)) => Some(index),
                    _ => None,
                },
                None => None,
            },
            None => None,
        };
        let Some(index) = committed else {
            unanswered += 1;
            // Every second without an answer: was this node removed?
            if unanswered.is_multiple_of(5) {
                crate::removed::ask(&s).await;
            }
            continue;
        };
        unanswered = 0;
        // A lease on a state older than the leader's would let this node
        // act on a role it no longer has. Waiting longer than the lease
        // would run is pointless: the next heartbeat tries again.
        let caught_up = s
            .raft
            .wait(Some(LEASE.saturating_sub(sent.elapsed())))
            .applied_index_at_least(Some(index), "caught up with the leader")
            .await
            .is_ok();
        if caught_up {
            *s.lease_until.lock().unwrap() = Some(sent + LEASE);
        } else {
            tracing::debug!(
                index,
                "lease not renewed: this node has not applied the leader's commits yet"
            );
        }
    }
}
