//! The Raft leader (not a primary) dies: the others elect a new leader, keep
//! the state, do not touch a live primary, and the old leader restarted from
//! its disk rejoins with everything it missed.

mod common;

use std::time::Duration;

use cluster::{Cluster, Command, ReplicaState, Role};
use common::{create, eventually, eventually_async, init, join};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_then_restarted_from_disk() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, token) = init(dirs[0].path(), "a", Role::Data).await;
    let b = join(dirs[1].path(), "b", Role::Data, &a, &token).await;
    let w = join(dirs[2].path(), "w", Role::Witness, &a, &token).await;
    let (a_id, b_id) = (a.id(), b.id());
    a.propose(create("vm", 2)).await.unwrap();
    let promote = Command::Promote {
        volume: "vm".into(),
        node: b_id,
        expected_epoch: 1,
    };
    a.propose(promote).await.unwrap();
    let synced = Command::SetReplicaState {
        volume: "vm".into(),
        node: a_id,
        state: ReplicaState::InSync,
        epoch: 2,
        seq: 0,
    };
    a.propose(synced).await.unwrap();
    let before = a.state();
    let a_addr = a.local_addr();
    assert_eq!(w.status().await.leader, Some(a_id));

    a.shutdown().await;
    drop(a);
    let elected = eventually_async("a new leader", 10, || async {
        let (sb, sw) = (b.status().await, w.status().await);
        sb.leader.is_some_and(|l| l != a_id) && sb.leader == sw.leader
    })
    .await;
    println!("new leader {elected:?} after the kill");
    assert!(
        elected < Duration::from_secs(5),
        "election took {elected:?}"
    );
    let leader = b.status().await.leader.unwrap();
    assert_eq!(*b.state(), *before, "state survives the leader");
    assert_eq!(*w.state(), *before);
    eventually("b's lease runs again", 5, || b.lease_valid()).await;

    // The live primary keeps its volume past the new leader's grace period.
    tokio::time::sleep(cluster::LEASE + cluster::DEAD_AFTER).await;
    let v = w.state().volumes["vm"].clone();
    assert_eq!((v.primary, v.epoch), (b_id, 2), "live primary deposed");

    // The cluster still takes changes (2 of 3 voters).
    w.propose(create("while-away", 1)).await.unwrap();
    let status = b.status().await;
    assert!(!status.reachable(a_id) && status.reachable(b_id));

    // a comes back from its redb state on the same address.
    let a = Cluster::open(dirs[0].path(), a_addr).await.unwrap();
    assert_eq!(a.id(), a_id);
    assert_eq!(*a.state(), *before, "the state it had on disk");
    eventually("a catches up", 10, || {
        a.state().volumes.contains_key("while-away")
    })
    .await;
    eventually_async("a follows the leader", 10, || async {
        a.status().await.leader.is_some()
    })
    .await;
    eventually("a's lease runs again", 5, || a.lease_valid()).await;
    assert_eq!(*a.state(), *w.state());
    let _ = leader;
}
