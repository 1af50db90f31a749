//! `GET /metrics`: the node's figures ([`node::Metrics`]) in the
//! OpenMetrics text format Prometheus asks for, written by the
//! `prometheus-client` crate, or in the older Prometheus text format
//! (0.0.4) for a client that does not ask for OpenMetrics (promtool, curl).
//! Names start with `tandem_`, sizes are in bytes and times in seconds;
//! counters end in `_total` (the encoder adds the suffix to the names
//! below).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use node::{Metrics, Node};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use scsi::stats::{HistogramSnapshot, LATENCY_BOUNDS_NS};

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of the Prometheus text format.
const TEXT_0_0_4: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A router that serves `GET /metrics` alone, without a token: for a
/// listener of its own that a scraper reaches.
pub fn metrics_router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(node)
}

/// Answers a scrape in the format the client asks for.
pub(crate) async fn scrape(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    answer(&headers, node.metrics().await)
}

/// A router that serves a witness's `GET /metrics` without a token: the
/// cluster as the witness sees it and the filesystem of its directory
/// `dir`.
pub fn witness_metrics_router(cluster: Arc<cluster::Cluster>, dir: PathBuf) -> Router {
    let dir = Arc::new(dir);
    Router::new().route(
        "/metrics",
        get(move |headers: HeaderMap| {
            let (cluster, dir) = (cluster.clone(), dir.clone());
            async move { answer(&headers, node::witness_metrics(&cluster, &dir).await) }
        }),
    )
}

/// `metrics` in the format the request's `Accept` header asks for.
fn answer(headers: &HeaderMap, metrics: Metrics) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    match encode(metrics) {
        Ok(text) if openmetrics => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Ok(text) => ([(header::CONTENT_TYPE, TEXT_0_0_4)], prometheus_text(&text)).into_response(),
        Err(e) => {
            tracing::error!("cannot write the metrics: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot write the metrics\n",
            )
                .into_response()
        }
    }
}

/// The metrics in the OpenMetrics text format.
pub fn encode(metrics: Metrics) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(metrics)));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

/// The OpenMetrics text `openmetrics` in the Prometheus text format
/// (0.0.4): a counter family is named with its `_total` suffix, as its
/// samples are, and there is no `# EOF` line. Nothing else differs in what
/// this module writes (no units, exemplars or created timestamps).
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match descriptor {
            Some((p, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{p}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// One scrape's figures, written when the registry is encoded.
#[derive(Debug)]
struct Scrape(Metrics);

/// Labels of one sample.
type Labels<'a> = Vec<(&'static str, &'a str)>;

/// A sample's value.
enum Value<'a> {
    Counter(u64),
    Gauge(i64),
    /// A gauge of a measured quantity (seconds).
    Measure(f64),
    Histogram(&'a HistogramSnapshot),
}

/// Writes one metric family: its name, help and type, then its samples.
fn family<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels<'a>, Value<'a>)>,
) -> fmt::Result {
    let mut samples = samples.into_iter().peekable();
    let Some((_, first)) = samples.peek() else {
        return Ok(());
    };
    let kind = match first {
        Value::Counter(_) => MetricType::Counter,
        Value::Gauge(_) | Value::Measure(_) => MetricType::Gauge,
        Value::Histogram(_) => MetricType::Histogram,
    };
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        if labels.is_empty() {
            write_value(&mut m, &value)?;
        } else {
            write_value(&mut m.encode_family(&labels)?, &value)?;
        }
    }
    Ok(())
}

fn write_value(m: &mut MetricEncoder, value: &Value) -> fmt::Result {
    match value {
        Value::Counter(v) => m.encode_counter::<NoLabelSet, u64, u64>(v, None),
        Value::Gauge(v) => m.encode_gauge(v),
        Value::Measure(v) => m.encode_gauge(v),
        Value::Histogram(h) => {
            // The encoder adds the buckets up itself.
            let mut buckets: Vec<(f64, u64)> = Vec::with_capacity(LATENCY_BOUNDS_NS.len() + 1);
            let mut below = 0;
            for (bound, cumulative) in LATENCY_BOUNDS_NS.iter().zip(h.cumulative) {
                buckets.push((*bound as f64 / 1e9, cumulative - below));
                below = cumulative;
            }
            buckets.push((f64::MAX, h.count - below));
            m.encode_histogram::<NoLabelSet>(h.sum_ns as f64 / 1e9, h.count, &buckets, None)
        }
    }
}

fn gauge_of(b: bool) -> i64 {
    i64::from(b)
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let m = &self.0;
        let e = &mut enc;
        let vols = &m.volumes;
        let by_volume = |f: fn(&node::VolumeMetrics) -> Value| {
            vols.iter()
                .map(move |v| (vec![("volume", v.name.as_str())], f(v)))
        };
        family(
            e,
            "tandem_volume_reads",
            "READ commands answered.",
            by_volume(|v| Value::Counter(v.reads)),
        )?;
        family(
            e,
            "tandem_volume_writes",
            "WRITE commands answered.",
            by_volume(|v| Value::Counter(v.writes)),
        )?;
        family(
            e,
            "tandem_volume_read_bytes",
            "Bytes read by initiators.",
            by_volume(|v| Value::Counter(v.read_bytes)),
        )?;
        family(
            e,
            "tandem_volume_written_bytes",
            "Bytes written by initiators.",
            by_volume(|v| Value::Counter(v.written_bytes)),
        )?;
        family(
            e,
            "tandem_volume_read_latency_seconds",
            "Time from a READ's arrival at the volume to its answer.",
            by_volume(|v| Value::Histogram(&v.read_latency)),
        )?;
        family(
            e,
            "tandem_volume_write_latency_seconds",
            "Time from a WRITE's arrival at the volume to its answer.",
            by_volume(|v| Value::Histogram(&v.write_latency)),
        )?;
        family(
            e,
            "tandem_volume_commands_in_flight",
            "SCSI commands running now.",
            by_volume(|v| Value::Gauge(v.in_flight)),
        )?;
        family(
            e,
            "tandem_volume_sessions",
            "iSCSI sessions logged in to the volume on this node.",
            by_volume(|v| Value::Gauge(v.sessions as i64)),
        )?;
        family(
            e,
            "tandem_volume_logical_bytes",
            "Size of the volume as initiators see it.",
            by_volume(|v| Value::Gauge(v.logical_bytes as i64)),
        )?;
        family(
            e,
            "tandem_volume_allocated_bytes",
            "Bytes the volume takes on this node's filesystem.",
            by_volume(|v| Value::Gauge(v.allocated_bytes as i64)),
        )?;
        family(
            e,
            "tandem_volume_caw_miscompares",
            "COMPARE AND WRITE commands whose compare failed.",
            by_volume(|v| Value::Counter(v.caw_miscompares)),
        )?;
        family(
            e,
            "tandem_volume_reservation_conflicts",
            "Commands answered RESERVATION CONFLICT.",
            by_volume(|v| Value::Counter(v.reservation_conflicts)),
        )?;
        family(
            e,
            "tandem_volume_medium_errors",
            "Commands answered MEDIUM ERROR (a block failed its checksum, or the disk an I/O).",
            by_volume(|v| Value::Counter(v.medium_errors)),
        )?;
        family(
            e,
            "tandem_volume_low_space",
            "1 while the space behind the volume is below its soft threshold.",
            by_volume(|v| Value::Gauge(gauge_of(v.low_on_space))),
        )?;
        if let Some((free, total)) = m.filesystem {
            family(
                e,
                "tandem_filesystem_free_bytes",
                "Free bytes of the data filesystem.",
                [(vec![], Value::Gauge(free as i64))],
            )?;
            family(
                e,
                "tandem_filesystem_size_bytes",
                "Size of the data filesystem.",
                [(vec![], Value::Gauge(total as i64))],
            )?;
        }
        family(
            e,
            "tandem_iscsi_refused_logins",
            "iSCSI logins the portal refused, by reason.",
            m.refused_logins
                .iter()
                .map(|(r, n)| (vec![("reason", *r)], Value::Counter(*n))),
        )?;
        let Some(c) = &m.cluster else { return Ok(()) };
        family(
            e,
            "tandem_cluster_member_up",
            "1 while the Raft leader hears from the member.",
            c.members.iter().map(|n| {
                (
                    vec![("node", n.name.as_str()), ("role", n.role)],
                    Value::Gauge(gauge_of(n.up)),
                )
            }),
        )?;
        let up = c.members.iter().filter(|n| n.up).count() as i64;
        family(
            e,
            "tandem_cluster_members",
            "Voting members of the cluster.",
            [(vec![], Value::Gauge(c.members.len() as i64))],
        )?;
        family(
            e,
            "tandem_cluster_members_up",
            "Members the Raft leader hears from.",
            [(vec![], Value::Gauge(up))],
        )?;
        let witnesses: Vec<_> = c.members.iter().filter(|n| n.role == "witness").collect();
        if !witnesses.is_empty() {
            let reachable = witnesses.iter().any(|n| n.up);
            family(
                e,
                "tandem_cluster_witness_reachable",
                "1 while the Raft leader hears from the witness.",
                [(vec![], Value::Gauge(gauge_of(reachable)))],
            )?;
        }
        family(
            e,
            "tandem_raft_term",
            "Raft term this member is in.",
            [(vec![], Value::Gauge(c.term as i64))],
        )?;
        family(
            e,
            "tandem_raft_leader_id",
            "Node id of the Raft leader (0: none known).",
            [(vec![], Value::Gauge(c.leader.unwrap_or(0) as i64))],
        )?;
        family(
            e,
            "tandem_raft_is_leader",
            "1 while this member leads.",
            [(vec![], Value::Gauge(gauge_of(c.is_leader)))],
        )?;
        family(
            e,
            "tandem_raft_commit_index",
            "Last committed (and applied) Raft log index.",
            [(vec![], Value::Gauge(c.commit_index as i64))],
        )?;
        family(
            e,
            "tandem_cluster_volume_primary",
            "1 for the node that is the volume's primary.",
            c.volumes.iter().map(|v| {
                (
                    vec![("volume", v.name.as_str()), ("node", v.primary.as_str())],
                    Value::Gauge(1),
                )
            }),
        )?;
        family(
            e,
            "tandem_cluster_volume_epoch",
            "The volume's epoch: grows with every change of primary.",
            c.volumes.iter().map(|v| {
                (
                    vec![("volume", v.name.as_str())],
                    Value::Gauge(v.epoch as i64),
                )
            }),
        )?;
        const STATES: [&str; 3] = ["in-sync", "syncing", "out-of-sync"];
        family(
            e,
            "tandem_cluster_replica_state",
            "1 for the state each copy of a volume is recorded in.",
            c.volumes.iter().flat_map(|v| {
                v.replicas.iter().flat_map(move |r| {
                    STATES.iter().map(move |s| {
                        (
                            vec![
                                ("volume", v.name.as_str()),
                                ("node", r.node.as_str()),
                                ("state", *s),
                            ],
                            Value::Gauge(gauge_of(r.state == *s)),
                        )
                    })
                })
            }),
        )?;
        fn copy(r: &node::ResyncMetrics) -> Labels<'_> {
            vec![("volume", r.volume.as_str()), ("node", r.node.as_str())]
        }
        family(
            e,
            "tandem_replica_connected",
            "1 while the primary's link to the copy is up.",
            c.resync
                .iter()
                .map(|r| (copy(r), Value::Gauge(gauge_of(r.connected)))),
        )?;
        family(
            e,
            "tandem_replica_out_of_sync_bytes",
            "Bytes the copy is known to miss.",
            c.resync
                .iter()
                .map(|r| (copy(r), Value::Gauge(r.out_of_sync_bytes as i64))),
        )?;
        family(
            e,
            "tandem_replica_resync_remaining_bytes",
            "Bytes the running resync of the copy has left to copy.",
            c.resync
                .iter()
                .map(|r| (copy(r), Value::Gauge(r.resync_remaining_bytes as i64))),
        )?;
        family(
            e,
            "tandem_replica_resync_rate_bytes_per_second",
            "Bytes a second the running resync copies, lately.",
            c.resync
                .iter()
                .map(|r| (copy(r), Value::Gauge(r.resync_rate as i64))),
        )?;
        family(
            e,
            "tandem_replica_round_trip_seconds",
            "Time from an I/O request (write, unmap, flush, ping) sent to the copy to its answer, the copy's write included.",
            c.resync
                .iter()
                .map(|r| (copy(r), Value::Histogram(&r.round_trips))),
        )?;
        family(
            e,
            "tandem_cluster_failovers",
            "Volumes this member promoted to another copy as leader, their primary gone silent.",
            [(vec![], Value::Counter(c.failovers))],
        )?;
        family(
            e,
            "tandem_cluster_last_failover_pause_seconds",
            "I/O pause of the volume's last failover to this node: from the old primary's last sign of life to this node serving.",
            c.last_failover_pause_us.iter().map(|(v, us)| {
                (
                    vec![("volume", v.as_str())],
                    Value::Measure(*us as f64 / 1e6),
                )
            }),
        )?;
        family(
            e,
            "tandem_cluster_lease_expirations",
            "Times this member's lease ran out without being renewed.",
            [(vec![], Value::Counter(c.lease_expirations))],
        )?;
        if let Some(p) = c.busy_polls {
            family(
                e,
                "tandem_replication_busy_polls",
                "Busy polls of replication connections (--busy-poll-us): caught what they waited for, or expired and slept.",
                [
                    ("request", p.requests.caught, "caught"),
                    ("request", p.requests.expired, "expired"),
                    ("answer", p.answers.caught, "caught"),
                    ("answer", p.answers.expired, "expired"),
                ]
                .map(|(what, n, outcome)| {
                    (
                        vec![("waiting_for", what), ("outcome", outcome)],
                        Value::Counter(n),
                    )
                }),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Metrics {
        let h = scsi::stats::LatencyHistogram::default();
        h.observe(300_000);
        h.observe(20_000_000_000);
        Metrics {
            volumes: vec![node::VolumeMetrics {
                name: "vm".into(),
                writes: 2,
                written_bytes: 8192,
                write_latency: h.snapshot(),
                low_on_space: true,
                ..Default::default()
            }],
            filesystem: Some((10, 100)),
            refused_logins: vec![("authentication", 3)],
            cluster: Some(node::ClusterMetrics {
                members: vec![node::MemberMetrics {
                    name: "w".into(),
                    role: "witness",
                    up: false,
                }],
                volumes: vec![node::ClusterVolumeMetrics {
                    name: "vm".into(),
                    primary: "a".into(),
                    epoch: 4,
                    replicas: vec![node::ReplicaMetrics {
                        node: "b".into(),
                        state: "syncing",
                    }],
                }],
                failovers: 1,
                resync: vec![node::ResyncMetrics {
                    volume: "vm".into(),
                    node: "b".into(),
                    connected: true,
                    out_of_sync_bytes: 0,
                    resync_remaining_bytes: 0,
                    resync_rate: 0,
                    round_trips: h.snapshot(),
                }],
                last_failover_pause_us: vec![("vm".into(), 1_250_000)],
                busy_polls: Some(node::BusyPolls {
                    requests: node::PollCount {
                        caught: 7,
                        expired: 2,
                    },
                    answers: node::PollCount {
                        caught: 5,
                        expired: 0,
                    },
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn figures_are_written_with_their_names_labels_and_units() {
        let text = encode(sample()).unwrap();
        for line in [
            "# TYPE tandem_volume_writes counter",
            "tandem_volume_writes_total{volume=\"vm\"} 2",
            "tandem_volume_written_bytes_total{volume=\"vm\"} 8192",
            "tandem_volume_low_space{volume=\"vm\"} 1",
            "tandem_volume_write_latency_seconds_bucket{le=\"0.0005\",volume=\"vm\"} 1",
            "tandem_volume_write_latency_seconds_bucket{le=\"10.0\",volume=\"vm\"} 1",
            "tandem_volume_write_latency_seconds_bucket{le=\"+Inf\",volume=\"vm\"} 2",
            "tandem_volume_write_latency_seconds_count{volume=\"vm\"} 2",
            "tandem_volume_write_latency_seconds_sum{volume=\"vm\"} 20.0003",
            "tandem_filesystem_free_bytes 10",
            "tandem_iscsi_refused_logins_total{reason=\"authentication\"} 3",
            "tandem_cluster_members_up 0",
            "tandem_cluster_witness_reachable 0",
            "tandem_cluster_volume_primary{volume=\"vm\",node=\"a\"} 1",
            "tandem_cluster_volume_epoch{volume=\"vm\"} 4",
            "tandem_cluster_replica_state{volume=\"vm\",node=\"b\",state=\"syncing\"} 1",
            "tandem_cluster_replica_state{volume=\"vm\",node=\"b\",state=\"in-sync\"} 0",
            "tandem_cluster_failovers_total 1",
            "tandem_cluster_last_failover_pause_seconds{volume=\"vm\"} 1.25",
            "tandem_replica_round_trip_seconds_bucket{le=\"0.0005\",volume=\"vm\",node=\"b\"} 1",
            "tandem_replica_round_trip_seconds_count{volume=\"vm\",node=\"b\"} 2",
            "tandem_replication_busy_polls_total{waiting_for=\"request\",outcome=\"caught\"} 7",
            "tandem_replication_busy_polls_total{waiting_for=\"request\",outcome=\"expired\"} 2",
            "tandem_replication_busy_polls_total{waiting_for=\"answer\",outcome=\"caught\"} 5",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }

    #[test]
    fn the_older_text_format_names_counters_with_their_suffix() {
        let text = prometheus_text(&encode(sample()).unwrap());
        assert!(text.contains("# TYPE tandem_volume_writes_total counter\n"));
        assert!(text.contains("# HELP tandem_volume_writes_total WRITE commands answered.\n"));
        assert!(text.contains("# TYPE tandem_volume_low_space gauge\n"));
        assert!(!text.contains("# EOF"));
    }
}
