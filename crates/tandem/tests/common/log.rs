//! Reading the servers' logs: which lines were logged when, to compare with
//! what the initiators saw at the same moments (one clock: this machine's).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64
}

/// The lines of a log from byte `from` on that contain `needle`, each with
/// the time it was logged (microseconds since the Unix epoch).
pub fn logged(text: &str, from: usize, needle: &str) -> Vec<(u64, String)> {
    text.get(from..)
        .unwrap_or("")
        .lines()
        .map(plain)
        .filter(|l| l.contains(needle))
        .filter_map(|l| Some((unix_us(l.split_whitespace().next()?)?, l)))
        .collect()
}

/// A log (or one line of it) without its terminal colours (ANSI escape
/// sequences).
pub fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC '[' parameters, ended by a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Microseconds since the Unix epoch of an RFC 3339 UTC timestamp as the
/// servers log it (`2026-11-29T10:36:48.825727Z`).
pub fn unix_us(ts: &str) -> Option<u64> {
    let ts = ts.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|x| x.parse::<i64>());
    let (h, min, s) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let micros: i64 = format!("{frac:0<6}").get(..6)?.parse().ok()?;
    // Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar
    // (H. Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + min * 60 + s;
    u64::try_from(secs * 1_000_000 + micros).ok()
}

/// Waits up to `limit` until `s` logs a line containing `needle` past byte
/// `from` of its log; when the first such line was logged.
pub fn wait_logged(s: &super::Server, from: usize, needle: &str, limit: Duration) -> Option<u64> {
    let t = std::time::Instant::now();
    loop {
        if let Some((at, _)) = logged(&s.log_text(), from, needle).first() {
            return Some(*at);
        }
        if t.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
