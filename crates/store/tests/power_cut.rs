//! Power cuts, simulated in-process: a LocalVolume over SimDisks (data,
//! checksum sidecar, dirty-region bitmap) runs a random stream of writes
//! (with and without FUA), flushes and unmaps; the power goes at a random
//! point and any subset of the writes not yet synced survives, on each disk
//! independently. Every write acknowledged as durable must still be there
//! (or a later write to the same block); nothing older may come back; no
//! block reads as a medium error unless the test damaged it, and a byte the
//! test flips in a block's data is reported, before and after a power cut.

use std::sync::Arc;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use store::{LocalVolume, SimDisk, VolumeFiles};
use volume::{Volume, VolumeError};

const BS: u32 = 512;
const BLOCKS: u64 = 64;
/// Dirty regions of 8 blocks: the 64 blocks span 8 regions.
const REGION: u64 = 4096;

/// The three disks of one volume, kept so the test can cut and damage them.
struct Disks {
    data: Arc<SimDisk>,
    sums: Arc<SimDisk>,
    dirty: Arc<SimDisk>,
}

impl Disks {
    fn new() -> Disks {
        Disks {
            data: Arc::new(SimDisk::new(BLOCKS * BS as u64)),
            sums: Arc::new(SimDisk::new(0)),
            dirty: Arc::new(SimDisk::new(0)),
        }
    }

    fn volume(&self) -> LocalVolume<Arc<SimDisk>> {
        let files = VolumeFiles {
            data: self.data.clone(),
            sums: self.sums.clone(),
            dirty: self.dirty.clone(),
        };
        LocalVolume::with_backing(files, BS, BLOCKS, REGION).expect("volume opens")
    }

    /// The disks as a power cut leaves them: each unsynced write survives or
    /// not as `rng` decides, independently on each disk.
    fn power_cut(&self, rng: &mut impl Rng) -> Disks {
        let mut cut = |d: &SimDisk| {
            let mask: Vec<bool> = (0..d.unsynced()).map(|_| rng.gen_bool(0.5)).collect();
            Arc::new(d.power_cut(|i| mask[i]))
        };
        Disks {
            data: cut(&self.data),
            sums: cut(&self.sums),
            dirty: cut(&self.dirty),
        }
    }
}

/// Per block: the newest value known durable, and every value written since.
#[derive(Clone, Default)]
struct Block {
    durable: u8,
    since: Vec<u8>,
}

fn fill(v: u8) -> Vec<u8> {
    vec![v; BS as usize]
}

/// Reads every block on its own: none may be a medium error, each must hold
/// its durable value or one written since.
async fn check_model(seed: u64, vol: &impl Volume, model: &[Block]) {
    for (b, m) in model.iter().enumerate() {
        let back = match vol.read(b as u64, 1).await {
            Ok(back) => back,
            Err(e) => panic!("seed {seed}: block {b} unreadable after the power cut: {e}"),
        };
        let got = back[0];
        assert!(
            back.iter().all(|&x| x == got),
            "seed {seed}: block {b} torn"
        );
        assert!(
            got == m.durable || m.since.contains(&got),
            "seed {seed}: block {b} holds {got}, durable {} then {:?}",
            m.durable,
            m.since
        );
    }
}

fn is_medium(r: volume::Result<Vec<u8>>, lba: u64) -> bool {
    matches!(r, Err(VolumeError::Medium { lba: l, .. }) if l == lba)
}

#[tokio::test]
async fn acknowledged_writes_survive_any_power_cut() {
    let mut inline = 0;
    for seed in 0..200u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let disks = Disks::new();
        let vol = disks.volume();
        let mut model = vec![Block::default(); BLOCKS as usize];
        let mut next = 1u8;
        let ops = rng.gen_range(1..40);
        for _ in 0..ops {
            // Some whole 4 KiB pages, which the volume writes inline.
            let (lba, n) = if rng.gen_bool(0.3) {
                (rng.gen_range(0..BLOCKS / 8) * 8 % (BLOCKS - 8), 8)
            } else {
                (rng.gen_range(0..BLOCKS - 4), rng.gen_range(1..4u64))
            };
            match rng.gen_range(0..10) {
                0..=5 => {
                    let fua = rng.gen_bool(0.3);
                    let v = next;
                    next = next.wrapping_add(1).max(1);
                    let data: Vec<u8> = (0..n).flat_map(|_| fill(v)).collect();
                    vol.write(lba, Bytes::from(data), fua).await.unwrap();
                    for b in lba..lba + n {
                        let m = &mut model[b as usize];
                        if fua {
                            // Durable now; older unsynced values of this block
                            // may still be written back after it, so they stay
                            // possible only if written later than this one.
                            m.durable = v;
                            m.since.clear();
                        } else {
                            m.since.push(v);
                        }
                    }
                }
                6..=7 => {
                    vol.flush().await.unwrap();
                    for m in model.iter_mut() {
                        if let Some(&last) = m.since.last() {
                            m.durable = last;
                        }
                        m.since.clear();
                    }
                }
                _ => {
                    vol.unmap(lba, n).await.unwrap();
                    for b in lba..lba + n {
                        model[b as usize].since.push(0);
                    }
                }
            }
        }
        inline += vol.inline_writes();
        // The power goes; a random subset of the unsynced writes reaches each disk.
        let disks = disks.power_cut(&mut rng);
        let after = disks.volume();
        check_model(seed, &after, &model).await;

        // The disk damages one byte of a block: that block, and only it, is reported.
        let bad = rng.gen_range(0..BLOCKS);
        let at = bad * BS as u64 + rng.gen_range(0..BS as u64);
        disks.data.corrupt(at, 1 << rng.gen_range(0..8));
        assert!(
            is_medium(after.read(bad, 1).await, bad),
            "seed {seed}: damaged block {bad} read as good"
        );
        let start = bad.saturating_sub(2).min(BLOCKS - 4);
        assert!(
            is_medium(after.read(start, 4).await, bad),
            "seed {seed}: a read over damaged block {bad} succeeded"
        );
        for b in [bad.wrapping_sub(1), bad + 1] {
            if b < BLOCKS {
                assert!(
                    after.read(b, 1).await.is_ok(),
                    "seed {seed}: block {b} next to the damage failed"
                );
            }
        }

        // The damage survives an unclean stop: two flushes with no writes
        // between them leave every region clean, then unsynced writes go to
        // later regions (a write stream marks regions ahead of it, never
        // behind) and the power goes again.
        after.flush().await.unwrap();
        after.flush().await.unwrap();
        let region = bad * BS as u64 / REGION;
        for _ in 0..rng.gen_range(0..4) {
            let lba = rng.gen_range(0..BLOCKS);
            if lba * BS as u64 / REGION > region {
                after
                    .write(lba, Bytes::from(fill(0xEE)), false)
                    .await
                    .unwrap();
            }
        }
        let disks = disks.power_cut(&mut rng);
        let again = disks.volume();
        assert!(
            is_medium(again.read(bad, 1).await, bad),
            "seed {seed}: damaged block {bad} read as good after a power cut"
        );
        // Writing the block again heals it.
        again
            .write(bad, Bytes::from(fill(0x5A)), true)
            .await
            .unwrap();
        assert_eq!(again.read(bad, 1).await.unwrap(), fill(0x5A), "seed {seed}");
        drop(after);
    }
    assert!(inline > 0, "no write ran inline");
}

#[tokio::test]
async fn a_write_racing_a_read_is_not_corruption() {
    let disks = Disks::new();
    let vol = Arc::new(disks.volume());
    let writer = {
        let vol = vol.clone();
        tokio::spawn(async move {
            for i in 0..2000u32 {
                let v = (i % 250) as u8 + 1;
                vol.write(5, Bytes::from(fill(v)), false).await.unwrap();
            }
        })
    };
    for _ in 0..2000 {
        let got = vol
            .read(5, 1)
            .await
            .expect("no medium error under a racing write");
        assert!(got.iter().all(|&x| x == got[0]));
    }
    writer.await.unwrap();
}

#[tokio::test]
async fn behaves_like_every_volume() {
    volume::testsuite::run_all(|bs, n| async move {
        let files = VolumeFiles {
            data: SimDisk::new(n * bs as u64),
            sums: SimDisk::new(0),
            dirty: SimDisk::new(0),
        };
        LocalVolume::with_backing(files, bs, n, store::REGION_BYTES).unwrap()
    })
    .await;
}
