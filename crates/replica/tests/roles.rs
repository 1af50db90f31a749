//! A primary role handed over and taken up again: one hand-over of a role
//! at a time (a second drain is refused, and only the drain that raised the
//! fence lowers it), and a primary that leads again after another one does
//! not trust its old map of what a copy out of sync misses.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::key;

use async_trait::async_trait;
use bytes::Bytes;
use replica::{
    ClusterKey, ClusterVolume, Control, ControlError, LocalCopy, Primary, ReplicaServer,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use volume::{MemVolume, Volume};

const BS: u32 = 4096;

#[derive(Default)]
struct AllowAll {
    lost: std::sync::Mutex<Vec<u64>>,
}

#[async_trait]
impl Control for AllowAll {
    fn may_acknowledge(&self, _v: &str, _e: u64) -> bool {
        true
    }
    async fn replica_lost(&self, _v: &str, node: u64, _e: u64) -> Result<(), ControlError> {
        self.lost.lock().unwrap().push(node);
        Ok(())
    }
    async fn replica_in_sync(&self, _v: &str, _node: u64, _e: u64) -> Result<(), ControlError> {
        Ok(())
    }
    async fn replica_syncing(&self, _v: &str, _node: u64, _e: u64) {}
}

struct TestNode {
    _dir: tempfile::TempDir,
    copy: Arc<LocalCopy>,
    server: Arc<ReplicaServer>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TestNode {
    async fn new(key: &ClusterKey, blocks: u64) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let vol: Arc<dyn Volume> = Arc::new(MemVolume::new(BS, blocks));
        let copy = LocalCopy::open("vol", vol, &dir.path().join("vol")).unwrap();
        let export = ClusterVolume::over_copy(copy.clone());
        let server = ReplicaServer::new(key.clone());
        server.add(export);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(server.clone().serve(listener));
        TestNode {
            _dir: dir,
            copy,
            server,
            addr,
            task,
        }
    }
}

impl TestNode {
    /// The replica server goes away (its connections with it).
    fn kill(&mut self) {
        self.task.abort();
        self.server.drop_connections();
    }

    /// And comes back on the same address.
    async fn restart(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.task = tokio::spawn(self.server.clone().serve(listener));
    }
}

/// The primary role on `on` (node `me`) at `epoch`; the peers in `away`
/// are out of sync (and need not be connected).
async fn role(
    on: &TestNode,
    me: u64,
    epoch: u64,
    peers: &[(&TestNode, u64)],
    away: &[u64],
    control: Arc<AllowAll>,
) -> Arc<Primary> {
    let peers: Vec<(SocketAddr, u64)> = peers.iter().map(|(n, id)| (n.addr, *id)).collect();
    common::role(on.copy.clone(), me, epoch, &peers, away, control).await
}

fn pattern(seed: u8) -> Bytes {
    Bytes::from(vec![seed; BS as usize])
}

/// Two hand-overs of one volume at once (maintenance while an
/// administrator moves the same volume, or a retry): the second is refused
/// while the first holds the role, and the first giving up lowers the fence
/// it raised (the role takes writes again), never one it did not raise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_hand_over_waits_for_the_first() {
    let k = key();
    let a = TestNode::new(&k, 64).await;
    let b = TestNode::new(&k, 64).await;
    let c = TestNode::new(&k, 64).await;
    let control = Arc::new(AllowAll::default());
    let p = role(&a, 1, 1, &[(&b, 2), (&c, 3)], &[], control.clone()).await;
    p.write(0, pattern(1), true).await.unwrap();

    let first = p.drain(2, Duration::from_secs(5)).await.unwrap();
    match p.drain(2, Duration::from_secs(5)).await {
        Err(replica::HandOverError::InProgress { .. }) => {}
        Err(e) => panic!("a second drain failed otherwise: {e}"),
        Ok(_) => panic!("a second drain of a drained role was accepted"),
    }
    assert!(
        p.write(1, pattern(2), true).await.is_err(),
        "the role acknowledged a write while a hand-over holds it drained"
    );
    // The first gives up: the role serves again, and a new hand-over may start.
    drop(first);
    p.write(1, pattern(2), true).await.unwrap();
    let again = p.drain(2, Duration::from_secs(5)).await.unwrap();
    again.keep();
    assert!(control.lost.lock().unwrap().is_empty());
}

/// A hand-over that was kept (its change committed, or its outcome is not
/// known, so the role must never serve again) stays in force: a later
/// drain of the same role is refused and takes nothing down with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_handed_over_never_serves_again() {
    let k = key();
    let a = TestNode::new(&k, 64).await;
    let b = TestNode::new(&k, 64).await;
    let control = Arc::new(AllowAll::default());
    let p = role(&a, 1, 1, &[(&b, 2)], &[], control).await;
    p.drain(2, Duration::from_secs(5)).await.unwrap().keep();
    assert!(p.write(0, pattern(1), true).await.is_err());
    assert!(p.drain(2, Duration::from_secs(5)).await.is_err());
    assert!(
        p.write(1, pattern(2), true).await.is_err(),
        "a role whose hand-over was kept acknowledges writes again"
    );
}

/// Three copies: B leads (epoch 1), then A (epoch 2) while C is away and
/// misses a write, then B again (epoch 3) with C out of sync. B's map of
/// what C misses, kept from epoch 1, knows nothing of epoch 2: the resync
/// that makes C in sync must copy that write all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_again_does_not_trust_its_old_map_of_what_a_copy_misses() {
    let k = key();
    let a = TestNode::new(&k, 64).await;
    let b = TestNode::new(&k, 64).await;
    let mut c = TestNode::new(&k, 64).await;
    let control = Arc::new(AllowAll::default());
    let on_b = role(&b, 2, 1, &[(&a, 1), (&c, 3)], &[], control.clone()).await;
    on_b.write(0, pattern(1), true).await.unwrap();
    // Its sweeps make its maps durable, with the copies they describe.
    tokio::time::sleep(Duration::from_secs(3)).await;
    on_b.stop();

    let on_a = role(&a, 1, 2, &[(&b, 2), (&c, 3)], &[], control.clone()).await;
    c.kill();
    on_a.write(5, pattern(7), true).await.unwrap();
    assert!(
        control.lost.lock().unwrap().contains(&3),
        "C was recorded lost"
    );
    // A's sweeps settle B's activity log: B no longer counts the region as
    // one it wrote without knowing who else has it.
    common::settled(&b.copy, "B").await;
    on_a.stop();

    c.restart().await;
    let on_b = role(&b, 2, 3, &[(&a, 1), (&c, 3)], &[3], control.clone()).await;
    let t = Instant::now();
    while !on_b
        .peer_status()
        .iter()
        .any(|s| s.node == 3 && s.state == replica::PeerState::InSync)
    {
        assert!(t.elapsed() < Duration::from_secs(30), "C resyncs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = c.copy.volume().read(5, 1).await.unwrap();
    assert!(
        got == pattern(7)[..],
        "C was resynced without the write it missed under A"
    );
    on_b.stop();
}
