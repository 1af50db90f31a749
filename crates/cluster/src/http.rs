//! The member endpoint: the HTTP handlers other members call (Raft calls,
//! join, leave, proposals, heartbeats, status, sessions, hand-over), each admitted by the
//! cluster secret ([`crate::net::Gate`]) and answered signed.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{BasicNode, ChangeMembers};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::data_key::{self, DataKeyRequest};
use crate::lease::confirm_leadership;
use crate::member::{Inner, LeaderWrite};
use crate::{ClusterError, ClusterStatus, Command, NodeId, NodeInfo, Outcome, Refusal, TypeConfig};

/// Largest request body a member accepts (append-entries batches, snapshot
/// pieces).
const MAX_BODY: usize = 16 * 1024 * 1024;

/// The routes of the member endpoint, over a member that may stop.
pub(crate) fn router(inner: Weak<Inner>) -> Router {
    Router::new()
        .route("/raft/append", post(h_append))
        .route("/raft/vote", post(h_vote))
        .route("/raft/snapshot", post(h_snapshot))
        .route("/cluster/join", post(h_join))
        .route("/cluster/leave", post(h_leave))
        .route("/cluster/remove-dead", post(h_remove_dead))
        .route("/cluster/propose", post(h_propose))
        .route("/cluster/heartbeat", post(h_heartbeat))
        .route("/cluster/status", post(h_status))
        .route("/cluster/data-key", post(h_data_key))
        .route("/cluster/sessions", post(h_sessions))
        .route("/cluster/hand-over", post(h_hand_over))
        .route("/cluster/snapshot", post(h_volume_snapshot))
        .route("/cluster/snapshot-delete", post(h_snapshot_delete))
        .route("/cluster/rollback", post(h_rollback))
        .route("/cluster/log-out", post(h_log_out))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(inner)
}

/// Body of `/cluster/join`: the member to add.
#[derive(Serialize, Deserialize)]
pub(crate) struct JoinRequest {
    pub(crate) info: NodeInfo,
    /// The newest log entries the joining build reads (absent, 0, from a
    /// build older than the field).
    #[serde(default)]
    pub(crate) log_version: u32,
}

/// Body of `/cluster/leave` and `/cluster/heartbeat`: the member concerned.
#[derive(Serialize, Deserialize)]
pub(crate) struct NodeRequest {
    pub(crate) node: NodeId,
}

/// A member's answer on the wire: the value, or why not as text (the
/// message of a [`MemberRefusal`]).
pub(crate) type Answer<T> = Result<T, String>;

/// How the answer of a member that does not lead begins; callers retry
/// with the leader on it.
const NOT_LEADER: &str = "not the leader";

/// Whether a refusal on the wire says the member does not lead.
pub(crate) fn is_not_leader(why: &str) -> bool {
    why.starts_with(NOT_LEADER)
}

/// Why a member refused a request of another.
#[derive(Debug, Error)]
pub(crate) enum MemberRefusal {
    /// Only the leader does this.
    #[error("{NOT_LEADER} (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// The joining build cannot read entries the log already holds.
    #[error("node {node} reads log entries up to version {reads}, and the cluster's log holds entries of version {required}: upgrade it first")]
    TooOld {
        node: NodeId,
        reads: u32,
        required: u32,
    },
    /// The id is a member's already.
    #[error("node id {node} is already a member")]
    IdTaken { node: NodeId },
    /// The id is being given to a node at another address.
    #[error("node id {node} is taken by the node at {addr}; join again")]
    IdTakenAt { node: NodeId, addr: String },
    /// Adding the node as a learner failed.
    #[error("adding node {node} as learner: {reason}")]
    AddLearner { node: NodeId, reason: String },
    /// Making the learner a voter failed.
    #[error("making node {node} a voter: {reason}")]
    MakeVoter { node: NodeId, reason: String },
    /// Taking the vote away failed.
    #[error("removing node {node} from the voters: {reason}")]
    RemoveVoter { node: NodeId, reason: String },
    /// The leader asked to remove itself as dead.
    #[error(
        "node {node} leads the cluster and answers: it is not dead (tandem cluster leave on it)"
    )]
    RemoveSelf { node: NodeId },
    /// A primary the leader is replacing gets no lease meanwhile.
    #[error("node {node} is being replaced as a primary")]
    BeingReplaced { node: NodeId },
    /// The state machine refused the change.
    #[error(transparent)]
    State(#[from] Refusal),
    /// The Raft engine failed the write.
    #[error("{0}")]
    Raft(String),
    /// Handing the request to the leader failed.
    #[error(transparent)]
    Forward(#[from] ClusterError),
}

impl MemberRefusal {
    fn from_write(s: &Inner, e: LeaderWrite) -> MemberRefusal {
        match e {
            LeaderWrite::NotLeader => not_leader(s),
            LeaderWrite::Refused(why) => MemberRefusal::State(why),
            LeaderWrite::Raft(e) => MemberRefusal::Raft(e.to_string()),
        }
    }
}

/// The wire form of a handler's result.
fn wire<T>(r: Result<T, MemberRefusal>) -> Answer<T> {
    r.map_err(|e| e.to_string())
}

async fn h_append(State(w): State<Weak<Inner>>, h: HeaderMap, body: Bytes) -> Response {
    let (s, nonce, req) =
        match admit::<AppendEntriesRequest<TypeConfig>>(&w, &h, "/raft/append", &body) {
            Ok(x) => x,
            Err(r) => return r,
        };
    let r = s.raft.append_entries(req).await;
    s.gate.answer(&nonce, &r)
}

async fn h_vote(State(w): State<Weak<Inner>>, h: HeaderMap, body: Bytes) -> Response {
    let (s, nonce, req) = match admit::<VoteRequest<NodeId>>(&w, &h, "/raft/vote", &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    // A member removed as dead that came back still counts itself a
    // voter (its log never got its removal): its elections would only
    // disturb the cluster, so it gets no answer, never a higher term.
    if let Some(candidate) = req.vote.leader_id().voted_for() {
        if s.store.state().was_removed(candidate) {
            use axum::response::IntoResponse;
            return (
                axum::http::StatusCode::FORBIDDEN,
                Refusal::Removed { node: candidate }.to_string(),
            )
                .into_response();
        }
    }
    let r = s.raft.vote(req).await;
    s.gate.answer(&nonce, &r)
}

async fn h_snapshot(State(w): State<Weak<Inner>>, h: HeaderMap, body: Bytes) -> Response {
    let (s, nonce, req) =
        match admit::<InstallSnapshotRequest<TypeConfig>>(&w, &h, "/raft/snapshot", &body) {
            Ok(x) => x,
            Err(r) => return r,
        };
    let r = s.raft.install_snapshot(req).await;
    s.gate.answer(&nonce, &r)
}

/// Admits a member request: the member is still running, the caller proves
/// the cluster secret (the nonce signs the answer), the body decodes.
fn admit<T: serde::de::DeserializeOwned>(
    w: &Weak<Inner>,
    h: &HeaderMap,
    path: &str,
    body: &[u8],
) -> Result<(Arc<Inner>, String, T), Response> {
    let s = w.upgrade().ok_or_else(stopping)?;
    let nonce = s.gate.check(h, path, body)?;
    let req = serde_json::from_slice(body).map_err(bad_request)?;
    Ok((s, nonce, req))
}

fn stopping() -> Response {
    use axum::response::IntoResponse;
    // Closing the connection makes the peer dial again, and so reach
    // whatever listens on this address next.
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        [(axum::http::header::CONNECTION, "close")],
        "member stopping",
    )
        .into_response()
}

fn bad_request(e: impl std::fmt::Display) -> Response {
    use axum::response::IntoResponse;
    (axum::http::StatusCode::BAD_REQUEST, e.to_string()).into_response()
}

fn not_leader(s: &Inner) -> MemberRefusal {
    MemberRefusal::NotLeader { leader: s.leader() }
}

async fn h_join(State(w): State<Weak<Inner>>, h: HeaderMap, body: Bytes) -> Response {
    let (s, nonce, req) = match admit::<JoinRequest>(&w, &h, "/cluster/join", &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let r: Result<(), MemberRefusal> = async {
        if s.leader() != Some(s.me.id) {
            // Joining through a follower: hand the request to the leader.
            return Ok(s.to_leader::<_, ()>("/cluster/join", &req).await?);
        }
        // One join at a time, so two nodes cannot take the same id.
        let _one = s.joining.lock().await;
        let info = req.info;
        let state = s.store.state();
        if req.log_version < state.required_log_version {
            return Err(MemberRefusal::TooOld {
                node: info.id,
                reads: req.log_version,
                required: state.required_log_version,
            });
        }
        let members = s.raft.metrics().borrow().membership_config.clone();
        let voter = members.membership().voter_ids().any(|v| v == info.id);
        if let Some(known) = state.nodes.get(&info.id) {
            if *known == info && voter {
                // A retry of a join that went through.
                return Ok(());
            }
            return Err(MemberRefusal::IdTaken { node: info.id });
        }
        if let Some(n) = members.membership().get_node(&info.id) {
            if n.addr != info.cluster_addr {
                return Err(MemberRefusal::IdTakenAt {
                    node: info.id,
                    addr: n.addr.clone(),
                });
            }
        }
        // Checked before the node gets a vote: a voter the state refuses
        // (a taken name, say) would count in every quorum.
        let mut probe = (*state).clone();
        if let Outcome::Refused(why) = probe.apply(&Command::AddNode { info: info.clone() }) {
            return Err(why.into());
        }
        let node = BasicNode {
            addr: info.cluster_addr.clone(),
        };
        s.raft
            .add_learner(info.id, node, true)
            .await
            .map_err(|e| MemberRefusal::AddLearner {
                node: info.id,
                reason: e.to_string(),
            })?;
        s.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([info.id])), false)
            .await
            .map_err(|e| MemberRefusal::MakeVoter {
                node: info.id,
                reason: e.to_string(),
            })?;
        s.seen.lock().unwrap().insert(info.id, Instant::now());
        tracing::info!(node = info.id, name = %info.name, role = ?info.role, "node joined");
        s.write(Command::AddNode { info })
            .await
            .map_err(|e| MemberRefusal::from_write(&s, e))
    }
    .await;
    s.gate.answer(&nonce, &wire(r))
}

async fn h_leave(State(w): State<Weak<Inner>>, h: HeaderMap, body: Bytes) -> Response {
    let (s, nonce, req) = match admit::<NodeRequest>(&w, &h, "/cluster/leave", &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let r: Result<(), MemberRefusal> = async {
        if s.leader() != Some(s.me.id) {
            return Err(not_leader(&s));
        }
        if let Some(v) = s.store.state().only_in_sync_copy_on(req.node) {
            return Err(Refusal::OnlyInSyncCopy {
                node: req.node,
                volume: v.name.clone(),
            }
            .into());
        }
        // The state first: it refuses to drop the last in-sync copy of a
        // volume and moves primaries away; then the vote. Both steps are
        // skipped when already done, so a failed leave can be retried.
        if s.store.state().nodes.contains_key(&req.node) {
            s.write(Command::RemoveNode { node: req.node })
                .await
                .map_err(|e| MemberRefusal::from_write(&s, e))?;
        }
        remove_voter(&s, req.node).await?;
        tracing::info!(node = req.node, "node left");
        Ok(())
    }
    .await;
    s.gate.answer(&nonce, &wire(r))
}

/// Takes `node`'s vote away, where it still has one, and forgets when it
/// was heard.
async fn remove_voter(s: &Inner, node: NodeId) -> Result<(), MemberRefusal> {
    let members = s.raft.metrics().borrow().membership_config.clone();
    if members.membership().get_node(&node).is_some() {
        s.raft
            .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([node])), false)
            .await
            .map_err(|e| MemberRefusal::RemoveVoter {
                node,
                reason: e.to_string(),
            })?;
    }
    s.seen.lock().unwrap().remove(&node);
    Ok(())
}

/// Removes a member that cannot leave by itself: the state first (it
/// refuses while a volume has no in-sync copy elsewhere, drops the copies
/// and fails over the volumes it led), then its vote. Both steps are
/// skipped when done, so a removal cut short can be retried.
async fn h_remove_dead(State(w): State<Weak<Inner>>, h: HeaderMap, body: Bytes) -> Response {
    let (s, nonce, req) = match admit::<NodeRequest>(&w, &h, "/cluster/remove-dead", &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let r: Result<(), MemberRefusal> = async {
        if s.leader() != Some(s.me.id) {
            return Err(not_leader(&s));
        }
        if req.node == s.me.id {
            return Err(MemberRefusal::RemoveSelf { node: req.node });
        }
        if s.store.state().nodes.contains_key(&req.node) {
            s.write(Command::RemoveDeadNode { node: req.node })
                .await
                .map_err(|e| MemberRefusal::from_write(&s, e))?;
        }
        remove_voter(&s, req.node).await?;
        tracing::warn!(node = req.node, "node removed as dead");
        Ok(())
    }
    .await;
    s.gate.answer(&nonce, &wire(r))
}

async fn h_propose(State(w): State<Weak<Inner>>, h: HeaderMap, body: Bytes) -> Response {
    let (s, nonce, cmd) = match admit::<Command>(&w, &h, "/cluster/propose", &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let r = match s.write(cmd).await {
        Ok(()) => Ok(s
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0)),
        Err(e) => Err(MemberRefusal::from_write(&s, e)),
    };
    s.gate.answer(&nonce, &wire(r))
}

async fn h_heartbeat(State(w): State<Weak<Inner>>, h: HeaderMap, body: Bytes) -> Response {
    let (s, nonce, req) = match admit::<NodeRequest>(&w, &h, "/cluster/heartbeat", &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    // Answered only by a leader a quorum still follows, and only for
    // members: a node that left holds no lease, nor one removed as dead.
    if s.store.state().was_removed(req.node) {
        let r: Result<(), _> = Err(MemberRefusal::State(Refusal::Removed { node: req.node }));
        return s.gate.answer(&nonce, &wire(r));
    }
    if !s.store.state().nodes.contains_key(&req.node) {
        let r: Result<(), _> = Err(MemberRefusal::State(Refusal::NotMember { node: req.node }));
        return s.gate.answer(&nonce, &wire(r));
    }
    let r = match confirm_leadership(&s).await {
        Some(committed) => {
            let mut seen = s.seen.lock().unwrap();
            if s.replacing.lock().unwrap().contains(&req.node) {
                // Declared dead and being replaced: no new lease until the
                // promotion is decided, and then only on a state with it.
                Err(MemberRefusal::BeingReplaced { node: req.node })
            } else {
                // Recorded after the confirmation, so later than the
                // member's send time, from which its lease runs. A promotion
                // decided before this moment is applied here already (it
                // was a primary of this node's that is now being replaced,
                // or it is done): the member must apply it too.
                seen.insert(req.node, Instant::now());
                Ok(committed.max(s.store.applied_index()))
            }
        }
        None => Err(not_leader(&s)),
    };
    s.gate.answer(&nonce, &wire(r))
}

async fn h_status(State(w): State<Weak<Inner>>, h: HeaderMap, body: Bytes) -> Response {
    let Some(s) = w.upgrade() else {
        return stopping();
    };
    let nonce = match s.gate.check(&h, "/cluster/status", &body) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let r: Answer<ClusterStatus> = Ok(s.local_status());
    s.gate.answer(&nonce, &r)
}

async fn h_data_key(State(w): State<Weak<Inner>>, h: HeaderMap, body: Bytes) -> Response {
    let (s, nonce, req) = match admit::<DataKeyRequest>(&w, &h, "/cluster/data-key", &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let r: Answer<String> = data_key::answer(&s, &req).map_err(|e| e.to_string());
    s.gate.answer(&nonce, &r)
}

async fn h_sessions(State(w): State<Weak<Inner>>, h: HeaderMap, body: Bytes) -> Response {
    let (s, nonce, ()) = match admit::<()>(&w, &h, "/cluster/sessions", &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    s.gate.answer(&nonce, &s.local_sessions())
}

async fn h_hand_over(State(w): State<Weak<Inner>>, h: HeaderMap, body: Bytes) -> Response {
    let (s, nonce, req) =
        match admit::<crate::handover::HandOverRequest>(&w, &h, "/cluster/hand-over", &body) {
            Ok(x) => x,
            Err(r) => return r,
        };
    let r = s.local_hand_over(&req.volume, req.to).await;
    s.gate.answer(&nonce, &r)
}

async fn h_volume_snapshot(State(w): State<Weak<Inner>>, h: HeaderMap, body: Bytes) -> Response {
    let (s, nonce, req) =
        match admit::<crate::handover::SnapshotRequest>(&w, &h, "/cluster/snapshot", &body) {
            Ok(x) => x,
            Err(r) => return r,
        };
    let r = s.local_take_snapshots(req).await;
    s.gate.answer(&nonce, &r)
}

async fn h_snapshot_delete(State(w): State<Weak<Inner>>, h: HeaderMap, body: Bytes) -> Response {
    let (s, nonce, req) =
        match admit::<crate::handover::SnapshotRef>(&w, &h, "/cluster/snapshot-delete", &body) {
            Ok(x) => x,
            Err(r) => return r,
        };
    let r = s.local_delete_snapshot(req).await;
    s.gate.answer(&nonce, &r)
}

async fn h_rollback(State(w): State<Weak<Inner>>, h: HeaderMap, body: Bytes) -> Response {
    let (s, nonce, req) =
        match admit::<crate::handover::SnapshotRef>(&w, &h, "/cluster/rollback", &body) {
            Ok(x) => x,
            Err(r) => return r,
        };
    let r = s.local_rollback(req).await;
    s.gate.answer(&nonce, &r)
}

async fn h_log_out(State(w): State<Weak<Inner>>, h: HeaderMap, body: Bytes) -> Response {
    let (s, nonce, volume) = match admit::<uuid::Uuid>(&w, &h, "/cluster/log-out", &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    s.gate.answer(&nonce, &s.local_log_out(volume))
}
