//! What the API's tests share: a node over a data directory of its own,
//! with the API router in front of it.

#![allow(dead_code)]

use std::sync::Arc;

use axum::Router;
use node::{ClusterConfig, Node, NodeConfig};
use portal::Targets;
use store::Store;
use testkit::free_port;

/// Prefix of the nodes' IQNs.
pub const PREFIX: &str = "iqn.2026-11.io.tandem";

/// A node over its own data directory and the API router in front of it.
pub struct Api {
    _dir: tempfile::TempDir,
    pub token: String,
    pub targets: Arc<Targets>,
    pub store: Arc<Store>,
    pub cluster: ClusterConfig,
    pub router: Router,
}

/// A cluster configuration for a node `name` on free loopback ports.
pub fn cluster_config(name: &str) -> ClusterConfig {
    ClusterConfig {
        name: name.into(),
        cluster_listen: ([127, 0, 0, 1], free_port()).into(),
        repl_listen: ([127, 0, 0, 1], free_port()).into(),
        advertise: "127.0.0.1".into(),
        iscsi_port: free_port(),
    }
}

/// A node called node-1.
pub async fn api() -> Api {
    named("node-1").await
}

/// A node called `name` (its name as a cluster member).
pub async fn named(name: &str) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    // The token `tandem serve` gives the router.
    let token = store.api_token().unwrap();
    let targets = Arc::new(Targets::new());
    let node = Node::start(
        store.clone(),
        targets.clone(),
        NodeConfig {
            iqn_prefix: PREFIX.into(),
        },
    )
    .await
    .unwrap();
    let cluster = cluster_config(name);
    let router = api::router(Arc::new(node), token.clone(), cluster.clone());
    Api {
        _dir: dir,
        token,
        targets,
        store,
        cluster,
        router,
    }
}
