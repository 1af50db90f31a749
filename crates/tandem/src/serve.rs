//! `tandem serve`: opens the store, exports its volumes over iSCSI, serves the
//! management API, and shuts down cleanly on SIGINT/SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::config::ServeConfig;

/// Runs a node until SIGINT or SIGTERM.
pub async fn run(cfg: ServeConfig, cluster: node::ClusterConfig) -> anyhow::Result<()> {
    init_logging();
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

    let iscsi = TcpListener::bind(cfg.iscsi_listen)
        .await
        .with_context(|| format!("cannot listen for iSCSI on {}", cfg.iscsi_listen))?;
    let api_listener = TcpListener::bind(cfg.api_listen)
        .await
        .with_context(|| format!("cannot listen for the management API on {}", cfg.api_listen))?;
    tracing::info!(
        data_dir = %cfg.data_dir.display(),
        iscsi = %iscsi.local_addr()?,
        api = %api_listener.local_addr()?,
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
    let target_task = tokio::spawn(portal::serve(
        iscsi,
        targets.clone(),
        portal::TargetConfig::default(),
        stopped(stop_rx.clone()),
    ));
    let api_router = api::router(node.clone(), token, cluster);
    let api_stop = stopped(stop_rx.clone());
    let api_task = tokio::spawn(async move {
        axum::serve(api_listener, api_router)
            .with_graceful_shutdown(api_stop)
            .await
    });

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
    node.flush_all().await?;
    tracing::info!("all volumes synced; bye");
    Ok(())
}

/// Runs a witness until SIGTERM/SIGINT: joins on first start, rejoins after.
pub async fn witness(
    dir: &std::path::Path,
    listen: std::net::SocketAddr,
    me: cluster::NodeInfo,
    join: Option<String>,
    token: Option<String>,
) -> anyhow::Result<()> {
    init_logging();
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
    tracing::info!(node = c.id(), %listen, "witness serving");
    wait_for_signal().await?;
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

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TANDEM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
