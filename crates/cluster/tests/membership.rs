//! Membership scenarios with in-process members on loopback: init, join of
//! a data node and a witness, placement, growth to three data nodes online,
//! leaving, restart of a single member from disk.

mod common;

use std::time::Duration;

use cluster::{Cluster, ClusterError, Command, ReplicaState, Role};
use common::{create, eventually, eventually_async, free_addr, info, init, join};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_data_nodes_and_a_witness_grow_to_three_and_one_leaves() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, token) = init(dirs[0].path(), "a", Role::Data).await;
    assert!(token.starts_with("tandem-join:"));
    let b = join(dirs[1].path(), "b", Role::Data, &a, &token).await;
    let w = join(dirs[2].path(), "w", Role::Witness, &a, &token).await;
    eventually("everyone sees three members", 10, || {
        [&a, &b, &w].iter().all(|c| c.state().nodes.len() == 3)
    })
    .await;
    let ids = [a.id(), b.id(), w.id()];
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);
    let cluster_id = a.state().cluster_id.expect("cluster id set at init");
    assert!([&b, &w]
        .iter()
        .all(|c| c.state().cluster_id == Some(cluster_id)));
    let status = w.status().await;
    assert_eq!(status.voters, {
        let mut v = ids.to_vec();
        v.sort();
        v
    });
    assert_eq!(status.leader, Some(a.id()));
    assert!(status.term >= 1 && status.applied >= 3);

    // Placement: two copies on the two data nodes, never on the witness;
    // a proposal through a follower is forwarded to the leader.
    let mut follow = w.subscribe();
    follow.borrow_and_update();
    b.propose(create("vm", 2)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !follow.borrow_and_update().volumes.contains_key("vm") {
            follow.changed().await.unwrap();
        }
    })
    .await
    .expect("the witness's subscription shows the new volume");
    let v = b.state().volumes["vm"].clone();
    assert_eq!(
        v.replicas.keys().copied().collect::<Vec<_>>(),
        [a.id(), b.id()]
    );
    assert!(v.replicas.values().all(|s| *s == ReplicaState::InSync));
    assert_eq!(v.epoch, 1);
    let refused = w.propose(create("big", 3)).await;
    assert!(
        matches!(refused, Err(ClusterError::Refused(_))),
        "{refused:?}"
    );
    let dup = w.propose(create("vm", 1)).await;
    assert!(matches!(dup, Err(ClusterError::Refused(_))), "{dup:?}");
    eventually("every member holds a lease", 5, || {
        [&a, &b, &w].iter().all(|c| c.lease_valid())
    })
    .await;

    // A third data node joins online (through a follower) and takes copies.
    let c = join(dirs[3].path(), "c", Role::Data, &b, &token).await;
    eventually("third data node known everywhere", 10, || {
        [&a, &b, &w, &c]
            .iter()
            .all(|m| m.state().nodes.values().filter(|n| n.holds_data()).count() == 3)
    })
    .await;
    c.propose(create("three", 2)).await.unwrap();
    let three = a.state().volumes["three"].clone();
    assert_eq!(three.primary, c.id(), "least loaded node first");
    assert!(three.replicas.contains_key(&a.id()));
    let status = c.status().await;
    assert_eq!(status.voters.len(), 4);
    eventually_async("the leader hears every member", 5, || async {
        let status = a.status().await;
        ids.iter().chain([&c.id()]).all(|&n| status.reachable(n))
    })
    .await;

    // Re-placement: a copy of vm moves from b to c.
    let add = Command::AddReplica {
        volume: "vm".into(),
        node: c.id(),
    };
    a.propose(add).await.unwrap();
    assert_eq!(
        a.state().volumes["vm"].replicas[&c.id()],
        ReplicaState::OutOfSync
    );
    let remove = Command::RemoveReplica {
        volume: "vm".into(),
        node: b.id(),
    };
    a.propose(remove).await.unwrap();
    assert_eq!(
        a.state().volumes["vm"]
            .replicas
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        [a.id(), c.id()]
    );

    // c leaves: its primary of "three" moves to the in-sync copy on a.
    c.leave().await.unwrap();
    let s = a.state();
    assert!(!s.nodes.contains_key(&c.id()));
    assert_eq!(
        (s.volumes["three"].primary, s.volumes["three"].epoch),
        (a.id(), 2)
    );
    assert!(!s.volumes["vm"].replicas.contains_key(&c.id()));
    eventually_async("c is no voter", 5, || async {
        !a.status().await.voters.contains(&c.id())
    })
    .await;
    c.shutdown().await;

    // a now holds the only in-sync copy of every volume: it may not leave.
    let r = a.leave().await;
    assert!(
        matches!(&r, Err(ClusterError::Refused(why)) if why.contains("only in-sync copy")),
        "{r:?}"
    );
    assert_eq!(a.state().nodes.len(), 3);
}

/// A cluster of one data node in `dir` holding the volume "keep"; returns
/// it and its cluster endpoint.
async fn solo(dir: &std::path::Path) -> (Cluster, std::net::SocketAddr) {
    let addr = free_addr();
    let (c, _) = Cluster::init(dir, info("solo", Role::Data, addr), addr)
        .await
        .unwrap();
    c.propose(create("keep", 1)).await.unwrap();
    (c, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_member_survives_a_restart() {
    let d = tempfile::tempdir().unwrap();
    let (c, addr) = solo(d.path()).await;
    c.shutdown().await;
    drop(c);
    let c = Cluster::open(d.path(), addr).await.unwrap();
    assert!(
        c.state().volumes.contains_key("keep"),
        "state reloaded from redb"
    );
    eventually("leader again", 10, || c.lease_valid()).await;
    let until = c.lease_valid_until().unwrap();
    assert!(until <= std::time::Instant::now() + cluster::LEASE);
    c.propose(create("more", 1)).await.unwrap();
    assert_eq!(c.state().volumes.len(), 2);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.path().join("cluster.key")).unwrap();
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    assert!(
        Cluster::init(d.path(), info("again", Role::Data, addr), free_addr())
            .await
            .is_err()
    );
}

const VOLUMES: usize = 800;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joining_after_compaction_receives_a_snapshot() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, token) = init(d1.path(), "a", Role::Data).await;
    // Enough volumes that the snapshot travels in several pieces.
    let a = std::sync::Arc::new(a);
    let mut proposals = tokio::task::JoinSet::new();
    for i in 0..VOLUMES {
        let a = a.clone();
        proposals.spawn(async move { a.propose(create(&format!("v{i}"), 1)).await });
    }
    while let Some(r) = proposals.join_next().await {
        r.unwrap().unwrap();
    }
    let a = std::sync::Arc::into_inner(a).unwrap();
    let snapshot_size = serde_json::to_vec(&*a.state()).unwrap().len();
    assert!(snapshot_size > 2 * 64 * 1024, "{snapshot_size} bytes");
    let upto = a.compact_log().await.unwrap();
    assert!(
        upto >= VOLUMES as u64,
        "snapshot covers the volumes: {upto}"
    );
    assert_eq!(a.status().await.snapshot, upto);
    let b = join(d2.path(), "b", Role::Data, &a, &token).await;
    eventually("b has the state", 10, || {
        b.state().volumes.len() == VOLUMES && b.state().nodes.len() == 2
    })
    .await;
    // The entries it missed were dropped: only the snapshot could carry them.
    assert!(b.status().await.snapshot >= upto);
    b.propose(create("after", 2)).await.unwrap();
    assert_eq!(*a.state(), *b.state());
    // Restarted, b keeps what the snapshot gave it.
    let addr = b.local_addr();
    b.shutdown().await;
    drop(b);
    let b = Cluster::open(d2.path(), addr).await.unwrap();
    assert_eq!(b.state().volumes.len(), VOLUMES + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_leaves_and_a_taken_name_cannot_join() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, token) = init(dirs[0].path(), "a", Role::Data).await;
    let b = join(dirs[1].path(), "b", Role::Data, &a, &token).await;
    let c = join(dirs[2].path(), "c", Role::Data, &b, &token).await;
    a.propose(create("vm", 2)).await.unwrap();

    // A second "b" is refused before it gets a vote.
    let addr = free_addr();
    let r = Cluster::join(
        dirs[3].path(),
        info("b", Role::Data, addr),
        addr,
        &c.local_addr().to_string(),
        &token,
    )
    .await;
    assert!(
        matches!(&r, Err(ClusterError::Refused(why)) if why.contains("named b")),
        "{:?}",
        r.err()
    );
    assert!(!Cluster::exists(dirs[3].path()));
    assert_eq!(a.status().await.voters.len(), 3);

    // The leader, primary of vm, leaves: vm moves to b, a new leader is
    // elected among b and c.
    let a_id = a.id();
    a.leave().await.unwrap();
    eventually_async("a new leader without a", 10, || async {
        let s = b.status().await;
        s.leader.is_some_and(|l| l != a_id) && !s.voters.contains(&a_id)
    })
    .await;
    a.shutdown().await;
    let s = b.state();
    assert!(!s.nodes.contains_key(&a_id));
    assert_eq!(
        (s.volumes["vm"].primary, s.volumes["vm"].epoch),
        (b.id(), 2)
    );
    c.propose(create("after", 2)).await.unwrap();
    assert_eq!(
        c.state().volumes["after"].replicas.len(),
        2,
        "placed on b and c"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_that_cannot_read_the_log_may_neither_join_nor_start() {
    use cluster::net::Caller;
    use cluster::raft_store::{Applied, RaftStore};
    use openraft::storage::{RaftSnapshotBuilder, RaftStorage};

    let d = tempfile::tempdir().unwrap();
    let (c, addr) = solo(d.path()).await;
    assert_eq!(
        c.state().required_log_version,
        0,
        "entries of version 0 only"
    );
    c.propose(Command::SetReplaceDelay { secs: 120 })
        .await
        .unwrap();
    assert_eq!(c.state().required_log_version, 4);
    c.propose(create("more", 1)).await.unwrap();
    assert_eq!(c.state().required_log_version, 4, "never lowered");

    // The leader refuses a joining build that reads less, or does not say
    // (a build older than the question).
    let caller = Caller::new(c.secret(), Duration::from_secs(5));
    let joiner = cluster::NodeInfo {
        id: 9,
        ..info("old", Role::Data, free_addr())
    };
    for body in [
        serde_json::json!({ "info": joiner, "log_version": 3 }),
        serde_json::json!({ "info": joiner }),
    ] {
        let r: Result<(), String> = caller
            .post(&addr.to_string(), "/cluster/join", &body)
            .await
            .unwrap();
        let why = r.expect_err("an old build joined");
        assert!(
            why.contains("the cluster's log holds entries of version 4"),
            "{why}"
        );
    }
    assert!(!c.state().nodes.contains_key(&9));

    // A state a newer build wrote: this build refuses to start on it rather
    // than stop following the log at the first entry it cannot read.
    c.shutdown().await;
    drop(c);
    {
        let mut store = RaftStore::open(d.path()).unwrap();
        let snap = store
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let mut applied: Applied = serde_json::from_slice(snap.snapshot.get_ref()).unwrap();
        applied.state.required_log_version = cluster::LOG_VERSION + 1;
        let newer = std::io::Cursor::new(serde_json::to_vec(&applied).unwrap());
        store
            .install_snapshot(&snap.meta, Box::new(newer))
            .await
            .unwrap();
    }
    let why = Cluster::open(d.path(), addr)
        .await
        .err()
        .expect("started on a log it cannot read")
        .to_string();
    assert!(
        why.contains(&format!(
            "entries of version {} and this build of Tandem",
            cluster::LOG_VERSION + 1
        )),
        "{why}"
    );
}

/// A stopped member has let go of its state database: the directory opens
/// again at once, however busy Raft's workers were at the stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_member_releases_its_database_at_once() {
    use cluster::raft_store::RaftStore;

    let d = tempfile::tempdir().unwrap();
    let (mut c, addr) = solo(d.path()).await;
    for round in 0..15 {
        c.propose(create(&format!("v{round}"), 1)).await.unwrap();
        c.shutdown().await;
        drop(c);
        let store = RaftStore::open(d.path())
            .unwrap_or_else(|e| panic!("round {round}: the database is still held: {e}"));
        assert!(store.state().volumes.contains_key(&format!("v{round}")));
        drop(store);
        c = Cluster::open(d.path(), addr).await.unwrap();
        eventually("leader again", 10, || c.lease_valid()).await;
    }
    c.shutdown().await;
}
