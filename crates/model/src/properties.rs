//! The properties the checker tests in every reachable state: safety
//! invariants that must always hold, and examples that must be reachable
//! (so a passing run is not a vacuous one).

use stateright::Property;

use crate::state::{Command, ReplicaState, State};
use crate::Protocol;

/// Every acknowledged write is on every copy the committed state lists as in
/// sync, and on the primary's: every copy that can become primary has it.
pub const ON_EVERY_IN_SYNC_COPY: &str = "acknowledged writes are on every in-sync copy";

/// Every acknowledged write is on the committed primary's copy (what the
/// initiator reads back).
pub const ON_PRIMARY_COPY: &str = "acknowledged writes are on the primary's copy";

/// At most one node would acknowledge a write at any moment.
pub const ONE_ACKNOWLEDGER: &str = "one node acknowledges writes at a time";

/// The committed epoch, every copy's accepted epoch and every applied view
/// only grow.
pub const EPOCHS_GROW: &str = "epochs only grow";

/// Reachable: after a failover every copy is in sync again and holds an
/// acknowledged write (promotion, resync and recording all happened).
pub const RESYNCED_AFTER_FAILOVER: &str = "every copy is in sync again after a failover";

/// Reachable: a replica's loss was recorded and the primary acknowledged
/// a write that replica misses.
pub const LOSS_RECORDED: &str = "a lost replica is recorded out of sync";

/// Reachable: a timed-out report still waits to commit although a later
/// report on the same copy was applied at the same epoch: only its number
/// keeps it from undoing that one.
pub const LATE_REPORT_OVERTAKEN: &str = "a late report is overtaken by a later one";

/// The safety properties, by name.
pub const INVARIANTS: [&str; 4] = [
    ON_EVERY_IN_SYNC_COPY,
    ON_PRIMARY_COPY,
    ONE_ACKNOWLEDGER,
    EPOCHS_GROW,
];

/// The examples that must be reachable, by name ([`LATE_REPORT_OVERTAKEN`]
/// only with late commits and numbered reports).
pub const EXAMPLES: [&str; 3] = [
    RESYNCED_AFTER_FAILOVER,
    LOSS_RECORDED,
    LATE_REPORT_OVERTAKEN,
];

pub(crate) fn all() -> Vec<Property<Protocol>> {
    vec![
        Property::always(ON_EVERY_IN_SYNC_COPY, |m: &Protocol, s: &State| {
            (0..m.bounds.nodes).all(|n| {
                let can_lead =
                    n == s.committed.primary || s.committed.replicas[n] == ReplicaState::InSync;
                !can_lead || s.acknowledged.missing_from(s.nodes[n].copy).is_empty()
            })
        }),
        Property::always(ON_PRIMARY_COPY, |_, s: &State| {
            let primary = s.nodes[s.committed.primary].copy;
            s.acknowledged.missing_from(primary).is_empty()
        }),
        Property::always(ONE_ACKNOWLEDGER, |m: &Protocol, s: &State| {
            (0..m.bounds.nodes)
                .filter(|&n| m.may_acknowledge(s, n))
                .count()
                <= 1
        }),
        Property::always(EPOCHS_GROW, |_, s: &State| !s.went_back),
        Property::sometimes(RESYNCED_AFTER_FAILOVER, |m: &Protocol, s: &State| {
            s.committed.epoch > 1
                && !s.acknowledged.is_empty()
                && (0..m.bounds.nodes).all(|n| s.committed.replicas[n] == ReplicaState::InSync)
        }),
        Property::sometimes(LOSS_RECORDED, |m: &Protocol, s: &State| {
            (0..m.bounds.nodes).any(|n| {
                s.committed.replicas[n] == ReplicaState::OutOfSync
                    && !s.acknowledged.missing_from(s.nodes[n].copy).is_empty()
            })
        }),
        Property::sometimes(LATE_REPORT_OVERTAKEN, |_, s: &State| {
            s.pending.iter().flatten().any(|&c| {
                matches!(c, Command::SetReplicaState { node, epoch, seq, .. }
                    if epoch == s.committed.epoch
                        && seq > 0
                        && seq <= s.committed.reports[node])
            })
        }),
    ]
}
