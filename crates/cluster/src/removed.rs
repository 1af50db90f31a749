//! How a member removed as dead finds out when it comes back. Its own log
//! never got the removal (the leader stopped sending it entries), so it
//! still counts itself a member; the others refuse its heartbeats (no
//! lease, so it acknowledges no write as a primary) and its votes. While
//! its heartbeats go unanswered, it asks the members its state names for
//! their status: one whose state records it removed settles the question,
//! and the node stops serving cluster volumes.

use std::sync::atomic::Ordering;

use crate::http::Answer;
use crate::member::Inner;
use crate::ClusterStatus;

/// Asks the other members whether this one was removed; marks it so
/// (for good) on the first that says it was.
pub(crate) async fn ask(s: &Inner) {
    if s.removed.load(Ordering::Relaxed) {
        return;
    }
    let state = s.store.state();
    for (&node, info) in &state.nodes {
        if node == s.me.id {
            continue;
        }
        let Ok(Ok(status)) = s
            .caller
            .post::<_, Answer<ClusterStatus>>(&info.cluster_addr, "/cluster/status", &())
            .await
        else {
            continue;
        };
        if status.state.was_removed(s.me.id) {
            s.removed.store(true, Ordering::Relaxed);
            tracing::error!(
                node = s.me.id,
                by = node,
                "this node was removed from the cluster as dead: it serves no cluster volume; \
                 wipe its data directory and join it as a new node to use it again"
            );
            return;
        }
    }
}
