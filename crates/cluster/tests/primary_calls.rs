//! What a member asks of a volume's primary on another member: a rollback
//! rewrites every copy of the volume, a snapshot syncs each, and the
//! answer is waited for as long as that takes, not the few seconds a quick
//! call gets.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cluster::{
    Cluster, HandedOver, Handover, NodeId, Role, SnapshotRecord, SnapshotRef, SnapshotRequest,
};
use common::{eventually, init, join};

/// A primary whose rollbacks and snapshots take `rollback` to make.
struct Slow {
    rollback: Duration,
}

#[async_trait]
impl Handover for Slow {
    async fn hand_over(&self, volume: &str, _to: NodeId) -> Result<HandedOver, String> {
        Err(format!("volume {volume}: not here"))
    }
    async fn take_snapshots(&self, _req: SnapshotRequest) -> Result<Vec<SnapshotRecord>, String> {
        tokio::time::sleep(self.rollback).await;
        Ok(Vec::new())
    }
    async fn delete_snapshot(&self, _req: SnapshotRef) -> Result<(), String> {
        Err("not here".into())
    }
    async fn rollback(&self, _req: SnapshotRef) -> Result<(), String> {
        tokio::time::sleep(self.rollback).await;
        Ok(())
    }
}

/// Members a and b, b serving as a primary whose rollbacks and snapshots
/// take 12 s, longer than a quick call between members may; their
/// directories (kept while they run) and the two members.
async fn two_members_with_a_slow_primary() -> ([tempfile::TempDir; 2], Cluster, Cluster) {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, token) = init(da.path(), "a", Role::Data).await;
    let b = join(db.path(), "b", Role::Data, &a, &token).await;
    eventually("a sees two members", 10, || a.state().nodes.len() == 2).await;
    b.serve_handover(Arc::new(Slow {
        rollback: Duration::from_secs(12),
    }));
    ([da, db], a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_longer_than_a_quick_call_is_answered_as_done() {
    let (_dirs, a, b) = two_members_with_a_slow_primary().await;
    let req = SnapshotRef {
        volume: "vol".into(),
        id: uuid::Uuid::new_v4(),
    };
    let answer = a.rollback_on(b.id(), req).await;
    assert!(answer.is_ok(), "a rollback that was made: {answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_longer_than_a_quick_call_is_answered_as_taken() {
    let (_dirs, a, b) = two_members_with_a_slow_primary().await;
    let req = SnapshotRequest {
        volumes: vec!["vol".into()],
        name: "s".into(),
        group: None,
    };
    let answer = a.take_snapshots_on(b.id(), req).await;
    assert!(answer.is_ok(), "a snapshot that was taken: {answer:?}");
}
