//! Where the event history learns what happened. Most events are recorded
//! where they happen (volume changes in the service layer, resyncs and
//! copies out of sync where the primary reports them to the control plane,
//! refused logins in the portal, failovers where this node takes its new
//! role); what only shows in counters and in the cluster's view (checksum
//! errors, space thresholds, members up and down, maintenance) is read by
//! [`Node::watch_events`] every [`WATCH_EVERY`], off the I/O path, as the
//! metrics read it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::{NodeId, ReplicaState};

use crate::{Event, EventKind, EventLog, Node};

/// How often counters and the cluster's view are read.
pub const WATCH_EVERY: Duration = Duration::from_millis(500);

/// How long the leader's view of the members is waited for.
const LEADER_VIEW: Duration = Duration::from_secs(1);

/// When each cluster member last showed a sign of life, as this node learnt it.
#[derive(Default)]
pub(crate) struct Alive(Mutex<HashMap<NodeId, Instant>>);

impl Alive {
    fn saw(&self, node: NodeId, at: Instant) {
        let mut m = self.0.lock().unwrap();
        let t = m.entry(node).or_insert(at);
        if at > *t {
            *t = at;
        }
    }

    /// Time since `node` last showed a sign of life (`None`: never seen).
    fn since(&self, node: NodeId) -> Option<Duration> {
        self.0.lock().unwrap().get(&node).map(Instant::elapsed)
    }
}

/// The observer the portal tells of refused logins: one event each.
pub(crate) fn refusals_to(events: &Arc<EventLog>) -> portal::RefusalObserver {
    let events = Arc::downgrade(events);
    Arc::new(
        move |why: portal::RefusedLogin, initiator: &str, target: &str| {
            if let Some(events) = events.upgrade() {
                let mut e = Event::new(EventKind::LoginRefused)
                    .with("reason", why.as_str())
                    .with("initiator", initiator);
                if !target.is_empty() {
                    e = e.with("target", target);
                }
                events.record(e);
            }
        },
    )
}

/// Records the snapshots just taken, one event per volume.
pub(crate) fn snapshots_taken(events: &EventLog, taken: &[(String, store::SnapshotInfo)]) {
    for (volume, s) in taken {
        let mut e = Event::new(EventKind::SnapshotCreate)
            .volume(volume)
            .with("snapshot", s.name.as_str());
        if let Some(g) = &s.group {
            e = e.with("group", g.as_str());
        }
        events.record(e);
    }
}

/// Records that snapshot `name` of `volume` was deleted.
pub(crate) fn snapshot_deleted(events: &EventLog, volume: &str, name: &str) {
    events.record(
        Event::new(EventKind::SnapshotDelete)
            .volume(volume)
            .with("snapshot", name),
    );
}

/// What the watch saw last.
#[derive(Default)]
struct Seen {
    /// Per volume: MEDIUM ERROR answers, and whether it was low on space.
    volumes: BTreeMap<String, (u64, bool)>,
    /// Per member: whether it was up (absent: not known yet).
    up: BTreeMap<NodeId, bool>,
    /// Members in maintenance (`None`: not known yet).
    maintenance: Option<BTreeSet<NodeId>>,
    /// The leader and term last seen, and since when.
    leader: Option<(NodeId, u64, Instant)>,
}

impl Node {
    /// The node's event history.
    pub fn events(&self) -> &Arc<EventLog> {
        &self.events
    }

    /// Reads the counters and the cluster's view every [`WATCH_EVERY`] and
    /// records what changed, for as long as the node lives. What a first
    /// reading finds (a volume low on space, a member down) is where the
    /// watch starts from, not an event.
    pub fn watch_events(self: &Arc<Self>) {
        let node = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut seen = Seen::default();
            loop {
                let Some(n) = node.upgrade() else { return };
                n.watch_volumes(&mut seen).await;
                n.sample_latency().await;
                if let Some(c) = n.clustered() {
                    n.watch_cluster(&c, &mut seen).await;
                }
                drop(n);
                tokio::time::sleep(WATCH_EVERY).await;
            }
        });
    }

    async fn watch_volumes(&self, seen: &mut Seen) {
        let now: BTreeMap<String, (u64, bool)> = self
            .each_exported(|e| {
                let errors = e.lun.stats().medium_errors.load(Relaxed);
                (e.name.clone(), (errors, e.served.low_on_space()))
            })
            .await
            .into_iter()
            .collect();
        for (name, &(errors, low)) in &now {
            let Some(&(was_errors, was_low)) = seen.volumes.get(name) else {
                continue;
            };
            if errors > was_errors {
                self.events.record(
                    Event::new(EventKind::ChecksumError)
                        .volume(name)
                        .with("errors", errors - was_errors)
                        .with("total", errors),
                );
            }
            if low != was_low {
                let kind = if low {
                    EventKind::SpaceLow
                } else {
                    EventKind::SpaceOk
                };
                let mut e = Event::new(kind).volume(name);
                if let Ok((free, total)) = durable::filesystem_space(self.store.data_dir()) {
                    e = e.with("free_bytes", free).with("total_bytes", total);
                }
                self.events.record(e);
            }
        }
        seen.volumes = now;
    }

    async fn watch_cluster(&self, c: &crate::Clustered, seen: &mut Seen) {
        let cluster = c.cluster();
        let asked = Instant::now();
        let Ok(status) = tokio::time::timeout(LEADER_VIEW, cluster.status()).await else {
            return;
        };
        let me = cluster.id();
        // The leader's view: when it last heard each member (the leader
        // itself answered just now). Without one, nobody's liveness is known.
        let leader_view = status.leader.filter(|_| !status.last_seen_ms.is_empty());
        if let Some(leader) = leader_view {
            self.alive.saw(leader, asked);
            for (&n, &ms) in &status.last_seen_ms {
                self.alive.saw(
                    n,
                    asked
                        .checked_sub(Duration::from_millis(ms))
                        .unwrap_or(asked),
                );
            }
        }
        self.alive.saw(me, Instant::now());
        let name = |n: NodeId| {
            status
                .state
                .nodes
                .get(&n)
                .map_or_else(|| n.to_string(), |i| i.name.clone())
        };
        // A new leader has heard nobody yet: until every member had the
        // time to be heard by it, its view would count them down.
        if let Some(leader) = status.leader {
            if seen
                .leader
                .is_none_or(|(l, t, _)| l != leader || t != status.term)
            {
                seen.leader = Some((leader, status.term, Instant::now()));
            }
        }
        let settled = seen
            .leader
            .is_some_and(|(_, _, since)| since.elapsed() > cluster::DEAD_AFTER);
        if let Some(leader) = leader_view.filter(|_| settled) {
            for &n in status.state.nodes.keys() {
                let up = n == me || n == leader || status.reachable(n);
                let was = seen.up.insert(n, up);
                if was.is_some_and(|w| w != up) {
                    let kind = if up {
                        EventKind::NodeUp
                    } else {
                        EventKind::NodeDown
                    };
                    let mut e = Event::new(kind).node(&name(n));
                    if let Some(ms) = status.last_seen_ms.get(&n) {
                        e = e.with("last_seen_ms", *ms);
                    }
                    self.events.record(e);
                }
            }
            seen.up.retain(|n, _| status.state.nodes.contains_key(n));
        }
        let maintenance: BTreeSet<NodeId> = status
            .state
            .nodes
            .keys()
            .copied()
            .filter(|&n| status.state.in_maintenance(n))
            .collect();
        if let Some(was) = &seen.maintenance {
            for &n in maintenance.difference(was) {
                self.events
                    .record(Event::new(EventKind::MaintenanceEnter).node(&name(n)));
            }
            for &n in was.difference(&maintenance) {
                self.events
                    .record(Event::new(EventKind::MaintenanceExit).node(&name(n)));
            }
        }
        seen.maintenance = Some(maintenance);
    }

    /// Records a failover of `v` from `old`, which this node sees as its
    /// role for `v` changes (on the new primary, once it serves): the
    /// old primary's copy no longer in sync says it was replaced, not
    /// handed over. The I/O pause counts from the old primary's last sign
    /// of life this node learnt of.
    pub(crate) fn primary_changed(
        &self,
        c: &crate::Clustered,
        v: &cluster::VolumeRecord,
        old: NodeId,
    ) {
        if v.replicas.get(&old) == Some(&ReplicaState::InSync) {
            return; // handed over: recorded where the move was asked
        }
        let state = c.cluster().state();
        let name = |n: NodeId| {
            state
                .nodes
                .get(&n)
                .map_or_else(|| n.to_string(), |i| i.name.clone())
        };
        let mut e = Event::new(EventKind::Failover)
            .volume(&v.name)
            .node(&name(v.primary))
            .with("from", name(old))
            .with("to", name(v.primary))
            .with("epoch", v.epoch);
        // A node deposed itself (cut off, then back) cannot tell from
        // here how long the others went without a primary.
        if let Some(pause) = self.alive.since(old).filter(|_| old != c.cluster().id()) {
            e = e.with("pause_us", pause.as_micros() as u64);
        }
        self.events.record(e);
    }
}
