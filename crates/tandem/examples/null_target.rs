//! A Tandem iSCSI portal whose one LUN is a null volume (reads return zeros,
//! writes are dropped): the protocol path alone, for the benchmark's
//! "null backend" column.
//!
//!     cargo run --release -p tandem --example null_target -- 127.0.0.1:3261 1G
//!
//! Serves `iqn.2026-11.io.tandem:null` LUN 0 until killed.

use std::sync::Arc;

use portal::{TargetConfig, Targets};
use scsi::LogicalUnit;
use volume::NullVolume;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:3261".into());
    let size: u64 = args
        .next()
        .map(|s| {
            let (n, mult) = match s.chars().last() {
                Some('G') => (&s[..s.len() - 1], 1u64 << 30),
                Some('M') => (&s[..s.len() - 1], 1 << 20),
                _ => (s.as_str(), 1),
            };
            n.parse::<u64>().expect("size like 1G or 512M") * mult
        })
        .unwrap_or(1 << 30);
    let iqn = format!("{}:null", node::DEFAULT_IQN_PREFIX);
    let identity = node::lun_identity(uuid::Uuid::new_v4(), uuid::Uuid::new_v4(), &iqn);
    let lu = LogicalUnit::new(Arc::new(NullVolume::new(512, size / 512)), identity);
    let targets = Arc::new(Targets::new());
    targets.insert(iqn, Arc::new(lu));
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    portal::serve(
        listener,
        targets,
        TargetConfig::default(),
        std::future::pending(),
    )
    .await
}
