//! `tandem cluster remove NODE --dead`, `tandem cluster set
//! replace-delay`, and the lines `cluster status` and `volume status`
//! print about volumes short of copies and copies waiting to be replaced.

use std::time::Duration;

use crate::size::format_size;
use crate::{member_name, percent, resync_progress};

/// Parses a re-placement delay: `off` or `0` (never), or a number with a
/// unit `s`, `m`, `h` or `d` (`90s`, `10m`, `1h`, `2d`); a bare number is
/// minutes.
pub(crate) fn parse_delay(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("off") {
        return Ok(Duration::ZERO);
    }
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a delay such as 10m, 1h, 90s, 2d, 0 or off"))?;
    let secs = match unit {
        "s" => 1,
        "" | "m" | "min" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{s:?}: the unit is one of s, m, h, d")),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// A duration for people: `59m 30s`, `2h`, `45s`.
pub(crate) fn format_delay(secs: u64) -> String {
    match secs {
        0 => "0s".into(),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s >= 3600 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s if s >= 60 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// Runs `cluster remove`.
pub(crate) async fn remove(
    c: &api::ApiClient,
    node: String,
    dead: bool,
    force: bool,
    json: bool,
) -> anyhow::Result<()> {
    if !dead {
        anyhow::bail!(
            "only a member that cannot leave by itself is removed: give --dead (a running \
             member leaves with tandem cluster leave on it)"
        );
    }
    let r = c
        .cluster_remove(&api::RemoveMember { node, dead, force })
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!("node {} ({}) removed from the cluster", r.node, r.name);
    for m in &r.moved {
        println!(
            "volume {}: moved to node {} first (epoch {})",
            m.volume, m.to, m.epoch
        );
    }
    for (v, to) in &r.failed_over {
        println!("volume {v}: failed over to node {to}");
    }
    for (v, have, wanted) in &r.degraded {
        println!("volume {v}: degraded, {have} of {wanted} copies");
    }
    for n in &r.notes {
        println!("{n}");
    }
    Ok(())
}

/// Runs `cluster set replace-delay`.
pub(crate) async fn set_delay(c: &api::ApiClient, delay: Duration) -> anyhow::Result<()> {
    let secs = match delay {
        d if d.is_zero() => 0,
        d => d.as_secs().max(1),
    };
    c.set_replace_delay(secs).await?;
    if secs == 0 {
        println!(
            "re-placement is off: a volume short of copies waits for tandem volume add-replica"
        );
    } else {
        println!(
            "a copy on a data node silent for {} is replaced on another data node",
            format_delay(secs)
        );
    }
    Ok(())
}

/// Lines on re-placement: volumes short of copies (with the new copies
/// being filled, and how far where the node asked leads the volume), and
/// copies on silent nodes with when they are replaced. Only volume
/// `only`'s when given.
pub(crate) fn replacement_lines(view: &api::ClusterView, only: Option<&str>) -> Vec<String> {
    let status = &view.status;
    let state = &status.state;
    let name = |id: u64| member_name(state, id);
    let mut out = Vec::new();
    let keep = |v: &str| only.is_none_or(|o| o == v);
    for f in state.shortfalls().iter().filter(|f| keep(&f.volume)) {
        let mut line = format!(
            "volume {}: {} of {} copies in sync",
            f.volume, f.in_sync, f.wanted
        );
        let filling: Vec<String> = f
            .filling
            .iter()
            .map(|(new, old)| {
                let copy = match old {
                    Some(old) => format!("new copy on {} replaces {}", name(*new), name(*old)),
                    None => format!("new copy on {}", name(*new)),
                };
                match resync_progress(view, &f.volume, *new) {
                    Some(p) => format!(
                        "{copy} (full sync {}%, {} of {})",
                        percent(p.resync_done, p.resync_total),
                        format_size(p.resync_done),
                        format_size(p.resync_total)
                    ),
                    None => format!("{copy} (full sync)"),
                }
            })
            .collect();
        if filling.is_empty() {
            match state.replace_delay_secs() {
                Some(_) => line.push_str(", re-placement pending (a data node with room)"),
                None => line.push_str(", re-placement off (tandem volume add-replica)"),
            }
        } else {
            line.push_str(&format!(", {}", filling.join(", ")));
        }
        out.push(line);
    }
    for p in status
        .pending_replacements()
        .iter()
        .filter(|p| keep(&p.volume))
    {
        let when = match p.in_ms {
            Some(0) => "due now (a data node with room)".to_string(),
            Some(ms) => format!("in {}", format_delay(ms.div_ceil(1000))),
            None => "after the delay, counted from the leader's election".to_string(),
        };
        out.push(format!(
            "volume {}: copy on {} (silent) is replaced {when}",
            p.volume,
            name(p.node)
        ));
    }
    out
}

/// The re-placement policy in one line.
pub(crate) fn policy_line(state: &cluster::ClusterState) -> String {
    match state.replace_delay_secs() {
        Some(s) => format!(
            "re-placement on: copies of removed members at once, of silent members after {}",
            format_delay(s)
        ),
        None => "re-placement off".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_read_as_admins_write_them() {
        assert_eq!(parse_delay("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_delay("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_delay("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_delay("60"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_delay("0"), Ok(Duration::ZERO));
        assert_eq!(parse_delay("off"), Ok(Duration::ZERO));
        assert!(parse_delay("ten").is_err());
        assert!(parse_delay("5w").is_err());
        assert!(parse_delay("").is_err());
    }

    #[test]
    fn delays_print_short() {
        assert_eq!(format_delay(3600), "1h");
        assert_eq!(format_delay(3570), "59m 30s");
        assert_eq!(format_delay(600), "10m");
        assert_eq!(format_delay(5), "5s");
        assert_eq!(format_delay(5400), "1h 30m");
    }
}
