//! The floating service address, in network namespaces (needs root): two
//! data nodes and a witness, each a `tandem` process in a namespace of its
//! own on one bridge; the initiator, in the test's namespace on that
//! bridge, knows only the floating address.
//!
//! 1. Once configured, the address is on exactly one host, the primary's
//!    (the data node that is primary of the most volumes), never the
//!    witness's; the initiator logs in through it and writes.
//! 2. The holder is killed (SIGKILL): the address appears on the other
//!    node, and the initiator, reconnecting to the same address, writes
//!    again. The times from the kill to the address on the survivor and to
//!    the first acknowledged write are printed; every acknowledged write
//!    reads back through the floating address.
//! 3. The killed node comes back and catches up; the holder is stopped with
//!    SIGTERM and removes the address at once, and the other node takes it.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::cluster::{all_in_sync, node_id, status, verify, wait_until, write};
use common::netns::{two_nodes_and_witness, Lan};
use common::{node_prefix, run_ok};
use testkit::history::History;
use testkit::Initiator;

const EXTENTS: u64 = 16;

/// The hosts (of the three) whose eth0 has `ip`.
fn holders(lan: &Lan, ip: &str) -> Vec<usize> {
    (0..3).filter(|&i| lan.has_address(i, ip)).collect()
}

/// The MAC address of eth0 in namespace `ns`.
fn mac(ns: &str) -> String {
    let link = run_ok("ip", &["-n", ns, "-o", "link", "show", "dev", "eth0"]);
    let mut words = link.split_whitespace();
    words.find(|w| *w == "link/ether");
    words.next().expect("eth0 has a MAC address").to_string()
}

/// The MAC address this namespace's neighbour table has for `ip`, if any.
fn neighbour(ip: &str) -> Option<String> {
    let out = run_ok("ip", &["neigh", "show", "to", ip]);
    let mut words = out.split_whitespace();
    words.find(|w| *w == "lladdr")?;
    words.next().map(str::to_string)
}

/// Whether `tool` can be run.
fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A session to volume "vm" at `portal`, unit attentions cleared; `None`
/// when nobody there answers within 2 s.
async fn session_at(portal: SocketAddr) -> Option<Initiator> {
    let target = format!("{}:vm", node_prefix());
    let mut i = Initiator::try_normal(portal, &target, Duration::from_secs(2)).await?;
    for _ in 0..4 {
        let (status, _) = tokio::time::timeout(Duration::from_secs(2), i.simple(&[0u8; 6]))
            .await
            .ok()?;
        if status == 0 {
            break;
        }
    }
    Some(i)
}

/// Writes through `portal`, logging in again as often as needed, until one
/// write is acknowledged; gives the time of that acknowledgement.
async fn first_acknowledged(
    portal: SocketAddr,
    h: &mut History,
    seq: &mut u64,
    limit: Duration,
) -> Instant {
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < limit,
            "no write acknowledged through {portal}"
        );
        let Some(mut s) = session_at(portal).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        loop {
            *seq += 1;
            match write(&mut s, h, *seq % EXTENTS, *seq).await {
                Some(true) => return Instant::now(),
                Some(false) => tokio::time::sleep(Duration::from_millis(20)).await,
                None => break,
            }
        }
    }
}

/// Writes every extent through `portal`, each acknowledged.
async fn write_all(portal: SocketAddr, h: &mut History, seq: &mut u64) {
    let mut s = session_at(portal)
        .await
        .expect("session on the floating address");
    for n in 0..EXTENTS {
        *seq += 1;
        assert_eq!(write(&mut s, h, n, *seq).await, Some(true), "write {seq}");
    }
}

/// Waits up to `secs` for `ip` to be on host `host` only; the time taken.
fn wait_held_by(lan: &Lan, ip: &str, host: usize, secs: u64) -> Duration {
    let start = Instant::now();
    loop {
        if holders(lan, ip) == [host] {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "floating address on hosts {:?}, not on host {host} alone",
            holders(lan, ip)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_floating_address_follows_a_live_data_node() {
    let Some(lan) = Lan::or_skip(3) else { return };
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, witness, _) = two_nodes_and_witness(&lan, dir.path(), 2, "4M");
    let ids = [node_id(&nodes[0]), node_id(&nodes[1])];
    let floating = lan.spare_addr(50);
    let portal: SocketAddr = format!("{floating}:3260").parse().unwrap();

    // A bad address is refused, and nobody holds anything.
    let bad = nodes[0].cli(&[
        "cluster",
        "set",
        "floating-address",
        &floating,
        "--interface",
        "eth0",
    ]);
    assert!(
        !bad.status.success(),
        "an address without a prefix length was taken"
    );
    nodes[1].cli_ok(&[
        "cluster",
        "set",
        "floating-address",
        &format!("{floating}/24"),
        "--interface",
        "eth0",
    ]);

    // 1. The primary holds it: it is primary of the only volume.
    let primary = status(&nodes[0])["status"]["state"]["volumes"]["vm"]["primary"]
        .as_u64()
        .unwrap();
    let p = ids.iter().position(|&i| i == primary).unwrap();
    let o = 1 - p;
    let took = wait_held_by(&lan, &floating, p, 15);
    eprintln!("floating address on the primary's host {took:?} after it was configured");
    wait_until("the holder recorded", 10, || {
        status(&nodes[o])["status"]["state"]["floating_holder"].as_u64() == Some(ids[p])
    });
    assert!(
        nodes[o].cli_ok(&["cluster", "status"]).contains(&format!(
            "floating  {floating}/24 on eth0, held by node-{}-{}",
            nodes[p].host, nodes[p].iscsi_port
        )),
        "cluster status names the floating address and its holder"
    );

    let mut h = History::default();
    let mut seq = 0;
    write_all(portal, &mut h, &mut seq).await;
    wait_until("the replica in sync", 30, || all_in_sync(&nodes[p], "vm"));

    // 2. The holder dies without a chance to remove anything.
    let leader = status(&nodes[o])["status"]["leader"].as_u64();
    let killed = Instant::now();
    nodes[p].kill();
    let (mut moved, mut dead_gone) = (None, None);
    while moved.is_none() || dead_gone.is_none() {
        let on = holders(&lan, &floating);
        assert!(!on.contains(&2), "the witness took the floating address");
        if moved.is_none() && on.contains(&o) {
            moved = Some(killed.elapsed());
        }
        if dead_gone.is_none() && !on.contains(&p) {
            dead_gone = Some(killed.elapsed());
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "floating address on hosts {on:?} {:?} after the holder was killed:\n{}",
            killed.elapsed(),
            nodes[o].log_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (moved, dead_gone) = (moved.unwrap(), dead_gone.unwrap());
    // The dead process could not remove it: its lifetime in the kernel
    // (1 s from the last renewal, rounded up to whole seconds) ended.
    assert!(
        dead_gone < Duration::from_secs(3),
        "the dead holder's host kept the address {dead_gone:?}"
    );
    // The survivor announces it: the initiator's side learns the new MAC
    // without waiting for its entry to age out (arping is optional).
    if have("arping") {
        let survivor = mac(&lan.ns(o));
        wait_until(
            "the initiator's neighbour entry names the survivor",
            2,
            || neighbour(&floating).as_deref() == Some(survivor.as_str()),
        );
    }
    let written = first_acknowledged(portal, &mut h, &mut seq, Duration::from_secs(30)).await;
    let written = written.duration_since(killed);
    eprintln!(
        "holder killed (it was {}the Raft leader): floating address gone from its host after {dead_gone:?}, on the survivor after {moved:?}, first write through it acknowledged after {written:?}",
        if leader == Some(ids[p]) { "" } else { "not " }
    );
    write_all(portal, &mut h, &mut seq).await;
    verify(portal, "vm", EXTENTS, &h).await;
    assert_eq!(
        status(&nodes[o])["status"]["state"]["floating_holder"].as_u64(),
        Some(ids[o])
    );

    // 3. Back and in sync; the survivor, now holder, is stopped cleanly.
    nodes[p].restart();
    wait_until("the restarted node in sync", 60, || {
        all_in_sync(&nodes[o], "vm")
    });
    // And heard by the leader: otherwise the node that hands the address
    // back is the only live one the leader could give it to.
    wait_until("the restarted node heard by the leader", 10, || {
        status(&nodes[o])["status"]["last_seen_ms"][ids[p].to_string()]
            .as_u64()
            .is_some_and(|ms| ms < 500)
    });
    assert_eq!(
        holders(&lan, &floating),
        [o],
        "a live holder keeps the address"
    );
    let leader = status(&nodes[p])["status"]["leader"].as_u64();
    let stopped = Instant::now();
    run_ok("kill", &["-TERM", &nodes[o].pid().to_string()]);
    let released = loop {
        if !lan.has_address(o, &floating) {
            break stopped.elapsed();
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(2),
            "a holder stopped with SIGTERM kept the floating address"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let taken = wait_held_by(&lan, &floating, p, 15) + released;
    // Handed back, it moves at the leader's next round; a leader that
    // stopped must be replaced first, and the new one waits out its grace.
    if leader != Some(ids[o]) {
        let floating_lines = |log: String| {
            log.lines()
                .filter(|l| l.contains("floating") || l.contains("leader"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(
            taken < Duration::from_secs(1),
            "a floating address handed back took {taken:?} to move; stopped node:\n{}\nother node:\n{}\nwitness:\n{}",
            floating_lines(nodes[o].log_text()),
            floating_lines(nodes[p].log_text()),
            floating_lines(witness.log_text()),
        );
    }
    // Exits cleanly once its commands are drained.
    nodes[o].stop();
    let written = first_acknowledged(portal, &mut h, &mut seq, Duration::from_secs(30))
        .await
        .duration_since(stopped);
    eprintln!(
        "holder stopped (it was {}the Raft leader): floating address removed after {released:?}, on the other node after {taken:?}, first write acknowledged after {written:?}",
        if leader == Some(ids[o]) { "" } else { "not " }
    );
    verify(portal, "vm", EXTENTS, &h).await;
    assert_eq!(
        status(&nodes[p])["status"]["state"]["floating_holder"].as_u64(),
        Some(ids[p])
    );

    // Removed from the cluster, it leaves the holder's interface.
    nodes[p].cli_ok(&["cluster", "set", "floating-address", "none"]);
    wait_until("the address removed", 10, || {
        holders(&lan, &floating).is_empty()
    });
    nodes[p].stop();
}
