//! The service layer in process, over a temporary data directory: local
//! volumes (create, list, describe, grow, delete, access rules, what is
//! refused), and a one-node cluster whose reconcile exports a cluster volume
//! over its copy, takes up the primary role, grows it, changes its access and
//! releases it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use iscsi::{Access, LoginPolicy};
use node::{AccessConfig, ChapSecret, ClusterConfig, Node, NodeConfig, NodeError, VolumeInfo};
use portal::Targets;
use scsi::{AccessState, LogicalUnit};
use store::Store;
use testkit::{free_port, Initiator};

const PREFIX: &str = "iqn.2026-11.io.tandem";
const MIB: u64 = 1 << 20;
const HOST_A: &str = "iqn.1993-08.org.debian:01:host-a";
const HOST_B: &str = "iqn.1993-08.org.debian:01:host-b";

/// A node over its own data directory.
struct Fixture {
    dir: tempfile::TempDir,
    store: Arc<Store>,
    targets: Arc<Targets>,
    node: Arc<Node>,
}

async fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    restart(dir).await
}

/// Starts a node over `dir`, as `tandem serve` does after a restart.
async fn restart(dir: tempfile::TempDir) -> Fixture {
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let targets = Arc::new(Targets::new());
    let node = Node::start(
        store.clone(),
        targets.clone(),
        NodeConfig {
            iqn_prefix: PREFIX.into(),
        },
    )
    .await
    .unwrap();
    Fixture {
        dir,
        store,
        targets,
        node: Arc::new(node),
    }
}

impl Fixture {
    /// Stops this node (dropping every handle on the store) and starts a
    /// new one over the same directory.
    async fn restarted(self) -> Fixture {
        let Fixture {
            dir,
            store,
            targets,
            node,
        } = self;
        drop((node, targets, store));
        restart(dir).await
    }
}

fn chap(user: &str, secret: &str) -> Option<ChapSecret> {
    Some(ChapSecret {
        user: user.into(),
        secret: secret.into(),
    })
}

fn iqn(name: &str) -> String {
    format!("{PREFIX}:{name}")
}

/// Polls `check` every 20 ms until it holds; panics with `what` after `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn local_volume_lifecycle() {
    let f = start().await;
    let info = f.node.create_volume("vol-b", MIB, 512, None).await.unwrap();
    assert_eq!(info.name, "vol-b");
    assert_eq!(info.size_bytes, MIB);
    assert_eq!(info.block_size, 512);
    assert_eq!(info.iqn, iqn("vol-b"));
    assert_eq!(info.lun, 0);
    assert_eq!(info.sessions, 0);
    assert!(info.allowed_initiators.is_empty());
    assert_eq!(
        (info.chap_user.as_deref(), info.mutual_chap_user.as_deref()),
        (None, None)
    );
    let id: uuid::Uuid = info.id.parse().expect("the id is a UUID");
    assert_eq!(f.store.get("vol-b").unwrap().id, id);
    // NAA 3 (locally assigned): 8 bytes, shown as 16 hex digits.
    assert_eq!(info.naa.len(), 16, "{}", info.naa);
    assert!(info.naa.starts_with('3'), "{}", info.naa);
    assert!(info.naa.chars().all(|c| c.is_ascii_hexdigit()));
    assert!(!info.serial.is_empty());

    let other = f
        .node
        .create_volume("vol-a", 4 * MIB, 4096, None)
        .await
        .unwrap();
    assert_eq!(other.block_size, 4096);
    assert_ne!(other.naa, info.naa, "two volumes share an identity");
    let names: Vec<String> = f
        .node
        .list_volumes()
        .await
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, ["vol-a", "vol-b"], "listed sorted by name");
    assert_eq!(f.node.volume("vol-b").await.unwrap(), info);

    let status = f.node.status().await;
    assert_eq!(status.volumes, 2);
    assert_eq!(status.provisioned_bytes, 5 * MIB);
    assert_eq!(
        status.installation_id,
        f.store.installation_id().to_string()
    );
    assert_eq!(status.data_dir, f.dir.path().display().to_string());

    // Exported under its IQN, open to every initiator.
    assert_eq!(f.targets.visible_to(HOST_A), [iqn("vol-a"), iqn("vol-b")]);
    let lu = f.node.logical_unit("vol-b").await.unwrap();
    assert_eq!(lu.volume().num_blocks(), MIB / 512);

    let grown = f.node.resize_volume("vol-b", 3 * MIB).await.unwrap();
    assert_eq!(grown.size_bytes, 3 * MIB);
    assert_eq!(lu.volume().num_blocks(), 3 * MIB / 512);
    assert_eq!(f.node.volume("vol-b").await.unwrap().size_bytes, 3 * MIB);
    // Growing to the current size changes nothing and is no error.
    assert_eq!(f.node.resize_volume("vol-b", 3 * MIB).await.unwrap(), grown);

    let dir = f.store.volume_dir("vol-b").unwrap();
    assert!(dir.exists());
    f.node.delete_volume("vol-b", false).await.unwrap();
    assert!(matches!(
        f.node.volume("vol-b").await,
        Err(NodeError::NotFound(n)) if n == "vol-b"
    ));
    assert!(f.store.get("vol-b").is_none());
    assert!(!dir.exists(), "the deleted volume's files are left behind");
    assert_eq!(f.targets.visible_to(HOST_A), [iqn("vol-a")]);
    assert_eq!(
        f.targets.access(HOST_A, Some(&iqn("vol-b"))),
        Access::NotFound
    );
    assert_eq!(f.node.status().await.volumes, 1);
}

#[tokio::test]
async fn a_restart_exports_every_volume_with_the_same_identity_and_data() {
    let f = start().await;
    let created = f.node.create_volume("keep", MIB, 512, None).await.unwrap();
    let lu = f.node.logical_unit("keep").await.unwrap();
    let data: Vec<u8> = (0..8 * 512).map(|i| (i % 251) as u8).collect();
    lu.volume()
        .write(16, Bytes::from(data.clone()), false)
        .await
        .unwrap();
    f.node.flush_all().await.unwrap();
    drop(lu);

    let f = f.restarted().await;
    let again = f.node.volume("keep").await.unwrap();
    assert_eq!(
        (again.id, again.naa, again.serial),
        (created.id, created.naa, created.serial)
    );
    let lu = f.node.logical_unit("keep").await.unwrap();
    assert_eq!(lu.volume().read(16, 8).await.unwrap(), data);
    assert_eq!(f.targets.visible_to(HOST_A), [iqn("keep")]);
}

#[tokio::test]
async fn names_and_sizes_are_refused() {
    let f = start().await;
    let long = "a".repeat(64);
    for name in [
        "",
        "Upper",
        "-dash-first",
        ".dot-first",
        "under_score",
        "sp ace",
        "sl/ash",
        long.as_str(),
    ] {
        match f.node.create_volume(name, MIB, 512, None).await {
            Err(NodeError::Store(e)) if e.is_invalid_input() => {}
            other => panic!("name {name:?}: {other:?}"),
        }
    }
    for (size, bs) in [
        (0, 512),
        (1000, 512),
        (MIB + 512, 4096),
        (MIB, 1024),
        (MIB, 0),
    ] {
        match f.node.create_volume("sized", size, bs, None).await {
            Err(NodeError::Store(e)) if e.is_invalid_input() => {}
            other => panic!("size {size} block size {bs}: {other:?}"),
        }
    }
    assert!(
        f.node.list_volumes().await.is_empty(),
        "a refused volume was created"
    );
    assert!(f.store.list().is_empty());

    // The longest name allowed, and a name that is already taken.
    let longest = "a".repeat(63);
    f.node
        .create_volume(&longest, MIB, 512, None)
        .await
        .unwrap();
    f.node.create_volume("dup", MIB, 512, None).await.unwrap();
    match f.node.create_volume("dup", 2 * MIB, 512, None).await {
        Err(NodeError::Store(e)) if e.is_conflict() => {}
        other => panic!("second dup: {other:?}"),
    }
    assert_eq!(f.node.volume("dup").await.unwrap().size_bytes, MIB);

    // Copies on other nodes need a cluster.
    match f.node.create_volume("mirrored", MIB, 512, Some(2)).await {
        Err(NodeError::Invalid(m)) => assert!(m.contains("cluster"), "{m}"),
        other => panic!("replicas without a cluster: {other:?}"),
    }
    assert!(f.store.get("mirrored").is_none());
}

#[tokio::test]
async fn resize_grows_only_by_whole_blocks() {
    let f = start().await;
    f.node
        .create_volume("v", 2 * MIB, 4096, None)
        .await
        .unwrap();
    for size in [MIB, 0, 2 * MIB + 512] {
        match f.node.resize_volume("v", size).await {
            Err(NodeError::Invalid(m)) => assert!(m.contains("volume v"), "{m}"),
            other => panic!("resize to {size}: {other:?}"),
        }
    }
    // Beyond what a file can hold: refused like a create, not an I/O error.
    for size in [1 << 63, u64::MAX - 4095] {
        match f.node.resize_volume("v", size).await {
            Err(NodeError::Store(e)) => assert!(e.to_string().contains("larger"), "{e}"),
            other => panic!("resize to {size}: {other:?}"),
        }
    }
    assert_eq!(f.node.volume("v").await.unwrap().size_bytes, 2 * MIB);
    let lu = f.node.logical_unit("v").await.unwrap();
    assert_eq!(lu.volume().num_blocks(), 2 * MIB / 4096);
}

#[tokio::test]
async fn unknown_volumes_are_not_found() {
    let f = start().await;
    f.node.create_volume("here", MIB, 512, None).await.unwrap();
    let not_found = |r: Result<(), NodeError>, what: &str| match r {
        Err(NodeError::NotFound(n)) => assert_eq!(n, "gone", "{what}"),
        other => panic!("{what}: {other:?}"),
    };
    not_found(f.node.volume("gone").await.map(drop), "volume");
    not_found(
        f.node.resize_volume("gone", 2 * MIB).await.map(drop),
        "resize",
    );
    not_found(f.node.delete_volume("gone", true).await, "delete");
    not_found(
        f.node
            .set_access("gone", AccessConfig::default())
            .await
            .map(drop),
        "set_access",
    );
    not_found(f.node.logical_unit("gone").await.map(drop), "logical_unit");
    assert_eq!(f.node.list_volumes().await.len(), 1);
}

#[tokio::test]
async fn access_rules_apply_to_new_logins_and_hide_the_secrets() {
    let f = start().await;
    f.node
        .create_volume("guarded", MIB, 512, None)
        .await
        .unwrap();
    let target = iqn("guarded");
    let rules = AccessConfig {
        allowed_initiators: vec![HOST_A.into()],
        chap: chap("esx", "twelve-chars-secret"),
        mutual_chap: chap("tandem", "another-long-secret"),
    };
    let info = f.node.set_access("guarded", rules.clone()).await.unwrap();
    assert_eq!(info.allowed_initiators, [HOST_A]);
    assert_eq!(info.chap_user.as_deref(), Some("esx"));
    assert_eq!(info.mutual_chap_user.as_deref(), Some("tandem"));
    let json = serde_json::to_string(&info).unwrap();
    assert!(!json.contains("twelve-chars-secret"), "{json}");
    assert!(!json.contains("another-long-secret"), "{json}");
    let listed = serde_json::to_string(&f.node.list_volumes().await).unwrap();
    assert!(!listed.contains("twelve-chars-secret"), "{listed}");

    // The target enforces them: HOST_A logs in with CHAP, HOST_B not at all.
    match f.targets.access(HOST_A, Some(&target)) {
        Access::Allowed(p) => {
            let c = p.chap.expect("CHAP required");
            assert_eq!(
                (c.user.as_str(), c.secret.as_slice()),
                ("esx", &b"twelve-chars-secret"[..])
            );
            assert_eq!(p.mutual.expect("mutual CHAP offered").user, "tandem");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(f.targets.access(HOST_B, Some(&target)), Access::Denied);
    assert!(f.targets.visible_to(HOST_B).is_empty());

    // Wrong rules are refused and leave the rules in force as they were.
    let wrong = [
        AccessConfig {
            allowed_initiators: vec!["host-a".into()],
            ..Default::default()
        },
        AccessConfig {
            chap: chap("esx", "short"),
            ..Default::default()
        },
        AccessConfig {
            mutual_chap: chap("tandem", "another-long-secret"),
            ..Default::default()
        },
        AccessConfig {
            chap: chap("esx", "the-same-secret"),
            mutual_chap: chap("tandem", "the-same-secret"),
            ..Default::default()
        },
    ];
    for w in wrong {
        match f.node.set_access("guarded", w.clone()).await {
            Err(NodeError::Invalid(_)) => {}
            other => panic!("{w:?}: {other:?}"),
        }
    }
    assert_eq!(f.node.volume("guarded").await.unwrap(), info);
    assert_eq!(f.targets.access(HOST_B, Some(&target)), Access::Denied);

    // The rules survive a restart.
    let f = f.restarted().await;
    assert_eq!(
        f.node.volume("guarded").await.unwrap().chap_user.as_deref(),
        Some("esx")
    );
    assert_eq!(f.targets.access(HOST_B, Some(&target)), Access::Denied);

    // No rules: every initiator, no authentication.
    let open = f
        .node
        .set_access("guarded", AccessConfig::default())
        .await
        .unwrap();
    assert_eq!((open.chap_user, open.allowed_initiators.len()), (None, 0));
    match f.targets.access(HOST_B, Some(&target)) {
        Access::Allowed(p) => assert!(p.chap.is_none() && p.mutual.is_none()),
        other => panic!("{other:?}"),
    }
}

/// Serves iSCSI for `targets` on a loopback port.
async fn portal(targets: Arc<Targets>) -> SocketAddr {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(portal::serve(
        listener,
        targets,
        portal::TargetConfig::default(),
        std::future::pending(),
    ));
    addr
}

async fn sessions(node: &Node, name: &str) -> usize {
    node.volume(name).await.map(|v| v.sessions).unwrap_or(0)
}

#[tokio::test]
async fn delete_is_refused_while_initiators_are_logged_in() {
    let f = start().await;
    f.node.create_volume("busy", MIB, 512, None).await.unwrap();
    let addr = portal(f.targets.clone()).await;
    let _session = Initiator::normal(addr, &iqn("busy"), &[]).await;
    eventually(Duration::from_secs(5), "the session is counted", || {
        let node = f.node.clone();
        async move { sessions(&node, "busy").await == 1 }
    })
    .await;
    match f.node.delete_volume("busy", false).await {
        Err(NodeError::InUse { name, sessions }) => {
            assert_eq!((name.as_str(), sessions.len()), ("busy", 1));
            assert_eq!(sessions[0].initiator, "iqn.2026-11.test:init");
            assert!(sessions[0].address.starts_with("127.0.0.1:"));
            assert_eq!(
                sessions[0].node, None,
                "a node outside a cluster has no name"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        f.store.get("busy").is_some(),
        "refused, yet the data is gone"
    );
    f.node.delete_volume("busy", true).await.unwrap();
    assert!(f.store.get("busy").is_none());
    assert_eq!(f.targets.session_count(&iqn("busy")), 0);
}

#[tokio::test]
async fn flush_all_covers_every_volume() {
    let f = start().await;
    for name in ["one", "two"] {
        f.node.create_volume(name, MIB, 512, None).await.unwrap();
        let lu = f.node.logical_unit(name).await.unwrap();
        lu.volume()
            .write(0, Bytes::from(vec![name.len() as u8 + 1; 512]), false)
            .await
            .unwrap();
    }
    f.node.flush_all().await.unwrap();
    let f = f.restarted().await;
    for name in ["one", "two"] {
        let lu = f.node.logical_unit(name).await.unwrap();
        assert_eq!(
            lu.volume().read(0, 1).await.unwrap(),
            vec![name.len() as u8 + 1; 512]
        );
    }
}

// ---- one-node cluster ----

fn cluster_config() -> ClusterConfig {
    ClusterConfig {
        name: "node-1".into(),
        cluster_listen: ([127, 0, 0, 1], free_port()).into(),
        repl_listen: ([127, 0, 0, 1], free_port()).into(),
        advertise: "127.0.0.1".into(),
        iscsi_port: free_port(),
    }
}

/// Whether `lu` reports one port group, this node's, active/optimized.
fn leads(lu: &LogicalUnit, me: u64) -> bool {
    matches!(
        lu.port_groups().as_slice(),
        [g] if g.id == me as u16 && g.state == AccessState::ActiveOptimized && g.preferred
    )
}

/// Writes `data` at `lba`, retrying while the node has not taken up the
/// primary role (or its lease) yet.
async fn write_when_primary(lu: &LogicalUnit, lba: u64, data: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match lu
            .volume()
            .write(lba, Bytes::copy_from_slice(data), true)
            .await
        {
            Ok(()) => return,
            Err(e) => assert!(Instant::now() < deadline, "write never accepted: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn file_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn single_node_cluster_volume_lifecycle() {
    let f = start().await;
    // A volume made before the cluster stays a plain local volume.
    f.node.create_volume("local", MIB, 512, None).await.unwrap();
    assert!(f.node.clustered().is_none());

    let token = f.node.cluster_init(&cluster_config()).await.unwrap();
    assert!(token.starts_with("tandem-join:"), "{token}");
    let c = f.node.clustered().expect("a member after init");
    // The local volume's name is taken: no cluster volume may claim it.
    match f.node.create_volume("local", 2 * MIB, 512, Some(1)).await {
        Err(NodeError::Store(e)) => assert!(e.is_conflict(), "{e}"),
        other => panic!("a cluster volume took a local volume's name: {other:?}"),
    }
    assert!(!c.cluster().state().volumes.contains_key("local"));
    assert_eq!(f.node.volume("local").await.unwrap().size_bytes, MIB);
    let me = c.cluster().id();
    let status = f.node.cluster_status().await.unwrap();
    assert_eq!(status.me, me);
    assert_eq!(status.state.nodes.len(), 1);
    assert_eq!(status.state.nodes[&me].name, "node-1");
    assert!(status.state.cluster_id.is_some());

    let info = f
        .node
        .create_volume("shared", 2 * MIB, 512, Some(1))
        .await
        .unwrap();
    assert_eq!(
        (info.name.as_str(), info.size_bytes, info.block_size),
        ("shared", 2 * MIB, 512)
    );
    assert_eq!(info.iqn, iqn("shared"));
    let record = c.cluster().state().volumes["shared"].clone();
    assert_eq!(info.id, record.id.to_string());
    assert_eq!(record.replicas.keys().copied().collect::<Vec<_>>(), [me]);
    assert_eq!(record.primary, me);

    // A cluster volume's snapshots are the cluster's: recorded in its
    // state; a clone of one is a cluster volume too. A group cannot mix
    // cluster volumes and the member's own.
    let taken = f
        .node
        .create_snapshots(&["shared".to_string()], Some("s"), None)
        .await
        .unwrap();
    assert_eq!(
        (taken[0].volume.as_str(), taken[0].name.as_str()),
        ("shared", "s")
    );
    assert_eq!(c.cluster().state().volumes["shared"].snapshots.len(), 1);
    let listed = f.node.list_snapshots(Some("shared")).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, taken[0].id);
    f.node
        .clone_volume("shared", Some("s"), "copy")
        .await
        .unwrap();
    assert_eq!(
        c.cluster().state().volumes["copy"].origin.map(|o| o.volume),
        Some(record.id)
    );
    // Its source cannot go while it lives; it can.
    assert!(f.node.delete_volume("shared", false).await.is_err());
    f.node.delete_volume("copy", false).await.unwrap();
    assert!(!c.cluster().state().volumes.contains_key("copy"));
    match f
        .node
        .create_snapshots(
            &["shared".to_string(), "local".to_string()],
            Some("g"),
            None,
        )
        .await
    {
        Err(NodeError::Invalid(why)) => assert!(why.contains("cluster volumes"), "{why}"),
        other => panic!("a group of a cluster volume and a local one: {other:?}"),
    }
    let local = f
        .node
        .create_snapshots(&["local".to_string()], Some("s"), None)
        .await
        .unwrap();
    assert_eq!(local[0].name, "s");

    // Exported over a copy in the store, under the cluster volume's id.
    let meta = f.store.get("shared").expect("a local copy");
    assert_eq!(meta.id, record.id);
    let copy_dir = f.store.volume_dir("shared").unwrap();
    assert!(!file_names(&copy_dir).is_empty());
    assert!(f.targets.visible_to(HOST_A).contains(&iqn("shared")));
    let lu = f.node.logical_unit("shared").await.unwrap();
    eventually(
        Duration::from_secs(10),
        "the node leads the volume (active/optimized)",
        || {
            let lu = lu.clone();
            async move { leads(&lu, me) }
        },
    )
    .await;
    let data = vec![0x5a; 4 * 512];
    write_when_primary(&lu, 8, &data).await;
    assert_eq!(lu.volume().read(8, 4).await.unwrap(), data);
    eventually(
        Duration::from_secs(5),
        "the primary reports its acknowledgements",
        || {
            let node = f.node.clone();
            async move { node.acknowledged().await.contains_key("shared") }
        },
    )
    .await;
    assert!(f.node.peer_status().await.contains_key("shared"));
    let names: Vec<String> = f
        .node
        .list_volumes()
        .await
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, ["local", "shared"]);

    // Grown on the record, the logical unit and the copy.
    let grown = f.node.resize_volume("shared", 4 * MIB).await.unwrap();
    assert_eq!(grown.size_bytes, 4 * MIB);
    assert_eq!(c.cluster().state().volumes["shared"].size_bytes, 4 * MIB);
    assert_eq!(lu.volume().num_blocks(), 4 * MIB / 512);
    assert_eq!(f.store.get("shared").unwrap().size_bytes, 4 * MIB);
    assert_eq!(lu.volume().read(8, 4).await.unwrap(), data);
    match f.node.resize_volume("shared", MIB).await {
        Err(NodeError::Invalid(_)) => {}
        other => panic!("shrink: {other:?}"),
    }

    // A logged-in initiator keeps the volume from being deleted.
    let addr = portal(f.targets.clone()).await;
    let session = Initiator::normal(addr, &iqn("shared"), &[]).await;
    eventually(Duration::from_secs(5), "the session is counted", || {
        let node = f.node.clone();
        async move { sessions(&node, "shared").await == 1 }
    })
    .await;
    match f.node.delete_volume("shared", false).await {
        Err(NodeError::InUse { name, sessions }) => {
            assert_eq!((name.as_str(), sessions.len()), ("shared", 1));
            // Counted through the cluster: the session names its node.
            assert_eq!(
                sessions[0].node.as_deref(),
                Some(c.cluster().me().name.as_str())
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(c.cluster().state().volumes.contains_key("shared"));
    drop(session);
    eventually(Duration::from_secs(5), "the session is gone", || {
        let node = f.node.clone();
        async move { sessions(&node, "shared").await == 0 }
    })
    .await;

    // Access rules reach the target; the status leaves the secrets out.
    let rules = AccessConfig {
        allowed_initiators: vec![HOST_A.into()],
        chap: chap("esx", "cluster-wide-secret"),
        mutual_chap: None,
    };
    let guarded: VolumeInfo = f.node.set_access("shared", rules).await.unwrap();
    assert_eq!(guarded.allowed_initiators, [HOST_A]);
    assert_eq!(guarded.chap_user.as_deref(), Some("esx"));
    assert!(!serde_json::to_string(&guarded)
        .unwrap()
        .contains("cluster-wide-secret"));
    assert_eq!(
        f.targets.access(HOST_B, Some(&iqn("shared"))),
        Access::Denied
    );
    match f.targets.access(HOST_A, Some(&iqn("shared"))) {
        Access::Allowed(p) => assert_eq!(p.chap.expect("CHAP").user, "esx"),
        other => panic!("{other:?}"),
    }
    let status = serde_json::to_string(&f.node.cluster_status().await.unwrap()).unwrap();
    assert!(!status.contains("cluster-wide-secret"), "{status}");
    match f
        .node
        .set_access(
            "shared",
            AccessConfig {
                chap: chap("esx", "short"),
                ..Default::default()
            },
        )
        .await
    {
        Err(NodeError::Invalid(_)) => {}
        other => panic!("{other:?}"),
    }

    // Deleted: unexported, the copy and its files gone, the local volume kept.
    f.node.delete_volume("shared", false).await.unwrap();
    assert!(!c.cluster().state().volumes.contains_key("shared"));
    assert!(matches!(
        f.node.logical_unit("shared").await,
        Err(NodeError::NotFound(_))
    ));
    assert_eq!(
        f.targets.access(HOST_A, Some(&iqn("shared"))),
        Access::NotFound
    );
    assert!(f.store.get("shared").is_none());
    assert!(
        !copy_dir.exists(),
        "left behind: {:?}",
        file_names(&copy_dir)
    );
    assert!(!f.node.peer_status().await.contains_key("shared"));
    let names: Vec<String> = f
        .node
        .list_volumes()
        .await
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, ["local"]);
    assert!(f.store.get("local").is_some());
}

#[tokio::test]
async fn cluster_refusals() {
    let f = start().await;
    // Not a member yet: the cluster operations say so.
    let not_member = |r: Result<(), NodeError>, what: &str| match r {
        Err(NodeError::Invalid(m)) => assert!(m.contains("not a cluster member"), "{what}: {m}"),
        other => panic!("{what}: {other:?}"),
    };
    not_member(f.node.cluster_status().await.map(drop), "status");
    not_member(f.node.cluster_leave().await, "leave");
    not_member(f.node.add_replica("v", None).await.map(drop), "add_replica");
    not_member(
        f.node.remove_replica("v", "node-1", false).await,
        "remove_replica",
    );
    not_member(
        f.node.move_primary("v", "node-1").await.map(drop),
        "move_primary",
    );

    let cfg = cluster_config();
    f.node.cluster_init(&cfg).await.unwrap();
    match f.node.cluster_init(&cluster_config()).await {
        Err(NodeError::Invalid(m)) => assert!(m.contains("already a cluster member"), "{m}"),
        other => panic!("second init: {other:?}"),
    }
    let me = f.node.clustered().unwrap().cluster().id();

    // Checked before anything is proposed.
    match f.node.create_volume("Bad_Name", MIB, 512, Some(1)).await {
        Err(NodeError::Store(e)) if e.is_invalid_input() => {}
        other => panic!("bad name: {other:?}"),
    }
    match f.node.create_volume("odd", 1000, 512, Some(1)).await {
        Err(NodeError::Store(e)) if e.is_invalid_input() => {}
        other => panic!("bad size: {other:?}"),
    }
    // Two copies need two data nodes.
    match f.node.create_volume("two", MIB, 512, Some(2)).await {
        Err(NodeError::Refused(_)) => {}
        other => panic!("two copies on one node: {other:?}"),
    }
    let state = f.node.clustered().unwrap().cluster().state();
    assert!(state.volumes.is_empty(), "{:?}", state.volumes.keys());
    assert!(f.store.list().is_empty());

    // Without replicas given, one data node means one copy.
    f.node.create_volume("one", MIB, 512, None).await.unwrap();
    let state = f.node.clustered().unwrap().cluster().state();
    assert_eq!(state.volumes["one"].replicas.len(), 1);
    match f.node.create_volume("one", MIB, 512, Some(1)).await {
        Err(NodeError::Refused(_)) => {}
        other => panic!("duplicate: {other:?}"),
    }
    match f.node.add_replica("one", None).await {
        Err(NodeError::Refused(_)) => {}
        other => panic!("no node left for a copy: {other:?}"),
    }
    match f.node.remove_replica("one", &me.to_string(), false).await {
        Err(NodeError::Refused(_)) => {}
        other => panic!("removing the primary's copy: {other:?}"),
    }
    match f.node.remove_replica("one", "nobody", false).await {
        Err(NodeError::Invalid(m)) => assert!(m.contains("nobody"), "{m}"),
        other => panic!("unknown member: {other:?}"),
    }
    match f.node.add_replica("missing", None).await {
        Err(NodeError::NotFound(n)) => assert_eq!(n, "missing"),
        other => panic!("unknown volume: {other:?}"),
    }
    match f.node.remove_replica("missing", "node-1", false).await {
        Err(NodeError::NotFound(n)) => assert_eq!(n, "missing"),
        other => panic!("unknown volume: {other:?}"),
    }
    // A planned switchover needs another in-sync copy to go to.
    match f.node.move_primary("one", &me.to_string()).await {
        Err(NodeError::Refused(m)) => {
            assert!(m.contains("is the primary already"), "{m}")
        }
        other => panic!("moving to the primary itself: {other:?}"),
    }
    match f.node.move_primary("one", "nobody").await {
        Err(NodeError::Invalid(m)) => assert!(m.contains("nobody"), "{m}"),
        other => panic!("moving to an unknown member: {other:?}"),
    }
    match f.node.move_primary("missing", &me.to_string()).await {
        Err(NodeError::NotFound(n)) => assert_eq!(n, "missing"),
        other => panic!("moving an unknown volume: {other:?}"),
    }
    let state = f.node.clustered().unwrap().cluster().state();
    assert_eq!(
        state.volumes["one"]
            .replicas
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        [me]
    );
}
