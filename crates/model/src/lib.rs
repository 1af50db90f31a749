//! The protocol model of Tandem's mirroring and failover, checked exhaustively with stateright.
//!
//! One volume, 2 or 3 data nodes, an initiator and the control plane, as a
//! [`stateright::Model`] ([`Protocol`]). The checker visits every state the
//! protocol can reach within [`Bounds`] and tests the [`properties`] in
//! each; a violation comes back as the shortest path to it
//! ([`Exploration::trace`]).
//!
//! # What is modeled
//!
//! - **Control plane** ([`state::Record`]): the volume's committed record:
//!   `primary`, `epoch`, each copy's [`state::ReplicaState`] and the number
//!   of the last report applied on it. Commands ([`state::Command`]) apply
//!   as `ClusterState::apply` does ([`state::Record::apply`]): a
//!   `SetReplicaState` report is refused unless it carries the current epoch
//!   and, when numbered, a number above the last one applied for that copy;
//!   a `Promote` is refused unless it expects the current epoch and names an
//!   in-sync copy. Commands commit only with a quorum; losing and regaining
//!   it are faults ([`Action::ControlPlaneLost`],
//!   [`Action::ControlPlaneBack`]).
//! - **Timeouts and late commits**: a command times out without a quorum,
//!   and within [`Bounds::slow_commits`] with one. Its proposer gives up,
//!   yet within [`Bounds::late_commits`] the command stays in the log and
//!   commits or is refused at any later step ([`Action::LateCommit`]),
//!   after later commands of the same node or of another one too. (Raft
//!   allows less: any order is a superset of it.)
//! - **Failover** ([`Action::Promote`], `cluster::failover`): the leader
//!   promotes an in-sync copy on a live node once the old primary holds no
//!   lease (when the leader finds a primary silent for `DEAD_AFTER`, its
//!   lease is over). Within [`Bounds::slow_failovers`] the promotion commits
//!   only at a later step ([`Action::FailoverSlowly`],
//!   [`Action::FailoverCommits`]); meanwhile the leader answers the other
//!   members' heartbeats, but not the old primary's: deciding the
//!   replacement marks it as being replaced in one step with respect to
//!   heartbeat answers (`replacing`, under the lock of `seen`), and the
//!   mark goes once the promotion is decided (committed or refused).
//! - **Data nodes** ([`state::Node`]): a copy (which writes it holds), the
//!   newest epoch the copy accepted (older replication messages are refused
//!   and depose their sender), the applied view of the committed record
//!   (it lags; [`Action::Apply`] catches it up with the newest), a lease, at
//!   most one primary role, the epoch the node took up for its next role
//!   and the number of its last report on each copy. A crash loses the
//!   lease, the role, the epoch taken up, the report numbers and every write
//!   in flight; copy, accepted epoch and view are durable, so a restarted
//!   node may come back with a stale view.
//! - **Taking up the primary role** (the node's `hold`): a node whose view
//!   names it primary and that runs no role first promotes itself from its
//!   view's epoch ([`Action::TakeUp`], [`Action::TakeUpFails`]), when the
//!   volume is new, after a restart and after a failover alike, and starts
//!   its role ([`Action::TakeRole`]) only from a view at the epoch it took
//!   up, so one that holds every change committed before it; until then it
//!   acknowledges nothing. The role takes its peers' modes from that view,
//!   and a later view that differs only in replica states leaves it be.
//! - **Leases** ([`Action::Heartbeat`]): granted only with a quorum, only
//!   to a node whose applied view has caught up with the commit index (the
//!   leader answers with at least its read index and its applied index, so
//!   a lease granted after a promotion needs a view that holds it), and
//!   never to a primary the leader is replacing while the promotion is
//!   pending; [`Action::LeaseExpires`] at any moment.
//! - **Primary role** ([`state::Role`], `Primary`): each peer's
//!   [`state::Mode`]. A write is taken only while the role is *serving*
//!   ([`Protocol::serving`]: lease, not deposed, view says "primary = me at
//!   this epoch"), written to the local copy and sent to every peer not out
//!   of sync. A peer that fails a write is `lose`d: an in-sync peer (its
//!   in-sync report committed or not) is *losing* while its `replica_lost`
//!   report is pending, and every write it failed or that was issued
//!   meanwhile waits for that report and fails if it does not commit (the
//!   peer then counts as in sync again). A write is acknowledged once every
//!   peer has it or is recorded out of sync, after checking the role still
//!   serves.
//! - **Reports** (`ControlPlaneLink::set` in node): numbered above the node's own last
//!   report on that copy and above the last one its view holds.
//! - **Resync**: the primary copies its writes to an out-of-sync peer that
//!   is up (the peer turns syncing and receives writes), then, behind a
//!   barrier (no write in flight), counts it in sync
//!   ([`Action::MarkInSync`]): from then on its failures are recorded. The
//!   in-sync report follows ([`Action::RecordInSync`]); when it times out the
//!   peer stays in sync in the primary's memory and the report is tried
//!   again.
//! - **Initiator**: issues writes through any node; a node that is not the
//!   primary forwards to the primary its view names.
//!
//! # What is abstracted away
//!
//! - Data is which writes of a small budget a copy holds; writes are to
//!   distinct blocks, and a copy never loses a write it holds (resync only
//!   adds). So there is no volatile cache, and the rule that a replica whose
//!   link broke is recorded out of sync before it takes writes again (it
//!   may have lost unflushed writes) has nothing to guard in the model and
//!   is left out. Dirty maps, the activity log, suspect ranges and resync
//!   progress reports are not modeled: a resync copies everything the
//!   primary holds.
//! - Raft is one linearizable register; the witness and elections are
//!   folded into the quorum flag. A node applies the newest record at once.
//!   A leader's promotion still pending when it loses its leadership is
//!   either in the new leader's log, and commits before that leader
//!   answers any heartbeat (its read index covers it; the model lets it
//!   commit at any later step, after other members' leases too, which
//!   allows more), or not, and never commits, as if never decided: the
//!   model leaves that case out.
//! - A command that commits is applied by its proposer before the proposal
//!   returns (`Cluster::propose` waits for that, up to 5 s); a proposer whose
//!   view lags its own command could only do less in the fixed design (see
//!   `Protocol::propose`), so only [`Variant::RoleFromStaleView`] keeps that
//!   case.
//! - Time is nondeterminism: a lease may run out at any step, and the rule
//!   that the leader replaces a primary only after its lease is certainly
//!   over (`DEAD_AFTER` > `LEASE`, the election margin) becomes "promotion
//!   needs the old primary to hold no lease".
//! - A replication request and its answer are one step
//!   ([`Action::Deliver`]); a lost, late or slow message is a timeout
//!   ([`Action::PeerFails`]) that may come at any time. A request applied
//!   after its sender gave up only adds a write to a copy, which no
//!   property can suffer from, so it is left out.
//! - Reads, flushes, local write errors, resize, access rules, changes of
//!   the set of copies and more than one volume are not modeled. Liveness
//!   (that a copy gets back in sync, that a volume finds a primary) is not
//!   checked.
//!
//! # Properties
//!
//! Invariants ([`properties::INVARIANTS`]): every acknowledged write is on
//! every copy the committed state lists in sync and on the primary's copy;
//! at most one node would acknowledge a write at any moment; epochs
//! (committed, accepted, applied) only grow. Reachability checks
//! ([`properties::EXAMPLES`]) show that a run went through a recorded
//! replica loss, through a failover followed by a full resync, and (with
//! late commits) through a timed-out report overtaken by a later one.
//!
//! # Variants and what the checker found
//!
//! Measured with `cargo test -p model` on 2 cores: 35 s of wall time once
//! built, while other builds shared the cores (load 3 to 5; 70 s at load 5
//! to 7), most of it the two exhaustive runs of `tests/fixed_design.rs` (17
//! and 26 s side by side). The model and stateright are built with
//! `opt-level = 3` in every profile (workspace `Cargo.toml`): unoptimized,
//! the checker is five to six times slower.
//!
//! | variant | bounds | unique states | result |
//! | --- | --- | --- | --- |
//! | [`Variant::Fixed`] | [`Bounds::TWO_NODES`] (1 slow failover) | 2,627,449, all (paths up to ~43 steps) | no violation |
//! | [`Variant::Fixed`] | [`Bounds::THREE_NODES`] | 3,686,576, all (~36 steps) | no violation |
//! | [`Variant::Fixed`] | [`Bounds::SCENARIOS`] | 483,316, all (~35 steps) | no violation |
//! | [`Variant::Fixed`] | [`Bounds::SMALL`], 1 slow failover | 638,089, all | no violation |
//! | [`Variant::LeaseDuringPromotion`] | [`Bounds::SMALL`], 1 slow failover | 740,215, all | two nodes acknowledging (9 steps); the other invariants hold |
//! | [`Variant::MarkBeforeCommit`] | [`Bounds::SMALL`] | 5,269 | acknowledged write missing from an in-sync copy (7 steps), then from the promoted primary (9 steps) |
//! | [`Variant::RestartAsPlainDisk`] | [`Bounds::SMALL`] | 2,839 | acknowledged write missing from the primary (3 steps); two nodes acknowledging (5 steps) |
//! | [`Variant::LeaseWithoutCaughtUpView`] | [`Bounds::SMALL`] | 5,441 | deposed primary and new primary both acknowledging (8 steps) |
//! | [`Variant::RoleFromStaleView`] | [`Bounds::SMALL`] | 31,583 | acknowledged write missing from an in-sync copy (13 steps) |
//! | [`Variant::BackToSyncing`] | [`Bounds::SMALL`], 1 late commit | 304,809 | acknowledged write missing from an in-sync copy (14 steps), then from the promoted primary (18 steps) |
//! | [`Variant::UnnumberedReports`] | [`Bounds::SMALL`], 1 late commit | 389,389 | the same (15 and 19 steps) |
//!
//! Deeper runs, left out of the default run (`cargo test -p model --
//! --ignored`; times with other builds sharing the 2 cores, the first one
//! on an idle machine):
//!
//! | variant | bounds | unique states | result |
//! | --- | --- | --- | --- |
//! | [`Variant::Fixed`] | 2 nodes, 2 writes, 2 crashes, 1 outage, 2 failovers, 2 late commits | 72,135,095, all (~54 steps; 5 min, 7 GB) | no violation |
//! | [`Variant::Fixed`] | 2 nodes, 2 writes, 1 crash, 1 outage, 2 failovers (both may be slow), 1 late commit | 13,494,295, all (~50 steps; 61 s, 1.3 GB) | no violation |
//! | [`Variant::Fixed`] | 2 nodes, 2 writes, 1 crash, 1 outage, 1 failover (may be slow), 1 slow commit, 2 late commits | 27,247,701, all (~46 steps; 140 s, 3.2 GB) | no violation |
//! | [`Variant::Fixed`] | 3 nodes, 1 write, 1 outage, 1 failover (may be slow), 2 late commits | 26,517,376, all (~43 steps; 186 s, 3.7 GB) | no violation |
//! | [`Variant::Fixed`] | [`Bounds::THREE_NODES`], 1 slow failover | 7,415,584, all (~40 steps; 47 to 71 s) | no violation |
//!
//! ## The fixed design holds, with late commits
//!
//! With every primary role taking up an epoch of its own, numbered reports
//! and a peer kept in sync when its in-sync report times out, no run finds
//! a violation, although timed-out reports and self-promotions commit late
//! and out of order, and the leader's promotion commits slowly
//! (`tests/fixed_design.rs`). Each of the three rules is needed: without
//! it the checker finds acknowledged writes missing from a copy the
//! control plane lists in sync, which a failover then promotes.
//! - No epoch of its own per role ([`Variant::RoleFromStaleView`],
//!   `tests/role_from_stale_view.rs`): a restarted primary builds its role
//!   from its durable view, where a peer is out of sync that the committed
//!   state has since recorded in sync, and writes skip it. The same role
//!   shares its epoch with the role before the restart, whose timed-out
//!   in-sync report can then land in its time.
//! - Back to syncing ([`Variant::BackToSyncing`],
//!   `tests/in_sync_record_committing_late.rs`): the peer's next failure
//!   takes it out of the write path unrecorded, then the timed-out in-sync
//!   report commits.
//! - Unnumbered reports ([`Variant::UnnumberedReports`], same file): the
//!   peer's failure is recorded, but the timed-out in-sync report commits
//!   after that record and undoes it.
//!
//! ## Fixed: a lease granted while the leader's promotion commits
//!
//! The leader decides a failover when the old primary holds no lease
//! (`cluster::failover`: silent for `DEAD_AFTER`), but the promotion commits
//! some time later. The product used to answer a heartbeat meanwhile
//! (`h_heartbeat`) with its commit index, which did not hold the promotion
//! yet ([`Variant::LeaseDuringPromotion`]): the old primary caught up to
//! that index, took a lease (`heartbeats`), and its `may_acknowledge` held
//! (its state still named it primary at its epoch) until it applied the
//! promotion; meanwhile the new primary took up its epoch, got a lease and
//! acknowledged too (`tests/promotion_committing_after_a_lease.rs`, 9
//! steps). Writes stayed safe, since the new primary's copies refuse the
//! old epoch (every write the old primary acknowledges is on them), but
//! reads on the old primary could miss writes the new one acknowledged, for
//! up to a lease.
//!
//! The product now decides the replacement and marks the old primary as
//! being replaced under the lock heartbeat answers record liveness under,
//! so a heartbeat answered before the decision makes the primary alive
//! (no failover) and one answered after it waits: the old primary's
//! heartbeats go unanswered until the promotion is decided, and every
//! answer carries at least the leader's applied index, so a lease granted
//! after the promotion needs a view that holds it, and then the old
//! primary's role has ended. The other members keep getting leases
//! meanwhile. [`Variant::Fixed`] is that design, and no run finds a
//! violation with slow failovers ([`Bounds::TWO_NODES`] has one; three
//! nodes with one is among the deeper runs). The change first proposed,
//! answering with the leader's last appended index so that every lease
//! waits for the promotion, only allows less than the fixed design, so its
//! variant is gone.
//!
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod action;
pub mod check;
mod control;
mod primary;
pub mod properties;
pub mod state;
pub mod step;

use stateright::{Model, Property};

pub use action::Action;
pub use check::Exploration;
pub use state::State;

use state::{Node, Record, ReplicaState, Writes, MAX_NODES, MAX_PENDING, MAX_WRITES};

/// Which protocol the model runs: the fixed design, or the fixed design
/// with one known bug put back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    /// The design as the product builds it: every primary role takes up an
    /// epoch of its own first, reports are numbered, a timed-out in-sync
    /// record keeps the peer in sync, writes wait for a losing peer's
    /// record, leases need a caught-up view, a primary the leader is
    /// replacing gets no lease until the promotion is decided, and each
    /// acknowledgement checks "primary = me at my epoch".
    Fixed,
    /// A peer that failed a write leaves the write path (out of sync in the
    /// primary's memory) *before* its `replica_lost` record commits: writes
    /// issued meanwhile skip it and are acknowledged, and the record may
    /// still fail.
    MarkBeforeCommit,
    /// A restarted node, before it learns its role, acknowledges writes into
    /// its own copy alone, as a plain local disk.
    RestartAsPlainDisk,
    /// A lease is granted whatever the node's applied view: a deposed
    /// primary whose view is stale acknowledges again.
    LeaseWithoutCaughtUpView,
    /// A node starts its primary role straight from its applied view, at
    /// that view's epoch, without taking up an epoch of its own first. After
    /// a restart that view is the durable one and may be stale (a later view
    /// that differs only in replica states does not replace the role), and
    /// reports the role before the restart gave up on may still commit in
    /// the new role's time.
    RoleFromStaleView,
    /// The leader answers the heartbeats of a primary it decided to replace
    /// while the promotion commits, with an index before the promotion: the
    /// old primary takes a lease on a state in which it still leads.
    LeaseDuringPromotion,
    /// Reports are not numbered: a report the primary gave up on may commit
    /// after a later one about the same copy and undo it.
    UnnumberedReports,
    /// A timed-out in-sync record puts the peer back to syncing: a write it
    /// then fails makes it out of sync without a record, while the in-sync
    /// record may still commit.
    BackToSyncing,
}

/// How far the model goes: these bounds make the state space finite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Bounds {
    /// Data nodes (2 or 3); node `A` is the first primary.
    pub nodes: usize,
    /// Writes the initiator issues.
    pub writes: usize,
    /// Node crashes (restarts are free).
    pub crashes: u8,
    /// Control-plane outages (quorum losses).
    pub outages: u8,
    /// Promotions.
    pub failovers: u8,
    /// Commands that time out although the control plane has a quorum (a
    /// slow or changing leader); without a quorum every command times out.
    pub slow_commits: u8,
    /// Promotions by the leader that commit only some steps after the
    /// leader decided them (when the old primary held no lease): a slow
    /// commit, during which the leader still answers the heartbeats of
    /// every other member.
    pub slow_failovers: u8,
    /// Timed-out commands (reports, promotions a node proposes for itself)
    /// that may still commit later, as a Raft entry whose client gave up
    /// may, after later commands too (0: a command that times out never
    /// commits).
    pub late_commits: u8,
}

impl Bounds {
    /// Two data nodes, two writes, one crash, one outage, one failover: the
    /// small model the bug searches use.
    pub const SMALL: Bounds = Bounds {
        nodes: 2,
        writes: 2,
        crashes: 1,
        outages: 1,
        failovers: 1,
        slow_commits: 0,
        slow_failovers: 0,
        late_commits: 0,
    };

    /// Two data nodes, two concurrent writes, one crash, one outage, one
    /// failover (its commit slow or not), and one timed-out command that
    /// may commit late.
    pub const TWO_NODES: Bounds = Bounds {
        slow_failovers: 1,
        late_commits: 1,
        ..Bounds::SMALL
    };

    /// Three data nodes, one write, one outage, one failover, one
    /// timed-out command that may commit late.
    pub const THREE_NODES: Bounds = Bounds {
        nodes: 3,
        writes: 1,
        crashes: 0,
        outages: 1,
        failovers: 1,
        slow_commits: 0,
        slow_failovers: 0,
        late_commits: 1,
    };

    /// The bounds of the scenarios that found the bugs of the first fixed
    /// design ("role from stale view", "in-sync record committing late"):
    /// two data nodes, one write, one crash, one outage, one failover, two
    /// late commits.
    pub const SCENARIOS: Bounds = Bounds {
        writes: 1,
        late_commits: 2,
        ..Bounds::SMALL
    };
}

/// The replication and failover protocol of one volume, as a stateright
/// model.
#[derive(Clone, Debug)]
pub struct Protocol {
    /// Fixed design or which bug.
    pub variant: Variant,
    /// How far the model goes.
    pub bounds: Bounds,
}

impl Protocol {
    /// The model of `variant` within `bounds`.
    pub fn new(variant: Variant, bounds: Bounds) -> Protocol {
        assert!(
            (2..=MAX_NODES).contains(&bounds.nodes),
            "the model has 2 to {MAX_NODES} data nodes"
        );
        assert!(
            bounds.writes <= MAX_WRITES,
            "the model issues at most {MAX_WRITES} writes"
        );
        assert!(
            usize::from(bounds.late_commits) <= MAX_PENDING,
            "the model lets at most {MAX_PENDING} commands commit late"
        );
        Protocol { variant, bounds }
    }

    /// The state right after the volume was created: `A` primary at epoch
    /// 1, every copy in sync and empty, every node up and caught up, no
    /// lease yet, no role yet.
    pub fn initial(&self) -> State {
        let committed = Record {
            index: 1,
            primary: 0,
            epoch: 1,
            replicas: [ReplicaState::InSync; MAX_NODES],
            reports: [0; MAX_NODES],
        };
        let node = Node {
            up: true,
            restarted: false,
            lease: false,
            view: committed,
            accepted: 0,
            copy: Writes::default(),
            role: None,
            taken_up: 0,
            reported: [0; MAX_NODES],
        };
        State {
            control_up: true,
            committed,
            nodes: [node; MAX_NODES],
            next_write: 0,
            acknowledged: Writes::default(),
            crashes: 0,
            outages: 0,
            slow: 0,
            failovers: 0,
            slow_failovers: 0,
            promoting: None,
            pending: [None; MAX_PENDING],
            late: 0,
            went_back: false,
        }
    }
}

impl Model for Protocol {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![self.initial()]
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        self.candidate_actions(state, actions);
    }

    fn next_state(&self, state: &State, action: Action) -> Option<State> {
        self.step(state, action)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        properties::all()
    }
}
