use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use node::{AccessConfig, ClusterConfig, Node, NodeError};
use serde::Deserialize;

use crate::{
    AddReplica, ClusterSummary, ClusterToken, ClusterView, CreateVolume, ErrorBody, JoinCluster,
    Listeners, Liveness, MaintenanceRequest, MemberSummary, MovePrimary, RemoveMember,
    ReplicaPlaced, ResizeVolume, SetFloating, SetReplaceDelay, StatusView, UpgradeCheckRequest,
};

/// Builds the API router over the node's service layer. Every request must
/// carry `Authorization: Bearer <token>`.
pub fn router(node: Arc<Node>, token: String, cluster: ClusterConfig) -> Router {
    build(node, token, cluster, None)
}

/// [`router`] for a node serving on `listen`, which `GET /v1/status` reports.
pub fn serving_router(
    node: Arc<Node>,
    token: String,
    cluster: ClusterConfig,
    listen: Listeners,
) -> Router {
    build(node, token, cluster, Some(listen))
}

fn build(
    node: Arc<Node>,
    token: String,
    cluster: ClusterConfig,
    listen: Option<Listeners>,
) -> Router {
    let token = Arc::new(token);
    let refused = Arc::new(Mutex::new(RefusedLog::default()));
    let cluster = Arc::new(cluster);
    let join_cfg = cluster.clone();
    let listen = Arc::new(listen);
    Router::new()
        .route("/v1/cluster", get(cluster_view))
        .route(
            "/v1/cluster/init",
            post(move |State(node): State<Arc<Node>>| async move {
                let token = node.cluster_init(&cluster).await?;
                let endpoint = cluster.endpoint();
                Ok::<_, ApiError>(Json(ClusterToken { token, endpoint }))
            }),
        )
        .route(
            "/v1/cluster/join",
            post(
                move |State(node): State<Arc<Node>>, Json(req): Json<JoinCluster>| async move {
                    node.cluster_join(&join_cfg, &req.seed, &req.token).await?;
                    Ok::<_, ApiError>(StatusCode::NO_CONTENT)
                },
            ),
        )
        .route("/v1/cluster/leave", post(cluster_leave))
        .route("/v1/cluster/remove", post(cluster_remove))
        .route("/v1/cluster/replace-delay", put(set_replace_delay))
        .route("/v1/cluster/maintenance/enter", post(maintenance_enter))
        .route("/v1/cluster/maintenance/exit", post(maintenance_exit))
        .route("/v1/cluster/upgrade-check", post(upgrade_check))
        .route("/v1/cluster/floating", put(set_floating))
        .route(
            "/v1/status",
            get(move |State(node): State<Arc<Node>>| status(node, listen.clone())),
        )
        .route("/v1/volumes", get(list).post(create))
        .route(
            "/v1/volumes/:name",
            get(describe).patch(resize).delete(delete),
        )
        .route("/v1/volumes/:name/access", put(set_access))
        .route("/v1/volumes/:name/replicas", post(add_replica))
        .route(
            "/v1/volumes/:name/replicas/:node",
            axum::routing::delete(remove_replica),
        )
        .route("/v1/volumes/:name/move-primary", post(move_primary))
        .merge(crate::snapshots::routes())
        .merge(crate::events::routes())
        .merge(crate::health::routes())
        .route("/metrics", get(crate::metrics::scrape))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            let (token, refused) = (token.clone(), refused.clone());
            async move { authorize(&token, &refused, req, next).await }
        }))
        .merge(crate::dashboard::routes())
        .with_state(node)
}

/// Requests refused for want of the token are logged at most once in this
/// long, the line saying how many more were refused since the last one: a
/// client without the token cannot grow the log.
const REFUSED_LOG_EVERY: Duration = Duration::from_secs(10);

/// When a refused request was last logged, and those refused since.
#[derive(Default)]
struct RefusedLog {
    last: Option<Instant>,
    since: u64,
}

impl RefusedLog {
    /// Takes a refused request at `now`: `Some(n)` when it is to be logged,
    /// `n` refused since the last line.
    fn note(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < REFUSED_LOG_EVERY)
        {
            self.since += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}

async fn authorize(token: &str, refused: &Mutex<RefusedLog>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !same(given.as_bytes(), token.as_bytes()) {
        let noted = refused.lock().unwrap().note(Instant::now());
        if let Some(before) = noted {
            tracing::warn!(
                path = %req.uri().path(),
                refused_since_last_line = before,
                "management request without a valid API token refused"
            );
        }
        let error = "missing or wrong API token: the CLI reads it from <data dir>/api.token \
                     (set TANDEM_DATA_DIR, --token-file or TANDEM_API_TOKEN)"
            .to_string();
        return (
            StatusCode::UNAUTHORIZED,
            [(header::CACHE_CONTROL, "no-store")],
            Json(ErrorBody { error }),
        )
            .into_response();
    }
    let mut resp = next.run(req).await;
    // What a token let through is kept by no cache, the browser's included.
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// Constant-time comparison.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) struct ApiError(NodeError);

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = match &self.0 {
            NodeError::NotFound(_) => StatusCode::NOT_FOUND,
            NodeError::Invalid(_) => StatusCode::BAD_REQUEST,
            NodeError::InUse { .. }
            | NodeError::Busy { .. }
            | NodeError::SessionsUnknown { .. }
            | NodeError::Refused(_) => StatusCode::CONFLICT,
            NodeError::Store(e) if e.is_conflict() => StatusCode::CONFLICT,
            NodeError::Store(e) if e.is_invalid_input() => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let error = error_chain(&self.0);
        if code == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(%error, "management request failed");
        }
        (code, Json(ErrorBody { error })).into_response()
    }
}

/// The error's message followed by its sources, so the cause is not lost.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let msg = src.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = src.source();
    }
    s
}

/// Query of `GET /v1/cluster`.
#[derive(Deserialize)]
struct ClusterQuery {
    /// Ask every member its version (a member down costs a timeout).
    #[serde(default = "asked")]
    versions: bool,
}

fn asked() -> bool {
    true
}

async fn cluster_view(
    State(node): State<Arc<Node>>,
    Query(q): Query<ClusterQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let status = node.cluster_status().await?;
    let (replication, acknowledged) = match node.clustered() {
        Some(_) => (node.peer_status().await, node.acknowledged().await),
        None => Default::default(),
    };
    let (versions, versions_unknown) = if q.versions {
        node.member_versions().await?
    } else {
        Default::default()
    };
    Ok(Json(ClusterView {
        status,
        replication,
        acknowledged,
        versions,
        versions_unknown,
    }))
}

async fn add_replica(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    Json(req): Json<AddReplica>,
) -> Result<impl IntoResponse, ApiError> {
    let placed = node.add_replica(&name, req.node.as_deref()).await?;
    Ok((StatusCode::CREATED, Json(ReplicaPlaced { node: placed })))
}

async fn remove_replica(
    State(node): State<Arc<Node>>,
    Path((name, member)): Path<(String, String)>,
    Query(q): Query<DeleteQuery>,
) -> Result<impl IntoResponse, ApiError> {
    node.remove_replica(&name, &member, q.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn maintenance_enter(
    State(node): State<Arc<Node>>,
    Json(req): Json<MaintenanceRequest>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(
        node.maintenance_enter(req.node.as_deref(), req.force)
            .await?,
    ))
}

async fn maintenance_exit(
    State(node): State<Arc<Node>>,
    Json(req): Json<MaintenanceRequest>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(
        node.maintenance_exit(req.node.as_deref(), req.rebalance)
            .await?,
    ))
}

async fn upgrade_check(
    State(node): State<Arc<Node>>,
    Json(req): Json<UpgradeCheckRequest>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(node.upgrade_check(req.node.as_deref()).await?))
}

async fn move_primary(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    Json(req): Json<MovePrimary>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(node.move_primary(&name, &req.to).await?))
}

async fn set_floating(
    State(node): State<Arc<Node>>,
    Json(req): Json<SetFloating>,
) -> Result<impl IntoResponse, ApiError> {
    node.set_floating(req.floating).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn cluster_remove(
    State(node): State<Arc<Node>>,
    Json(req): Json<RemoveMember>,
) -> Result<impl IntoResponse, ApiError> {
    if !req.dead {
        return Err(NodeError::Invalid(format!(
            "node {}: only a member that cannot leave by itself is removed (dead); a running \
             member leaves with tandem cluster leave on it",
            req.node
        ))
        .into());
    }
    Ok(Json(node.cluster_remove_dead(&req.node, req.force).await?))
}

async fn set_replace_delay(
    State(node): State<Arc<Node>>,
    Json(req): Json<SetReplaceDelay>,
) -> Result<impl IntoResponse, ApiError> {
    node.set_replace_delay(Some(std::time::Duration::from_secs(req.secs)))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn cluster_leave(State(node): State<Arc<Node>>) -> Result<impl IntoResponse, ApiError> {
    node.cluster_leave().await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn status(node: Arc<Node>, listen: Arc<Option<Listeners>>) -> impl IntoResponse {
    let cluster = match node.clustered() {
        Some(_) => node.cluster_status().await.ok().map(|s| ClusterSummary {
            cluster_id: s.state.cluster_id.map(|u| u.to_string()),
            me: s.me,
            leader: s.leader.map(|l| {
                s.state
                    .nodes
                    .get(&l)
                    .map_or(l.to_string(), |n| n.name.clone())
            }),
            members: s
                .state
                .nodes
                .values()
                .map(|n| MemberSummary {
                    id: n.id,
                    name: n.name.clone(),
                    data: n.holds_data(),
                    endpoint: n.cluster_addr.clone(),
                    liveness: Liveness::of(&s, n.id),
                })
                .collect(),
        }),
        None => None,
    };
    Json(StatusView {
        node: node.status().await,
        listen: (*listen).clone(),
        cluster,
    })
}

async fn list(State(node): State<Arc<Node>>) -> impl IntoResponse {
    Json(node.list_volumes().await)
}

async fn create(
    State(node): State<Arc<Node>>,
    Json(req): Json<CreateVolume>,
) -> Result<impl IntoResponse, ApiError> {
    let info = node
        .create_volume(&req.name, req.size_bytes, req.block_size, req.replicas)
        .await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn describe(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(node.volume(&name).await?))
}

async fn resize(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    Json(req): Json<ResizeVolume>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(node.resize_volume(&name, req.size_bytes).await?))
}

#[derive(Deserialize)]
struct DeleteQuery {
    #[serde(default)]
    force: bool,
}

async fn delete(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<impl IntoResponse, ApiError> {
    node.delete_volume(&name, q.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_access(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    Json(req): Json<AccessConfig>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(node.set_access(&name, req).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_requests_are_logged_once_in_a_while_with_a_count() {
        let t0 = Instant::now();
        let mut log = RefusedLog::default();
        assert_eq!(log.note(t0), Some(0));
        for ms in (100..10_000).step_by(100) {
            assert_eq!(log.note(t0 + Duration::from_millis(ms)), None, "{ms} ms");
        }
        assert_eq!(log.note(t0 + REFUSED_LOG_EVERY), Some(99));
        assert_eq!(log.note(t0 + 3 * REFUSED_LOG_EVERY), Some(0));
    }
}
