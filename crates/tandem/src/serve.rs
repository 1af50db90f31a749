//! `tandem serve`: opens the store, exports its volumes over iSCSI, serves the
//! management API, and shuts down cleanly on SIGINT/SIGTERM.

use std::io::IsTerminal as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::config::{LogFormat, ServeConfig};

/// Runs a node until SIGINT or SIGTERM.
pub async fn run(cfg: ServeConfig, cluster: node::ClusterConfig) -> anyhow::Result<()> {
    init_logging(cfg.log_format);
    // The addresses first: a busy port is reported before anything is
    // written, and a new installation is not made for a node that cannot
    // serve. They listen only once the node is ready (the API once its
    // token exists, iSCSI once every volume is presented in its role).
    let iscsi = bound(cfg.iscsi_listen)
        .with_context(|| format!("cannot listen for iSCSI on {}", cfg.iscsi_listen))?;
    let api_socket = bound(cfg.api_listen)
        .with_context(|| format!("cannot listen for the management API on {}", cfg.api_listen))?;
    let metrics_socket = match cfg.metrics_listen {
        Some(addr) => {
            Some(bound(addr).with_context(|| format!("cannot listen for metrics on {addr}"))?)
        }
        None => None,
    };
    let listen = api::Listeners {
        iscsi: iscsi.local_addr()?.to_string(),
        api: api_socket.local_addr()?.to_string(),
        cluster: cluster.cluster_listen.to_string(),
        replication: cluster.repl_listen.to_string(),
    };
    check_data_dir(&cfg.data_dir)?;
    let store = Arc::new(
        store::Store::open(&cfg.data_dir)
            .with_context(|| format!("cannot open data directory {}", cfg.data_dir.display()))?,
    );
    let targets = Arc::new(portal::Targets::new());
    // Takes effect once the node is a cluster member: only its directory
    // knows where a volume's primary is.
    targets.set_redirect_logins(cfg.redirect_to_primary);
    let node = Arc::new(
        node::Node::start(
            store.clone(),
            targets.clone(),
            node::NodeConfig {
                iqn_prefix: cfg.iqn_prefix.clone(),
            },
        )
        .await?,
    );
    // Counters and the cluster's view, read for the event history.
    node.watch_events();

    tracing::info!(
        data_dir = %cfg.data_dir.display(),
        iscsi = %iscsi.local_addr()?,
        api = %api_socket.local_addr()?,
        installation = %store.installation_id(),
        threads = tokio::runtime::Handle::current().metrics().num_workers(),
        redirect_to_primary = cfg.redirect_to_primary,
        "tandem serving"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let token = store
        .api_token()
        .context("cannot create the management API token")?;
    tracing::info!(
        token_file = %cfg.data_dir.join("api.token").display(),
        "management API requires the token in this file"
    );
    if node.resume_cluster(&cluster).await? {
        tracing::info!(
            control = %cluster.cluster_listen,
            replication = %cluster.repl_listen,
            "rejoined the cluster"
        );
    }
    // Initiators are let in only now: every copy of a cluster volume is
    // presented in the role the cluster state gives it (or as waiting for
    // one), never as a plain local volume in the moments before.
    let api_listener = api_socket.listen(1024)?;
    let iscsi = iscsi.listen(1024)?;
    let target_task = tokio::spawn(portal::serve(
        iscsi,
        targets.clone(),
        portal::TargetConfig::default(),
        stopped(stop_rx.clone()),
    ));
    let api_router = api::serving_router(node.clone(), token, cluster, listen);
    let api_stop = stopped(stop_rx.clone());
    let api_task = tokio::spawn(async move {
        axum::serve(api_listener, api_router)
            .with_graceful_shutdown(api_stop)
            .await
    });

    let metrics_task = match metrics_socket {
        Some(socket) => {
            let l = socket.listen(1024)?;
            tracing::info!(metrics = %l.local_addr()?, "metrics served without the API token");
            let router = api::metrics_router(node.clone());
            let stop = stopped(stop_rx.clone());
            Some(tokio::spawn(async move {
                axum::serve(l, router).with_graceful_shutdown(stop).await
            }))
        }
        None => None,
    };

    wait_for_signal().await?;
    // Before the drain, which may take a while: another node can take the
    // floating address over at once.
    node.release_floating().await;
    tracing::info!("shutting down: draining in-flight commands");
    let _ = stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(30), target_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "iSCSI portal stopped with an error"),
        Ok(Err(e)) => tracing::error!(error = %e, "iSCSI portal task failed"),
        Err(_) => tracing::warn!("in-flight iSCSI commands did not finish within 30 s"),
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), api_task).await;
    if let Some(t) = metrics_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    node.flush_all().await?;
    tracing::info!("all volumes synced; bye");
    Ok(())
}

/// A socket bound to `addr` (address reuse on, as a listener's), not yet
/// listening: connections are refused until [`tokio::net::TcpSocket::listen`].
fn bound(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// Runs a witness until SIGTERM/SIGINT: joins on first start, rejoins after.
pub async fn witness(
    dir: &std::path::Path,
    listen: std::net::SocketAddr,
    me: cluster::NodeInfo,
    join: Option<String>,
    token: Option<String>,
    log_format: LogFormat,
    metrics_listen: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    init_logging(log_format);
    // Bound before anything is written: a busy port is reported first.
    let metrics_socket = match metrics_listen {
        Some(addr) => {
            Some(bound(addr).with_context(|| format!("cannot listen for metrics on {addr}"))?)
        }
        None => None,
    };
    let c = if cluster::Cluster::exists(dir) {
        cluster::Cluster::open(dir, listen).await?
    } else {
        let (Some(seed), Some(token)) = (join, token) else {
            anyhow::bail!(
                "{} holds no witness yet: give --join <member's cluster endpoint> and --token <join token>",
                dir.display()
            );
        };
        cluster::Cluster::join(dir, me, listen, &seed, &token).await?
    };
    let c = Arc::new(c);
    tracing::info!(node = c.id(), %listen, "witness serving");
    let metrics_task = match metrics_socket {
        Some(socket) => {
            let l = socket.listen(64)?;
            tracing::info!(metrics = %l.local_addr()?, "metrics served without a token");
            let router = api::witness_metrics_router(c.clone(), dir.to_path_buf());
            Some(tokio::spawn(async move { axum::serve(l, router).await }))
        }
        None => None,
    };
    wait_for_signal().await?;
    if let Some(t) = metrics_task {
        t.abort();
    }
    c.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Checks the data directory before the store opens (and perhaps makes)
/// it: an existing one must be a writable directory; a new one is made only
/// in an existing parent, so that a mistyped path is refused rather than
/// becoming a new, empty installation.
fn check_data_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => bail!("data directory {} is not a directory", dir.display()),
        Ok(_) => {
            let probe = dir.join(".tandem-write-check");
            match std::fs::File::create(&probe) {
                Ok(_) => {
                    let _ = std::fs::remove_file(&probe);
                    Ok(())
                }
                Err(e) => bail!(
                    "data directory {} is not writable by this user ({e})",
                    dir.display()
                ),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            if !parent.is_dir() {
                bail!(
                    "data directory {} does not exist, nor does {}: a new installation is made \
                     only inside an existing directory (check the path, or create {} first)",
                    dir.display(),
                    parent.display(),
                    parent.display()
                );
            }
            Ok(())
        }
        Err(e) => bail!("cannot look at data directory {} ({e})", dir.display()),
    }
}

/// What a server logs unless `TANDEM_LOG` says otherwise: its own events;
/// of the Raft engine's only errors (its routine state dumps and warnings
/// are for its developers).
const DEFAULT_LOG: &str = "info,openraft=error";

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TANDEM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        // Colour only for a person at a terminal, not in a file or the journal.
        LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => fmt.json().with_ansi(false).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_default_log_leaves_out_the_raft_engine_chatter() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(DEFAULT_LOG))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "openraft::core::raft_core", "RaftState {{ vote: .. }}");
            tracing::warn!(target: "openraft::engine", "membership_log_id changed ... ignore");
            tracing::error!(target: "openraft::storage", "storage failed");
            tracing::info!(target: "node", "tandem serving");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("tandem serving"), "{text}");
        assert!(text.contains("storage failed"), "{text}");
        assert!(!text.contains("RaftState"), "{text}");
        assert!(!text.contains("membership_log_id"), "{text}");
    }

    #[test]
    fn a_data_dir_in_a_missing_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let typo = dir.path().join("no-such-dir").join("data");
        let err = check_data_dir(&typo).unwrap_err().to_string();
        assert!(err.contains("no-such-dir"), "{err}");
        assert!(!dir.path().join("no-such-dir").exists());
        check_data_dir(&dir.path().join("data")).unwrap();
        check_data_dir(dir.path()).unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(check_data_dir(&file).is_err());
    }
}
