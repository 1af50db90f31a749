//! "In-sync record committing late": the primary's in-sync record of a
//! peer times out, yet may still commit, as a Raft entry whose client gave
//! up can, even after later entries.
//!
//! The first fixed design put the peer back to syncing when the record
//! timed out; a syncing peer that fails a write leaves the write path with
//! no record, so when the in-sync record then committed, the control plane
//! listed as in sync a copy that misses acknowledged writes, and could
//! promote it ([`Variant::BackToSyncing`]). Keeping the peer in sync instead
//! records its next failure out of sync, but without numbered reports the
//! late in-sync record can still land after that one and undo it
//! ([`Variant::UnnumberedReports`]).
//!
//! The fixed design does both: the peer stays in the write path as in sync
//! (its failures are recorded), and the control plane refuses a report
//! whose number is not above the last one applied for that copy.

use model::properties::{ON_EVERY_IN_SYNC_COPY, ON_PRIMARY_COPY};
use model::state::{Answer, Command, Mode, ReplicaState};
use model::{Action, Bounds, Protocol, Variant};
use stateright::Model;

const LATE: Bounds = Bounds {
    late_commits: 1,
    ..Bounds::SMALL
};

/// `A` takes up epoch 2, loses `B` on `w0` (report #1), resyncs it and
/// counts it in sync; the in-sync record (#2) times out, and `w1` reaches
/// the primary.
const IN_SYNC_RECORD_TIMES_OUT: [Action; 12] = [
    Action::TakeUp { node: 0 },
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
    Action::Write { via: 0, write: 1 },
];

const B_FAILS_W1: Action = Action::PeerFails {
    primary: 0,
    write: 1,
    peer: 1,
};

const ACK_W1: Action = Action::Acknowledge {
    primary: 0,
    write: 1,
};

fn late_in_sync_record(seq: u8) -> Action {
    Action::LateCommit {
        command: Command::SetReplicaState {
            node: 1,
            state: ReplicaState::InSync,
            epoch: 2,
            seq,
        },
    }
}

#[test]
fn back_to_syncing_loses_acknowledged_writes() {
    let targets = [ON_EVERY_IN_SYNC_COPY, ON_PRIMARY_COPY];
    let run = Protocol::new(Variant::BackToSyncing, LATE).find(&targets);
    println!("{run}");
    for p in targets {
        println!("{}", run.expect_trace(p));
    }
}

#[test]
fn unnumbered_reports_lose_acknowledged_writes() {
    let targets = [ON_EVERY_IN_SYNC_COPY, ON_PRIMARY_COPY];
    let run = Protocol::new(Variant::UnnumberedReports, LATE).find(&targets);
    println!("{run}");
    for p in targets {
        println!("{}", run.expect_trace(p));
    }
}

#[test]
fn back_to_syncing_lets_the_late_record_list_a_copy_missing_w1() {
    let p = Protocol::new(Variant::BackToSyncing, LATE);
    let mut actions = IN_SYNC_RECORD_TIMES_OUT.to_vec();
    // Syncing again, B fails w1 and leaves the write path unrecorded.
    actions.extend([B_FAILS_W1, ACK_W1, Action::ControlPlaneBack]);
    actions.push(late_in_sync_record(2));
    let s = p.replay(&actions);
    assert_eq!(s.committed.replicas[1], ReplicaState::InSync);
    assert!(!s.nodes[1].copy.has(1));
    assert!(!p.holds(ON_EVERY_IN_SYNC_COPY, &s));
}

#[test]
fn unnumbered_reports_let_the_late_record_undo_the_loss_of_b() {
    let p = Protocol::new(Variant::UnnumberedReports, LATE);
    let mut actions = IN_SYNC_RECORD_TIMES_OUT.to_vec();
    actions.extend([
        B_FAILS_W1,
        Action::ControlPlaneBack,
        Action::RecordLost {
            primary: 0,
            peer: 1,
        },
        ACK_W1,
        late_in_sync_record(0),
    ]);
    let s = p.replay(&actions);
    assert_eq!(s.committed.replicas[1], ReplicaState::InSync);
    assert!(!p.holds(ON_EVERY_IN_SYNC_COPY, &s));
}

#[test]
fn the_fixed_design_refuses_the_late_record() {
    let p = Protocol::new(Variant::Fixed, LATE);
    let s = p.replay(&IN_SYNC_RECORD_TIMES_OUT);
    let b = s.nodes[0].role.unwrap().peers[1];
    assert_eq!((b.mode, b.unrecorded), (Mode::InSync, true));
    assert_eq!(
        s.nodes[0].role.unwrap().writes[1].unwrap()[1],
        Answer::Sent,
        "w1 goes to B"
    );

    // B fails w1: recorded out of sync (#3) before w1 is acknowledged.
    let mut actions = IN_SYNC_RECORD_TIMES_OUT.to_vec();
    actions.push(B_FAILS_W1);
    let s = p.replay(&actions);
    assert!(p.next_state(&s, ACK_W1).is_none());
    actions.extend([
        Action::ControlPlaneBack,
        Action::RecordLost {
            primary: 0,
            peer: 1,
        },
        ACK_W1,
        late_in_sync_record(2),
    ]);
    let s = p.replay(&actions);
    assert_eq!(s.committed.replicas[1], ReplicaState::OutOfSync);
    assert_eq!(s.committed.reports[1], 3);
    assert!(s.pending.iter().all(Option::is_none));
    assert!(p.holds(ON_EVERY_IN_SYNC_COPY, &s));

    // Committing first, the late record is overtaken by nothing, and
    // lists B in sync while B is still in the write path.
    let mut actions = IN_SYNC_RECORD_TIMES_OUT.to_vec();
    actions.extend([Action::ControlPlaneBack, late_in_sync_record(2)]);
    let s = p.replay(&actions);
    assert_eq!(s.committed.replicas[1], ReplicaState::InSync);
    assert!(p.holds(ON_EVERY_IN_SYNC_COPY, &s));
}

#[test]
fn the_fixed_design_passes_with_late_commits() {
    let run = Protocol::new(Variant::Fixed, Bounds::SCENARIOS).explore_all();
    println!("{run}");
    assert!(run.complete, "the exploration stopped early: {run}");
    assert!(run.violations().is_empty(), "{run}");
}
