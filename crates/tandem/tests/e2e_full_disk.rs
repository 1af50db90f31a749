//! A full disk: a thin volume far larger than the filesystem under it. Writes
//! beyond the free space get DATA PROTECT, SPACE ALLOCATION FAILED WRITE
//! PROTECT; before that, initiators hear THIN PROVISIONING SOFT THRESHOLD
//! REACHED; nothing already stored is damaged, reads go on, and space given
//! back with UNMAP can be written again.
//!
//! The data directory lives on a small tmpfs, so the test needs to be able to
//! mount one (root in a container or VM, as CI is); elsewhere it says so and
//! does nothing.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{node_prefix, Server};
use testkit::{rw16, Initiator};

const CHUNK_BLOCKS: u32 = 2048; // 1 MiB
const CHUNK: usize = CHUNK_BLOCKS as usize * 512;

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn chunk(i: u64) -> Vec<u8> {
    (0..CHUNK)
        .map(|b| (i as usize * 31 + b / 512) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_beyond_free_space_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&dir.path().join("small"), "48M") else {
        eprintln!("full-disk test not run: cannot mount a tmpfs here (needs root)");
        return;
    };
    let mut server = Server::start(&fs.0.join("data"));
    server.cli_ok(&["volume", "create", "thin", "--size", "1G"]);
    let addr: SocketAddr = format!("127.0.0.1:{}", server.iscsi_port).parse().unwrap();
    let target = format!("{}:thin", node_prefix());
    let mut i = Initiator::normal(addr, &target, &[]).await;
    while i.simple(&[0u8; 6]).await.0 != 0 {}

    let mut written = 0u64;
    let mut soft_threshold_seen = false;
    let failure = loop {
        let lba = written * CHUNK_BLOCKS as u64;
        let o = i
            .run(&rw16(0x8A, lba, CHUNK_BLOCKS, false), &chunk(written), 0)
            .await
            .expect("the target answers");
        match (o.status, o.sense_key, o.asc) {
            (0, _, _) => written += 1,
            (2, 0x6, (0x38, 0x07)) => soft_threshold_seen = true, // retried
            _ => break o,
        }
        assert!(written < 200, "a 48 MiB filesystem took 200 MiB");
    };
    assert_eq!(
        (failure.status, failure.sense_key, failure.asc),
        (2, 0x7, (0x27, 0x07)),
        "the write that did not fit"
    );
    assert!(written >= 10, "only {written} MiB fit");
    assert!(
        soft_threshold_seen,
        "no soft threshold warning before the disk filled"
    );

    // Everything acknowledged before is intact, and reads still work.
    for c in 0..written {
        let o = i
            .run(
                &rw16(0x88, c * CHUNK_BLOCKS as u64, CHUNK_BLOCKS, false),
                &[],
                CHUNK as u32,
            )
            .await
            .unwrap();
        assert_eq!(o.status, 0);
        assert!(o.data == chunk(c), "chunk {c} damaged by the full disk");
    }

    // UNMAP gives the first half back; writing there works again.
    let half = written / 2 * CHUNK_BLOCKS as u64;
    let mut list = vec![0u8; 24];
    list[0..2].copy_from_slice(&22u16.to_be_bytes());
    list[2..4].copy_from_slice(&16u16.to_be_bytes());
    list[8..16].copy_from_slice(&0u64.to_be_bytes());
    list[16..20].copy_from_slice(&(half as u32).to_be_bytes());
    let o = i
        .run(&[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &list, 0)
        .await
        .unwrap();
    assert_eq!(o.status, 0, "UNMAP");
    let o = i
        .run(&rw16(0x8A, 0, CHUNK_BLOCKS, true), &chunk(999), 0)
        .await
        .unwrap();
    assert_eq!(o.status, 0, "a write after space came back");
    drop(i);
    server.stop();
}

/// A snapshot's copy of a grain that no longer fits: the write that needed
/// it fails with SPACE ALLOCATION FAILED and changes nothing, every write
/// before it stands, and the snapshot still reads as taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_for_a_snapshot_that_does_not_fit_fails_the_write_alone() {
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&dir.path().join("small"), "48M") else {
        eprintln!("full-disk test not run: cannot mount a tmpfs here (needs root)");
        return;
    };
    let mut server = Server::start(&fs.0.join("data"));
    server.cli_ok(&["volume", "create", "thin", "--size", "1G"]);
    let addr: SocketAddr = format!("127.0.0.1:{}", server.iscsi_port).parse().unwrap();
    let mut i = Initiator::normal(addr, &format!("{}:thin", node_prefix()), &[]).await;
    while i.simple(&[0u8; 6]).await.0 != 0 {}
    let write = |c: u64, v: u64| {
        (
            rw16(0x8A, c * CHUNK_BLOCKS as u64, CHUNK_BLOCKS, false),
            chunk(v),
        )
    };
    let chunks = 28u64;
    for c in 0..chunks {
        let (cdb, data) = write(c, c);
        let o = i.run(&cdb, &data, 0).await.unwrap();
        assert_eq!(o.status, 0, "filling chunk {c}");
    }
    server.cli_ok(&["snapshot", "create", "thin", "--name", "full"]);
    // Overwriting copies each chunk into the snapshot first, until that
    // no longer fits.
    let mut over = 0u64;
    let failure = loop {
        assert!(over < chunks, "the filesystem took every copy");
        let (cdb, data) = write(over, 1000 + over);
        let o = i.run(&cdb, &data, 0).await.unwrap();
        match (o.status, o.sense_key, o.asc) {
            (0, _, _) => over += 1,
            (2, 0x6, (0x38, 0x07)) => {} // the soft threshold; sent again
            _ => break o,
        }
    };
    assert_eq!(
        (failure.status, failure.sense_key, failure.asc),
        (2, 0x7, (0x27, 0x07)),
        "the write whose copy did not fit"
    );
    assert!(over >= 4, "only {over} copies fit");
    let read = |c: u64| rw16(0x88, c * CHUNK_BLOCKS as u64, CHUNK_BLOCKS, false);
    for c in 0..chunks {
        let o = i.run(&read(c), &[], CHUNK as u32).await.unwrap();
        assert_eq!(o.status, 0);
        let want = if c < over { chunk(1000 + c) } else { chunk(c) };
        assert!(o.data == want, "chunk {c} is not what was acknowledged");
    }
    // Space back (a chunk already copied is unmapped), then a clone of
    // the snapshot reads it whole, as taken.
    let mut list = vec![0u8; 24];
    list[0..2].copy_from_slice(&22u16.to_be_bytes());
    list[2..4].copy_from_slice(&16u16.to_be_bytes());
    list[16..20].copy_from_slice(&(2 * CHUNK_BLOCKS).to_be_bytes());
    let o = i
        .run(&[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &list, 0)
        .await
        .unwrap();
    assert_eq!(o.status, 0, "UNMAP of chunks the snapshot keeps already");
    server.cli_ok(&["volume", "clone", "thin", "back", "--snapshot", "full"]);
    let mut b = Initiator::normal(addr, &format!("{}:back", node_prefix()), &[]).await;
    while b.simple(&[0u8; 6]).await.0 != 0 {}
    for c in 0..chunks {
        let o = b.run(&read(c), &[], CHUNK as u32).await.unwrap();
        assert_eq!(o.status, 0);
        assert!(o.data == chunk(c), "the snapshot lost chunk {c}");
    }
    drop((i, b));
    server.stop();
}
