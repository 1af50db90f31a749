//! Members prove the cluster secret to each other on every call: a request
//! without it is refused with 401, and an answer from a server without it is
//! not believed.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use cluster::net::{request_tag, Caller, Gate, Key};
use cluster::{Cluster, ClusterError, Role};
use common::{free_addr, info, init};

fn now() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string()
}

/// A raw signed POST of `body` to `path`, with the given time and nonce.
async fn raw(addr: &str, key: &Key, path: &str, time: &str, nonce: &str) -> reqwest::Response {
    let body = b"null".to_vec();
    reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .header("x-tandem-time", time)
        .header("x-tandem-nonce", nonce)
        .header("x-tandem-auth", request_tag(key, path, time, nonce, &body))
        .body(body)
        .send()
        .await
        .unwrap()
}

fn secret_of(token: &str) -> Key {
    let hex = &token[token.rfind(':').unwrap() + 1..];
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    Key::from_bytes(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_the_secret_are_refused() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let (a, token) = init(d1.path(), "a", Role::Data).await;
    let seed = a.local_addr().to_string();
    let key = secret_of(&token);
    assert_eq!(key.bytes(), a.secret().bytes());
    assert_eq!(key.bytes().len(), 32);

    // Signed with the right secret: answered, once.
    let nonce = "0123456789abcdef0123456789abcdef";
    let t = now();
    assert_eq!(
        raw(&seed, &key, "/cluster/status", &t, nonce)
            .await
            .status(),
        200
    );
    let replay = raw(&seed, &key, "/cluster/status", &t, nonce).await;
    assert_eq!(replay.status(), 401, "replayed request");
    // Wrong secret, no signature, an old time: 401 on every route.
    let stranger = Key::generate();
    for path in [
        "/cluster/status",
        "/cluster/join",
        "/cluster/sessions",
        "/raft/vote",
        "/raft/append",
    ] {
        let r = raw(
            &seed,
            &stranger,
            path,
            &now(),
            "ffeeddccbbaa99887766554433221100",
        )
        .await;
        assert_eq!(r.status(), 401, "{path} with a wrong secret");
    }
    let unsigned = reqwest::Client::new()
        .post(format!("http://{seed}/cluster/status"))
        .body("null")
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    let old = (now().parse::<u64>().unwrap() - 60).to_string();
    let r = raw(
        &seed,
        &key,
        "/cluster/status",
        &old,
        "aaaabbbbccccddddaaaabbbbccccdddd",
    )
    .await;
    assert_eq!(r.status(), 401, "a minute old");
    let r = Caller::new(stranger, std::time::Duration::from_secs(2))
        .post::<_, serde_json::Value>(&seed, "/cluster/status", &())
        .await;
    assert!(matches!(r, Err(ClusterError::Auth(_))), "{r:?}");

    // Joining with a forged or malformed token changes nothing.
    let forged = format!(
        "{}:{}",
        &token[..token.rfind(':').unwrap()],
        "00".repeat(32)
    );
    let addr = free_addr();
    let me = info("x", Role::Data, addr);
    let r = Cluster::join(d2.path(), me.clone(), addr, &seed, &forged).await;
    assert!(matches!(r, Err(ClusterError::Auth(_))), "{:?}", r.err());
    let r = Cluster::join(d2.path(), me.clone(), addr, &seed, "not-a-token").await;
    assert!(matches!(r, Err(ClusterError::BadToken)));
    // The right secret with another cluster's id: refused as well.
    let other = format!(
        "tandem-join:{}:{}",
        uuid::Uuid::new_v4(),
        &token[token.rfind(':').unwrap() + 1..]
    );
    let r = Cluster::join(d2.path(), me, addr, &seed, &other).await;
    assert!(
        matches!(&r, Err(ClusterError::Refused(why)) if why.contains("belongs to cluster")),
        "{:?}",
        r.err()
    );
    assert!(!Cluster::exists(d2.path()));
    assert_eq!(a.state().nodes.len(), 1);
}

/// A server that answers every call with `{"Ok": ...}`-shaped JSON signed
/// by `key` (or unsigned), without checking the caller.
async fn impostor(key: Option<Key>) -> String {
    let gate = key.map(|k| std::sync::Arc::new(Gate::new(k)));
    let answer = move |h: HeaderMap, _body: Bytes| {
        let gate = gate.clone();
        async move {
            let nonce = h
                .get("x-tandem-nonce")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let fake: Result<(), String> = Ok(());
            match gate {
                Some(g) => g.answer(&nonce, &fake),
                None => axum::Json(fake).into_response(),
            }
        }
    };
    let app: Router = Router::new()
        .route("/cluster/status", post(answer.clone()))
        .route("/cluster/join", post(answer));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_from_an_impostor_are_not_believed() {
    let key = Key::generate();
    let caller = Caller::new(key.clone(), std::time::Duration::from_secs(2));
    for server_key in [Some(Key::generate()), None] {
        let fake = impostor(server_key).await;
        let r = caller
            .post::<_, Result<(), String>>(&fake, "/cluster/status", &())
            .await;
        assert!(matches!(r, Err(ClusterError::Auth(_))), "{r:?}");
        // A node told to join through the impostor stops before writing anything.
        let d = tempfile::tempdir().unwrap();
        let token = format!(
            "tandem-join:{}:{}",
            uuid::Uuid::new_v4(),
            key.bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let addr = free_addr();
        let r = Cluster::join(d.path(), info("y", Role::Data, addr), addr, &fake, &token).await;
        assert!(matches!(r, Err(ClusterError::Auth(_))), "{:?}", r.err());
        assert!(!Cluster::exists(d.path()));
    }
    // The same server signing with the right secret is believed.
    let honest = impostor(Some(key)).await;
    let r: Result<(), String> = caller.post(&honest, "/cluster/status", &()).await.unwrap();
    assert_eq!(r, Ok(()));
}
