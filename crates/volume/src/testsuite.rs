//! The behaviour every [`Volume`] implementation must show. Each backend's
//! tests call [`run_all`] with a constructor for fresh, empty volumes.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

use crate::{BlockState, Volume, VolumeError};

/// Runs every check below against fresh volumes made by `make(block_size, num_blocks)`.
pub async fn run_all<F, Fut, V>(make: F)
where
    F: Fn(u32, u64) -> Fut,
    Fut: Future<Output = V>,
    V: Volume,
{
    for bs in [512u32, 4096] {
        fresh_volume_reads_zeros(make(bs, 64).await).await;
        write_then_read_back(make(bs, 64).await).await;
        out_of_range_is_refused(make(bs, 64).await).await;
        bad_lengths_are_refused(make(bs, 64).await).await;
        unmap_reads_back_zeros(make(bs, 64).await).await;
        write_same_fills_the_range(make(bs, 64).await).await;
        compare_and_write_checks_then_writes(make(bs, 64).await).await;
        compare_and_write_is_atomic(Arc::new(make(bs, 64).await)).await;
        resize_grows_and_keeps_data(make(bs, 64).await).await;
        block_status_sees_writes(make(bs, 64).await).await;
        done_now_or_later_the_same(make(bs, 64).await).await;
    }
}

fn pattern(bs: u32, blocks: u64, seed: u8) -> Vec<u8> {
    (0..bs as u64 * blocks)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

/// A new volume reads back as zeros everywhere.
pub async fn fresh_volume_reads_zeros<V: Volume>(v: V) {
    let n = v.num_blocks();
    let data = v.read(0, n as u32).await.expect("read whole volume");
    assert_eq!(data.len(), (n * v.block_size() as u64) as usize);
    assert!(data.iter().all(|&b| b == 0), "fresh volume is not zero");
}

/// Written blocks read back byte-identical; neighbours stay untouched.
pub async fn write_then_read_back<V: Volume>(v: V) {
    let bs = v.block_size();
    let data = pattern(bs, 3, 7);
    v.write(5, Bytes::from(data.clone()), false).await.unwrap();
    assert_eq!(v.read(5, 3).await.unwrap(), data);
    let one = pattern(bs, 1, 9);
    v.write(6, Bytes::from(one.clone()), true).await.unwrap();
    let back = v.read(4, 5).await.unwrap();
    let b = bs as usize;
    assert!(
        back[..b].iter().all(|&x| x == 0),
        "block before the write changed"
    );
    assert_eq!(&back[b..2 * b], &data[..b]);
    assert_eq!(&back[2 * b..3 * b], &one[..]);
    assert_eq!(&back[3 * b..4 * b], &data[2 * b..]);
    assert!(
        back[4 * b..].iter().all(|&x| x == 0),
        "block after the write changed"
    );
    v.flush().await.unwrap();
    let last = v.num_blocks() - 1;
    v.write(last, Bytes::from(one.clone()), false)
        .await
        .unwrap();
    assert_eq!(v.read(last, 1).await.unwrap(), one);
}

/// Every operation outside the volume fails with `OutOfRange`, including
/// ranges whose end overflows.
pub async fn out_of_range_is_refused<V: Volume>(v: V) {
    let n = v.num_blocks();
    let one = Bytes::from(vec![1u8; v.block_size() as usize]);
    let two = Bytes::from(vec![1u8; 2 * v.block_size() as usize]);
    assert!(matches!(
        v.read(n, 1).await,
        Err(VolumeError::OutOfRange { .. })
    ));
    assert!(matches!(
        v.read(n - 1, 2).await,
        Err(VolumeError::OutOfRange { .. })
    ));
    assert!(matches!(
        v.read(u64::MAX, 1).await,
        Err(VolumeError::OutOfRange { .. })
    ));
    assert!(matches!(
        v.write(n, one.clone(), false).await,
        Err(VolumeError::OutOfRange { .. })
    ));
    assert!(matches!(
        v.write(n - 1, two.clone(), false).await,
        Err(VolumeError::OutOfRange { .. })
    ));
    assert!(matches!(
        v.unmap(n - 1, 2).await,
        Err(VolumeError::OutOfRange { .. })
    ));
    assert!(matches!(
        v.unmap(u64::MAX, 2).await,
        Err(VolumeError::OutOfRange { .. })
    ));
    assert!(matches!(
        v.write_same(n - 1, 2, one.clone(), false, false).await,
        Err(VolumeError::OutOfRange { .. })
    ));
    assert!(matches!(
        v.compare_and_write(n, one.clone(), one.clone(), false)
            .await,
        Err(VolumeError::OutOfRange { .. })
    ));
    let all = v.read(0, n as u32).await.unwrap();
    assert!(
        all.iter().all(|&b| b == 0),
        "a refused operation changed data"
    );
}

/// Buffers that are not whole blocks are refused without side effects.
pub async fn bad_lengths_are_refused<V: Volume>(v: V) {
    let bs = v.block_size() as usize;
    assert!(matches!(
        v.write(0, Bytes::from(vec![1u8; bs + 1]), false).await,
        Err(VolumeError::BadLength { .. })
    ));
    assert!(matches!(
        v.write(0, Bytes::new(), false).await,
        Err(VolumeError::BadLength { .. })
    ));
    assert!(matches!(
        v.write_same(0, 4, Bytes::from(vec![1u8; bs - 1]), false, false)
            .await,
        Err(VolumeError::BadLength { .. })
    ));
    let all = v.read(0, 4).await.unwrap();
    assert!(all.iter().all(|&b| b == 0), "a refused write changed data");
}

/// Unmapped blocks read as zeros; blocks around them keep their data.
pub async fn unmap_reads_back_zeros<V: Volume>(v: V) {
    let bs = v.block_size();
    let data = pattern(bs, 10, 3);
    v.write(10, Bytes::from(data.clone()), false).await.unwrap();
    v.unmap(12, 5).await.unwrap();
    let back = v.read(10, 10).await.unwrap();
    let b = bs as usize;
    assert_eq!(&back[..2 * b], &data[..2 * b]);
    assert!(
        back[2 * b..7 * b].iter().all(|&x| x == 0),
        "unmapped blocks are not zero"
    );
    assert_eq!(&back[7 * b..], &data[7 * b..]);
    v.unmap(0, v.num_blocks()).await.unwrap();
    assert!(v.read(10, 10).await.unwrap().iter().all(|&x| x == 0));
}

/// WRITE SAME repeats the pattern; with UNMAP and zeros the range reads as zeros.
pub async fn write_same_fills_the_range<V: Volume>(v: V) {
    let bs = v.block_size() as usize;
    let pat: Vec<u8> = (0..bs).map(|i| (i % 251) as u8).collect();
    v.write_same(3, 20, Bytes::from(pat.clone()), false, false)
        .await
        .unwrap();
    let back = v.read(2, 22).await.unwrap();
    assert!(back[..bs].iter().all(|&x| x == 0));
    for i in 1..21 {
        assert_eq!(&back[i * bs..(i + 1) * bs], &pat[..], "block {i} differs");
    }
    assert!(back[21 * bs..].iter().all(|&x| x == 0));
    v.write_same(5, 4, Bytes::from(vec![0u8; bs]), true, true)
        .await
        .unwrap();
    let back = v.read(3, 20).await.unwrap();
    assert_eq!(&back[..bs], &pat[..]);
    assert!(back[2 * bs..6 * bs].iter().all(|&x| x == 0));
    assert_eq!(&back[6 * bs..7 * bs], &pat[..]);
}

/// COMPARE AND WRITE writes only on a match and reports the first differing offset.
pub async fn compare_and_write_checks_then_writes<V: Volume>(v: V) {
    let bs = v.block_size();
    let old = pattern(bs, 2, 1);
    let new = pattern(bs, 2, 2);
    v.write(8, Bytes::from(old.clone()), false).await.unwrap();
    v.compare_and_write(8, Bytes::from(old.clone()), Bytes::from(new.clone()), false)
        .await
        .unwrap();
    assert_eq!(v.read(8, 2).await.unwrap(), new);
    let mut wrong = new.clone();
    wrong[bs as usize + 17] ^= 0xff;
    match v
        .compare_and_write(8, Bytes::from(wrong), Bytes::from(old.clone()), true)
        .await
    {
        Err(VolumeError::Miscompare { offset }) => assert_eq!(offset, bs as usize + 17),
        other => panic!("expected a miscompare, got {other:?}"),
    }
    assert_eq!(
        v.read(8, 2).await.unwrap(),
        new,
        "a miscompare changed data"
    );
}

/// Concurrent COMPARE AND WRITE increments of one block lose no update.
pub async fn compare_and_write_is_atomic<V: Volume>(v: Arc<V>) {
    let bs = v.block_size() as usize;
    let workers = 4;
    let per_worker = 25u64;
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let v = v.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            while done < per_worker {
                let cur = v.read(1, 1).await.unwrap();
                let n = u64::from_le_bytes(cur[..8].try_into().unwrap());
                let mut next = vec![0u8; bs];
                next[..8].copy_from_slice(&(n + 1).to_le_bytes());
                match v
                    .compare_and_write(1, Bytes::from(cur), Bytes::from(next), false)
                    .await
                {
                    Ok(()) => done += 1,
                    Err(VolumeError::Miscompare { .. }) => tokio::task::yield_now().await,
                    Err(e) => panic!("compare and write failed: {e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let cur = v.read(1, 1).await.unwrap();
    let n = u64::from_le_bytes(cur[..8].try_into().unwrap());
    assert_eq!(n, workers * per_worker, "an atomic increment was lost");
}

/// Growing keeps the data and adds zero blocks; shrinking is refused.
pub async fn resize_grows_and_keeps_data<V: Volume>(v: V) {
    let bs = v.block_size();
    let n = v.num_blocks();
    let data = pattern(bs, 1, 5);
    v.write(n - 1, Bytes::from(data.clone()), true)
        .await
        .unwrap();
    v.resize(n * 2).await.unwrap();
    assert_eq!(v.num_blocks(), n * 2);
    assert_eq!(v.read(n - 1, 1).await.unwrap(), data);
    assert!(v.read(n, n as u32).await.unwrap().iter().all(|&x| x == 0));
    v.write(2 * n - 1, Bytes::from(data.clone()), false)
        .await
        .unwrap();
    assert_eq!(v.read(2 * n - 1, 1).await.unwrap(), data);
    assert!(matches!(v.resize(n).await, Err(VolumeError::Shrink { .. })));
    assert_eq!(v.num_blocks(), n * 2);
}

/// A written block is reported mapped, and a status run never passes the end.
pub async fn block_status_sees_writes<V: Volume>(v: V) {
    let bs = v.block_size();
    v.write(4, Bytes::from(pattern(bs, 2, 4)), false)
        .await
        .unwrap();
    let (state, run) = v.block_status(4).await.unwrap();
    assert_eq!(state, BlockState::Mapped);
    assert!(run >= 1 && 4 + run <= v.num_blocks());
    let (_, run) = v.block_status(v.num_blocks() - 1).await.unwrap();
    assert_eq!(run, 1);
    assert!(matches!(
        v.block_status(v.num_blocks()).await,
        Err(VolumeError::OutOfRange { .. })
    ));
}

/// `read_now` and `write_now`, where they act, do what `read` and `write`
/// do: they see each other's data, and refuse what those refuse.
pub async fn done_now_or_later_the_same<V: Volume>(v: V) {
    let bs = v.block_size();
    let n = v.num_blocks();
    let first = pattern(bs, 4, 3);
    match v.write_now(8, &Bytes::from(first.clone())) {
        Some(now) => now.expect("write_now"),
        None => v.write(8, Bytes::from(first.clone()), false).await.unwrap(),
    }
    assert_eq!(v.read(8, 4).await.unwrap(), first);
    let second = pattern(bs, 2, 5);
    v.write(9, Bytes::from(second.clone()), false)
        .await
        .unwrap();
    if let Some(back) = v.read_now(8, 4) {
        let back = back.expect("read_now");
        let b = bs as usize;
        assert_eq!(&back[..b], &first[..b]);
        assert_eq!(&back[b..3 * b], &second[..]);
        assert_eq!(&back[3 * b..], &first[3 * b..]);
    }
    let outside = Bytes::from(pattern(bs, 2, 1));
    if let Some(r) = v.write_now(n - 1, &outside) {
        assert!(matches!(r, Err(VolumeError::OutOfRange { .. })), "{r:?}");
    }
    if let Some(r) = v.read_now(n - 1, 2) {
        assert!(matches!(r, Err(VolumeError::OutOfRange { .. })), "{r:?}");
    }
    if let Some(r) = v.write_now(0, &Bytes::from(vec![1u8; bs as usize + 1])) {
        assert!(matches!(r, Err(VolumeError::BadLength { .. })), "{r:?}");
    }
}
