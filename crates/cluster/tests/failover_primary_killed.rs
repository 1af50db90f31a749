//! A volume's primary dies: the leader promotes an in-sync replica a few
//! seconds later, never before the dead primary's lease has run out, and
//! never a replica that misses writes.

mod common;

use std::time::{Duration, Instant};

use cluster::{Cluster, Command, ReplicaState, Role};
use common::{create, eventually, init, join};

/// Stops `c` the way a crash would, as far as the others can tell; returns
/// the last instant until which it could have acted as primary.
async fn kill(c: Cluster) -> Instant {
    c.shutdown().await;
    // No heartbeat runs any more: this is the final lease.
    let until = c.lease_valid_until().expect("the primary held a lease");
    drop(c);
    until
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_and_leader_killed_together() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, token) = init(dirs[0].path(), "a", Role::Data).await;
    let b = join(dirs[1].path(), "b", Role::Data, &a, &token).await;
    let w = join(dirs[2].path(), "w", Role::Witness, &a, &token).await;
    a.propose(create("vm", 2)).await.unwrap();
    let v = a.state().volumes["vm"].clone();
    assert_eq!(
        (v.primary, v.epoch),
        (a.id(), 1),
        "leader holds the primary"
    );
    eventually("leases granted", 5, || a.lease_valid() && b.lease_valid()).await;

    let killed = Instant::now();
    let (a_id, b_id) = (a.id(), b.id());
    let lease_end = kill(a).await;
    eventually("in-sync replica promoted", 10, || {
        let s = b.state();
        s.volumes
            .get("vm")
            .is_some_and(|v| v.primary == b_id && v.epoch == 2)
    })
    .await;
    let promoted = Instant::now();
    assert!(
        promoted > lease_end,
        "a new primary before the old one's lease ran out"
    );
    let took = promoted - killed;
    println!("promoted {took:?} after the kill");
    assert!(took < Duration::from_secs(5), "promotion took {took:?}");
    let v = b.state().volumes["vm"].clone();
    assert_eq!(v.replicas[&a_id], ReplicaState::OutOfSync);
    assert_ne!(w.status().await.leader, Some(a_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_on_a_follower_killed_and_stale_copies_stay_put() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, token) = init(dirs[0].path(), "a", Role::Data).await;
    let b = join(dirs[1].path(), "b", Role::Data, &a, &token).await;
    let w = join(dirs[2].path(), "w", Role::Witness, &a, &token).await;
    let (a_id, b_id) = (a.id(), b.id());
    for name in ["vm", "stale"] {
        w.propose(create(name, 2)).await.unwrap();
        // Both volumes move to b; a's copy misses writes from then on.
        let promote = Command::Promote {
            volume: name.into(),
            node: b_id,
            expected_epoch: 1,
        };
        w.propose(promote).await.unwrap();
        assert_eq!(
            a.state().volumes[name].replicas[&a_id],
            ReplicaState::OutOfSync
        );
    }
    // vm's copy on a catches up; stale's does not.
    let synced = Command::SetReplicaState {
        volume: "vm".into(),
        node: a_id,
        state: ReplicaState::InSync,
        epoch: 2,
        seq: 0,
    };
    b.propose(synced).await.unwrap();
    eventually("b holds a lease", 5, || b.lease_valid()).await;

    let killed = Instant::now();
    let lease_end = kill(b).await;
    eventually("vm promoted on a", 10, || {
        let s = a.state();
        s.volumes
            .get("vm")
            .is_some_and(|v| v.primary == a_id && v.epoch == 3)
    })
    .await;
    let promoted = Instant::now();
    assert!(promoted > lease_end, "new primary inside the old lease");
    let took = promoted - killed;
    println!("promoted {took:?} after the kill");
    assert!(took < Duration::from_secs(5), "promotion took {took:?}");
    // A copy that misses writes is never promoted: stale waits for b.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let s = w.state().volumes["stale"].clone();
    assert_eq!((s.primary, s.epoch), (b_id, 2));
    assert_eq!(s.replicas[&a_id], ReplicaState::OutOfSync);
}
