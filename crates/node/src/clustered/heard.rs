//! Which members the leader has heard from lately, for a portal that
//! redirects logins to a volume's primary.
//!
//! The cluster state names a primary until the leader replaces it, about
//! 1.6 s after it went silent (longer when it led too: an election first).
//! A login redirected in that time goes to a node that is gone. The
//! leader's view of the heartbeats is fresher: a node it has not heard
//! from for a few heartbeats is most likely gone, and a login meanwhile
//! is better answered "try again" than sent there. This node asks for that
//! view every heartbeat while it redirects logins, and keeps the answer.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use cluster::NodeId;

use super::Clustered;

/// A member the leader heard from within this long is taken to be up: three
/// heartbeats, so one late or lost heartbeat does not count it out.
const LATELY: Duration = Duration::from_millis(3 * cluster::HEARTBEAT.as_millis() as u64);

/// How long an answer is used: past this, no member counts as heard from.
/// Asked every heartbeat, an answer is replaced well before; one this old
/// means the asking is stuck, and what it said may no longer hold.
const FRESH: Duration = LATELY;

/// The members the leader heard from lately, as last asked.
#[derive(Default)]
pub(crate) struct Heard {
    /// When the leader last answered, and whom it had heard from then.
    view: Mutex<Option<(Instant, BTreeSet<NodeId>)>>,
}

impl Heard {
    /// Asks the leader every heartbeat from now on, for as long as the
    /// member lives.
    pub(crate) fn follow(self: &Arc<Self>, c: &Arc<Clustered>) {
        let (heard, c) = (Arc::downgrade(self), Arc::downgrade(c));
        tokio::spawn(ask_every_heartbeat(heard, c));
    }

    /// Whether the leader, asked less than [`FRESH`] ago, had heard from
    /// `node` within [`LATELY`].
    pub(crate) fn lately(&self, node: NodeId) -> bool {
        self.view
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|(at, up)| at.elapsed() < FRESH && up.contains(&node))
    }
}

async fn ask_every_heartbeat(heard: Weak<Heard>, c: Weak<Clustered>) {
    loop {
        let asked = Instant::now();
        let Some(member) = c.upgrade() else { return };
        // This member's own status when it leads; otherwise the leader's
        // view, asked over the member channel (none when it cannot be).
        let status = member.cluster.status().await;
        drop(member);
        let Some(heard) = heard.upgrade() else { return };
        // No leader, or one that did not answer (it may be the member that
        // died): nobody counts as heard from until one answers.
        let view = (status.leader.is_some() && !status.last_seen_ms.is_empty()).then(|| {
            let up = status
                .last_seen_ms
                .iter()
                .filter(|(_, &ms)| u128::from(ms) < LATELY.as_millis())
                .map(|(&n, _)| n)
                .collect();
            (asked, up)
        });
        *heard.view.lock().unwrap() = view;
        drop(heard);
        tokio::time::sleep(cluster::HEARTBEAT.saturating_sub(asked.elapsed())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_fresh_answer_counts_a_member_as_heard_from() {
        let heard = Heard::default();
        assert!(!heard.lately(1), "nobody before the leader answered");
        *heard.view.lock().unwrap() = Some((Instant::now(), BTreeSet::from([1, 3])));
        assert!(heard.lately(1) && heard.lately(3));
        assert!(!heard.lately(2), "not heard from by the leader");
        let old = Instant::now().checked_sub(FRESH).expect("clock");
        *heard.view.lock().unwrap() = Some((old, BTreeSet::from([1, 3])));
        assert!(!heard.lately(1), "an answer this old no longer holds");
    }
}
