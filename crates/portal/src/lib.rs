//! The iSCSI target: accepts TCP connections, runs login, discovery and
//! normal sessions (RFC 7143), and hands SCSI commands to the logical units
//! registered in [`Targets`].
#![forbid(unsafe_code)]

mod connection;
mod io;
mod registry;
mod reply;
mod session;

pub use registry::{
    Portal, PortalDirectory, RefusalObserver, RefusedLogin, Serving, SessionInfo, TargetAccess,
    Targets,
};

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Settings of the iSCSI portal.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// What login negotiation offers (burst sizes, data segment size, TPGT).
    pub limits: iscsi::TargetLimits,
    /// Commands a session may have outstanding (the CmdSN window).
    pub queue_depth: u32,
    /// Idle time after which the target pings the initiator with a NOP-In.
    pub nop_interval: Duration,
    /// How long a ping may go unanswered before the connection is dropped.
    pub nop_timeout: Duration,
    /// Time allowed for a whole login.
    pub login_timeout: Duration,
    /// Largest expected data transfer length of one command.
    pub max_transfer: u32,
    /// Most connections served at once; more are refused at accept.
    pub max_connections: usize,
    /// Most connections from one source address; more are refused at accept,
    /// so one misbehaving host cannot starve the others.
    pub max_connections_per_source: usize,
    /// How long shutdown waits for in-flight commands.
    pub drain_timeout: Duration,
}

impl Default for TargetConfig {
    fn default() -> Self {
        TargetConfig {
            limits: iscsi::TargetLimits::default(),
            queue_depth: 128,
            nop_interval: Duration::from_secs(15),
            nop_timeout: Duration::from_secs(15),
            login_timeout: Duration::from_secs(15),
            max_transfer: 16 * 1024 * 1024,
            max_connections: 1024,
            max_connections_per_source: 256,
            drain_timeout: Duration::from_secs(25),
        }
    }
}

/// Serves iSCSI on `listener` until `shutdown` completes; then stops
/// accepting, lets in-flight commands finish (up to `drain_timeout`) and
/// closes every connection.
pub async fn serve(
    listener: TcpListener,
    targets: Arc<Targets>,
    config: TargetConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let config = Arc::new(config);
    let per_source: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "cannot accept an iSCSI connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if conns.len() >= config.max_connections {
                    targets.count_refused(RefusedLogin::TooManyConnections, &peer.to_string(), "");
                    tracing::warn!(%peer, limit = config.max_connections, "refusing iSCSI connection: too many connections");
                    continue;
                }
                let source = peer.ip();
                let from_source = {
                    let mut m = per_source.lock().unwrap();
                    let n = m.entry(source).or_insert(0);
                    *n += 1;
                    *n
                };
                let slot = SourceSlot { map: per_source.clone(), source };
                if from_source > config.max_connections_per_source {
                    targets.count_refused(RefusedLogin::TooManyConnections, &peer.to_string(), "");
                    tracing::warn!(%peer, limit = config.max_connections_per_source, "refusing iSCSI connection: too many connections from this address");
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let run = connection::run(stream, peer, targets.clone(), config.clone(), stop_rx.clone());
                conns.spawn(async move {
                    let _slot = slot;
                    run.await
                });
            }
        }
    }
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(config.drain_timeout, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = conns.len(),
            "iSCSI connections did not drain in time; closing them"
        );
        conns.shutdown().await;
    }
    Ok(())
}

/// One connection counted against its source address; released on drop.
struct SourceSlot {
    map: Arc<Mutex<HashMap<IpAddr, usize>>>,
    source: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap();
        if let Some(n) = m.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.source);
            }
        }
    }
}
