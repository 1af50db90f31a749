//! One hand-over of a primary role at a time: a second drain of a role
//! that is drained (or was handed over) is refused, and only the drain that
//! raised the fence lowers it, so one hand-over given up never unfences
//! another under way, nor a role already handed over.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use replica::{
    ClusterKey, ClusterVolume, Control, ControlError, LocalCopy, PeerSpec, Primary, PrimaryConfig,
    ReplicaServer,
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
    _server: Arc<ReplicaServer>,
    addr: SocketAddr,
    _task: JoinHandle<()>,
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
        let _task = tokio::spawn(server.clone().serve(listener));
        TestNode {
            _dir: dir,
            copy,
            _server: server,
            addr,
            _task,
        }
    }
}

fn key() -> ClusterKey {
    ClusterKey::new(b"test cluster secret".to_vec())
}

async fn primary(
    on: &TestNode,
    peers: &[(&TestNode, u64)],
    control: Arc<AllowAll>,
) -> Arc<Primary> {
    let specs = peers
        .iter()
        .map(|(n, id)| PeerSpec {
            node: *id,
            addr: n.addr.to_string(),
            in_sync: true,
        })
        .collect();
    let cfg = PrimaryConfig {
        node: 1,
        epoch: 1,
        key: key(),
        timeout: Duration::from_secs(2),
    };
    let p = Primary::start(on.copy.clone(), cfg, specs, control)
        .await
        .unwrap();
    let t = Instant::now();
    while !p.peer_status().iter().all(|s| s.connected) {
        assert!(t.elapsed() < Duration::from_secs(20), "peers connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p
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
    let p = primary(&a, &[(&b, 2), (&c, 3)], control.clone()).await;
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
    let p = primary(&a, &[(&b, 2)], control).await;
    p.drain(2, Duration::from_secs(5)).await.unwrap().keep();
    assert!(p.write(0, pattern(1), true).await.is_err());
    assert!(p.drain(2, Duration::from_secs(5)).await.is_err());
    assert!(
        p.write(1, pattern(2), true).await.is_err(),
        "a role whose hand-over was kept acknowledges writes again"
    );
}
