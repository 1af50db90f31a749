//! Snapshots of a replicated volume: taken by the primary at one point of
//! the write order on every in-sync copy, caught up by a copy that was
//! away (from what it missed, or whole), and dropped where no primary
//! recorded them.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::key;

use async_trait::async_trait;
use bytes::Bytes;
use replica::wire::SnapshotMark;
use replica::{
    ClusterKey, ClusterVolume, Control, ControlError, CopySnapshots, LocalCopy, PeerState, Primary,
    ReplicaServer,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use uuid::Uuid;
use volume::{MemVolume, Volume, VolumeError};

const BS: u32 = 4096;
/// 4 MiB: 64 resync regions.
const BLOCKS: u64 = 1024;

/// The control plane: records every lost copy, and the snapshots the test
/// says were recorded.
#[derive(Default)]
struct Recording {
    lost: Mutex<Vec<u64>>,
    snapshots: Mutex<Vec<Uuid>>,
    /// The lease is lost: the primary may not acknowledge.
    lease_lost: std::sync::atomic::AtomicBool,
    /// No quorum: a lost copy cannot be recorded.
    no_quorum: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl Control for Recording {
    fn may_acknowledge(&self, _v: &str, _e: u64) -> bool {
        !self.lease_lost.load(Ordering::SeqCst)
    }
    async fn replica_lost(&self, _v: &str, node: u64, _e: u64) -> Result<(), ControlError> {
        if self.no_quorum.load(Ordering::SeqCst) {
            return Err(ControlError::Unavailable("no quorum".into()));
        }
        self.lost.lock().unwrap().push(node);
        Ok(())
    }
    async fn replica_in_sync(&self, _v: &str, _node: u64, _e: u64) -> Result<(), ControlError> {
        Ok(())
    }
    async fn replica_syncing(&self, _v: &str, _node: u64, _e: u64) {}
    fn recorded_snapshots(&self, _v: &str) -> Option<Vec<Uuid>> {
        Some(self.snapshots.lock().unwrap().clone())
    }
}

/// Snapshots of a memory volume: whole images, and every block a copy
/// was sent while catching one up counted.
struct MemSnapshots {
    volume: Arc<MemVolume>,
    images: Mutex<Vec<(SnapshotMark, Vec<u8>)>>,
    /// Whether a snapshot taken ends at once (as the store's sync of the
    /// copy, which the test can make last).
    done: tokio::sync::watch::Sender<bool>,
    /// A rollback stops half done (as the store's on a damaged block).
    break_rollback: std::sync::atomic::AtomicBool,
    /// How long a rollback takes, in milliseconds (the store rewrites
    /// every grain written since the snapshot).
    rollback_ms: AtomicU64,
}

impl MemSnapshots {
    /// Makes the snapshots taken from now on end only once let (`true`).
    fn let_takes_end(&self, end: bool) {
        self.done.send_replace(end);
    }
}

#[async_trait]
impl CopySnapshots for MemSnapshots {
    fn list(&self) -> Vec<SnapshotMark> {
        self.images
            .lock()
            .unwrap()
            .iter()
            .map(|(m, img)| SnapshotMark {
                size_bytes: img.len() as u64,
                ..m.clone()
            })
            .collect()
    }
    async fn take(&self, mark: &SnapshotMark) -> Result<(), VolumeError> {
        if self
            .images
            .lock()
            .unwrap()
            .iter()
            .any(|(m, _)| m.id == mark.id)
        {
            return Ok(());
        }
        let image = self.volume.read(0, self.volume.num_blocks() as u32).await?;
        let _ = self.done.subscribe().wait_for(|end| *end).await;
        self.images.lock().unwrap().push((mark.clone(), image));
        Ok(())
    }
    async fn delete(&self, id: Uuid) -> Result<(), VolumeError> {
        self.images.lock().unwrap().retain(|(m, _)| m.id != id);
        Ok(())
    }
    async fn rollback(&self, id: Uuid) -> Result<(), VolumeError> {
        let image = self
            .images
            .lock()
            .unwrap()
            .iter()
            .find(|(m, _)| m.id == id)
            .map(|(_, i)| i.clone())
            .ok_or_else(|| VolumeError::Io(std::io::Error::other("no such snapshot")))?;
        let takes = self.rollback_ms.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(takes)).await;
        if self.break_rollback.load(Ordering::SeqCst) {
            let half = Bytes::from(image).slice(..(BLOCKS / 2 * BS as u64) as usize);
            self.volume.write(0, half, true).await?;
            return Err(VolumeError::Io(std::io::Error::other(
                "the rollback stopped half done",
            )));
        }
        self.volume.write(0, Bytes::from(image), true).await
    }
    async fn read(&self, id: Uuid, lba: u64, blocks: u32) -> Result<Vec<u8>, VolumeError> {
        let images = self.images.lock().unwrap();
        let (_, img) = images
            .iter()
            .find(|(m, _)| m.id == id)
            .ok_or_else(|| VolumeError::Io(std::io::Error::other("no such snapshot")))?;
        let (from, to) = (
            (lba * BS as u64) as usize,
            ((lba + blocks as u64) * BS as u64) as usize,
        );
        Ok(img[from..to].to_vec())
    }
}

/// A memory volume that counts the bytes written to it, whose writes
/// wait while the test holds them back, and fail (EIO) while its disk is
/// broken.
struct Counted {
    inner: Arc<MemVolume>,
    written: AtomicU64,
    open: tokio::sync::watch::Sender<bool>,
    broken: std::sync::atomic::AtomicBool,
}

impl Counted {
    /// Holds writes back (`false`) or lets them through.
    fn let_writes(&self, through: bool) {
        self.open.send_replace(through);
    }
}

#[async_trait]
impl Volume for Counted {
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }
    fn num_blocks(&self) -> u64 {
        self.inner.num_blocks()
    }
    async fn read(&self, lba: u64, blocks: u32) -> volume::Result<Vec<u8>> {
        self.inner.read(lba, blocks).await
    }
    async fn write(&self, lba: u64, data: Bytes, fua: bool) -> volume::Result<()> {
        let _ = self.open.subscribe().wait_for(|open| *open).await;
        if self.broken.load(Ordering::SeqCst) {
            return Err(VolumeError::Io(std::io::Error::from_raw_os_error(5)));
        }
        self.written.fetch_add(data.len() as u64, Ordering::Relaxed);
        self.inner.write(lba, data, fua).await
    }
    async fn flush(&self) -> volume::Result<()> {
        self.inner.flush().await
    }
    async fn unmap(&self, lba: u64, blocks: u64) -> volume::Result<()> {
        self.inner.unmap(lba, blocks).await
    }
    fn provisioning(&self) -> volume::Provisioning {
        self.inner.provisioning()
    }
    fn write_cache(&self) -> bool {
        self.inner.write_cache()
    }
    async fn block_status(&self, lba: u64) -> volume::Result<(volume::BlockState, u64)> {
        self.inner.block_status(lba).await
    }
    async fn compare_and_write(
        &self,
        lba: u64,
        compare: Bytes,
        write: Bytes,
        fua: bool,
    ) -> volume::Result<()> {
        self.inner.compare_and_write(lba, compare, write, fua).await
    }
    async fn resize(&self, blocks: u64) -> volume::Result<()> {
        self.inner.resize(blocks).await
    }
}

struct TestNode {
    _dir: tempfile::TempDir,
    copy: Arc<LocalCopy>,
    volume: Arc<Counted>,
    snaps: Arc<MemSnapshots>,
    server: Arc<ReplicaServer>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TestNode {
    async fn new(key: &ClusterKey) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let mem = Arc::new(MemVolume::new(BS, BLOCKS));
        let volume = Arc::new(Counted {
            inner: mem.clone(),
            written: AtomicU64::new(0),
            open: tokio::sync::watch::channel(true).0,
            broken: Default::default(),
        });
        let copy = LocalCopy::open("vol", volume.clone(), &dir.path().join("vol")).unwrap();
        let snaps = Arc::new(MemSnapshots {
            volume: mem,
            images: Mutex::default(),
            done: tokio::sync::watch::channel(true).0,
            break_rollback: Default::default(),
            rollback_ms: AtomicU64::new(0),
        });
        copy.set_snapshots(snaps.clone());
        let server = ReplicaServer::new(key.clone());
        server.add(ClusterVolume::over_copy(copy.clone()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(server.clone().serve(listener));
        TestNode {
            _dir: dir,
            copy,
            volume,
            snaps,
            server,
            addr,
            task,
        }
    }

    fn kill(&mut self) {
        self.task.abort();
        self.server.drop_connections();
    }

    async fn restart(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.task = tokio::spawn(self.server.clone().serve(listener));
    }

    fn image(&self, id: Uuid) -> Option<Vec<u8>> {
        self.snaps
            .images
            .lock()
            .unwrap()
            .iter()
            .find(|(m, _)| m.id == id)
            .map(|(_, i)| i.clone())
    }

    fn ids(&self) -> Vec<Uuid> {
        self.snaps.list().into_iter().map(|m| m.id).collect()
    }

    async fn head(&self) -> Vec<u8> {
        self.volume.read(0, BLOCKS as u32).await.unwrap()
    }
}

async fn role(
    on: &TestNode,
    me: u64,
    epoch: u64,
    peers: &[(&TestNode, u64)],
    away: &[u64],
    control: Arc<Recording>,
) -> Arc<Primary> {
    let peers: Vec<(SocketAddr, u64)> = peers.iter().map(|(n, id)| (n.addr, *id)).collect();
    common::role(on.copy.clone(), me, epoch, &peers, away, control).await
}

/// Two copies, A leading at epoch 1 with B in sync.
async fn two_copies() -> (TestNode, TestNode, Arc<Recording>, Arc<Primary>) {
    let k = key();
    let a = TestNode::new(&k).await;
    let b = TestNode::new(&k).await;
    let control = Arc::new(Recording::default());
    let p = role(&a, 1, 1, &[(&b, 2)], &[], control.clone()).await;
    (a, b, control, p)
}

/// Starts taking snapshot `s` and returns once `on` (whose takes are
/// held) is taking it.
async fn take_held(
    p: &Arc<Primary>,
    on: &TestNode,
    s: &SnapshotMark,
) -> JoinHandle<Result<(), VolumeError>> {
    let taking = {
        let (p, s) = (p.clone(), s.clone());
        tokio::spawn(async move { Primary::take_snapshots(&[(&p, s)]).await })
    };
    let t = Instant::now();
    while on.snaps.done.receiver_count() == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the copy takes the snapshot"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    taking
}

async fn in_sync(p: &Primary, node: u64) {
    let t = Instant::now();
    while !p
        .peer_status()
        .iter()
        .any(|s| s.node == node && s.in_sync() && s.dirty_bytes == 0)
    {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "node {node} gets in sync: {:?}",
            p.peer_status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn mark(name: &str) -> SnapshotMark {
    SnapshotMark {
        id: Uuid::new_v4(),
        name: name.to_string(),
        created: 0,
        group: None,
        size_bytes: 0,
    }
}

/// Block `lba` filled with one 8-byte number.
fn block(v: u64) -> Bytes {
    Bytes::from(v.to_be_bytes().repeat(BS as usize / 8))
}

fn value_at(image: &[u8], lba: u64) -> u64 {
    let at = (lba * BS as u64) as usize;
    u64::from_be_bytes(image[at..at + 8].try_into().unwrap())
}

async fn take(p: &Primary, control: &Recording, m: &SnapshotMark) {
    Primary::take_snapshots(&[(p, m.clone())]).await.unwrap();
    control.snapshots.lock().unwrap().push(m.id);
}

/// Every 64th block written (block `lba + 1`), snapshot "s" taken and
/// recorded, then those blocks written again (`9000 + lba`, FUA): what a
/// rollback to "s" undoes.
async fn snapshot_then_overwrite(p: &Primary, control: &Recording) -> SnapshotMark {
    for lba in (0..BLOCKS).step_by(64) {
        p.write(lba, block(lba + 1), false).await.unwrap();
    }
    let s = mark("s");
    take(p, control, &s).await;
    for lba in (0..BLOCKS).step_by(64) {
        p.write(lba, block(9000 + lba), true).await.unwrap();
    }
    s
}

/// Block 0 written 1, snapshot "s" taken and recorded, block 0 written 2.
async fn snapshot_between_writes(p: &Primary, control: &Recording) -> SnapshotMark {
    p.write(0, block(1), true).await.unwrap();
    let s = mark("s");
    take(p, control, &s).await;
    p.write(0, block(2), true).await.unwrap();
    s
}

/// After a write, node 2 (B) gets in sync, and then holds what A holds.
async fn b_counts_in_sync_with_a_s_data(p: &Primary, a: &TestNode, b: &TestNode) {
    p.write(3, block(3), true).await.unwrap();
    in_sync(p, 2).await;
    assert!(
        a.head().await == b.head().await,
        "the copies differ while B counts as in sync"
    );
}

/// Writers keep writing rising numbers while snapshots are taken: each
/// snapshot is the same on both copies, holds every write acknowledged
/// before it was asked for and none asked for after it was taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_one_point_of_the_writes_on_every_copy() {
    let (a, b, control, p) = two_copies().await;
    // Per block, the highest number acknowledged and the highest started.
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..16).map(|_| AtomicU64::new(0)).collect());
    let started: Arc<Vec<AtomicU64>> = Arc::new((0..16).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..16u64 {
        let (p, acked, started, stop) = (p.clone(), acked.clone(), started.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut v = 0;
            while !stop.load(Ordering::Relaxed) {
                v += 1;
                started[w as usize].store(v, Ordering::SeqCst);
                p.write(w * 64, block(v), v % 3 == 0).await.unwrap();
                acked[w as usize].store(v, Ordering::SeqCst);
            }
        }));
    }
    for round in 0..5 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let before: Vec<u64> = acked.iter().map(|a| a.load(Ordering::SeqCst)).collect();
        let m = mark(&format!("s{round}"));
        take(&p, &control, &m).await;
        let after: Vec<u64> = started.iter().map(|s| s.load(Ordering::SeqCst)).collect();
        let (on_a, on_b) = (a.image(m.id).unwrap(), b.image(m.id).unwrap());
        assert!(on_a == on_b, "snapshot {round} differs between the copies");
        for w in 0..16u64 {
            let v = value_at(&on_a, w * 64);
            assert!(
                v >= before[w as usize] && v <= after[w as usize],
                "snapshot {round}, block {}: {v} outside [{}, {}]",
                w * 64,
                before[w as usize],
                after[w as usize]
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert!(control.lost.lock().unwrap().is_empty());
    p.stop();
}

/// A copy away while two snapshots are taken gets both when it returns,
/// identical to the primary's, copying only what it missed of each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_away_catches_up_on_the_snapshots_it_missed() {
    let (a, mut b, control, p) = two_copies().await;
    for lba in (0..BLOCKS).step_by(16) {
        p.write(lba, block(lba + 1), false).await.unwrap();
    }
    let s0 = mark("s0");
    take(&p, &control, &s0).await;
    // The primary's sweeps settle B's activity log: B no longer counts
    // those regions as written without knowing whether they are durable.
    common::settled(&b.copy, "B").await;
    b.kill();
    p.write(3, block(1000), true).await.unwrap();
    assert!(control.lost.lock().unwrap().contains(&2));
    let s1 = mark("s1");
    take(&p, &control, &s1).await;
    p.write(704, block(2000), true).await.unwrap();
    let s2 = mark("s2");
    take(&p, &control, &s2).await;
    p.write(3, block(3000), true).await.unwrap();
    assert_eq!(b.ids(), vec![s0.id]);

    let written_before = b.volume.written.load(Ordering::Relaxed);
    b.restart().await;
    in_sync(&p, 2).await;
    assert_eq!(b.ids(), vec![s0.id, s1.id, s2.id]);
    for s in [&s0, &s1, &s2] {
        assert!(
            a.image(s.id) == b.image(s.id),
            "snapshot {} differs after the catch-up",
            s.name
        );
    }
    assert_eq!(value_at(&b.image(s1.id).unwrap(), 3), 1000);
    assert_eq!(value_at(&b.image(s1.id).unwrap(), 704), 705);
    assert_eq!(value_at(&b.image(s2.id).unwrap(), 704), 2000);
    assert!(a.head().await == b.head().await, "the copies differ");
    // Two regions missed, each copied for two snapshots and the head: far
    // less than the volume.
    let sent = b.volume.written.load(Ordering::Relaxed) - written_before;
    assert!(
        sent <= 6 * 64 * 1024,
        "the catch-up wrote {sent} bytes: more than the regions missed"
    );
    p.stop();
}

/// A copy whose disk fails while it catches up on a snapshot it missed
/// is detached as for a failed write (its status says why, and it is
/// tried again after a growing wait, not once a second), and catches up
/// once its disk works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_whose_disk_fails_during_a_catch_up_is_detached() {
    let (a, mut b, control, p) = two_copies().await;
    for lba in (0..BLOCKS).step_by(16) {
        p.write(lba, block(lba + 1), false).await.unwrap();
    }
    b.kill();
    p.write(3, block(1000), true).await.unwrap();
    let s1 = mark("s1");
    take(&p, &control, &s1).await;
    b.volume.broken.store(true, Ordering::SeqCst);
    b.restart().await;
    let t = Instant::now();
    while p
        .peer_status()
        .iter()
        .any(|s| s.node == 2 && s.detached.is_none())
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the copy whose disk fails during the catch-up is detached: {:?}",
            p.peer_status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let why = p.peer_status()[0].detached.clone().unwrap();
    assert!(why.starts_with("disk failed"), "{why}");
    b.volume.broken.store(false, Ordering::SeqCst);
    in_sync(&p, 2).await;
    assert_eq!(b.ids(), vec![s1.id]);
    assert!(a.image(s1.id) == b.image(s1.id), "the snapshot differs");
    assert!(a.head().await == b.head().await, "the copies differ");
    p.stop();
}

/// A new primary (three copies; the one that took the snapshots without
/// the third is gone) has no map of what the third copy missed: it copies
/// the images whole, and the snapshot is the same on every copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_primary_catches_a_copy_up_whole() {
    let k = key();
    let a = TestNode::new(&k).await;
    let b = TestNode::new(&k).await;
    let mut c = TestNode::new(&k).await;
    let control = Arc::new(Recording::default());
    let on_a = role(&a, 1, 1, &[(&b, 2), (&c, 3)], &[], control.clone()).await;
    on_a.write(10, block(1), true).await.unwrap();
    c.kill();
    on_a.write(20, block(2), true).await.unwrap();
    let s = mark("s");
    take(&on_a, &control, &s).await;
    on_a.write(20, block(3), true).await.unwrap();
    on_a.stop();

    c.restart().await;
    let on_b = role(&b, 2, 2, &[(&a, 1), (&c, 3)], &[3], control.clone()).await;
    in_sync(&on_b, 3).await;
    assert!(c.image(s.id).is_some(), "C never got the snapshot");
    assert!(a.image(s.id) == c.image(s.id) && b.image(s.id) == c.image(s.id));
    assert_eq!(value_at(&c.image(s.id).unwrap(), 20), 2);
    assert!(b.head().await == c.head().await);
    on_b.stop();
}

/// A snapshot no primary recorded (its primary ended before it could) is
/// dropped: by the next primary on its own copy as it starts, and by every
/// copy that holds it when it connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_never_recorded_is_dropped_everywhere() {
    let k = key();
    let a = TestNode::new(&k).await;
    let b = TestNode::new(&k).await;
    let control = Arc::new(Recording::default());
    let kept = mark("kept");
    let on_a = role(&a, 1, 1, &[(&b, 2)], &[], control.clone()).await;
    take(&on_a, &control, &kept).await;
    // Taken on both copies, never recorded.
    let lost = mark("lost");
    Primary::take_snapshots(&[(&on_a, lost.clone())])
        .await
        .unwrap();
    assert_eq!(b.ids(), vec![kept.id, lost.id]);
    on_a.stop();

    let on_a = role(&a, 1, 2, &[(&b, 2)], &[], control.clone()).await;
    assert_eq!(
        a.ids(),
        vec![kept.id],
        "the primary kept an unrecorded snapshot"
    );
    let t = Instant::now();
    while b.ids() != vec![kept.id] {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the copy keeps an unrecorded snapshot: {:?}",
            b.ids()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(on_a
        .peer_status()
        .iter()
        .all(|s| s.state == PeerState::InSync));
    on_a.stop();
}

/// A rollback under writes: every copy in sync holds the snapshot's image
/// after it, writes acknowledged after it land on that image, and a copy
/// away at the time (which holds the writes the rollback undoes) is copied
/// whole when it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_reaches_every_copy_and_a_copy_away_is_copied_whole() {
    let k = key();
    let a = TestNode::new(&k).await;
    let b = TestNode::new(&k).await;
    let mut c = TestNode::new(&k).await;
    let control = Arc::new(Recording::default());
    let p = role(&a, 1, 1, &[(&b, 2), (&c, 3)], &[], control.clone()).await;
    for lba in (0..BLOCKS).step_by(64) {
        p.write(lba, block(lba + 1), false).await.unwrap();
    }
    let s = mark("s");
    take(&p, &control, &s).await;
    // Written on every copy, C's too: only the rollback makes them differ.
    for lba in (0..BLOCKS).step_by(32) {
        p.write(lba, block(9000 + lba), true).await.unwrap();
    }
    common::settled(&c.copy, "C").await;
    c.kill();
    p.write(900, block(900), true).await.unwrap();
    let writer = {
        let p = p.clone();
        tokio::spawn(async move {
            // Writes racing the rollback either land before it (and are
            // rolled back) or fail as a transition and are sent again
            // after it: none is lost in between.
            let mut done = 0;
            while done < 200 {
                match p.write(5, block(50_000 + done), true).await {
                    Ok(()) => done += 1,
                    Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            }
        })
    };
    p.rollback(s.id, Duration::from_secs(5)).await.unwrap();
    writer.await.unwrap();
    p.write(7, block(77), true).await.unwrap();
    let (ha, hb) = (a.head().await, b.head().await);
    assert!(ha == hb, "the copies differ after the rollback");
    let image = a.image(s.id).unwrap();
    for lba in (0..BLOCKS).step_by(32) {
        if lba == 0 {
            continue;
        }
        assert_eq!(value_at(&ha, lba), value_at(&image, lba), "block {lba}");
    }
    assert_eq!(value_at(&ha, 7), 77);
    c.restart().await;
    in_sync(&p, 3).await;
    assert!(
        c.head().await == ha,
        "the copy away at the rollback differs"
    );
    p.stop();
}

/// A rollback that a copy misses while the control plane cannot record
/// that copy out of sync fails, and the copy stays in sync for the
/// control plane: it is still sent every region when it returns (the
/// rollback changed them all on the primary's copy), not recorded in sync
/// with the writes the rollback undid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_missing_a_rollback_that_cannot_be_recorded_is_still_copied_whole() {
    let (a, mut b, control, p) = two_copies().await;
    let s = snapshot_then_overwrite(&p, &control).await;
    common::settled(&b.copy, "B").await;
    control.no_quorum.store(true, Ordering::SeqCst);
    b.kill();
    assert!(
        p.rollback(s.id, Duration::from_secs(5)).await.is_err(),
        "a rollback whose missed copy is not recorded succeeds"
    );
    assert_eq!(value_at(&a.head().await, 64), 65, "A is rolled back");
    control.no_quorum.store(false, Ordering::SeqCst);
    b.restart().await;
    in_sync(&p, 2).await;
    b_counts_in_sync_with_a_s_data(&p, &a, &b).await;
    p.stop();
}

/// A rollback that stops half done on the primary's copy fails, and the
/// copies in sync (which it did not reach) are sent every region: the
/// primary's copy changed under them, and they do not count in sync
/// holding other data than the copy reads come from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_failed_on_the_primary_leaves_no_copy_in_sync_with_other_data() {
    let (a, b, control, p) = two_copies().await;
    let s = snapshot_then_overwrite(&p, &control).await;
    a.snaps.break_rollback.store(true, Ordering::SeqCst);
    assert!(
        p.rollback(s.id, Duration::from_secs(5)).await.is_err(),
        "a rollback stopped half done succeeds"
    );
    let ha = a.head().await;
    assert_eq!(value_at(&ha, 64), 65, "A's first half is rolled back");
    assert_eq!(value_at(&ha, 960), 9960, "A's second half is not");
    b_counts_in_sync_with_a_s_data(&p, &a, &b).await;
    p.stop();
}

/// A rollback asked while a snapshot is being taken waits for it, and a
/// snapshot asked after the rollback is not let in to wait for the
/// rollback's turn: it would count as a command in flight, which the
/// rollback waits for until it gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_asked_during_a_rollback_does_not_hold_it_up() {
    let (a, b, control, p) = two_copies().await;
    let s = snapshot_between_writes(&p, &control).await;
    a.snaps.let_takes_end(false);
    let first = {
        let (p, m) = (p.clone(), mark("first"));
        tokio::spawn(async move { Primary::take_snapshots(&[(&p, m)]).await })
    };
    let t = Instant::now();
    while a.snaps.done.receiver_count() == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "A takes the first snapshot"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rollback = {
        let p = p.clone();
        tokio::spawn(async move { p.rollback(s.id, Duration::from_secs(2)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = {
        let (p, m) = (p.clone(), mark("second"));
        tokio::spawn(async move { Primary::take_snapshots(&[(&p, m)]).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.snaps.let_takes_end(true);
    first.await.unwrap().unwrap();
    rollback
        .await
        .unwrap()
        .expect("the rollback goes through once the first snapshot is taken");
    let _ = second.await.unwrap();
    assert_eq!(value_at(&a.head().await, 0), 1, "A is rolled back");
    p.write(0, block(3), true).await.unwrap();
    assert_eq!(value_at(&b.head().await, 0), 3);
    p.stop();
}

/// A rollback that takes each copy longer than the link's timeout (2 s
/// here) to make: the copy in sync that makes it as the primary did
/// stays in sync, not recorded out of sync and copied whole for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_slower_than_the_link_timeout_keeps_the_copies_in_sync() {
    let (a, b, control, p) = two_copies().await;
    let s = snapshot_between_writes(&p, &control).await;
    a.snaps.rollback_ms.store(2_000, Ordering::SeqCst);
    b.snaps.rollback_ms.store(2_500, Ordering::SeqCst);
    p.rollback(s.id, Duration::from_secs(5)).await.unwrap();
    assert!(
        control.lost.lock().unwrap().is_empty(),
        "a copy that made the rollback is recorded out of sync"
    );
    p.write(3, block(3), true).await.unwrap();
    assert!(
        p.peer_status()
            .iter()
            .all(|s| s.in_sync() && s.dirty_bytes == 0),
        "B is not in sync: {:?}",
        p.peer_status()
    );
    assert_eq!(value_at(&b.head().await, 0), 1, "B is rolled back");
    assert!(a.head().await == b.head().await, "the copies differ");
    p.stop();
}

/// A snapshot that takes each copy longer than the link's timeout (2 s
/// here), the store's sync of the copy being slow: the copy in sync that
/// takes it as the primary's did stays in sync and holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_slower_than_the_link_timeout_keeps_the_copies_in_sync() {
    let (a, b, control, p) = two_copies().await;
    p.write(0, block(1), true).await.unwrap();
    a.snaps.let_takes_end(false);
    b.snaps.let_takes_end(false);
    let s = mark("s");
    let taking = {
        let (p, s) = (p.clone(), s.clone());
        tokio::spawn(async move { Primary::take_snapshots(&[(&p, s)]).await })
    };
    for (n, node) in [(&a, "A"), (&b, "B")] {
        let t = Instant::now();
        while n.snaps.done.receiver_count() == 0 {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{node} takes the snapshot"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        n.snaps.let_takes_end(true);
    }
    taking.await.unwrap().unwrap();
    control.snapshots.lock().unwrap().push(s.id);
    assert!(
        control.lost.lock().unwrap().is_empty(),
        "a copy that took the snapshot is recorded out of sync"
    );
    assert!(b.ids().contains(&s.id), "B misses the snapshot");
    p.write(0, block(2), true).await.unwrap();
    assert!(
        p.peer_status()
            .iter()
            .all(|s| s.in_sync() && s.dirty_bytes == 0),
        "B is not in sync: {:?}",
        p.peer_status()
    );
    p.stop();
}

/// A consistency group of two volumes led by one primary: a writer
/// alternates between them, and every snapshot of the group holds a
/// prefix of its writes (write n on one volume never without write n - 1
/// on the other), the same on both copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_snapshot_holds_a_prefix_of_the_writes_to_its_volumes() {
    let k = key();
    let (a1, b1) = (TestNode::new(&k).await, TestNode::new(&k).await);
    let (a2, b2) = (TestNode::new(&k).await, TestNode::new(&k).await);
    let control = Arc::new(Recording::default());
    let p1 = role(&a1, 1, 1, &[(&b1, 2)], &[], control.clone()).await;
    let p2 = role(&a2, 1, 1, &[(&b2, 2)], &[], control.clone()).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (p1, p2, stop) = (p1.clone(), p2.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let p = if n.is_multiple_of(2) { &p2 } else { &p1 };
                p.write(n % 8, block(n), n.is_multiple_of(4)).await.unwrap();
            }
            n
        })
    };
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        let (m1, m2) = (mark(&format!("g{round}")), mark(&format!("g{round}")));
        Primary::take_snapshots(&[(&p1, m1.clone()), (&p2, m2.clone())])
            .await
            .unwrap();
        let (i1, i2) = (a1.image(m1.id).unwrap(), a2.image(m2.id).unwrap());
        assert!(Some(&i1) == b1.image(m1.id).as_ref() && Some(&i2) == b2.image(m2.id).as_ref());
        // The newest write each volume holds: odd numbers on the first,
        // even ones on the second; they must be neighbours.
        let newest = |img: &[u8]| (0..8).map(|l| value_at(img, l)).max().unwrap();
        let (n1, n2) = (newest(&i1), newest(&i2));
        assert!(
            n1.abs_diff(n2) <= 1,
            "group snapshot {round}: the volumes hold writes {n1} and {n2}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    assert!(writer.await.unwrap() > 8);
    p1.stop();
    p2.stop();
}

/// A copy resyncing when a snapshot is taken misses it, and the resync
/// goes on copying chunks to it (writes after the snapshot among them)
/// until it looks at the copy's state again. The catch-up then writes the
/// snapshot's image over those regions: the resync after it copies them
/// again, so no acknowledged write is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_caught_up_gets_the_writes_its_resync_sent_after_the_snapshot() {
    let (a, mut b, control, p) = two_copies().await;
    b.kill();
    // Every other region: one chunk each, one more than a resync sends
    // at once.
    let regions: Vec<u64> = (0..18).step_by(2).collect();
    for r in &regions {
        p.write(r * 16, block(r + 1), true).await.unwrap();
    }
    assert!(control.lost.lock().unwrap().contains(&2));
    // B takes the resync's first chunks and holds them: the resync waits
    // for their answers with its next chunk decided.
    b.volume.let_writes(false);
    b.restart().await;
    let t = Instant::now();
    while !p
        .peer_status()
        .iter()
        .any(|s| s.node == 2 && s.connected && s.resync_data_bytes > 0)
    {
        assert!(t.elapsed() < Duration::from_secs(10), "B's resync starts");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = mark("s");
    take(&p, &control, &s).await;
    // After the snapshot, into the region the resync sends last.
    for r in &regions[8..] {
        p.write(r * 16, block(1000 + r), true).await.unwrap();
    }
    b.volume.let_writes(true);
    in_sync(&p, 2).await;
    assert!(a.image(s.id) == b.image(s.id), "the snapshot differs");
    let (on_a, on_b) = (a.head().await, b.head().await);
    for r in &regions {
        assert_eq!(
            value_at(&on_b, r * 16),
            value_at(&on_a, r * 16),
            "block {} differs between the copies",
            r * 16
        );
    }
    p.stop();
}

/// A resize asked while a snapshot is being taken waits for it like a
/// write: every copy's snapshot has the volume's size at that point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resize_waits_for_the_snapshot_being_taken() {
    let (a, b, control, p) = two_copies().await;
    p.write(0, block(1), true).await.unwrap();
    // The snapshot is taken on A, which holds it there a while.
    a.snaps.let_takes_end(false);
    let s = mark("s");
    let taking = take_held(&p, &a, &s).await;
    let resizing = {
        let p = p.clone();
        tokio::spawn(async move { p.resize(2 * BLOCKS).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.snaps.let_takes_end(true);
    taking.await.unwrap().unwrap();
    resizing.await.unwrap().unwrap();
    control.snapshots.lock().unwrap().push(s.id);
    let (on_a, on_b) = (a.image(s.id).unwrap(), b.image(s.id).unwrap());
    assert_eq!(
        (on_a.len() as u64, on_b.len() as u64),
        (BLOCKS * BS as u64, BLOCKS * BS as u64),
        "the copies' snapshots have the volume's size when it was taken"
    );
    assert_eq!(b.volume.inner.num_blocks(), 2 * BLOCKS);
    assert!(control.lost.lock().unwrap().is_empty());
    p.stop();
}

/// A snapshot that fails because the primary lost its right to
/// acknowledge while it was taken is deleted again from every copy: no
/// record will ever list it, and the role may go on a long time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_failed_at_the_end_is_deleted_again() {
    let (a, b, control, p) = two_copies().await;
    p.write(0, block(1), true).await.unwrap();
    a.snaps.let_takes_end(false);
    let s = mark("s");
    let taking = take_held(&p, &a, &s).await;
    control.lease_lost.store(true, Ordering::SeqCst);
    a.snaps.let_takes_end(true);
    assert!(
        taking.await.unwrap().is_err(),
        "a snapshot taken while the lease ran out"
    );
    control.lease_lost.store(false, Ordering::SeqCst);
    assert!(!a.ids().contains(&s.id), "A keeps the failed snapshot");
    assert!(!b.ids().contains(&s.id), "B keeps the failed snapshot");
    p.write(0, block(2), true).await.unwrap();
    p.stop();
}

/// A snapshot deleted while a copy that missed it is being caught up on
/// it is deleted from that copy too: the copy does not take it after the
/// delete went out to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_deleted_during_its_catch_up_is_gone_from_the_copy() {
    let (a, mut b, control, p) = two_copies().await;
    b.kill();
    p.write(0, block(1), true).await.unwrap();
    let s = mark("s");
    take(&p, &control, &s).await;
    // B is caught up on the snapshot and takes it: slowly.
    b.snaps.let_takes_end(false);
    b.restart().await;
    let t = Instant::now();
    while b.snaps.done.receiver_count() == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "B takes the snapshot"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    control.snapshots.lock().unwrap().retain(|id| *id != s.id);
    let deleting = {
        let p = p.clone();
        tokio::spawn(async move { p.delete_snapshot(s.id).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.snaps.let_takes_end(true);
    deleting.await.unwrap().unwrap();
    in_sync(&p, 2).await;
    assert!(a.ids().is_empty());
    assert!(b.ids().is_empty(), "B keeps a deleted snapshot");
    assert!(a.head().await == b.head().await);
    p.stop();
}

/// The maps kept of what a copy missed of a snapshot go with the
/// snapshot when a primary role starting drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_snapshot_leaves_no_kept_map() {
    let k = key();
    let a = TestNode::new(&k).await;
    let mut b = TestNode::new(&k).await;
    let control = Arc::new(Recording::default());
    let kept_maps = || {
        std::fs::read_dir(a._dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".snap-") && n.ends_with(".dirty"))
            .collect::<Vec<_>>()
    };
    let p = role(&a, 1, 1, &[(&b, 2)], &[], control.clone()).await;
    b.kill();
    p.write(0, block(1), true).await.unwrap();
    // Taken without B, never recorded.
    let s = mark("s");
    Primary::take_snapshots(&[(&p, s.clone())]).await.unwrap();
    assert_eq!(kept_maps().len(), 1, "what B misses of it is kept");
    p.stop();

    let p = role(&a, 1, 2, &[(&b, 2)], &[2], control.clone()).await;
    assert!(a.ids().is_empty());
    assert_eq!(kept_maps(), Vec::<String>::new());
    b.restart().await;
    in_sync(&p, 2).await;
    assert!(b.ids().is_empty());
    assert!(a.head().await == b.head().await);
    p.stop();
}

/// A volume grown while a copy is away (each node grows its copy as the
/// control plane records the new size): the writes into the new blocks
/// are in what the copy misses, and it gets them after the snapshot's
/// catch-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_away_gets_the_writes_into_blocks_grown_since() {
    let (a, mut b, control, p) = two_copies().await;
    b.kill();
    p.write(0, block(1), true).await.unwrap();
    let s = mark("s");
    take(&p, &control, &s).await;
    a.copy.grow(2 * BLOCKS).await.unwrap();
    p.write(BLOCKS + 5, block(2), true).await.unwrap();
    b.copy.grow(2 * BLOCKS).await.unwrap();
    b.restart().await;
    in_sync(&p, 2).await;
    assert!(b.image(s.id).is_some(), "B never got the snapshot");
    let (on_a, on_b) = (
        a.volume.read(0, 2 * BLOCKS as u32).await.unwrap(),
        b.volume.read(0, 2 * BLOCKS as u32).await.unwrap(),
    );
    assert_eq!(value_at(&on_b, BLOCKS + 5), 2, "B misses the write");
    assert!(on_a == on_b, "the copies differ");
    p.stop();
}
