//! Failover policy, run by the leader: a volume whose primary stopped
//! sending heartbeats for [`DEAD_AFTER`] gets a live in-sync copy promoted
//! at the next epoch (the timing argument is in [`crate::lease`]); a silent
//! holder of the floating address is replaced the same way ([`crate::floating`]).

use std::sync::Weak;
use std::time::{Duration, Instant};

use openraft::ServerState;

use crate::lease::{DEAD_AFTER, ELECTION_MARGIN, LEASE};
use crate::member::{Inner, LeaderWrite};
use crate::{Command, NodeId, ReplicaState};

/// On the leader: promotes an in-sync replica of every volume whose primary
/// stopped sending heartbeats.
pub(crate) async fn run(me: Weak<Inner>) {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Some(s) = me.upgrade() else { return };
        let (leading, term) = {
            let m = s.raft.metrics().borrow().clone();
            (m.state == ServerState::Leader, m.current_term)
        };
        let since = {
            let mut ls = s.leader_since.lock().unwrap();
            match (leading, *ls) {
                // Leading in a term not seen leading before (even if this
                // loop missed the lost leadership in between): what was
                // heard in an earlier term says nothing about the leases
                // another leader may have granted since.
                (true, None) => {
                    *ls = Some((term, Instant::now()));
                    s.seen.lock().unwrap().clear();
                }
                (true, Some((t, _))) if t != term => {
                    *ls = Some((term, Instant::now()));
                    s.seen.lock().unwrap().clear();
                }
                (false, Some(_)) => *ls = None,
                _ => {}
            }
            ls.map(|(_, at)| at)
        };
        let Some(since) = since else { continue };
        // A new leader has heard nobody yet. Leases were granted only by a
        // leader a quorum confirmed, so none granted by the old leader
        // outlives this election by more than LEASE: after that (and a
        // margin) a silent primary can be replaced.
        let grace = LEASE + ELECTION_MARGIN;
        if since.elapsed() < grace {
            crate::floating::assign(&s, &s.store.state(), true).await;
            continue;
        }
        let state = s.store.state();
        for v in state.volumes.values() {
            // Deciding and fencing are one step against heartbeat answers:
            // a heartbeat answered before it makes the primary alive here,
            // one answered after it waits for the promotion (see
            // `h_heartbeat`), so the old primary never gets a lease on a
            // state in which it still leads while another node takes over.
            let candidate = {
                let seen = s.seen.lock().unwrap();
                let alive = |n: NodeId| seen.get(&n).is_some_and(|t| t.elapsed() < DEAD_AFTER);
                if alive(v.primary) {
                    continue;
                }
                let candidate = v
                    .replicas
                    .iter()
                    .find(|(&n, st)| {
                        n != v.primary
                            && **st == ReplicaState::InSync
                            && alive(n)
                            && !state.in_maintenance(n)
                    })
                    .map(|(&n, _)| n);
                if candidate.is_some() {
                    s.replacing.lock().unwrap().insert(v.primary);
                }
                candidate
            };
            match candidate {
                Some(n) => {
                    tracing::warn!(volume = %v.name, old = v.primary, new = n, epoch = v.epoch + 1, "primary silent, promoting an in-sync replica");
                    let cmd = Command::Promote {
                        volume: v.name.clone(),
                        node: n,
                        expected_epoch: v.epoch,
                    };
                    let outcome = s.write(cmd).await;
                    {
                        let _seen = s.seen.lock().unwrap();
                        s.replacing.lock().unwrap().remove(&v.primary);
                    }
                    match outcome {
                        Err(LeaderWrite::Refused(why)) => {
                            tracing::warn!(volume = %v.name, "promotion refused: {why}")
                        }
                        Err(LeaderWrite::Raft(e)) => {
                            tracing::warn!(volume = %v.name, "promotion refused: {e}")
                        }
                        Ok(()) => {
                            s.events
                                .failovers
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(LeaderWrite::NotLeader) => {}
                    }
                }
                None => {
                    tracing::debug!(volume = %v.name, "primary silent and no live in-sync replica: volume waits")
                }
            }
        }
        crate::floating::assign(&s, &state, false).await;
    }
}
