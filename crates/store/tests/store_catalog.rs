//! The data directory: catalog operations, persistence, locking, crash leftovers, thin space.

use std::sync::Arc;

use bytes::Bytes;
use store::{Store, StoreError};
use volume::{Volume, VolumeError};

#[tokio::test]
async fn local_volume_passes_the_shared_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let counter = std::sync::atomic::AtomicU32::new(0);
    volume::testsuite::run_all(|bs, n| {
        let name = format!(
            "v{}",
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let store = store.clone();
        async move {
            store.create(&name, n * bs as u64, bs).unwrap();
            store.open_volume(&name).unwrap()
        }
    })
    .await;
}

#[test]
fn catalog_operations_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let m = store.create("vm-1.a", 1 << 20, 512).unwrap();
    assert_eq!(store.get("vm-1.a").unwrap(), m);
    assert!(matches!(
        store.create("vm-1.a", 1 << 20, 512),
        Err(StoreError::Exists(_))
    ));
    for bad in [
        "",
        "Upper",
        "-lead",
        "under_score",
        "space x",
        &"a".repeat(64),
    ] {
        assert!(
            matches!(
                store.create(bad, 1 << 20, 512),
                Err(StoreError::InvalidName { .. })
            ),
            "{bad:?} accepted"
        );
    }
    assert!(matches!(
        store.create("x", 1000, 512),
        Err(StoreError::InvalidSize(_))
    ));
    assert!(matches!(
        store.create("x", 0, 512),
        Err(StoreError::InvalidSize(_))
    ));
    assert!(matches!(
        store.create("x", 4096, 1024),
        Err(StoreError::InvalidSize(_))
    ));
    store.create("b", 4096 * 10, 4096).unwrap();
    let names: Vec<_> = store.list().into_iter().map(|m| m.name).collect();
    assert_eq!(names, ["b", "vm-1.a"]);
    store.delete("b").unwrap();
    assert!(store.get("b").is_none());
    assert!(matches!(store.delete("b"), Err(StoreError::NotFound(_))));
    assert!(matches!(
        store.open_volume("b"),
        Err(StoreError::NotFound(_))
    ));
}

#[tokio::test]
async fn data_and_sizes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let id;
    {
        let store = Store::open(dir.path()).unwrap();
        id = store.installation_id();
        store.create("keep", 64 * 512, 512).unwrap();
        let v = store.open_volume("keep").unwrap();
        v.write(3, Bytes::from(vec![7u8; 1024]), true)
            .await
            .unwrap();
        v.resize(128).await.unwrap();
        v.write(127, Bytes::from(vec![9u8; 512]), false)
            .await
            .unwrap();
        v.flush().await.unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.installation_id(), id, "installation id changed");
    assert_eq!(store.get("keep").unwrap().size_bytes, 128 * 512);
    let v = store.open_volume("keep").unwrap();
    assert_eq!(v.num_blocks(), 128);
    assert_eq!(v.read(3, 2).await.unwrap(), vec![7u8; 1024]);
    assert_eq!(v.read(127, 1).await.unwrap(), vec![9u8; 512]);
}

#[tokio::test]
async fn deleting_closes_open_handles() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.create("gone", 1 << 20, 512).unwrap();
    let v = store.open_volume("gone").unwrap();
    store.delete("gone").unwrap();
    assert!(matches!(v.read(0, 1).await, Err(VolumeError::Closed)));
    assert!(matches!(
        v.write(0, Bytes::from(vec![1u8; 512]), false).await,
        Err(VolumeError::Closed)
    ));
}

#[test]
fn one_store_per_directory() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(dir.path()).unwrap();
    assert!(matches!(
        Store::open(dir.path()),
        Err(StoreError::Locked(_))
    ));
}

#[test]
fn crash_leftovers_are_cleaned_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store.create("ok", 1 << 20, 512).unwrap();
    }
    let vols = dir.path().join("volumes");
    std::fs::create_dir(vols.join("half-created")).unwrap();
    std::fs::write(vols.join("half-created/data"), b"x").unwrap();
    std::fs::create_dir(vols.join("0000.deleting")).unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.list().len(), 1);
    assert!(!vols.join("half-created").exists());
    assert!(!vols.join("0000.deleting").exists());
}

#[test]
fn damaged_metadata_is_reported_not_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let store = Store::open(dir.path()).unwrap();
        store.create("x", 1 << 20, 512).unwrap().id
    };
    std::fs::write(
        dir.path().join(format!("volumes/{id}/meta.json")),
        b"{not json",
    )
    .unwrap();
    match Store::open(dir.path()) {
        Err(e @ StoreError::BadMeta { .. }) => assert!(e.to_string().contains("meta.json")),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("damaged metadata was accepted"),
    }
}

#[tokio::test]
async fn thin_volumes_allocate_on_write_and_free_on_unmap() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.create("big", 1 << 40, 512).unwrap();
    assert!(store.allocated_bytes("big").unwrap() < 1 << 20);
    let v = store.open_volume("big").unwrap();
    let lba = (1u64 << 40) / 512 / 2;
    v.write(lba, Bytes::from(vec![0xabu8; 1 << 20]), true)
        .await
        .unwrap();
    let after_write = store.allocated_bytes("big").unwrap();
    assert!(
        after_write >= 1 << 20,
        "writing 1 MiB allocated only {after_write}"
    );
    v.unmap(lba, (1 << 20) / 512).await.unwrap();
    let after_unmap = store.allocated_bytes("big").unwrap();
    assert!(
        after_unmap < after_write,
        "unmap freed nothing ({after_unmap} bytes)"
    );
    assert!(v.read(lba, 2048).await.unwrap().iter().all(|&b| b == 0));
    let (state, run) = v.block_status(lba).await.unwrap();
    assert_eq!(state, volume::BlockState::Deallocated);
    assert!(run >= 2048);
}

/// With 512-byte blocks a filesystem block holds eight of them: the written
/// one is mapped, its unwritten neighbours are not (they read as zeros and
/// have no checksum), and a block written with zeros is mapped.
#[tokio::test]
async fn block_status_tells_written_blocks_inside_one_filesystem_block() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.create("small", 1 << 20, 512).unwrap();
    let v = store.open_volume("small").unwrap();
    v.write(9, Bytes::from(vec![0x5au8; 512]), true)
        .await
        .unwrap();
    v.write(12, Bytes::from(vec![0u8; 1024]), true)
        .await
        .unwrap();
    let status = |lba| {
        let v = v.clone();
        async move { v.block_status(lba).await.unwrap() }
    };
    assert_eq!(status(8).await, (volume::BlockState::Deallocated, 1));
    assert_eq!(status(9).await, (volume::BlockState::Mapped, 1));
    assert_eq!(status(10).await, (volume::BlockState::Deallocated, 2));
    assert_eq!(status(12).await, (volume::BlockState::Mapped, 2));
    assert_eq!(status(14).await, (volume::BlockState::Deallocated, 2));
    let (state, run) = status(16).await;
    assert_eq!(state, volume::BlockState::Deallocated);
    assert_eq!(run, 2048 - 16, "the rest of the volume is a hole");
    v.unmap(9, 1).await.unwrap();
    assert_eq!(status(8).await, (volume::BlockState::Deallocated, 4));
}

/// A volume made before snapshots existed has no snapshot files and the
/// same metadata as then: it opens unchanged and takes snapshots.
#[tokio::test]
async fn a_volume_from_before_snapshots_opens_unchanged_and_takes_them() {
    let dir = tempfile::tempdir().unwrap();
    let vdir = {
        let store = Store::open(dir.path()).unwrap();
        store.create("old", 1 << 20, 512).unwrap();
        let v = store.open_volume("old").unwrap();
        v.write(0, bytes::Bytes::from(vec![3u8; 4096]), true)
            .await
            .unwrap();
        store.volume_dir("old").unwrap()
    };
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vdir.join("meta.json")).unwrap()).unwrap();
    let mut keys: Vec<&str> = meta
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort();
    assert_eq!(keys, ["block_size", "created", "id", "name", "size_bytes"]);
    let mut files: Vec<String> = std::fs::read_dir(&vdir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["data", "data.crc32c", "data.dirty", "meta.json"]);

    let store = Store::open(dir.path()).unwrap();
    let v = store.open_volume("old").unwrap();
    assert_eq!(&v.read(0, 8).await.unwrap()[..], &[3u8; 4096][..]);
    let s = v.take_snapshot("first", false).await.unwrap();
    v.write(0, bytes::Bytes::from(vec![4u8; 4096]), true)
        .await
        .unwrap();
    assert_eq!(
        &v.read_snapshot(s.id, 0, 8).await.unwrap()[..],
        &[3u8; 4096][..]
    );
    assert!(vdir.join("snapshots").join("table").exists());
}
