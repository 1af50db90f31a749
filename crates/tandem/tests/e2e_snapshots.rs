//! Snapshots, clones and rollback through the real CLI, server and clients
//! (docs/snapshots.md): qemu-io writes a pattern, a snapshot is taken, the
//! volume is overwritten; a clone of the snapshot reads the old pattern and
//! the volume the new, each with its own SCSI identity; a rollback with an
//! initiator logged in is refused, then forced; a consistency group of two
//! volumes taken under a writer that alternates between them holds a prefix
//! of its writes; everything survives kill -9; bad requests get clear errors.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{node_prefix, require_tool, run_ok, Server};
use testkit::{rw10, Initiator};

/// Logs in to `volume` with its unit attentions cleared.
async fn session(portal: std::net::SocketAddr, volume: &str) -> Initiator {
    let mut i = Initiator::normal(portal, &format!("{}:{volume}", node_prefix()), &[]).await;
    for _ in 0..8 {
        if i.simple(&[0u8; 6]).await.0 == 0 {
            break;
        }
    }
    i
}

fn qemu_io(url: &str, cmd: &str) -> String {
    run_ok("qemu-io", &["-f", "raw", "-c", cmd, url])
}

/// Whether qemu-io's read with a pattern check passed.
fn reads(url: &str, pattern: u8, offset: &str, len: &str) -> bool {
    let out = std::process::Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-c",
            &format!("read -P 0x{pattern:02x} {offset} {len}"),
            url,
        ])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    out.status.success() && !text.contains("Pattern verification failed")
}

fn json(server: &Server, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&server.cli_ok(args)).unwrap()
}

fn refused(server: &Server, args: &[&str], needle: &str) {
    let out = server.cli(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(err.contains(needle), "{args:?}: {err}");
}

#[test]
fn a_clone_reads_the_snapshot_and_the_volume_reads_what_came_after() {
    require_tool("qemu-io");
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(&dir.path().join("data"));
    server.cli_ok(&["volume", "create", "base", "--size", "64M"]);
    let base = server.url("base");
    qemu_io(&base, "write -P 0xaa 0 32M");
    let out = server.cli_ok(&["snapshot", "create", "base", "--name", "before"]);
    assert!(
        out.contains("snapshot before of volume base taken"),
        "{out}"
    );
    qemu_io(&base, "write -P 0xbb 0 16M");
    qemu_io(&base, "write -z 48M 1M");

    let out = server.cli_ok(&["volume", "clone", "base", "old", "--snapshot", "before"]);
    assert!(out.contains("clone of base"), "{out}");
    let old = server.url("old");
    assert!(
        reads(&old, 0xaa, "0", "32M"),
        "the clone reads the snapshot"
    );
    assert!(reads(&old, 0x00, "32M", "32M"));
    assert!(
        reads(&base, 0xbb, "0", "16M"),
        "the volume reads the new data"
    );
    assert!(reads(&base, 0xaa, "16M", "16M"));

    // Its own identity: an ESXi host sees a new device.
    let b = json(&server, &["volume", "show", "base", "--json"]);
    let o = json(&server, &["volume", "show", "old", "--json"]);
    assert_ne!(b["naa"], o["naa"]);
    assert_eq!(o["clone_of"], "base@before");
    assert_eq!(b["snapshots"], 1);
    assert!(b["snapshot_bytes"].as_u64().unwrap() >= 16 << 20, "{b}");
    let text = server.cli_ok(&["volume", "show", "old"]);
    assert!(text.contains("clone of    base@before"), "{text}");
    assert_ne!(b["serial"], o["serial"]);
    assert_ne!(b["id"], o["id"]);

    // The clone writes on its own.
    qemu_io(&old, "write -P 0xcc 8M 1M");
    assert!(reads(&old, 0xcc, "8M", "1M"));
    assert!(
        reads(&base, 0xbb, "8M", "1M"),
        "the source does not see the clone's write"
    );

    // Space: the snapshot keeps the 16 MiB the volume overwrote since.
    let list = json(&server, &["snapshot", "list", "base", "--json"]);
    let s = &list[0];
    assert_eq!(s["name"], "before");
    assert_eq!(s["clones"], serde_json::json!(["old"]));
    let kept = s["kept_bytes"].as_u64().unwrap();
    assert!((16 << 20..=17 << 20).contains(&kept), "kept {kept}");
    assert_eq!(
        s["exclusive_bytes"].as_u64().unwrap(),
        kept,
        "the oldest snapshot frees all it keeps"
    );
    let table = server.cli_ok(&["snapshot", "list"]);
    assert!(
        table.contains("before") && table.contains("clones: old"),
        "{table}"
    );

    // A clone of a clone.
    server.cli_ok(&["volume", "clone", "old", "older"]);
    let older = server.url("older");
    assert!(reads(&older, 0xcc, "8M", "1M"));
    assert!(reads(&older, 0xaa, "0", "8M"));

    // Deleting the snapshot while its clone lives: kept, hidden.
    let out = server.cli_ok(&["snapshot", "delete", "base", "before"]);
    assert!(
        out.contains("kept until its clones are deleted: old"),
        "{out}"
    );
    assert!(reads(&old, 0xaa, "0", "8M"), "the clone still reads it");
    let list = json(&server, &["snapshot", "list", "base", "--json"]);
    assert_eq!(list[0]["hidden"], true);
    refused(&server, &["volume", "delete", "base"], "has clones (old)");

    // Everything survives kill -9.
    server.kill();
    server.restart();
    assert!(reads(&old, 0xaa, "0", "8M"));
    assert!(reads(&old, 0xcc, "8M", "1M"));
    assert!(reads(&older, 0xcc, "8M", "1M"));
    assert!(reads(&base, 0xbb, "0", "16M"));

    // The last clones go, and the hidden snapshot with them.
    server.cli_ok(&["volume", "delete", "older"]);
    let list = json(&server, &["snapshot", "list", "old", "--json"]);
    assert_eq!(
        list.as_array().unwrap().len(),
        0,
        "the snapshot taken for a clone goes with it: {list}"
    );
    server.cli_ok(&["volume", "delete", "old"]);
    let list = json(&server, &["snapshot", "list", "base", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");
    server.cli_ok(&["volume", "delete", "base"]);
}

#[test]
fn rollback_is_refused_under_a_session_and_forced_logs_it_out() {
    require_tool("qemu-io");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    server.cli_ok(&["volume", "create", "vm", "--size", "16M"]);
    server.cli_ok(&["volume", "create", "other", "--size", "16M"]);
    let url = server.url("vm");
    qemu_io(&url, "write -P 0x11 0 4M");
    server.cli_ok(&["snapshot", "create", "vm", "--name", "good"]);
    server.cli_ok(&["snapshot", "create", "other", "--name", "theirs"]);
    qemu_io(&url, "write -P 0x66 1M 8M");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut i = rt.block_on(session(server.portal(), "vm"));
    refused(
        &server,
        &["volume", "rollback", "vm", "good"],
        "1 iSCSI session(s)",
    );
    refused(
        &server,
        &["volume", "rollback", "vm", "theirs"],
        "volume vm has no snapshot called theirs",
    );
    refused(
        &server,
        &["volume", "rollback", "vm", "nope"],
        "no snapshot called nope",
    );
    assert!(
        reads(&url, 0x66, "1M", "8M"),
        "a refused rollback changes nothing"
    );

    let out = server.cli_ok(&["volume", "rollback", "vm", "good", "--force"]);
    assert!(out.contains("rolled back"), "{out}");
    // The session was logged out: its next command finds the connection gone.
    let gone = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), i.run(&rw10(0x28, 0, 1), &[], 512))
            .await
            .map(|o| o.is_none())
            .unwrap_or(true)
    });
    assert!(gone, "the forced rollback logged the initiator out");
    assert!(reads(&url, 0x11, "0", "4M"));
    assert!(reads(&url, 0x00, "4M", "12M"));
    // The snapshot is still there, and a second rollback is a no-op.
    server.cli_ok(&["volume", "rollback", "vm", "good"]);
    assert!(reads(&url, 0x11, "0", "4M"));
}

#[test]
fn bad_requests_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    server.cli_ok(&["volume", "create", "a", "--size", "8M"]);
    server.cli_ok(&["volume", "create", "b", "--size", "8M"]);
    server.cli_ok(&["snapshot", "create", "a", "--name", "s1"]);
    refused(
        &server,
        &["snapshot", "create", "a", "--name", "s1"],
        "already has a snapshot called s1",
    );
    refused(
        &server,
        &["snapshot", "create", "nope"],
        "volume nope does not exist",
    );
    refused(
        &server,
        &["snapshot", "create", "a", "--name", "Bad_Name"],
        "snapshot name \"Bad_Name\" is invalid",
    );
    refused(
        &server,
        &["volume", "clone", "a", "b", "--snapshot", "s1"],
        "volume b already exists",
    );
    refused(
        &server,
        &["volume", "clone", "a", "c", "--snapshot", "s9"],
        "no snapshot called s9",
    );
    refused(
        &server,
        &["snapshot", "delete", "b", "s1"],
        "volume b has no snapshot called s1",
    );
    refused(
        &server,
        &["snapshot", "show", "a", "zz"],
        "no snapshot called zz",
    );
    // A default name from the time; shown, listed.
    let taken = json(&server, &["snapshot", "create", "a", "b", "--json"]);
    let name = taken[0]["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("snap-2"), "{name}");
    assert_eq!(
        taken[0]["group"],
        name.as_str(),
        "two volumes are one group"
    );
    let show = server.cli_ok(&["snapshot", "show", "b", &name]);
    assert!(show.contains(&format!("group       {name}")), "{show}");
}

/// A writer alternates between two volumes: block k of `one`, then block k
/// of `two`, each acknowledged before the next is sent. A group snapshot of
/// both, taken while it runs, holds a prefix of that order: the same blocks
/// in both, or one more in `one`.
#[test]
fn a_consistency_group_holds_a_prefix_of_the_write_order() {
    require_tool("qemu-io");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    server.cli_ok(&["volume", "create", "one", "--size", "16M"]);
    server.cli_ok(&["volume", "create", "two", "--size", "16M"]);
    let portal = server.portal();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        rt.spawn(async move {
            let mut one = session(portal, "one").await;
            let mut two = session(portal, "two").await;
            let mut k = 1u32;
            while !stop.load(Ordering::Relaxed) && k < 30_000 {
                let block = vec![(k % 251) as u8 + 1; 512];
                for i in [&mut one, &mut two] {
                    let o = i.run(&rw10(0x2a, k, 1), &block, 0).await.expect("answer");
                    assert_eq!(o.status, 0, "write {k} failed");
                }
                k += 1;
            }
            k
        })
    };
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(300));
        let name = format!("g{round}");
        server.cli_ok(&["snapshot", "create", "one", "two", "--name", &name]);
        server.cli_ok(&[
            "volume",
            "clone",
            "one",
            &format!("one-{name}"),
            "--snapshot",
            &name,
        ]);
        server.cli_ok(&[
            "volume",
            "clone",
            "two",
            &format!("two-{name}"),
            "--snapshot",
            &name,
        ]);
    }
    stop.store(true, Ordering::Relaxed);
    let written = rt.block_on(writer).unwrap();
    assert!(written > 50, "the writer made progress ({written} rounds)");
    for round in 0..3 {
        let count = |vol: &str| -> u32 {
            rt.block_on(async {
                let mut i = session(portal, &format!("{vol}-g{round}")).await;
                let mut k = 1u32;
                let mut last = 0;
                let mut holes_after = false;
                while k < written {
                    let o = i
                        .run(&rw10(0x28, k, 64), &[], 64 * 512)
                        .await
                        .expect("answer");
                    assert_eq!(o.status, 0);
                    for (j, b) in o.data.chunks(512).enumerate() {
                        let n = k + j as u32;
                        let written_here = b[0] == (n % 251) as u8 + 1;
                        if written_here {
                            assert!(
                                !holes_after,
                                "{vol} g{round}: block {n} written after a hole"
                            );
                            last = n;
                        } else {
                            holes_after = true;
                        }
                    }
                    k += 64;
                }
                last
            })
        };
        let (a, b) = (count("one"), count("two"));
        assert!(
            a == b || a == b + 1,
            "group g{round}: one holds writes 1..={a}, two 1..={b}"
        );
    }
}
