//! Scenario tests of the data plane with in-process nodes on loopback: a
//! primary mirroring to replicas, replicas that die and return, a deposed
//! primary, an expired lease, forwarding.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use replica::{
    ClusterKey, ClusterVolume, Control, ControlError, Forwarder, LocalCopy, PeerSpec, PeerState,
    Primary, PrimaryConfig, ReplicaServer, Route,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use volume::{MemVolume, Volume, VolumeError};

const BS: u32 = 4096;

#[derive(Default)]
struct TestControl {
    lease_lost: AtomicBool,
    refuse: AtomicBool,
    /// How long recording a lost replica takes before it answers.
    record_delay_ms: std::sync::atomic::AtomicU64,
    lost: Mutex<Vec<u64>>,
    in_sync: Mutex<Vec<u64>>,
    syncing: Mutex<Vec<u64>>,
}

#[async_trait]
impl Control for TestControl {
    fn may_acknowledge(&self, _v: &str, _e: u64) -> bool {
        !self.lease_lost.load(Ordering::SeqCst)
    }
    async fn replica_lost(&self, _v: &str, node: u64, _e: u64) -> Result<(), ControlError> {
        let delay = self.record_delay_ms.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        if self.refuse.load(Ordering::SeqCst) {
            return Err(ControlError::NoQuorum {
                waited: Duration::from_millis(delay),
            });
        }
        self.lost.lock().unwrap().push(node);
        Ok(())
    }
    async fn replica_in_sync(&self, _v: &str, node: u64, _e: u64) -> Result<(), ControlError> {
        self.in_sync.lock().unwrap().push(node);
        Ok(())
    }
    async fn replica_syncing(&self, _v: &str, node: u64, _e: u64) {
        self.syncing.lock().unwrap().push(node);
    }
}

/// One node: its copy of the volume, the volume as it exports it, and its
/// replication server.
struct TestNode {
    _dir: tempfile::TempDir,
    copy: Arc<LocalCopy>,
    export: Arc<ClusterVolume>,
    server: Arc<ReplicaServer>,
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl TestNode {
    async fn new(key: &ClusterKey, blocks: u64) -> TestNode {
        TestNode::with(key, BS, blocks).await
    }

    async fn with(key: &ClusterKey, bs: u32, blocks: u64) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let vol: Arc<dyn Volume> = Arc::new(MemVolume::new(bs, blocks));
        let copy = LocalCopy::open("vol", vol, &dir.path().join("vol")).unwrap();
        let export = ClusterVolume::over_copy(copy.clone());
        let server = ReplicaServer::new(key.clone());
        server.add(export.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = Some(tokio::spawn(server.clone().serve(listener)));
        TestNode {
            _dir: dir,
            copy,
            export,
            server,
            addr,
            task,
        }
    }

    /// The node dies: its port stops answering and connections drop.
    fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        self.server.drop_connections();
    }

    /// The node comes back on the same address with the same copy.
    async fn restart(&mut self) {
        // The aborted server task lets go of its listener asynchronously.
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) if tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("rebinding {}: {e}", self.addr),
            }
        };
        self.task = Some(tokio::spawn(self.server.clone().serve(listener)));
    }

    async fn contents(&self) -> Vec<u8> {
        let v = self.copy.volume();
        v.read(0, v.num_blocks() as u32).await.unwrap()
    }
}

fn key() -> ClusterKey {
    ClusterKey::new(b"test cluster secret".to_vec())
}

/// Starts a primary (node 1) on `on` at `epoch` with `peers` as (address,
/// node, in sync), without waiting for them.
async fn start_primary(
    on: &TestNode,
    epoch: u64,
    peers: &[(SocketAddr, u64, bool)],
    control: Arc<TestControl>,
) -> Arc<Primary> {
    let specs = peers
        .iter()
        .map(|(addr, id, in_sync)| PeerSpec {
            node: *id,
            addr: addr.to_string(),
            in_sync: *in_sync,
        })
        .collect();
    let cfg = PrimaryConfig {
        node: 1,
        epoch,
        key: key(),
        timeout: Duration::from_secs(2),
    };
    Primary::start(on.copy.clone(), cfg, specs, control)
        .await
        .unwrap()
}

/// As [`start_primary`], waiting until every peer is connected.
async fn primary(
    on: &TestNode,
    epoch: u64,
    peers: &[(&TestNode, u64, bool)],
    control: Arc<TestControl>,
) -> Arc<Primary> {
    let peers: Vec<_> = peers
        .iter()
        .map(|(n, id, in_sync)| (n.addr, *id, *in_sync))
        .collect();
    let p = start_primary(on, epoch, &peers, control).await;
    wait_for(
        || p.peer_status().iter().all(|s| s.connected),
        "peers connect",
    )
    .await;
    p
}

async fn wait_for(mut f: impl FnMut() -> bool, what: &str) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(20), "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pattern(blocks: u64, seed: u8) -> Bytes {
    Bytes::from(
        (0..blocks * BS as u64)
            .map(|i| (i as u8).wrapping_mul(seed) ^ seed | 1)
            .collect::<Vec<u8>>(),
    )
}

/// Runs the volume suite against the volume node 1 (primary, mirroring to
/// node 2) or node 2 (forwarding to node 1) exports, and checks that every
/// volume of the suite ended with identical copies on both nodes.
async fn suite_through(forwarding: bool) {
    let k = key();
    let last: Arc<Mutex<Vec<(TestNode, TestNode)>>> = Arc::default();
    let keep = last.clone();
    volume::testsuite::run_all(|bs, n| {
        let k = k.clone();
        let keep = keep.clone();
        async move {
            let a = TestNode::with(&k, bs, n).await;
            let b = TestNode::with(&k, bs, n).await;
            let p = primary(&a, 1, &[(&b, 2, true)], Arc::default()).await;
            a.export.set_route(Route::Primary(p));
            let export = if forwarding {
                let route = Forwarder::new(
                    "vol",
                    Some(b.copy.clone()),
                    2,
                    a.addr.to_string(),
                    k.clone(),
                    Duration::from_secs(2),
                );
                b.export.set_route(Route::Forward(Arc::new(route)));
                assert!(!b.export.completes_now(false), "forwarded reads wait");
                b.export.clone()
            } else {
                a.export.clone()
            };
            keep.lock().unwrap().push((a, b));
            export
        }
    })
    .await;
    let all = std::mem::take(&mut *last.lock().unwrap());
    assert!(!all.is_empty());
    for (a, b) in &all {
        let (va, vb) = (a.copy.volume(), b.copy.volume());
        assert_eq!(
            va.num_blocks(),
            vb.num_blocks(),
            "resize reached the replica"
        );
        assert_eq!(a.contents().await, b.contents().await, "copies differ");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_passes_the_volume_suite_and_mirrors_it() {
    suite_through(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarding_node_passes_the_volume_suite() {
    suite_through(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_busy_polling_the_suite_passes_both_ways_and_polls_catch_what_they_wait_for() {
    // Process-wide: other tests of this binary running now poll too, which
    // changes when their frames are read, never what is read.
    struct Off;
    impl Drop for Off {
        fn drop(&mut self) {
            replica::set_busy_poll(Duration::ZERO);
        }
    }
    replica::set_busy_poll(Duration::from_millis(5));
    let off = Off;
    let before = replica::busy_polls();
    suite_through(false).await;
    suite_through(true).await;
    let after = replica::busy_polls();
    drop(off);
    // The suite's commands come one at a time: the copy polls for the next
    // request and the primary (or the forwarding node) for its answer.
    assert!(
        after.requests.caught - before.requests.caught >= 100
            && after.answers.caught - before.answers.caught >= 100,
        "{before:?} -> {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_without_a_primary_refuses_every_request_as_a_transition() {
    let k = key();
    let a = TestNode::new(&k, 64).await;
    let v = a.export.clone();
    assert!(matches!(v.route(), Route::Waiting));
    assert!(!v.completes_now(false) && !v.completes_now(true));
    assert!(v.read_now(0, 1).is_none());
    let one = pattern(1, 3);
    let results = [
        v.read(0, 1).await.map(drop),
        v.write(0, one.clone(), false).await,
        v.flush().await,
        v.unmap(0, 1).await,
        v.write_same(0, 2, one.clone(), false, false).await,
        v.compare_and_write(0, one.clone(), one.clone(), false)
            .await,
        v.block_status(0).await.map(drop),
        v.resize(128).await,
    ];
    for r in results {
        assert!(matches!(r, Err(VolumeError::Unavailable(_))), "{r:?}");
    }
    // Arguments are still checked first, against the geometry it owns.
    let r = v.read(63, 2).await;
    assert!(matches!(r, Err(VolumeError::OutOfRange { .. })), "{r:?}");
    assert!(
        a.contents().await.iter().all(|&b| b == 0),
        "nothing written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_reads_at_once_and_writes_through_the_peers() {
    let k = key();
    let a = TestNode::new(&k, 256).await;
    let b = TestNode::new(&k, 256).await;
    let p = primary(&a, 1, &[(&b, 2, true)], Arc::default()).await;
    let v = a.export.clone();
    v.set_route(Route::Primary(p.clone()));
    assert!(v.completes_now(false), "reads come from the local copy");
    assert!(!v.completes_now(true), "writes wait for the peers");
    v.write(3, pattern(2, 5), false).await.unwrap();
    let now = v.read_now(3, 2).expect("the copy has the blocks at hand");
    assert_eq!(now.unwrap(), pattern(2, 5));
    // The primary role ends with the route: its writes are remembered.
    v.set_route(Route::Waiting);
    let acked = v.acknowledged();
    assert_eq!(acked.len(), 1);
    assert_eq!(acked[0].writes, 1);
    assert!(v.write(3, pattern(1, 6), false).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_replica_is_recorded_before_the_ack_and_resynced_incrementally() {
    let k = key();
    let blocks = 64 * 1024 * 1024 / BS as u64; // 64 MiB
    let a = TestNode::new(&k, blocks).await;
    let mut b = TestNode::new(&k, blocks).await;
    let control = Arc::new(TestControl::default());
    let p = primary(&a, 1, &[(&b, 2, true)], control.clone()).await;

    for i in 0..16u64 {
        p.write(i * 1024, pattern(256, i as u8 + 1), false)
            .await
            .unwrap();
    }
    p.flush().await.unwrap();
    assert_eq!(a.contents().await, b.contents().await);
    // Let the replica settle its activity log, so only new writes count.
    tokio::time::sleep(Duration::from_millis(3500)).await;

    b.kill();
    // Writes go on; the first one records the replica as lost before its ack.
    p.write(100, pattern(2, 7), true).await.unwrap();
    assert_eq!(*control.lost.lock().unwrap(), vec![2]);
    p.write(9000, pattern(4, 9), false).await.unwrap();
    p.unmap(1024, 256).await.unwrap();
    let st = &p.peer_status()[0];
    assert_eq!(st.state, PeerState::OutOfSync);
    assert!(
        st.dirty_bytes > 0 && st.dirty_bytes <= 3 * 1024 * 1024,
        "{st:?}"
    );
    assert_ne!(a.contents().await, b.contents().await);

    b.restart().await;
    wait_for(
        || control.in_sync.lock().unwrap().contains(&2),
        "replica back in sync",
    )
    .await;
    let st = &p.peer_status()[0];
    assert_eq!(st.state, PeerState::InSync, "{st:?}");
    assert!(
        st.resync_total < 64 * 1024 * 1024 / 4,
        "only dirty regions were copied: {st:?}"
    );
    assert!(
        st.resync_total > 0 && st.resync_done == st.resync_total,
        "the primary reports the resync's progress: {st:?}"
    );
    assert!(
        control.syncing.lock().unwrap().contains(&2),
        "the control plane hears that the resync started"
    );
    assert_eq!(a.contents().await, b.contents().await, "copies converged");
    // And it is in the write path again.
    p.write(5, pattern(1, 3), true).await.unwrap();
    assert_eq!(a.contents().await, b.contents().await);
}

/// A replica held away on purpose (its node in maintenance) is recorded out
/// of sync and disconnected while the node still runs; writes go on
/// without it and mark its dirty map; let back, it gets only those regions
/// and is in sync again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_held_away_misses_writes_on_purpose_and_gets_only_them_back() {
    let k = key();
    let blocks = 64 * 1024 * 1024 / BS as u64; // 64 MiB
    let a = TestNode::new(&k, blocks).await;
    let b = TestNode::new(&k, blocks).await;
    let control = Arc::new(TestControl::default());
    let p = primary(&a, 1, &[(&b, 2, true)], control.clone()).await;
    p.write(0, pattern(16, 1), true).await.unwrap();
    assert_eq!(a.contents().await, b.contents().await);
    // Let the replica settle its activity log, so only new writes count.
    tokio::time::sleep(Duration::from_millis(3500)).await;

    assert!(!p.hold_away(9, true), "not a peer");
    assert!(p.hold_away(2, true));
    assert!(!p.hold_away(2, true), "held away already");
    wait_for(
        || control.lost.lock().unwrap().contains(&2),
        "the replica held away recorded out of sync",
    )
    .await;
    wait_for(|| !p.peer_status()[0].connected, "its link closed").await;
    for i in 0..8u64 {
        p.write(4096 + i * 16, pattern(2, i as u8 + 2), true)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let st = &p.peer_status()[0];
    assert_eq!(st.state, PeerState::OutOfSync, "{st:?}");
    assert!(!st.connected, "not connected again while held away: {st:?}");
    assert!(st.dirty_bytes > 0, "{st:?}");
    assert_ne!(a.contents().await, b.contents().await);
    assert!(control.in_sync.lock().unwrap().is_empty());

    assert!(p.hold_away(2, false));
    wait_for(
        || control.in_sync.lock().unwrap().contains(&2),
        "replica back in sync",
    )
    .await;
    let st = &p.peer_status()[0];
    assert_eq!(st.state, PeerState::InSync, "{st:?}");
    assert!(
        st.resync_total > 0 && st.resync_total <= 4 * 1024 * 1024,
        "only the regions written meanwhile (and the activity log's) were looked at: {st:?}"
    );
    assert_eq!(a.contents().await, b.contents().await, "copies converged");
    p.write(5, pattern(1, 3), true).await.unwrap();
    assert_eq!(
        a.contents().await,
        b.contents().await,
        "in the write path again"
    );
}

/// A replica whose link broke and came back before any write noticed may
/// have restarted and lost writes it had not flushed: it is recorded out of
/// sync before it takes writes again, so a later SYNCHRONIZE CACHE never
/// counts on it until the resync has copied its recent regions back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_reconnects_is_recorded_out_of_sync_until_resynced() {
    let k = key();
    let a = TestNode::new(&k, 1024).await;
    let mut b = TestNode::new(&k, 1024).await;
    let control = Arc::new(TestControl::default());
    let p = primary(&a, 1, &[(&b, 2, true)], control.clone()).await;
    p.write(0, pattern(4, 1), false).await.unwrap();
    // No I/O while the replica is away and back.
    b.kill();
    b.restart().await;
    wait_for(
        || control.lost.lock().unwrap().contains(&2),
        "reconnected replica recorded out of sync",
    )
    .await;
    wait_for(
        || control.in_sync.lock().unwrap().contains(&2),
        "replica back in sync after the resync",
    )
    .await;
    p.flush().await.unwrap();
    assert_eq!(a.contents().await, b.contents().await);
}

/// Which blocks of `v` hold written data, as runs of (first block, blocks).
async fn written_runs(v: &dyn Volume) -> Vec<(u64, u64)> {
    let mut runs = Vec::new();
    let mut lba = 0;
    while lba < v.num_blocks() {
        let (state, n) = v.block_status(lba).await.unwrap();
        if state == volume::BlockState::Mapped {
            match runs.last_mut() {
                Some((start, len)) if *start + *len == lba => *len += n,
                _ => runs.push((lba, n)),
            }
        }
        lba += n;
    }
    runs
}

/// A resync copies written blocks and unmaps unwritten ones: the returning
/// replica holds exactly the blocks the primary holds (a block written with
/// zeros included), no zero-filled neighbours of written blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_keeps_the_replica_as_thin_as_the_primary() {
    let k = key();
    let blocks = 16 * 1024 * 1024 / BS as u64;
    let a = TestNode::new(&k, blocks).await;
    let mut b = TestNode::new(&k, blocks).await;
    let control = Arc::new(TestControl::default());
    let p = primary(&a, 1, &[(&b, 2, true)], control.clone()).await;
    p.write(0, pattern(4, 1), true).await.unwrap();
    b.kill();
    // Scattered writes while the replica is away: single blocks inside
    // resync chunks, a block of zeros, an unmap of data it had.
    p.write(7, pattern(1, 2), false).await.unwrap();
    p.write(300, pattern(1, 3), false).await.unwrap();
    p.write(301, Bytes::from(vec![0u8; BS as usize]), false)
        .await
        .unwrap();
    p.unmap(1, 2).await.unwrap();
    p.write(2000, pattern(3, 4), true).await.unwrap();
    b.restart().await;
    wait_for(
        || control.in_sync.lock().unwrap().contains(&2),
        "replica back in sync",
    )
    .await;
    assert_eq!(a.contents().await, b.contents().await, "copies converged");
    let want = written_runs(a.copy.volume().as_ref()).await;
    assert_eq!(want, vec![(0, 1), (3, 1), (7, 1), (300, 2), (2000, 3)]);
    assert_eq!(
        written_runs(b.copy.volume().as_ref()).await,
        want,
        "the replica holds other blocks than the primary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_sync_replica_stays_in_sync_while_a_new_primary_reconciles_recent_regions() {
    let k = key();
    let a = TestNode::new(&k, 4096).await;
    let b = TestNode::new(&k, 4096).await;
    let control = Arc::new(TestControl::default());
    let p = primary(&a, 1, &[(&b, 2, true)], control.clone()).await;
    for i in 0..8u64 {
        p.write(i * 300, pattern(8, i as u8 + 1), false)
            .await
            .unwrap();
    }
    // The role ends before the activity log is swept: a primary at the next
    // epoch on the same copy must reconcile those regions with the replica.
    p.stop();
    drop(p);
    assert!(!a.copy.suspect_ranges().is_empty(), "regions still logged");
    let p = primary(&a, 2, &[(&b, 2, true)], control.clone()).await;
    wait_for(
        || p.peer_status()[0].dirty_bytes == 0 && p.peer_status()[0].resync_total > 0,
        "recent regions reconciled",
    )
    .await;
    assert_eq!(a.contents().await, b.contents().await);
    assert_eq!(p.peer_status()[0].state, PeerState::InSync);
    assert!(
        control.syncing.lock().unwrap().is_empty(),
        "an in-sync replica was reported syncing to the control plane"
    );
    p.write(7, pattern(1, 5), true).await.unwrap();
    assert_eq!(a.contents().await, b.contents().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_is_not_acknowledged_when_the_loss_cannot_be_recorded() {
    let k = key();
    let a = TestNode::new(&k, 1024).await;
    let mut b = TestNode::new(&k, 1024).await;
    let control = Arc::new(TestControl::default());
    let p = primary(&a, 1, &[(&b, 2, true)], control.clone()).await;
    control.refuse.store(true, Ordering::SeqCst);
    b.kill();
    let r = p.write(0, pattern(1, 5), true).await;
    assert!(matches!(r, Err(VolumeError::Unavailable(_))), "{r:?}");
    assert!(control.lost.lock().unwrap().is_empty());
}

/// While the record of a lost replica is being committed, other writes that
/// skip that replica wait for the record and fail with it: none of them is
/// acknowledged without the replica and without the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_a_slow_failed_record_are_not_acknowledged() {
    let k = key();
    let a = TestNode::new(&k, 1024).await;
    let mut b = TestNode::new(&k, 1024).await;
    let control = Arc::new(TestControl::default());
    let p = primary(&a, 1, &[(&b, 2, true)], control.clone()).await;
    // No quorum: the record takes a while, then fails.
    control.record_delay_ms.store(400, Ordering::SeqCst);
    control.refuse.store(true, Ordering::SeqCst);
    b.kill();
    let start = Instant::now();
    let mut writes = Vec::new();
    for i in 0..64u64 {
        let p = p.clone();
        writes.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 5)).await;
            p.write(i * 8, pattern(8, i as u8 + 1), i % 4 == 0).await
        }));
    }
    let mut acknowledged = Vec::new();
    for (i, w) in writes.into_iter().enumerate() {
        if w.await.unwrap().is_ok() {
            acknowledged.push(i);
        }
    }
    assert!(
        acknowledged.is_empty(),
        "writes {acknowledged:?} were acknowledged without the replica and without the record"
    );
    assert!(control.lost.lock().unwrap().is_empty());
    assert!(start.elapsed() < Duration::from_secs(30), "writes hung");
    assert_eq!(p.acknowledged(), None);
    // Once the record can be made, writes go on without the replica.
    control.refuse.store(false, Ordering::SeqCst);
    control.record_delay_ms.store(0, Ordering::SeqCst);
    p.write(0, pattern(1, 9), true).await.unwrap();
    assert_eq!(*control.lost.lock().unwrap(), vec![2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposed_primary_and_expired_lease_stop_acknowledging() {
    let k = key();
    let a = TestNode::new(&k, 1024).await;
    let b = TestNode::new(&k, 1024).await;
    let control = Arc::new(TestControl::default());
    let p = primary(&a, 1, &[(&b, 2, true)], control.clone()).await;
    p.write(0, pattern(1, 5), true).await.unwrap();

    control.lease_lost.store(true, Ordering::SeqCst);
    let r = p.write(0, pattern(1, 6), true).await;
    assert!(matches!(r, Err(VolumeError::Unavailable(_))), "{r:?}");
    assert!(
        p.read(0, 1).await.is_err(),
        "no reads without the lease either"
    );
    control.lease_lost.store(false, Ordering::SeqCst);

    // Node 2 is promoted at epoch 2: the old primary's writes are refused.
    b.copy.accept_epoch(2).await.unwrap();
    let before = b.contents().await;
    let r = p.write(1, pattern(1, 8), true).await;
    assert!(matches!(r, Err(VolumeError::Unavailable(_))), "{r:?}");
    assert_eq!(
        b.contents().await,
        before,
        "the stale write never reached the new epoch's copy"
    );
    assert!(
        control.lost.lock().unwrap().is_empty(),
        "a deposed primary does not mark others lost"
    );
    let r = p.write(2, pattern(1, 8), true).await;
    assert!(r.is_err(), "it stays deposed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_nodes_forward_io_to_the_primary() {
    let k = key();
    let a = TestNode::new(&k, 2048).await;
    let b = TestNode::new(&k, 2048).await;
    let p = primary(&a, 1, &[(&b, 2, true)], Arc::default()).await;
    a.export.set_route(Route::Primary(p.clone()));

    let fwd = b.export.clone();
    let route = Forwarder::new(
        "vol",
        Some(b.copy.clone()),
        2,
        a.addr.to_string(),
        k.clone(),
        Duration::from_secs(2),
    );
    fwd.set_route(Route::Forward(Arc::new(route)));
    let data = pattern(8, 11);
    fwd.write(16, data.clone(), true).await.unwrap();
    assert_eq!(fwd.read(16, 8).await.unwrap(), data);
    assert_eq!(p.read(16, 8).await.unwrap(), data);
    let r = fwd
        .compare_and_write(16, pattern(1, 1), pattern(1, 2), false)
        .await;
    assert!(matches!(r, Err(VolumeError::Miscompare { .. })), "{r:?}");
    fwd.flush().await.unwrap();
    assert_eq!(a.contents().await, b.contents().await);

    // A node without a copy presents the volume with the recorded geometry
    // and forwards everything.
    let role = ClusterVolume::recorded("vol", BS, 2048);
    assert!(role.copy().is_none());
    assert_eq!((role.block_size(), role.num_blocks()), (BS, 2048));
    let r = role.read(0, 1).await;
    assert!(matches!(r, Err(VolumeError::Unavailable(_))), "{r:?}");
    let far = Forwarder::new(
        "vol",
        None,
        3,
        a.addr.to_string(),
        k.clone(),
        Duration::from_secs(2),
    );
    role.set_route(Route::Forward(Arc::new(far)));
    let other = pattern(4, 12);
    role.write(100, other.clone(), false).await.unwrap();
    role.flush().await.unwrap();
    assert_eq!(role.read(100, 4).await.unwrap(), other);
    assert_eq!(fwd.read(100, 4).await.unwrap(), other);
    assert_eq!(a.contents().await, b.contents().await);
    let r = role.read(2047, 2).await;
    assert!(matches!(r, Err(VolumeError::OutOfRange { .. })), "{r:?}");

    // No longer primary: forwarded I/O is refused as a transition.
    a.export.set_route(Route::Waiting);
    let Route::Forward(route) = fwd.route() else {
        panic!("forwarding")
    };
    let r = fwd.read(0, 1).await;
    assert!(matches!(r, Err(VolumeError::Unavailable(_))), "{r:?}");
    route.close();
    let r = fwd.read(0, 1).await;
    assert!(matches!(r, Err(VolumeError::Unavailable(_))), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_cluster_secret_gets_nothing() {
    let a = TestNode::new(&key(), 256).await;
    let stranger = TestNode::new(&ClusterKey::new(b"another cluster".to_vec()), 256).await;
    let control = Arc::new(TestControl::default());
    let p = start_primary(&a, 1, &[(stranger.addr, 9, true)], control.clone()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!p.peer_status()[0].connected);
    p.write(0, pattern(1, 4), true).await.unwrap();
    assert_eq!(*control.lost.lock().unwrap(), vec![9]);
    assert!(stranger.contents().await.iter().all(|&b| b == 0));
    // Forwarding from a stranger is refused too, though the primary is there.
    let fwd = stranger.export.clone();
    let route = Forwarder::new(
        "vol",
        Some(stranger.copy.clone()),
        9,
        a.addr.to_string(),
        ClusterKey::new(b"another cluster".to_vec()),
        Duration::from_secs(1),
    );
    a.export.set_route(Route::Primary(p.clone()));
    fwd.set_route(Route::Forward(Arc::new(route)));
    assert!(matches!(
        fwd.read(0, 1).await,
        Err(VolumeError::Unavailable(_))
    ));
}

/// A node that is forwarding to the primary, its recorded geometry at `blocks`.
fn forwarding_node(primary: &TestNode, k: &ClusterKey, blocks: u64) -> Arc<ClusterVolume> {
    let v = ClusterVolume::recorded("vol", BS, blocks);
    let route = Forwarder::new(
        "vol",
        None,
        3,
        primary.addr.to_string(),
        k.clone(),
        Duration::from_secs(2),
    );
    v.set_route(Route::Forward(Arc::new(route)));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_request_beyond_the_primarys_size_costs_no_replica_its_place() {
    // A resize reaches the nodes one by one: the forwarding node already
    // presents 512 blocks, the primary and its replica still have 256.
    let k = key();
    let a = TestNode::new(&k, 256).await;
    let b = TestNode::new(&k, 256).await;
    let control = Arc::new(TestControl::default());
    let p = primary(&a, 1, &[(&b, 2, true)], control.clone()).await;
    a.export.set_route(Route::Primary(p.clone()));
    let far = forwarding_node(&a, &k, 512);
    let r = far.write(300, pattern(1, 3), false).await;
    assert!(matches!(r, Err(VolumeError::OutOfRange { .. })), "{r:?}");
    let r = far.write_same(300, 4, pattern(1, 4), false, false).await;
    assert!(matches!(r, Err(VolumeError::OutOfRange { .. })), "{r:?}");
    let r = far.unmap(250, 100).await;
    assert!(matches!(r, Err(VolumeError::OutOfRange { .. })), "{r:?}");
    let r = far.read(255, 2).await;
    assert!(matches!(r, Err(VolumeError::OutOfRange { .. })), "{r:?}");
    assert!(
        control.lost.lock().unwrap().is_empty(),
        "a replica was recorded lost"
    );
    assert!(p.peer_status().iter().all(|s| s.state == PeerState::InSync));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_write_into_blocks_only_a_replica_has_yet_lands_nowhere() {
    // The replica grew first; the primary has not yet.
    let k = key();
    let a = TestNode::new(&k, 256).await;
    let b = TestNode::with(&k, BS, 512).await;
    let control = Arc::new(TestControl::default());
    let p = primary(&a, 1, &[(&b, 2, true)], control.clone()).await;
    a.export.set_route(Route::Primary(p.clone()));
    let far = forwarding_node(&a, &k, 512);
    let r = far.write(300, pattern(1, 3), false).await;
    assert!(matches!(r, Err(VolumeError::OutOfRange { .. })), "{r:?}");
    p.resize(512).await.unwrap();
    assert_eq!(
        a.copy.volume().read(300, 1).await.unwrap(),
        b.copy.volume().read(300, 1).await.unwrap(),
        "the copies differ where no write was acknowledged"
    );
    assert!(control.lost.lock().unwrap().is_empty());
}

/// Starts a primary on `on` with one peer, node 2 at `peer`, which the
/// control plane records out of sync and this copy never tracked: it gets a
/// full sync once it answers.
async fn primary_with_new_copy(
    on: &TestNode,
    peer: SocketAddr,
    control: Arc<TestControl>,
) -> Arc<Primary> {
    start_primary(on, 1, &[(peer, 2, false)], control).await
}

/// A full sync reads and sends only the blocks the primary holds (a block
/// written with zeros included); the rest of the volume is unmapped on the
/// new copy without being read, and the status says how much went which way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_sync_sends_only_written_blocks_as_data() {
    let k = key();
    let mib = 1024 * 1024 / BS as u64;
    let blocks = 64 * mib;
    let a = TestNode::new(&k, blocks).await;
    let b = TestNode::new(&k, blocks).await;
    let v = a.copy.volume();
    v.write(0, pattern(mib, 1), false).await.unwrap();
    v.write(10 * mib + 3, pattern(1, 2), false).await.unwrap();
    v.write(40 * mib, pattern(2 * mib, 3), false).await.unwrap();
    v.write(50 * mib, Bytes::from(vec![0u8; BS as usize]), false)
        .await
        .unwrap();
    let control = Arc::new(TestControl::default());
    let p = primary_with_new_copy(&a, b.addr, control.clone()).await;
    wait_for(
        || control.in_sync.lock().unwrap().contains(&2),
        "the new copy in sync",
    )
    .await;
    let st = p.peer_status()[0].clone();
    let data = (3 * mib + 2) * BS as u64;
    let size = blocks * BS as u64;
    assert_eq!(st.resync_total, size, "{st:?}");
    assert_eq!(st.resync_data_bytes, data, "{st:?}");
    assert_eq!(st.resync_unmapped_bytes, size - data, "{st:?}");
    assert_eq!(
        (st.resync_rate, st.resync_limit, st.resync_yielding),
        (0, None, false),
        "no resync runs: {st:?}"
    );
    assert_eq!(a.contents().await, b.contents().await, "copies converged");
    assert_eq!(
        written_runs(b.copy.volume().as_ref()).await,
        written_runs(v.as_ref()).await,
        "the new copy holds other blocks than the primary"
    );
}

/// While client writes are being served a resync yields: one chunk at a
/// time, held to a rate the status shows; once they stop it finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_yields_to_client_writes_and_status_shows_it() {
    let k = key();
    let mib = 1024 * 1024 / BS as u64;
    let blocks = 160 * mib;
    let a = TestNode::new(&k, blocks).await;
    let mut b = TestNode::new(&k, blocks).await;
    let v = a.copy.volume();
    for i in 0..128 {
        v.write(i * mib, pattern(mib, i as u8 | 1), false)
            .await
            .unwrap();
    }
    b.kill();
    let control = Arc::new(TestControl::default());
    let p = primary_with_new_copy(&a, b.addr, control.clone()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (p, stop) = (p.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let lba = (n * 7919) % blocks;
                p.write(lba, pattern(1, n as u8 | 1), false).await.unwrap();
                n += 1;
            }
            n
        })
    };
    b.restart().await;
    wait_for(
        || p.peer_status()[0].resync_done > 0,
        "the resync under way",
    )
    .await;
    let t0 = Instant::now();
    let before = p.peer_status()[0].resync_done;
    let mut yielding = 0;
    while t0.elapsed() < Duration::from_millis(1500) {
        let st = p.peer_status()[0].clone();
        if st.resync_yielding {
            assert_eq!(st.resync_limit, Some(64 << 20), "{st:?}");
            yielding += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let st = p.peer_status()[0].clone();
    let secs = t0.elapsed().as_secs_f64();
    assert!(yielding > 0, "the status never showed the resync yielding");
    // 64 MiB a second, and a chunk of 4 MiB that may have started before
    // the first client write was seen.
    let allowed = (64 << 20) as f64 * secs + (5 << 20) as f64;
    assert!(
        ((st.resync_done - before) as f64) < allowed,
        "the resync copied {} bytes in {secs:.2} s while the client wrote: {st:?}",
        st.resync_done - before
    );
    assert!(
        st.resync_rate > 0 && st.resync_rate < 80 << 20,
        "the status shows the held rate: {st:?}"
    );
    assert_eq!(st.state, PeerState::Syncing, "{st:?}");
    stop.store(true, Ordering::SeqCst);
    assert!(writer.await.unwrap() > 0);
    wait_for(
        || control.in_sync.lock().unwrap().contains(&2),
        "the new copy in sync once the client stopped",
    )
    .await;
    let st = p.peer_status()[0].clone();
    assert!(!st.resync_yielding && st.resync_limit.is_none(), "{st:?}");
    assert_eq!(
        st.resync_data_bytes + st.resync_unmapped_bytes,
        st.resync_total,
        "every region went once, as data or unmapped: {st:?}"
    );
    assert!(st.resync_data_bytes >= 128 << 20, "{st:?}");
    assert_eq!(a.contents().await, b.contents().await, "copies converged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compare_and_write_sent_again_after_a_failover_is_applied_not_miscompared() {
    const HOST1: &str = "iqn.2026-11.test:host1,i,0x000000000001";
    const HOST2: &str = "iqn.2026-11.test:host2,i,0x000000000001";
    let k = key();
    let a = TestNode::new(&k, 64).await;
    let b = TestNode::new(&k, 64).await;
    let control = Arc::new(TestControl::default());
    let zeros = Bytes::from(vec![0u8; BS as usize]);
    let (mine, theirs) = (pattern(1, 3), pattern(1, 7));
    let miscompares = |r: volume::Result<()>| matches!(r, Err(VolumeError::Miscompare { .. }));
    let p = primary(&a, 1, &[(&b, 2, true)], control.clone()).await;
    p.compare_and_write(HOST1, 5, zeros.clone(), mine.clone(), true)
        .await
        .unwrap();
    // Under the same primary an equal command is a new one: it miscompares.
    assert!(miscompares(
        p.compare_and_write(HOST1, 5, zeros.clone(), mine.clone(), true)
            .await
    ));
    p.compare_and_write(HOST1, 9, zeros.clone(), mine.clone(), true)
        .await
        .unwrap();
    // The primary fails before the initiators heard the answers; the
    // replica's node takes over.
    p.stop();
    drop(p);
    let q = primary(&b, 2, &[(&a, 2, true)], control.clone()).await;
    // Another initiator sending the very same bytes is not taken for host 1.
    assert!(miscompares(
        q.compare_and_write(HOST2, 9, zeros.clone(), mine.clone(), true)
            .await
    ));
    // Host 1 sends its command again: applied again, once.
    q.compare_and_write(HOST1, 5, zeros.clone(), mine.clone(), true)
        .await
        .expect("the same command again is applied");
    assert!(miscompares(
        q.compare_and_write(HOST1, 5, zeros.clone(), mine.clone(), true)
            .await
    ));
    // Another command comparing against the same old data still miscompares.
    assert!(miscompares(
        q.compare_and_write(HOST1, 9, zeros.clone(), theirs.clone(), true)
            .await
    ));
    // Once the blocks changed, the old command is no longer a repeat.
    q.write(9, theirs.clone(), true).await.unwrap();
    assert!(miscompares(
        q.compare_and_write(HOST1, 9, zeros, mine, true).await
    ));
    assert_eq!(a.contents().await, b.contents().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_primary_finishes_what_is_in_flight_and_takes_nothing_new() {
    let k = key();
    let a = TestNode::new(&k, 1024).await;
    let mut b = TestNode::new(&k, 1024).await;
    let control = Arc::new(TestControl::default());
    let p = primary(&a, 1, &[(&b, 2, true)], control.clone()).await;
    // Writes to blocks of their own, started one after the other while
    // the primary is drained.
    let mut writes = Vec::new();
    for i in 0..200u64 {
        let p = p.clone();
        writes.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_micros(i * 500)).await;
            p.write(i, pattern(1, i as u8 + 1), i % 2 == 0).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(40)).await;
    let drained = p.drain(2, Duration::from_secs(5)).await.unwrap();
    // Nothing is in flight: both copies hold the same, and keep it.
    let (at_drain, on_b) = (a.contents().await, b.contents().await);
    assert!(at_drain == on_b, "the copies differ once drained");
    let (mut done, mut refused) = (0, 0);
    for (i, w) in writes.into_iter().enumerate() {
        let block = &at_drain[i * BS as usize..(i + 1) * BS as usize];
        match w.await.unwrap() {
            Ok(()) => {
                done += 1;
                assert!(
                    block == &pattern(1, i as u8 + 1)[..],
                    "acknowledged write {i} missing"
                );
            }
            Err(VolumeError::Unavailable(_)) => {
                refused += 1;
                assert!(block.iter().all(|&x| x == 0), "refused write {i} landed");
            }
            Err(e) => panic!("write {i}: {e}"),
        }
    }
    assert!(done > 0 && refused > 0, "{done} done, {refused} refused");
    assert!(
        a.contents().await == at_drain,
        "a write landed after the drain"
    );
    assert!(p.read(0, 1).await.is_err(), "no reads while handing over");
    assert!(p.flush().await.is_err(), "no flush while handing over");
    // Given up: the role serves again.
    drop(drained);
    p.write(300, pattern(1, 3), true).await.unwrap();
    // Handed over: it never does again.
    p.drain(2, Duration::from_secs(5)).await.unwrap().keep();
    assert!(p.write(301, pattern(1, 4), true).await.is_err());
    drop(p);

    // Refused before anything is fenced: no copy there, or one not
    // connected (or out of sync).
    let p = primary(&a, 2, &[(&b, 2, true)], control.clone()).await;
    let why = p.drain(7, Duration::from_secs(5)).await.err().unwrap();
    assert!(
        matches!(why, replica::HandOverError::NoCopy { node: 7, .. }),
        "{why}"
    );
    p.write(302, pattern(1, 5), true).await.unwrap();
    b.kill();
    wait_for(
        || p.peer_status().iter().all(|s| !s.connected),
        "the link to node 2 breaks",
    )
    .await;
    let why = p.drain(2, Duration::from_secs(5)).await.err().unwrap();
    assert!(
        matches!(
            why,
            replica::HandOverError::NotConnected { node: 2, .. }
                | replica::HandOverError::NotInSync { node: 2, .. }
        ),
        "{why}"
    );
    p.write(303, pattern(1, 6), true).await.unwrap();
    // Once the copy missed a write it is out of sync, and says so.
    let why = p.drain(2, Duration::from_secs(5)).await.err().unwrap();
    assert!(
        matches!(why, replica::HandOverError::NotInSync { node: 2, .. }),
        "{why}"
    );
    assert!(why.to_string().contains("out-of-sync"), "{why}");
}
