//! Helpers shared by the scenario tests: in-process members on loopback
//! ports with their state in temporary directories.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use cluster::{Cluster, Command, NodeInfo, Role};
use uuid::Uuid;

/// A node description with its cluster endpoint on `addr`.
pub fn info(name: &str, role: Role, addr: SocketAddr) -> NodeInfo {
    NodeInfo {
        id: 0,
        name: name.into(),
        role: Some(role),
        cluster_addr: addr.to_string(),
        iscsi_addr: format!("{name}:3260"),
        repl_addr: format!("{name}:7401"),
    }
}

/// A loopback address nobody listens on right now.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], testkit::free_port()))
}

/// Starts the first member of a new cluster; returns it and the join token.
pub async fn init(dir: &Path, name: &str, role: Role) -> (Cluster, String) {
    let addr = free_addr();
    Cluster::init(dir, info(name, role, addr), addr)
        .await
        .unwrap()
}

/// Joins a member through `seed`.
pub async fn join(dir: &Path, name: &str, role: Role, seed: &Cluster, token: &str) -> Cluster {
    let addr = free_addr();
    Cluster::join(
        dir,
        info(name, role, addr),
        addr,
        &seed.local_addr().to_string(),
        token,
    )
    .await
    .unwrap()
}

/// Waits until `f` holds, failing the test after `secs`.
pub async fn eventually(what: &str, secs: u64, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(secs), "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    t.elapsed()
}

/// A 1 GiB volume with `replicas` copies.
pub fn create(name: &str, replicas: usize) -> Command {
    Command::CreateVolume {
        id: Uuid::new_v4(),
        name: name.into(),
        size_bytes: 1 << 30,
        block_size: 512,
        replicas,
    }
}

/// Like [`eventually`] for a condition that has to await.
pub async fn eventually_async<F, Fut>(what: &str, secs: u64, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = Instant::now();
    while !f().await {
        assert!(t.elapsed() < Duration::from_secs(secs), "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    t.elapsed()
}
