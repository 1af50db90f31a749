use node::VolumeInfo;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

use crate::{
    AddReplica, CreateVolume, ErrorBody, Maintenance, MaintenanceRequest, MovePrimary,
    PrimaryMoved, Removed, ReplicaPlaced, ResizeVolume, UpgradeCheck, UpgradeCheckRequest,
};

/// Why a management call failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The server could not be reached at all.
    #[error("cannot reach the tandem server at {addr} (is `tandem serve` running?)")]
    Unreachable {
        addr: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error.
    #[error("{message}")]
    Refused { status: u16, message: String },
    /// The server's answer could not be understood.
    #[error("unexpected answer from the tandem server at {addr}")]
    BadAnswer {
        addr: String,
        #[source]
        source: reqwest::Error,
    },
}

/// Client of the management API, used by the `tandem` CLI.
pub struct ApiClient {
    base: String,
    addr: String,
    token: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client for the server whose API listens on `addr` (`host:port`),
    /// authenticating with `token` (the server's `api.token`).
    pub fn new(addr: &str, token: &str) -> Self {
        ApiClient {
            base: format!("http://{addr}"),
            addr: addr.to_string(),
            token: token.trim().to_string(),
            http: reqwest::Client::new(),
        }
    }

    pub(crate) async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Option<T>, ClientError> {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                addr: self.addr.clone(),
                source,
            })?;
        let status = resp.status();
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let message = serde_json::from_str::<ErrorBody>(&text)
                .map(|b| b.error)
                .unwrap_or_else(|_| format!("server answered {status}: {text}"));
            return Err(ClientError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        resp.json::<T>()
            .await
            .map(Some)
            .map_err(|source| ClientError::BadAnswer {
                addr: self.addr.clone(),
                source,
            })
    }

    pub(crate) fn expect<T>(&self, v: Option<T>) -> Result<T, ClientError> {
        v.ok_or_else(|| ClientError::Refused {
            status: 204,
            message: format!("the tandem server at {} sent no body", self.addr),
        })
    }

    /// `GET /v1/cluster`.
    pub async fn cluster(&self) -> Result<crate::ClusterView, ClientError> {
        let v = self.call::<(), _>(Method::GET, "/v1/cluster", None).await?;
        self.expect(v)
    }

    /// `GET /v1/cluster?versions=false`: without asking every member its
    /// version (`versions` left empty), for views redrawn often.
    pub async fn cluster_without_versions(&self) -> Result<crate::ClusterView, ClientError> {
        let v = self
            .call::<(), _>(Method::GET, "/v1/cluster?versions=false", None)
            .await?;
        self.expect(v)
    }

    /// `POST /v1/cluster/init`.
    pub async fn cluster_init(&self) -> Result<crate::ClusterToken, ClientError> {
        let v = self
            .call(Method::POST, "/v1/cluster/init", Some(&()))
            .await?;
        self.expect(v)
    }

    /// `POST /v1/cluster/join`.
    pub async fn cluster_join(&self, req: &crate::JoinCluster) -> Result<(), ClientError> {
        self.call::<_, ()>(Method::POST, "/v1/cluster/join", Some(req))
            .await
            .map(|_| ())
    }

    /// `POST /v1/cluster/leave`.
    pub async fn cluster_leave(&self) -> Result<(), ClientError> {
        self.call::<_, ()>(Method::POST, "/v1/cluster/leave", Some(&()))
            .await
            .map(|_| ())
    }

    /// `POST /v1/cluster/remove`: removes member `node`, which cannot
    /// leave by itself (`dead`); `force` even though it is still heard
    /// from.
    pub async fn cluster_remove(&self, req: &crate::RemoveMember) -> Result<Removed, ClientError> {
        let v = self
            .call(Method::POST, "/v1/cluster/remove", Some(req))
            .await?;
        self.expect(v)
    }

    /// `PUT /v1/cluster/replace-delay`: seconds a copy on a silent member
    /// waits before the leader replaces it (0: never).
    pub async fn set_replace_delay(&self, secs: u64) -> Result<(), ClientError> {
        self.call::<_, ()>(
            Method::PUT,
            "/v1/cluster/replace-delay",
            Some(&crate::SetReplaceDelay { secs }),
        )
        .await
        .map(|_| ())
    }

    /// `PUT /v1/cluster/floating`.
    pub async fn set_floating(
        &self,
        floating: Option<node::FloatingAddress>,
    ) -> Result<(), ClientError> {
        self.call::<_, ()>(
            Method::PUT,
            "/v1/cluster/floating",
            Some(&crate::SetFloating { floating }),
        )
        .await
        .map(|_| ())
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<crate::StatusView, ClientError> {
        let v = self.call::<(), _>(Method::GET, "/v1/status", None).await?;
        self.expect(v)
    }

    /// `GET /v1/volumes`.
    pub async fn list_volumes(&self) -> Result<Vec<VolumeInfo>, ClientError> {
        let v = self.call::<(), _>(Method::GET, "/v1/volumes", None).await?;
        self.expect(v)
    }

    /// `GET /v1/volumes/{name}`.
    pub async fn volume(&self, name: &str) -> Result<VolumeInfo, ClientError> {
        let v = self
            .call::<(), _>(Method::GET, &format!("/v1/volumes/{name}"), None)
            .await?;
        self.expect(v)
    }

    /// `POST /v1/volumes/{name}/replicas`: the id of the node given the copy.
    pub async fn add_replica(&self, name: &str, node: Option<&str>) -> Result<u64, ClientError> {
        let req = AddReplica {
            node: node.map(str::to_string),
        };
        let v = self
            .call(
                Method::POST,
                &format!("/v1/volumes/{name}/replicas"),
                Some(&req),
            )
            .await?;
        let placed: ReplicaPlaced = self.expect(v)?;
        Ok(placed.node)
    }

    /// `DELETE /v1/volumes/{name}/replicas/{node}?force=...`.
    pub async fn remove_replica(
        &self,
        name: &str,
        node: &str,
        force: bool,
    ) -> Result<(), ClientError> {
        self.call::<(), serde_json::Value>(
            Method::DELETE,
            &format!("/v1/volumes/{name}/replicas/{node}?force={force}"),
            None,
        )
        .await?;
        Ok(())
    }

    /// `POST /v1/cluster/maintenance/enter` (`enter`) or `.../exit`.
    pub async fn maintenance(
        &self,
        enter: bool,
        req: &MaintenanceRequest,
    ) -> Result<Maintenance, ClientError> {
        let path = if enter {
            "/v1/cluster/maintenance/enter"
        } else {
            "/v1/cluster/maintenance/exit"
        };
        let v = self.call(Method::POST, path, Some(req)).await?;
        self.expect(v)
    }

    /// `POST /v1/cluster/upgrade-check`: whether member `node` (the node
    /// asked when `None`) can be stopped now.
    pub async fn upgrade_check(&self, node: Option<String>) -> Result<UpgradeCheck, ClientError> {
        let req = UpgradeCheckRequest { node };
        let v = self
            .call(Method::POST, "/v1/cluster/upgrade-check", Some(&req))
            .await?;
        self.expect(v)
    }

    /// `POST /v1/volumes/{name}/move-primary`: a planned switchover to the
    /// in-sync copy on member `to`.
    pub async fn move_primary(&self, name: &str, to: &str) -> Result<PrimaryMoved, ClientError> {
        let req = MovePrimary { to: to.to_string() };
        let v = self
            .call(
                Method::POST,
                &format!("/v1/volumes/{name}/move-primary"),
                Some(&req),
            )
            .await?;
        self.expect(v)
    }

    /// `POST /v1/volumes`.
    pub async fn create_volume(&self, req: &CreateVolume) -> Result<VolumeInfo, ClientError> {
        let v = self.call(Method::POST, "/v1/volumes", Some(req)).await?;
        self.expect(v)
    }

    /// `PATCH /v1/volumes/{name}`.
    pub async fn resize_volume(
        &self,
        name: &str,
        size_bytes: u64,
    ) -> Result<VolumeInfo, ClientError> {
        let v = self
            .call(
                Method::PATCH,
                &format!("/v1/volumes/{name}"),
                Some(&ResizeVolume { size_bytes }),
            )
            .await?;
        self.expect(v)
    }

    /// `PUT /v1/volumes/{name}/access`.
    pub async fn set_access(
        &self,
        name: &str,
        access: &node::AccessConfig,
    ) -> Result<VolumeInfo, ClientError> {
        let v = self
            .call(
                Method::PUT,
                &format!("/v1/volumes/{name}/access"),
                Some(access),
            )
            .await?;
        self.expect(v)
    }

    /// `DELETE /v1/volumes/{name}`.
    pub async fn delete_volume(&self, name: &str, force: bool) -> Result<(), ClientError> {
        self.call::<(), serde_json::Value>(
            Method::DELETE,
            &format!("/v1/volumes/{name}?force={force}"),
            None,
        )
        .await?;
        Ok(())
    }
}
