//! The state machine's tests: commands one by one, and a property test
//! of every sequence.

use super::*;
use proptest::prelude::*;

fn node(id: NodeId, role: Role) -> NodeInfo {
    NodeInfo {
        id,
        name: format!("n{id}"),
        role: Some(role),
        cluster_addr: format!("10.0.0.{id}:7400"),
        iscsi_addr: String::new(),
        repl_addr: String::new(),
    }
}

fn cluster(data: u64, witness: bool) -> ClusterState {
    let mut s = ClusterState::default();
    for i in 1..=data {
        assert_eq!(
            s.apply(&Command::AddNode {
                info: node(i, Role::Data)
            }),
            Outcome::Done
        );
    }
    if witness {
        s.apply(&Command::AddNode {
            info: node(9, Role::Witness),
        });
    }
    s
}

fn create(name: &str, replicas: usize) -> Command {
    Command::CreateVolume {
        id: Uuid::nil(),
        name: name.into(),
        size_bytes: 1 << 30,
        block_size: 512,
        replicas,
    }
}

#[test]
fn placement_spreads_copies_over_data_nodes_only() {
    let mut s = cluster(3, true);
    assert_eq!(s.apply(&create("a", 2)), Outcome::Done);
    assert_eq!(s.apply(&create("b", 2)), Outcome::Done);
    let a: Vec<_> = s.volumes["a"].replicas.keys().copied().collect();
    let b: Vec<_> = s.volumes["b"].replicas.keys().copied().collect();
    assert_eq!(a, vec![1, 2]);
    assert!(b.contains(&3), "least loaded node first: {b:?}");
    assert!(!a.contains(&9) && !b.contains(&9), "witness holds no data");
    assert!(matches!(s.apply(&create("c", 4)), Outcome::Refused(_)));
    let mut two = cluster(2, true);
    assert!(matches!(two.apply(&create("c", 3)), Outcome::Refused(_)));
}

#[test]
fn stale_replicas_are_never_promoted_and_epochs_fence() {
    let mut s = cluster(2, true);
    s.apply(&create("v", 2));
    let v = &s.volumes["v"];
    let (p, other) = (
        v.primary,
        *v.replicas.keys().find(|&&n| n != v.primary).unwrap(),
    );
    let lost = Command::SetReplicaState {
        volume: "v".into(),
        node: other,
        state: ReplicaState::OutOfSync,
        epoch: 1,
        seq: 0,
    };
    assert_eq!(s.apply(&lost), Outcome::Done);
    let promote = |node, e| Command::Promote {
        volume: "v".into(),
        node,
        expected_epoch: e,
    };
    assert!(matches!(s.apply(&promote(other, 1)), Outcome::Refused(_)));
    // The stale copy catches up; only the current epoch's primary may say so.
    let back = |e| Command::SetReplicaState {
        volume: "v".into(),
        node: other,
        state: ReplicaState::InSync,
        epoch: e,
        seq: 0,
    };
    assert!(matches!(s.apply(&back(0)), Outcome::Refused(_)));
    assert_eq!(s.apply(&back(1)), Outcome::Done);
    assert_eq!(s.apply(&promote(other, 1)), Outcome::Done);
    let v = &s.volumes["v"];
    assert_eq!((v.primary, v.epoch), (other, 2));
    assert_eq!(v.replicas[&p], ReplicaState::OutOfSync);
    assert!(
        matches!(s.apply(&promote(p, 1)), Outcome::Refused(_)),
        "stale epoch"
    );
}

#[test]
fn nodes_with_the_only_in_sync_copy_cannot_leave() {
    let mut s = cluster(2, false);
    s.apply(&create("v", 1));
    let holder = s.volumes["v"].primary;
    assert!(matches!(
        s.apply(&Command::RemoveNode { node: holder }),
        Outcome::Refused(_)
    ));
    let free = if holder == 1 { 2 } else { 1 };
    assert_eq!(s.apply(&Command::RemoveNode { node: free }), Outcome::Done);
    assert!(matches!(
        s.apply(&Command::RemoveNode { node: free }),
        Outcome::Refused(_)
    ));
}

#[test]
fn a_leaving_primary_hands_over_to_an_in_sync_copy() {
    let mut s = cluster(3, true);
    s.apply(&create("v", 3));
    let v = s.volumes["v"].clone();
    assert_eq!((v.primary, v.epoch), (1, 1));
    // Node 2 misses writes: node 3 must take over.
    s.apply(&Command::SetReplicaState {
        volume: "v".into(),
        node: 2,
        state: ReplicaState::OutOfSync,
        epoch: 1,
        seq: 0,
    });
    assert_eq!(s.apply(&Command::RemoveNode { node: 1 }), Outcome::Done);
    let v = &s.volumes["v"];
    assert_eq!((v.primary, v.epoch), (3, 2));
    assert!(!v.replicas.contains_key(&1));
    assert!(!s.nodes.contains_key(&1));
    // Node 3 now holds the only in-sync copy.
    assert!(matches!(
        s.apply(&Command::RemoveNode { node: 3 }),
        Outcome::Refused(_)
    ));
    assert_eq!(s.apply(&Command::RemoveNode { node: 2 }), Outcome::Done);
    assert_eq!(s.volumes["v"].replicas.len(), 1);
}

#[test]
fn another_copy_goes_to_the_least_loaded_data_node_without_one() {
    let mut s = cluster(3, true);
    for name in ["v", "w"] {
        assert_eq!(
            s.apply(&Command::CreateVolume {
                id: Uuid::new_v4(),
                name: name.into(),
                size_bytes: 1 << 20,
                block_size: 512,
                replicas: 2,
            }),
            Outcome::Done
        );
    }
    let v = &s.volumes["v"];
    let next = s.place_another("v").unwrap();
    assert!(!v.replicas.contains_key(&next));
    assert!(s.nodes[&next].holds_data());
    assert_eq!(
        s.apply(&Command::AddReplica {
            volume: "v".into(),
            node: next,
        }),
        Outcome::Done
    );
    assert_eq!(
        s.place_another("v").unwrap_err(),
        Refusal::NoNodeLeft { volume: "v".into() }
    );
    assert!(s
        .place_another("v")
        .unwrap_err()
        .to_string()
        .contains("every data node"));
    assert!(s.place_another("nope").is_err());
    assert_eq!(s.find_node("n2").map(|n| n.id), Some(2));
    assert_eq!(s.find_node("3").map(|n| n.id), Some(3));
    assert!(s.find_node("n7").is_none());
}

#[test]
fn replicas_are_added_out_of_sync_and_removed_unless_primary() {
    let mut s = cluster(3, true);
    s.apply(&create("v", 1));
    let add = |node| Command::AddReplica {
        volume: "v".into(),
        node,
    };
    let remove = |node| Command::RemoveReplica {
        volume: "v".into(),
        node,
    };
    assert!(matches!(s.apply(&add(9)), Outcome::Refused(_)), "witness");
    assert!(matches!(s.apply(&add(5)), Outcome::Refused(_)), "stranger");
    assert!(matches!(s.apply(&add(1)), Outcome::Refused(_)), "twice");
    assert_eq!(s.apply(&add(2)), Outcome::Done);
    assert_eq!(s.volumes["v"].replicas[&2], ReplicaState::OutOfSync);
    assert!(matches!(
        s.apply(&Command::Promote {
            volume: "v".into(),
            node: 2,
            expected_epoch: 1
        }),
        Outcome::Refused(_)
    ));
    assert_eq!(s.apply(&add(3)), Outcome::Done);
    s.apply(&Command::AddNode {
        info: node(4, Role::Data),
    });
    assert!(matches!(s.apply(&add(4)), Outcome::Refused(_)), "at most 3");
    assert!(
        matches!(s.apply(&remove(1)), Outcome::Refused(_)),
        "primary"
    );
    assert_eq!(s.apply(&remove(3)), Outcome::Done);
    assert!(matches!(s.apply(&remove(3)), Outcome::Refused(_)));
    assert_eq!(
        s.volumes["v"].replicas.keys().copied().collect::<Vec<_>>(),
        vec![1, 2]
    );
}

#[test]
fn geometry_and_names_are_checked() {
    let mut s = cluster(1, false);
    let bad = |size_bytes, block_size| Command::CreateVolume {
        id: Uuid::nil(),
        name: "g".into(),
        size_bytes,
        block_size,
        replicas: 1,
    };
    for (size, bs) in [
        (0, 512),
        (1000, 512),
        (4096, 0),
        (4096, 1000),
        (1 << 20, 1 << 20),
    ] {
        assert!(matches!(s.apply(&bad(size, bs)), Outcome::Refused(_)));
    }
    assert!(matches!(s.apply(&create("g", 0)), Outcome::Refused(_)));
    for name in ["", "Upper", "-dash", "a/b", "a b", &"x".repeat(64)] {
        assert!(
            matches!(s.apply(&create(name, 1)), Outcome::Refused(_)),
            "{name:?}"
        );
    }
    assert_eq!(s.apply(&create(&"x".repeat(63), 1)), Outcome::Done);
    assert_eq!(s.apply(&create("g", 1)), Outcome::Done);
    assert!(matches!(s.apply(&create("g", 1)), Outcome::Refused(_)));
    let resize = |size_bytes| Command::ResizeVolume {
        name: "g".into(),
        size_bytes,
    };
    assert!(
        matches!(s.apply(&resize(1 << 20)), Outcome::Refused(_)),
        "shrink"
    );
    assert!(matches!(
        s.apply(&resize((1 << 31) + 1)),
        Outcome::Refused(_)
    ));
    assert_eq!(s.apply(&resize(1 << 31)), Outcome::Done);
    assert_eq!(s.volumes["g"].size_bytes, 1 << 31);
    let mut witness = node(2, Role::Witness);
    witness.name = "n1".into();
    assert!(
        matches!(
            s.apply(&Command::AddNode { info: witness }),
            Outcome::Refused(_)
        ),
        "names are unique"
    );
    for bad in [
        NodeInfo {
            name: String::new(),
            ..node(5, Role::Data)
        },
        NodeInfo {
            name: "a\nb".into(),
            ..node(5, Role::Data)
        },
        NodeInfo {
            repl_addr: "x".repeat(256),
            ..node(5, Role::Data)
        },
        node(0, Role::Data),
        NodeInfo {
            role: None,
            ..node(5, Role::Data)
        },
    ] {
        assert!(
            matches!(
                s.apply(&Command::AddNode { info: bad.clone() }),
                Outcome::Refused(_)
            ),
            "{bad:?}"
        );
    }
    let mut demoted = node(1, Role::Witness);
    demoted.name = "n1".into();
    assert!(
        matches!(
            s.apply(&Command::AddNode { info: demoted }),
            Outcome::Refused(_)
        ),
        "a node with copies stays a data node"
    );
}

#[test]
fn commands_round_trip_through_json() {
    let cmds = [
        create("v", 2),
        Command::SetReplicaState {
            volume: "v".into(),
            node: 2,
            state: ReplicaState::Syncing,
            epoch: 3,
            seq: 7,
        },
        Command::AddReplica {
            volume: "v".into(),
            node: 3,
        },
        Command::SetAccess {
            volume: "v".into(),
            access: Some(r#"{"allowed_initiators":["iqn.x"]}"#.into()),
        },
        Command::SetDataKey { id: "ab".into() },
        Command::ResealAccess {
            volume: "v".into(),
            replaces: "cd".into(),
            access: "{}".into(),
        },
    ];
    for c in cmds {
        let back: Command = serde_json::from_slice(&serde_json::to_vec(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
    assert!(serde_json::from_str::<Command>(r#"{"command":"promote"}"#).is_err());
}

#[test]
fn entries_with_resync_progress_still_apply() {
    let old = r#"{"command":"set-replica-state","volume":"v","node":2,"state":{"state":"syncing","done":5,"total":9},"epoch":3,"seq":7}"#;
    let c: Command = serde_json::from_str(old).unwrap();
    assert_eq!(
        c,
        Command::SetReplicaState {
            volume: "v".into(),
            node: 2,
            state: ReplicaState::Syncing,
            epoch: 3,
            seq: 7,
        }
    );
    let record = r#"{"2":{"state":"syncing","done":1,"total":2},"3":{"state":"in-sync"}}"#;
    let replicas: BTreeMap<NodeId, ReplicaState> = serde_json::from_str(record).unwrap();
    assert_eq!(replicas[&2], ReplicaState::Syncing);
    assert_eq!(
        serde_json::to_string(&ReplicaState::Syncing).unwrap(),
        r#"{"state":"syncing"}"#
    );
}

#[test]
fn the_first_data_key_stays_and_a_reseal_applies_only_to_the_rules_it_was_made_from() {
    let mut s = cluster(1, false);
    let set = |id: &str| Command::SetDataKey { id: id.into() };
    assert_eq!(s.apply(&set("k1")), Outcome::Done);
    assert_eq!(s.apply(&set("k1")), Outcome::Done, "again, same key");
    assert_eq!(s.apply(&set("k2")), Outcome::Refused(Refusal::DataKeySet));
    assert_eq!(s.data_key.as_deref(), Some("k1"));

    s.apply(&create("v", 1));
    let clear = r#"{"chap":{"user":"esx","secret":"initiator-secret-1"}}"#;
    let set_access = |a: &str| Command::SetAccess {
        volume: "v".into(),
        access: Some(a.into()),
    };
    assert_eq!(s.apply(&set_access(clear)), Outcome::Done);
    let reseal = |replaces: &str| Command::ResealAccess {
        volume: "v".into(),
        replaces: access_digest(replaces),
        access: "sealed".into(),
    };
    // The reseal names the old rules by digest, never by their text.
    let bytes = serde_json::to_string(&reseal(clear)).unwrap();
    assert!(!bytes.contains("initiator-secret-1"));
    assert_eq!(
        s.apply(&reseal("{}")),
        Outcome::Refused(Refusal::AccessChanged { volume: "v".into() })
    );
    assert_eq!(s.volumes["v"].access.as_deref(), Some(clear));
    assert_eq!(s.apply(&reseal(clear)), Outcome::Done);
    assert_eq!(s.volumes["v"].access.as_deref(), Some("sealed"));
    // A state without a data key writes no field for it: snapshots of
    // clusters made before keep their bytes.
    assert!(!serde_json::to_string(&cluster(1, false))
        .unwrap()
        .contains("data_key"));
}

#[test]
fn a_report_overtaken_by_a_later_one_is_refused() {
    let mut s = cluster(2, true);
    assert_eq!(s.apply(&create("v", 2)), Outcome::Done);
    let other = *s.volumes["v"]
        .replicas
        .keys()
        .find(|&&n| n != s.volumes["v"].primary)
        .unwrap();
    let report = |state, seq| Command::SetReplicaState {
        volume: "v".into(),
        node: other,
        state,
        epoch: 1,
        seq,
    };
    // "In sync" (2) was given up on and "out of sync" (3) sent after it;
    // the first lands late and must not undo the second.
    assert_eq!(s.apply(&report(ReplicaState::OutOfSync, 3)), Outcome::Done);
    assert!(matches!(
        s.apply(&report(ReplicaState::InSync, 2)),
        Outcome::Refused(_)
    ));
    assert_eq!(s.volumes["v"].replicas[&other], ReplicaState::OutOfSync);
    assert_eq!(s.apply(&report(ReplicaState::InSync, 4)), Outcome::Done);
    // Unnumbered reports are applied as before.
    assert_eq!(s.apply(&report(ReplicaState::OutOfSync, 0)), Outcome::Done);
}

fn floating() -> FloatingAddress {
    FloatingAddress {
        address: "10.0.0.50/24".into(),
        interface: "eth0".into(),
    }
}

#[test]
fn the_floating_address_moves_only_from_the_holder_expected() {
    let mut s = cluster(2, true);
    let hold = |node, expected| Command::HoldFloating { node, expected };
    assert_eq!(
        s.apply(&hold(Some(1), None)),
        Outcome::Refused(Refusal::NoFloatingAddress)
    );
    assert_eq!(
        s.apply(&Command::SetFloating {
            floating: Some(floating())
        }),
        Outcome::Done
    );
    assert_eq!(s.apply(&hold(Some(1), None)), Outcome::Done);
    // A leader that saw nobody holding it, or another holder, is late.
    assert_eq!(
        s.apply(&hold(Some(2), None)),
        Outcome::Refused(Refusal::FloatingMoved { holder: Some(1) })
    );
    assert_eq!(s.apply(&hold(Some(2), Some(1))), Outcome::Done);
    assert_eq!(s.floating_holder, Some(2));
    // Never a witness.
    assert_eq!(
        s.apply(&hold(Some(9), Some(2))),
        Outcome::Refused(Refusal::NotDataNode { node: 9 })
    );
    // The holder hands it back.
    assert_eq!(s.apply(&hold(None, Some(2))), Outcome::Done);
    assert_eq!(s.floating_holder, None);
    // A holder that leaves, or becomes a witness, holds it no longer.
    s.apply(&hold(Some(2), None));
    s.apply(&Command::RemoveNode { node: 2 });
    assert_eq!(s.floating_holder, None);
    s.apply(&hold(Some(1), None));
    s.apply(&Command::AddNode {
        info: node(1, Role::Witness),
    });
    assert_eq!(s.floating_holder, None);
    // Removing the address ends the holding; a bad one changes nothing.
    s.apply(&Command::AddNode {
        info: node(1, Role::Data),
    });
    s.apply(&hold(Some(1), None));
    let bad = FloatingAddress {
        address: "10.0.0.50".into(),
        interface: "eth0".into(),
    };
    assert!(matches!(
        s.apply(&Command::SetFloating {
            floating: Some(bad)
        }),
        Outcome::Refused(Refusal::BadFloatingAddress { .. })
    ));
    assert_eq!(s.floating, Some(floating()));
    s.apply(&Command::SetFloating { floating: None });
    assert_eq!((s.floating.clone(), s.floating_holder), (None, None));
}

#[test]
fn a_state_without_a_floating_address_reads_and_writes_as_before() {
    let s = cluster(2, false);
    let text = serde_json::to_string(&s).unwrap();
    assert!(!text.contains("floating"), "{text}");
    let read: ClusterState = serde_json::from_str(&text).unwrap();
    assert_eq!(read, s);
}

fn any_command() -> impl Strategy<Value = Command> {
    let vol = prop_oneof![Just("a".to_string()), Just("b".to_string())];
    let state = prop_oneof![
        Just(ReplicaState::InSync),
        Just(ReplicaState::OutOfSync),
        Just(ReplicaState::Syncing)
    ];
    let node_id = 1u64..6;
    prop_oneof![
        (vol.clone(), 1usize..4).prop_map(|(n, r)| create(&n, r)),
        vol.clone().prop_map(|name| Command::DeleteVolume { name }),
        (0u64..3).prop_map(|secs| Command::SetReplaceDelay { secs }),
        (vol.clone(), node_id.clone(), state, 0u64..6, 0u64..4).prop_map(
            |(volume, node, state, epoch, seq)| {
                Command::SetReplicaState {
                    volume,
                    node,
                    state,
                    epoch,
                    seq,
                }
            }
        ),
        (vol.clone(), node_id.clone(), 0u64..6).prop_map(|(volume, node, expected_epoch)| {
            Command::Promote {
                volume,
                node,
                expected_epoch,
            }
        }),
        (vol.clone(), node_id.clone(), 0u64..6).prop_map(|(volume, node, expected_epoch)| {
            Command::MovePrimary {
                volume,
                node,
                expected_epoch,
            }
        }),
        (vol.clone(), node_id.clone())
            .prop_map(|(volume, node)| Command::AddReplica { volume, node }),
        (vol.clone(), node_id.clone())
            .prop_map(|(volume, node)| Command::RemoveReplica { volume, node }),
        (vol.clone(), proptest::option::of(Just("{}".to_string())))
            .prop_map(|(volume, access)| Command::SetAccess { volume, access }),
        (vol.clone(), prop_oneof![Just("{}"), Just("[]")]).prop_map(|(volume, replaces)| {
            Command::ResealAccess {
                volume,
                replaces: access_digest(replaces),
                access: "[]".into(),
            }
        }),
        prop_oneof![Just("k1"), Just("k2")].prop_map(|id| Command::SetDataKey { id: id.into() }),
        proptest::option::of(prop_oneof![Just("10.0.0.50/24"), Just("10.0.0.50")]).prop_map(
            |address| Command::SetFloating {
                floating: address.map(|address| FloatingAddress {
                    address: address.into(),
                    interface: "eth0".into(),
                })
            }
        ),
        (
            proptest::option::of(node_id.clone()),
            proptest::option::of(node_id.clone())
        )
            .prop_map(|(node, expected)| Command::HoldFloating { node, expected }),
        node_id
            .clone()
            .prop_map(|node| Command::RemoveNode { node }),
        (node_id.clone(), any::<bool>())
            .prop_map(|(node, on)| Command::SetMaintenance { node, on }),
        node_id
            .clone()
            .prop_map(|node| Command::RemoveDeadNode { node }),
        (vol, node_id.clone(), node_id.clone())
            .prop_map(|(volume, node, with)| Command::ReplaceCopy { volume, node, with }),
        (node_id, any::<bool>()).prop_map(|(id, data)| Command::AddNode {
            info: node(id, if data { Role::Data } else { Role::Witness })
        }),
    ]
}

proptest! {
    #[test]
    fn any_history_keeps_one_in_sync_primary_and_growing_epochs(cmds in proptest::collection::vec(any_command(), 1..80)) {
        let mut s = cluster(3, true);
        // Every (volume, epoch) ever seen and its primary: two primaries
        // at one epoch would be split brain.
        let mut primaries: BTreeMap<(Uuid, u64), NodeId> = BTreeMap::new();
        let mut ids = 0u128;
        for c in &cmds {
            let c = match c {
                Command::CreateVolume { name, size_bytes, block_size, replicas, .. } => {
                    ids += 1;
                    Command::CreateVolume {
                        id: Uuid::from_u128(ids),
                        name: name.clone(),
                        size_bytes: *size_bytes,
                        block_size: *block_size,
                        replicas: *replicas,
                    }
                }
                c => c.clone(),
            };
            let before = s.clone();
            let outcome = s.apply(&c);
            if let Outcome::Refused(_) = outcome {
                prop_assert_eq!(&s, &before, "a refused command changed the state");
            }
            if let (Command::MovePrimary { volume, node, expected_epoch }, Outcome::Done) = (&c, &outcome) {
                // A planned switchover goes to another in-sync copy, at the
                // next epoch, and leaves every copy's state as it was.
                let (b, v) = (&before.volumes[volume], &s.volumes[volume]);
                prop_assert_eq!(b.epoch, *expected_epoch);
                prop_assert!(b.primary != *node, "moved to the primary itself");
                prop_assert_eq!(b.replicas.get(node), Some(&ReplicaState::InSync));
                prop_assert_eq!((v.primary, v.epoch), (*node, b.epoch + 1));
                if !before.in_maintenance(b.primary) {
                    prop_assert_eq!(&v.replicas, &b.replicas, "a move changed a copy's state");
                }
            }
            for &m in &s.maintenance {
                prop_assert!(s.nodes.contains_key(&m), "a stranger in maintenance: {}", m);
                for v in s.volumes.values() {
                    // A node in maintenance is never made primary...
                    let led = before.volumes.get(&v.name).filter(|b| b.id == v.id).map(|b| b.primary);
                    prop_assert!(v.primary != m || led == Some(m),
                        "node {} in maintenance was made primary of {}", m, v.name);
                    // ...and a copy it holds of a volume it does not lead
                    // takes no writes, so never counts as in sync.
                    if v.primary != m {
                        prop_assert!(v.replicas.get(&m).is_none_or(|st| *st == ReplicaState::OutOfSync),
                            "node {} in maintenance holds a copy of {} in state {:?}", m, v.name, v.replicas.get(&m));
                    }
                }
            }
            if let Some(h) = s.floating_holder {
                prop_assert!(s.floating.is_some(), "a holder without a floating address");
                prop_assert!(s.nodes.get(&h).is_some_and(|i| i.holds_data()),
                    "the floating address held by a witness or a stranger: {}", h);
            }
            if before.data_key.is_some() {
                prop_assert_eq!(&s.data_key, &before.data_key, "the data key changed");
            }
            for &r in &s.removed {
                prop_assert!(!s.nodes.contains_key(&r), "removed node {} is a member", r);
            }
            for v in s.volumes.values() {
                // A replacement names a new copy and a copy it replaces.
                for (new, old) in &v.replacing {
                    prop_assert!(v.replicas.contains_key(new) && v.replicas.contains_key(old),
                        "replacement {} -> {} of {} without both copies: {:?}", old, new, v.name, v.replicas);
                }
                prop_assert!(v.wanted <= MAX_REPLICAS);
                prop_assert_eq!(v.replicas.get(&v.primary), Some(&ReplicaState::InSync));
                prop_assert!((1..=MAX_REPLICAS).contains(&v.replicas.len()));
                prop_assert!(v.replicas.keys().all(|n| s.nodes.get(n).is_some_and(|i| i.holds_data())),
                    "a copy on a witness or a stranger: {:?}", v.replicas);
                if let Some(b) = before.volumes.get(&v.name).filter(|b| b.id == v.id) {
                    prop_assert!(v.epoch >= b.epoch, "epoch went back");
                    if v.primary != b.primary {
                        prop_assert!(v.epoch > b.epoch, "new primary without a new epoch");
                    }
                }
                let p = primaries.entry((v.id, v.epoch)).or_insert(v.primary);
                prop_assert_eq!(*p, v.primary, "two primaries at one epoch");
            }
        }
    }
}

#[test]
fn a_planned_switchover_keeps_the_old_primary_in_sync() {
    let mut s = cluster(3, true);
    s.apply(&create("v", 3));
    let (a, epoch) = (s.volumes["v"].primary, s.volumes["v"].epoch);
    let mut others = s.volumes["v"].replicas.keys().copied().filter(|&n| n != a);
    let (b, c) = (others.next().unwrap(), others.next().unwrap());
    let to = |node, expected_epoch| Command::MovePrimary {
        volume: "v".into(),
        node,
        expected_epoch,
    };
    assert_eq!(s.apply(&to(b, epoch)), Outcome::Done);
    let v = &s.volumes["v"];
    assert_eq!((v.primary, v.epoch), (b, epoch + 1));
    assert!(
        v.replicas.values().all(|st| *st == ReplicaState::InSync),
        "the drained old primary misses nothing: {:?}",
        v.replicas
    );
    // And back, as often as one likes: no copy falls out of sync.
    assert_eq!(s.apply(&to(a, epoch + 1)), Outcome::Done);
    assert_eq!(s.volumes["v"].primary, a);
    assert_eq!(s.volumes["v"].epoch, epoch + 2);
    // A failover, by contrast, leaves the old primary out of sync.
    s.apply(&Command::Promote {
        volume: "v".into(),
        node: c,
        expected_epoch: epoch + 2,
    });
    assert_eq!(s.volumes["v"].replicas[&a], ReplicaState::OutOfSync);
    assert_eq!(s.volumes["v"].primary, c);
}

#[test]
fn a_planned_switchover_is_refused_with_the_reason() {
    let mut s = cluster(3, true);
    s.apply(&create("v", 2));
    let v = s.volumes["v"].clone();
    let a = v.primary;
    let b = *v.replicas.keys().find(|&&n| n != a).unwrap();
    let stranger = (1..=3).find(|n| !v.replicas.contains_key(n)).unwrap();
    let to = |node, expected_epoch| Command::MovePrimary {
        volume: "v".into(),
        node,
        expected_epoch,
    };
    let refused = |s: &mut ClusterState, c: Command| -> Refusal {
        let before = s.clone();
        match s.apply(&c) {
            Outcome::Refused(why) => {
                assert_eq!(*s, before, "a refused move changed the state");
                why
            }
            Outcome::Done => panic!("{c:?} was applied"),
        }
    };
    assert_eq!(
        refused(&mut s, to(a, v.epoch)),
        Refusal::AlreadyPrimary {
            volume: "v".into(),
            node: a
        }
    );
    assert_eq!(
        refused(&mut s, to(stranger, v.epoch)),
        Refusal::NoCopy {
            volume: "v".into(),
            node: stranger
        }
    );
    assert_eq!(
        refused(&mut s, to(b, v.epoch + 1)),
        Refusal::StaleEpoch {
            volume: "v".into(),
            epoch: v.epoch + 1,
            current: v.epoch
        }
    );
    s.apply(&Command::SetReplicaState {
        volume: "v".into(),
        node: b,
        state: ReplicaState::Syncing,
        epoch: v.epoch,
        seq: 1,
    });
    let why = refused(&mut s, to(b, v.epoch));
    assert_eq!(
        why,
        Refusal::NotInSync {
            volume: "v".into(),
            node: b
        }
    );
    assert_eq!(
        why.to_string(),
        format!("volume v: the copy on node {b} is not in sync and cannot become primary")
    );
    let gone = Refusal::NoVolume { name: "w".into() };
    assert_eq!(
        refused(
            &mut s,
            Command::MovePrimary {
                volume: "w".into(),
                node: b,
                expected_epoch: 1
            }
        ),
        gone
    );
}

#[test]
fn removing_the_primary_s_copy_points_at_move_primary() {
    let mut s = cluster(2, true);
    s.apply(&create("v", 2));
    let a = s.volumes["v"].primary;
    let Outcome::Refused(why) = s.apply(&Command::RemoveReplica {
        volume: "v".into(),
        node: a,
    }) else {
        panic!("the primary's copy was removed");
    };
    assert!(
        why.to_string()
            .contains("tandem volume move-primary v --to NODE"),
        "{why}"
    );
}

#[test]
fn a_move_is_written_to_the_log_under_its_own_name() {
    // What an older member receives: an entry whose "command" it does not
    // know, which its log refuses to read (hence the version check before
    // a node proposes it), never one it would take for another command.
    let c = Command::MovePrimary {
        volume: "v".into(),
        node: 2,
        expected_epoch: 7,
    };
    let text = serde_json::to_string(&c).unwrap();
    assert_eq!(
        text,
        r#"{"command":"move-primary","volume":"v","node":2,"expected_epoch":7}"#
    );
    assert_eq!(serde_json::from_str::<Command>(&text).unwrap(), c);
}

/// The state of `s` after `c`, which must be refused; returns why.
fn refused(s: &mut ClusterState, c: Command) -> Refusal {
    let before = s.clone();
    match s.apply(&c) {
        Outcome::Refused(why) => {
            assert_eq!(*s, before, "a refused command changed the state");
            why
        }
        Outcome::Done => panic!("{c:?} was applied"),
    }
}

#[test]
fn a_node_in_maintenance_is_out_of_the_write_path_and_never_leads() {
    let mut s = cluster(3, true);
    s.apply(&create("v", 3));
    let v = s.volumes["v"].clone();
    let a = v.primary;
    let mut others = v.replicas.keys().copied().filter(|&n| n != a);
    let (b, c) = (others.next().unwrap(), others.next().unwrap());
    let on = |node| Command::SetMaintenance { node, on: true };
    assert_eq!(s.apply(&on(b)), Outcome::Done);
    assert!(s.in_maintenance(b));
    // Its copy is out of sync on purpose: the primary tracks what it misses.
    assert_eq!(s.volumes["v"].replicas[&b], ReplicaState::OutOfSync);
    assert_eq!(s.volumes["v"].replicas[&c], ReplicaState::InSync);
    assert_eq!((s.volumes["v"].primary, s.volumes["v"].epoch), (a, v.epoch));
    // No primary's report makes it in sync while it is away...
    let report = |state, seq| Command::SetReplicaState {
        volume: "v".into(),
        node: b,
        state,
        epoch: v.epoch,
        seq,
    };
    let why = refused(&mut s, report(ReplicaState::InSync, 1));
    assert_eq!(
        why,
        Refusal::InMaintenance {
            volume: "v".into(),
            node: b
        }
    );
    assert_eq!(
        why.to_string(),
        format!("volume v: node {b} is in maintenance (tandem node maintenance exit {b} first)")
    );
    refused(&mut s, report(ReplicaState::Syncing, 1));
    assert_eq!(s.apply(&report(ReplicaState::OutOfSync, 1)), Outcome::Done);
    // ...and it is never made primary: not by a move, not by a failover
    // (were its copy in sync), not by the placement of a new volume.
    s.volumes
        .get_mut("v")
        .unwrap()
        .replicas
        .insert(b, ReplicaState::InSync);
    let move_to = Command::MovePrimary {
        volume: "v".into(),
        node: b,
        expected_epoch: v.epoch,
    };
    assert!(matches!(
        refused(&mut s, move_to),
        Refusal::InMaintenance { .. }
    ));
    let promote = Command::Promote {
        volume: "v".into(),
        node: b,
        expected_epoch: v.epoch,
    };
    assert!(matches!(
        refused(&mut s, promote),
        Refusal::InMaintenance { .. }
    ));
    s.volumes
        .get_mut("v")
        .unwrap()
        .replicas
        .insert(b, ReplicaState::OutOfSync);
    for k in 0..4 {
        let name = format!("w{k}");
        assert_eq!(s.apply(&create(&name, 1)), Outcome::Done);
        assert_ne!(
            s.volumes[&name].primary, b,
            "{name} placed on the node in maintenance"
        );
    }
    // A copy placed on it (every data node needed) starts out of sync.
    assert_eq!(s.apply(&create("x", 3)), Outcome::Done);
    assert_ne!(s.volumes["x"].primary, b);
    assert_eq!(s.volumes["x"].replicas[&b], ReplicaState::OutOfSync);
    // Out of maintenance: the primary reports the copy syncing, then in sync.
    let off = |node| Command::SetMaintenance { node, on: false };
    assert_eq!(s.apply(&off(b)), Outcome::Done);
    assert!(s.maintenance.is_empty());
    assert_eq!(s.apply(&report(ReplicaState::Syncing, 2)), Outcome::Done);
    assert_eq!(s.apply(&report(ReplicaState::InSync, 3)), Outcome::Done);
    assert_eq!(s.volumes["v"].replicas[&b], ReplicaState::InSync);
    let move_to = Command::MovePrimary {
        volume: "v".into(),
        node: b,
        expected_epoch: v.epoch,
    };
    assert_eq!(s.apply(&move_to), Outcome::Done);
    assert_eq!(s.volumes["v"].primary, b);
}

#[test]
fn maintenance_is_refused_to_strangers_and_kept_by_a_forced_primary() {
    let mut s = cluster(2, true);
    s.apply(&create("v", 2));
    let v = s.volumes["v"].clone();
    let a = v.primary;
    let b = *v.replicas.keys().find(|&&n| n != a).unwrap();
    assert_eq!(
        refused(&mut s, Command::SetMaintenance { node: 7, on: true }),
        Refusal::NotMember { node: 7 }
    );
    // The witness may be maintained: it holds nothing.
    assert_eq!(
        s.apply(&Command::SetMaintenance { node: 9, on: true }),
        Outcome::Done
    );
    assert_eq!(s.volumes["v"], v);
    // A primary put in maintenance by force keeps its volume and its copy,
    // and takes its role up anew after a restart...
    assert_eq!(
        s.apply(&Command::SetMaintenance { node: a, on: true }),
        Outcome::Done
    );
    assert_eq!(s.volumes["v"].replicas[&a], ReplicaState::InSync);
    let retake = Command::Promote {
        volume: "v".into(),
        node: a,
        expected_epoch: v.epoch,
    };
    assert_eq!(s.apply(&retake), Outcome::Done);
    // ...and once it hands the volume over, its copy leaves the write path.
    let move_to = Command::MovePrimary {
        volume: "v".into(),
        node: b,
        expected_epoch: v.epoch + 1,
    };
    assert_eq!(s.apply(&move_to), Outcome::Done);
    assert_eq!(s.volumes["v"].replicas[&a], ReplicaState::OutOfSync);
    // Every data node in maintenance: no new volume can be placed.
    assert_eq!(
        s.apply(&Command::SetMaintenance { node: b, on: true }),
        Outcome::Done
    );
    assert_eq!(
        refused(&mut s, create("w", 1)),
        Refusal::AllInMaintenance { name: "w".into() }
    );
    // A member that leaves leaves maintenance too.
    assert_eq!(s.apply(&Command::RemoveNode { node: 9 }), Outcome::Done);
    assert!(!s.in_maintenance(9));
}

#[test]
fn maintenance_is_written_to_the_log_under_its_own_name_and_old_states_read() {
    let c = Command::SetMaintenance { node: 2, on: true };
    let text = serde_json::to_string(&c).unwrap();
    assert_eq!(text, r#"{"command":"set-maintenance","node":2,"on":true}"#);
    assert_eq!(serde_json::from_str::<Command>(&text).unwrap(), c);
    // A state without maintenance writes no field an older member would
    // not know, and one written before reads with nobody in maintenance.
    let s = cluster(2, true);
    let text = serde_json::to_string(&s).unwrap();
    assert!(!text.contains("maintenance"), "{text}");
    assert_eq!(serde_json::from_str::<ClusterState>(&text).unwrap(), s);
}

#[test]
fn a_dead_member_is_removed_with_its_copies_and_the_volumes_ask_for_them_again() {
    let mut s = cluster(3, true);
    s.apply(&create("v", 2));
    s.apply(&create("w", 2));
    let v = s.volumes["v"].clone();
    let dead = v.primary;
    let other = *v.replicas.keys().find(|&&n| n != dead).unwrap();
    assert_eq!(
        s.apply(&Command::RemoveDeadNode { node: dead }),
        Outcome::Done
    );
    assert!(!s.nodes.contains_key(&dead) && s.was_removed(dead));
    let v = &s.volumes["v"];
    // The volume it led failed over to the other in-sync copy, at the
    // next epoch, and runs on one copy asking for two.
    assert_eq!((v.primary, v.epoch), (other, 2));
    assert_eq!(v.replicas.keys().copied().collect::<Vec<_>>(), vec![other]);
    assert_eq!((v.copies_wanted(), v.copies_missing()), (2, 1));
    assert!(s
        .shortfalls()
        .iter()
        .any(|f| f.volume == "v" && f.in_sync == 1 && f.wanted == 2));
    // No volume keeps a copy on it, and a volume it held no copy of is
    // not short.
    assert!(s.volumes.values().all(|v| !v.replicas.contains_key(&dead)));
    for w in s.volumes.values() {
        assert_eq!(w.copies_missing() > 0, w.wanted > 0);
    }
    // It never takes part again under its id.
    assert_eq!(
        refused(
            &mut s,
            Command::AddNode {
                info: node(dead, Role::Data)
            }
        ),
        Refusal::Removed { node: dead }
    );
    // The leader places the missing copy on the third node; the volume
    // asks for no more once it has it.
    let third = s.replacement_for(&s.volumes["v"], |_| true).unwrap();
    assert!(third != dead && third != other);
    assert_eq!(
        s.apply(&Command::AddReplica {
            volume: "v".into(),
            node: third
        }),
        Outcome::Done
    );
    assert_eq!(s.volumes["v"].wanted, 0);
    assert_eq!(s.volumes["v"].replicas[&third], ReplicaState::OutOfSync);
}

#[test]
fn removal_is_refused_where_a_volume_has_no_in_sync_copy_elsewhere() {
    let mut s = cluster(3, false);
    s.apply(&create("a", 2));
    s.apply(&create("b", 1));
    s.apply(&create("c", 2));
    let a = s.volumes["a"].clone();
    let p = a.primary;
    let other = *a.replicas.keys().find(|&&n| n != p).unwrap();
    s.apply(&Command::SetReplicaState {
        volume: "a".into(),
        node: other,
        state: ReplicaState::OutOfSync,
        epoch: a.epoch,
        seq: 0,
    });
    let mut lost: Vec<String> = ["a", "b", "c"]
        .iter()
        .filter(|n| {
            let v = &s.volumes[**n];
            v.replicas.contains_key(&p)
                && !v
                    .replicas
                    .iter()
                    .any(|(&m, st)| m != p && *st == ReplicaState::InSync)
        })
        .map(|n| n.to_string())
        .collect();
    lost.sort();
    assert!(lost.contains(&"a".to_string()), "{lost:?}");
    let before = s.clone();
    assert_eq!(
        refused(&mut s, Command::RemoveDeadNode { node: p }),
        Refusal::OnlyCopies {
            node: p,
            volumes: lost
        }
    );
    assert_eq!(s, before);
    assert_eq!(
        refused(&mut s, Command::RemoveDeadNode { node: 7 }),
        Refusal::NotMember { node: 7 }
    );
    let text = Refusal::OnlyCopies {
        node: 2,
        volumes: vec!["a".into(), "b".into()],
    }
    .to_string();
    assert!(text.contains("volume(s) a, b"), "{text}");
}

#[test]
fn a_dead_witness_leaves_the_volumes_as_they_are() {
    let mut s = cluster(2, true);
    s.apply(&create("v", 2));
    let before = s.volumes.clone();
    assert_eq!(s.apply(&Command::RemoveDeadNode { node: 9 }), Outcome::Done);
    assert_eq!(s.volumes, before);
    assert!(s.shortfalls().is_empty());
    assert!(!s.nodes.contains_key(&9) && s.was_removed(9));
}

#[test]
fn a_replaced_copy_is_dropped_once_its_replacement_is_in_sync() {
    let mut s = cluster(3, true);
    s.apply(&create("v", 2));
    let v = s.volumes["v"].clone();
    let p = v.primary;
    let down = *v.replicas.keys().find(|&&n| n != p).unwrap();
    let with = s.replacement_for(&v, |_| true).unwrap();
    let replace = Command::ReplaceCopy {
        volume: "v".into(),
        node: down,
        with,
    };
    // Never onto a node in maintenance, nor one that has a copy, nor for
    // the primary's copy.
    s.apply(&Command::SetMaintenance {
        node: with,
        on: true,
    });
    assert_eq!(s.replacement_for(&s.volumes["v"], |_| true), None);
    assert_eq!(
        refused(&mut s, replace.clone()),
        Refusal::InMaintenance {
            volume: "v".into(),
            node: with
        }
    );
    s.apply(&Command::SetMaintenance {
        node: with,
        on: false,
    });
    assert!(matches!(
        refused(
            &mut s,
            Command::ReplaceCopy {
                volume: "v".into(),
                node: down,
                with: p
            }
        ),
        Refusal::CopyExists { .. }
    ));
    assert!(matches!(
        refused(
            &mut s,
            Command::ReplaceCopy {
                volume: "v".into(),
                node: p,
                with
            }
        ),
        Refusal::PrimaryNotRemovable { .. }
    ));
    assert_eq!(s.apply(&replace), Outcome::Done);
    assert!(matches!(
        refused(&mut s, replace.clone()),
        Refusal::BeingReplaced { .. }
    ));
    assert_eq!(s.volumes["v"].replicas.len(), 3);
    assert_eq!(s.volumes["v"].copies_wanted(), 2);
    let f = &s.shortfalls()[0];
    assert_eq!((f.in_sync, f.wanted), (1, 2));
    assert_eq!(f.filling.get(&with), Some(&Some(down)));
    let report = |state, seq| Command::SetReplicaState {
        volume: "v".into(),
        node: with,
        state,
        epoch: 1,
        seq,
    };
    // Syncing: both copies stay.
    assert_eq!(s.apply(&report(ReplicaState::Syncing, 1)), Outcome::Done);
    assert!(s.volumes["v"].replicas.contains_key(&down));
    // In sync: the replaced copy goes.
    assert_eq!(s.apply(&report(ReplicaState::InSync, 2)), Outcome::Done);
    let v = &s.volumes["v"];
    assert_eq!(
        v.replicas.keys().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([p, with])
    );
    assert!(v.replacing.is_empty() && s.shortfalls().is_empty());
}

#[test]
fn the_replace_delay_defaults_to_an_hour_and_zero_turns_it_off() {
    let mut s = cluster(2, false);
    assert_eq!(s.replace_delay_secs(), Some(DEFAULT_REPLACE_DELAY_SECS));
    assert_eq!(DEFAULT_REPLACE_DELAY_SECS, 3600);
    s.apply(&Command::SetReplaceDelay { secs: 600 });
    assert_eq!(s.replace_delay_secs(), Some(600));
    s.apply(&Command::SetReplaceDelay { secs: 0 });
    assert_eq!(s.replace_delay_secs(), None);
}

#[test]
fn removal_is_written_to_the_log_under_its_own_names_and_old_states_read() {
    for (c, text) in [
        (
            Command::RemoveDeadNode { node: 2 },
            r#"{"command":"remove-dead-node","node":2}"#,
        ),
        (
            Command::ReplaceCopy {
                volume: "v".into(),
                node: 2,
                with: 3,
            },
            r#"{"command":"replace-copy","volume":"v","node":2,"with":3}"#,
        ),
        (
            Command::SetReplaceDelay { secs: 60 },
            r#"{"command":"set-replace-delay","secs":60}"#,
        ),
    ] {
        assert_eq!(serde_json::to_string(&c).unwrap(), text);
        assert_eq!(serde_json::from_str::<Command>(text).unwrap(), c);
    }
    // A state with nothing removed or replaced writes no field an older
    // member would not know.
    let mut s = cluster(2, true);
    s.apply(&create("v", 2));
    let text = serde_json::to_string(&s).unwrap();
    for field in ["removed", "replace", "wanted"] {
        assert!(!text.contains(field), "{text}");
    }
    assert_eq!(serde_json::from_str::<ClusterState>(&text).unwrap(), s);
}

fn snapshot(name: &str, id: u128) -> SnapshotRecord {
    SnapshotRecord {
        id: Uuid::from_u128(id),
        name: name.to_string(),
        created: 1,
        size_bytes: 1 << 20,
        group: None,
    }
}

#[test]
fn snapshots_are_recorded_all_together_at_the_primary_s_epoch_or_not_at_all() {
    let mut s = cluster(2, true);
    assert_eq!(s.apply(&create("a", 2)), Outcome::Done);
    assert_eq!(s.apply(&create("b", 2)), Outcome::Done);
    let epoch = s.volumes["a"].epoch;
    let taken = |volume: &str, name: &str, id, epoch| TakenSnapshot {
        volume: volume.to_string(),
        epoch,
        snapshot: snapshot(name, id),
    };
    let group = Command::RecordSnapshots {
        taken: vec![taken("a", "g", 1, epoch), taken("b", "g", 2, epoch)],
    };
    assert_eq!(s.apply(&group), Outcome::Done);
    assert_eq!(s.volumes["a"].snapshots, vec![snapshot("g", 1)]);
    assert_eq!(s.volumes["b"].snapshots, vec![snapshot("g", 2)]);
    // A name taken on one volume of a group: none of it is recorded.
    let again = Command::RecordSnapshots {
        taken: vec![taken("a", "h", 3, epoch), taken("b", "g", 4, epoch)],
    };
    assert!(matches!(
        refused(&mut s, again),
        Refusal::SnapshotExists { .. }
    ));
    assert_eq!(s.volumes["a"].snapshots.len(), 1);
    // Taken by a primary whose epoch has passed: the next one drops it.
    let primary = s.volumes["a"].primary;
    assert_eq!(
        s.apply(&Command::Promote {
            volume: "a".into(),
            node: primary,
            expected_epoch: epoch
        }),
        Outcome::Done
    );
    let late = Command::RecordSnapshots {
        taken: vec![taken("a", "late", 5, epoch)],
    };
    assert!(matches!(refused(&mut s, late), Refusal::StaleEpoch { .. }));
    // Forgotten once; a second time names what is missing.
    let forget = Command::ForgetSnapshot {
        volume: "a".into(),
        id: Uuid::from_u128(1),
    };
    assert_eq!(s.apply(&forget), Outcome::Done);
    assert!(s.volumes["a"].snapshots.is_empty());
    assert!(matches!(
        refused(&mut s, forget),
        Refusal::NoSnapshot { .. }
    ));
}

#[test]
fn a_volume_without_snapshots_reads_and_writes_as_before() {
    let mut s = cluster(2, true);
    assert_eq!(s.apply(&create("a", 2)), Outcome::Done);
    let text = serde_json::to_string(&s).unwrap();
    assert!(!text.contains("snapshots"), "{text}");
    assert_eq!(serde_json::from_str::<ClusterState>(&text).unwrap(), s);
    let c = Command::ForgetSnapshot {
        volume: "a".into(),
        id: Uuid::from_u128(7),
    };
    let text = serde_json::to_string(&c).unwrap();
    assert!(
        text.starts_with(r#"{"command":"forget-snapshot""#),
        "{text}"
    );
    assert_eq!(serde_json::from_str::<Command>(&text).unwrap(), c);
}

#[test]
fn a_clone_takes_the_source_s_copies_in_sync_where_they_hold_the_snapshot() {
    let mut s = cluster(3, false);
    assert_eq!(s.apply(&create("src", 3)), Outcome::Done);
    let v = s.volumes["src"].clone();
    let away = *v.replicas.keys().find(|&&n| n != v.primary).unwrap();
    assert_eq!(
        s.apply(&Command::SetReplicaState {
            volume: "src".into(),
            node: away,
            state: ReplicaState::OutOfSync,
            epoch: v.epoch,
            seq: 1,
        }),
        Outcome::Done
    );
    let snap = Command::RecordSnapshots {
        taken: vec![TakenSnapshot {
            volume: "src".into(),
            epoch: v.epoch,
            snapshot: snapshot("s", 9),
        }],
    };
    assert_eq!(s.apply(&snap), Outcome::Done);
    let clone = |name: &str, snapshot| Command::CloneVolume {
        id: Uuid::from_u128(77),
        name: name.to_string(),
        source: "src".into(),
        snapshot: Uuid::from_u128(snapshot),
    };
    assert!(matches!(
        refused(&mut s, clone("c", 8)),
        Refusal::NoSnapshot { .. }
    ));
    assert_eq!(s.apply(&clone("c", 9)), Outcome::Done);
    let c = &s.volumes["c"];
    assert_eq!(c.primary, v.primary);
    assert_eq!(c.size_bytes, 1 << 20);
    assert_eq!(
        c.origin,
        Some(CloneOrigin {
            volume: v.id,
            snapshot: Uuid::from_u128(9)
        })
    );
    for (n, st) in &c.replicas {
        let want = match *n == away {
            true => ReplicaState::OutOfSync,
            false => ReplicaState::InSync,
        };
        assert_eq!(*st, want, "node {n}");
    }
    assert!(matches!(
        refused(&mut s, clone("c", 9)),
        Refusal::VolumeExists { .. }
    ));
    // The source goes only after its clones.
    let delete = |name: &str| Command::DeleteVolume {
        name: name.to_string(),
    };
    assert!(matches!(
        refused(&mut s, delete("src")),
        Refusal::HasClones { .. }
    ));
    assert_eq!(s.apply(&delete("c")), Outcome::Done);
    assert_eq!(s.apply(&delete("src")), Outcome::Done);
}

#[test]
fn the_required_log_version_is_the_newest_entry_applied_refused_or_not() {
    let mut s = cluster(2, true);
    assert_eq!(s.required_log_version, 0);
    assert_eq!(s.apply_entry(&create("v", 2)), Outcome::Done);
    assert_eq!(s.required_log_version, 0);
    // Refused (no such volume), yet the entry is in the log all the same.
    let forget = Command::ForgetSnapshot {
        volume: "none".into(),
        id: Uuid::nil(),
    };
    assert!(matches!(s.apply_entry(&forget), Outcome::Refused(_)));
    assert_eq!(s.required_log_version, 3);
    assert_eq!(
        s.apply_entry(&Command::SetMaintenance { node: 1, on: true }),
        Outcome::Done
    );
    assert_eq!(s.required_log_version, 3, "never lowered");
    // Written only once raised, read back as written.
    let json = serde_json::to_string(&s).unwrap();
    assert!(json.contains("\"required_log_version\":3"), "{json}");
    let back: ClusterState = serde_json::from_str(&json).unwrap();
    assert_eq!(back.required_log_version, 3);
    assert!(!serde_json::to_string(&cluster(1, false))
        .unwrap()
        .contains("required_log_version"));
}
