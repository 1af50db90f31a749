//! The node's health in one word and why: `GET /v1/health`, which the
//! dashboard's overview shows.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use node::Node;
use serde::{Deserialize, Serialize};

use crate::Liveness;

/// Space used on the data filesystem from which the node is degraded.
const FULL_PERCENT: u64 = 90;

/// Health in one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// Every member up, every copy in sync, space to spare.
    Healthy,
    /// Serving, with less redundancy or space than it should have.
    Degraded,
    /// The cluster cannot change anything (no leader, no quorum).
    Critical,
}

/// Answer of `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// The word.
    pub state: HealthState,
    /// Why, one sentence each, the worst first.
    pub reasons: Vec<String>,
}

/// What the health is judged from.
#[derive(Debug, Clone, Default)]
pub(crate) struct Facts {
    /// Whether the node is a cluster member.
    pub clustered: bool,
    /// Whether a leader is known.
    pub leader: bool,
    /// Every member: name, whether it holds data, liveness.
    pub members: Vec<(String, bool, Liveness)>,
    /// Every cluster volume's copies: volume, node, state (`in-sync`,
    /// `syncing`, `out-of-sync`).
    pub copies: Vec<(String, String, String)>,
    /// Volumes low on space.
    pub low_space: Vec<String>,
    /// Free and total bytes of the data filesystem.
    pub filesystem: Option<(u64, u64)>,
}

/// Judges `f`.
pub(crate) fn assess(f: &Facts) -> Health {
    let mut critical = Vec::new();
    let mut degraded = Vec::new();
    if f.clustered {
        let count = |l: Liveness| f.members.iter().filter(|m| m.2 == l).count();
        let (up, down, unknown) = (
            count(Liveness::Up),
            count(Liveness::Down),
            count(Liveness::Unknown),
        );
        let total = f.members.len();
        // A member whose liveness is unknown (the leader's view could not
        // be read) is not counted as down: quorum is judged on the members
        // known to be down.
        let alive = total - down;
        if !f.leader {
            critical.push(
                "no leader: the control plane has no quorum, no failover or volume change \
                 can happen"
                    .to_string(),
            );
        } else if alive * 2 <= total {
            critical.push(if unknown == 0 {
                format!("{up} of {total} members up: the cluster has lost its quorum")
            } else {
                format!("{down} of {total} members down: the cluster has lost its quorum")
            });
        }
        for (name, data, liveness) in &f.members {
            if *liveness == Liveness::Down {
                let what = if *data { "node" } else { "witness" };
                degraded.push(format!("{what} {name} is down"));
            }
        }
        if f.leader && alive * 2 > total && (alive - 1) * 2 <= total && down > 0 {
            degraded.push(if unknown == 0 {
                format!("{up} of {total} members up: one more down and the cluster stops")
            } else {
                format!("{down} of {total} members down: one more down and the cluster stops")
            });
        }
        if f.leader && unknown > 0 {
            let names: Vec<&str> = f
                .members
                .iter()
                .filter(|m| m.2 == Liveness::Unknown)
                .map(|m| m.0.as_str())
                .collect();
            degraded.push(format!(
                "liveness of {} unknown: the leader's view of the members could not be read",
                names.join(", ")
            ));
        }
    }
    for (volume, node, state) in &f.copies {
        if state != "in-sync" {
            degraded.push(format!("volume {volume}: the copy on {node} is {state}"));
        }
    }
    for volume in &f.low_space {
        degraded.push(format!("volume {volume} is low on space"));
    }
    let full = f
        .filesystem
        .filter(|(_, total)| *total > 0)
        .map(|(free, total)| 100 - free.saturating_mul(100) / total);
    if let Some(p) = full.filter(|p| *p >= FULL_PERCENT) {
        degraded.push(format!("the data filesystem is {p}% full"));
    }
    let state = if !critical.is_empty() {
        HealthState::Critical
    } else if !degraded.is_empty() {
        HealthState::Degraded
    } else {
        HealthState::Healthy
    };
    let mut reasons = critical;
    reasons.extend(degraded);
    if reasons.is_empty() {
        let mut all = Vec::new();
        if f.clustered {
            all.push(format!("all {} members up", f.members.len()));
            let volumes: std::collections::BTreeSet<_> = f.copies.iter().map(|c| &c.0).collect();
            all.push(format!(
                "every copy of {} {} in sync",
                volumes.len(),
                if volumes.len() == 1 {
                    "volume"
                } else {
                    "volumes"
                }
            ));
        } else {
            all.push("a single node, not a cluster member".to_string());
        }
        if let Some(p) = full {
            all.push(format!("the data filesystem {p}% full"));
        }
        reasons.push(all.join(", "));
    }
    Health { state, reasons }
}

/// The facts of `node` now.
async fn facts(node: &Node) -> Facts {
    let metrics = node.metrics().await;
    let mut f = Facts {
        filesystem: metrics.filesystem,
        low_space: metrics
            .volumes
            .iter()
            .filter(|v| v.low_on_space)
            .map(|v| v.name.clone())
            .collect(),
        ..Facts::default()
    };
    if let Some(c) = &metrics.cluster {
        f.copies = c
            .volumes
            .iter()
            .flat_map(|v| {
                v.replicas
                    .iter()
                    .map(|r| (v.name.clone(), r.node.clone(), r.state.to_string()))
            })
            .collect();
    }
    if node.clustered().is_some() {
        f.clustered = true;
        if let Ok(s) = node.cluster_status().await {
            f.leader = s.leader.is_some();
            f.members = s
                .state
                .nodes
                .values()
                .map(|n| (n.name.clone(), n.holds_data(), Liveness::of(&s, n.id)))
                .collect();
        }
    }
    f
}

/// `GET /v1/health`.
pub(crate) fn routes() -> Router<Arc<Node>> {
    Router::new().route(
        "/v1/health",
        get(|State(node): State<Arc<Node>>| async move { Json(assess(&facts(&node).await)) }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(members: &[(&str, bool, Liveness)]) -> Facts {
        Facts {
            clustered: true,
            leader: true,
            members: members
                .iter()
                .map(|(n, d, l)| (n.to_string(), *d, *l))
                .collect(),
            copies: vec![
                ("vm".into(), "a".into(), "in-sync".into()),
                ("vm".into(), "b".into(), "in-sync".into()),
            ],
            filesystem: Some((50, 100)),
            ..Facts::default()
        }
    }

    const UP: Liveness = Liveness::Up;
    const DOWN: Liveness = Liveness::Down;
    const UNKNOWN: Liveness = Liveness::Unknown;

    #[test]
    fn every_member_up_and_every_copy_in_sync_is_healthy_and_says_so() {
        let h = assess(&cluster(&[
            ("a", true, UP),
            ("b", true, UP),
            ("w", false, UP),
        ]));
        assert_eq!(h.state, HealthState::Healthy);
        assert_eq!(
            h.reasons,
            ["all 3 members up, every copy of 1 volume in sync, the data filesystem 50% full"]
        );
    }

    #[test]
    fn a_node_down_and_a_copy_out_of_sync_degrade_it_with_each_reason() {
        let mut f = cluster(&[("a", true, UP), ("b", true, DOWN), ("w", false, UP)]);
        f.copies[1].2 = "out-of-sync".into();
        let h = assess(&f);
        assert_eq!(h.state, HealthState::Degraded);
        assert_eq!(
            h.reasons,
            [
                "node b is down",
                "2 of 3 members up: one more down and the cluster stops",
                "volume vm: the copy on b is out-of-sync",
            ]
        );
    }

    #[test]
    fn a_witness_down_is_named_as_the_witness() {
        let h = assess(&cluster(&[
            ("a", true, UP),
            ("b", true, UP),
            ("w", false, DOWN),
        ]));
        assert_eq!(h.state, HealthState::Degraded);
        assert_eq!(h.reasons[0], "witness w is down");
    }

    #[test]
    fn no_leader_or_no_quorum_is_critical() {
        let mut f = cluster(&[
            ("a", true, Liveness::Unknown),
            ("b", true, Liveness::Unknown),
        ]);
        f.leader = false;
        let h = assess(&f);
        assert_eq!(h.state, HealthState::Critical);
        assert!(h.reasons[0].starts_with("no leader"), "{h:?}");

        let h = assess(&cluster(&[
            ("a", true, UP),
            ("b", true, DOWN),
            ("w", false, DOWN),
        ]));
        assert_eq!(h.state, HealthState::Critical);
        assert_eq!(
            h.reasons[0],
            "1 of 3 members up: the cluster has lost its quorum"
        );
    }

    #[test]
    fn members_of_unknown_liveness_are_not_counted_as_down() {
        // A follower that could not read the leader's view: only the
        // leader is known up. The quorum is not known lost.
        let h = assess(&cluster(&[
            ("a", true, UP),
            ("b", true, UNKNOWN),
            ("w", false, UNKNOWN),
        ]));
        assert_eq!(h.state, HealthState::Degraded, "{h:?}");
        assert_eq!(
            h.reasons,
            ["liveness of b, w unknown: the leader's view of the members could not be read"]
        );
        // One known down and one unknown of three: one more down stops it.
        let h = assess(&cluster(&[
            ("a", true, UP),
            ("b", true, DOWN),
            ("w", false, UNKNOWN),
        ]));
        assert_eq!(h.state, HealthState::Degraded, "{h:?}");
        assert_eq!(
            h.reasons[..2],
            [
                "node b is down",
                "1 of 3 members down: one more down and the cluster stops"
            ]
        );
        // Three data nodes, two known down, one unknown: quorum lost.
        let h = assess(&cluster(&[
            ("a", true, UP),
            ("b", true, DOWN),
            ("c", true, DOWN),
            ("d", true, UNKNOWN),
        ]));
        assert_eq!(h.state, HealthState::Critical, "{h:?}");
        assert_eq!(
            h.reasons[0],
            "2 of 4 members down: the cluster has lost its quorum"
        );
    }

    #[test]
    fn quorum_arithmetic_for_three_data_nodes_and_a_single_member() {
        let three = [("a", true, UP), ("b", true, UP), ("c", true, UP)];
        assert_eq!(assess(&cluster(&three)).state, HealthState::Healthy);
        let mut one_down = three;
        one_down[2].2 = DOWN;
        let h = assess(&cluster(&one_down));
        assert_eq!(h.state, HealthState::Degraded);
        assert_eq!(
            h.reasons[1],
            "2 of 3 members up: one more down and the cluster stops"
        );
        let mut two_down = one_down;
        two_down[1].2 = DOWN;
        assert_eq!(assess(&cluster(&two_down)).state, HealthState::Critical);
        // Five members, one down: two more may go.
        let five = [
            ("a", true, UP),
            ("b", true, UP),
            ("c", true, UP),
            ("d", true, UP),
            ("e", true, DOWN),
        ];
        let h = assess(&cluster(&five));
        assert_eq!(h.state, HealthState::Degraded);
        assert_eq!(h.reasons, ["node e is down"]);
        let mut single = cluster(&[("a", true, UP)]);
        single.copies.truncate(1);
        let h = assess(&single);
        assert_eq!(h.state, HealthState::Healthy, "{h:?}");
    }

    #[test]
    fn a_full_filesystem_and_a_volume_low_on_space_degrade_a_lone_node() {
        let f = Facts {
            filesystem: Some((5, 100)),
            low_space: vec!["vm".into()],
            ..Facts::default()
        };
        let h = assess(&f);
        assert_eq!(h.state, HealthState::Degraded);
        assert_eq!(
            h.reasons,
            [
                "volume vm is low on space",
                "the data filesystem is 95% full"
            ]
        );
        let h = assess(&Facts::default());
        assert_eq!(h.state, HealthState::Healthy);
        assert_eq!(h.reasons, ["a single node, not a cluster member"]);
    }
}
