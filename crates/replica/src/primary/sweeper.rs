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
            // This disk failed a sync: writes acknowledged since the last
            // one that succeeded may be gone from it, though a later sync
            // succeeds. Where a copy elsewhere holds them, it takes the
            // volume over, as after a failed flush.
            let _ = v.local_failed(e);
            continue;
        }
        for p in &v.peers {
            if p.state() != PeerState::OutOfSync {
                if let Some(l) = p.link() {
                    if let Err(e) = l.call(v.cfg.epoch, Op::Settle).await {
                        // The copy failed to sync what it took: what it
                        // acknowledged since its last sync may be gone, so
                        // it is out of sync (it names the regions when it
                        // comes back), as for a failed flush.
                        if let Some(why) = super::peer::disk_failure(&e) {
                            v.disk_failed(p, &why);
                            let _ = v.lose(p, &e).await;
                        }
                    }
                }
            }
        }
    }
}
