//! Metrics, checked by the real tools: a running node's `GET /metrics`
//! counts the I/O an initiator does, a CAW miscompare and a refused login,
//! answers only with the token on the API listener and without it on
//! `--metrics-listen`, and passes `promtool check metrics`; a real
//! Prometheus server scrapes both data nodes of a cluster (with their API
//! tokens) and answers queries for a volume's writes and the members up;
//! the alert rules shipped in deploy/prometheus pass their unit tests.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{on_loopback, session, wait_until};
use common::{free_port, node_prefix, Server};
use testkit::rw10;

/// Whether `tool` is on PATH, installing the test tools once if not; a
/// test that needs it says so and skips only when it cannot be installed.
fn have(tool: &str) -> bool {
    let found = || {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if found() {
        return true;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/install-test-deps.sh");
    let _ = Command::new("bash").arg(script).status();
    if found() {
        return true;
    }
    println!("{tool} cannot be installed here (Debian package prometheus): test skipped");
    false
}

/// GET `url` with `token` as bearer (when given): (status, body).
async fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// The value of the sample `series` (name with its labels, as written) in
/// `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn api_token(s: &Server) -> String {
    std::fs::read_to_string(s.data_dir.join("api.token"))
        .unwrap()
        .trim()
        .to_string()
}

/// COMPARE AND WRITE of one block at `lba` (SBC-4 5.3).
fn caw(lba: u64) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x89;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[13] = 1;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_counts_what_initiators_do_and_promtool_accepts_its_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let s = Server::start_with(
        &dir.path().join("n"),
        &["--metrics-listen", &format!("127.0.0.1:{metrics_port}")],
    );
    s.cli_ok(&["volume", "create", "m", "--size", "8M"]);
    let mut i = session(s.portal(), "m").await.expect("login");
    let block = vec![0x5Au8; 4096];
    for n in 0..10u32 {
        let o = i.run(&rw10(0x2A, n * 8, 8), &block, 0).await.unwrap();
        assert_eq!(o.status, 0, "write {n}");
    }
    for n in 0..3u32 {
        let o = i.run(&rw10(0x28, n * 8, 8), &[], 4096).await.unwrap();
        assert_eq!(o.status, 0, "read {n}");
    }
    // The block holds 0x5A, not 0x11: the compare fails.
    let mut caw_data = vec![0x11u8; 512];
    caw_data.extend_from_slice(&[0x22u8; 512]);
    let o = i.run(&caw(0), &caw_data, 0).await.unwrap();
    assert_eq!((o.status, o.sense_key), (0x02, 0x0E), "CAW miscompare");
    // A login to a target that does not exist is refused.
    let missing = format!("{}:no-such-volume", node_prefix());
    assert!(
        testkit::Initiator::try_normal(s.portal(), &missing, Duration::from_secs(3))
            .await
            .is_none(),
        "a login to a missing target went through"
    );

    let api = format!("http://127.0.0.1:{}/metrics", s.api_port);
    let (status, _) = get(&api, None).await;
    assert_eq!(status, 401, "metrics on the API listener without the token");
    let (status, with_token) = get(&api, Some(&api_token(&s))).await;
    assert_eq!(status, 200);
    let (status, text) = get(&format!("http://127.0.0.1:{metrics_port}/metrics"), None).await;
    assert_eq!(status, 200, "the metrics listener asks for no token");
    assert!(with_token.contains("tandem_volume_writes_total{volume=\"m\"}"));

    let v =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"));
    // COMPARE AND WRITE is neither a read nor a write here.
    assert_eq!(v("tandem_volume_writes_total{volume=\"m\"}"), 10.0);
    assert_eq!(
        v("tandem_volume_written_bytes_total{volume=\"m\"}"),
        40960.0
    );
    assert_eq!(v("tandem_volume_reads_total{volume=\"m\"}"), 3.0);
    assert_eq!(v("tandem_volume_read_bytes_total{volume=\"m\"}"), 12288.0);
    assert_eq!(
        v("tandem_volume_write_latency_seconds_count{volume=\"m\"}"),
        10.0
    );
    assert_eq!(
        v("tandem_volume_write_latency_seconds_bucket{le=\"+Inf\",volume=\"m\"}"),
        10.0
    );
    assert!(v("tandem_volume_write_latency_seconds_sum{volume=\"m\"}") > 0.0);
    assert_eq!(v("tandem_volume_caw_miscompares_total{volume=\"m\"}"), 1.0);
    assert_eq!(v("tandem_volume_sessions{volume=\"m\"}"), 1.0);
    assert_eq!(v("tandem_volume_commands_in_flight{volume=\"m\"}"), 0.0);
    assert_eq!(v("tandem_volume_logical_bytes{volume=\"m\"}"), 8388608.0);
    assert!(v("tandem_volume_allocated_bytes{volume=\"m\"}") >= 40960.0);
    assert_eq!(v("tandem_volume_low_space{volume=\"m\"}"), 0.0);
    assert_eq!(
        v("tandem_iscsi_refused_logins_total{reason=\"target_not_found\"}"),
        1.0
    );
    assert!(v("tandem_filesystem_size_bytes") >= v("tandem_filesystem_free_bytes"));

    promtool_accepts(&text);
}

/// `promtool check metrics` passes on `text` (when promtool is there).
fn promtool_accepts(text: &str) {
    if !have("promtool") {
        return;
    }
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `prometheus` server this test started, stopped (by its pid) when dropped.
struct Prometheus {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Prometheus {
    /// Starts a server on a free loopback port that scrapes every second
    /// each `(api address, token file)`.
    fn start(dir: &Path, targets: &[(String, PathBuf)]) -> Prometheus {
        let mut config =
            String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
        for (n, (addr, token)) in targets.iter().enumerate() {
            config.push_str(&format!(
                "  - job_name: tandem-{n}\n    authorization:\n      type: Bearer\n      credentials_file: {}\n    static_configs:\n      - targets: ['{addr}']\n",
                token.display()
            ));
        }
        let conf = dir.join("prometheus.yml");
        std::fs::write(&conf, config).unwrap();
        let port = free_port();
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    /// The value of the instant query `q`'s only sample, once there is one.
    async fn value(&self, q: &str) -> Option<f64> {
        let resp = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", q)])
            .send()
            .await
            .ok()?;
        let body: serde_json::Value = resp.json().await.ok()?;
        let result = body["data"]["result"].as_array()?;
        if result.len() != 1 {
            return None;
        }
        result[0]["value"][1].as_str()?.parse().ok()
    }

    /// Waits up to `secs` for `q` to answer a value that satisfies `ok`.
    async fn wait_for(&self, q: &str, secs: u64, ok: impl Fn(f64) -> bool) -> f64 {
        let t = Instant::now();
        let mut last = None;
        while t.elapsed() < Duration::from_secs(secs) {
            last = self.value(q).await;
            if let Some(v) = last.filter(|v| ok(*v)) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!(
            "Prometheus answered {last:?} to {q} for {secs} s; its log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_both_nodes_of_a_cluster() {
    if !have("prometheus") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (a, b, witness, _) = on_loopback(dir.path());
    a.cli_ok(&["volume", "create", "vm", "--size", "4M", "--replicas", "2"]);
    wait_until("both nodes export the volume", 20, || {
        b.cli_ok(&["volume", "list"]).contains("vm")
    });
    let prom_dir = dir.path().join("prometheus");
    std::fs::create_dir(&prom_dir).unwrap();
    let prom = Prometheus::start(
        &prom_dir,
        &[
            (
                format!("127.0.0.1:{}", a.api_port),
                a.data_dir.join("api.token"),
            ),
            (
                format!("127.0.0.1:{}", b.api_port),
                b.data_dir.join("api.token"),
            ),
            // The witness asks no token; the one sent is ignored.
            (
                witness
                    .metrics
                    .clone()
                    .expect("witness metrics on loopback"),
                a.data_dir.join("api.token"),
            ),
        ],
    );
    // Every target is up, as Prometheus sees it, the witness too.
    prom.wait_for("sum(up)", 60, |v| v == 3.0).await;
    prom.wait_for("count(tandem_raft_term)", 30, |v| v == 3.0)
        .await;
    prom.wait_for("tandem_cluster_members_up{job=\"tandem-2\"}", 30, |v| {
        v == 3.0
    })
    .await;
    let (code, text) = get(
        &format!("http://{}/metrics", witness.metrics.as_ref().unwrap()),
        None,
    )
    .await;
    assert_eq!(code, 200, "{text}");
    assert!(
        sample(&text, "tandem_filesystem_free_bytes").is_some(),
        "{text}"
    );
    assert!(
        !text.contains("tandem_volume_"),
        "a witness has no volumes:\n{text}"
    );
    promtool_accepts(&text);
    prom.wait_for("max(tandem_cluster_members_up)", 30, |v| v == 3.0)
        .await;
    prom.wait_for("count(tandem_cluster_members)", 30, |v| v == 3.0)
        .await;

    // Writes through node B's portal count on B.
    let mut i = session(b.portal(), "vm").await.expect("login through B");
    let block = vec![0x33u8; 4096];
    for n in 0..5u32 {
        let o = i.run(&rw10(0x2A, n * 8, 8), &block, 0).await.unwrap();
        assert_eq!(o.status, 0, "write {n}");
    }
    let writes = prom
        .wait_for("sum(tandem_volume_writes_total{volume=\"vm\"})", 30, |v| {
            v >= 5.0
        })
        .await;
    assert_eq!(writes, 5.0, "writes counted more than once");
    let b_job = prom
        .value("sum(tandem_volume_writes_total{volume=\"vm\",job=\"tandem-1\"})")
        .await;
    assert_eq!(b_job, Some(5.0), "B's writes not counted on B");
    // The primary timed the round trips of those writes to the other copy.
    prom.wait_for(
        "sum(tandem_replica_round_trip_seconds_count{volume=\"vm\"})",
        30,
        |v| v >= 5.0,
    )
    .await;
    // Every member reports the replicated state, the witness too.
    prom.wait_for(
        "count(tandem_cluster_volume_primary{volume=\"vm\"})",
        30,
        |v| v == 3.0,
    )
    .await;
}

#[test]
fn the_alert_rules_pass_their_unit_tests() {
    if !have("promtool") {
        return;
    }
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus");
    let out = Command::new("promtool")
        .args(["check", "rules", "tandem-rules.yml"])
        .current_dir(&deploy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("promtool")
        .args(["test", "rules", "tandem-rules.test.yml"])
        .current_dir(&deploy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every rule has a test that expects it to fire.
    let rules = std::fs::read_to_string(deploy.join("tandem-rules.yml")).unwrap();
    let tests = std::fs::read_to_string(deploy.join("tandem-rules.test.yml")).unwrap();
    for name in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        let fires = tests.split("alertname: ").skip(1).any(|t| {
            let (alert, rest) = t.split_once('\n').unwrap_or((t, ""));
            alert.trim() == name && rest.trim_start().starts_with("exp_alerts:\n")
        });
        assert!(fires, "no test expects {name} to fire");
    }
}
