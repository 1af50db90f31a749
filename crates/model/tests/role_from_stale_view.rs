//! "Role from stale view": a restarted primary set up its role (its peers'
//! modes) from the view it kept on disk, where a peer was still out of
//! sync while the committed state had since recorded it in sync; the role
//! was kept when the view caught up, since only replica states changed, so
//! writes skipped an in-sync copy and were acknowledged
//! ([`Variant::RoleFromStaleView`]). Without an epoch of its own, the new
//! role also shares its epoch with the role before the restart, whose
//! timed-out in-sync record may then still commit in its time.
//!
//! The fixed design: every primary role first promotes its node to a new
//! epoch and starts from a view that holds that promotion, so from every
//! change committed before it; a report of the earlier role that commits
//! after it is refused for its epoch.

use model::properties::ON_EVERY_IN_SYNC_COPY;
use model::state::{Answer, Command, Mode, ReplicaState};
use model::{Action, Bounds, Protocol, Variant};
use stateright::Model;

const LATE: Bounds = Bounds {
    late_commits: 1,
    ..Bounds::SMALL
};

/// `A` primary loses `B` on `w0` (report #1), resyncs it and counts it in
/// sync; the in-sync record (#2) times out; `A` crashes and restarts. In
/// the fixed design `A` first takes up epoch 2; in the variant it applies
/// its report itself (the fixed design's proposer does so at once).
fn in_sync_record_pending_across_a_restart(fixed: bool) -> Vec<Action> {
    let mut actions = Vec::new();
    if fixed {
        actions.push(Action::TakeUp { node: 0 });
    }
    actions.extend([
        Action::TakeRole { node: 0 },
        Action::Heartbeat { node: 0 },
        Action::Write { via: 0, write: 0 },
        Action::PeerFails {
            primary: 0,
            write: 0,
            peer: 1,
        },
        Action::RecordLost {
            primary: 0,
            peer: 1,
        },
    ]);
    if !fixed {
        actions.push(Action::Apply { node: 0 });
    }
    actions.extend([
        Action::Acknowledge {
            primary: 0,
            write: 0,
        },
        Action::Resync {
            primary: 0,
            peer: 1,
        },
        Action::MarkInSync {
            primary: 0,
            peer: 1,
        },
        Action::ControlPlaneLost,
        Action::RecordInSyncFails {
            primary: 0,
            peer: 1,
        },
        Action::Crash { node: 0 },
        Action::Restart { node: 0 },
    ]);
    actions
}

fn late_in_sync_record(epoch: u8) -> Action {
    Action::LateCommit {
        command: Command::SetReplicaState {
            node: 1,
            state: ReplicaState::InSync,
            epoch,
            seq: 2,
        },
    }
}

const W1_SKIPS_B: [Action; 3] = [
    Action::Heartbeat { node: 0 },
    Action::Write { via: 0, write: 1 },
    Action::Acknowledge {
        primary: 0,
        write: 1,
    },
];

#[test]
fn role_from_stale_view_skips_an_in_sync_copy() {
    let targets = [ON_EVERY_IN_SYNC_COPY];
    let run = Protocol::new(Variant::RoleFromStaleView, Bounds::SMALL).find(&targets);
    println!("{run}");
    for p in targets {
        println!("{}", run.expect_trace(p));
    }
}

#[test]
fn role_from_stale_view_lets_a_record_from_before_the_restart_land() {
    let p = Protocol::new(Variant::RoleFromStaleView, LATE);
    let mut actions = in_sync_record_pending_across_a_restart(false);
    // The new role runs at epoch 1 too, B out of sync in its view.
    actions.extend([Action::TakeRole { node: 0 }, Action::ControlPlaneBack]);
    actions.extend(W1_SKIPS_B);
    actions.push(late_in_sync_record(1));
    let s = p.replay(&actions);
    assert_eq!(s.committed.replicas[1], ReplicaState::InSync);
    assert!(!s.nodes[1].copy.has(1));
    assert!(!p.holds(ON_EVERY_IN_SYNC_COPY, &s));
}

#[test]
fn the_fixed_design_refuses_a_record_from_before_the_restart() {
    let p = Protocol::new(Variant::Fixed, LATE);
    let mut actions = in_sync_record_pending_across_a_restart(true);
    let s = p.replay(&actions);
    assert!(
        p.next_state(&s, Action::TakeRole { node: 0 }).is_none(),
        "no role before A takes up an epoch of its own"
    );
    // The promotion to epoch 3 commits before the late record (epoch 2).
    actions.extend([
        Action::ControlPlaneBack,
        Action::TakeUp { node: 0 },
        Action::TakeRole { node: 0 },
    ]);
    actions.extend(W1_SKIPS_B);
    actions.push(late_in_sync_record(2));
    let s = p.replay(&actions);
    assert_eq!(s.nodes[0].role.unwrap().epoch, 3);
    assert_eq!(s.committed.replicas[1], ReplicaState::OutOfSync);
    assert!(p.holds(ON_EVERY_IN_SYNC_COPY, &s));

    // The late record commits before the promotion: the role starts from a
    // view that has B in sync, and w1 goes to B.
    let mut actions = in_sync_record_pending_across_a_restart(true);
    actions.extend([
        Action::ControlPlaneBack,
        late_in_sync_record(2),
        Action::TakeUp { node: 0 },
        Action::TakeRole { node: 0 },
        Action::Heartbeat { node: 0 },
        Action::Write { via: 0, write: 1 },
    ]);
    let s = p.replay(&actions);
    let role = s.nodes[0].role.unwrap();
    assert_eq!(role.peers[1].mode, Mode::InSync);
    assert_eq!(role.writes[1].unwrap()[1], Answer::Sent);
}

#[test]
fn the_fixed_design_passes_with_late_commits() {
    let run = Protocol::new(Variant::Fixed, Bounds::SCENARIOS).explore_all();
    println!("{run}");
    assert!(run.complete, "the exploration stopped early: {run}");
    assert!(run.violations().is_empty(), "{run}");
}
