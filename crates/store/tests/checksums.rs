//! Block checksums on real files: damage in a volume's data file is reported
//! as a medium error after a restart, a volume made before checksums gets
//! them at open, growing, unmapping and rewriting keep them in step, and so
//! do small writes done inline (without a worker thread) and large writes
//! handed to the kernel in pieces.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use bytes::Bytes;
use store::Store;
use volume::{Volume, VolumeError};

const BS: u32 = 512;

fn pattern(lba: u64) -> Vec<u8> {
    (0..BS as u64)
        .map(|i| (lba.wrapping_mul(31) + i) as u8 | 1)
        .collect()
}

/// Creates `name` with blocks 0..16 written and flushed, then closes the store.
async fn written_volume(dir: &Path, name: &str) {
    let store = Store::open(dir).unwrap();
    store.create(name, 1 << 20, BS).unwrap();
    let v = store.open_volume(name).unwrap();
    let data: Vec<u8> = (0..16).flat_map(pattern).collect();
    v.write(0, Bytes::from(data), false).await.unwrap();
    v.flush().await.unwrap();
}

fn flip(dir: &Path, byte: u64) {
    let vdir = single_volume_dir(dir);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(vdir.join("data"))
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, byte).unwrap();
    f.write_all_at(&[b[0] ^ 0x10], byte).unwrap();
}

fn single_volume_dir(dir: &Path) -> std::path::PathBuf {
    let mut dirs: Vec<_> = std::fs::read_dir(dir.join("volumes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1);
    dirs.pop().unwrap()
}

fn is_medium<T>(r: volume::Result<T>, lba: u64) -> bool {
    matches!(r, Err(VolumeError::Medium { lba: l, .. }) if l == lba)
}

#[tokio::test]
async fn damage_in_the_data_file_is_a_medium_error_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    written_volume(dir.path(), "vm").await;
    flip(dir.path(), 5 * BS as u64 + 77);

    let store = Store::open(dir.path()).unwrap();
    let v = store.open_volume("vm").unwrap();
    assert!(is_medium(v.read(5, 1).await, 5));
    assert!(is_medium(v.read(0, 16).await, 5));
    assert_eq!(v.read(4, 1).await.unwrap(), pattern(4));
    assert_eq!(v.read(6, 1).await.unwrap(), pattern(6));
    // Unwritten blocks verify as zeros.
    assert_eq!(v.read(100, 1).await.unwrap(), vec![0u8; BS as usize]);
    // COMPARE AND WRITE over the damage fails the same way.
    let r = v
        .compare_and_write(5, Bytes::from(pattern(5)), Bytes::from(pattern(9)), false)
        .await;
    assert!(is_medium(r, 5));
    // Rewriting the block heals it.
    v.write(5, Bytes::from(pattern(5)), true).await.unwrap();
    assert_eq!(
        v.read(0, 16).await.unwrap(),
        (0..16).flat_map(pattern).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_volume_without_checksums_gets_them_at_open() {
    let dir = tempfile::tempdir().unwrap();
    written_volume(dir.path(), "old").await;
    let vdir = single_volume_dir(dir.path());
    // As the store left volumes before checksums existed: data and metadata only.
    std::fs::remove_file(vdir.join("data.crc32c")).unwrap();
    std::fs::remove_file(vdir.join("data.dirty")).unwrap();

    {
        let store = Store::open(dir.path()).unwrap();
        let v = store.open_volume("old").unwrap();
        assert_eq!(
            v.read(0, 16).await.unwrap(),
            (0..16).flat_map(pattern).collect::<Vec<_>>()
        );
        assert_eq!(v.read(16, 8).await.unwrap(), vec![0u8; 8 * BS as usize]);
    }
    assert!(vdir.join("data.crc32c").exists());
    // From now on damage is caught.
    flip(dir.path(), 3 * BS as u64);
    let store = Store::open(dir.path()).unwrap();
    let v = store.open_volume("old").unwrap();
    assert!(is_medium(v.read(3, 1).await, 3));
}

#[tokio::test]
async fn grow_unmap_and_write_same_keep_checksums_in_step() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.create("g", 1 << 20, BS).unwrap();
    let vdir = store.volume_dir("g").unwrap();
    // A new volume's sidecar is as thin as its data.
    assert_eq!(
        std::fs::metadata(vdir.join("data.crc32c"))
            .unwrap()
            .blocks(),
        0
    );
    let v = store.open_volume("g").unwrap();
    let n = v.num_blocks();
    v.write(n - 1, Bytes::from(pattern(1)), false)
        .await
        .unwrap();
    v.resize(n * 3).await.unwrap();
    v.write(n * 3 - 1, Bytes::from(pattern(2)), false)
        .await
        .unwrap();
    assert_eq!(v.read(n - 1, 1).await.unwrap(), pattern(1));
    assert_eq!(v.read(n * 2, 1).await.unwrap(), vec![0u8; BS as usize]);
    assert_eq!(v.read(n * 3 - 1, 1).await.unwrap(), pattern(2));
    v.write_same(10, 300, Bytes::from(pattern(7)), false, false)
        .await
        .unwrap();
    v.unmap(n - 1, 2).await.unwrap();
    v.write_same(20, 8, Bytes::from(vec![0u8; BS as usize]), true, true)
        .await
        .unwrap();
    v.flush().await.unwrap();
    drop(v);
    drop(store);

    let store = Store::open(dir.path()).unwrap();
    let v = store.open_volume("g").unwrap();
    assert_eq!(v.num_blocks(), n * 3);
    assert_eq!(v.read(n - 1, 2).await.unwrap(), vec![0u8; 2 * BS as usize]);
    assert_eq!(v.read(n * 3 - 1, 1).await.unwrap(), pattern(2));
    assert_eq!(v.read(10, 1).await.unwrap(), pattern(7));
    assert_eq!(v.read(20, 8).await.unwrap(), vec![0u8; 8 * BS as usize]);
    assert_eq!(v.read(309, 1).await.unwrap(), pattern(7));
    store.delete("g").unwrap();
    assert!(!vdir.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_inline_or_in_pieces_keep_checksums_in_step() {
    let dir = tempfile::tempdir().unwrap();
    let mut expect = vec![0u8; 1 << 20];
    {
        let store = Store::open(dir.path()).unwrap();
        store.create("vm", 1 << 20, BS).unwrap();
        let v = store.open_volume("vm").unwrap();
        // 4 KiB writes at 4 KiB offsets: once the checksum page is in the
        // page cache they are done inline.
        for round in 0..3u64 {
            for page in (0..256u64).step_by(7) {
                let lba = page * 8;
                let data: Vec<u8> = (lba..lba + 8).flat_map(|b| pattern(b + round)).collect();
                expect[(lba * BS as u64) as usize..][..data.len()].copy_from_slice(&data);
                v.write(lba, Bytes::from(data), false).await.unwrap();
            }
        }
        let inline = v.inline_writes();
        assert!(inline > 0, "no write ran inline");
        // Not page-aligned: handed to a worker thread, still in step.
        let odd = pattern(999);
        expect[BS as usize..][..BS as usize].copy_from_slice(&odd);
        v.write(1, Bytes::from(odd), true).await.unwrap();
        assert_eq!(v.inline_writes(), inline, "an unaligned write ran inline");
        // Larger than one write call takes (64 KiB): written in pieces.
        let big: Vec<u8> = (3..303u64).flat_map(pattern).collect();
        expect[3 * BS as usize..][..big.len()].copy_from_slice(&big);
        v.write(3, Bytes::from(big), false).await.unwrap();
        assert_eq!(v.read(0, 2048).await.unwrap(), expect);
        v.flush().await.unwrap();
    }
    // After a restart every checksum still matches its block.
    let store = Store::open(dir.path()).unwrap();
    let v = store.open_volume("vm").unwrap();
    assert_eq!(v.read(0, 2048).await.unwrap(), expect);
}
