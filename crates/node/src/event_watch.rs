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

/// One initiator's refused logins, for one reason and target, make an
/// event the first time and then at most one in this long; that next event
/// says how many went without one (`repeats`). An initiator with a wrong
/// CHAP secret retrying every 5 s would otherwise add 17,000 events a day
/// and push the failovers the report reads out of the history in hours.
const REFUSALS_EVERY: Duration = Duration::from_secs(3600);

/// The window of the overall limit.
const REFUSALS_WINDOW: Duration = Duration::from_secs(3600);

/// Most refused-login events in a [`REFUSALS_WINDOW`], whatever initiators
/// they come from: a client that makes up a new name for every attempt is
/// held to this (1,440 a day, so the 10,000 events kept hold a week of
/// everything else), and the next event says how many went unrecorded.
const REFUSAL_EVENTS_PER_WINDOW: u32 = 60;

/// Initiators remembered before those not heard from in
/// [`REFUSALS_EVERY`] are forgotten.
const REFUSALS_KEPT: usize = 1024;

/// Which refused logins become events. The metric
/// `tandem_iscsi_refused_logins_total` counts every one, whatever this
/// lets through.
#[derive(Default)]
struct Refusals {
    /// Per (reason, initiator, target): when its last event was recorded,
    /// and its refusals since then that made none.
    last: HashMap<(&'static str, String, String), (Instant, u64)>,
    /// Start of the window the overall limit counts in, and events in it.
    window: Option<(Instant, u32)>,
    /// Refusals that made no event and are in no entry of `last` (the
    /// overall limit kept them out, or their entry was forgotten), since
    /// the last event.
    over: u64,
}

/// What a refused login that makes an event adds to it.
#[derive(Debug, PartialEq, Eq)]
struct Recorded {
    /// Refusals of the same initiator, reason and target since its last
    /// event that made none.
    repeats: u64,
    /// Refusals of any initiator, this one's first ones included, that the
    /// overall limit kept out since the last event.
    unrecorded: u64,
}

/// An initiator that gave no name is known by its address, without the
/// port: every new connection comes from another one.
fn initiator_key(initiator: &str) -> String {
    match initiator.parse::<std::net::SocketAddr>() {
        Ok(a) => a.ip().to_string(),
        Err(_) => initiator.to_string(),
    }
}

impl Refusals {
    /// Takes a refused login at `now`: what its event says, or `None` when
    /// it makes no event.
    fn note(
        &mut self,
        why: &'static str,
        initiator: &str,
        target: &str,
        now: Instant,
    ) -> Option<Recorded> {
        let key = (why, initiator.to_string(), target.to_string());
        if let Some((at, n)) = self.last.get_mut(&key) {
            if now.duration_since(*at) < REFUSALS_EVERY {
                *n += 1;
                return None;
            }
        }
        let window = match self.window {
            Some((start, n)) if now.duration_since(start) < REFUSALS_WINDOW => (start, n),
            _ => (now, 0),
        };
        if window.1 >= REFUSAL_EVENTS_PER_WINDOW {
            self.window = Some(window);
            match self.last.get_mut(&key) {
                Some((_, n)) => *n += 1,
                None => self.over += 1,
            }
            return None;
        }
        self.window = Some((window.0, window.1 + 1));
        let repeats = self.last.insert(key, (now, 0)).map_or(0, |(_, n)| n);
        if self.last.len() > REFUSALS_KEPT {
            let mut forgotten = 0;
            self.last.retain(|_, (at, n)| {
                let keep = now.duration_since(*at) < REFUSALS_EVERY;
                if !keep {
                    forgotten += *n;
                }
                keep
            });
            self.over += forgotten;
        }
        Some(Recorded {
            repeats,
            unrecorded: std::mem::take(&mut self.over),
        })
    }
}

/// The observer the portal tells of refused logins: an event for the first
/// of each initiator, reason and target, then at most one an hour for it,
/// and at most [`REFUSAL_EVENTS_PER_WINDOW`] an hour in all. The counts of
/// those that made none ride on the next event that is made.
pub(crate) fn refusals_to(events: &Arc<EventLog>) -> portal::RefusalObserver {
    let events = Arc::downgrade(events);
    let refusals = Mutex::new(Refusals::default());
    Arc::new(
        move |why: portal::RefusedLogin, initiator: &str, target: &str| {
            let Some(events) = events.upgrade() else {
                return;
            };
            let initiator = initiator_key(initiator);
            let noted =
                refusals
                    .lock()
                    .unwrap()
                    .note(why.as_str(), &initiator, target, Instant::now());
            let Some(r) = noted else {
                return;
            };
            let mut e = Event::new(EventKind::LoginRefused)
                .with("reason", why.as_str())
                .with("initiator", initiator.as_str());
            if !target.is_empty() {
                e = e.with("target", target);
            }
            if r.repeats > 0 {
                e = e.with("repeats", r.repeats);
            }
            if r.unrecorded > 0 {
                e = e.with("unrecorded", r.unrecorded);
            }
            events.record(e);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(repeats: u64, unrecorded: u64) -> Option<Recorded> {
        Some(Recorded {
            repeats,
            unrecorded,
        })
    }

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn an_initiator_refused_again_and_again_makes_an_event_an_hour() {
        let t0 = Instant::now();
        let mut r = Refusals::default();
        assert_eq!(r.note("authentication", "iqn.esx", "t", t0), recorded(0, 0));
        for s in (5..3600).step_by(5) {
            assert_eq!(
                r.note("authentication", "iqn.esx", "t", secs(t0, s)),
                None,
                "{s} s"
            );
        }
        // Another reason or another target is another kind of refusal.
        assert_eq!(
            r.note("not_authorized", "iqn.esx", "t", secs(t0, 5)),
            recorded(0, 0)
        );
        assert_eq!(
            r.note("authentication", "iqn.esx", "u", secs(t0, 5)),
            recorded(0, 0)
        );
        // An hour after its last event, the next one says how many went
        // without one.
        assert_eq!(
            r.note("authentication", "iqn.esx", "t", secs(t0, 3600)),
            recorded(719, 0)
        );
        assert_eq!(
            r.note("authentication", "iqn.esx", "t", secs(t0, 3601)),
            None
        );
        assert_eq!(
            r.note("authentication", "iqn.esx", "t", secs(t0, 9000)),
            recorded(1, 0)
        );
    }

    #[test]
    fn many_initiators_are_held_to_a_number_of_events_an_hour() {
        let t0 = Instant::now();
        let mut r = Refusals::default();
        let n = REFUSAL_EVENTS_PER_WINDOW as usize;
        // iqn.spray-0 gets its event an hour before the others fill the
        // window.
        assert_eq!(
            r.note("target_not_found", "iqn.spray-0", "", t0),
            recorded(0, 0)
        );
        let t1 = secs(t0, 3600);
        for i in 1..=n {
            let who = format!("iqn.spray-{i}");
            assert_eq!(r.note("target_not_found", &who, "", t1), recorded(0, 0));
        }
        // Past the limit: counted, not recorded, whoever it is, one whose
        // own hour is over included (it keeps its count).
        for i in n + 1..n + 11 {
            let who = format!("iqn.spray-{i}");
            assert_eq!(r.note("target_not_found", &who, "", t1), None);
        }
        assert_eq!(r.note("target_not_found", "iqn.spray-0", "", t1), None);
        assert_eq!(r.note("target_not_found", "iqn.spray-1", "", t1), None);
        let t2 = secs(t0, 7200);
        assert_eq!(
            r.note("target_not_found", "iqn.new", "", t2),
            recorded(0, 10)
        );
        assert_eq!(
            r.note("target_not_found", "iqn.spray-0", "", t2),
            recorded(1, 0)
        );
        assert_eq!(
            r.note("target_not_found", "iqn.spray-1", "", t2),
            recorded(1, 0)
        );
    }

    #[test]
    fn initiators_not_heard_from_are_forgotten_past_a_bound_their_counts_kept() {
        let t0 = Instant::now();
        let mut r = Refusals::default();
        // Refused twice, once recorded.
        assert_eq!(
            r.note("authentication", "iqn.quiet", "t", t0),
            recorded(0, 0)
        );
        assert_eq!(
            r.note("authentication", "iqn.quiet", "t", secs(t0, 1)),
            None
        );
        // Then new names, each in an hour of its own: never held back, and
        // the memory of names stays bounded.
        let mut folded = 0;
        for i in 1..=REFUSALS_KEPT + 100 {
            let who = format!("iqn.once-{i}");
            let got = r.note("authentication", &who, "t", secs(t0, 3601 * i as u64));
            folded += got.expect("recorded").unrecorded;
        }
        assert!(r.last.len() <= REFUSALS_KEPT, "{} kept", r.last.len());
        // iqn.quiet's unrecorded refusal was forgotten with its name but
        // rode on a later event.
        assert_eq!(folded, 1);
    }

    #[test]
    fn an_initiator_without_a_name_is_known_by_its_address_not_its_port() {
        assert_eq!(initiator_key("192.0.2.7:51234"), "192.0.2.7");
        assert_eq!(initiator_key("[2001:db8::1]:3260"), "2001:db8::1");
        assert_eq!(
            initiator_key("iqn.1998-01.com.vmware:esx1"),
            "iqn.1998-01.com.vmware:esx1"
        );
        let t0 = Instant::now();
        let mut r = Refusals::default();
        let a = initiator_key("192.0.2.7:51234");
        let b = initiator_key("192.0.2.7:51240");
        assert_eq!(r.note("timeout", &a, "", t0), recorded(0, 0));
        assert_eq!(r.note("timeout", &b, "", secs(t0, 5)), None);
    }
}
