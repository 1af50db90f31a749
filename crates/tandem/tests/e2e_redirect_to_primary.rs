//! Login redirection to the primary: two data nodes started with
//! `--redirect-to-primary` and a witness, as processes on loopback. A
//! normal login through the node that is not the volume's primary is
//! answered "target moved temporarily" with the primary's portal, and
//! libiscsi (`iscsi-inq`, `qemu-io` over iscsi://) follows it: the session
//! is on the primary. After the primary is killed the survivor sends no
//! login to the dead node (it answers "service unavailable" until it is
//! the primary, then serves the login itself), and the same commands
//! through its address work and find the data written before. The killed
//! node returns; logins through either node go to the primary there is
//! then, and when it is killed the other takes the logins over the same way.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{
    all_in_sync, node_name, primary_index, wait_converged, wait_until, with_witness,
};
use common::{node_prefix, require_tool, run_ok, Server};
use testkit::Initiator;

/// The status class and detail a one-step normal login to `volume` at
/// `portal` gets, and the TargetAddress it names if any.
async fn login_status(portal: SocketAddr, volume: &str) -> Option<((u8, u8), Option<String>)> {
    let mut i = Initiator::try_connect(portal).await.ok()?;
    let target = format!("{}:{volume}", node_prefix());
    let r = i
        .try_login(&[
            ("InitiatorName", "iqn.2026-11.test:redirect"),
            ("SessionType", "Normal"),
            ("TargetName", &target),
        ])
        .await?;
    let address = iscsi::text::parse(&r.data)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == "TargetAddress")
        .map(|(_, v)| v);
    Some(((r.byte(36), r.byte(37)), address))
}

/// The nodes `volume show` through `s` lists sessions of `volume` on.
fn session_nodes(s: &Server, volume: &str) -> Vec<String> {
    let out = s.cli_ok(&["volume", "show", volume, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("volume show --json");
    v["logged_in"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x["node"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Writes a pattern through `url` with qemu-io and keeps the session open
/// for a few seconds, while `check` looks at the cluster; then waits for
/// qemu-io to finish and checks it succeeded.
fn while_logged_in(url: &str, qemu_cmd: &str, check: impl FnOnce()) {
    let child = Command::new("qemu-io")
        .args(["-f", "raw", "-c", qemu_cmd, "-c", "sleep 4000", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start qemu-io");
    check();
    let out = child.wait_with_output().expect("qemu-io");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("fail") && !text.contains("error"),
        "qemu-io {qemu_cmd:?} through {url}: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_through_either_node_land_on_the_primary_and_follow_a_failover() {
    require_tool("iscsi-inq");
    require_tool("qemu-io");
    let dir = tempfile::tempdir().unwrap();
    let a = Server::start_with(&dir.path().join("a"), &["--redirect-to-primary"]);
    let b = Server::start_with(&dir.path().join("b"), &["--redirect-to-primary"]);
    let (_witness, _) = with_witness(dir.path(), &a, &[&b]);
    a.cli_ok(&["volume", "create", "vm", "--size", "4M", "--replicas", "2"]);
    wait_until("both nodes export the volume in sync", 30, || {
        b.cli_ok(&["volume", "list"]).contains("vm") && all_in_sync(&a, "vm")
    });
    let mut nodes = [a, b];
    let p = primary_index(&[&nodes[0], &nodes[1]], "vm").expect("a primary");
    redirected_to_the_primary(&nodes, p, "write -P 0x5a 0 64k").await;
    the_survivor_takes_the_logins(&mut nodes, p, "read -P 0x5a 0 64k").await;

    // The killed node returns: logins go to the primary there is now
    // through either node, and the other takes them over when it is killed.
    nodes[p].restart();
    wait_converged(&[&nodes[0], &nodes[1]], "vm", 60).unwrap();
    let p = primary_index(&[&nodes[0], &nodes[1]], "vm").expect("a primary");
    redirected_to_the_primary(&nodes, p, "write -P 0xa5 64k 64k").await;
    the_survivor_takes_the_logins(&mut nodes, p, "read -P 0xa5 64k 64k").await;
}

/// Through the node that is not `primary`, a login is answered with the
/// primary's portal, and a qemu-io session (running `qemu_cmd`) and
/// `iscsi-inq` through that node's address end up on the primary, which
/// serves its own logins.
async fn redirected_to_the_primary(nodes: &[Server; 2], primary: usize, qemu_cmd: &str) {
    let (p, o) = (primary, 1 - primary);
    let (status, to) = login_status(nodes[o].portal(), "vm").await.expect("login");
    assert_eq!(status, (1, 1), "target moved temporarily");
    assert_eq!(to, Some(nodes[p].portal().to_string()));
    let (status, to) = login_status(nodes[p].portal(), "vm").await.expect("login");
    assert_eq!(
        (status, to),
        ((0, 0), None),
        "the primary serves its own logins"
    );
    let url = nodes[o].url("vm");
    while_logged_in(&url, qemu_cmd, || {
        wait_until("the qemu-io session is listed", 20, || {
            !session_nodes(&nodes[o], "vm").is_empty()
        });
        assert_eq!(session_nodes(&nodes[o], "vm"), vec![node_name(&nodes[p])]);
    });
    let out = run_ok("iscsi-inq", &[&url]);
    assert!(out.contains("DIRECT_ACCESS"), "{out}");
}

/// Kills `primary`. Once the leader can have missed a few of its
/// heartbeats (1.5 s is plenty), the other node sends no login to it: it
/// answers "service unavailable" until it serves the login itself. Then
/// `iscsi-inq` and a qemu-io session (running `qemu_cmd`) through its
/// address work, on it.
async fn the_survivor_takes_the_logins(nodes: &mut [Server; 2], primary: usize, qemu_cmd: &str) {
    let (p, o) = (primary, 1 - primary);
    nodes[p].kill();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut answers = Vec::new();
    let deadline = killed + Duration::from_secs(30);
    loop {
        let answer = login_status(nodes[o].portal(), "vm").await;
        answers.push((killed.elapsed().as_millis(), answer.clone()));
        assert!(
            matches!(answer, Some(((3, 1), None)) | Some(((0, 0), None))),
            "after the primary died the survivor answered {answers:?}"
        );
        if answer == Some(((0, 0), None)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the survivor never served the login: {answers:?}\n{}",
            nodes[o].log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let url = nodes[o].url("vm");
    wait_until("iscsi-inq through the survivor", 20, || {
        Command::new("iscsi-inq")
            .arg(&url)
            .output()
            .is_ok_and(|o| o.status.success())
    });
    // It finds what was written through the redirection.
    while_logged_in(&url, qemu_cmd, || {
        wait_until("the qemu-io session is listed", 20, || {
            !session_nodes(&nodes[o], "vm").is_empty()
        });
        assert_eq!(session_nodes(&nodes[o], "vm"), vec![node_name(&nodes[o])]);
    });
}
