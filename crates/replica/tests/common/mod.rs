//! What the tests of primary roles share: the cluster key, a primary role
//! started over a copy with its peers connected, and the wait for a copy's
//! activity log to settle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use replica::{ClusterKey, Control, LocalCopy, PeerSpec, Primary, PrimaryConfig};

/// The key every test node shares.
pub fn key() -> ClusterKey {
    ClusterKey::new(b"test cluster secret".to_vec())
}

/// The primary role over `copy` (node `me`) at `epoch`, with `peers` as
/// (replication address, node id); those in `away` are out of sync (and
/// need not be connected). Returns once the others are connected.
pub async fn role(
    copy: Arc<LocalCopy>,
    me: u64,
    epoch: u64,
    peers: &[(SocketAddr, u64)],
    away: &[u64],
    control: Arc<dyn Control>,
) -> Arc<Primary> {
    let specs = peers
        .iter()
        .map(|(addr, id)| PeerSpec {
            node: *id,
            addr: addr.to_string(),
            in_sync: !away.contains(id),
        })
        .collect();
    let cfg = PrimaryConfig {
        node: me,
        epoch,
        key: key(),
        timeout: Duration::from_secs(2),
    };
    let p = Primary::start(copy, cfg, specs, control).await.unwrap();
    let t = Instant::now();
    while !p
        .peer_status()
        .iter()
        .all(|s| s.connected || away.contains(&s.node))
    {
        assert!(t.elapsed() < Duration::from_secs(20), "peers connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p
}

/// Waits (at most 20 s) until the primary's sweeps have settled the
/// activity log of `copy`, the copy on node `who`: it no longer counts any
/// region as written without knowing whether it is durable.
#[allow(dead_code)] // not every test binary waits for it
pub async fn settled(copy: &LocalCopy, who: &str) {
    let t = Instant::now();
    while !copy.suspect_ranges().is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{who}'s activity log settles"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
