//! Power cuts, simulated in-process: a LocalVolume over a SimDisk runs a
//! random stream of writes (with and without FUA), flushes and unmaps; the
//! power goes at a random point and any subset of the writes not yet synced
//! survives. Every write acknowledged as durable must still be there (or a
//! later write to the same block); nothing older may come back.

use std::sync::Arc;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use store::{LocalVolume, SimDisk};
use volume::Volume;

const BS: u32 = 512;
const BLOCKS: u64 = 64;

/// Per block: the newest value known durable, and every value written since.
#[derive(Clone, Default)]
struct Block {
    durable: u8,
    since: Vec<u8>,
}

fn fill(v: u8) -> Vec<u8> {
    vec![v; BS as usize]
}

#[tokio::test]
async fn acknowledged_writes_survive_any_power_cut() {
    for seed in 0..200u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let disk = Arc::new(SimDisk::new(BLOCKS * BS as u64));
        let vol = LocalVolume::with_backing(disk.clone(), BS, BLOCKS);
        let mut model = vec![Block::default(); BLOCKS as usize];
        let mut next = 1u8;
        let ops = rng.gen_range(1..40);
        for _ in 0..ops {
            let lba = rng.gen_range(0..BLOCKS - 4);
            let n = rng.gen_range(1..4u64);
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
        // The power goes; a random subset of the unsynced writes reaches the disk.
        let mask: Vec<bool> = (0..disk.unsynced()).map(|_| rng.gen_bool(0.5)).collect();
        let after = LocalVolume::with_backing(disk.power_cut(|i| mask[i]), BS, BLOCKS);
        let back = after.read(0, BLOCKS as u32).await.unwrap();
        for (b, m) in model.iter().enumerate() {
            let got = back[b * BS as usize];
            assert!(
                back[b * BS as usize..(b + 1) * BS as usize]
                    .iter()
                    .all(|&x| x == got),
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
}

#[tokio::test]
async fn behaves_like_every_volume() {
    volume::testsuite::run_all(|bs, n| async move {
        LocalVolume::with_backing(SimDisk::new(n * bs as u64), bs, n)
    })
    .await;
}
