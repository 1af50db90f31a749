//! What a node's metrics show, read at one moment: [`Node::metrics`]. The
//! figures are counted where they happen (the logical units, the portal,
//! the cluster member); here they are only gathered. The API writes them
//! in the Prometheus format.

use std::collections::BTreeMap;
use std::time::Duration;

use scsi::stats::HistogramSnapshot;

use crate::events::{EventKind, EventQuery};
use crate::{Node, PeerState};

/// How long a scrape waits for the cluster leader's view of the members.
const LEADER_VIEW: Duration = Duration::from_secs(2);

/// Everything a scrape of one node shows.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Every volume exported here, sorted by name.
    pub volumes: Vec<VolumeMetrics>,
    /// The data filesystem's (free, total) bytes, when it can be asked.
    pub filesystem: Option<(u64, u64)>,
    /// Logins this node's portal refused, by reason (`reason` label).
    pub refused_logins: Vec<(&'static str, u64)>,
    /// The cluster as this node sees it, when it is a member.
    pub cluster: Option<ClusterMetrics>,
}

/// One volume's figures on this node.
#[derive(Debug, Clone, Default)]
pub struct VolumeMetrics {
    /// Volume name.
    pub name: String,
    /// READ commands answered.
    pub reads: u64,
    /// WRITE commands answered.
    pub writes: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub written_bytes: u64,
    /// Latency of reads.
    pub read_latency: HistogramSnapshot,
    /// Latency of writes.
    pub write_latency: HistogramSnapshot,
    /// Commands running now.
    pub in_flight: i64,
    /// iSCSI sessions logged in to the volume on this node.
    pub sessions: usize,
    /// Size initiators see.
    pub logical_bytes: u64,
    /// Bytes the volume takes on this node's filesystem.
    pub allocated_bytes: u64,
    /// COMPARE AND WRITE miscompares.
    pub caw_miscompares: u64,
    /// Commands answered RESERVATION CONFLICT.
    pub reservation_conflicts: u64,
    /// Commands answered MEDIUM ERROR (checksum or disk failures).
    pub medium_errors: u64,
    /// Whether the space behind the volume is below its soft threshold.
    pub low_on_space: bool,
}

/// A member of the cluster.
#[derive(Debug, Clone)]
pub struct MemberMetrics {
    /// Its name.
    pub name: String,
    /// `data` or `witness`.
    pub role: &'static str,
    /// Whether the leader heard from it lately.
    pub up: bool,
}

/// One copy of a cluster volume.
#[derive(Debug, Clone)]
pub struct ReplicaMetrics {
    /// Name of the node holding it.
    pub node: String,
    /// `in-sync`, `syncing` or `out-of-sync`, as the cluster records it.
    pub state: &'static str,
}

/// A copy as this node, its primary, sees it.
#[derive(Debug, Clone)]
pub struct ResyncMetrics {
    /// Volume name.
    pub volume: String,
    /// Name of the node holding the copy.
    pub node: String,
    /// Whether the link to the copy is up.
    pub connected: bool,
    /// Bytes the copy is known to miss.
    pub out_of_sync_bytes: u64,
    /// Bytes the running resync has left to copy.
    pub resync_remaining_bytes: u64,
    /// Bytes a second the running resync copies, lately.
    pub resync_rate: u64,
    /// Round trips of the I/O requests sent to the copy.
    pub round_trips: HistogramSnapshot,
}

/// A cluster volume as the replicated state records it.
#[derive(Debug, Clone)]
pub struct ClusterVolumeMetrics {
    /// Volume name.
    pub name: String,
    /// Name of its primary.
    pub primary: String,
    /// Its epoch.
    pub epoch: u64,
    /// Its copies.
    pub replicas: Vec<ReplicaMetrics>,
}

/// The cluster as one member sees it.
#[derive(Debug, Clone, Default)]
pub struct ClusterMetrics {
    /// Every member.
    pub members: Vec<MemberMetrics>,
    /// Raft term.
    pub term: u64,
    /// The leader's node id (`None`: no leader known).
    pub leader: Option<u64>,
    /// Whether this node leads.
    pub is_leader: bool,
    /// Last committed (and applied) log index.
    pub commit_index: u64,
    /// Every cluster volume.
    pub volumes: Vec<ClusterVolumeMetrics>,
    /// The copies of the volumes this node leads.
    pub resync: Vec<ResyncMetrics>,
    /// Failovers this member made as leader.
    pub failovers: u64,
    /// Times this member's lease ran out.
    pub lease_expirations: u64,
    /// Per volume, the I/O pause of the last failover this node took the
    /// volume over in, in microseconds (from the event history).
    pub last_failover_pause_us: Vec<(String, u64)>,
    /// The busy polls of this node's replication connections (`None` on a
    /// witness, which has none).
    pub busy_polls: Option<replica::BusyPolls>,
}

impl Node {
    /// The node's figures now, for a scrape.
    pub async fn metrics(&self) -> Metrics {
        let volumes = self
            .each_exported(|e| {
                let s = e.lun.stats();
                use std::sync::atomic::Ordering::Relaxed;
                VolumeMetrics {
                    name: e.name.clone(),
                    reads: s.reads.load(Relaxed),
                    writes: s.writes.load(Relaxed),
                    read_bytes: s.read_bytes.load(Relaxed),
                    written_bytes: s.written_bytes.load(Relaxed),
                    read_latency: s.read_latency.snapshot(),
                    write_latency: s.write_latency.snapshot(),
                    in_flight: s.in_flight.load(Relaxed).max(0),
                    sessions: self.targets.session_count(&e.iqn),
                    logical_bytes: e.served.num_blocks() * e.served.block_size() as u64,
                    allocated_bytes: match e.local {
                        Some(_) => self.store.allocated_bytes(&e.name).unwrap_or(0),
                        None => 0,
                    },
                    caw_miscompares: s.caw_miscompares.load(Relaxed),
                    reservation_conflicts: s.reservation_conflicts.load(Relaxed),
                    medium_errors: s.medium_errors.load(Relaxed),
                    low_on_space: e.served.low_on_space(),
                }
            })
            .await;
        let filesystem = durable::filesystem_space(self.store.data_dir()).ok();
        let refused_logins = self
            .targets
            .refused_logins()
            .iter()
            .map(|(r, n)| (r.as_str(), *n))
            .collect();
        let cluster = match self.clustered() {
            Some(c) => Some(self.cluster_metrics(&c).await),
            None => None,
        };
        Metrics {
            volumes,
            filesystem,
            refused_logins,
            cluster,
        }
    }

    async fn cluster_metrics(&self, c: &crate::Clustered) -> ClusterMetrics {
        let cluster = c.cluster();
        let (mut m, status) = member_metrics(cluster).await;
        m.busy_polls = Some(replica::busy_polls());
        let name = |id: u64| name_in(&status, id);
        let resync = self
            .peer_status()
            .await
            .into_iter()
            .flat_map(|(volume, peers)| {
                let name = &name;
                peers.into_iter().map(move |p| ResyncMetrics {
                    volume: volume.clone(),
                    node: name(p.node),
                    connected: p.connected,
                    out_of_sync_bytes: p.dirty_bytes,
                    resync_remaining_bytes: p.resync_total.saturating_sub(p.resync_done),
                    resync_rate: p.resync_rate,
                    round_trips: p.round_trips,
                })
            })
            .collect();
        // Only the failovers are copied out of the history, oldest first:
        // the last of each volume stays.
        let failovers = self.events.query(&EventQuery {
            kinds: vec![EventKind::Failover],
            ..Default::default()
        });
        let mut last_failover_pause_us = BTreeMap::new();
        for e in failovers {
            if let (Some(pause), Some(v)) = (e.number("pause_us"), e.volume) {
                last_failover_pause_us.insert(v, pause);
            }
        }
        m.resync = resync;
        m.last_failover_pause_us = last_failover_pause_us.into_iter().collect();
        m
    }
}

/// The name of member `id` (its id when the state does not know it).
fn name_in(status: &cluster::ClusterStatus, id: u64) -> String {
    status
        .state
        .nodes
        .get(&id)
        .map_or_else(|| id.to_string(), |n| n.name.clone())
}

/// The cluster as the member `cluster` sees it: members, Raft, volumes,
/// its failovers and leases; with the status it was read from. What only
/// a data node knows (its copies' resyncs, its event history) is left
/// empty.
async fn member_metrics(cluster: &cluster::Cluster) -> (ClusterMetrics, cluster::ClusterStatus) {
    let status = match tokio::time::timeout(LEADER_VIEW, cluster.status()).await {
        Ok(s) => s,
        // The leader did not answer: this member's own view, which
        // knows nobody's liveness unless it leads.
        Err(_) => cluster.local_status(),
    };
    let name = |id: u64| name_in(&status, id);
    let members = status
        .state
        .nodes
        .values()
        .map(|n| MemberMetrics {
            name: n.name.clone(),
            role: if n.holds_data() { "data" } else { "witness" },
            up: status.reachable(n.id),
        })
        .collect();
    let volumes = status
        .state
        .volumes
        .values()
        .map(|v| ClusterVolumeMetrics {
            name: v.name.clone(),
            primary: name(v.primary),
            epoch: v.epoch,
            replicas: v
                .replicas
                .iter()
                .map(|(n, st)| ReplicaMetrics {
                    node: name(*n),
                    state: match st {
                        cluster::ReplicaState::InSync => PeerState::InSync.as_str(),
                        cluster::ReplicaState::Syncing => PeerState::Syncing.as_str(),
                        cluster::ReplicaState::OutOfSync => PeerState::OutOfSync.as_str(),
                    },
                })
                .collect(),
        })
        .collect();
    let events = cluster.events();
    let m = ClusterMetrics {
        members,
        term: status.term,
        leader: status.leader,
        is_leader: status.leader == Some(status.me),
        commit_index: status.applied,
        volumes,
        failovers: events.failovers,
        lease_expirations: events.lease_expirations,
        ..Default::default()
    };
    (m, status)
}

/// What a witness shows: the cluster as it sees it and the filesystem of
/// its state directory `dir`.
pub async fn witness_metrics(cluster: &cluster::Cluster, dir: &std::path::Path) -> Metrics {
    Metrics {
        volumes: Vec::new(),
        filesystem: durable::filesystem_space(dir).ok(),
        refused_logins: Vec::new(),
        cluster: Some(member_metrics(cluster).await.0),
    }
}
