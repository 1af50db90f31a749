//! How much a primary killed under random writes gets copied when it
//! returns, against what was written while it was away. Not a pass/fail
//! test of the suite (ignored there): `bash bench/resync.sh` runs it and
//! prints the figures.
//!
//! Two data nodes and a witness as processes on loopback, a volume of
//! `VOLUME_MIB`. Random 4 KiB FUA writes over the first `HOT_MIB` through
//! the primary until it is killed; then random writes over the first
//! `AWAY_MIB` through the other node, which takes over; then the old primary
//! returns and is resynced. The survivor logs what it copies ("resync
//! starts ... bytes="), the returning node what its activity log held.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{
    all_in_sync, node_id, session, volume_record, wait_until, write, write_until_acknowledged,
    BLOCK, EXTENT,
};
use testkit::history::History;

const VOLUME_MIB: u64 = 512;
const HOT_MIB: u64 = 128;
const AWAY_MIB: u64 = 40;
const BEFORE_KILL: Duration = Duration::from_secs(8);
const AWAY_WRITES: u64 = 3000;
/// The primary's dirty-map granularity (`replica::primary::RESYNC_REGION`).
const REGION: u64 = 64 << 10;

/// A small deterministic generator: the same run every time.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Sum of the `key=` numbers on the log lines that contain every one of `has`.
fn sum_field(log: &str, has: &[&str], key: &str) -> u64 {
    common::log::plain(log)
        .lines()
        .filter(|l| has.iter().all(|h| l.contains(h)))
        .filter_map(|l| {
            let at = l.find(key)? + key.len();
            l[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run by bench/resync.sh"]
async fn resync_after_primary_killed_under_random_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, _witness, _) = common::cluster::on_loopback(dir.path());
    let size = format!("{VOLUME_MIB}M");
    a.cli_ok(&["volume", "create", "vm", "--size", &size, "--replicas", "2"]);
    wait_until("both copies in sync", 30, || all_in_sync(&a, "vm"));
    let primary_id = volume_record(&a, "vm")["primary"].as_u64().unwrap();
    let (primary, other) = if primary_id == node_id(&a) {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let returning = node_id(primary);
    let extent_bytes = EXTENT * BLOCK as u64;
    let mut rng = Lcg(7);
    let mut h = History::default();
    let mut seq = 0;

    let mut s = session(primary.portal(), "vm").await.expect("session");
    let start = Instant::now();
    let mut before = 0;
    while start.elapsed() < BEFORE_KILL {
        seq += 1;
        let n = rng.below((HOT_MIB << 20) / extent_bytes);
        assert_eq!(write(&mut s, &mut h, n, seq).await, Some(true));
        before += 1;
    }
    primary.kill();
    drop(s);
    write_until_acknowledged(
        other.portal(),
        "vm",
        &mut h,
        &mut seq,
        1,
        Duration::from_secs(30),
    )
    .await;
    let mut s = session(other.portal(), "vm").await.expect("session");
    let mut touched = std::collections::BTreeSet::new();
    for _ in 0..AWAY_WRITES {
        seq += 1;
        let n = rng.below((AWAY_MIB << 20) / extent_bytes);
        assert_eq!(write(&mut s, &mut h, n, seq).await, Some(true));
        touched.insert(n * extent_bytes / REGION);
    }
    drop(s);
    primary.restart();
    wait_until("the returning node in sync", 120, || {
        all_in_sync(other, "vm")
    });

    let copied = sum_field(
        &other.log_text(),
        &["resync starts", &format!("node={returning}")],
        "bytes=",
    );
    let activity = sum_field(
        &primary.log_text(),
        &["activity log holds regions"],
        "regions=",
    );
    let away = touched.len() as u64 * REGION;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "writes before the kill: {before} random 4 KiB over {HOT_MIB} MiB; \
         while away: {AWAY_WRITES} over {AWAY_MIB} MiB"
    );
    println!(
        "written while away: {:.1} MiB in 64 KiB regions; \
         activity log of the returning node: {activity} regions of 4 MiB ({:.0} MiB)",
        mib(away),
        mib(activity * (4 << 20))
    );
    println!(
        "resync copied: {:.1} MiB ({:.2}x what was written while away)",
        mib(copied),
        copied as f64 / away.max(1) as f64
    );
    assert!(copied >= away, "the resync copied less than was written");
}
