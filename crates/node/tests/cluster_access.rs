//! Access rules of a cluster volume, in process on a one-node cluster: a
//! rule with CHAP is recorded with its secrets sealed and still enforced
//! whole, and a rule recorded with clear secrets (as nodes did before
//! sealing) is read, then sealed by the volume's primary.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::Command;
use node::{AccessConfig, ChapSecret, ClusterConfig, Node, NodeConfig};
use portal::Targets;
use store::Store;

const SECRET: &str = "initiator-secret-1";

/// A loopback address nobody listens on right now.
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(20), "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chap_secrets_are_sealed_in_the_cluster_state_and_old_clear_ones_get_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let node = Arc::new(
        Node::start(
            store,
            Arc::new(Targets::new()),
            NodeConfig {
                iqn_prefix: "iqn.2026-11.io.tandem".into(),
            },
        )
        .await
        .unwrap(),
    );
    let cfg = ClusterConfig {
        name: "a".into(),
        cluster_listen: free_addr(),
        repl_listen: free_addr(),
        advertise: "127.0.0.1".into(),
        iscsi_port: 3260,
    };
    node.cluster_init(&cfg).await.unwrap();
    let c = node.clustered().unwrap();
    let id = uuid::Uuid::new_v4();
    c.cluster()
        .propose(Command::CreateVolume {
            id,
            name: "vm".into(),
            size_bytes: 1 << 20,
            block_size: 512,
            replicas: 1,
        })
        .await
        .unwrap();
    let record = || c.cluster().state().volumes["vm"].access.clone();

    // Set through the service layer: sealed in the state, enforced whole.
    let rule = AccessConfig {
        allowed_initiators: vec![],
        chap: Some(ChapSecret {
            user: "esx".into(),
            secret: SECRET.into(),
        }),
        mutual_chap: None,
    };
    let info = node.set_access("vm", rule.clone()).await.unwrap();
    assert_eq!(info.chap_user.as_deref(), Some("esx"));
    let sealed = record().unwrap();
    assert!(!sealed.contains(SECRET), "{sealed}");
    assert!(sealed.contains("sealed1:"), "{sealed}");

    // A rule recorded in clear (the API's JSON, as before sealing) is read
    // and, by the primary, replaced with its sealed form.
    let clear = serde_json::to_string(&AccessConfig {
        chap: Some(ChapSecret {
            user: "old".into(),
            secret: SECRET.into(),
        }),
        ..rule
    })
    .unwrap();
    c.cluster()
        .propose(Command::SetAccess {
            volume: "vm".into(),
            access: Some(clear.clone()),
        })
        .await
        .unwrap();
    wait_for("the clear rule sealed by the primary", || {
        record().is_some_and(|r| r != clear && !r.contains(SECRET))
    })
    .await;
    let resealed = record().unwrap();
    assert!(resealed.contains("\"old\""), "{resealed}");
    let key = c.cluster().data_key().unwrap();
    let secret = resealed
        .split('"')
        .find(|s| s.starts_with("sealed1:"))
        .unwrap();
    // Bound to the volume, the field and the user (as `access.rs` seals).
    let mut context = id.as_bytes().to_vec();
    context.extend_from_slice(b"chap\0old");
    assert_eq!(key.open(&context, secret).unwrap(), SECRET.as_bytes());
    // The export follows the rule (the data node opens its secrets).
    let t = Instant::now();
    while node.volume("vm").await.unwrap().chap_user.as_deref() != Some("old") {
        assert!(t.elapsed() < Duration::from_secs(20), "export not updated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.cluster().shutdown().await;
}
