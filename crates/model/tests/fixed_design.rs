//! The fixed design: the checker visits every reachable state within the
//! bounds and no invariant fails; the examples show the runs went through
//! failures, failovers and resyncs.

use model::properties::EXAMPLES;
use model::{Bounds, Exploration, Protocol, Variant};

fn assert_safe(run: &Exploration) {
    println!("{run}");
    for p in EXAMPLES {
        println!("{}", run.expect_trace(p));
    }
    assert!(run.complete, "the exploration stopped early: {run}");
    assert!(run.violations().is_empty(), "{run}");
}

#[test]
fn two_nodes_with_concurrent_writes_crashes_and_two_failovers() {
    assert_safe(&Protocol::new(Variant::Fixed, Bounds::TWO_NODES).explore_all());
}

#[test]
fn three_nodes_with_an_outage_and_a_failover() {
    assert_safe(&Protocol::new(Variant::Fixed, Bounds::THREE_NODES).explore_all());
}
