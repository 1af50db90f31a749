//! Scenario tests of a copy whose disk fails or slows down while the
//! volume runs: each node's copy is a store volume over backings whose
//! disk a test breaks (EIO, read-only) or slows down
//! ([`store::FaultyBacking`]), with a primary mirroring to it on loopback.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use replica::{
    ClusterVolume, Control, ControlError, LocalCopy, PeerState, Primary, ReplicaServer,
    DISK_RETRY_MAX,
};
use store::{DiskFault, DiskFaults, FaultyBacking, LocalVolume, SimDisk, VolumeFiles};
use tokio::net::TcpListener;
use volume::Volume;

const BS: u32 = 4096;
const BLOCKS: u64 = 1024;

/// What the primary asked of the control plane, and when.
#[derive(Default)]
struct Recorded {
    lost: Mutex<Vec<u64>>,
    in_sync: Mutex<Vec<u64>>,
    syncing: Mutex<Vec<(u64, Instant)>>,
    detached: Mutex<Vec<(u64, String)>>,
}

#[async_trait]
impl Control for Recorded {
    fn may_acknowledge(&self, _v: &str, _e: u64) -> bool {
        true
    }
    async fn replica_lost(&self, _v: &str, node: u64, _e: u64) -> Result<(), ControlError> {
        self.lost.lock().unwrap().push(node);
        Ok(())
    }
    async fn replica_in_sync(&self, _v: &str, node: u64, _e: u64) -> Result<(), ControlError> {
        self.in_sync.lock().unwrap().push(node);
        Ok(())
    }
    async fn replica_syncing(&self, _v: &str, node: u64, _e: u64) {
        self.syncing.lock().unwrap().push((node, Instant::now()));
    }
    fn replica_detached(&self, _v: &str, node: u64, why: &str) {
        self.detached.lock().unwrap().push((node, why.to_string()));
    }
}

/// One node: its copy over a disk the test can break, and its
/// replication server.
struct DiskNode {
    _dir: tempfile::TempDir,
    copy: Arc<LocalCopy>,
    disk: Arc<DiskFaults>,
    addr: SocketAddr,
}

impl DiskNode {
    async fn new() -> DiskNode {
        DiskNode::with_blocks(BLOCKS).await
    }

    async fn with_blocks(blocks: u64) -> DiskNode {
        DiskNode::build(blocks, false).await
    }

    /// As [`DiskNode::with_blocks`], its `disk` breaking only the file of
    /// the data (its checksums and dirty bitmap are on a disk that works).
    async fn with_faults_on_data(blocks: u64) -> DiskNode {
        DiskNode::build(blocks, true).await
    }

    async fn build(blocks: u64, only_data: bool) -> DiskNode {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskFaults::new();
        let rest = if only_data {
            DiskFaults::new()
        } else {
            disk.clone()
        };
        let faulty = |len, on: &Arc<DiskFaults>| FaultyBacking::new(SimDisk::new(len), on.clone());
        let files = VolumeFiles {
            data: faulty(blocks * BS as u64, &disk),
            sums: faulty(0, &rest),
            dirty: faulty(0, &rest),
        };
        let vol: Arc<dyn Volume> =
            Arc::new(LocalVolume::with_backing(files, BS, blocks, 1 << 20).unwrap());
        let copy = LocalCopy::open("vol", vol, &dir.path().join("vol")).unwrap();
        let server = ReplicaServer::new(common::key());
        server.add(ClusterVolume::over_copy(copy.clone()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(server.serve(listener));
        DiskNode {
            _dir: dir,
            copy,
            disk,
            addr,
        }
    }

    async fn contents(&self) -> Vec<u8> {
        self.copy.volume().read(0, BLOCKS as u32).await.unwrap()
    }
}

/// Block `lba` as the `n`-th write fills it.
fn block(lba: u64, n: u64) -> Bytes {
    Bytes::from(vec![(lba as u8) ^ (n as u8) | 1; BS as usize])
}

/// Writes with FUA, one block each, `n` from `from`, every one of which
/// must be acknowledged; returns the longest a write took.
async fn write_all(p: &Primary, from: u64, n: u64, expect: &mut [Option<Bytes>]) -> Duration {
    let mut longest = Duration::ZERO;
    for i in from..from + n {
        let lba = (i * 7) % BLOCKS;
        let data = block(lba, i);
        let t = Instant::now();
        p.write(lba, data.clone(), true)
            .await
            .unwrap_or_else(|e| panic!("write {i} at {lba} failed: {e}"));
        longest = longest.max(t.elapsed());
        expect[lba as usize] = Some(data);
    }
    longest
}

/// Every acknowledged write is in `contents`.
fn holds(contents: &[u8], expect: &[Option<Bytes>], who: &str) {
    for (lba, want) in expect.iter().enumerate() {
        if let Some(want) = want {
            let at = lba * BS as usize;
            assert!(
                contents[at..at + BS as usize] == want[..],
                "{who}: block {lba} lost an acknowledged write"
            );
        }
    }
}

async fn wait_for(mut f: impl FnMut() -> bool, within: Duration, what: &str) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < within, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn peer(p: &Primary, node: u64) -> replica::PeerStatus {
    p.peer_status()
        .into_iter()
        .find(|s| s.node == node)
        .unwrap()
}

/// The copy on node 2 fails its disk with `fault` (`says`: what its
/// storage reports) under FUA writes: every write is still acknowledged,
/// the copy is recorded out of sync with the reason in its status and one
/// report, it is tried again with a growing wait (not in a loop), and it
/// comes back in sync by itself once its disk works, holding every write.
async fn copy_disk_fails(fault: DiskFault, says: &str) {
    let a = DiskNode::new().await;
    let b = DiskNode::new().await;
    let control = Arc::new(Recorded::default());
    let p = common::role(a.copy.clone(), 1, 1, &[(b.addr, 2)], &[], control.clone()).await;
    let mut expect = vec![None; BLOCKS as usize];
    write_all(&p, 0, 50, &mut expect).await;
    assert!(peer(&p, 2).in_sync());

    b.disk.fail(fault);
    // Many writes in flight fail on the copy together: one failure of it.
    let mut together = tokio::task::JoinSet::new();
    for i in 50..82 {
        let (p, lba) = (p.clone(), (i * 7) % BLOCKS);
        together.spawn(async move {
            let data = block(lba, i);
            p.write(lba, data.clone(), true).await.map(|()| (lba, data))
        });
    }
    while let Some(done) = together.join_next().await {
        let (lba, data) = done.unwrap().expect("a write acknowledged");
        expect[lba as usize] = Some(data);
    }
    write_all(&p, 82, 50, &mut expect).await;
    assert_eq!(
        *control.lost.lock().unwrap(),
        vec![2],
        "recorded out of sync"
    );
    let st = peer(&p, 2);
    assert_eq!(st.state, PeerState::OutOfSync);
    let why = st.detached.expect("the status says why the copy is out");
    assert!(
        why.starts_with("disk failed: ") && why.contains(says),
        "{why}"
    );
    let reports = control.detached.lock().unwrap().clone();
    assert_eq!(reports.len(), 1, "one report: {reports:?}");
    assert_eq!(reports[0].0, 2);

    // Tried again after 1 s, then 2 s more, then 4 s more: in 6 s at
    // most three resyncs start (one a second or faster before).
    let since = Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let tries = control
        .syncing
        .lock()
        .unwrap()
        .iter()
        .filter(|(n, t)| *n == 2 && *t >= since)
        .count();
    assert!(
        (1..=3).contains(&tries),
        "{tries} resyncs of a failing copy in 6 s"
    );
    assert_eq!(peer(&p, 2).state, PeerState::OutOfSync);
    assert_eq!(
        control.detached.lock().unwrap().len(),
        1,
        "still one report"
    );
    write_all(&p, 132, 50, &mut expect).await;

    b.disk.heal();
    wait_for(
        || peer(&p, 2).in_sync(),
        DISK_RETRY_MAX + Duration::from_secs(10),
        "the copy is back in sync once its disk works",
    )
    .await;
    assert_eq!(peer(&p, 2).detached, None);
    assert_eq!(*control.in_sync.lock().unwrap(), vec![2]);
    write_all(&p, 182, 50, &mut expect).await;
    p.flush().await.unwrap();
    let (ca, cb) = (a.contents().await, b.contents().await);
    holds(&ca, &expect, "primary");
    holds(&cb, &expect, "copy");
    assert!(ca == cb, "the copies are the same");
    p.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_whose_disk_fails_with_eio_is_detached_and_comes_back() {
    copy_disk_fails(DiskFault::Eio, "os error 5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_whose_filesystem_turns_read_only_is_detached_and_comes_back() {
    copy_disk_fails(DiskFault::ReadOnly, "Read-only file system").await;
}

/// The copy on node 2 answers every write 3 s late, past the link's 2 s
/// timeout: no write waits longer than the timeout and the record (the
/// stated bound, plus a margin for a loaded machine), the copy is
/// recorded out of sync as too slow, it is not tried again at once (writes
/// do not stall once per resync), and it is back in sync once its disk is
/// fast again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_copy_stalls_writes_no_longer_than_the_link_timeout() {
    let a = DiskNode::new().await;
    let b = DiskNode::new().await;
    let control = Arc::new(Recorded::default());
    let p = common::role(a.copy.clone(), 1, 1, &[(b.addr, 2)], &[], control.clone()).await;
    let mut expect = vec![None; BLOCKS as usize];
    let fast = write_all(&p, 0, 20, &mut expect).await;
    assert!(fast < Duration::from_secs(1), "{fast:?}");

    b.disk.slow(Duration::from_secs(3));
    // The link's timeout and a margin for a loaded machine: a write that
    // waited for the copy would take its 3 s write and 3 s sync.
    let bound = Duration::from_secs(2) + Duration::from_secs(1);
    let started = Instant::now();
    let mut longest = Duration::ZERO;
    let mut i = 20;
    while started.elapsed() < Duration::from_secs(8) {
        longest = longest.max(write_all(&p, i, 1, &mut expect).await);
        i += 1;
    }
    assert!(longest <= bound, "a write stalled {longest:?}");
    assert_eq!(*control.lost.lock().unwrap(), vec![2]);
    let st = peer(&p, 2);
    assert_eq!(st.state, PeerState::OutOfSync);
    let why = st.detached.expect("the status says why the copy is out");
    assert!(why.starts_with("too slow: "), "{why}");
    // Writes stalled once, not once per resync of the slow copy: for 6 s
    // more they run at the primary's pace.
    let (mut slow_writes, since) = (0, Instant::now());
    while since.elapsed() < Duration::from_secs(6) {
        if write_all(&p, i, 1, &mut expect).await > Duration::from_secs(1) {
            slow_writes += 1;
        }
        i += 1;
    }
    assert!(slow_writes <= 1, "{slow_writes} more writes stalled");

    b.disk.heal();
    wait_for(
        || peer(&p, 2).in_sync(),
        DISK_RETRY_MAX + Duration::from_secs(15),
        "the copy is back in sync once its disk is fast",
    )
    .await;
    p.flush().await.unwrap();
    let (ca, cb) = (a.contents().await, b.contents().await);
    holds(&ca, &expect, "primary");
    holds(&cb, &expect, "copy");
    assert!(ca == cb, "the copies are the same");
    p.stop();
}

/// A control plane that, besides recording, passes on the primary's asks
/// to hand the volume over after its disk failed: (epoch, to).
struct HandingOver {
    recorded: Recorded,
    asked: tokio::sync::mpsc::UnboundedSender<(u64, u64)>,
}

impl HandingOver {
    /// A control plane that records, and the asks for a hand-over it got.
    fn new() -> (
        Arc<HandingOver>,
        tokio::sync::mpsc::UnboundedReceiver<(u64, u64)>,
    ) {
        let (tx, asked) = tokio::sync::mpsc::unbounded_channel();
        let control = Arc::new(HandingOver {
            recorded: Recorded::default(),
            asked: tx,
        });
        (control, asked)
    }
}

/// The hand-over the primary asked for, within 5 s: (epoch, to).
async fn hand_over_asked(
    asked: &mut tokio::sync::mpsc::UnboundedReceiver<(u64, u64)>,
) -> (u64, u64) {
    match tokio::time::timeout(Duration::from_secs(5), asked.recv()).await {
        Ok(Some(ask)) => ask,
        _ => panic!("the primary asked for no hand-over"),
    }
}

/// What the control plane does once node 1's primary asked for a hand-over,
/// after taking its time (three sweeps of the activity logs, one a second,
/// in which nothing the old primary failed may be forgotten): the drained
/// role is done, and node 2 is promoted at the next epoch with node 1's copy
/// out of sync.
async fn hand_over_to_node_2(
    old: Arc<Primary>,
    a: &DiskNode,
    b: &DiskNode,
    control: &Arc<HandingOver>,
) -> Arc<Primary> {
    tokio::time::sleep(Duration::from_secs(3)).await;
    old.drain_failed(2, Duration::from_secs(5))
        .await
        .unwrap()
        .keep();
    old.stop();
    common::role(b.copy.clone(), 2, 2, &[(a.addr, 1)], &[1], control.clone()).await
}

/// Waits until `new` has node 1's copy in sync, at most the longest wait
/// before a failed disk is tried again and its resync.
async fn node_1_in_sync(new: &Primary, what: &str) {
    wait_for(
        || peer(new, 1).in_sync(),
        DISK_RETRY_MAX + Duration::from_secs(15),
        what,
    )
    .await;
}

/// Node 1 the primary at epoch 1 of a copy on node 2, both over disks a
/// test breaks, with a control plane that passes on asks for a hand-over.
async fn primary_and_copy() -> (
    DiskNode,
    DiskNode,
    Arc<HandingOver>,
    tokio::sync::mpsc::UnboundedReceiver<(u64, u64)>,
    Arc<Primary>,
) {
    let a = DiskNode::new().await;
    let b = DiskNode::new().await;
    let (control, asked) = HandingOver::new();
    let old = common::role(a.copy.clone(), 1, 1, &[(b.addr, 2)], &[], control.clone()).await;
    (a, b, control, asked, old)
}

#[async_trait]
impl Control for HandingOver {
    fn may_acknowledge(&self, v: &str, e: u64) -> bool {
        self.recorded.may_acknowledge(v, e)
    }
    async fn replica_lost(&self, v: &str, node: u64, e: u64) -> Result<(), ControlError> {
        self.recorded.replica_lost(v, node, e).await
    }
    async fn replica_in_sync(&self, v: &str, node: u64, e: u64) -> Result<(), ControlError> {
        self.recorded.replica_in_sync(v, node, e).await
    }
    async fn replica_syncing(&self, v: &str, node: u64, e: u64) {
        self.recorded.replica_syncing(v, node, e).await
    }
    fn replica_detached(&self, v: &str, node: u64, why: &str) {
        self.recorded.replica_detached(v, node, why)
    }
    fn primary_disk_failed(&self, _v: &str, epoch: u64, to: u64, _why: &str) -> bool {
        self.asked.send((epoch, to)).is_ok()
    }
}

/// The primary's own disk fails (`fault`) under FUA writes while the copy
/// on node 2 is in sync: no write is answered with the disk's error; the
/// primary asks for the volume to go to node 2 and stops taking commands
/// (they are answered as a transition); once node 2 is promoted at a new
/// epoch (as the control plane does, with node 1's copy out of sync) the
/// writes retried there succeed, node 2 holds every acknowledged write,
/// and once node 1's disk works again it is brought back in sync holding
/// them too.
async fn primary_disk_fails(fault: DiskFault) {
    let (a, b, control, mut asked, old) = primary_and_copy().await;
    let mut expect = vec![None; BLOCKS as usize];
    write_all(&old, 0, 50, &mut expect).await;

    a.disk.fail(fault);
    // The next write fails here and is answered as a transition, not as
    // the disk's error; every command after it too.
    let (lba, data) = (3, block(3, 50));
    match old.write(lba, data.clone(), true).await {
        Err(volume::VolumeError::Unavailable(_)) => {}
        other => panic!("the write the primary's disk failed was answered {other:?}"),
    }
    assert_eq!(hand_over_asked(&mut asked).await, (1, 2));
    assert!(matches!(
        old.read(0, 1).await,
        Err(volume::VolumeError::Unavailable(_))
    ));
    let new = hand_over_to_node_2(old, &a, &b, &control).await;
    // The initiator retries the write on the new primary.
    new.write(lba, data.clone(), true).await.unwrap();
    expect[lba as usize] = Some(data);
    write_all(&new, 51, 50, &mut expect).await;
    holds(&b.contents().await, &expect, "the new primary");
    assert!(!peer(&new, 1).in_sync(), "node 1's copy is out of sync");

    a.disk.heal();
    node_1_in_sync(&new, "node 1's copy is back in sync once its disk works").await;
    write_all(&new, 101, 20, &mut expect).await;
    new.flush().await.unwrap();
    // A write node 1 failed meanwhile would have it recorded out of sync
    // again (and resynced): compared once it is in sync.
    node_1_in_sync(&new, "node 1's copy stays in sync").await;
    let (ca, cb) = (a.contents().await, b.contents().await);
    holds(&cb, &expect, "the new primary");
    holds(&ca, &expect, "the old primary's copy");
    assert!(ca == cb, "the copies are the same");
    new.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_whose_disk_fails_with_eio_hands_the_volume_over() {
    primary_disk_fails(DiskFault::Eio).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_whose_filesystem_turns_read_only_hands_the_volume_over() {
    primary_disk_fails(DiskFault::ReadOnly).await;
}

/// Without a copy in sync elsewhere, the primary's disk error is the
/// command's, as before: the volume stays where it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_whose_disk_fails_without_a_copy_in_sync_answers_the_error() {
    let a = DiskNode::new().await;
    let (control, mut asked) = HandingOver::new();
    let p = common::role(a.copy.clone(), 1, 1, &[], &[], control.clone()).await;
    a.disk.fail(DiskFault::Eio);
    match p.write(0, block(0, 1), true).await {
        Err(volume::VolumeError::Io(_)) => {}
        other => panic!("answered {other:?}"),
    }
    assert!(
        asked.try_recv().is_err(),
        "no hand-over without a copy in sync"
    );
    a.disk.heal();
    p.write(0, block(0, 2), true).await.unwrap();
    p.stop();
}

/// Writes without FUA, one block each, `n` from `from`, every one of which
/// must be acknowledged: each copy holds them in its page cache until the
/// next sync.
async fn write_unsynced(p: &Primary, from: u64, n: u64, expect: &mut [Option<Bytes>]) {
    for i in from..from + n {
        let lba = (i * 7) % BLOCKS;
        let data = block(lba, i);
        p.write(lba, data.clone(), false)
            .await
            .unwrap_or_else(|e| panic!("write {i} at {lba} failed: {e}"));
        expect[lba as usize] = Some(data);
    }
}

/// The blocks of a copy, one by one: a block that cannot be read (its
/// checksum no longer matches the data left on the disk) reads as zeros.
async fn readable(n: &DiskNode) -> Vec<u8> {
    let mut out = Vec::with_capacity((BLOCKS * BS as u64) as usize);
    for lba in 0..BLOCKS {
        match n.copy.volume().read(lba, 1).await {
            Ok(b) => out.extend_from_slice(&b),
            Err(_) => out.extend(std::iter::repeat_n(0, BS as usize)),
        }
    }
    out
}

/// The copy on node 2 fails the sync of an activity-log sweep while no
/// command runs, as Linux fails a writeback: the writes it acknowledged
/// since its last sync are gone from its disk, and its next sync succeeds.
/// It is detached as for a failed flush (not left in sync), and once its
/// disk works it is resynced with the regions it wrote, holding every
/// acknowledged write again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_whose_sweep_fails_to_sync_is_resynced_not_left_in_sync() {
    let a = DiskNode::new().await;
    let b = DiskNode::new().await;
    b.disk.lose_unsynced(true);
    let control = Arc::new(Recorded::default());
    let p = common::role(a.copy.clone(), 1, 1, &[(b.addr, 2)], &[], control.clone()).await;
    let mut expect = vec![None; BLOCKS as usize];
    write_unsynced(&p, 0, 50, &mut expect).await;

    // Two sweeps at least: the second finds the written region quiet and
    // syncs the copy, which fails and drops the writes.
    b.disk.fail(DiskFault::Eio);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    b.disk.heal();
    // The sweeps after it sync the copy without trouble.
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_for(
        || peer(&p, 2).in_sync(),
        DISK_RETRY_MAX + Duration::from_secs(10),
        "the copy is in sync once its disk works",
    )
    .await;
    p.flush().await.unwrap();
    holds(&readable(&a).await, &expect, "primary");
    holds(&readable(&b).await, &expect, "copy");
    p.stop();
}

/// What makes the primary's disk fail a sync in
/// [`a_primary_that_fails_a_sync_loses_nothing`].
#[derive(Debug, Clone, Copy)]
enum FailedSync {
    /// An initiator's SYNCHRONIZE CACHE.
    Flush,
    /// The activity log's sweep, with no command running.
    Sweep,
}

/// The primary's disk fails a sync as Linux does (the writes acknowledged
/// since its last sync are gone from its disk, and the next sync succeeds)
/// while the copy on node 2 is in sync: the primary hands the volume over,
/// and its copy, back in sync under the new primary, holds every
/// acknowledged write (the regions it lost them in stay in its activity
/// log however long the hand-over takes, though its syncs work again).
async fn a_primary_that_fails_a_sync_loses_nothing(how: FailedSync) {
    let (a, b, control, mut asked, old) = primary_and_copy().await;
    a.disk.lose_unsynced(true);
    let mut expect = vec![None; BLOCKS as usize];
    write_unsynced(&old, 0, 50, &mut expect).await;

    a.disk.fail(DiskFault::Eio);
    match how {
        FailedSync::Flush => match old.flush().await {
            Err(volume::VolumeError::Unavailable(_)) => {}
            other => panic!("the flush the primary's disk failed was answered {other:?}"),
        },
        FailedSync::Sweep => tokio::time::sleep(Duration::from_millis(2500)).await,
    }
    a.disk.heal();
    assert_eq!(hand_over_asked(&mut asked).await, (1, 2));
    let new = hand_over_to_node_2(old, &a, &b, &control).await;
    holds(&readable(&b).await, &expect, "the new primary");
    node_1_in_sync(&new, "node 1's copy is back in sync").await;
    write_all(&new, 50, 20, &mut expect).await;
    new.flush().await.unwrap();
    holds(&readable(&b).await, &expect, "the new primary");
    holds(&readable(&a).await, &expect, "the old primary's copy");
    new.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_whose_flush_fails_keeps_the_regions_it_may_have_lost() {
    a_primary_that_fails_a_sync_loses_nothing(FailedSync::Flush).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_whose_sweep_fails_to_sync_hands_the_volume_over() {
    a_primary_that_fails_a_sync_loses_nothing(FailedSync::Sweep).await;
}

/// The primary's disk fails a flush as Linux does (the writes acknowledged
/// since its last sync are gone from it) and the hand-over it asks for is
/// not committed (no leader, say): the role is not taken up again on that
/// copy while the copy on node 2 is in sync (it would serve without those
/// writes, and copy the regions it lost them in over node 2's), and node 2,
/// promoted instead, holds them all and brings node 1's copy back with
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_that_lost_writes_does_not_take_its_role_up_again() {
    let (a, b, control, mut asked, old) = primary_and_copy().await;
    a.disk.lose_unsynced(true);
    let mut expect = vec![None; BLOCKS as usize];
    write_unsynced(&old, 0, 50, &mut expect).await;
    a.disk.fail(DiskFault::Eio);
    assert!(old.flush().await.is_err());
    a.disk.heal();
    assert_eq!(hand_over_asked(&mut asked).await, (1, 2));
    // The hand-over is not committed: the node would take the role up
    // anew at the next epoch, node 2 still recorded in sync.
    old.stop();
    let spec = |node, addr: SocketAddr, in_sync| replica::PeerSpec {
        node,
        addr: addr.to_string(),
        in_sync,
    };
    let cfg = |epoch| replica::PrimaryConfig {
        node: 1,
        epoch,
        key: common::key(),
        timeout: Duration::from_secs(2),
    };
    let again = Primary::start(
        a.copy.clone(),
        cfg(2),
        vec![spec(2, b.addr, true)],
        control.clone(),
    )
    .await;
    match again {
        Err(volume::VolumeError::Io(e)) => assert!(e.to_string().contains("node 2"), "{e}"),
        Err(e) => panic!("refused as {e:?}"),
        Ok(p) => {
            // What it would do: serve, and resync its regions to node 2.
            tokio::time::sleep(Duration::from_secs(3)).await;
            holds(&readable(&a).await, &expect, "the role taken up again");
            holds(&readable(&b).await, &expect, "the copy in sync");
            p.stop();
            panic!("the role was taken up again on the copy that failed");
        }
    }
    // Node 2 is promoted instead, node 1's copy recorded out of sync.
    let new = common::role(b.copy.clone(), 2, 2, &[(a.addr, 1)], &[1], control.clone()).await;
    holds(&readable(&b).await, &expect, "the new primary");
    node_1_in_sync(&new, "node 1's copy is back in sync").await;
    new.flush().await.unwrap();
    holds(&readable(&a).await, &expect, "the old primary's copy");
    new.stop();
    // Once a primary was told of its regions, the copy may lead again.
    let back = common::role(a.copy.clone(), 1, 3, &[(b.addr, 2)], &[], control.clone()).await;
    holds(&readable(&a).await, &expect, "node 1 leading again");
    back.stop();
}

/// Two of a volume's three copies answer every request 3 s late, past the
/// link's 2 s timeout: a flush, and then a write, stall no longer than one
/// timeout and the records (the stated bound, plus a margin for
/// loopback), not one timeout per slow copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_slow_copies_stall_the_volume_no_longer_than_one() {
    let a = DiskNode::new().await;
    let b = DiskNode::new().await;
    let c = DiskNode::new().await;
    let control = Arc::new(Recorded::default());
    let peers = [(b.addr, 2), (c.addr, 3)];
    let p = common::role(a.copy.clone(), 1, 1, &peers, &[], control.clone()).await;
    let mut expect = vec![None; BLOCKS as usize];
    write_all(&p, 0, 20, &mut expect).await;
    let bound = Duration::from_secs(2) + Duration::from_millis(500);

    b.disk.slow(Duration::from_secs(3));
    c.disk.slow(Duration::from_secs(3));
    let t = Instant::now();
    p.flush().await.unwrap();
    let flush = t.elapsed();
    assert!(flush <= bound, "a flush stalled {flush:?}");
    let mut lost = control.lost.lock().unwrap().clone();
    lost.sort();
    assert_eq!(lost, vec![2, 3]);

    b.disk.heal();
    c.disk.heal();
    wait_for(
        || peer(&p, 2).in_sync() && peer(&p, 3).in_sync(),
        DISK_RETRY_MAX + Duration::from_secs(15),
        "both copies are back in sync once their disks are fast",
    )
    .await;
    b.disk.slow(Duration::from_secs(3));
    c.disk.slow(Duration::from_secs(3));
    let write = write_all(&p, 20, 1, &mut expect).await;
    assert!(write <= bound, "a write stalled {write:?}");
    b.disk.heal();
    c.disk.heal();
    p.stop();
}

/// A write of the old primary still running on a copy (its disk slow to
/// mark a region dirty) when that copy takes the volume up at the next
/// epoch, the old primary gone: it lands before the new role writes, not
/// over a block the new role acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_of_the_old_primary_running_on_the_new_one_lands_before_its_writes() {
    let a = DiskNode::new().await;
    let b = DiskNode::new().await;
    let control = Arc::new(Recorded::default());
    let old = common::role(a.copy.clone(), 1, 1, &[(b.addr, 2)], &[], control.clone()).await;
    // Block 255 is the last of the store's first dirty region (1 MiB),
    // marked by this write; the next region is not marked yet.
    old.write(255, block(255, 1), true).await.unwrap();
    b.disk.slow(Duration::from_millis(1500));
    let late = {
        let old = old.clone();
        let two = Bytes::from([block(255, 2), block(256, 2)].concat());
        tokio::spawn(async move { old.write(255, two, false).await })
    };
    // The write reaches node 2 and waits there for its disk to mark the
    // second region; node 1 goes away and node 2 is promoted at epoch 2,
    // node 1's copy out of sync.
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.disk.heal();
    old.stop();
    let new = common::role(b.copy.clone(), 2, 2, &[(a.addr, 1)], &[1], control.clone()).await;
    new.write(255, block(255, 4), true).await.unwrap();
    let _ = late.await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let at = b.copy.volume().read(255, 1).await.unwrap();
    assert!(
        at[..] == block(255, 4)[..],
        "the new primary's acknowledged write was overwritten by the old primary's"
    );
    new.stop();
}

/// The regions a copy whose disk failed a sync reports as suspect when it
/// comes back are durable in the primary's map of what it misses before
/// the copy may forget them (the primary's sweeps let its activity log
/// settle from then on): a primary that stops before its resync has
/// copied them back takes its role up again knowing them. Before, they
/// were kept in memory only until a sweep that found something to clear
/// in the primary's own log, and the copy, settled meanwhile, no longer
/// reported them: it was resynced without the writes its disk dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_regions_a_copy_reports_as_suspect_outlive_a_stop_of_the_primary() {
    let a = DiskNode::new().await;
    let b = DiskNode::new().await;
    b.disk.lose_unsynced(true);
    let control = Arc::new(Recorded::default());
    let old = common::role(a.copy.clone(), 1, 1, &[(b.addr, 2)], &[], control.clone()).await;
    let mut expect = vec![None; BLOCKS as usize];
    write_unsynced(&old, 0, 50, &mut expect).await;
    // Node 2's sync fails and drops those writes there; it is kept away
    // while the primary's activity log settles.
    b.disk.fail(DiskFault::Eio);
    old.flush().await.unwrap();
    assert!(!peer(&old, 2).in_sync(), "node 2 failed the flush");
    old.hold_away(2, true);
    wait_for(
        || a.copy.suspect_ranges().is_empty(),
        Duration::from_secs(10),
        "the primary's activity log settles",
    )
    .await;
    assert!(b.copy.disk_failed_since_hello());
    // Node 2 comes back and names the regions its disk may have lost
    // writes in; the primary stops right then.
    b.disk.heal();
    old.hold_away(2, false);
    wait_for(
        || !b.copy.disk_failed_since_hello(),
        Duration::from_secs(10),
        "node 2 hands its regions over",
    )
    .await;
    old.stop();
    drop(old);
    // Taken up again (node 2 out of reach for now): the regions are in
    // its map of node 2.
    let cfg = replica::PrimaryConfig {
        node: 1,
        epoch: 2,
        key: common::key(),
        timeout: Duration::from_secs(2),
    };
    let unreachable = replica::PeerSpec {
        node: 2,
        addr: "127.0.0.1:1".to_string(),
        in_sync: false,
    };
    let again = Primary::start(a.copy.clone(), cfg, vec![unreachable], control.clone())
        .await
        .unwrap();
    assert!(
        peer(&again, 2).dirty_bytes >= 4 << 20,
        "the regions node 2 named are forgotten: {:?}",
        peer(&again, 2)
    );
    again.stop();
}

/// A flush that a resync asks of the copy while it copies (one each
/// quarter of the dirty bytes) fails, and drops what the copy's disk took
/// since its last sync, as Linux does; the flush at the end of the resync
/// would succeed. The resync fails instead of recording the copy in sync
/// without those writes, and the next one completes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flush_that_fails_in_the_middle_of_a_resync_fails_it() {
    // 16 MiB: four chunks of 4 MiB, a flush after each.
    const MANY: u64 = 4096;
    let a = DiskNode::with_blocks(MANY).await;
    let b = DiskNode::with_faults_on_data(MANY).await;
    b.disk.lose_unsynced(true);
    let control = Arc::new(Recorded::default());
    let p = common::role(a.copy.clone(), 1, 1, &[(b.addr, 2)], &[], control.clone()).await;
    // The copy misses the whole volume: its disk fails the first write.
    b.disk.fail(DiskFault::Eio);
    let data: Vec<u8> = (0..MANY * BS as u64)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    for (i, piece) in data.chunks(1 << 20).enumerate() {
        let lba = i as u64 * (1 << 20) / BS as u64;
        p.write(lba, Bytes::copy_from_slice(piece), true)
            .await
            .unwrap();
    }
    wait_for(
        || peer(&p, 2).state == PeerState::OutOfSync,
        Duration::from_secs(10),
        "the copy is out of sync",
    )
    .await;
    // Its disk works again, but the first sync of its data once 6 MiB of
    // it are written, a flush in the middle of the resync (the one after
    // the second chunk), fails; the flush at the end (after 16 MiB) would
    // not.
    let (failed, tries) = (b.disk.failed(), control.syncing.lock().unwrap().len());
    b.disk.fail_a_sync_while((6 << 20)..(14 << 20));
    b.disk.heal();
    wait_for(
        || peer(&p, 2).in_sync(),
        DISK_RETRY_MAX + Duration::from_secs(20),
        "the copy is back in sync",
    )
    .await;
    assert_eq!(b.disk.failed(), failed + 1, "one sync failed");
    p.flush().await.unwrap();
    let got = b.copy.volume().read(0, MANY as u32).await.unwrap();
    assert!(got == data, "the copy holds every write");
    let resyncs = control.syncing.lock().unwrap().len() - tries;
    assert!(
        resyncs >= 2,
        "the resync that saw it fail did not complete: {resyncs}"
    );
    p.stop();
}
