//! Tandem's control plane: which nodes are members, which volumes exist,
//! where their copies are, which copies hold every acknowledged write, and
//! which node is each volume's primary at which epoch. It lives in a Raft log
//! run by openraft over a redb database on every member; block writes never
//! pass through it.
//!
//! # Use
//!
//! [`Cluster::init`] starts a one-member cluster and returns the join token;
//! [`Cluster::join`] adds a member through any existing one (requests reach
//! the leader, which adds the node as a learner, waits until it has caught
//! up and makes it a voter: data nodes and witnesses all vote);
//! [`Cluster::open`] restarts a member from its directory after a stop or a
//! crash. [`Cluster::propose`] runs a [`Command`] through the leader,
//! [`Cluster::subscribe`] follows the applied [`ClusterState`],
//! [`Cluster::status`] reports leader, term, indexes and the leader's view of
//! who is alive, [`Cluster::leave`] removes this member.
//!
//! # Files
//!
//! A member's directory holds `node.json` (its [`NodeInfo`]), `cluster.key`
//! (the 32-byte cluster secret in hex, mode 0600) and `raft.redb` (vote, log,
//! applied state and snapshot).
//!
//! # Join token
//!
//! `tandem-join:<cluster id>:<secret hex>`: the cluster's UUID and the 64 hex
//! digits of the secret. Whoever holds it can join, so it is handled like a
//! password. Members authenticate every call both ways with the secret (see
//! [`net`]).
//!
//! # Leases and failover
//!
//! Every member sends a heartbeat to the leader every [`HEARTBEAT`]
//! (200 ms). The leader answers only after a fresh round of Raft heartbeats
//! confirmed that a quorum still follows it, and the answer carries the
//! leader's commit index at that moment. A member's lease runs [`LEASE`]
//! (1 s) from the moment it *sent* the last answered heartbeat
//! ([`Cluster::lease_valid_until`]), and is taken only once the member has
//! applied the log up to that index: while a lease runs, the cluster state
//! the member follows is at least as new as the state the leader had when
//! it answered. A primary acknowledges writes only while its lease runs and
//! that state names it primary at its epoch, so a member restarted with an
//! old state, or frozen while the others moved on, finds out that it was
//! replaced before it acknowledges anything.
//!
//! The leader records the moment it *answered* each heartbeat, which is
//! later than the send. It declares a data node dead when it has not heard
//! from it for [`DEAD_AFTER`] (1.5 s) and then promotes a live in-sync copy
//! of each volume that node was primary of (the dead primary's copy becomes
//! out of sync in the same step, the epoch grows by one). A copy that misses
//! writes is never promoted; such a volume waits for its primary.
//!
//! So a lease always ends at least `DEAD_AFTER - LEASE` (0.5 s) before the
//! leader may replace its holder. A newly elected leader has heard nobody;
//! every lease the previous leader granted was confirmed by a quorum before
//! this election, so none outlives it by more than `LEASE`: the new leader
//! waits `LEASE` plus [`ELECTION_MARGIN`] (300 ms) after its election
//! before it replaces anyone.
//! Either way, when a new primary exists, the old one has stopped
//! acknowledging writes, and every copy refuses its older epoch anyway.
//!
//! Durations are measured on each node's monotonic clock; no synchronized
//! wall clocks are needed, only clock *rates* within a few percent of each
//! other (the margins are 30–50 % of the lease). Request timestamps are
//! checked against wall clocks within 30 s, for replay protection only.
//!
//! A dead primary is replaced about `DEAD_AFTER` (plus up to 100 ms) after
//! its last heartbeat, about 1.6 s; if it was also the Raft leader, after
//! the election (0.4–0.7 s election timeout; followers refuse to vote until
//! 0.7 s after they last heard the old leader, so about 1–1.2 s) and then
//! `LEASE` and `ELECTION_MARGIN`: about 2.6 s.

#![forbid(unsafe_code)]
// openraft dictates its (large) storage error type; results carry it as is.
#![allow(clippy::result_large_err)]

pub mod net;
pub mod state;
pub mod store;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Cursor;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use openraft::error::{
    ClientWriteError, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::Adaptor;
use openraft::{BasicNode, ChangeMembers, Raft, ServerState};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub use net::Key;
pub use state::{
    ClusterState, Command, NodeId, NodeInfo, Outcome, ReplicaState, Role, VolumeRecord,
};
use store::RedbStore;

openraft::declare_raft_types!(
    /// Raft types of the control plane.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = BasicNode,
);

/// How often every member tells the leader it is alive.
pub const HEARTBEAT: Duration = Duration::from_millis(200);
/// How long a member may act as primary after sending an answered heartbeat.
pub const LEASE: Duration = Duration::from_millis(1000);
/// How long the leader waits without a heartbeat before declaring a node dead.
pub const DEAD_AFTER: Duration = Duration::from_millis(1500);
/// How long a new leader waits past `LEASE` after its election before it
/// replaces a primary it has not heard from.
pub const ELECTION_MARGIN: Duration = Duration::from_millis(300);

// A lease must end before the leader can give its volumes to another node.
const _: () = assert!(DEAD_AFTER.as_millis() > LEASE.as_millis());

/// Largest snapshot piece sent in one install-snapshot call.
const SNAPSHOT_CHUNK: usize = 64 * 1024;
/// Largest request body a member accepts (append-entries batches, snapshot
/// pieces).
const MAX_BODY: usize = 16 * 1024 * 1024;

/// What went wrong in the control plane.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// A member could not be reached.
    #[error("cannot reach {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    /// A member does not share the cluster secret.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// A member answered with an error.
    #[error("{0}")]
    Remote(String),
    /// The cluster has no leader (no quorum).
    #[error("the cluster has no leader right now (is a majority of members up?)")]
    NoLeader,
    /// The command was refused.
    #[error("refused: {0}")]
    Refused(String),
    /// The local state could not be read or written.
    #[error("cluster state in {path}: {reason}")]
    Local { path: String, reason: String },
    /// A join token that is not one.
    #[error("the join token is not valid (expected tandem-join:<cluster id>:<secret>)")]
    BadToken,
    /// The Raft engine failed.
    #[error("raft: {0}")]
    Raft(String),
}

/// How a member sees the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// This node.
    pub me: NodeId,
    /// Current leader, if any.
    pub leader: Option<NodeId>,
    /// Raft term.
    pub term: u64,
    /// Last applied (hence committed) log index.
    pub applied: u64,
    /// Last index in this node's log (committed or not).
    #[serde(default)]
    pub last_log_index: u64,
    /// Last log index covered by this node's snapshot (0: none yet).
    #[serde(default)]
    pub snapshot: u64,
    /// Voting members.
    pub voters: Vec<NodeId>,
    /// Milliseconds since the leader last heard from each member (leader's view).
    pub last_seen_ms: BTreeMap<NodeId, u64>,
    /// The replicated state.
    pub state: ClusterState,
}

impl ClusterStatus {
    /// Whether the leader heard from `node` within [`DEAD_AFTER`] (false
    /// when no leader's view is known).
    pub fn reachable(&self, node: NodeId) -> bool {
        self.last_seen_ms
            .get(&node)
            .is_some_and(|&ms| u128::from(ms) < DEAD_AFTER.as_millis())
    }
}

/// The join token format: `tandem-join:<cluster id>:<secret hex>`.
pub fn join_token(cluster_id: Uuid, key: &Key) -> String {
    format!("tandem-join:{cluster_id}:{}", hex::encode(key.bytes()))
}

fn parse_token(token: &str) -> Result<(Uuid, Key), ClusterError> {
    let mut parts = token.trim().splitn(3, ':');
    if parts.next() != Some("tandem-join") {
        return Err(ClusterError::BadToken);
    }
    let id = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(ClusterError::BadToken)?;
    let key = parts
        .next()
        .and_then(|s| hex::decode(s).ok())
        .filter(|k| k.len() >= 16)
        .ok_or(ClusterError::BadToken)?;
    Ok((id, Key::from_bytes(key)))
}

struct Net {
    caller: net::Caller,
}

struct NetClient {
    caller: net::Caller,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for Net {
    type Network = NetClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> NetClient {
        NetClient {
            caller: self.caller.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

impl NetClient {
    async fn rpc<Req: Serialize, Resp: serde::de::DeserializeOwned, E>(
        &self,
        path: &str,
        req: &Req,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let r: Result<Resp, RaftError<NodeId, E>> = self
            .caller
            .post(&self.addr, path, req)
            .await
            .map_err(|e| match e {
            ClusterError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
            other => RPCError::Network(NetworkError::new(&other)),
        })?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for NetClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.rpc("/raft/append", &rpc).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.rpc("/raft/snapshot", &rpc).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.rpc("/raft/vote", &rpc).await
    }
}

struct Inner {
    me: NodeInfo,
    raft: Raft<TypeConfig>,
    store: RedbStore,
    gate: net::Gate,
    caller: net::Caller,
    /// Slower calls handed to the leader (joins wait for the new member to
    /// catch up).
    forward: net::Caller,
    /// Held by the leader while it adds a member.
    joining: tokio::sync::Mutex<()>,
    /// Leader's view: when each member's last heartbeat arrived.
    seen: Mutex<HashMap<NodeId, Instant>>,
    /// Leader's view: primaries it decided to replace and is promoting
    /// another copy for; their heartbeats go unanswered meanwhile. Changed
    /// and read under `seen`'s lock.
    replacing: Mutex<HashSet<NodeId>>,
    /// The term in which this node leads and when it noticed.
    leader_since: Mutex<Option<(u64, Instant)>>,
    lease_until: Mutex<Option<Instant>>,
}

/// A running member of the cluster.
pub struct Cluster {
    inner: Arc<Inner>,
    addr: SocketAddr,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The HTTP server, stopped gracefully so that no connection outlives
    /// the member (a peer's pooled connection would otherwise keep talking
    /// to a member that is gone).
    server: Mutex<Option<JoinHandle<()>>>,
    stop: watch::Sender<bool>,
}

#[derive(Serialize, Deserialize)]
struct JoinRequest {
    info: NodeInfo,
}

#[derive(Serialize, Deserialize)]
struct NodeRequest {
    node: NodeId,
}

type Answer<T> = Result<T, String>;

fn local(path: &Path, e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Local {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ClusterError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| local(&tmp, e))?;
    f.write_all(bytes).map_err(|e| local(&tmp, e))?;
    f.sync_all().map_err(|e| local(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| local(path, e))?;
    if let Some(d) = path.parent() {
        std::fs::File::open(d)
            .and_then(|d| d.sync_all())
            .map_err(|e| local(d, e))?;
    }
    Ok(())
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
        c.propose(Command::AddNode { info: me }).await?;
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
        if me.id == 0 {
            me.id = status
                .state
                .nodes
                .keys()
                .max()
                .copied()
                .unwrap_or(0)
                .max(status.voters.iter().max().copied().unwrap_or(0))
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
            .post::<_, Answer<()>>(seed, "/cluster/join", &JoinRequest { info: me })
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

    /// Restarts a member from its saved state.
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
            match RedbStore::open(dir) {
                Ok(s) => break s,
                Err(redb::Error::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(local(&dir.join("raft.redb"), e)),
            }
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
            joining: tokio::sync::Mutex::new(()),
            seen: Mutex::default(),
            replacing: Mutex::default(),
            leader_since: Mutex::new(None),
            lease_until: Mutex::new(None),
        });
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| local(Path::new(&listen.to_string()), e))?;
        let addr = listener.local_addr().map_err(|e| local(dir, e))?;
        let app = Router::new()
            .route("/raft/append", post(h_append))
            .route("/raft/vote", post(h_vote))
            .route("/raft/snapshot", post(h_snapshot))
            .route("/cluster/join", post(h_join))
            .route("/cluster/leave", post(h_leave))
            .route("/cluster/propose", post(h_propose))
            .route("/cluster/heartbeat", post(h_heartbeat))
            .route("/cluster/status", post(h_status))
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
            .with_state(Arc::downgrade(&inner));
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
        let tasks = vec![
            tokio::spawn(heartbeats(Arc::downgrade(&inner))),
            tokio::spawn(failover(Arc::downgrade(&inner))),
        ];
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

    /// Proposes a command and waits until it is committed and applied here.
    pub async fn propose(&self, cmd: Command) -> Result<(), ClusterError> {
        self.inner.propose(cmd).await
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

    /// Leaves the cluster: drops this node's volume copies (primaries move
    /// to another in-sync copy) and its vote. Refused while it holds the
    /// only in-sync copy of a volume.
    pub async fn leave(&self) -> Result<(), ClusterError> {
        self.inner
            .to_leader::<_, ()>("/cluster/leave", &NodeRequest { node: self.id() })
            .await
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
    fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    fn addr_of(&self, node: NodeId) -> Option<String> {
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

    fn local_status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow().clone();
        let seen = self.seen.lock().unwrap();
        ClusterStatus {
            me: self.me.id,
            leader: m.current_leader,
            term: m.current_term,
            applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            last_log_index: m.last_log_index.unwrap_or(0),
            snapshot: m.snapshot.map(|l| l.index).unwrap_or(0),
            voters: m.membership_config.membership().voter_ids().collect(),
            last_seen_ms: if m.state == ServerState::Leader {
                seen.iter()
                    .map(|(n, t)| (*n, t.elapsed().as_millis() as u64))
                    .collect()
            } else {
                BTreeMap::new()
            },
            state: (*self.store.state()).clone(),
        }
    }

    /// Sends a request to the leader (this node, or over HTTP), retrying
    /// while a leader is being elected.
    async fn to_leader<B: Serialize, T: serde::de::DeserializeOwned>(
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
                    Ok(Err(why)) if why.starts_with("not the leader") => ClusterError::NoLeader,
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

    async fn propose(&self, cmd: Command) -> Result<(), ClusterError> {
        if self.leader() == Some(self.me.id) {
            match self.write(cmd.clone()).await {
                Ok(()) => return Ok(()),
                Err(LeaderWrite::Refused(why)) => return Err(ClusterError::Refused(why)),
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

    async fn write(&self, cmd: Command) -> Result<(), LeaderWrite> {
        match self.raft.client_write(cmd).await {
            Ok(r) => match r.data {
                Outcome::Done => Ok(()),
                Outcome::Refused(why) => Err(LeaderWrite::Refused(why)),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(LeaderWrite::NotLeader)
            }
            Err(e) => Err(LeaderWrite::Refused(e.to_string())),
        }
    }
}

enum LeaderWrite {
    NotLeader,
    Refused(String),
}

async fn h_append(State(w): State<Weak<Inner>>, h: HeaderMap, body: Bytes) -> Response {
    let (s, nonce, req) =
        match admit::<AppendEntriesRequest<TypeConfig>>(&w, &h, "/raft/append", &body) {
            Ok(x) => x,
            Err(r) => return r,
        };
    let r = s.raft.append_entries(req).await;
    s.gate.answer(&nonce, &r)
}

async fn h_vote(State(w): State<Weak<Inner>>, h: HeaderMap, body: Bytes) -> Response {
    let (s, nonce, req) = match admit::<VoteRequest<NodeId>>(&w, &h, "/raft/vote", &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let r = s.raft.vote(req).await;
    s.gate.answer(&nonce, &r)
}

async fn h_snapshot(State(w): State<Weak<Inner>>, h: HeaderMap, body: Bytes) -> Response {
    let (s, nonce, req) =
        match admit::<InstallSnapshotRequest<TypeConfig>>(&w, &h, "/raft/snapshot", &body) {
            Ok(x) => x,
            Err(r) => return r,
        };
    let r = s.raft.install_snapshot(req).await;
    s.gate.answer(&nonce, &r)
}

/// Admits a member request: the member is still running, the caller proves
/// the cluster secret (the nonce signs the answer), the body decodes.
fn admit<T: serde::de::DeserializeOwned>(
    w: &Weak<Inner>,
    h: &HeaderMap,
    path: &str,
    body: &[u8],
) -> Result<(Arc<Inner>, String, T), Response> {
    let s = w.upgrade().ok_or_else(stopping)?;
    let nonce = s.gate.check(h, path, body)?;
    let req = serde_json::from_slice(body).map_err(bad_request)?;
    Ok((s, nonce, req))
}

fn stopping() -> Response {
    use axum::response::IntoResponse;
    // Closing the connection makes the peer dial again, and so reach
    // whatever listens on this address next.
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        [(axum::http::header::CONNECTION, "close")],
        "member stopping",
    )
        .into_response()
}

fn bad_request(e: impl std::fmt::Display) -> Response {
    use axum::response::IntoResponse;
    (axum::http::StatusCode::BAD_REQUEST, e.to_string()).into_response()
}

fn not_leader(s: &Inner) -> String {
    format!("not the leader (leader: {:?})", s.leader())
}

async fn h_join(State(w): State<Weak<Inner>>, h: HeaderMap, body: Bytes) -> Response {
    let (s, nonce, req) = match admit::<JoinRequest>(&w, &h, "/cluster/join", &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let r: Answer<()> = async {
        if s.leader() != Some(s.me.id) {
            // Joining through a follower: hand the request to the leader.
            return s
                .to_leader::<_, ()>("/cluster/join", &req)
                .await
                .map_err(|e| e.to_string());
        }
        // One join at a time, so two nodes cannot take the same id.
        let _one = s.joining.lock().await;
        let info = req.info;
        let state = s.store.state();
        let members = s.raft.metrics().borrow().membership_config.clone();
        let voter = members.membership().voter_ids().any(|v| v == info.id);
        if let Some(known) = state.nodes.get(&info.id) {
            if *known == info && voter {
                // A retry of a join that went through.
                return Ok(());
            }
            return Err(format!("node id {} is already a member", info.id));
        }
        if let Some(n) = members.membership().get_node(&info.id) {
            if n.addr != info.cluster_addr {
                return Err(format!(
                    "node id {} is taken by the node at {}; join again",
                    info.id, n.addr
                ));
            }
        }
        // Checked before the node gets a vote: a voter the state refuses
        // (a taken name, say) would count in every quorum.
        let mut probe = (*state).clone();
        if let Outcome::Refused(why) = probe.apply(&Command::AddNode { info: info.clone() }) {
            return Err(why);
        }
        let node = BasicNode {
            addr: info.cluster_addr.clone(),
        };
        s.raft
            .add_learner(info.id, node, true)
            .await
            .map_err(|e| format!("adding node {} as learner: {e}", info.id))?;
        s.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([info.id])), false)
            .await
            .map_err(|e| format!("making node {} a voter: {e}", info.id))?;
        s.seen.lock().unwrap().insert(info.id, Instant::now());
        tracing::info!(node = info.id, name = %info.name, role = ?info.role, "node joined");
        match s.write(Command::AddNode { info }).await {
            Ok(()) => Ok(()),
            Err(LeaderWrite::Refused(why)) => Err(why),
            Err(LeaderWrite::NotLeader) => Err(not_leader(&s)),
        }
    }
    .await;
    s.gate.answer(&nonce, &r)
}

async fn h_leave(State(w): State<Weak<Inner>>, h: HeaderMap, body: Bytes) -> Response {
    let (s, nonce, req) = match admit::<NodeRequest>(&w, &h, "/cluster/leave", &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let r: Answer<()> = async {
        if s.leader() != Some(s.me.id) {
            return Err(not_leader(&s));
        }
        if let Some(v) = s.store.state().only_in_sync_copy_on(req.node) {
            return Err(format!(
                "node {} holds the only in-sync copy of volume {}; add a replica and let it sync first",
                req.node, v.name
            ));
        }
        // The state first: it refuses to drop the last in-sync copy of a
        // volume and moves primaries away; then the vote. Both steps are
        // skipped when already done, so a failed leave can be retried.
        if s.store.state().nodes.contains_key(&req.node) {
            match s.write(Command::RemoveNode { node: req.node }).await {
                Ok(()) => {}
                Err(LeaderWrite::Refused(why)) => return Err(why),
                Err(LeaderWrite::NotLeader) => return Err(not_leader(&s)),
            }
        }
        let members = s.raft.metrics().borrow().membership_config.clone();
        if members.membership().get_node(&req.node).is_some() {
            s.raft
                .change_membership(
                    ChangeMembers::RemoveVoters(BTreeSet::from([req.node])),
                    false,
                )
                .await
                .map_err(|e| format!("removing node {} from the voters: {e}", req.node))?;
        }
        s.seen.lock().unwrap().remove(&req.node);
        tracing::info!(node = req.node, "node left");
        Ok(())
    }
    .await;
    s.gate.answer(&nonce, &r)
}

async fn h_propose(State(w): State<Weak<Inner>>, h: HeaderMap, body: Bytes) -> Response {
    let (s, nonce, cmd) = match admit::<Command>(&w, &h, "/cluster/propose", &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let r: Answer<u64> = match s.write(cmd).await {
        Ok(()) => Ok(s
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0)),
        Err(LeaderWrite::NotLeader) => Err(not_leader(&s)),
        Err(LeaderWrite::Refused(why)) => Err(why),
    };
    s.gate.answer(&nonce, &r)
}

async fn h_heartbeat(State(w): State<Weak<Inner>>, h: HeaderMap, body: Bytes) -> Response {
    let (s, nonce, req) = match admit::<NodeRequest>(&w, &h, "/cluster/heartbeat", &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    // Answered only by a leader a quorum still follows, and only for
    // members: a node that left holds no lease.
    if !s.store.state().nodes.contains_key(&req.node) {
        let r: Answer<()> = Err(format!("node {} is not a member", req.node));
        return s.gate.answer(&nonce, &r);
    }
    let r: Answer<u64> = match confirm_leadership(&s).await {
        Some(committed) => {
            let mut seen = s.seen.lock().unwrap();
            if s.replacing.lock().unwrap().contains(&req.node) {
                // Declared dead and being replaced: no new lease until the
                // promotion is decided, and then only on a state with it.
                Err(format!("node {} is being replaced as a primary", req.node))
            } else {
                // Recorded after the confirmation, so later than the
                // member's send time, from which its lease runs. A promotion
                // decided before this moment is applied here already (it
                // was a primary of this node's that is now being replaced,
                // or it is done): the member must apply it too.
                seen.insert(req.node, Instant::now());
                Ok(committed.max(s.store.applied_index()))
            }
        }
        None => Err(not_leader(&s)),
    };
    s.gate.answer(&nonce, &r)
}

async fn h_status(State(w): State<Weak<Inner>>, h: HeaderMap, body: Bytes) -> Response {
    let Some(s) = w.upgrade() else {
        return stopping();
    };
    let nonce = match s.gate.check(&h, "/cluster/status", &body) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let r: Answer<ClusterStatus> = Ok(s.local_status());
    s.gate.answer(&nonce, &r)
}

/// Whether this node still leads: a quorum answered a fresh round of
/// heartbeats (bounded by `LEASE`, since a later answer is useless). Gives
/// the index of the last entry committed at that moment, which this node
/// has applied when it returns.
async fn confirm_leadership(s: &Inner) -> Option<u64> {
    match tokio::time::timeout(LEASE, s.raft.ensure_linearizable()).await {
        Ok(Ok(read)) => Some(read.map(|l| l.index).unwrap_or(0)),
        _ => None,
    }
}

/// Keeps this node's lease: a heartbeat to the leader, answered only while
/// the leader has a quorum, extends it to `LEASE` after the send time, once
/// this node has applied everything the leader had committed by then.
async fn heartbeats(me: Weak<Inner>) {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        let Some(s) = me.upgrade() else { return };
        let sent = Instant::now();
        let committed = match s.leader() {
            Some(l) if l == s.me.id => {
                // The leader has applied its read index when this returns.
                let confirmed = if s.store.state().nodes.contains_key(&l) {
                    confirm_leadership(&s).await
                } else {
                    None
                };
                // As `h_heartbeat` answers the other members.
                confirmed.and_then(|committed| {
                    let mut seen = s.seen.lock().unwrap();
                    if s.replacing.lock().unwrap().contains(&l) {
                        return None;
                    }
                    seen.insert(l, Instant::now());
                    Some(committed.max(s.store.applied_index()))
                })
            }
            Some(l) => match s.addr_of(l) {
                Some(addr) => match s
                    .caller
                    .post::<_, Answer<u64>>(
                        &addr,
                        "/cluster/heartbeat",
                        &NodeRequest { node: s.me.id },
                    )
                    .await
                {
                    Ok(Ok(index)) => Some(index),
                    _ => None,
                },
                None => None,
            },
            None => None,
        };
        let Some(index) = committed else { continue };
        // A lease on a state older than the leader's would let this node
        // act on a role it no longer has. Waiting longer than the lease
        // would run is pointless: the next heartbeat tries again.
        let caught_up = s
            .raft
            .wait(Some(LEASE.saturating_sub(sent.elapsed())))
            .applied_index_at_least(Some(index), "caught up with the leader")
            .await
            .is_ok();
        if caught_up {
            *s.lease_until.lock().unwrap() = Some(sent + LEASE);
        } else {
            tracing::debug!(
                index,
                "lease not renewed: this node has not applied the leader's commits yet"
            );
        }
    }
}

/// On the leader: promotes an in-sync replica of every volume whose primary
/// stopped sending heartbeats.
async fn failover(me: Weak<Inner>) {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Some(s) = me.upgrade() else { return };
        let (leading, term) = {
            let m = s.raft.metrics().borrow().clone();
            (m.state == ServerState::Leader, m.current_term)
        };
        let since = {
            let mut ls = s.leader_since.lock().unwrap();
            match (leading, *ls) {
                // Leading in a term not seen leading before (even if this
                // loop missed the lost leadership in between): what was
                // heard in an earlier term says nothing about the leases
                // another leader may have granted since.
                (true, None) => {
                    *ls = Some((term, Instant::now()));
                    s.seen.lock().unwrap().clear();
                }
                (true, Some((t, _))) if t != term => {
                    *ls = Some((term, Instant::now()));
                    s.seen.lock().unwrap().clear();
                }
                (false, Some(_)) => *ls = None,
                _ => {}
            }
            ls.map(|(_, at)| at)
        };
        let Some(since) = since else { continue };
        // A new leader has heard nobody yet. Leases were granted only by a
        // leader a quorum confirmed, so none granted by the old leader
        // outlives this election by more than LEASE: after that (and a
        // margin) a silent primary can be replaced.
        let grace = LEASE + ELECTION_MARGIN;
        if since.elapsed() < grace {
            continue;
        }
        let state = s.store.state();
        for v in state.volumes.values() {
            // Deciding and fencing are one step against heartbeat answers:
            // a heartbeat answered before it makes the primary alive here,
            // one answered after it waits for the promotion (see
            // `h_heartbeat`), so the old primary never gets a lease on a
            // state in which it still leads while another node takes over.
            let candidate = {
                let seen = s.seen.lock().unwrap();
                let alive = |n: NodeId| seen.get(&n).is_some_and(|t| t.elapsed() < DEAD_AFTER);
                if alive(v.primary) {
                    continue;
                }
                let candidate = v
                    .replicas
                    .iter()
                    .find(|(&n, st)| n != v.primary && **st == ReplicaState::InSync && alive(n))
                    .map(|(&n, _)| n);
                if candidate.is_some() {
                    s.replacing.lock().unwrap().insert(v.primary);
                }
                candidate
            };
            match candidate {
                Some(n) => {
                    tracing::warn!(volume = %v.name, old = v.primary, new = n, epoch = v.epoch + 1, "primary silent, promoting an in-sync replica");
                    let cmd = Command::Promote {
                        volume: v.name.clone(),
                        node: n,
                        expected_epoch: v.epoch,
                    };
                    let outcome = s.write(cmd).await;
                    {
                        let _seen = s.seen.lock().unwrap();
                        s.replacing.lock().unwrap().remove(&v.primary);
                    }
                    if let Err(LeaderWrite::Refused(why)) = outcome {
                        tracing::warn!(volume = %v.name, "promotion refused: {why}");
                    }
                }
                None => {
                    tracing::debug!(volume = %v.name, "primary silent and no live in-sync replica: volume waits")
                }
            }
        }
    }
}

/// Path of the cluster directory inside a node's data directory.
pub fn default_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("cluster")
}
