//! Bug: a restarted primary sets up its peers' modes from its stale view.

use model::properties::ON_EVERY_IN_SYNC_COPY;
use model::{Bounds, Protocol, Variant};

#[test]
fn role_from_stale_view_skips_an_in_sync_copy() {
    let targets = [ON_EVERY_IN_SYNC_COPY];
    let run = Protocol::new(Variant::RoleFromStaleView, Bounds::SMALL).find(&targets);
    println!("{run}");
    for p in targets {
        println!("{}", run.expect_trace(p));
    }
}
