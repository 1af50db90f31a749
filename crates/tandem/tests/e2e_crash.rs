//! Crash consistency: `tandem serve` is killed with SIGKILL in the middle of
//! a stream of writes, at a different moment each round, and restarted. Every
//! write acknowledged as durable (WRITE with FUA, or any write followed by a
//! SYNCHRONIZE CACHE that completed) must read back intact; a block may hold a
//! newer write that was in flight, never an older one, never garbage.
//!
//! Rounds: `TANDEM_CRASH_ROUNDS` (default 5; raise it for a soak run).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{node_prefix, Server};
use rand::{Rng, SeedableRng};
use testkit::history::{block, History};
use testkit::{rw16, Initiator};

const BLOCK: usize = 512;
/// Blocks per write; writes land on extents of this size.
const EXTENT: u64 = 8;
/// Extents the writes spread over.
const EXTENTS: u64 = 64;

async fn session(addr: SocketAddr) -> Initiator {
    let target = format!("{}:crash", node_prefix());
    let mut i = Initiator::normal(addr, &target, &[]).await;
    while i.simple(&[0u8; 6]).await.0 != 0 {}
    i
}

/// Writes until the connection dies; records what was issued and what was
/// acknowledged as durable.
async fn write_until_killed(addr: SocketAddr, seed: u64, next_seq: &mut u64, h: &mut History) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut i = session(addr).await;
    let mut unsynced: Vec<(u64, u64)> = Vec::new();
    loop {
        let extent = rng.gen_range(0..EXTENTS) * EXTENT;
        *next_seq += 1;
        let seq = *next_seq;
        let fua = rng.gen_bool(0.5);
        let mut data = Vec::with_capacity(EXTENT as usize * BLOCK);
        for lba in extent..extent + EXTENT {
            data.extend(block(seq, lba, BLOCK));
        }
        h.issued(extent, EXTENT, seq);
        let Some(o) = i
            .run(&rw16(0x8A, extent, EXTENT as u32, fua), &data, 0)
            .await
        else {
            return;
        };
        assert_eq!(o.status, 0, "write failed before the crash");
        if fua {
            h.durable(extent, EXTENT, seq);
        } else {
            unsynced.push((extent, seq));
        }
        if unsynced.len() >= 4 {
            let Some(o) = i.run(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 0).await else {
                return;
            };
            assert_eq!(o.status, 0, "SYNCHRONIZE CACHE failed");
            for (extent, seq) in unsynced.drain(..) {
                h.durable(extent, EXTENT, seq);
            }
        }
    }
}

async fn verify(addr: SocketAddr, h: &History) {
    let mut i = session(addr).await;
    let blocks = (EXTENTS * EXTENT) as u32;
    let o = i
        .run(&rw16(0x88, 0, blocks, false), &[], blocks * BLOCK as u32)
        .await
        .expect("read after restart");
    assert_eq!(o.status, 0);
    if let Err(errors) = h.check_range(0, &o.data, BLOCK) {
        panic!("{} blocks wrong after restart: {:#?}", errors.len(), errors);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let rounds: u64 = std::env::var("TANDEM_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"));
    server.cli_ok(&["volume", "create", "crash", "--size", "64M"]);
    let addr: SocketAddr = format!("127.0.0.1:{}", server.iscsi_port).parse().unwrap();
    let mut h = History::default();
    let mut seq = 0u64;
    for round in 0..rounds {
        let kill_after = Duration::from_millis(50 + (round * 137) % 450);
        let writer = async { write_until_killed(addr, round, &mut seq, &mut h).await };
        let killer = async {
            tokio::time::sleep(kill_after).await;
            server.kill();
        };
        tokio::join!(writer, killer);
        server.restart();
        verify(addr, &h).await;
    }
    assert!(
        h.acknowledged() > 0,
        "no write was acknowledged: the test proved nothing"
    );
}
