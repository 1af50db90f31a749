//! Control-plane scenarios with in-process members on loopback: init, join
//! of a data node and a witness, placement, failover of a silent primary,
//! restart from disk, growth to three data nodes, strangers refused.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cluster::{Cluster, ClusterError, Command, NodeInfo, ReplicaState, Role};
use uuid::Uuid;

fn info(name: &str, role: Role) -> NodeInfo {
    NodeInfo {
        id: 0,
        name: name.into(),
        role: Some(role),
        cluster_addr: String::new(),
        iscsi_addr: format!("{name}:3260"),
        repl_addr: format!("{name}:7401"),
    }
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

async fn member(
    dir: &std::path::Path,
    name: &str,
    role: Role,
    seed: Option<(&str, &str)>,
) -> (Cluster, Option<String>) {
    let addr = free_addr();
    let mut me = info(name, role);
    me.cluster_addr = addr.to_string();
    match seed {
        None => {
            let (c, token) = Cluster::init(dir, me, addr).await.unwrap();
            (c, Some(token))
        }
        Some((seed, token)) => (
            Cluster::join(dir, me, addr, seed, token).await.unwrap(),
            None,
        ),
    }
}

async fn eventually(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(secs), "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn create(name: &str, replicas: usize) -> Command {
    Command::CreateVolume {
        id: Uuid::new_v4(),
        name: name.into(),
        size_bytes: 1 << 30,
        block_size: 512,
        replicas,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_data_nodes_and_a_witness_fail_over_restart_and_grow() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, token) = member(dirs[0].path(), "a", Role::Data, None).await;
    let token = token.unwrap();
    let seed = a.local_addr().to_string();
    let (b, _) = member(dirs[1].path(), "b", Role::Data, Some((&seed, &token))).await;
    let (w, _) = member(dirs[2].path(), "w", Role::Witness, Some((&seed, &token))).await;
    eventually("everyone sees three members", 10, || {
        [&a, &b, &w].iter().all(|c| c.state().nodes.len() == 3)
    })
    .await;
    assert!(a.state().cluster_id.is_some());
    assert_eq!(a.state().cluster_id, w.state().cluster_id);

    // Placement: two copies on the two data nodes, never on the witness.
    b.propose(create("vm", 2)).await.unwrap();
    let v = a.state().volumes["vm"].clone();
    let holders: Vec<_> = v.replicas.keys().copied().collect();
    assert_eq!(holders, vec![a.id(), b.id()]);
    assert!(matches!(
        w.propose(create("big", 3)).await,
        Err(ClusterError::Refused(_))
    ));
    eventually("leases granted", 5, || a.lease_valid() && b.lease_valid()).await;

    // The primary's node dies: the leader promotes the in-sync replica.
    let primary = v.primary;
    let (dead, survivor) = if primary == a.id() { (a, &b) } else { (b, &a) };
    let dead_id = dead.id();
    dead.shutdown().await;
    drop(dead);
    let t = Instant::now();
    eventually("in-sync replica promoted", 15, || {
        let v = &survivor.state().volumes["vm"];
        v.primary == survivor.id() && v.epoch == 2
    })
    .await;
    let took = t.elapsed();
    assert!(took < Duration::from_secs(8), "promotion took {took:?}");
    let v = survivor.state().volumes["vm"].clone();
    assert_eq!(v.replicas[&dead_id], ReplicaState::OutOfSync);

    // Grow to three data nodes online.
    let (c, _) = member(
        dirs[3].path(),
        "c",
        Role::Data,
        Some((&survivor.local_addr().to_string(), &token)),
    )
    .await;
    eventually("third data node known", 10, || {
        survivor
            .state()
            .nodes
            .values()
            .filter(|n| n.holds_data())
            .count()
            == 3
    })
    .await;
    c.propose(create("three", 2)).await.unwrap();
    let placed = survivor.state().volumes["three"].replicas.clone();
    assert!(
        placed.contains_key(&c.id()),
        "new node takes copies: {placed:?}"
    );
    let status = survivor.status().await;
    assert_eq!(status.voters.len(), 4);
    assert!(status.leader.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_survive_a_full_restart() {
    let d = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut me = info("solo", Role::Data);
    me.cluster_addr = addr.to_string();
    let (c, _) = Cluster::init(d.path(), me, addr).await.unwrap();
    c.propose(create("keep", 1)).await.unwrap();
    c.shutdown().await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = Cluster::open(d.path(), addr).await.unwrap();
    assert!(
        c.state().volumes.contains_key("keep"),
        "state reloaded from redb"
    );
    eventually("leader again", 10, || c.lease_valid()).await;
    c.propose(create("more", 1)).await.unwrap();
    assert_eq!(c.state().volumes.len(), 2);
    let mode = std::fs::metadata(d.path().join("cluster.key")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_bad_tokens_are_refused() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let (a, token) = member(d1.path(), "a", Role::Data, None).await;
    let token = token.unwrap();
    let seed = a.local_addr().to_string();
    // Right format, wrong secret: the seed refuses it.
    let forged = format!(
        "{}:{}",
        &token[..token.rfind(':').unwrap()],
        "00".repeat(32)
    );
    let mut me = info("x", Role::Data);
    let addr = free_addr();
    me.cluster_addr = addr.to_string();
    me.id = 7;
    let r = Cluster::join(d2.path(), me.clone(), addr, &seed, &forged).await;
    assert!(matches!(r, Err(ClusterError::Auth(_))), "{:?}", r.err());
    let r = Cluster::join(d2.path(), me, addr, &seed, "not-a-token").await;
    assert!(matches!(r, Err(ClusterError::BadToken)));
    // A raw request without the secret is refused with 401.
    let resp = reqwest::Client::new()
        .post(format!("http://{seed}/cluster/status"))
        .body("null")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(a.state().nodes.len(), 1);
}
