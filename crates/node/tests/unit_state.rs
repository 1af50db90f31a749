//! Logical unit state kept by the node: persistent reservations with APTPL
//! survive a restart, those without do not; EXTENDED COPY reaches every
//! volume of the node.

use std::sync::Arc;

use bytes::Bytes;
use node::{Node, NodeConfig};
use portal::Targets;
use scsi::{LogicalUnit, Request, Status};
use store::Store;

const A: &str = "iqn.test:a,i,0x000000000001";

async fn start(dir: &std::path::Path) -> Node {
    let store = Arc::new(Store::open(dir).unwrap());
    Node::start(
        store,
        Arc::new(Targets::new()),
        NodeConfig {
            iqn_prefix: "iqn.2026-11.io.tandem".into(),
        },
    )
    .await
    .unwrap()
}

async fn run(lu: &LogicalUnit, cdb: &[u8], data: &[u8]) -> scsi::Response {
    let mut c = cdb.to_vec();
    c.resize(16, 0);
    lu.execute(Request {
        cdb: &c,
        data_out: Bytes::copy_from_slice(data),
        expected_len: 1 << 24,
        initiator: A,
    })
    .await
}

async fn ready(lu: &LogicalUnit) {
    lu.nexus_added(A);
    while run(lu, &[0x00], &[]).await.status != Status::Good {}
}

async fn register(lu: &LogicalUnit, key: u64, aptpl: bool) {
    let mut p = vec![0u8; 24];
    p[8..16].copy_from_slice(&key.to_be_bytes());
    p[20] = u8::from(aptpl);
    let r = run(lu, &[0x5F, 0x06, 0, 0, 0, 0, 0, 0, 24, 0], &p).await;
    assert_eq!(r.status, Status::Good);
}

async fn keys(lu: &LogicalUnit) -> Vec<u8> {
    let r = run(lu, &[0x5E, 0x00, 0, 0, 0, 0, 0, 0, 64, 0], &[]).await;
    r.data[8..].to_vec()
}

#[tokio::test]
async fn reservations_persist_only_with_aptpl() {
    let dir = tempfile::tempdir().unwrap();
    {
        let node = start(dir.path()).await;
        node.create_volume("kept", 1 << 20, 512, None)
            .await
            .unwrap();
        node.create_volume("lost", 1 << 20, 512, None)
            .await
            .unwrap();
        let kept = node.logical_unit("kept").await.unwrap();
        let lost = node.logical_unit("lost").await.unwrap();
        ready(&kept).await;
        ready(&lost).await;
        register(&kept, 0xC0FFEE, true).await;
        register(&lost, 0xBEEF, false).await;
    }
    let node = start(dir.path()).await;
    let kept = node.logical_unit("kept").await.unwrap();
    let lost = node.logical_unit("lost").await.unwrap();
    ready(&kept).await;
    ready(&lost).await;
    assert_eq!(keys(&kept).await, 0xC0FFEEu64.to_be_bytes());
    assert!(keys(&lost).await.is_empty());
}

#[tokio::test]
async fn extended_copy_between_volumes_of_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    node.create_volume("src", 1 << 20, 512, None).await.unwrap();
    node.create_volume("dst", 1 << 20, 512, None).await.unwrap();
    let src = node.logical_unit("src").await.unwrap();
    let dst = node.logical_unit("dst").await.unwrap();
    ready(&src).await;
    ready(&dst).await;
    let data: Vec<u8> = (0..64 * 512).map(|i| (i * 7 % 256) as u8).collect();
    src.volume()
        .write(0, Bytes::from(data.clone()), false)
        .await
        .unwrap();
    let naa = |lu: &LogicalUnit| lu.identity().naa.clone();
    let mut p = vec![0u8; 16];
    p[2..4].copy_from_slice(&64u16.to_be_bytes());
    p[8..12].copy_from_slice(&28u32.to_be_bytes());
    for id in [naa(&src), naa(&dst)] {
        let mut t = vec![0xE4, 0, 0, 0, 0x01, 0x03, 0, id.len() as u8];
        t.extend_from_slice(&id);
        t.resize(32, 0);
        p.extend(t);
    }
    let mut s = vec![0x02, 0, 0, 0x18, 0, 0, 0, 1, 0, 0, 0, 64];
    s.extend_from_slice(&0u64.to_be_bytes());
    s.extend_from_slice(&100u64.to_be_bytes());
    p.extend(s);
    let mut cdb = vec![0x83, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    cdb.extend_from_slice(&(p.len() as u32).to_be_bytes());
    let r = run(&src, &cdb, &p).await;
    assert_eq!(r.status, Status::Good, "{:?}", r.sense);
    assert_eq!(dst.volume().read(100, 64).await.unwrap(), data);
}
