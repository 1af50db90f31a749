//! The event history and the report, with real processes: two data nodes
//! and a witness on loopback. A volume is created and grown, its primary
//! killed with SIGKILL (the other node takes over) and started again (its
//! copy is resynced). `tandem events --json` on the survivor lists the
//! failover, the old primary down and up again, and the resync, in that
//! order and with plausible figures; on the node the volume was made
//! through, the create and the resize, still there after a SIGKILL and a
//! restart. `tandem report --json` counts them: an I/O pause above 0, the
//! bytes the resync copied, create and resize times above 0. Each event is
//! also a log line `event=<kind>`; `tandem events --follow` prints an event
//! as it happens; `tandem volume status --watch` into a pipe prints one line
//! per change (the failover, the copy back in sync).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::cluster::{
    all_in_sync, node_id, node_name, on_loopback, session, volume_record, wait_until, write,
    write_until_acknowledged,
};
use common::{tandem_bin, Server};
use serde_json::Value;
use testkit::history::History;

/// Extents written through the survivor while the old primary is away.
const AWAY_EXTENTS: u64 = 64;

fn events(s: &Server, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["events", "--json"];
    all.extend_from_slice(args);
    let out = s.cli_ok(&all);
    serde_json::from_str::<Vec<Value>>(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The lines `out` prints, as they come.
fn lines_of(out: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

fn report(s: &Server) -> Value {
    serde_json::from_str(&s.cli_ok(&["report", "--json"])).unwrap()
}

/// The first event of `kind` (about `volume`, when given) after number `after`.
fn find<'a>(
    events: &'a [Value],
    kind: &str,
    volume: Option<&str>,
    after: u64,
) -> Option<&'a Value> {
    events.iter().find(|e| {
        e["kind"] == kind
            && e["seq"].as_u64().unwrap() > after
            && volume.is_none_or(|v| e["volume"] == v)
    })
}

fn seq(e: &Value) -> u64 {
    e["seq"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_and_a_resync_are_recorded_in_order_and_counted_in_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, _witness, _) = on_loopback(dir.path());
    // Nothing happened yet that the report could go by.
    let empty = report(&a);
    assert!(empty["agility"]["create"]["p50_us"].is_null(), "{empty}");
    assert!(
        a.cli_ok(&["report"]).contains("no data yet"),
        "the text report says where there is no data"
    );

    a.cli_ok(&["volume", "create", "vm", "--size", "64M", "--replicas", "2"]);
    a.cli_ok(&["volume", "resize", "vm", "--size", "96M"]);
    wait_until("both copies in sync", 30, || all_in_sync(&a, "vm"));
    let made = events(&a, &["--kind", "volume-create,volume-resize"]);
    assert_eq!(made.len(), 2, "{made:?}");
    assert_eq!(made[0]["kind"], "volume-create");
    assert_eq!(made[0]["volume"], "vm");
    assert_eq!(made[0]["fields"]["bytes"], 64 << 20);
    assert!(made[0]["fields"]["us"].as_u64().unwrap() > 0);
    assert_eq!(made[1]["kind"], "volume-resize");
    assert_eq!(made[1]["fields"]["from_bytes"], 64 << 20);
    assert_eq!(made[1]["fields"]["bytes"], 96 << 20);
    assert!(seq(&made[0]) < seq(&made[1]));

    let primary_id = volume_record(&a, "vm")["primary"].as_u64().unwrap();
    let a_leads = primary_id == node_id(&a);
    let (primary, other) = if a_leads {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let (old_name, new_name) = (node_name(primary), node_name(other));
    let mut h = History::default();
    let mut n = 0;
    {
        let mut s = session(primary.portal(), "vm").await.expect("session");
        for i in 0..8 {
            n += 1;
            assert_eq!(write(&mut s, &mut h, i, n).await, Some(true));
        }
    }
    // Let the survivor's watch see every member up before the kill.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = events(other, &[]).last().map_or(0, seq);
    // `volume status --watch`, its stdout no terminal: one line per change.
    let mut watch = Command::new(tandem_bin())
        .args(["volume", "status", "vm", "--watch"])
        .env("TANDEM_API", format!("{}:{}", other.host, other.api_port))
        .env("TANDEM_DATA_DIR", &other.data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let watched = lines_of(watch.stdout.take().unwrap());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    primary.kill();
    write_until_acknowledged(
        other.portal(),
        "vm",
        &mut h,
        &mut n,
        4,
        Duration::from_secs(60),
    )
    .await;
    let other_id = node_id(other);
    wait_until("the survivor leads the volume", 30, || {
        volume_record(other, "vm")["primary"].as_u64() == Some(other_id)
    });
    {
        let mut s = session(other.portal(), "vm").await.expect("session");
        for i in 0..AWAY_EXTENTS {
            n += 1;
            assert_eq!(write(&mut s, &mut h, i * 3, n).await, Some(true));
        }
    }
    // The old primary stays away until the watch has shown it out of sync.
    let mut watched_lines = Vec::new();
    let away = format!("{old_name}=out-of-sync");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline
        && !watched_lines.iter().any(|l: &String| l.contains(&away))
    {
        if let Ok(l) = watched.recv_timeout(Duration::from_millis(200)) {
            watched_lines.push(l);
        }
    }
    // And until the survivor's watch has counted it down: a node back
    // before that is never seen down, so it is never seen up again either.
    wait_until("the old primary seen down", 20, || {
        events(other, &["--kind", "node-down"])
            .iter()
            .any(|e| e["node"] == old_name.as_str() && seq(e) > before)
    });
    primary.restart();
    wait_until("the returning copy in sync", 120, || {
        all_in_sync(other, "vm")
    });
    // The end of the resync is recorded once the control plane has it.
    wait_until("the resync recorded", 10, || {
        find(&events(other, &[]), "resync-end", Some("vm"), before).is_some()
    });
    // And the old primary seen back, within a few readings of the watch.
    wait_until("the old primary seen up again", 10, || {
        events(other, &["--kind", "node-up"])
            .iter()
            .any(|e| e["node"] == old_name.as_str() && seq(e) > before)
    });

    // The watch reads every second: it shows the copy back in sync soon.
    let back = |l: &str| {
        l.contains(&format!(" primary={new_name} ")) && l.contains(&format!("{old_name}=in-sync"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        let Ok(l) = watched.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        watched_lines.push(l);
        if back(watched_lines.last().unwrap()) {
            break;
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    let watched = watched_lines;
    let primary_in = |l: &String, n: &str| l.contains(&format!(" primary={n} "));
    assert!(
        watched.first().is_some_and(|l| primary_in(l, &old_name)),
        "{watched:#?}"
    );
    assert!(
        watched
            .iter()
            .any(|l| primary_in(l, &new_name) && l.contains(&format!("{old_name}=out-of-sync"))),
        "the failover not watched: {watched:#?}"
    );
    assert!(
        watched.last().is_some_and(|l| back(l)),
        "the copy back in sync not watched: {watched:#?}"
    );
    assert!(
        watched.windows(2).all(|w| w[0][25..] != w[1][25..]),
        "a line without a change: {watched:#?}"
    );

    let seen = events(other, &[]);
    let failover = find(&seen, "failover", Some("vm"), before)
        .unwrap_or_else(|| panic!("no failover in {seen:#?}"));
    assert_eq!(failover["fields"]["from"], old_name.as_str());
    assert_eq!(failover["fields"]["to"], new_name.as_str());
    assert_eq!(failover["node"], new_name.as_str());
    assert!(failover["fields"]["epoch"].as_u64().unwrap() > 1);
    let pause = failover["fields"]["pause_us"].as_u64().expect("a pause");
    // The old primary is declared dead after more than a second of silence;
    // a pause of a minute would be no failover worth the name.
    assert!((500_000..60_000_000).contains(&pause), "pause {pause} µs");
    let start = find(&seen, "resync-start", Some("vm"), seq(failover))
        .unwrap_or_else(|| panic!("no resync start after the failover in {seen:#?}"));
    assert_eq!(start["node"], old_name.as_str());
    let end = find(&seen, "resync-end", Some("vm"), seq(start))
        .unwrap_or_else(|| panic!("no resync end after its start in {seen:#?}"));
    assert_eq!(end["node"], old_name.as_str());
    let copied = end["fields"]["bytes"].as_u64().unwrap();
    assert!(copied > 0 && copied <= 96 << 20, "resync bytes {copied}");
    let how = end["fields"]["how"].as_str().unwrap();
    assert_eq!(
        how == "full",
        copied == 96 << 20,
        "{how} resync of {copied} bytes"
    );
    assert!(end["fields"]["us"].as_u64().unwrap() > 0);
    let of_old = |kind: &str, after: u64| {
        seen.iter()
            .find(|e| e["kind"] == kind && e["node"] == old_name.as_str() && seq(e) > after)
            .unwrap_or_else(|| panic!("no {kind} of {old_name} in {seen:#?}"))
    };
    let down = of_old("node-down", before);
    of_old("node-up", seq(down));
    let times: Vec<u64> = seen
        .iter()
        .map(|e| e["time_ms"].as_u64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "events out of time order"
    );
    // Filtered by kind, and one log line per event.
    let only = events(other, &["--kind", "failover"]);
    assert!(only.iter().all(|e| e["kind"] == "failover") && !only.is_empty());
    let log = common::log::plain(&other.log_text());
    assert!(
        log.lines()
            .any(|l| l.contains("event=") && l.contains("failover") && l.contains("pause_us=")),
        "no log line for the failover"
    );

    // The metrics show the same pause, in seconds.
    let token = std::fs::read_to_string(other.data_dir.join("api.token")).unwrap();
    let metrics = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/metrics", other.api_port))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let gauge: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("tandem_cluster_last_failover_pause_seconds{volume=\"vm\"} ")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no failover pause in the metrics:\n{metrics}"));
    assert!(
        (gauge - pause as f64 / 1e6).abs() < 1e-6,
        "{gauge} s against {pause} µs"
    );

    let r = report(other);
    println!(
        "failover pause {:.2} s; resync {} bytes in {:.3} s ({how})",
        pause as f64 / 1e6,
        copied,
        end["fields"]["us"].as_u64().unwrap() as f64 / 1e6
    );
    assert_eq!(r["agility"]["failover"]["count"], 1, "{r:#}");
    assert_eq!(r["agility"]["failover"]["p50_us"], pause);
    assert_eq!(r["service"]["failovers"][0]["pause_us"], pause);
    assert!(r["agility"]["resync"]["count"].as_u64().unwrap() >= 1);
    assert!(r["agility"]["resync_bytes"].as_u64().unwrap() >= copied);
    let vm = r["service"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "vm")
        .expect("the volume in the report");
    assert!(vm["degraded_ms"].as_u64().unwrap() > 0, "{vm}");
    assert_eq!(vm["degraded_now"], false);
    assert!(vm["write_p99_us"].as_u64().unwrap() > 0, "{vm}");
    // The node ran for less than an hour: the last hour's window is every
    // write since it started.
    assert!(vm["last_hour"]["commands"].as_u64().unwrap() > 0, "{vm}");
    assert!(
        vm["last_hour"]["write_p99_us"].as_u64().unwrap() > 0,
        "{vm}"
    );
    assert_eq!(
        vm["last_hour"]["commands"], vm["last_day"]["commands"],
        "{vm}"
    );
    // The survivor leads: the returned copy is in step, and the writes
    // (the resync's too) sent to it were timed.
    let copy = &vm["replication"][0];
    assert_eq!(copy["node"], old_name.as_str(), "{vm}");
    assert_eq!(copy["behind_bytes"], 0, "{vm}");
    assert_eq!(copy["connected"], true, "{vm}");
    assert!(copy["round_trip_p99_us"].as_u64().unwrap() > 0, "{vm}");
    assert!(r["efficiency"]["thin_saved_bytes"].as_u64().unwrap() > 0);
    let text = other.cli_ok(&["report"]);
    assert!(
        text.contains("fail over (I/O pause)") && text.contains("p50"),
        "{text}"
    );

    // The node the volume was made through keeps its history across a SIGKILL.
    let maker = &mut a;
    let kept: Vec<Value> = events(maker, &[]);
    maker.kill();
    maker.restart();
    wait_until("the node answers again", 30, || {
        maker
            .cli_within(&["events", "--json"], Duration::from_secs(5))
            .is_some()
    });
    let after_restart = events(maker, &[]);
    assert!(after_restart.len() >= kept.len());
    assert_eq!(
        after_restart[..kept.len()],
        kept[..],
        "history changed by a restart"
    );
    let r = report(maker);
    assert!(
        r["agility"]["create"]["p50_us"].as_u64().unwrap() > 0,
        "{r:#}"
    );
    assert!(
        r["agility"]["resize"]["p50_us"].as_u64().unwrap() > 0,
        "{r:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_prints_an_event_as_it_happens_and_a_refused_login_is_one_an_hour() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("n"));
    let mut follow = Command::new(tandem_bin())
        .args([
            "events",
            "--follow",
            "--json",
            "--kind",
            "volume-create,login-refused",
        ])
        .env("TANDEM_API", format!("{}:{}", s.host, s.api_port))
        .env("TANDEM_DATA_DIR", &s.data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = lines_of(follow.stdout.take().unwrap());
    std::thread::sleep(Duration::from_millis(500));
    s.cli_ok(&["volume", "create", "f", "--size", "8M"]);
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("--follow printed the new event");
    let e: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (e["kind"].as_str(), e["volume"].as_str()),
        (Some("volume-create"), Some("f"))
    );
    let missing = format!("{}:no-such-volume", common::node_prefix());
    assert!(
        testkit::Initiator::try_normal(s.portal(), &missing, Duration::from_secs(3))
            .await
            .is_none()
    );
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("--follow printed the refused login");
    let e: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(e["kind"], "login-refused");
    assert_eq!(e["fields"]["reason"], "target_not_found");
    assert_eq!(e["fields"]["target"], missing.as_str());
    assert!(!e["fields"]["initiator"].as_str().unwrap().is_empty());
    let _ = follow.kill();
    let _ = follow.wait();
    // The same initiator refused again within the hour, as a host with a
    // wrong target or secret retries: counted, not recorded again.
    for _ in 0..3 {
        assert!(
            testkit::Initiator::try_normal(s.portal(), &missing, Duration::from_secs(3))
                .await
                .is_none()
        );
    }
    let refused = events(&s, &["--kind", "login-refused"]);
    assert_eq!(refused.len(), 1, "{refused:#?}");
    // A kind that does not exist is refused with the list of those that do.
    let out = s.cli(&["events", "--kind", "failovers"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("resync-end"), "{err}");
}
