//! Bug: a lease is granted whatever the node's applied view.

use model::properties::ONE_ACKNOWLEDGER;
use model::{Bounds, Protocol, Variant};

#[test]
fn lease_without_caught_up_view_makes_two_primaries() {
    let targets = [ONE_ACKNOWLEDGER];
    let run = Protocol::new(Variant::LeaseWithoutCaughtUpView, Bounds::SMALL).find(&targets);
    println!("{run}");
    for p in targets {
        println!("{}", run.expect_trace(p));
    }
}
