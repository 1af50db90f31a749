//! An open finding in the fixed design: a command whose proposer gave up on
//! it (a timeout while the control plane had no quorum) may still commit,
//! as a Raft entry can. When the primary's in-sync record of a peer times
//! out, the primary keeps the peer syncing, and a syncing peer that fails a
//! write leaves the write path without a `replica_lost` record. If the
//! timed-out record then commits, the control plane lists as in sync a copy
//! that misses acknowledged writes, and may promote it.
//!
//! This test keeps the counterexample in view. Once the design fences such
//! late records (for instance a record that only applies to the state it
//! was proposed against), it must assert that none is found.

use model::properties::{ON_EVERY_IN_SYNC_COPY, ON_PRIMARY_COPY};
use model::{Bounds, Protocol, Variant};

#[test]
fn in_sync_record_committing_late_loses_acknowledged_writes() {
    let bounds = Bounds {
        late_commits: 1,
        ..Bounds::SMALL
    };
    let targets = [ON_EVERY_IN_SYNC_COPY, ON_PRIMARY_COPY];
    let run = Protocol::new(Variant::Fixed, bounds).find(&targets);
    println!("{run}");
    for p in targets {
        println!("{}", run.expect_trace(p));
    }
}
