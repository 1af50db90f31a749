//! Every route of the management API, called in process through the router:
//! the token, success statuses and JSON shapes, and the refusals (bad JSON,
//! bad names and sizes, unknown volumes, volumes in use, cluster operations
//! on a node that is no member, and what a one-node cluster cannot do), and
//! the membership and replica routes between two nodes.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use common::{api, named, Api, PREFIX};
use serde_json::{json, Value};
use testkit::{free_port, rw10, Initiator};
use tower::ServiceExt;

const MIB: u64 = 1 << 20;

/// An answer: status and body (JSON, or `Value::Null` when empty, or the
/// text as a JSON string when it is no JSON).
struct Answer {
    status: StatusCode,
    body: Value,
}

impl Answer {
    /// The `error` of a JSON error body; panics when the body is not one.
    fn error(&self) -> &str {
        self.body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("not an error body: {}", self.body))
    }
}

impl Api {
    /// Sends a request with the right token.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let auth = format!("Bearer {}", self.token);
        self.send(method, path, Some(&auth), body.map(|b| b.to_string()))
            .await
    }

    /// Sends a request with `authorization` (none: no header) and a raw
    /// JSON body.
    async fn send(
        &self,
        method: Method,
        path: &str,
        authorization: Option<&str>,
        body: Option<String>,
    ) -> Answer {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(a) = authorization {
            req = req.header(header::AUTHORIZATION, a);
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b)),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Answer { status, body }
    }

    async fn create(&self, name: &str, size_bytes: u64) -> Answer {
        self.call(
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": name, "size_bytes": size_bytes})),
        )
        .await
    }
}

/// Every route, with a body each accepts.
fn every_route() -> Vec<(Method, &'static str, Option<Value>)> {
    let create = json!({"name": "v", "size_bytes": MIB});
    vec![
        (Method::GET, "/v1/status", None),
        (Method::GET, "/v1/volumes", None),
        (Method::POST, "/v1/volumes", Some(create)),
        (Method::GET, "/v1/volumes/v", None),
        (
            Method::PATCH,
            "/v1/volumes/v",
            Some(json!({"size_bytes": 2 * MIB})),
        ),
        (Method::DELETE, "/v1/volumes/v?force=true", None),
        (Method::PUT, "/v1/volumes/v/access", Some(json!({}))),
        (Method::POST, "/v1/volumes/v/replicas", Some(json!({}))),
        (Method::DELETE, "/v1/volumes/v/replicas/node-1", None),
        (Method::GET, "/v1/cluster", None),
        (Method::GET, "/v1/events", None),
        (Method::GET, "/v1/report", None),
        (Method::POST, "/v1/cluster/init", Some(json!(null))),
        (
            Method::POST,
            "/v1/cluster/join",
            Some(json!({"seed": "127.0.0.1:1", "token": "x"})),
        ),
        (Method::POST, "/v1/cluster/leave", Some(json!(null))),
        (
            Method::PUT,
            "/v1/cluster/floating",
            Some(json!({"floating": null})),
        ),
    ]
}

#[tokio::test]
async fn every_route_refuses_a_missing_or_wrong_token() {
    let api = api().await;
    assert!(api.token.len() >= 32, "a guessable token: {:?}", api.token);
    let wrong = format!("Bearer {}x", api.token);
    let cut = format!("Bearer {}", &api.token[..api.token.len() - 1]);
    let raw = api.token.clone();
    let basic = format!("Basic {}", api.token);
    for (method, path, body) in every_route() {
        for auth in [
            None,
            Some(wrong.as_str()),
            Some(cut.as_str()),
            Some(raw.as_str()),
            Some(basic.as_str()),
            Some("Bearer "),
        ] {
            let a = api
                .send(
                    method.clone(),
                    path,
                    auth,
                    body.as_ref().map(Value::to_string),
                )
                .await;
            assert_eq!(
                a.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {auth:?}"
            );
            assert!(a.error().contains("API token"), "{}", a.error());
        }
    }
    // Nothing was done: no volume, no cluster.
    assert!(api.store.list().is_empty());
    let status = api.call(Method::GET, "/v1/status", None).await;
    assert_eq!(status.status, StatusCode::OK);
    assert_eq!(status.body["volumes"], 0);
    let cluster = api.call(Method::GET, "/v1/cluster", None).await;
    assert!(
        cluster.error().contains("not a cluster member"),
        "{}",
        cluster.body
    );
}

#[tokio::test]
async fn status_describes_the_node() {
    let api = api().await;
    api.create("a", MIB).await;
    api.create("b", 3 * MIB).await;
    let a = api.call(Method::GET, "/v1/status", None).await;
    assert_eq!(a.status, StatusCode::OK);
    let s = &a.body;
    assert_eq!(
        s["installation_id"],
        api.store.installation_id().to_string()
    );
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["data_dir"], api.store.data_dir().display().to_string());
    assert_eq!(s["volumes"], 2);
    assert_eq!(s["provisioned_bytes"], 4 * MIB);
    assert!(s["allocated_bytes"].is_u64(), "{s}");
}

#[tokio::test]
async fn the_event_history_and_the_report_follow_what_was_done() {
    let api = api().await;
    api.create("a", MIB).await;
    let grown = api
        .call(
            Method::PATCH,
            "/v1/volumes/a",
            Some(json!({"size_bytes": 2 * MIB})),
        )
        .await;
    assert_eq!(grown.status, StatusCode::OK);
    let gone = api.call(Method::DELETE, "/v1/volumes/a", None).await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT);
    let all = api.call(Method::GET, "/v1/events", None).await;
    assert_eq!(all.status, StatusCode::OK);
    let kinds: Vec<&str> = all
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["volume-create", "volume-resize", "volume-delete"]);
    let resized = api
        .call(Method::GET, "/v1/events?kind=volume-resize&since=1h", None)
        .await;
    let resized = resized.body.as_array().unwrap();
    assert_eq!(resized.len(), 1);
    assert_eq!(resized[0]["fields"]["from_bytes"], MIB);
    assert_eq!(resized[0]["fields"]["bytes"], 2 * MIB);
    let newest = api.call(Method::GET, "/v1/events?limit=1", None).await;
    assert_eq!(newest.body[0]["kind"], "volume-delete");
    let after = newest.body[0]["seq"].as_u64().unwrap();
    // Nothing after the newest: a wait answers, empty, once it is over.
    let started = std::time::Instant::now();
    let none = api
        .call(
            Method::GET,
            &format!("/v1/events?after={after}&wait=1"),
            None,
        )
        .await;
    assert_eq!(none.body, json!([]));
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
    for bad in ["/v1/events?kind=nonsense", "/v1/events?since=soon"] {
        let r = api.call(Method::GET, bad, None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.body);
    }
    let report = api.call(Method::GET, "/v1/report", None).await;
    assert_eq!(report.status, StatusCode::OK);
    let r = &report.body;
    assert_eq!(r["events"], 3);
    assert_eq!(r["agility"]["create"]["count"], 1);
    assert!(
        r["agility"]["create"]["p50_us"].as_u64().unwrap() > 0,
        "{r}"
    );
    assert_eq!(r["agility"]["resize"]["count"], 1);
    assert!(
        r["agility"]["failover"]["p50_us"].is_null(),
        "no failover: no figure"
    );
    assert_eq!(r["efficiency"]["volumes"], 0, "the volume is gone");
}

#[tokio::test]
async fn volume_routes_create_describe_grow_guard_and_delete() {
    let api = api().await;
    let created = api
        .call(
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": "vm1", "size_bytes": 4 * MIB, "block_size": 4096})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let v = &created.body;
    assert_eq!(v["name"], "vm1");
    assert_eq!(v["size_bytes"], 4 * MIB);
    assert_eq!(v["block_size"], 4096);
    assert_eq!(v["iqn"], format!("{PREFIX}:vm1"));
    assert_eq!(v["lun"], 0);
    assert_eq!(v["sessions"], 0);
    assert_eq!(v["allowed_initiators"], json!([]));
    assert_eq!(v["chap_user"], Value::Null);
    assert_eq!(v["id"], api.store.get("vm1").unwrap().id.to_string());
    for key in ["naa", "serial"] {
        assert!(!v[key].as_str().unwrap().is_empty(), "{key}: {v}");
    }
    assert!(v["allocated_bytes"].is_u64());

    // The block size defaults to 512.
    let small = api.create("vm0", MIB).await;
    assert_eq!(small.status, StatusCode::CREATED);
    assert_eq!(small.body["block_size"], 512);

    let list = api.call(Method::GET, "/v1/volumes", None).await;
    assert_eq!(list.status, StatusCode::OK);
    let names: Vec<&str> = list
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["vm0", "vm1"]);

    let one = api.call(Method::GET, "/v1/volumes/vm1", None).await;
    assert_eq!((one.status, &one.body), (StatusCode::OK, &created.body));

    let grown = api
        .call(
            Method::PATCH,
            "/v1/volumes/vm1",
            Some(json!({"size_bytes": 8 * MIB})),
        )
        .await;
    assert_eq!(grown.status, StatusCode::OK, "{}", grown.body);
    assert_eq!(grown.body["size_bytes"], 8 * MIB);
    assert_eq!(api.store.get("vm1").unwrap().size_bytes, 8 * MIB);

    let rules = json!({
        "allowed_initiators": ["iqn.1993-08.org.debian:01:host-a"],
        "chap": {"user": "esx", "secret": "twelve-chars-secret"},
        "mutual_chap": {"user": "tandem", "secret": "another-long-secret"},
    });
    let guarded = api
        .call(Method::PUT, "/v1/volumes/vm1/access", Some(rules))
        .await;
    assert_eq!(guarded.status, StatusCode::OK, "{}", guarded.body);
    assert_eq!(guarded.body["chap_user"], "esx");
    assert_eq!(guarded.body["mutual_chap_user"], "tandem");
    assert_eq!(
        guarded.body["allowed_initiators"],
        json!(["iqn.1993-08.org.debian:01:host-a"])
    );
    for a in [
        &guarded,
        &api.call(Method::GET, "/v1/volumes/vm1", None).await,
        &api.call(Method::GET, "/v1/volumes", None).await,
    ] {
        let text = a.body.to_string();
        assert!(!text.contains("secret\""), "{text}");
        assert!(
            !text.contains("twelve-chars-secret") && !text.contains("another-long-secret"),
            "{text}"
        );
    }
    // Only the volume without rules is left for another initiator to see.
    assert_eq!(
        api.targets.visible_to("iqn.1993-08.org.debian:01:host-b"),
        [format!("{PREFIX}:vm0")]
    );
    // Partial rules: the missing fields mean "none".
    let open = api
        .call(Method::PUT, "/v1/volumes/vm1/access", Some(json!({})))
        .await;
    assert_eq!(open.status, StatusCode::OK);
    assert_eq!(
        (
            open.body["chap_user"].clone(),
            open.body["allowed_initiators"].clone()
        ),
        (Value::Null, json!([]))
    );

    let deleted = api.call(Method::DELETE, "/v1/volumes/vm1", None).await;
    assert_eq!(
        (deleted.status, deleted.body),
        (StatusCode::NO_CONTENT, Value::Null)
    );
    let gone = api.call(Method::GET, "/v1/volumes/vm1", None).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(gone.error(), "volume vm1 does not exist");
    assert!(api.store.get("vm1").is_none());
    let list = api.call(Method::GET, "/v1/volumes", None).await;
    assert_eq!(list.body.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn unknown_volumes_answer_404() {
    let api = api().await;
    let calls = [
        (Method::GET, "/v1/volumes/nope", None),
        (
            Method::PATCH,
            "/v1/volumes/nope",
            Some(json!({"size_bytes": MIB})),
        ),
        (Method::DELETE, "/v1/volumes/nope", None),
        (Method::DELETE, "/v1/volumes/nope?force=true", None),
        (Method::PUT, "/v1/volumes/nope/access", Some(json!({}))),
    ];
    for (method, path, body) in calls {
        let a = api.call(method.clone(), path, body).await;
        assert_eq!(
            a.status,
            StatusCode::NOT_FOUND,
            "{method} {path}: {}",
            a.body
        );
        assert!(a.error().contains("nope"), "{}", a.error());
    }
    // A path no route has.
    let a = api.call(Method::GET, "/v1/nothing", None).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn malformed_requests_are_refused() {
    let api = api().await;
    let auth = format!("Bearer {}", api.token);
    let raw = |method: Method, path: &'static str, body: &'static str| {
        let auth = auth.clone();
        let api = &api;
        async move {
            api.send(method, path, Some(&auth), Some(body.to_string()))
                .await
        }
    };
    // Not JSON at all: 400; JSON of the wrong shape: 422.
    for (body, status) in [
        ("{\"name\": \"x\", ", StatusCode::BAD_REQUEST),
        ("not json", StatusCode::BAD_REQUEST),
        ("{\"name\": \"x\"}", StatusCode::UNPROCESSABLE_ENTITY),
        (
            "{\"size_bytes\": 1048576}",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "{\"name\": \"x\", \"size_bytes\": \"1M\"}",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "{\"name\": \"x\", \"size_bytes\": -1}",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ("[]", StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let a = raw(Method::POST, "/v1/volumes", body).await;
        assert_eq!(a.status, status, "{body}: {}", a.body);
    }
    // JSON without saying so.
    let req = Request::post("/v1/volumes")
        .header(header::AUTHORIZATION, &auth)
        .body(Body::from(
            json!({"name": "x", "size_bytes": MIB}).to_string(),
        ))
        .unwrap();
    let resp = api.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(
        api.store.list().is_empty(),
        "a malformed request created a volume"
    );

    // Well-formed, but the names and sizes are wrong: 400 naming the problem.
    for (body, says) in [
        (json!({"name": "Big_Name", "size_bytes": MIB}), "Big_Name"),
        (json!({"name": "", "size_bytes": MIB}), "1 to 63"),
        (json!({"name": "x", "size_bytes": 0}), "size 0"),
        (json!({"name": "x", "size_bytes": 1000}), "size 1000"),
        (
            json!({"name": "x", "size_bytes": MIB, "block_size": 1024}),
            "block size 1024",
        ),
        (
            json!({"name": "x", "size_bytes": MIB, "replicas": 2}),
            "cluster",
        ),
    ] {
        let a = api
            .call(Method::POST, "/v1/volumes", Some(body.clone()))
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.body);
        assert!(a.error().contains(says), "{body}: {}", a.error());
    }
    assert!(api.store.list().is_empty());

    // A name taken: 409.
    assert_eq!(api.create("x", MIB).await.status, StatusCode::CREATED);
    let again = api.create("x", 2 * MIB).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    assert!(again.error().contains('x'));

    // Grow only, by whole blocks.
    for size in [MIB / 2, 0, MIB + 100] {
        let a = api
            .call(
                Method::PATCH,
                "/v1/volumes/x",
                Some(json!({"size_bytes": size})),
            )
            .await;
        assert_eq!(
            a.status,
            StatusCode::BAD_REQUEST,
            "resize to {size}: {}",
            a.body
        );
    }
    let a = raw(Method::PATCH, "/v1/volumes/x", "{}").await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(api.store.get("x").unwrap().size_bytes, MIB);

    // Access rules that cannot work.
    for rules in [
        json!({"allowed_initiators": ["host-a"]}),
        json!({"chap": {"user": "esx", "secret": "short"}}),
        json!({"mutual_chap": {"user": "t", "secret": "another-long-secret"}}),
        json!({"chap": {"user": "e", "secret": "same-long-secret"}, "mutual_chap": {"user": "t", "secret": "same-long-secret"}}),
    ] {
        let a = api
            .call(Method::PUT, "/v1/volumes/x/access", Some(rules.clone()))
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{rules}: {}", a.body);
    }
    let a = raw(
        Method::PUT,
        "/v1/volumes/x/access",
        "{\"chap\": {\"user\": \"esx\"}}",
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "CHAP without a secret"
    );
    let x = api.call(Method::GET, "/v1/volumes/x", None).await;
    assert_eq!(x.body["chap_user"], Value::Null);

    // A query that is not a boolean.
    let a = api
        .call(Method::DELETE, "/v1/volumes/x?force=maybe", None)
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(api.store.get("x").is_some());
}

#[tokio::test]
async fn delete_of_a_volume_in_use_answers_409_unless_forced() {
    let api = api().await;
    api.create("busy", MIB).await;
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(portal::serve(
        listener,
        api.targets.clone(),
        portal::TargetConfig::default(),
        std::future::pending(),
    ));
    let _session = Initiator::normal(addr, &format!("{PREFIX}:busy"), &[]).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = api.call(Method::GET, "/v1/volumes/busy", None).await;
        if v.body["sessions"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "session never counted: {}",
            v.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for path in ["/v1/volumes/busy", "/v1/volumes/busy?force=false"] {
        let a = api.call(Method::DELETE, path, None).await;
        assert_eq!(a.status, StatusCode::CONFLICT, "{path}: {}", a.body);
        assert!(
            a.error().contains("in use by 1 iSCSI session"),
            "{}",
            a.error()
        );
    }
    assert!(api.store.get("busy").is_some());
    let a = api
        .call(Method::DELETE, "/v1/volumes/busy?force=true", None)
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.body);
    assert!(api.store.get("busy").is_none());
}

#[tokio::test]
async fn cluster_routes_on_a_node_that_is_no_member() {
    let api = api().await;
    api.create("v", MIB).await;
    let calls = [
        (Method::GET, "/v1/cluster", None),
        (Method::POST, "/v1/cluster/leave", Some(json!(null))),
        (Method::POST, "/v1/volumes/v/replicas", Some(json!({}))),
        (
            Method::POST,
            "/v1/volumes/v/replicas",
            Some(json!({"node": "node-2"})),
        ),
        (Method::DELETE, "/v1/volumes/v/replicas/node-1", None),
        (
            Method::PUT,
            "/v1/cluster/floating",
            Some(json!({"floating": {"address": "192.0.2.50/24", "interface": "eth0"}})),
        ),
    ];
    for (method, path, body) in calls {
        let a = api.call(method.clone(), path, body).await;
        assert_eq!(
            a.status,
            StatusCode::BAD_REQUEST,
            "{method} {path}: {}",
            a.body
        );
        assert_eq!(a.error(), "this node is not a cluster member");
    }
    // A join token that is none is refused, naming what is wrong.
    let a = api
        .call(
            Method::POST,
            "/v1/cluster/join",
            Some(json!({"seed": "127.0.0.1:1", "token": "not-a-token"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    assert!(a.error().contains("join token"), "{}", a.error());
    let a = api
        .call(
            Method::POST,
            "/v1/cluster/join",
            Some(json!({"seed": "127.0.0.1:1"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    // Still no member, the volume still a local one.
    let a = api.call(Method::GET, "/v1/cluster", None).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        api.call(Method::GET, "/v1/volumes/v", None).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn cluster_routes_on_a_one_node_cluster() {
    let api = api().await;
    let init = api
        .call(Method::POST, "/v1/cluster/init", Some(json!(null)))
        .await;
    assert_eq!(init.status, StatusCode::OK, "{}", init.body);
    assert!(init.body["token"]
        .as_str()
        .unwrap()
        .starts_with("tandem-join:"));
    let again = api
        .call(Method::POST, "/v1/cluster/init", Some(json!(null)))
        .await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    assert!(again.error().contains("already a cluster member"));

    let view = api.call(Method::GET, "/v1/cluster", None).await;
    assert_eq!(view.status, StatusCode::OK, "{}", view.body);
    let me = view.body["status"]["me"].as_u64().unwrap();
    assert_eq!(view.body["status"]["leader"], me);
    assert_eq!(
        view.body["status"]["state"]["nodes"][me.to_string()]["name"],
        "node-1"
    );
    assert_eq!(view.body["replication"], json!({}));

    let created = api
        .call(
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": "shared", "size_bytes": MIB, "replicas": 1})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["size_bytes"], MIB);
    let two = api
        .call(
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": "two", "size_bytes": MIB, "replicas": 2})),
        )
        .await;
    assert_eq!(two.status, StatusCode::CONFLICT, "{}", two.body);

    // The node takes up the primary role: its replication shows in the view.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view = api.call(Method::GET, "/v1/cluster", None).await;
        if view.body["replication"].get("shared").is_some() {
            assert_eq!(
                view.body["replication"]["shared"],
                json!([]),
                "one copy: no peers"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never primary: {}", view.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The view leaves the access rules (and their secrets) out.
    let rules = json!({"chap": {"user": "esx", "secret": "cluster-wide-secret"}});
    let guarded = api
        .call(Method::PUT, "/v1/volumes/shared/access", Some(rules))
        .await;
    assert_eq!(guarded.status, StatusCode::OK, "{}", guarded.body);
    assert_eq!(guarded.body["chap_user"], "esx");
    let view = api.call(Method::GET, "/v1/cluster", None).await;
    assert!(
        !view.body.to_string().contains("cluster-wide-secret"),
        "{}",
        view.body
    );
    assert_eq!(
        view.body["status"]["state"]["volumes"]["shared"]["access"],
        Value::Null
    );

    // A floating address that `ip` would not take is refused, and none is
    // recorded. (A valid one is not set here: this process would add it to
    // the machine's own interface; tests/e2e_floating_address.rs sets one
    // inside network namespaces.)
    for bad in [
        json!({"address": "192.0.2.50", "interface": "eth0"}),
        json!({"address": "192.0.2.50/24", "interface": "eth0:1"}),
    ] {
        let a = api
            .call(
                Method::PUT,
                "/v1/cluster/floating",
                Some(json!({ "floating": bad })),
            )
            .await;
        assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.body);
        assert!(
            a.error().contains("floating address") || a.error().contains("interface"),
            "{}",
            a.error()
        );
    }
    let none = api
        .call(
            Method::PUT,
            "/v1/cluster/floating",
            Some(json!({ "floating": null })),
        )
        .await;
    assert_eq!(none.status, StatusCode::NO_CONTENT, "{}", none.body);
    let view = api.call(Method::GET, "/v1/cluster", None).await;
    assert_eq!(view.body["status"]["state"]["floating"], Value::Null);

    // No other node for a copy, and the primary's copy cannot go: 409.
    let add = api
        .call(Method::POST, "/v1/volumes/shared/replicas", Some(json!({})))
        .await;
    assert_eq!(add.status, StatusCode::CONFLICT, "{}", add.body);
    let remove = api
        .call(
            Method::DELETE,
            &format!("/v1/volumes/shared/replicas/{me}"),
            None,
        )
        .await;
    assert_eq!(remove.status, StatusCode::CONFLICT, "{}", remove.body);
    let nobody = api
        .call(Method::DELETE, "/v1/volumes/shared/replicas/nobody", None)
        .await;
    assert_eq!(nobody.status, StatusCode::BAD_REQUEST);
    assert!(nobody.error().contains("nobody"));
    let missing = api
        .call(
            Method::POST,
            "/v1/volumes/missing/replicas",
            Some(json!({})),
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    let grown = api
        .call(
            Method::PATCH,
            "/v1/volumes/shared",
            Some(json!({"size_bytes": 2 * MIB})),
        )
        .await;
    assert_eq!(grown.status, StatusCode::OK, "{}", grown.body);
    assert_eq!(grown.body["size_bytes"], 2 * MIB);

    let deleted = api.call(Method::DELETE, "/v1/volumes/shared", None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.body);
    let view = api.call(Method::GET, "/v1/cluster", None).await;
    assert_eq!(view.body["status"]["state"]["volumes"], json!({}));
    assert_eq!(
        api.call(Method::GET, "/v1/volumes/shared", None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

/// Polls `GET /v1/cluster` on `api` until `check` holds for its body.
async fn until_view(api: &Api, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let view = api.call(Method::GET, "/v1/cluster", None).await;
        if view.status == StatusCode::OK && check(&view.body) {
            return view.body;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting: {what}: {}",
            view.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn join_add_and_remove_a_replica_and_leave_on_two_nodes() {
    let a = named("node-a").await;
    let b = named("node-b").await;
    let init = a
        .call(Method::POST, "/v1/cluster/init", Some(json!(null)))
        .await;
    assert_eq!(init.status, StatusCode::OK, "{}", init.body);
    let token = init.body["token"].as_str().unwrap().to_string();

    let seed = a.cluster.cluster_listen.to_string();
    let joined = b
        .call(
            Method::POST,
            "/v1/cluster/join",
            Some(json!({"seed": seed, "token": token})),
        )
        .await;
    assert_eq!(
        (joined.status, &joined.body),
        (StatusCode::NO_CONTENT, &Value::Null)
    );
    let again = b
        .call(
            Method::POST,
            "/v1/cluster/join",
            Some(json!({"seed": seed, "token": token})),
        )
        .await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    assert!(again.error().contains("already a cluster member"));
    until_view(&a, "b is a member", |v| {
        v["status"]["state"]["nodes"]
            .as_object()
            .is_some_and(|n| n.len() == 2)
    })
    .await;

    // One copy on a, then a second one on b: 201 naming b.
    let created = a
        .call(
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": "vm", "size_bytes": MIB, "replicas": 1})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let view = a.call(Method::GET, "/v1/cluster", None).await;
    let nodes = view.body["status"]["state"]["nodes"]
        .as_object()
        .unwrap()
        .clone();
    let id_of = |name: &str| -> u64 {
        nodes
            .iter()
            .find(|(_, n)| n["name"] == name)
            .map(|(id, _)| id.parse().unwrap())
            .unwrap()
    };
    let (id_a, id_b) = (id_of("node-a"), id_of("node-b"));
    assert_eq!(
        view.body["status"]["state"]["volumes"]["vm"]["primary"],
        id_a
    );
    let added = a
        .call(Method::POST, "/v1/volumes/vm/replicas", Some(json!({})))
        .await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.body);
    assert_eq!(added.body, json!({"node": id_b}));
    let twice = a
        .call(
            Method::POST,
            "/v1/volumes/vm/replicas",
            Some(json!({"node": "node-b"})),
        )
        .await;
    assert_eq!(twice.status, StatusCode::CONFLICT, "{}", twice.body);
    // The copy on b catches up; a's view shows its peer.
    until_view(&a, "the copy on b is in sync", |v| {
        v["status"]["state"]["volumes"]["vm"]["replicas"][id_b.to_string()]["state"] == "in-sync"
            && v["replication"]["vm"]
                .as_array()
                .is_some_and(|p| p.len() == 1)
    })
    .await;
    assert!(b.store.get("vm").is_some(), "no copy on b");
    let on_b = b.call(Method::GET, "/v1/volumes/vm", None).await;
    assert_eq!(on_b.status, StatusCode::OK);
    assert_eq!(
        on_b.body["naa"], created.body["naa"],
        "one identity on every node"
    );

    // The view names every field of a replica and of an acknowledgement
    // window, as the CLI and the cluster tests read them: one write
    // through a, then a's view.
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(portal::serve(
        listener,
        a.targets.clone(),
        portal::TargetConfig::default(),
        std::future::pending(),
    ));
    let mut session = Initiator::normal(addr, &format!("{PREFIX}:vm"), &[]).await;
    // Unit attentions (power on, ALUA state changed) and an access state
    // transition (the primary role being set up) are answered again, as
    // an initiator does.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let wrote = session
            .run(&rw10(0x2a, 0, 1), &[0x5a; 512], 0)
            .await
            .expect("an answer to the write");
        if wrote.status == 0 {
            break;
        }
        let again = wrote.sense_key == 0x6 || (wrote.sense_key, wrote.asc) == (0x2, (0x04, 0x0a));
        assert!(
            again && Instant::now() < deadline,
            "the write failed: sense key {:#x}, asc {:x?}",
            wrote.sense_key,
            wrote.asc
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(session);
    let v = until_view(&a, "b in sync and the write acknowledged", |v| {
        v["replication"]["vm"][0]["state"] == "in-sync" && v["acknowledged"]["vm"].is_array()
    })
    .await;
    let peer = &v["replication"]["vm"][0];
    let resync = |field: &str| peer[field].as_u64().expect(field);
    assert_eq!(
        peer,
        &json!({
            "node": id_b,
            "state": "in-sync",
            "connected": true,
            "dirty_bytes": 0,
            "resync_done": resync("resync_done"),
            "resync_total": resync("resync_total"),
            "resync_data_bytes": resync("resync_data_bytes"),
            "resync_unmapped_bytes": resync("resync_unmapped_bytes"),
            "resync_rate": 0,
            "resync_limit": null,
            "resync_yielding": false,
        })
    );
    // One window per primary role that acknowledged writes: here the one
    // write, in the role that runs now.
    let epoch = v["status"]["state"]["volumes"]["vm"]["epoch"]
        .as_u64()
        .unwrap();
    let window = &v["acknowledged"]["vm"][0];
    let at = |field: &str| window[field].as_u64().expect(field);
    assert!(0 < at("first_us") && at("first_us") <= at("last_us"), "{v}");
    assert_eq!(
        v["acknowledged"]["vm"],
        json!([{
            "epoch": epoch,
            "writes": 1,
            "first_us": at("first_us"),
            "last_us": at("last_us"),
        }])
    );

    // Dropping it would leave one copy: refused (409) unless forced.
    let refused = a
        .call(Method::DELETE, "/v1/volumes/vm/replicas/node-b", None)
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
    let why = refused.body["error"].as_str().unwrap();
    assert!(
        why.contains("leaves a single copy") && why.contains("redundancy"),
        "{why}"
    );
    // Forced: 204, and b lets its copy go.
    let removed = a
        .call(
            Method::DELETE,
            "/v1/volumes/vm/replicas/node-b?force=true",
            None,
        )
        .await;
    assert_eq!(
        (removed.status, &removed.body),
        (StatusCode::NO_CONTENT, &Value::Null)
    );
    until_view(&a, "a single copy again", |v| {
        v["status"]["state"]["volumes"]["vm"]["replicas"]
            .as_object()
            .is_some_and(|r| r.len() == 1)
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.store.get("vm").is_some() {
        assert!(Instant::now() < deadline, "b kept its dropped copy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // b leaves: 204, and a's cluster has one member left.
    let left = b
        .call(Method::POST, "/v1/cluster/leave", Some(json!(null)))
        .await;
    assert_eq!(
        (left.status, &left.body),
        (StatusCode::NO_CONTENT, &Value::Null)
    );
    until_view(&a, "b is gone", |v| {
        v["status"]["state"]["nodes"]
            .as_object()
            .is_some_and(|n| n.len() == 1 && n.contains_key(&id_a.to_string()))
    })
    .await;
}
