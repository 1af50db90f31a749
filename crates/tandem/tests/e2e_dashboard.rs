//! The web dashboard in a real browser: headless Chromium driven over
//! WebDriver (chromedriver) against two data nodes and a witness on
//! loopback. A wrong token is refused with the API's own message and the
//! right one logs in; the overview shows every member up and the I/O
//! figures become non-zero while an initiator writes through the node; a
//! volume created in the browser (after its confirmation) is in `tandem
//! volume list`, and creating it again shows the API's error; the volume
//! is grown, its access set, a copy added to another and that one deleted,
//! each in the browser after its confirmation; the volumes page lists the
//! initiator's session; the events page shows the history and filters it
//! by kind, the report page the report; a node killed with SIGKILL is
//! shown DOWN, and the health degraded, within seconds; a token the node
//! refuses later leads back to the login page.
//!
//! Without chromium or chromedriver the test is skipped with the reason,
//! unless `CI` is set, where it fails. With
//! `TANDEM_DASHBOARD_SCREENSHOTS=<dir>` it saves a PNG of each page there
//! (`docs/dashboard/` holds the ones the docs show).

mod common;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{node_id, node_name, on_loopback, volume_record, wait_until, Writer};
use common::{free_port, Server};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use testkit::history::History;

/// The browser and its driver, from Debian's `chromium` and
/// `chromium-driver`; `None` (and why) when one is missing.
fn browser() -> Result<(PathBuf, PathBuf), String> {
    let find = |names: &[&str]| {
        names.iter().find_map(|n| {
            let out = Command::new("sh")
                .args(["-c", &format!("command -v {n}")])
                .output()
                .ok()?;
            let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
            (out.status.success() && !path.is_empty()).then(|| PathBuf::from(path))
        })
    };
    let chromium = find(&["chromium", "chromium-browser"]);
    let driver = find(&["chromedriver"]);
    match (chromium, driver) {
        (Some(c), Some(d)) => Ok((c, d)),
        (c, d) => Err(format!(
            "{} not installed (Debian packages chromium and chromium-driver; \
             scripts/install-test-deps.sh installs them)",
            [
                c.is_none().then_some("chromium"),
                d.is_none().then_some("chromedriver")
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" and ")
        )),
    }
}

/// A chromedriver process on a loopback port; killed by its pid on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start(bin: &Path, log: &Path) -> Driver {
        let port = free_port();
        let log = std::fs::File::create(log).expect("chromedriver log");
        let child = Command::new(bin)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let driver = Driver { child, port };
        wait_until("chromedriver to listen", 20, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        driver
    }
}

impl Drop for Driver {
    /// Asks chromedriver to end its browsers and itself (`GET /shutdown`),
    /// so that a test failing before its session closed leaves no Chromium
    /// behind; kills it by its pid if it is still there after 5 s.
    fn drop(&mut self) {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.write_all(
                b"GET /shutdown HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            );
            let _ = s.read(&mut [0u8; 512]);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A headless Chromium session, its window the size the screenshots have.
async fn session(driver: &Driver, chromium: &Path) -> Client {
    let caps = json!({
        "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1200,1000",
                     "--no-first-run", "--disable-extensions"],
        }
    });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    let mut builder = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
    builder.capabilities(caps);
    builder
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .unwrap_or_else(|e| panic!("cannot start a Chromium session: {e}"))
}

/// What `script` returns in the page.
async fn eval(c: &Client, script: &str) -> Value {
    c.execute(script, vec![])
        .await
        .unwrap_or_else(|e| panic!("{script}: {e}"))
}

/// The text of the first element `css` picks ("" when none does).
async fn text(c: &Client, css: &str) -> String {
    let script = format!(
        "const e = document.querySelector({}); return e ? e.textContent : '';",
        json!(css)
    );
    eval(c, &script).await.as_str().unwrap_or("").to_string()
}

/// Whether the element `css` picks is shown.
async fn shown(c: &Client, css: &str) -> bool {
    let script = format!(
        "const e = document.querySelector({}); return !!e && e.offsetParent !== null;",
        json!(css)
    );
    eval(c, &script).await == json!(true)
}

/// Waits up to `secs` for `f` to hold, failing with `what` and the page's
/// error banner.
async fn wait_for<F, Fut>(c: &Client, what: &str, secs: u64, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = Instant::now();
    while !f().await {
        if t.elapsed() > Duration::from_secs(secs) {
            let banner = text(c, "#error").await;
            panic!("timed out after {secs} s: {what} (page error: {banner:?})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    t.elapsed()
}

async fn fill(c: &Client, css: &str, value: &str) {
    let e = c
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    e.clear().await.unwrap_or_else(|e| panic!("{css}: {e}"));
    e.send_keys(value)
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
}

/// Clicks the element `css` picks, found and clicked in one step in the
/// page (the tables are redrawn as they refresh).
async fn click(c: &Client, css: &str) {
    let script = format!(
        "const e = document.querySelector({}); if (!e) return false; e.click(); return true;",
        json!(css)
    );
    assert_eq!(
        eval(c, &script).await,
        json!(true),
        "nothing to click at {css}"
    );
}

/// Answers the open dialog: `value` in its input when given, then OK.
async fn answer(c: &Client, text: &str, value: Option<&str>) {
    wait_for(c, &format!("the dialog {text:?}"), 5, || async {
        shown(c, "#dialog-ok").await && self::text(c, "#dialog-text").await.starts_with(text)
    })
    .await;
    if let Some(v) = value {
        fill(c, "#dialog-input", v).await;
    }
    click(c, "#dialog-ok").await;
}

/// `tandem volume show <name> --json` on `s`.
fn show(s: &Server, name: &str) -> Value {
    serde_json::from_str(&s.cli_ok(&["volume", "show", name, "--json"])).expect("volume JSON")
}

/// Saves a PNG of the page as `name` when screenshots are asked for.
async fn screenshot(c: &Client, name: &str) {
    let Some(dir) = std::env::var_os("TANDEM_DASHBOARD_SCREENSHOTS") else {
        return;
    };
    let png = c
        .screenshot()
        .await
        .unwrap_or_else(|e| panic!("screenshot {name}: {e}"));
    let path = Path::new(&dir).join(format!("{name}.png"));
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    std::fs::write(&path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// The leading number of a figure such as `1,234 IOPS`.
fn figure(s: &str) -> f64 {
    let n: String = s
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ',')
        .filter(|c| *c != ',')
        .collect();
    n.parse().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_logs_in_shows_live_figures_creates_a_volume_and_a_dead_node() {
    let (chromium, chromedriver) = match browser() {
        Ok(found) => found,
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("the dashboard test must run in CI: {why}")
        }
        Err(why) => {
            // Past the test harness's capture, so that it is seen.
            let _ = writeln!(std::io::stderr(), "skipping the dashboard test: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, mut b, _witness, _) = on_loopback(dir.path());
    let b_name = node_name(&b);
    let driver = Driver::start(&chromedriver, &dir.path().join("chromedriver.log"));
    let c = session(&driver, &chromium).await;
    let base = format!("http://127.0.0.1:{}", a.api_port);

    // Login: the page needs no token, a wrong one gets the API's answer.
    c.goto(&format!("{base}/"))
        .await
        .expect("open the dashboard");
    wait_for(&c, "the login form", 10, || shown(&c, "#login-token")).await;
    screenshot(&c, "login").await;
    fill(&c, "#login-token", "not-the-token").await;
    click(&c, "#login-submit").await;
    wait_for(&c, "the refusal", 10, || async {
        text(&c, "#login-error")
            .await
            .contains("missing or wrong API token")
    })
    .await;
    assert!(!shown(&c, "#page-overview").await);
    let token = std::fs::read_to_string(a.data_dir.join("api.token")).expect("API token");
    fill(&c, "#login-token", token.trim()).await;
    click(&c, "#login-submit").await;
    wait_for(&c, "the overview with 3 members up", 15, || async {
        shown(&c, "#page-overview").await
            && eval(
                &c,
                "return [...document.querySelectorAll('#members .liveness')]\
                 .filter(e => e.textContent === 'up').length;",
            )
            .await
                == json!(3)
    })
    .await;
    // Healthy, unless the filesystem the test runs on is itself 90 % full:
    // then that is the one reason, and the page says what the API says.
    let health: Value = reqwest::Client::new()
        .get(format!("{base}/v1/health"))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let host_disk_full = health["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r.as_str().unwrap().starts_with("the data filesystem is"));
    let expected = if health["state"] == "degraded" && host_disk_full {
        println!("the test's filesystem is full enough to degrade the health: {health}");
        "degraded"
    } else {
        "healthy"
    };
    assert_eq!(health["state"], expected, "{health}");
    assert_eq!(text(&c, "#health-word").await, expected);

    // A volume made in the browser, confirmed first.
    c.goto(&format!("{base}/#volumes")).await.unwrap();
    wait_for(&c, "the volumes page", 10, || shown(&c, "#create-name")).await;
    fill(&c, "#create-name", "web").await;
    fill(&c, "#create-size", "64M").await;
    fill(&c, "#create-replicas", "2").await;
    click(&c, "#create-submit").await;
    wait_for(&c, "the confirmation", 5, || shown(&c, "#dialog-ok")).await;
    assert!(
        !a.cli_ok(&["volume", "list"]).contains("web"),
        "nothing is made before the confirmation"
    );
    answer(&c, "Create volume web of 64 MiB, 2 copies?", None).await;
    wait_for(&c, "the new volume's row", 15, || async {
        text(&c, "tr[data-volume='web'] td:nth-child(4)")
            .await
            .matches("in-sync")
            .count()
            == 2
    })
    .await;
    for s in [&a, &b] {
        let list = s.cli_ok(&["volume", "list"]);
        assert!(list.contains("web"), "tandem volume list: {list}");
    }
    // The same volume again: the API's own words.
    fill(&c, "#create-name", "web").await;
    fill(&c, "#create-size", "64M").await;
    click(&c, "#create-submit").await;
    answer(&c, "Create volume web", None).await;
    let refused = a.cli(&["volume", "create", "web", "--size", "64M"]);
    assert!(!refused.status.success());
    let cli_error = String::from_utf8_lossy(&refused.stderr).to_string();
    wait_for(&c, "the API's error", 10, || async {
        let banner = text(&c, "#error").await;
        !banner.is_empty() && cli_error.contains(banner.trim())
    })
    .await;

    // Grown and its access set, each asked then confirmed.
    click(&c, "tr[data-volume='web'] button[data-action='resize']").await;
    answer(&c, "Grow volume web (now 64 MiB) to:", Some("96M")).await;
    answer(&c, "Grow volume web from 64 MiB to 96 MiB?", None).await;
    wait_for(&c, "the new size", 10, || async {
        text(&c, "tr[data-volume='web'] td:nth-child(2)").await == "96 MiB"
    })
    .await;
    assert_eq!(show(&a, "web")["size_bytes"], 96 << 20);
    click(&c, "tr[data-volume='web'] button[data-action='access']").await;
    answer(
        &c,
        "Initiators allowed to log in to web",
        Some("iqn.2026-11.test:init"),
    )
    .await;
    answer(&c, "Let iqn.2026-11.test:init log in to web?", None).await;
    wait_for(&c, "the access rule", 10, || async {
        text(&c, "tr[data-volume='web'] td:nth-child(7)").await == "iqn.2026-11.test:init"
    })
    .await;
    assert_eq!(
        show(&a, "web")["allowed_initiators"],
        json!(["iqn.2026-11.test:init"])
    );

    // A copy added to a volume that had one, and the volume deleted.
    a.cli_ok(&[
        "volume",
        "create",
        "scratch",
        "--size",
        "32M",
        "--replicas",
        "1",
    ]);
    wait_for(&c, "the volume made by the CLI", 10, || {
        shown(
            &c,
            "tr[data-volume='scratch'] button[data-action='replica']",
        )
    })
    .await;
    click(
        &c,
        "tr[data-volume='scratch'] button[data-action='replica']",
    )
    .await;
    answer(&c, "Node to hold a new copy of scratch", None).await;
    answer(&c, "Add a copy of scratch (32 MiB) on node-", None).await;
    wait_until("a second copy of scratch", 15, || {
        volume_record(&a, "scratch")["replicas"]
            .as_object()
            .is_some_and(|r| r.len() == 2)
    });
    click(&c, "tr[data-volume='scratch'] button[data-action='delete']").await;
    answer(&c, "Delete volume scratch and all its data (32 MiB)?", None).await;
    wait_for(&c, "the deleted volume gone", 10, || async {
        !shown(&c, "tr[data-volume='scratch']").await
    })
    .await;
    assert!(!a.cli_ok(&["volume", "list"]).contains("scratch"));
    assert_eq!(text(&c, "#error").await, "", "no action failed");

    // A copy's resync as the page shows it from its primary's progress.
    let shown_resync = eval(
        &c,
        "return resync({state: 'syncing', node: 2, resync_total: 100 * 2 ** 20, \
         resync_done: 25 * 2 ** 20, resync_rate: 10 * 2 ** 20}).textContent;",
    )
    .await;
    assert_eq!(
        shown_resync,
        json!(" 25% of 100 MiB, 10 MiB/s, ETA 7.5 s"),
        "resync progress"
    );
    // The bar is drawn too: the content policy refuses style attributes,
    // and the page reports what it refuses.
    let drawn = c
        .execute_async(
            "const done = arguments[arguments.length - 1]; \
             const refused = []; \
             document.addEventListener('securitypolicyviolation', \
               (e) => refused.push(e.violatedDirective)); \
             const r = resync({state: 'syncing', node: 2, resync_total: 100, \
               resync_done: 25, resync_rate: 10}); \
             document.body.append(r); \
             setTimeout(() => { \
               const width = r.querySelector('.progress > span').getBoundingClientRect().width; \
               const whole = r.querySelector('.progress').getBoundingClientRect().width; \
               r.remove(); done({share: width / whole, refused}); }, 300);",
            vec![],
        )
        .await
        .expect("draw a resync bar");
    assert_eq!(drawn["refused"], json!([]), "{drawn}");
    let share = drawn["share"].as_f64().unwrap_or(0.0);
    assert!(
        (share - 0.25).abs() < 0.05,
        "the bar is a quarter full: {drawn}"
    );
    // Rates from the counters, series by series: a deleted volume's or a
    // new one's counters are no burst of I/O, a restarted node's count
    // from 0.
    let rates = eval(
        &c,
        "const m = (vols) => parseMetrics(vols.map(([n, r]) => \
           `tandem_volume_reads_total{volume=\"${n}\"} ${r}`).join('\\n')); \
         const a = sample(m([['a', 1000], ['b', 5000000]]), 10); \
         const b = sample(m([['a', 1100]]), 11); \
         const c = sample(m([['a', 1150], ['new', 900000]]), 12); \
         const d = sample(m([['a', 40], ['new', 3]]), 14); \
         return [rate(a, b).iops[0], rate(b, c).iops[0], rate(c, d).iops[0], \
           rate(d, d).iops[0]];",
    )
    .await;
    assert_eq!(rates, json!([100, 50, 21.5, 0]), "read rates");

    // Writes through the node the browser shows: its volume's primary.
    if volume_record(&a, "web")["primary"].as_u64() != Some(node_id(&a)) {
        a.cli_ok(&["volume", "move-primary", "web", "--to", &node_name(&a)]);
    }
    let writer = Writer::start(a.portal(), "web", History::default(), 0, 256);
    c.goto(&format!("{base}/#overview")).await.unwrap();
    wait_for(&c, "IOPS above 0 on the chart", 15, || async {
        figure(&text(&c, "#iops-now").await) > 0.0
    })
    .await;
    wait_for(&c, "throughput above 0", 5, || async {
        !text(&c, "#throughput-now").await.starts_with("0 B")
    })
    .await;
    // A few seconds more of the chart for the picture.
    if std::env::var_os("TANDEM_DASHBOARD_SCREENSHOTS").is_some() {
        tokio::time::sleep(Duration::from_secs(8)).await;
    }
    screenshot(&c, "overview").await;

    // The session, with the initiator's name, on the volumes page.
    c.goto(&format!("{base}/#volumes")).await.unwrap();
    wait_for(&c, "the session on the volumes page", 10, || async {
        text(&c, "tr[data-volume='web'] td:nth-child(6)")
            .await
            .contains("iqn.2026-11.test:init from 127.0.0.1:")
    })
    .await;
    screenshot(&c, "volumes").await;
    let (_, _, acknowledged) = writer.finish().await;
    assert!(acknowledged > 0);

    // The history and the report.
    c.goto(&format!("{base}/#events")).await.unwrap();
    wait_for(&c, "the volume-create event", 10, || async {
        text(&c, "#events-table tbody")
            .await
            .contains("volume-create")
    })
    .await;
    screenshot(&c, "events").await;
    eval(
        &c,
        "const s = document.getElementById('events-kind'); s.value = 'volume-resize'; \
         s.dispatchEvent(new Event('change')); return true;",
    )
    .await;
    wait_for(&c, "the events of one kind", 10, || async {
        eval(
            &c,
            "return [...document.querySelectorAll('#events-table tbody tr')]\
             .map(r => r.dataset.kind).join(',');",
        )
        .await
            == json!("volume-resize")
    })
    .await;
    c.goto(&format!("{base}/#report")).await.unwrap();
    wait_for(&c, "the report", 10, || async {
        text(&c, "#report-agility").await.contains("median")
    })
    .await;
    let served = text(&c, "#report-service tr[data-volume='web'] td:nth-child(3)").await;
    assert!(
        figure(&served) >= acknowledged as f64,
        "the report counts the writes: {served:?}, {acknowledged} acknowledged"
    );
    screenshot(&c, "report").await;

    // A node killed outright is shown down within seconds.
    c.goto(&format!("{base}/#overview")).await.unwrap();
    // A node that takes the call and never answers: the page gives up on
    // it, says so, and refreshes again once the node answers.
    eval(
        &c,
        "window.realFetch = window.fetch; \
         window.fetch = (path, options) => new Promise((_, fail) => \
           options.signal.addEventListener('abort', () => fail(options.signal.reason))); \
         return true;",
    )
    .await;
    wait_for(&c, "the call given up", 25, || async {
        text(&c, "#error").await.contains("did not answer GET /v1/")
    })
    .await;
    eval(&c, "window.fetch = window.realFetch; return true;").await;
    wait_for(&c, "the page refreshed again", 10, || async {
        text(&c, "#error").await.is_empty()
    })
    .await;
    b.kill();
    let down = format!("tr[data-member='{b_name}'] .liveness");
    let took = wait_for(&c, "the killed node shown DOWN", 15, || async {
        text(&c, &down).await == "DOWN"
    })
    .await;
    eprintln!("killed node shown DOWN after {took:?}");
    wait_for(&c, "the health degraded", 5, || async {
        text(&c, "#health-word").await == "degraded"
            && text(&c, "#health-reasons")
                .await
                .contains(&format!("node {b_name} is down"))
    })
    .await;
    screenshot(&c, "overview-node-down").await;

    // A token the node no longer takes leads back to the login page, with
    // the API's words.
    eval(
        &c,
        "sessionStorage.setItem('tandem-api-token', 'stale'); return true;",
    )
    .await;
    wait_for(&c, "the login page again", 10, || async {
        shown(&c, "#login-token").await
            && text(&c, "#login-error")
                .await
                .contains("missing or wrong API token")
    })
    .await;

    c.close().await.expect("close the browser");
    drop(driver);
}
