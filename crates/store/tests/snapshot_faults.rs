//! Snapshots and clones under faults and edge cases a random stream seldom
//! makes: blocks whose crc32c is 0, a rollback that fails half done, a
//! first snapshot that fails, a clone's block status and reads racing its
//! writes, a snapshot after a failed write, long and reused names.
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use store::{LocalVolume, Shelf, SimDisk, SimShelf, VolumeFiles, GRAIN};
use uuid::Uuid;
use volume::{BlockState, Volume};

const BS: u32 = 512;
const BLOCKS: u64 = 8 * GRAIN / BS as u64;
const REGION: u64 = 64 * 1024;
const PER_GRAIN: u64 = GRAIN / BS as u64;

type Disk = Arc<SimDisk>;
type Vol = LocalVolume<Disk>;

struct Disks {
    data: Disk,
    sums: Disk,
    dirty: Disk,
    held: Disk,
    shelf: Arc<SimShelf>,
}

impl Disks {
    fn new() -> Disks {
        Disks {
            data: Arc::new(SimDisk::new(BLOCKS * BS as u64)),
            sums: Arc::new(SimDisk::new(0)),
            dirty: Arc::new(SimDisk::new(0)),
            held: Arc::new(SimDisk::new(0)),
            shelf: Arc::new(SimShelf::new()),
        }
    }

    fn files(&self) -> VolumeFiles<Disk> {
        VolumeFiles {
            data: self.data.clone(),
            sums: self.sums.clone(),
            dirty: self.dirty.clone(),
        }
    }

    fn open_with(
        &self,
        shelf: Box<dyn Shelf<Disk>>,
        origin: Option<(&Vol, Uuid)>,
    ) -> volume::Result<Vol> {
        let origin = origin.map(|(v, s)| (v, s, self.held.clone()));
        LocalVolume::with_shelf(self.files(), BS, BLOCKS, REGION, shelf, origin)
    }

    fn open(&self, origin: Option<(&Vol, Uuid)>) -> volume::Result<Vol> {
        self.open_with(Box::new(self.shelf.clone()), origin)
    }
}

/// Compares without printing whole buffers.
fn same(got: &[u8], want: &[u8], what: &str) {
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: byte {i} (block {}) is {:#x}, expected {:#x}",
            i / BS as usize,
            got[i],
            want[i]
        );
    }
    assert_eq!(got.len(), want.len(), "{what}: length");
}

fn fill(v: u8, n: u64) -> Bytes {
    Bytes::from(vec![v; (n * BS as u64) as usize])
}

/// A 512-byte block of non-zero data whose crc32c is 0 (the last four
/// bytes are chosen so; crc32c is linear, anyone can make such a block).
fn crc_zero_block() -> Vec<u8> {
    let mut b = vec![0xabu8; BS as usize];
    b[BS as usize - 4..].copy_from_slice(&[0xf5, 0xea, 0x60, 0x16]);
    assert_eq!(crc32c::crc32c(&b), 0);
    b
}

/// A written block whose crc32c is 0 has the sidecar entry 0, as an
/// unwritten one: copy-out must tell them apart by the data and keep it.
#[tokio::test]
async fn a_snapshot_keeps_a_block_whose_crc_is_zero() {
    let d = Disks::new();
    let v = d.open(None).unwrap();
    let block = crc_zero_block();
    v.write(0, Bytes::from(block.clone()), true).await.unwrap();
    same(&v.read(0, 1).await.unwrap(), &block, "the head holds it");
    let s = v.take_snapshot("s", false).await.unwrap();
    // Overwrite: grain 0 is copied out into the snapshot first.
    v.write(0, fill(1, 1), true).await.unwrap();
    let snap = v.read_snapshot(s.id, 0, 1).await.unwrap();
    same(&snap, &block, "the snapshot lost block 0");
}

/// A rollback writes such a block back rather than punching it.
#[tokio::test]
async fn a_rollback_keeps_a_block_whose_crc_is_zero() {
    let d = Disks::new();
    let v = d.open(None).unwrap();
    let block = crc_zero_block();
    v.write(0, Bytes::from(block.clone()), true).await.unwrap();
    let s = v.take_snapshot("s", false).await.unwrap();
    // Grain 0 is rewritten by the rollback because another block of it changed.
    v.write(1, fill(1, 1), true).await.unwrap();
    v.rollback(s.id).await.unwrap();
    same(
        &v.read(0, 1).await.unwrap(),
        &block,
        "rollback zeroed block 0",
    );
}

/// A clone's copy-up keeps such a block too: a write next to it leaves it
/// as it was.
#[tokio::test]
async fn a_clone_copies_up_a_block_whose_crc_is_zero() {
    let src = Disks::new();
    let v = src.open(None).unwrap();
    let block = crc_zero_block();
    v.write(0, Bytes::from(block.clone()), true).await.unwrap();
    let s = v.take_snapshot("s", false).await.unwrap();
    let cd = Disks::new();
    let c = cd.open(Some((&v, s.id))).unwrap();
    same(
        &c.read(0, 1).await.unwrap(),
        &block,
        "read through the origin",
    );
    c.write(1, fill(2, 1), true).await.unwrap();
    same(
        &c.read(0, 1).await.unwrap(),
        &block,
        "copy-up dropped block 0",
    );
}

/// A rollback that fails half way (the data disk fails a write, as on EIO
/// or ENOSPC) is forgotten: the next open does not finish it over the
/// writes acknowledged since.
#[tokio::test]
async fn a_failed_rollback_is_not_redone_over_later_writes() {
    let d = Disks::new();
    let v = d.open(None).unwrap();
    v.write(0, fill(0xa, 8), true).await.unwrap();
    let s = v.take_snapshot("s", false).await.unwrap();
    v.write(0, fill(0xb, 8), true).await.unwrap();
    d.data.power_off_after(0);
    assert!(v.rollback(s.id).await.is_err(), "the rollback fails");
    // The disk works again: the failure was transient.
    d.data.power_off_after(usize::MAX);
    v.write(0, fill(0xc, 8), true).await.unwrap();
    v.flush().await.unwrap();
    same(
        &v.read(0, 8).await.unwrap(),
        &fill(0xc, 8),
        "before the reopen",
    );
    drop(v);
    let v = d.open(None).unwrap();
    same(
        &v.read(0, 8).await.unwrap(),
        &fill(0xc, 8),
        "an acknowledged FUA write was undone by the next open",
    );
}

/// After a failed rollback its snapshot can be deleted, and the volume
/// still opens.
#[tokio::test]
async fn a_volume_opens_after_a_failed_rollback_and_a_delete() {
    let d = Disks::new();
    let v = d.open(None).unwrap();
    v.write(0, fill(0xa, 8), true).await.unwrap();
    let s = v.take_snapshot("s", false).await.unwrap();
    v.write(0, fill(0xb, 8), true).await.unwrap();
    d.data.power_off_after(0);
    assert!(v.rollback(s.id).await.is_err(), "the rollback fails");
    d.data.power_off_after(usize::MAX);
    v.delete_snapshot(s.id).await.unwrap();
    drop(v);
    let reopened = d.open(None);
    assert!(
        reopened.is_ok(),
        "the volume no longer opens: {:?}",
        reopened.err()
    );
}

/// A shelf whose snapshot table disk fails every change after the first
/// (its length is set, its first slot write fails: ENOSPC, EIO, or a power
/// cut between the two).
struct TableFails(Arc<SimShelf>);

impl Shelf<Disk> for TableFails {
    fn open(&self, name: &str) -> io::Result<Option<Disk>> {
        self.0.open(name)
    }
    fn create(&self, name: &str) -> io::Result<Disk> {
        let d = self.0.create(name)?;
        if name == "table" {
            d.power_off_after(1);
        }
        Ok(d)
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.0.remove(name)
    }
    fn names(&self) -> io::Result<Vec<String>> {
        self.0.names()
    }
}

/// The first snapshot of a volume failing after its table file got its
/// length, before a slot was written whole: the volume opens, with no
/// snapshots.
#[tokio::test]
async fn a_failed_first_snapshot_leaves_a_volume_that_opens() {
    let d = Disks::new();
    let v = d
        .open_with(Box::new(TableFails(d.shelf.clone())), None)
        .unwrap();
    v.write(0, fill(1, 8), true).await.unwrap();
    assert!(
        v.take_snapshot("s", false).await.is_err(),
        "the snapshot fails"
    );
    // The volume keeps working meanwhile.
    v.write(8, fill(2, 8), true).await.unwrap();
    drop(v);
    let reopened = d.open(None);
    assert!(
        reopened.is_ok(),
        "a failed first snapshot made the volume unopenable: {:?}",
        reopened.err()
    );
}

/// GET LBA STATUS on a clone: a run that starts in a grain the clone holds
/// ends where it reads from its origin again, so origin data is never
/// reported deallocated (a copy tool would skip it).
#[tokio::test]
async fn a_clones_block_status_never_calls_origin_data_deallocated() {
    let src = Disks::new();
    let v = src.open(None).unwrap();
    // Grain 0: only block 0 written. Grains 1..8: all written.
    v.write(0, fill(1, 1), true).await.unwrap();
    v.write(PER_GRAIN, fill(7, BLOCKS - PER_GRAIN), true)
        .await
        .unwrap();
    let s = v.take_snapshot("s", false).await.unwrap();
    let cd = Disks::new();
    let c = cd.open(Some((&v, s.id))).unwrap();
    // The clone writes block 0: grain 0 is copied up and held.
    c.write(0, fill(2, 1), true).await.unwrap();
    let (state, n) = c.block_status(1).await.unwrap();
    if state == BlockState::Deallocated {
        let back = c.read(1, n as u32).await.unwrap();
        assert!(
            back.iter().all(|&x| x == 0),
            "blocks 1..{} reported deallocated, but block {} of them reads data",
            1 + n,
            1 + back.iter().position(|&x| x != 0).unwrap() as u64 / BS as u64
        );
    }
}

/// A clone's read that spans a grain it holds and one it reads from its
/// origin, racing a write into the held grain (data written, checksum not
/// yet): looked at again under the locks, never a MEDIUM ERROR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_read_racing_a_write_is_not_a_medium_error() {
    let src = Disks::new();
    let v = src.open(None).unwrap();
    v.write(0, fill(7, BLOCKS), true).await.unwrap();
    let s = v.take_snapshot("s", false).await.unwrap();
    let cd = Disks::new();
    let c = Arc::new(cd.open(Some((&v, s.id))).unwrap());
    // Grain 0 held by the clone, grain 1 still read from the origin.
    c.write(0, fill(1, 8), false).await.unwrap();
    let w = c.clone();
    let writer = tokio::spawn(async move {
        for i in 0..20_000u32 {
            let v = (i % 200) as u8 + 10;
            w.write(0, fill(v, 8), false).await.unwrap();
        }
    });
    let mut errors = 0;
    let mut first = None;
    while !writer.is_finished() {
        if let Err(e) = c.read(0, (2 * PER_GRAIN) as u32).await {
            errors += 1;
            first.get_or_insert(e.to_string());
        }
    }
    writer.await.unwrap();
    assert_eq!(errors, 0, "reads racing writes failed: {first:?}");
}

/// The same race on a volume that is not a clone: never an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_volume_read_racing_a_write_is_fine() {
    let d = Disks::new();
    let v = Arc::new(d.open(None).unwrap());
    v.write(0, fill(7, BLOCKS), true).await.unwrap();
    let w = v.clone();
    let writer = tokio::spawn(async move {
        for i in 0..20_000u32 {
            let v = (i % 200) as u8 + 10;
            w.write(0, fill(v, 8), false).await.unwrap();
        }
    });
    let mut errors = 0;
    while !writer.is_finished() {
        if v.read(0, (2 * PER_GRAIN) as u32).await.is_err() {
            errors += 1;
        }
    }
    writer.await.unwrap();
    assert_eq!(errors, 0);
}

/// A write that fails half way (the data disk takes its first 64 KiB chunk
/// and fails the second, as ENOSPC does) leaves new data with old
/// checksums, suspect until healed: a snapshot taken then heals them
/// first, so it does not keep a MEDIUM ERROR for ever.
#[tokio::test]
async fn a_snapshot_after_a_failed_write_reads() {
    let d = Disks::new();
    let v = d.open(None).unwrap();
    v.write(0, fill(0xa, 2 * PER_GRAIN), true).await.unwrap();
    d.data.power_off_after(1);
    assert!(
        v.write(0, fill(0xb, 2 * PER_GRAIN), false).await.is_err(),
        "the write fails half way"
    );
    d.data.power_off_after(usize::MAX);
    let s = v.take_snapshot("s", false).await.unwrap();
    // Any write into grain 0 copies it out.
    v.write(PER_GRAIN - 1, fill(0xc, 1), true).await.unwrap();
    v.flush().await.unwrap();
    // The head heals: block 0 reads (it holds the failed write's data).
    let head = v.read(0, 1).await;
    assert!(head.is_ok(), "head: {:?}", head.err());
    let snap = v.read_snapshot(s.id, 0, 1).await;
    assert!(
        snap.is_ok(),
        "the snapshot's block 0 is unreadable: {:?}",
        snap.err()
    );
}

/// `volume clone SRC NEW` without a snapshot names the snapshot it takes
/// after no user input: a 60-character volume name is fine.
#[tokio::test]
async fn a_clone_without_a_snapshot_takes_any_valid_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = store::Store::open(dir.path()).unwrap();
    store.create("src", 1 << 20, 512).unwrap();
    let new = "c".repeat(60);
    store::validate_name(&new).unwrap();
    let made = store.clone_volume("src", None, &new).await;
    assert!(made.is_ok(), "{:?}", made.err());
}

/// A deleted snapshot that clones still read from no longer holds its
/// name: a new snapshot may take it.
#[tokio::test]
async fn a_deleted_snapshot_kept_for_clones_frees_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = store::Store::open(dir.path()).unwrap();
    store.create("src", 1 << 20, 512).unwrap();
    let vols = vec!["src".to_string()];
    store.take_snapshots(&vols, "daily", None).await.unwrap();
    store
        .clone_volume("src", Some("daily"), "c1")
        .await
        .unwrap();
    let kept_for = store.delete_snapshot("src", "daily").await.unwrap();
    assert_eq!(kept_for, vec!["c1".to_string()]);
    assert!(store.find_snapshot("src", "daily").is_err(), "deleted");
    let again = store.take_snapshots(&vols, "daily", None).await;
    assert!(again.is_ok(), "{:?}", again.err());
}
