//! Joining, resuming and leaving the cluster, and the loop that keeps this
//! node matching the cluster state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeMap;

use cluster::{Cluster, ClusterStatus, MemberVersion, NodeInfo, Role};
use replica::{ClusterKey, ReplicaServer};

use super::sessions::NodeView;
use super::{cluster_err, ClusterConfig, Clustered, ControlPlaneLink};
use crate::{Node, NodeError};

impl Node {
    fn me(cfg: &ClusterConfig) -> NodeInfo {
        NodeInfo {
            id: 0,
            name: cfg.name.clone(),
            role: Some(Role::Data),
            cluster_addr: cfg.endpoint(),
            iscsi_addr: format!("{}:{}", cfg.advertise, cfg.iscsi_port),
            repl_addr: format!("{}:{}", cfg.advertise, cfg.repl_listen.port()),
        }
    }

    fn cluster_dir(&self) -> std::path::PathBuf {
        cluster::default_dir(self.store.data_dir())
    }

    /// Rejoins the cluster this node was a member of, if any (at start).
    pub async fn resume_cluster(self: &Arc<Self>, cfg: &ClusterConfig) -> Result<bool, NodeError> {
        let dir = self.cluster_dir();
        if !Cluster::exists(&dir) {
            return Ok(false);
        }
        let c = Cluster::open(&dir, cfg.cluster_listen)
            .await
            .map_err(cluster_err)?;
        self.enter(c, cfg).await?;
        Ok(true)
    }

    /// Creates a cluster with this node as first member; returns the join token.
    pub async fn cluster_init(self: &Arc<Self>, cfg: &ClusterConfig) -> Result<String, NodeError> {
        if self.cluster.get().is_some() {
            return Err(NodeError::Invalid(
                "this node is already a cluster member".into(),
            ));
        }
        let (c, token) = Cluster::init(&self.cluster_dir(), Node::me(cfg), cfg.cluster_listen)
            .await
            .map_err(cluster_err)?;
        self.enter(c, cfg).await?;
        Ok(token)
    }

    /// Joins the cluster of `token` through the member at `seed`.
    pub async fn cluster_join(
        self: &Arc<Self>,
        cfg: &ClusterConfig,
        seed: &str,
        token: &str,
    ) -> Result<(), NodeError> {
        if self.cluster.get().is_some() {
            return Err(NodeError::Invalid(
                "this node is already a cluster member".into(),
            ));
        }
        let c = Cluster::join(
            &self.cluster_dir(),
            Node::me(cfg),
            cfg.cluster_listen,
            seed,
            token,
        )
        .await
        .map_err(cluster_err)?;
        self.enter(c, cfg).await
    }

    /// The cluster as this node sees it. Access rules are left out (they
    /// may hold CHAP secrets; `volume show` gives them without).
    pub async fn cluster_status(&self) -> Result<ClusterStatus, NodeError> {
        let mut status = self.member()?.cluster.status().await;
        for v in status.state.volumes.values_mut() {
            v.access = None;
        }
        Ok(status)
    }

    /// The release and log version of every member, asked of each now,
    /// and why each member that did not answer did not.
    pub async fn member_versions(
        &self,
    ) -> Result<(BTreeMap<u64, MemberVersion>, BTreeMap<u64, String>), NodeError> {
        let (mut known, mut unknown) = (BTreeMap::new(), BTreeMap::new());
        for (n, v) in self.member()?.cluster.member_versions().await {
            match v {
                Ok(v) => {
                    known.insert(n, v);
                }
                Err(e) => {
                    unknown.insert(n, e.to_string());
                }
            }
        }
        Ok((known, unknown))
    }

    /// Leaves the cluster: its copies are dropped and its primaries handed to
    /// in-sync copies; refused while it holds the only in-sync copy of a volume.
    pub async fn cluster_leave(&self) -> Result<(), NodeError> {
        let c = self.member()?;
        // Gone from the interface before the holder's record goes with the
        // node's: the leader may give it away as soon as it is.
        self.release_floating().await;
        c.cluster.leave().await.map_err(cluster_err)?;
        // The cluster no longer sends this node its log: drop the copies
        // here (the cluster state already did) rather than keep serving them.
        let mut vols = self.exported.lock().await;
        let names: Vec<String> = vols.presented().map(|(e, _)| e.name.clone()).collect();
        for name in names {
            self.release(&c, &mut vols, &name);
        }
        Ok(())
    }

    async fn enter(self: &Arc<Self>, c: Cluster, cfg: &ClusterConfig) -> Result<(), NodeError> {
        let key = ClusterKey::new(c.secret().bytes().to_vec());
        let server = ReplicaServer::new(key.clone());
        let listener = tokio::net::TcpListener::bind(cfg.repl_listen)
            .await
            .map_err(|e| {
                NodeError::Cluster(format!(
                    "cannot listen for replication on {}: {e}",
                    cfg.repl_listen
                ))
            })?;
        tokio::spawn(server.clone().serve(listener));
        let clustered = Arc::new_cyclic(|weak| Clustered {
            cluster: c,
            server,
            key,
            control: Arc::new(ControlPlaneLink {
                cluster: weak.clone(),
                node: Arc::downgrade(self),
                reports: std::sync::Mutex::new(HashMap::new()),
                events: self.events.clone(),
            }),
            taken_up: std::sync::Mutex::new(HashMap::new()),
            sealing: std::sync::Mutex::default(),
            wake: tokio::sync::Notify::new(),
            floating: Default::default(),
            iscsi_port: cfg.iscsi_port,
        });
        if self.cluster.set(clustered.clone()).is_err() {
            return Err(NodeError::Invalid(
                "this node is already a cluster member".into(),
            ));
        }
        // Other members ask this node for its sessions; discovery names the
        // other data nodes' portals, and this portal announces the tag of
        // this node's target port group (its id), as ALUA reports it.
        let view = Arc::new(NodeView::new(
            &clustered,
            &self.targets,
            &self.config.iqn_prefix,
        ));
        clustered.cluster.serve_sessions(view.clone());
        clustered.serve_handover(self);
        // A portal that redirects logins to a volume's primary sends none
        // to a primary the leader has not heard from lately.
        if self.targets.redirects_logins() {
            view.heard.follow(&clustered);
        }
        self.targets
            .set_portal_group_tag(clustered.cluster.id() as u16);
        self.targets.set_directory(view);
        // The first reconcile happens before this returns, so a node that
        // opens its portal afterwards never presents a copy without a role.
        let mut watch = clustered.cluster.subscribe();
        let first = watch.borrow_and_update().clone();
        self.reconcile(&first).await;
        self.follow_floating(&clustered);
        let node = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(n) = node.upgrade() else { return };
                let state = watch.borrow_and_update().clone();
                n.reconcile(&state).await;
                // Changes wake us at once; the tick retries what failed.
                let Some(c) = n.clustered() else { return };
                drop(n);
                let woken = async {
                    tokio::select! {
                        _ = watch.changed() => {}
                        _ = c.wake.notified() => {}
                    }
                };
                let _ = tokio::time::timeout(Duration::from_millis(500), woken).await;
            }
        });
        Ok(())
    }
}
