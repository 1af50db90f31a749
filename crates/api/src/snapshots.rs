//! Snapshots, clones and rollback over HTTP: the routes, their bodies and
//! the client calls.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use node::{Node, SnapshotDeleted, SnapshotView, VolumeInfo};
use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::server::ApiError;
use crate::{ApiClient, ClientError};

/// Body of `POST /v1/snapshots`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateSnapshots {
    /// The volumes to take it of: several are one consistency group.
    pub volumes: Vec<String>,
    /// The snapshot's name on each volume; default `snap-<UTC time>`.
    #[serde(default)]
    pub name: Option<String>,
    /// The consistency group's name; default the snapshot's.
    #[serde(default)]
    pub group: Option<String>,
}

/// Body of `POST /v1/volumes/{name}/clone`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CloneVolume {
    /// The new volume's name.
    pub new: String,
    /// The snapshot to clone; none: the volume as it is now.
    #[serde(default)]
    pub snapshot: Option<String>,
}

/// Body of `POST /v1/volumes/{name}/rollback`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rollback {
    /// The snapshot whose content the volume gets back.
    pub snapshot: String,
    /// Log out initiators logged in to the volume first.
    #[serde(default)]
    pub force: bool,
}

#[derive(Deserialize)]
struct ListQuery {
    volume: Option<String>,
}

/// The routes; the caller adds authorization.
pub(crate) fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/v1/snapshots", get(list).post(create))
        .route(
            "/v1/volumes/:name/snapshots/:snapshot",
            get(show).delete(delete),
        )
        .route("/v1/volumes/:name/clone", post(clone_volume))
        .route("/v1/volumes/:name/rollback", post(rollback))
}

async fn list(
    State(node): State<Arc<Node>>,
    Query(q): Query<ListQuery>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(node.list_snapshots(q.volume.as_deref()).await?))
}

async fn create(
    State(node): State<Arc<Node>>,
    Json(req): Json<CreateSnapshots>,
) -> Result<impl IntoResponse, ApiError> {
    let taken = node
        .create_snapshots(&req.volumes, req.name.as_deref(), req.group.as_deref())
        .await?;
    Ok((StatusCode::CREATED, Json(taken)))
}

async fn show(
    State(node): State<Arc<Node>>,
    Path((name, snapshot)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(node.snapshot(&name, &snapshot).await?))
}

async fn delete(
    State(node): State<Arc<Node>>,
    Path((name, snapshot)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(node.delete_snapshot(&name, &snapshot).await?))
}

async fn clone_volume(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    Json(req): Json<CloneVolume>,
) -> Result<impl IntoResponse, ApiError> {
    let info = node
        .clone_volume(&name, req.snapshot.as_deref(), &req.new)
        .await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn rollback(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    Json(req): Json<Rollback>,
) -> Result<impl IntoResponse, ApiError> {
    node.rollback_volume(&name, &req.snapshot, req.force)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

impl ApiClient {
    /// `POST /v1/snapshots`.
    pub async fn create_snapshots(
        &self,
        req: &CreateSnapshots,
    ) -> Result<Vec<SnapshotView>, ClientError> {
        let v = self.call(Method::POST, "/v1/snapshots", Some(req)).await?;
        self.expect(v)
    }

    /// `GET /v1/snapshots[?volume=]`.
    pub async fn list_snapshots(
        &self,
        volume: Option<&str>,
    ) -> Result<Vec<SnapshotView>, ClientError> {
        let path = match volume {
            Some(v) => format!("/v1/snapshots?volume={v}"),
            None => "/v1/snapshots".to_string(),
        };
        let v = self.call::<(), _>(Method::GET, &path, None).await?;
        self.expect(v)
    }

    /// `GET /v1/volumes/{name}/snapshots/{snapshot}`.
    pub async fn snapshot(&self, name: &str, snapshot: &str) -> Result<SnapshotView, ClientError> {
        let path = format!("/v1/volumes/{name}/snapshots/{snapshot}");
        let v = self.call::<(), _>(Method::GET, &path, None).await?;
        self.expect(v)
    }

    /// `DELETE /v1/volumes/{name}/snapshots/{snapshot}`.
    pub async fn delete_snapshot(
        &self,
        name: &str,
        snapshot: &str,
    ) -> Result<SnapshotDeleted, ClientError> {
        let path = format!("/v1/volumes/{name}/snapshots/{snapshot}");
        let v = self.call::<(), _>(Method::DELETE, &path, None).await?;
        self.expect(v)
    }

    /// `POST /v1/volumes/{name}/clone`.
    pub async fn clone_volume(
        &self,
        name: &str,
        req: &CloneVolume,
    ) -> Result<VolumeInfo, ClientError> {
        let path = format!("/v1/volumes/{name}/clone");
        let v = self.call(Method::POST, &path, Some(req)).await?;
        self.expect(v)
    }

    /// `POST /v1/volumes/{name}/rollback`.
    pub async fn rollback(&self, name: &str, req: &Rollback) -> Result<(), ClientError> {
        let path = format!("/v1/volumes/{name}/rollback");
        self.call::<_, ()>(Method::POST, &path, Some(req)).await?;
        Ok(())
    }
}
