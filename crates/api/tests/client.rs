//! The client the CLI uses, against the real router served on a loopback
//! port: one round trip per method, and how refusals and an unreachable
//! server come back.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use api::{ApiClient, ClientError, CreateVolume};
use node::{AccessConfig, ChapSecret};
use testkit::free_port;

const MIB: u64 = 1 << 20;

/// Serves the API of a fresh node on a loopback port; the address and token.
async fn serve() -> (common::Api, String, String) {
    let api = common::api().await;
    let router = api.router.clone();
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let token = api.token.clone();
    (api, addr.to_string(), token)
}

/// The status and message of a refusal; panics on anything else.
fn refused<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Refused { status, message }) => (status, message),
        other => panic!("expected a refusal: {other:?}"),
    }
}

#[tokio::test]
async fn every_method_round_trips() {
    let (node, addr, token) = serve().await;
    // The token file ends with a newline when written by hand: trimmed.
    let client = ApiClient::new(&addr, &format!("{token}\n"));

    let status = client.status().await.unwrap();
    assert_eq!(status.node.volumes, 0);
    assert_eq!(
        status.node.data_dir,
        node.store.data_dir().display().to_string()
    );
    // The data filesystem's space, and no cluster: this node is not a member.
    let free = status.node.filesystem_free_bytes.expect("free space known");
    let total = status.node.filesystem_total_bytes.expect("size known");
    assert!(0 < free && free <= total, "{free} of {total}");
    assert!(status.cluster.is_none());
    assert!(client.list_volumes().await.unwrap().is_empty());

    let created = client
        .create_volume(&CreateVolume {
            name: "vm1".into(),
            size_bytes: 2 * MIB,
            block_size: 4096,
            replicas: None,
        })
        .await
        .unwrap();
    assert_eq!(
        (
            created.name.as_str(),
            created.size_bytes,
            created.block_size
        ),
        ("vm1", 2 * MIB, 4096)
    );
    assert_eq!(client.volume("vm1").await.unwrap(), created);
    assert_eq!(
        client.list_volumes().await.unwrap(),
        std::slice::from_ref(&created)
    );

    let grown = client.resize_volume("vm1", 4 * MIB).await.unwrap();
    assert_eq!(grown.size_bytes, 4 * MIB);

    let access = AccessConfig {
        allowed_initiators: vec!["iqn.1993-08.org.debian:01:host-a".into()],
        chap: Some(ChapSecret {
            user: "esx".into(),
            secret: "twelve-chars-secret".into(),
        }),
        mutual_chap: None,
    };
    let guarded = client.set_access("vm1", &access).await.unwrap();
    assert_eq!(guarded.chap_user.as_deref(), Some("esx"));
    assert_eq!(guarded.allowed_initiators, access.allowed_initiators);

    client.delete_volume("vm1", false).await.unwrap();
    let (code, message) = refused(client.volume("vm1").await);
    assert_eq!((code, message.as_str()), (404, "volume vm1 does not exist"));
    let (code, _) = refused(client.delete_volume("vm1", true).await);
    assert_eq!(code, 404);

    // Refusals keep the server's status and message.
    let (code, message) = refused(client.resize_volume("nope", MIB).await);
    assert_eq!(
        (code, message.as_str()),
        (404, "volume nope does not exist")
    );
    let (code, message) = refused(
        client
            .create_volume(&CreateVolume {
                name: "Bad".into(),
                size_bytes: MIB,
                block_size: 512,
                replicas: None,
            })
            .await,
    );
    assert_eq!(code, 400);
    assert!(message.contains("Bad"), "{message}");

    // Cluster methods before the node is a member.
    for (what, r) in [
        ("cluster", client.cluster().await.map(drop)),
        ("cluster_leave", client.cluster_leave().await),
        (
            "add_replica",
            client.add_replica("vm1", None).await.map(drop),
        ),
        (
            "remove_replica",
            client.remove_replica("vm1", "node-1", false).await,
        ),
    ] {
        let (code, message) = refused(r);
        assert_eq!(code, 400, "{what}");
        assert_eq!(message, "this node is not a cluster member", "{what}");
    }
    let join = api::JoinCluster {
        seed: "127.0.0.1:1".into(),
        token: "not-a-token".into(),
    };
    let (_, message) = refused(client.cluster_join(&join).await);
    assert!(message.contains("join token"), "{message}");

    // One node becomes a cluster; a volume with one copy on it.
    let join_token = client.cluster_init().await.unwrap().token;
    assert!(join_token.starts_with("tandem-join:"), "{join_token}");
    let view = client.cluster().await.unwrap();
    let me = view.status.me;
    assert_eq!(view.status.state.nodes[&me].name, "node-1");
    let shared = client
        .create_volume(&CreateVolume {
            name: "shared".into(),
            size_bytes: MIB,
            block_size: 512,
            replicas: Some(1),
        })
        .await
        .unwrap();
    assert_eq!(shared.size_bytes, MIB);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !client
        .cluster()
        .await
        .unwrap()
        .replication
        .contains_key("shared")
    {
        assert!(Instant::now() < deadline, "the node never led the volume");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, _) = refused(client.add_replica("shared", None).await);
    assert_eq!(code, 409, "a copy with no node to hold it");
    let (code, _) = refused(
        client
            .remove_replica("shared", &me.to_string(), false)
            .await,
    );
    assert_eq!(code, 409, "the primary's copy removed");
    client.delete_volume("shared", false).await.unwrap();
    assert!(client
        .cluster()
        .await
        .unwrap()
        .status
        .state
        .volumes
        .is_empty());
}

#[tokio::test]
async fn a_wrong_token_and_a_missing_server_are_told_apart() {
    let (_node, addr, token) = serve().await;
    let wrong = ApiClient::new(&addr, &format!("{token}-not"));
    let (code, message) = refused(wrong.status().await);
    assert_eq!(code, 401);
    assert!(message.contains("API token"), "{message}");
    let (code, _) = refused(wrong.list_volumes().await);
    assert_eq!(code, 401);

    let nobody = format!("127.0.0.1:{}", free_port());
    match ApiClient::new(&nobody, &token).status().await {
        Err(ClientError::Unreachable { addr, .. }) => assert_eq!(addr, nobody),
        other => panic!("expected unreachable: {other:?}"),
    }
}
