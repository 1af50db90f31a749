//! `tandem events`, `tandem report` and `tandem volume status --watch`.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use api::{ApiClient, EventsQuery};
use clap::Args;
use node::{Event, Report, Timing};

use crate::size::format_size;
use crate::OutputError;

/// How long one `--follow` request waits for new events.
const FOLLOW_WAIT: u64 = 25;

/// How often `volume status --watch` asks again.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Width of the resync progress bar, in characters.
const BAR: usize = 30;

#[derive(Args)]
pub(crate) struct EventsArgs {
    /// Only events from this time on: a span back (90s, 10m, 2h, 7d) or a
    /// UTC time (2026-11-30 or 2026-11-30T14:05:00Z).
    #[arg(long)]
    since: Option<String>,
    /// Only events of this kind (failover, primary-moved, resync-start,
    /// resync-end, copy-out-of-sync, copy-detached, volume-create, volume-resize,
    /// volume-delete, snapshot-create, snapshot-delete, login-refused,
    /// checksum-error, space-low, space-ok, node-down, node-up,
    /// maintenance-enter, maintenance-exit); repeat or separate by commas.
    #[arg(long, value_delimiter = ',')]
    kind: Vec<String>,
    /// At most this many, the newest.
    #[arg(long)]
    limit: Option<usize>,
    /// Print JSON: an array, or with --follow one object per line.
    #[arg(long)]
    json: bool,
    /// Keep printing events as they happen, until Ctrl-C.
    #[arg(long)]
    follow: bool,
}

fn out(text: &str) -> anyhow::Result<()> {
    let mut o = std::io::stdout();
    o.write_all(text.as_bytes()).map_err(OutputError)?;
    o.flush().map_err(OutputError)?;
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of milliseconds since the Unix epoch.
pub(crate) fn utc_ms(ms: u64) -> String {
    let [y, m, d, h, mi, s] = node::utc_time(ms / 1000);
    format!(
        "{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:03}Z",
        ms % 1000
    )
}

/// A duration in microseconds, for people.
pub(crate) fn format_us(us: u64) -> String {
    match us {
        0..=999 => format!("{us} µs"),
        1_000..=999_999 => format!("{:.1} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

/// One event as a line of text: time, number, kind, what it concerns, its
/// fields (times and sizes for people).
pub(crate) fn event_line(e: &Event) -> String {
    let mut line = format!(
        "{}  #{:<5} {:<18}",
        utc_ms(e.time_ms),
        e.seq,
        e.kind.as_str()
    );
    if let Some(v) = &e.volume {
        line += &format!(" volume={v}");
    }
    if let Some(n) = &e.node {
        line += &format!(" node={n}");
    }
    for (k, v) in &e.fields {
        let shown = match (k.as_str(), v.as_u64()) {
            (k, Some(n)) if k == "us" || k.ends_with("_us") => format_us(n).replace(' ', ""),
            (k, Some(n)) if k == "bytes" || k.ends_with("_bytes") => {
                format_size(n).replace(' ', "")
            }
            _ => match v {
                serde_json::Value::String(s) => s.clone(),
                v => v.to_string(),
            },
        };
        line += &format!(" {k}={shown}");
    }
    line
}

pub(crate) async fn events(c: &ApiClient, args: EventsArgs) -> anyhow::Result<()> {
    let mut q = EventsQuery {
        since: args.since,
        after: None,
        kind: (!args.kind.is_empty()).then(|| args.kind.join(",")),
        limit: args.limit,
        wait: None,
    };
    let first = c.events(&q).await?;
    if !args.follow {
        if args.json {
            out(&format!("{}\n", serde_json::to_string_pretty(&first)?))?;
        } else if first.is_empty() {
            out("no events\n")?;
        } else {
            let text: String = first.iter().map(|e| event_line(e) + "\n").collect();
            out(&text)?;
        }
        return Ok(());
    }
    let print = |batch: &[Event]| -> anyhow::Result<()> {
        let mut text = String::new();
        for e in batch {
            if args.json {
                text += &serde_json::to_string(e)?;
            } else {
                text += &event_line(e);
            }
            text.push('\n');
        }
        out(&text)
    };
    print(&first)?;
    let mut last = first.last().map(|e| e.seq);
    if last.is_none() {
        // Nothing matched: follow from the newest event of any kind.
        last = c
            .events(&EventsQuery {
                limit: Some(1),
                ..Default::default()
            })
            .await?
            .last()
            .map(|e| e.seq);
    }
    q.since = None;
    q.limit = None;
    q.wait = Some(FOLLOW_WAIT);
    loop {
        q.after = Some(last.unwrap_or(0));
        let batch = tokio::select! {
            b = c.events(&q) => b?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        print(&batch)?;
        if let Some(e) = batch.last() {
            last = Some(e.seq);
        }
    }
}

fn timing_line(what: &str, t: &Timing) -> String {
    match (t.p50_us, t.p99_us) {
        (Some(p50), Some(p99)) => format!(
            "  {what:<22} p50 {:>10}   p99 {:>10}   ({} in the history)\n",
            format_us(p50),
            format_us(p99),
            t.count
        ),
        _ => format!("  {what:<22} no data yet\n"),
    }
}

/// `tandem report` as text.
pub(crate) fn report_text(r: &Report) -> String {
    let e = &r.efficiency;
    let mut s = String::new();
    s += &format!("report of {}\n", utc_ms(r.time_ms));
    match r.events_since_ms {
        Some(t) => s += &format!("from {} events kept since {}\n", r.events, utc_ms(t)),
        None => s += "no events kept yet\n",
    }
    s += "\nefficiency\n";
    if e.volumes == 0 {
        s += "  no data yet (no volume has data on this node)\n";
    } else {
        let pct = |part: u64, whole: u64| {
            if whole == 0 {
                0.0
            } else {
                part as f64 * 100.0 / whole as f64
            }
        };
        s += &format!(
            "  volumes                {} presenting {}, taking {}\n",
            e.volumes,
            format_size(e.logical_bytes),
            format_size(e.allocated_bytes)
        );
        s += &format!(
            "  thin provisioning      saved {} ({:.1} % of the size presented)\n",
            format_size(e.thin_saved_bytes),
            pct(e.thin_saved_bytes, e.logical_bytes)
        );
        if e.snapshots == 0 {
            s += "  snapshots              no data yet (none taken)\n";
        } else {
            s += &format!(
                "  snapshots              {} taking {}; saved {} against a full copy each\n",
                e.snapshots,
                format_size(e.snapshot_bytes),
                format_size(e.snapshot_saved_bytes)
            );
        }
        if e.clones == 0 {
            s += "  clones                 no data yet (none made)\n";
        } else {
            s += &format!(
                "  clones                 {} taking {}; saved {} against full copies of their origins\n",
                e.clones,
                format_size(e.clone_bytes),
                format_size(e.clone_saved_bytes)
            );
        }
    }
    s += "\nagility (from the event history)\n";
    s += &timing_line("create a volume", &r.agility.create);
    s += &timing_line("resize a volume", &r.agility.resize);
    s += &timing_line("fail over (I/O pause)", &r.agility.failover);
    s += &timing_line("resync a copy", &r.agility.resync);
    if r.agility.resync.count > 0 {
        s += &format!(
            "  {:<22} {} copied by those resyncs\n",
            "",
            format_size(r.agility.resync_bytes)
        );
    }
    s += "\nquality of service\n";
    if r.service.failovers.is_empty() {
        s += "  failovers              no data yet (none in the history)\n";
    }
    for f in &r.service.failovers {
        s += &format!(
            "  failover               {} volume {} from {} to {}: I/O paused {}\n",
            utc_ms(f.time_ms),
            f.volume,
            f.from,
            f.to,
            f.pause_us.map_or(
                "an unknown time (no sign of life of the old primary seen)".to_string(),
                format_us
            )
        );
    }
    if r.service.volumes.is_empty() {
        s += "  volumes                no data yet\n";
    }
    for v in &r.service.volumes {
        let p99 = |p: Option<u64>| {
            p.map_or("no data yet".to_string(), |us| {
                format!("≤ {}", format_us(us))
            })
        };
        s += &format!(
            "  volume {}: {}; {} commands, errors returned: {} medium, {} reservation conflicts, {} miscompares; p99 latency read {}, write {}\n",
            v.name,
            match (v.degraded_ms, v.degraded_now) {
                (0, false) => "never degraded".to_string(),
                (ms, now) => format!(
                    "degraded {}{}",
                    format_us(ms * 1000),
                    if now { " (and now)" } else { "" }
                ),
            },
            v.commands,
            v.medium_errors,
            v.reservation_conflicts,
            v.caw_miscompares,
            p99(v.read_p99_us),
            p99(v.write_p99_us)
        );
        for c in &v.replication {
            s += &format!(
                "    copy on {}: {}{}, p99 round trip {}\n",
                c.node,
                match c.behind_bytes {
                    0 => "in step".to_string(),
                    b => format!("{} behind", format_size(b)),
                },
                if c.connected { "" } else { " (not connected)" },
                p99(c.round_trip_p99_us)
            );
        }
        for (name, w) in [("last hour", &v.last_hour), ("last day", &v.last_day)] {
            if w.commands == 0 {
                continue;
            }
            s += &format!(
                "    {name} ({} covered): {} commands, p99 latency read {}, write {}\n",
                format_us(w.seconds * 1_000_000),
                w.commands,
                p99(w.read_p99_us),
                p99(w.write_p99_us)
            );
        }
    }
    s
}

pub(crate) async fn report(c: &ApiClient, json: bool) -> anyhow::Result<()> {
    let r = c.report().await?;
    if json {
        out(&format!("{}\n", serde_json::to_string_pretty(&r)?))
    } else {
        out(&report_text(&r))
    }
}

/// A resync's progress bar: `[#####.....]  45%  1.2 GiB of 2.0 GiB,
/// 120 MiB/s, ETA 7 s`.
pub(crate) fn progress_bar(done: u64, total: u64, rate: u64) -> String {
    let pct = crate::percent(done, total).min(100) as usize;
    let filled = pct * BAR / 100;
    let eta = match (total.saturating_sub(done), rate) {
        (0, _) => "done".to_string(),
        (_, 0) => "ETA unknown".to_string(),
        (left, r) => format!("ETA {}", format_us(left.div_ceil(r) * 1_000_000)),
    };
    format!(
        "[{}{}] {pct:>3}%  {} of {}, {}/s, {eta}",
        "#".repeat(filled),
        ".".repeat(BAR - filled),
        format_size(done),
        format_size(total),
        format_size(rate)
    )
}

/// One line that changes when the volume's state does: primary, epoch,
/// every copy's state (a running resync by tenths).
fn change_line(view: &api::ClusterView, vol: &cluster::VolumeRecord) -> String {
    let state = &view.status.state;
    let name = |n: u64| {
        state
            .nodes
            .get(&n)
            .map_or(n.to_string(), |i| i.name.clone())
    };
    let copies: Vec<String> = vol
        .replicas
        .iter()
        .map(|(&n, st)| match st {
            cluster::ReplicaState::InSync => format!("{}=in-sync", name(n)),
            cluster::ReplicaState::OutOfSync => format!("{}=out-of-sync", name(n)),
            cluster::ReplicaState::Syncing => match crate::resync_progress(view, &vol.name, n) {
                Some(p) => format!(
                    "{}=syncing:{}%",
                    name(n),
                    crate::percent(p.resync_done, p.resync_total) / 10 * 10
                ),
                None => format!("{}=syncing", name(n)),
            },
        })
        .collect();
    format!(
        "volume={} primary={} epoch={} copies={}",
        vol.name,
        name(vol.primary),
        vol.epoch,
        copies.join(",")
    )
}

/// `tandem volume status NAME --watch`.
pub(crate) async fn watch_volume(c: &ApiClient, name: &str) -> anyhow::Result<()> {
    let terminal = std::io::stdout().is_terminal();
    let mut last = String::new();
    loop {
        let view = c.cluster_without_versions().await?;
        let vol = crate::cluster_volume(c, &view, name).await?;
        if terminal {
            let mut screen = String::from("\x1b[H\x1b[2J");
            screen += &crate::volume_status_text(&view, vol);
            for (&n, st) in &vol.replicas {
                if *st != cluster::ReplicaState::Syncing {
                    continue;
                }
                if let Some(p) = crate::resync_progress(&view, name, n) {
                    let holder = view
                        .status
                        .state
                        .nodes
                        .get(&n)
                        .map_or(n.to_string(), |i| i.name.clone());
                    screen += &format!(
                        "\nresync of {holder}  {}\n",
                        progress_bar(p.resync_done, p.resync_total, p.resync_rate)
                    );
                }
            }
            screen += &format!(
                "\n{}  (every {} s; Ctrl-C to stop)\n",
                utc_ms(node::now_ms()),
                WATCH_EVERY.as_secs()
            );
            out(&screen)?;
        } else {
            let line = change_line(&view, vol);
            if line != last {
                out(&format!("{} {line}\n", utc_ms(node::now_ms())))?;
                last = line;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(WATCH_EVERY) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_progress_and_says_how_long_is_left() {
        let b = progress_bar(0, 100 << 20, 0);
        assert!(b.starts_with(&format!("[{}]   0%", ".".repeat(BAR))), "{b}");
        assert!(b.ends_with("ETA unknown"), "{b}");
        let b = progress_bar(50 << 20, 100 << 20, 10 << 20);
        assert!(
            b.contains(&format!("[{}{}]  50%", "#".repeat(15), ".".repeat(15))),
            "{b}"
        );
        assert!(b.ends_with("ETA 5.00 s"), "{b}");
        let b = progress_bar(100 << 20, 100 << 20, 10 << 20);
        assert!(b.contains("100%") && b.ends_with("done"), "{b}");
    }

    #[test]
    fn an_event_line_shows_times_and_sizes_for_people() {
        let e = Event {
            seq: 12,
            time_ms: 1_796_047_509_250,
            ..Event::new(node::EventKind::ResyncEnd)
                .volume("vm")
                .node("b")
                .with("bytes", 4u64 << 20)
                .with("us", 1_500_000u64)
                .with("how", "incremental")
        };
        let line = event_line(&e);
        assert!(line.starts_with("2026-11-30T14:05:09.250Z  #12"), "{line}");
        assert!(line.contains("resync-end         volume=vm"), "{line}");
        assert!(line.contains("volume=vm node=b"), "{line}");
        assert!(
            line.contains("bytes=4MiB") || line.contains("bytes=4.0MiB"),
            "{line}"
        );
        assert!(
            line.contains("us=1.50s") && line.contains("how=incremental"),
            "{line}"
        );
    }

    #[test]
    fn durations_for_people() {
        assert_eq!(format_us(850), "850 µs");
        assert_eq!(format_us(1_500), "1.5 ms");
        assert_eq!(format_us(2_345_678), "2.35 s");
    }
}
