//! A running member: starting one (init, join, open), its Raft instance and
//! endpoint, what it offers the node (state, lease, proposals, status), and
//! leaving.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::storage::Adaptor;
use openraft::{BasicNode, Raft};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::data_key::{self, DataKey};
use crate::files::{local, write_private};
use crate::http::{is_not_leader, Answer, JoinRequest, NodeRequest};
use crate::raft_net::Net;
use crate::raft_store::RaftStore;
use crate::token::{join_token, parse_token};
use crate::{
    net, ClusterError, ClusterState, ClusterStatus, Command, Key, MemberVersion, NodeId, NodeInfo,
    Outcome, Refusal, TypeConfig,
};

/// Largest snapshot piece sent in one install-snapshot call.
const SNAPSHOT_CHUNK: usize = 64 * 1024;

/// What a member's tasks and handlers share.
pub(crate) struct Inner {
    pub(crate) me: NodeInfo,
    pub(crate) raft: Raft<TypeConfig>,
    pub(crate) store: RaftStore,
    pub(crate) gate: net::Gate,
    pub(crate) caller: net::Caller,
    /// Slower calls handed to the leader (joins wait for the new member to
    /// catch up).
    pub(crate) forward: net::Caller,
    /// Calls answered once the volume's copies are rewritten or synced (a
    /// rollback or snapshots asked of its primary): as long as that takes,
    /// up to
    /// [`crate::handover::REWRITE_WAIT`].
    pub(crate) rewrites: net::Caller,
    /// Held by the leader while it adds a member.
    pub(crate) joining: tokio::sync::Mutex<()>,
    /// Leader's view: when each member's last heartbeat arrived.
    pub(crate) seen: Mutex<HashMap<NodeId, Instant>>,
    /// Leader's view: primaries it decided to replace and is promoting
    /// another copy for; their heartbeats go unanswered meanwhile. Changed
    /// and read under `seen`'s lock.
    pub(crate) replacing: Mutex<HashSet<NodeId>>,
    /// The term in which this node leads and when it noticed.
    pub(crate) leader_since: Mutex<Option<(u64, Instant)>>,
    pub(crate) lease_until: Mutex<Option<Instant>>,
    /// What metrics count of this member's failover work.
    pub(crate) events: crate::status::Events,
    /// The member's directory.
    pub(crate) dir: PathBuf,
    /// On a data node, its data key (once made or received).
    pub(crate) data_key: Mutex<Option<DataKey>>,
    /// Where this member's iSCSI sessions are reported from, once its node
    /// serves them.
    pub(crate) sessions: Mutex<Option<Arc<dyn crate::sessions::SessionSource>>>,
    /// What hands over the volumes this member leads, once its node
    /// serves them.
    pub(crate) handover: Mutex<Option<Arc<dyn crate::handover::Handover>>>,
    /// Set once another member's state shows this one removed as dead:
    /// it is no member any more, whatever its own log says.
    pub(crate) removed: std::sync::atomic::AtomicBool,
    /// The version each member reported last, for when it cannot be asked.
    pub(crate) versions_seen: Mutex<BTreeMap<NodeId, MemberVersion>>,
}

/// A running member of the cluster.
pub struct Cluster {
    pub(crate) inner: Arc<Inner>,
    addr: SocketAddr,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The HTTP server, stopped gracefully so that no connection outlives
    /// the member (a peer's pooled connection would otherwise keep talking
    /// to a member that is gone).
    server: Mutex<Option<JoinHandle<()>>>,
    stop: watch::Sender<bool>,
}

impl Cluster {
    /// Whether `dir` holds a member's state (then use [`Cluster::open`]).
    pub fn exists(dir: &Path) -> bool {
        dir.join("node.json").exists()
    }

    /// Creates a new cluster with this node as its only member; returns the
    /// running member and the token other nodes join with.
    pub async fn init(
        dir: &Path,
        mut me: NodeInfo,
        listen: SocketAddr,
    ) -> Result<(Cluster, String), ClusterError> {
        if Cluster::exists(dir) {
            return Err(local(dir, "already a cluster member"));
        }
        std::fs::create_dir_all(dir).map_err(|e| local(dir, e))?;
        let key = Key::generate();
        if me.id == 0 {
            me.id = 1;
        }
        Cluster::save_identity(dir, &me, &key)?;
        let c = match Cluster::start(dir, me.clone(), key.clone(), listen).await {
            Ok(c) => c,
            Err(e) => {
                // Nothing was started: the directory may be used again.
                Cluster::forget_identity(dir);
                return Err(e);
            }
        };
        let mut members = BTreeMap::new();
        members.insert(
            me.id,
            BasicNode {
                addr: me.cluster_addr.clone(),
            },
        );
        c.inner
            .raft
            .initialize(members)
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let cluster_id = Uuid::new_v4();
        c.propose(Command::Init { cluster_id }).await?;
        let data = me.holds_data();
        c.propose(Command::AddNode { info: me }).await?;
        if data {
            // The first data node makes the data key.
            data_key::settle(&c.inner).await?;
        }
        Ok((c, join_token(cluster_id, &key)))
    }

    /// Removes the identity files of a member that never took part.
    fn forget_identity(dir: &Path) {
        for f in ["node.json", "cluster.key"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
    }

    /// Joins the cluster of `token` through the member at `seed` (host:port
    /// of its cluster endpoint). This node's id is chosen by the leader
    /// unless `me.id` is set.
    pub async fn join(
        dir: &Path,
        mut me: NodeInfo,
        listen: SocketAddr,
        seed: &str,
        token: &str,
    ) -> Result<Cluster, ClusterError> {
        if Cluster::exists(dir) {
            return Err(local(dir, "already a cluster member"));
        }
        let (cluster_id, key) = parse_token(token)?;
        let caller = net::Caller::new(key.clone(), Duration::from_secs(10));
        // Both sides prove the secret before anything is written here.
        let status: Answer<ClusterStatus> = caller.post(seed, "/cluster/status", &()).await?;
        let status = status.map_err(ClusterError::Remote)?;
        if status.state.cluster_id != Some(cluster_id) {
            return Err(ClusterError::Refused(format!(
                "{seed} belongs to cluster {}, the token to cluster {cluster_id}",
                status
                    .state
                    .cluster_id
                    .map_or("(none yet)".to_string(), |c| c.to_string())
            )));
        }
        if let Some(why) = too_old(status.state.required_log_version) {
            return Err(ClusterError::Refused(format!(
                "{why}: cannot join through {seed}"
            )));
        }
        if me.id == 0 {
            me.id = status
                .state
                .nodes
                .keys()
                .max()
                .copied()
                .unwrap_or(0)
                .max(status.voters.iter().max().copied().unwrap_or(0))
                .max(status.state.removed.iter().max().copied().unwrap_or(0))
                + 1;
        }
        std::fs::create_dir_all(dir).map_err(|e| local(dir, e))?;
        Cluster::save_identity(dir, &me, &key)?;
        let c = match Cluster::start(dir, me.clone(), key, listen).await {
            Ok(c) => c,
            Err(e) => {
                Cluster::forget_identity(dir);
                return Err(e);
            }
        };
        let r = caller
            .post::<_, Answer<()>>(
                seed,
                "/cluster/join",
                &JoinRequest {
                    info: me,
                    log_version: crate::LOG_VERSION,
                },
            )
            .await
            .and_then(|r| r.map_err(ClusterError::Refused));
        if let Err(e) = r {
            // The Raft database stays: should the leader have got as far
            // as giving this node a vote, its log and vote are kept.
            c.shutdown().await;
            Cluster::forget_identity(dir);
            return Err(e);
        }
        Ok(c)
    }

    /// Restarts a member from its saved state. Refused when the cluster's
    /// log holds entries newer than this build reads
    /// ([`crate::ClusterState::required_log_version`]): a downgrade past a
    /// feature the cluster has used.
    pub async fn open(dir: &Path, listen: SocketAddr) -> Result<Cluster, ClusterError> {
        let p = dir.join("node.json");
        let me: NodeInfo = serde_json::from_slice(&std::fs::read(&p).map_err(|e| local(&p, e))?)
            .map_err(|e| local(&p, e))?;
        let kp = dir.join("cluster.key");
        let key = hex::decode(
            std::fs::read_to_string(&kp)
                .map_err(|e| local(&kp, e))?
                .trim(),
        )
        .map_err(|e| local(&kp, e))?;
        Cluster::start(dir, me, Key::from_bytes(key), listen).await
    }

    fn save_identity(dir: &Path, me: &NodeInfo, key: &Key) -> Result<(), ClusterError> {
        // The secret first: a node.json without its key would be a member
        // that cannot talk to anyone.
        write_private(
            &dir.join("cluster.key"),
            hex::encode(key.bytes()).as_bytes(),
        )?;
        write_private(
            &dir.join("node.json"),
            &serde_json::to_vec_pretty(me).expect("serializable"),
        )
    }

    async fn start(
        dir: &Path,
        me: NodeInfo,
        key: Key,
        listen: SocketAddr,
    ) -> Result<Cluster, ClusterError> {
        // A member stopped in this process releases the database when its
        // Raft tasks have wound down; give that a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        let store = loop {
            match RaftStore::open(dir) {
                Ok(s) => break s,
                Err(redb::Error::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(local(&dir.join("raft.redb"), e)),
            }
        };
        let required = store.state().required_log_version;
        if let Some(why) = too_old(required) {
            return Err(ClusterError::Refused(format!(
                "{why}: this node's cluster state in {} was written by a newer build",
                dir.display()
            )));
        }
        // The data key stays with data nodes: a member that is a witness
        // now has no use for one it held.
        let data_key = if me.holds_data() {
            data_key::load(dir)?
        } else {
            data_key::forget(dir);
            None
        };
        let config = openraft::Config {
            cluster_name: "tandem".into(),
            heartbeat_interval: 100,
            election_timeout_min: 400,
            election_timeout_max: 700,
            install_snapshot_timeout: 2000,
            // JSON spells each snapshot byte as up to four characters; a
            // chunk stays far below the request body limit.
            snapshot_max_chunk_size: SNAPSHOT_CHUNK as u64,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let caller = net::Caller::new(key.clone(), Duration::from_millis(1000));
        let (log, sm) = Adaptor::new(store.clone());
        let raft = Raft::new(
            me.id,
            Arc::new(config),
            Net {
                caller: caller.clone(),
            },
            log,
            sm,
        )
        .await
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let inner = Arc::new(Inner {
            me,
            raft,
            store,
            gate: net::Gate::new(key.clone()),
            caller,
            forward: net::Caller::new(key.clone(), Duration::from_secs(10)),
            rewrites: net::Caller::patient(
                key.clone(),
                Duration::from_secs(10),
                crate::handover::REWRITE_WAIT,
            ),
            joining: tokio::sync::Mutex::new(()),
            seen: Mutex::default(),
            replacing: Mutex::default(),
            leader_since: Mutex::new(None),
            lease_until: Mutex::new(None),
            events: crate::status::Events::default(),
            dir: dir.to_path_buf(),
            data_key: Mutex::new(data_key),
            sessions: Mutex::new(None),
            handover: Mutex::new(None),
            removed: std::sync::atomic::AtomicBool::new(false),
            versions_seen: Mutex::default(),
        });
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| local(Path::new(&listen.to_string()), e))?;
        let addr = listener.local_addr().map_err(|e| local(dir, e))?;
        let app = crate::http::router(Arc::downgrade(&inner));
        let (stop, mut stopped) = watch::channel(false);
        let server = tokio::spawn(async move {
            let signal = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await
            {
                tracing::error!("cluster endpoint stopped: {e}");
            }
        });
        let mut tasks = vec![
            tokio::spawn(crate::lease::heartbeats(Arc::downgrade(&inner))),
            tokio::spawn(crate::failover::run(Arc::downgrade(&inner))),
            tokio::spawn(crate::replace::run(Arc::downgrade(&inner))),
        ];
        if inner.me.holds_data() {
            tasks.push(tokio::spawn(data_key::keep(Arc::downgrade(&inner))));
        }
        tracing::info!(node = inner.me.id, %addr, "cluster member started");
        Ok(Cluster {
            inner,
            addr,
            tasks: Mutex::new(tasks),
            server: Mutex::new(Some(server)),
            stop,
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.me.id
    }

    /// This node as the cluster knows it.
    pub fn me(&self) -> &NodeInfo {
        &self.inner.me
    }

    /// The cluster secret (also authenticates replication connections).
    pub fn secret(&self) -> Key {
        self.inner.gate.key().clone()
    }

    /// Address the cluster endpoint listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Follows the applied cluster state.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.inner.store.subscribe()
    }

    /// The applied cluster state now.
    pub fn state(&self) -> Arc<ClusterState> {
        self.inner.store.state()
    }

    /// Failovers this member made as leader, and leases of its own that ran
    /// out, since it started.
    pub fn events(&self) -> crate::MemberEvents {
        self.inner.events.snapshot()
    }

    /// Whether this node may act as a primary now (its lease runs).
    pub fn lease_valid(&self) -> bool {
        self.lease_valid_until().is_some_and(|t| Instant::now() < t)
    }

    /// Until when this node may act as a primary: `LEASE` after it sent the
    /// last heartbeat that a confirmed leader answered (`None` before the
    /// first). A primary must stop acknowledging writes at this instant.
    pub fn lease_valid_until(&self) -> Option<Instant> {
        *self.inner.lease_until.lock().unwrap()
    }

    /// On a data node, the cluster's data key, once this node holds the one
    /// the state records (see [`crate::data_key`]); never on a witness.
    pub fn data_key(&self) -> Option<DataKey> {
        data_key::current(&self.inner)
    }

    /// [`Cluster::data_key`], waiting up to `timeout` for it to arrive (a
    /// data node that just joined or started fetches it from another).
    pub async fn wait_data_key(&self, timeout: Duration) -> Option<DataKey> {
        data_key::wait(&self.inner, timeout).await
    }

    /// Proposes a command and waits until it is committed and applied here.
    pub async fn propose(&self, cmd: Command) -> Result<(), ClusterError> {
        self.inner.propose(cmd).await
    }

    /// Hands the floating address back (this node no longer holds it and
    /// has removed it from its interface), so the leader gives it to
    /// another data node at once rather than after `DEAD_AFTER`. Does
    /// nothing where this node is not the recorded holder.
    pub async fn release_floating(&self) -> Result<(), ClusterError> {
        if self.state().floating_holder != Some(self.id()) {
            return Ok(());
        }
        self.propose(Command::HoldFloating {
            node: None,
            expected: Some(self.id()),
        })
        .await
    }

    /// This member's own view of the cluster, without asking the leader
    /// (which knows the members' liveness).
    pub fn local_status(&self) -> ClusterStatus {
        self.inner.local_status()
    }

    /// This node's view of the cluster (liveness from the leader).
    pub async fn status(&self) -> ClusterStatus {
        let mut s = self.inner.local_status();
        if let Some(l) = s.leader.filter(|&l| l != self.id()) {
            if let Some(addr) = self.inner.addr_of(l) {
                if let Ok(Ok(remote)) = self
                    .inner
                    .caller
                    .post::<_, Answer<ClusterStatus>>(&addr, "/cluster/status", &())
                    .await
                {
                    s.last_seen_ms = remote.last_seen_ms;
                }
            }
        }
        s
    }

    /// The log version every member reports ([`crate::LOG_VERSION`]),
    /// asked of each now; a member that does not answer is named with
    /// why.
    pub async fn log_versions(&self) -> BTreeMap<NodeId, Result<u32, ClusterError>> {
        self.member_versions()
            .await
            .into_iter()
            .map(|(n, v)| (n, v.map(|v| v.log_version)))
            .collect()
    }

    /// The release and log version of every member, asked of all at once
    /// (each within the member caller's timeout); a member that does not
    /// answer is named with why.
    pub async fn member_versions(&self) -> BTreeMap<NodeId, Result<MemberVersion, ClusterError>> {
        let mut asked = Vec::new();
        let mut out = BTreeMap::new();
        for &node in self.state().nodes.keys() {
            if node == self.id() {
                out.insert(
                    node,
                    Ok(MemberVersion {
                        version: env!("CARGO_PKG_VERSION").to_string(),
                        log_version: crate::LOG_VERSION,
                    }),
                );
                continue;
            }
            let inner = self.inner.clone();
            asked.push((
                node,
                tokio::spawn(async move {
                    let Some(addr) = inner.addr_of(node) else {
                        return Err(ClusterError::Remote(format!(
                            "node {node} has no known address"
                        )));
                    };
                    inner
                        .caller
                        .post::<_, Answer<ClusterStatus>>(&addr, "/cluster/status", &())
                        .await
                        .and_then(|r| r.map_err(ClusterError::Remote))
                        .map(|s| MemberVersion {
                            version: s.version,
                            log_version: s.log_version,
                        })
                }),
            ));
        }
        for (node, task) in asked {
            let version = task
                .await
                .unwrap_or_else(|e| Err(ClusterError::Remote(format!("asking node {node}: {e}"))));
            if let Ok(v) = &version {
                self.inner
                    .versions_seen
                    .lock()
                    .unwrap()
                    .insert(node, v.clone());
            }
            out.insert(node, version);
        }
        out
    }

    /// The log version of every member as [`Cluster::log_versions`] asks
    /// it, or, for a member that does not answer now (down, cut off), the
    /// one it reported to this node last; `Err` for a member never heard
    /// from since this node started.
    pub async fn log_versions_last_known(&self) -> BTreeMap<NodeId, Result<u32, ClusterError>> {
        let mut now = self.log_versions().await;
        let seen = self.inner.versions_seen.lock().unwrap().clone();
        for (node, v) in now.iter_mut() {
            if v.is_err() {
                if let Some(s) = seen.get(node) {
                    *v = Ok(s.log_version);
                }
            }
        }
        now
    }

    /// Leaves the cluster: drops this node's volume copies (primaries move
    /// to another in-sync copy) and its vote. Refused while it holds the
    /// only in-sync copy of a volume.
    pub async fn leave(&self) -> Result<(), ClusterError> {
        self.inner
            .to_leader::<_, ()>("/cluster/leave", &NodeRequest { node: self.id() })
            .await
    }

    /// Removes member `node`, which cannot leave by itself (it is gone),
    /// through the leader: its copies are dropped (the volumes it led fail
    /// over to an in-sync copy), then its vote. Refused while a volume has
    /// no in-sync copy on another node ([`Command::RemoveDeadNode`]). The
    /// caller checks that the node is silent and that the other members
    /// read the entry.
    pub async fn remove_dead(&self, node: NodeId) -> Result<(), ClusterError> {
        self.inner
            .to_leader::<_, ()>("/cluster/remove-dead", &NodeRequest { node })
            .await
    }

    /// Whether this member learnt from another that it was removed from
    /// the cluster as dead: it must serve no cluster volume.
    pub fn removed(&self) -> bool {
        self.inner
            .removed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Builds a snapshot of the applied state and drops the log entries it
    /// covers; returns the index of the last entry in the snapshot. Raft
    /// also does this by itself every few thousand entries. A member that
    /// later needs dropped entries receives the snapshot instead.
    pub async fn compact_log(&self) -> Result<u64, ClusterError> {
        let raft = &self.inner.raft;
        let fatal = |e: openraft::error::Fatal<NodeId>| ClusterError::Raft(e.to_string());
        let Some(applied) = raft.metrics().borrow().last_applied else {
            return Ok(0);
        };
        raft.trigger().snapshot().await.map_err(fatal)?;
        let wait = raft.wait(Some(Duration::from_secs(10)));
        let waited = |e: openraft::metrics::WaitError| ClusterError::Raft(e.to_string());
        let m = wait
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= applied.index),
                "snapshot built",
            )
            .await
            .map_err(waited)?;
        let upto = m.snapshot.map(|s| s.index).unwrap_or(applied.index);
        raft.trigger().purge_log(upto).await.map_err(fatal)?;
        wait.metrics(|m| m.purged.is_some_and(|p| p.index >= upto), "log purged")
            .await
            .map_err(waited)?;
        tracing::info!(node = self.id(), upto, "cluster log compacted");
        Ok(upto)
    }

    /// Stops the member (its state stays on disk).
    pub async fn shutdown(&self) {
        let tasks: Vec<_> = self.tasks.lock().unwrap().drain(..).collect();
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        // Requests under way finish (a member stopping answers 503), idle
        // connections close; a request stuck longer than this is cut.
        self.stop.send_replace(true);
        let server = self.server.lock().unwrap().take();
        if let Some(mut server) = server {
            if tokio::time::timeout(Duration::from_secs(2), &mut server)
                .await
                .is_err()
            {
                server.abort();
            }
        }
        let _ = self.inner.raft.shutdown().await;
        // Raft's state machine worker, a snapshot being built or a request
        // still answering may hold the store a moment longer than Raft's
        // core: wait for them, so that once this returns, dropping the member
        // closes its database and the directory can be opened again at once.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&self.inner) > 1 || self.inner.store.holders() > 1 {
            if Instant::now() >= deadline {
                tracing::warn!(
                    node = self.id(),
                    "cluster member stopped, but its state database is still held 5 s later"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap().iter() {
            t.abort();
        }
        // The server winds down by itself once its connections are idle.
        self.stop.send_replace(true);
    }
}

impl Inner {
    pub(crate) fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    pub(crate) fn addr_of(&self, node: NodeId) -> Option<String> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.membership()
            .get_node(&node)
            .map(|n| n.addr.clone())
            .or_else(|| {
                self.store
                    .state()
                    .nodes
                    .get(&node)
                    .map(|n| n.cluster_addr.clone())
            })
    }

    /// Sends a request to the leader (this node, or over HTTP), retrying
    /// while a leader is being elected.
    pub(crate) async fn to_leader<B: Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClusterError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let leader = self.leader();
            let addr = leader.and_then(|l| self.addr_of(l));
            let retryable = match addr {
                Some(a) => match self.forward.post::<_, Answer<T>>(&a, path, body).await {
                    Ok(Ok(t)) => return Ok(t),
                    Ok(Err(why)) if is_not_leader(&why) => ClusterError::NoLeader,
                    Ok(Err(why)) => return Err(ClusterError::Refused(why)),
                    Err(e) => e,
                },
                None => ClusterError::NoLeader,
            };
            if Instant::now() > deadline {
                return Err(retryable);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) async fn propose(&self, cmd: Command) -> Result<(), ClusterError> {
        if self.leader() == Some(self.me.id) {
            match self.write(cmd.clone()).await {
                Ok(()) => return Ok(()),
                Err(LeaderWrite::Refused(why)) => {
                    return Err(ClusterError::Refused(why.to_string()))
                }
                Err(LeaderWrite::Raft(e)) => return Err(ClusterError::Refused(e.to_string())),
                Err(LeaderWrite::NotLeader) => {}
            }
        }
        let applied: u64 = self.to_leader("/cluster/propose", &cmd).await?;
        // Wait until this node applied it too, so callers see their change.
        let _ = self
            .raft
            .wait(Some(Duration::from_secs(5)))
            .applied_index_at_least(Some(applied), "proposal applied")
            .await;
        Ok(())
    }

    pub(crate) async fn write(&self, cmd: Command) -> Result<(), LeaderWrite> {
        match self.raft.client_write(cmd).await {
            Ok(r) => match r.data {
                Outcome::Done => Ok(()),
                Outcome::Refused(why) => Err(LeaderWrite::Refused(why)),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(LeaderWrite::NotLeader)
            }
            Err(e) => Err(LeaderWrite::Raft(e)),
        }
    }
}

/// Why the leader did not commit a command.
pub(crate) enum LeaderWrite {
    /// This node is not the leader (any more).
    NotLeader,
    /// The state machine refused it.
    Refused(Refusal),
    /// The Raft engine failed it.
    Raft(RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>),
}

/// Path of the cluster directory inside a node's data directory.
pub fn default_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("cluster")
}

/// Why this build cannot follow a log whose entries go up to version
/// `required`; `None` when it can.
pub(crate) fn too_old(required: u32) -> Option<String> {
    (required > crate::LOG_VERSION).then(|| {
        format!(
            "the cluster's log holds entries of version {required} and this build of Tandem \
             ({}) reads up to version {}; run the version the other members run, or newer",
            env!("CARGO_PKG_VERSION"),
            crate::LOG_VERSION
        )
    })
}
