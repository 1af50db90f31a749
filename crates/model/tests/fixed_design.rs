//! The fixed design: the checker visits every reachable state within the
//! bounds, timed-out commands committing late and out of order included
//! (and, with two nodes, the leader's promotion committing slowly), and no
//! invariant fails; the examples show the runs went through failures,
//! failovers, resyncs and late reports overtaken by later ones.

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
fn two_nodes_with_concurrent_writes_a_crash_a_slow_failover_and_a_late_commit() {
    assert_safe(&Protocol::new(Variant::Fixed, Bounds::TWO_NODES).explore_all());
}

#[test]
fn three_nodes_with_an_outage_a_failover_and_a_late_commit() {
    assert_safe(&Protocol::new(Variant::Fixed, Bounds::THREE_NODES).explore_all());
}

// Deeper bounds take minutes and gigabytes each: `cargo test -p model --
// --ignored` runs them.

#[test]
#[ignore = "72 million states: about 5 minutes and 7 GB"]
fn two_nodes_with_two_crashes_two_failovers_and_two_late_commits() {
    let bounds = Bounds {
        crashes: 2,
        failovers: 2,
        late_commits: 2,
        ..Bounds::SMALL
    };
    assert_safe(&Protocol::new(Variant::Fixed, bounds).explore_all());
}

#[test]
#[ignore = "27 million states: two or three minutes and 3 GB"]
fn two_nodes_with_a_slow_commit_a_slow_failover_and_two_late_commits() {
    let bounds = Bounds {
        slow_commits: 1,
        slow_failovers: 1,
        late_commits: 2,
        ..Bounds::SMALL
    };
    assert_safe(&Protocol::new(Variant::Fixed, bounds).explore_all());
}

#[test]
#[ignore = "13 million states: a minute or two"]
fn two_nodes_with_two_slow_failovers_and_a_late_commit() {
    let bounds = Bounds {
        failovers: 2,
        slow_failovers: 2,
        ..Bounds::TWO_NODES
    };
    assert_safe(&Protocol::new(Variant::Fixed, bounds).explore_all());
}

#[test]
#[ignore = "27 million states: about three minutes and 4 GB"]
fn three_nodes_with_a_slow_failover_and_two_late_commits() {
    let bounds = Bounds {
        slow_failovers: 1,
        late_commits: 2,
        ..Bounds::THREE_NODES
    };
    assert_safe(&Protocol::new(Variant::Fixed, bounds).explore_all());
}
