//! The activity-log sweep of a primary.

use std::sync::atomic::Ordering;
use std::sync::Weak;

use super::{PeerState, Primary, SWEEP_INTERVAL};
use crate::wire::Op;

/// Sweeps the activity log and lets replicas settle theirs.
pub(super) async fn sweeper(me: Weak<Primary>) {
    loop {
        tokio::time::sleep(SWEEP_INTERVAL).await;
        let Some(v) = me.upgrade() else { return };
        if v.stopped.load(Ordering::Acquire) {
            return;
        }
        if v.abdicating.load(Ordering::SeqCst) {
            // This copy's disk failed and the volume goes to another copy:
            // as after a crash, nothing is swept any more, here or on the
            // copies, so this copy's activity log and theirs keep every
            // region it may miss (the new primary resyncs them to it).
            return;
        }
        if let Err(e) = v.copy.sweep().await {
            tracing::warn!(volume = v.copy.name(), "activity log sweep failed: {e}");
            continue;
        }
        for p in &v.peers {
            if p.state() != PeerState::OutOfSync {
                if let Some(l) = p.link() {
                    let _ = l.call(v.cfg.epoch, Op::Settle).await;
                }
            }
        }
    }
}
