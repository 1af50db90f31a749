//! Snapshots, clones, rollbacks and deletes against a model of immutable
//! images, over simulated disks: random streams of writes (with and without
//! FUA), unmaps, flushes, snapshots, clones (of clones too), rollbacks,
//! deletes and hides run on several volumes; every read of every volume and
//! every snapshot must match the model. Then the power goes off at a random
//! change of a random disk, in the middle of whatever runs then, and every
//! disk comes back with any part of its unsynced writes: every completed
//! snapshot must read exactly as it was taken, every head must hold for each
//! block its durable value or one written since, and the volumes must go on
//! working.

use std::sync::Arc;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use store::{LocalVolume, Shelf, SimDisk, SimShelf, VolumeFiles, GRAIN};
use uuid::Uuid;
use volume::Volume;

const BS: u32 = 512;
/// Eight grains of 64 KiB.
const BLOCKS: u64 = 8 * GRAIN / BS as u64;
const REGION: u64 = 64 * 1024;

type Disk = Arc<SimDisk>;
type Vol = LocalVolume<Disk>;

/// The disks of one volume.
struct Disks {
    data: Disk,
    sums: Disk,
    dirty: Disk,
    held: Option<Disk>,
    shelf: Arc<SimShelf>,
}

impl Disks {
    fn new(clone: bool) -> Disks {
        Disks {
            data: Arc::new(SimDisk::new(BLOCKS * BS as u64)),
            sums: Arc::new(SimDisk::new(0)),
            dirty: Arc::new(SimDisk::new(0)),
            held: clone.then(|| Arc::new(SimDisk::new(0))),
            shelf: Arc::new(SimShelf::new()),
        }
    }

    fn open(&self, origin: Option<(&Vol, Uuid)>) -> volume::Result<Vol> {
        let files = VolumeFiles {
            data: self.data.clone(),
            sums: self.sums.clone(),
            dirty: self.dirty.clone(),
        };
        let origin = origin.map(|(v, s)| (v, s, self.held.clone().expect("a clone's map")));
        LocalVolume::with_shelf(
            files,
            BS,
            BLOCKS,
            REGION,
            Box::new(self.shelf.clone()),
            origin,
        )
    }

    fn all(&self) -> Vec<Disk> {
        let mut v = vec![self.data.clone(), self.sums.clone(), self.dirty.clone()];
        v.extend(self.held.clone());
        v.extend(self.shelf.disks());
        v
    }

    /// The disks as a power cut leaves them.
    fn power_cut(&self, rng: &mut StdRng) -> Disks {
        let mut cut = |d: &SimDisk| {
            let mask: Vec<bool> = (0..d.unsynced()).map(|_| rng.gen_bool(0.5)).collect();
            d.power_cut(|i| mask[i])
        };
        Disks {
            data: Arc::new(cut(&self.data)),
            sums: Arc::new(cut(&self.sums)),
            dirty: Arc::new(cut(&self.dirty)),
            held: self.held.as_ref().map(|h| Arc::new(cut(h))),
            shelf: Arc::new(self.shelf.power_cut(cut)),
        }
    }
}

/// Per block: the newest value known durable, and every value written since.
#[derive(Clone, Default, Debug)]
struct Block {
    durable: u8,
    since: Vec<u8>,
}

impl Block {
    fn now(&self) -> u8 {
        *self.since.last().unwrap_or(&self.durable)
    }
    fn set(&mut self, v: u8, durable: bool) {
        if durable {
            self.durable = v;
            self.since.clear();
        } else {
            self.since.push(v);
        }
    }
    fn settle(&mut self) {
        self.durable = self.now();
        self.since.clear();
    }
}

struct Snap {
    id: Uuid,
    content: Vec<u8>,
    hidden: bool,
}

/// One volume as the model sees it.
struct Model {
    head: Vec<Block>,
    snaps: Vec<Snap>,
    /// (source volume, snapshot id) of a clone.
    origin: Option<(usize, Uuid)>,
    /// A snapshot whose taking failed (its name and content): it may or may
    /// not be there.
    maybe_snap: Option<(String, Vec<u8>)>,
    /// A rollback that failed: the head may be this content.
    maybe_rollback: Option<Vec<u8>>,
    /// A delete that failed: the snapshot may be gone.
    maybe_deleted: Option<Uuid>,
}

impl Model {
    fn content(&self) -> Vec<u8> {
        self.head.iter().map(Block::now).collect()
    }
    fn settle(&mut self) {
        self.head.iter_mut().for_each(Block::settle);
    }
}

fn blocks_of(v: u8, n: u64) -> Vec<u8> {
    vec![v; (n * BS as u64) as usize]
}

/// Reads all of a volume and checks it against `expect`.
async fn check_head(seed: u64, what: &str, vol: &Vol, expect: &[u8]) {
    let back = vol
        .read(0, BLOCKS as u32)
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: {what} unreadable: {e}"));
    for (b, want) in expect.iter().enumerate() {
        let got = &back[b * BS as usize..(b + 1) * BS as usize];
        assert!(
            got.iter().all(|x| x == want),
            "seed {seed}: {what} block {b} holds {} where {want} was expected",
            got[0]
        );
    }
}

async fn check_snapshot(seed: u64, what: &str, vol: &Vol, s: &Snap) {
    let back = vol
        .read_snapshot(s.id, 0, BLOCKS as u32)
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: {what} unreadable: {e}"));
    for (b, want) in s.content.iter().enumerate() {
        let got = &back[b * BS as usize..(b + 1) * BS as usize];
        assert!(
            got.iter().all(|x| x == want),
            "seed {seed}: {what} block {b} holds {} where {want} was expected",
            got[0]
        );
    }
}

/// Everything the model says, checked on every volume and snapshot.
async fn check_all(seed: u64, vols: &[Option<Vol>], models: &[Option<Model>]) {
    for (i, (v, m)) in vols.iter().zip(models).enumerate() {
        let (Some(v), Some(m)) = (v, m) else { continue };
        check_head(seed, &format!("volume {i}"), v, &m.content()).await;
        for (k, s) in m.snaps.iter().enumerate() {
            check_snapshot(seed, &format!("volume {i} snapshot {k}"), v, s).await;
        }
    }
}

/// Runs random operations; `power` (disk, changes) turns a disk off at some
/// point, after which the first operation that fails ends the run.
#[allow(clippy::too_many_arguments)]
async fn run(
    seed: u64,
    rng: &mut StdRng,
    ops: usize,
    disks: &mut Vec<Option<Disks>>,
    vols: &mut Vec<Option<Vol>>,
    models: &mut Vec<Option<Model>>,
    next: &mut u8,
    power_after: Option<usize>,
) -> bool {
    for op in 0..ops {
        if power_after == Some(op) {
            let all: Vec<Disk> = disks.iter().flatten().flat_map(Disks::all).collect();
            let d = &all[rng.gen_range(0..all.len())];
            d.power_off_after(rng.gen_range(0..6));
        }
        let live: Vec<usize> = (0..vols.len()).filter(|&i| vols[i].is_some()).collect();
        let i = live[rng.gen_range(0..live.len())];
        let failed = step(seed, rng, i, disks, vols, models, next).await;
        if failed {
            return true;
        }
        if power_after.is_none() && rng.gen_bool(0.2) {
            check_all(seed, vols, models).await;
        }
    }
    false
}

/// One random operation on volume `i`; true when it failed (the power went).
async fn step(
    seed: u64,
    rng: &mut StdRng,
    i: usize,
    disks: &mut Vec<Option<Disks>>,
    vols: &mut Vec<Option<Vol>>,
    models: &mut Vec<Option<Model>>,
    next: &mut u8,
) -> bool {
    let vol = vols[i].as_ref().unwrap();
    let m = models[i].as_mut().unwrap();
    match rng.gen_range(0..100) {
        0..=44 => {
            let n = if rng.gen_bool(0.5) {
                8
            } else {
                rng.gen_range(1..300u64)
            };
            let lba = rng.gen_range(0..BLOCKS - n);
            let v = *next;
            *next = next.wrapping_add(1).max(1);
            let fua = rng.gen_bool(0.2);
            let r = vol.write(lba, Bytes::from(blocks_of(v, n)), fua).await;
            for b in lba..lba + n {
                m.head[b as usize].set(v, fua && r.is_ok());
            }
            r.is_err()
        }
        45..=52 => {
            let n = rng.gen_range(1..200u64);
            let lba = rng.gen_range(0..BLOCKS - n);
            let r = vol.unmap(lba, n).await;
            for b in lba..lba + n {
                m.head[b as usize].set(0, false);
            }
            r.is_err()
        }
        53..=59 => {
            let r = vol.flush().await;
            if r.is_ok() {
                m.settle();
            }
            r.is_err()
        }
        60..=71 => {
            let name = format!("s{}", rng.gen::<u32>());
            let content = m.content();
            match vol.take_snapshot(&name, false).await {
                Ok(info) => {
                    m.settle();
                    m.snaps.push(Snap {
                        id: info.id,
                        content,
                        hidden: false,
                    });
                    false
                }
                Err(_) => {
                    m.maybe_snap = Some((name, content));
                    true
                }
            }
        }
        72..=79 => {
            let Some(k) = pick(rng, m.snaps.len()) else {
                return false;
            };
            let id = m.snaps[k].id;
            let cloned = models
                .iter()
                .flatten()
                .any(|c| c.origin.is_some_and(|(src, s)| src == i && s == id));
            let m = models[i].as_mut().unwrap();
            if cloned {
                let r = vol.hide_snapshot(id).await;
                if r.is_ok() {
                    m.snaps[k].hidden = true;
                }
                return r.is_err();
            }
            match vol.delete_snapshot(id).await {
                Ok(()) => {
                    m.snaps.remove(k);
                    false
                }
                Err(_) => {
                    m.maybe_deleted = Some(id);
                    true
                }
            }
        }
        80..=87 => {
            let Some(k) = pick(rng, m.snaps.len()) else {
                return false;
            };
            if m.snaps[k].hidden {
                return false;
            }
            let content = m.snaps[k].content.clone();
            match vol.rollback(m.snaps[k].id).await {
                Ok(()) => {
                    for (b, v) in content.iter().enumerate() {
                        m.head[b].set(*v, true);
                    }
                    false
                }
                Err(_) => {
                    m.maybe_rollback = Some(content);
                    true
                }
            }
        }
        _ => {
            let Some(k) = pick(rng, m.snaps.len()) else {
                return false;
            };
            if vols.len() >= 6 {
                return false;
            }
            let s = &m.snaps[k];
            let (id, content) = (s.id, s.content.clone());
            let d = Disks::new(true);
            match d.open(Some((vol, id))) {
                Ok(clone) => {
                    let head = content
                        .iter()
                        .map(|&v| Block {
                            durable: v,
                            since: Vec::new(),
                        })
                        .collect();
                    vols.push(Some(clone));
                    disks.push(Some(d));
                    models.push(Some(Model {
                        head,
                        snaps: Vec::new(),
                        origin: Some((i, id)),
                        maybe_snap: None,
                        maybe_rollback: None,
                        maybe_deleted: None,
                    }));
                    false
                }
                Err(e) => panic!("seed {seed}: a clone could not be made: {e}"),
            }
        }
    }
}

fn pick(rng: &mut StdRng, n: usize) -> Option<usize> {
    (n > 0).then(|| rng.gen_range(0..n))
}

#[tokio::test]
async fn every_image_reads_as_the_model_says_and_survives_a_power_cut() {
    let seeds: u64 = std::env::var("TANDEM_SNAPSHOT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    for seed in 0..seeds {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut disks = vec![Some(Disks::new(false))];
        let mut vols = vec![Some(disks[0].as_ref().unwrap().open(None).unwrap())];
        let mut models = vec![Some(Model {
            head: vec![Block::default(); BLOCKS as usize],
            snaps: Vec::new(),
            origin: None,
            maybe_snap: None,
            maybe_rollback: None,
            maybe_deleted: None,
        })];
        let mut next = 1u8;
        // A stretch with the power on, checked as it goes.
        let ops = rng.gen_range(10..60);
        run(
            seed,
            &mut rng,
            ops,
            &mut disks,
            &mut vols,
            &mut models,
            &mut next,
            None,
        )
        .await;
        check_all(seed, &vols, &models).await;
        // Then the power goes off somewhere in the next stretch.
        let ops = rng.gen_range(1..30);
        let at = rng.gen_range(0..ops);
        run(
            seed,
            &mut rng,
            ops,
            &mut disks,
            &mut vols,
            &mut models,
            &mut next,
            Some(at),
        )
        .await;
        // Cut first: closing the volumes would sync them.
        let cut: Vec<Option<Disks>> = disks
            .iter()
            .map(|d| d.as_ref().map(|d| d.power_cut(&mut rng)))
            .collect();
        drop(vols);
        // Back up: sources open before their clones.
        let mut back: Vec<Option<Vol>> = Vec::new();
        for (i, d) in cut.iter().enumerate() {
            let d = d.as_ref().unwrap();
            let origin = models[i].as_ref().unwrap().origin;
            let v = match origin {
                None => d.open(None),
                Some((src, s)) => d.open(Some((back[src].as_ref().unwrap(), s))),
            };
            back.push(Some(v.unwrap_or_else(|e| {
                panic!("seed {seed}: volume {i} does not open after the power cut: {e}")
            })));
        }
        for (i, v) in back.iter().enumerate() {
            let v = v.as_ref().unwrap();
            let m = models[i].as_mut().unwrap();
            let listed: Vec<Uuid> = v.snapshots().iter().map(|s| s.id).collect();
            let mut expect: Vec<Uuid> = m.snaps.iter().map(|s| s.id).collect();
            if let Some(gone) = m.maybe_deleted.take() {
                if !listed.contains(&gone) {
                    expect.retain(|&s| s != gone);
                    m.snaps.retain(|s| s.id != gone);
                }
            }
            if let Some((name, content)) = m.maybe_snap.take() {
                if let Some(info) = v.snapshot(&name) {
                    expect.push(info.id);
                    m.snaps.push(Snap {
                        id: info.id,
                        content,
                        hidden: false,
                    });
                }
            }
            assert_eq!(
                listed, expect,
                "seed {seed}: volume {i} lists other snapshots than were taken"
            );
            for (k, s) in m.snaps.iter().enumerate() {
                check_snapshot(
                    seed,
                    &format!("volume {i} snapshot {k} after the cut"),
                    v,
                    s,
                )
                .await;
            }
            // The head: the rolled-back content, or per block a durable
            // value or one written since.
            let all = v.read(0, BLOCKS as u32).await.unwrap_or_else(|e| {
                panic!("seed {seed}: volume {i} unreadable after the power cut: {e}")
            });
            let got: Vec<u8> = all.chunks(BS as usize).map(|b| b[0]).collect();
            for (b, blk) in all.chunks(BS as usize).enumerate() {
                assert!(
                    blk.iter().all(|&x| x == blk[0]),
                    "seed {seed}: volume {i} block {b} torn"
                );
            }
            if m.maybe_rollback.as_ref() == Some(&got) {
                for (b, v) in got.iter().enumerate() {
                    m.head[b].set(*v, true);
                }
            } else {
                for (b, blk) in m.head.iter_mut().enumerate() {
                    assert!(
                        got[b] == blk.durable || blk.since.contains(&got[b]),
                        "seed {seed}: volume {i} block {b} holds {} after the cut, durable {} then {:?}",
                        got[b],
                        blk.durable,
                        blk.since
                    );
                    // What the cut left is what the volume holds now.
                    blk.durable = got[b];
                    blk.since.clear();
                }
            }
            m.maybe_rollback = None;
        }
        // And it all goes on working.
        let mut disks = cut;
        let mut vols = back;
        let ops = rng.gen_range(5..25);
        run(
            seed,
            &mut rng,
            ops,
            &mut disks,
            &mut vols,
            &mut models,
            &mut next,
            None,
        )
        .await;
        check_all(seed, &vols, &models).await;
    }
}

/// Grains the last copy left on a snapshot's disk but never recorded (a
/// cut between the copy and its bit) are freed by the next open, and the
/// snapshot still reads right.
#[tokio::test]
async fn an_open_frees_what_an_interrupted_copy_left() {
    let d = Disks::new(false);
    let v = d.open(None).unwrap();
    v.write(0, Bytes::from(blocks_of(7, 256)), true)
        .await
        .unwrap();
    let s = v.take_snapshot("before", false).await.unwrap();
    // A copy of grain 3 that got its data onto the disk, but not its bit.
    let data = d.shelf.open(&format!("{}.data", s.id)).unwrap().unwrap();
    let grain3 = 3 * GRAIN;
    use store::Backing;
    data.write_at(&vec![9u8; GRAIN as usize], grain3).unwrap();
    data.sync().unwrap();
    drop(v);
    // (A clean close: the orphan is freed by every open, not only after a cut.)
    let v = d.open(None).unwrap();
    let mut back = vec![1u8; GRAIN as usize];
    data.read_at(&mut back, grain3).unwrap();
    assert!(back.iter().all(|&x| x == 0), "the orphan grain is freed");
    let snap = v.read_snapshot(s.id, 0, BLOCKS as u32).await.unwrap();
    assert!(snap[..256 * BS as usize].iter().all(|&x| x == 7));
    assert!(snap[256 * BS as usize..].iter().all(|&x| x == 0));
}

/// A snapshot holds every write acknowledged before it, durably, even one
/// acknowledged without FUA: a power cut right after it keeps them all.
#[tokio::test]
async fn a_snapshot_keeps_writes_acknowledged_without_fua() {
    let d = Disks::new(false);
    let v = d.open(None).unwrap();
    v.write(0, Bytes::from(blocks_of(5, 300)), false)
        .await
        .unwrap();
    let s = v.take_snapshot("now", false).await.unwrap();
    // Nothing unsynced survives (cut before the volume is closed, which would sync).
    let cut = Disks {
        data: Arc::new(d.data.power_cut(|_| false)),
        sums: Arc::new(d.sums.power_cut(|_| false)),
        dirty: Arc::new(d.dirty.power_cut(|_| false)),
        held: None,
        shelf: Arc::new(d.shelf.power_cut(|d| d.power_cut(|_| false))),
    };
    drop(v);
    let v = cut.open(None).unwrap();
    let snap = v.read_snapshot(s.id, 0, 300).await.unwrap();
    assert!(snap.iter().all(|&x| x == 5), "the snapshot lost a write");
    let head = v.read(0, 300).await.unwrap();
    assert!(head.iter().all(|&x| x == 5), "the volume lost a write");
}

fn sim_volume(bs: u32, n: u64, origin: Option<(&Vol, Uuid)>) -> Vol {
    let files = VolumeFiles {
        data: Arc::new(SimDisk::new(n * bs as u64)),
        sums: Arc::new(SimDisk::new(0)),
        dirty: Arc::new(SimDisk::new(0)),
    };
    let origin = origin.map(|(v, s)| (v, s, Arc::new(SimDisk::new(0))));
    let shelf = Box::new(Arc::new(SimShelf::new()));
    LocalVolume::with_shelf(files, bs, n, store::REGION_BYTES, shelf, origin).unwrap()
}

/// A volume with a snapshot (every write copies out first) and a clone
/// (every read of a grain it has not written goes to its origin, every
/// write copies up first) pass the suite every volume passes.
#[tokio::test]
async fn snapshotted_volumes_and_clones_behave_like_every_volume() {
    volume::testsuite::run_all(|bs, n| async move {
        let v = sim_volume(bs, n, None);
        v.take_snapshot("s", false).await.unwrap();
        v
    })
    .await;
    volume::testsuite::run_all(|bs, n| async move {
        let source = sim_volume(bs, n, None);
        let s = source.take_snapshot("s", false).await.unwrap();
        // Written after the snapshot: the clone must not see it.
        let junk = vec![0xeeu8; (n * bs as u64) as usize];
        source.write(0, Bytes::from(junk), false).await.unwrap();
        sim_volume(bs, n, Some((&source, s.id)))
    })
    .await;
}
