//! Bug: a failed peer leaves the write path before its `replica_lost`
//! record commits. The checker must find acknowledged writes missing from a
//! copy that can still be promoted, and then from the new primary.

use model::properties::{ON_EVERY_IN_SYNC_COPY, ON_PRIMARY_COPY};
use model::{Bounds, Protocol, Variant};

#[test]
fn mark_before_commit_loses_acknowledged_writes() {
    let targets = [ON_EVERY_IN_SYNC_COPY, ON_PRIMARY_COPY];
    let run = Protocol::new(Variant::MarkBeforeCommit, Bounds::SMALL).find(&targets);
    println!("{run}");
    for p in targets {
        println!("{}", run.expect_trace(p));
    }
}
