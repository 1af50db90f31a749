//! Re-placement policy, run by the leader: a volume short of copies gets
//! new ones on other members, filled by the primary's full sync as any
//! added copy ([`Command::AddReplica`]).
//!
//! - A volume that lost a copy with a member removed as dead
//!   ([`Command::RemoveDeadNode`]) asks for as many copies as it had: the
//!   leader adds the missing ones at once (the member is gone for good).
//! - A copy on a data node the leader has not heard from for the
//!   re-placement delay ([`crate::ClusterState::replace_delay_secs`], an
//!   hour unless set; 0 turns re-placement off) is replaced
//!   ([`Command::ReplaceCopy`]): a new copy is placed elsewhere and the
//!   old one dropped once the new one is in sync. The delay is there
//!   because most nodes that stop come back (a reboot, a patch, a cable):
//!   they catch up on the regions they missed, which costs far less than
//!   copying a whole volume, so a copy is rebuilt elsewhere only once its
//!   node has been gone long enough to be probably gone for good.
//!
//! A new copy never goes to a node in maintenance, a node that already
//! holds one, or a node the leader has not heard from lately; nothing is
//! placed while the volume's primary is silent (the failover comes
//! first). A node in maintenance that stops is planned work: its copies
//! wait for it.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::{Duration, Instant};

use openraft::ServerState;

use crate::http::Answer;
use crate::lease::{DEAD_AFTER, ELECTION_MARGIN, LEASE};
use crate::member::{Inner, LeaderWrite};
use crate::{ClusterStatus, Command, NodeId};

/// How often the leader looks for volumes short of copies.
const ROUND: Duration = Duration::from_secs(1);

/// How long the leader waits before it tries a refused or failed
/// re-placement of the same volume again.
const RETRY: Duration = Duration::from_secs(30);

/// The log version that has [`Command::ReplaceCopy`].
const REPLACE_VERSION: u32 = 4;
const _: () = assert!(crate::LOG_VERSION >= REPLACE_VERSION);

/// On the leader: adds the copies volumes miss and replaces copies on
/// nodes silent for the re-placement delay.
pub(crate) async fn run(me: Weak<Inner>) {
    let mut retry_at: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::time::sleep(ROUND).await;
        let Some(s) = me.upgrade() else { return };
        if s.raft.metrics().borrow().state != ServerState::Leader {
            retry_at.clear();
            continue;
        }
        // What the failover loop noted of this leadership: a new leader
        // has heard nobody yet, so it waits as before a failover.
        let Some((_, since)) = *s.leader_since.lock().unwrap() else {
            continue;
        };
        if since.elapsed() < LEASE + ELECTION_MARGIN {
            continue;
        }
        let state = s.store.state();
        let (alive, silent_for): (Vec<NodeId>, HashMap<NodeId, Duration>) = {
            let seen = s.seen.lock().unwrap();
            let mut alive = vec![s.me.id];
            let mut silent = HashMap::new();
            for &n in state.nodes.keys().filter(|&&n| n != s.me.id) {
                // Never heard in this leadership: silent since it began.
                let quiet = seen.get(&n).map_or(since.elapsed(), |t| t.elapsed());
                if quiet < DEAD_AFTER {
                    alive.push(n);
                } else {
                    silent.insert(n, quiet);
                }
            }
            (alive, silent)
        };
        let up = |n: NodeId| alive.contains(&n);
        let delay = state.replace_delay_secs().map(Duration::from_secs);
        for v in state.volumes.values() {
            if !up(v.primary) || retry_at.get(&v.name).is_some_and(|t| Instant::now() < *t) {
                continue;
            }
            let cmd = if v.copies_missing() > 0 && delay.is_some() {
                let Some(with) = state.replacement_for(v, up) else {
                    tracing::debug!(volume = %v.name, "short of a copy and no data node with room");
                    continue;
                };
                tracing::warn!(volume = %v.name, node = with, wanted = v.copies_wanted(), have = v.replicas.len(), "volume short of a copy: placing a new one");
                Command::AddReplica {
                    volume: v.name.clone(),
                    node: with,
                }
            } else if let Some(delay) = delay {
                let Some((&old, quiet)) = silent_for
                    .iter()
                    .filter(|(n, q)| {
                        v.replicas.contains_key(n)
                            && **n != v.primary
                            && **q >= delay
                            && !state.in_maintenance(**n)
                            && !v.being_replaced(**n)
                    })
                    .min_by_key(|(n, _)| **n)
                else {
                    continue;
                };
                let Some(with) = state.replacement_for(v, up) else {
                    tracing::debug!(volume = %v.name, old, "copy to replace and no data node with room");
                    continue;
                };
                if let Some(why) = older_member(&s, &alive).await {
                    tracing::warn!(volume = %v.name, old, "copy not replaced: {why}; the entry needs log version {REPLACE_VERSION}");
                    retry_at.insert(v.name.clone(), Instant::now() + RETRY);
                    continue;
                }
                tracing::warn!(volume = %v.name, old, new = with, silent_s = quiet.as_secs(), "copy on a silent node: placing a new one to replace it");
                Command::ReplaceCopy {
                    volume: v.name.clone(),
                    node: old,
                    with,
                }
            } else {
                continue;
            };
            match s.write(cmd).await {
                Ok(()) => {
                    retry_at.remove(&v.name);
                }
                Err(LeaderWrite::NotLeader) => break,
                Err(LeaderWrite::Refused(why)) => {
                    tracing::warn!(volume = %v.name, "re-placement refused: {why}");
                    retry_at.insert(v.name.clone(), Instant::now() + RETRY);
                }
                Err(LeaderWrite::Raft(e)) => {
                    tracing::warn!(volume = %v.name, "re-placement failed: {e}");
                    retry_at.insert(v.name.clone(), Instant::now() + RETRY);
                }
            }
        }
    }
}

/// A running member other than the leader that does not read
/// [`Command::ReplaceCopy`] yet, or does not say which entries it reads,
/// as a sentence; silent members are not asked (they are what is being
/// replaced, and apply the entry, if they can, when they return).
async fn older_member(s: &Inner, alive: &[NodeId]) -> Option<String> {
    for &n in alive.iter().filter(|&&n| n != s.me.id) {
        let Some(addr) = s.addr_of(n) else { continue };
        match s
            .caller
            .post::<_, Answer<ClusterStatus>>(&addr, "/cluster/status", &())
            .await
        {
            Ok(Ok(st)) if st.log_version >= REPLACE_VERSION => {}
            Ok(Ok(st)) => return Some(format!("node {n} reads log version {}", st.log_version)),
            Ok(Err(e)) => return Some(format!("node {n} answers: {e}")),
            Err(e) => return Some(format!("node {n} does not answer ({e})")),
        }
    }
    None
}
