//! Tandem's management API (HTTP + JSON, version 1) and its client.
//!
//! Routes:
//! - `GET    /v1/status`                      node summary
//! - `GET    /v1/volumes`                     list volumes
//! - `POST   /v1/volumes`                     create `{name, size_bytes, block_size?}`
//! - `GET    /v1/volumes/{name}`              describe one volume
//! - `PATCH  /v1/volumes/{name}`              grow `{size_bytes}`
//! - `DELETE /v1/volumes/{name}?force=true`   delete (force logs initiators out)
//! - `PUT    /v1/volumes/{name}/access`       replace access rules
//!   `{allowed_initiators: [..], chap: {user, secret}?, mutual_chap: {user, secret}?}`
//!
//! Every request carries `Authorization: Bearer <token>`, the token the server
//! keeps in `<data dir>/api.token` (mode 0600). Errors are `{"error": "..."}`
//! with 400 (bad request), 401 (no or wrong token), 404 (no such volume),
//! 409 (exists / in use) or 500.
#![forbid(unsafe_code)]

mod client;
mod server;

pub use client::{ApiClient, ClientError};
pub use server::router;

use serde::{Deserialize, Serialize};

/// The default management API address: loopback only.
pub const DEFAULT_API_ADDR: &str = "127.0.0.1:7260";

/// Body of `POST /v1/volumes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateVolume {
    /// Volume name: `[a-z0-9][a-z0-9.-]{0,62}`.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Logical block size, 512 (default) or 4096.
    #[serde(default = "default_block_size")]
    pub block_size: u32,
}

fn default_block_size() -> u32 {
    512
}

/// Body of `PATCH /v1/volumes/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResizeVolume {
    /// New size in bytes (grow only).
    pub size_bytes: u64,
}

/// Body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, naming the object.
    pub error: String,
}
