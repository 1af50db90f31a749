//! Silent damage on disk: data written over iSCSI, the server stopped, one
//! byte of one block flipped in the volume's data file, the server started
//! again. Reading that block gets CHECK CONDITION, MEDIUM ERROR, UNRECOVERED
//! READ ERROR (never the damaged bytes); its neighbours read fine; writing
//! the block again heals it, and the damage is logged with volume and LBA
//! and counted in the node's event history.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::FileExt;

use common::{node_prefix, Server};
use testkit::{rw16, Initiator};

const BLOCK: usize = 512;
const BLOCKS: u32 = 64;
const DAMAGED: u64 = 10;

fn pattern(lba: u64) -> Vec<u8> {
    (0..BLOCK as u64)
        .map(|i| (lba * 7 + i) as u8 | 0x80)
        .collect()
}

async fn session(addr: SocketAddr) -> Initiator {
    let target = format!("{}:rot", node_prefix());
    let mut i = Initiator::normal(addr, &target, &[]).await;
    // The first command after login may report a unit attention.
    while i.simple(&[0u8; 6]).await.0 != 0 {}
    i
}

async fn read(i: &mut Initiator, lba: u64, blocks: u32) -> testkit::Outcome {
    i.run(&rw16(0x88, lba, blocks, false), &[], blocks * BLOCK as u32)
        .await
        .expect("the connection stays up")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_block_is_a_medium_error_and_a_rewrite_heals_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"));
    server.cli_ok(&["volume", "create", "rot", "--size", "16M"]);
    let addr: SocketAddr = format!("127.0.0.1:{}", server.iscsi_port).parse().unwrap();

    let mut i = session(addr).await;
    let data: Vec<u8> = (0..BLOCKS as u64).flat_map(pattern).collect();
    let o = i
        .run(&rw16(0x8A, 0, BLOCKS, false), &data, 0)
        .await
        .unwrap();
    assert_eq!(o.status, 0, "write failed");
    drop(i);
    server.stop();

    let vdir = std::fs::read_dir(dir.path().join("data/volumes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("meta.json").exists())
        .expect("the volume's directory");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(vdir.join("data"))
        .unwrap();
    let at = DAMAGED * BLOCK as u64 + 123;
    let mut b = [0u8];
    file.read_exact_at(&mut b, at).unwrap();
    file.write_all_at(&[b[0] ^ 0x04], at).unwrap();
    file.sync_all().unwrap();
    drop(file);

    server.restart();
    let mut i = session(addr).await;
    let o = read(&mut i, DAMAGED, 1).await;
    assert_eq!(o.status, 2, "a damaged block must not read as GOOD");
    assert_eq!(o.sense_key, 3, "MEDIUM ERROR");
    assert_eq!(o.asc, (0x11, 0x00), "UNRECOVERED READ ERROR");
    assert!(o.data.iter().all(|&b| b == 0), "no damaged data goes out");
    let o = read(&mut i, 0, BLOCKS).await;
    assert_eq!(
        (o.status, o.sense_key),
        (2, 3),
        "a read over the damage fails too"
    );

    for lba in [DAMAGED - 1, DAMAGED + 1] {
        let o = read(&mut i, lba, 1).await;
        assert_eq!(o.status, 0, "neighbour {lba} of the damage");
        assert_eq!(o.data, pattern(lba));
    }
    let o = read(&mut i, 0, DAMAGED as u32).await;
    assert_eq!(o.status, 0);
    assert_eq!(o.data, data[..DAMAGED as usize * BLOCK]);

    let log = common::log::plain(&server.log_text());
    assert!(
        log.lines()
            .any(|l| l.contains("does not match its checksum")
                && l.contains("volume=rot")
                && l.contains("lba=10")),
        "the damage is logged with volume and LBA:\n{log}"
    );
    // The node's event history has the two MEDIUM ERROR answers.
    common::cluster::wait_until("the checksum errors in the event history", 10, || {
        let out = server.cli_ok(&["events", "--json", "--kind", "checksum-error"]);
        let events: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        events
            .iter()
            .filter(|e| e["volume"] == "rot")
            .filter_map(|e| e["fields"]["errors"].as_u64())
            .sum::<u64>()
            == 2
    });
    assert!(
        !log.contains("not shut down cleanly"),
        "a SIGTERM stop is a clean one: nothing to recheck at the restart:\n{log}"
    );

    // Writing the block again heals it.
    let o = i
        .run(&rw16(0x8A, DAMAGED, 1, true), &pattern(DAMAGED), 0)
        .await
        .unwrap();
    assert_eq!(o.status, 0, "rewrite of the damaged block");
    let o = read(&mut i, 0, BLOCKS).await;
    assert_eq!(o.status, 0, "the block healed");
    assert_eq!(o.data, data);
    drop(i);
    server.stop();
}
