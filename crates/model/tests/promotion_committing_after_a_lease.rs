//! "Promotion committing after a lease": the leader decides a failover when
//! the old primary holds no lease (`cluster::failover`: the primary has been
//! silent for `DEAD_AFTER`), but the promotion commits some time later.
//!
//! The design before the fix answered the old primary's heartbeats
//! meanwhile, with the leader's commit index, which did not hold the
//! promotion yet ([`Variant::LeaseDuringPromotion`]): the old primary caught
//! up to it, took a lease and kept acknowledging at its epoch until it
//! applied the promotion, while the new primary took up its epoch and
//! acknowledged too. Writes stayed safe (the new primary's copies refuse
//! the old epoch, so every write the old primary acknowledges is on them),
//! but reads on the old primary could miss writes the new one acknowledged,
//! for up to a lease.
//!
//! The fixed design decides the replacement and marks the old primary as
//! being replaced in one step with respect to heartbeat answers (under the
//! lock they record liveness under), leaves the old primary's heartbeats
//! unanswered until the promotion is decided, and answers every heartbeat
//! with at least the leader's applied index, so a lease granted after the
//! promotion needs a view that holds it. The other members still get
//! leases meanwhile.

use model::properties::ONE_ACKNOWLEDGER;
use model::{Action, Bounds, Protocol, Variant};
use stateright::Model;

const SLOW_FAILOVER: Bounds = Bounds {
    slow_failovers: 1,
    ..Bounds::SMALL
};

/// `A` takes up epoch 2 and starts its role; with `A` holding no lease,
/// the leader decides to promote `B`, and the promotion is slow to commit.
const FAILOVER_DECIDED: [Action; 3] = [
    Action::TakeUp { node: 0 },
    Action::TakeRole { node: 0 },
    Action::FailoverSlowly { node: 1 },
];

#[test]
fn a_lease_granted_while_the_promotion_commits_makes_two_primaries() {
    let run = Protocol::new(Variant::LeaseDuringPromotion, SLOW_FAILOVER).find(&[ONE_ACKNOWLEDGER]);
    println!("{run}");
    println!("{}", run.expect_trace(ONE_ACKNOWLEDGER));
    assert_eq!(run.violations(), [ONE_ACKNOWLEDGER], "{run}");
}

#[test]
fn the_data_stays_safe_meanwhile() {
    let run = Protocol::new(Variant::LeaseDuringPromotion, SLOW_FAILOVER).explore_all();
    println!("{run}");
    assert!(run.complete, "the exploration stopped early: {run}");
    assert_eq!(run.violations(), [ONE_ACKNOWLEDGER], "{run}");
}

#[test]
fn the_old_primary_gets_a_lease_only_on_a_state_with_the_promotion() {
    let buggy = Protocol::new(Variant::LeaseDuringPromotion, SLOW_FAILOVER);
    let s = buggy.replay(&FAILOVER_DECIDED);
    let s = buggy.next_state(&s, Action::Heartbeat { node: 0 }).unwrap();
    assert!(
        buggy.serving(&s, 0),
        "A leads on a state before the promotion"
    );

    let fixed = Protocol::new(Variant::Fixed, SLOW_FAILOVER);
    let s = fixed.replay(&FAILOVER_DECIDED);
    assert!(
        fixed
            .next_state(&s, Action::Heartbeat { node: 0 })
            .is_none(),
        "A is being replaced: its heartbeat goes unanswered"
    );
    let b = fixed.replay(&[&FAILOVER_DECIDED[..], &[Action::Apply { node: 1 }]].concat());
    let b = fixed.next_state(&b, Action::Heartbeat { node: 1 }).unwrap();
    assert!(b.nodes[1].lease, "the other members still get leases");

    let s = fixed.next_state(&s, Action::FailoverCommits).unwrap();
    assert!(
        fixed
            .next_state(&s, Action::Heartbeat { node: 0 })
            .is_none(),
        "A's view does not hold the promotion"
    );
    let s = fixed.next_state(&s, Action::Apply { node: 0 }).unwrap();
    let s = fixed.next_state(&s, Action::Heartbeat { node: 0 }).unwrap();
    assert!(s.nodes[0].lease && s.nodes[0].role.is_none());
    assert!(
        !fixed.serving(&s, 0),
        "A applied the promotion: its role ended"
    );
}

#[test]
fn the_fixed_design_makes_one_primary() {
    let run = Protocol::new(Variant::Fixed, SLOW_FAILOVER).explore_all();
    println!("{run}");
    assert!(run.complete, "the exploration stopped early: {run}");
    assert!(run.violations().is_empty(), "{run}");
}

#[test]
#[ignore = "7.4 million states: about a minute"]
fn three_nodes_the_fixed_design_makes_one_primary() {
    let bounds = Bounds {
        slow_failovers: 1,
        ..Bounds::THREE_NODES
    };
    let run = Protocol::new(Variant::Fixed, bounds).explore_all();
    println!("{run}");
    assert!(run.complete, "the exploration stopped early: {run}");
    assert!(run.violations().is_empty(), "{run}");
}
