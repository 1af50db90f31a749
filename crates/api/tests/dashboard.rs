//! The dashboard's routes, called in process through the router: the page
//! and its assets without the token and under a policy that lets the page
//! load and call nothing but this origin; the health it shows, with the
//! token only.

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use tower::ServiceExt;

async fn router() -> (common::Api, String, Router) {
    let api = common::api().await;
    let (token, router) = (api.token.clone(), api.router.clone());
    (api, token, router)
}

async fn get(
    router: &Router,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let mut req = Request::builder().uri(path);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = router
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_without_the_token_from_this_origin_only() {
    let (_dir, _token, router) = router().await;
    for (path, kind, holds) in [
        ("/", "text/html", "/dashboard/app.js"),
        ("/dashboard/", "text/html", "login-token"),
        ("/dashboard/app.js", "text/javascript", "Authorization"),
        ("/dashboard/style.css", "text/css", "canvas"),
    ] {
        let (status, headers, body) = get(&router, path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        let ct = headers[header::CONTENT_TYPE].to_str().unwrap();
        assert!(ct.starts_with(kind), "{path}: {ct}");
        assert!(body.contains(holds), "{path} lacks {holds}");
        let policy = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(policy.contains("default-src 'none'"), "{policy}");
        assert!(policy.contains("script-src 'self'"), "{policy}");
        assert!(policy.contains("connect-src 'self'"), "{policy}");
    }
    // Nothing the page loads comes from elsewhere.
    let (_, _, page) = get(&router, "/", None).await;
    assert!(!page.contains("http://") && !page.contains("https://"));
    assert!(!page.contains("<script>"), "no inline script");
}

#[tokio::test]
async fn data_calls_still_need_the_token() {
    let (_dir, token, router) = router().await;
    let (status, _, body) = get(&router, "/v1/health", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("missing or wrong API token"), "{body}");
    let (status, _, body) = get(&router, "/v1/status", Some("wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _, body) = get(&router, "/metrics", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    let (status, _, body) = get(&router, "/v1/health", Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let health: api::Health = serde_json::from_str(&body).unwrap();
    // A lone node with no volume: healthy, unless the machine's own
    // filesystem is nearly full, which it then says.
    match health.state {
        api::HealthState::Healthy => {
            assert_eq!(health.reasons.len(), 1, "{body}");
            assert!(
                health.reasons[0].starts_with("a single node, not a cluster member"),
                "{body}"
            );
        }
        api::HealthState::Degraded => {
            assert_eq!(health.reasons.len(), 1, "{body}");
            assert!(
                health.reasons[0].starts_with("the data filesystem is"),
                "{body}"
            );
        }
        api::HealthState::Critical => panic!("a lone node is never critical: {body}"),
    }
}

async fn call(
    router: &Router,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, axum::http::HeaderMap) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = if method == "GET" {
        req.body(Body::empty())
    } else {
        req.header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{}"))
    };
    let resp = router.clone().oneshot(req.unwrap()).await.unwrap();
    (resp.status(), resp.headers().clone())
}

#[tokio::test]
async fn every_data_route_the_page_calls_or_changes_needs_the_token() {
    let (_dir, _token, router) = router().await;
    for (method, path) in [
        ("GET", "/v1/status"),
        ("GET", "/v1/health"),
        ("GET", "/v1/volumes"),
        ("GET", "/v1/cluster?versions=false"),
        ("GET", "/v1/events?limit=200"),
        ("GET", "/v1/report"),
        ("GET", "/v1/snapshots"),
        ("GET", "/metrics"),
        ("POST", "/v1/volumes"),
        ("PATCH", "/v1/volumes/vm"),
        ("DELETE", "/v1/volumes/vm"),
        ("PUT", "/v1/volumes/vm/access"),
        ("POST", "/v1/volumes/vm/replicas"),
        ("POST", "/v1/cluster/init"),
    ] {
        let (status, _) = call(&router, method, path, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
        let (status, _) = call(&router, method, path, Some("wrong")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
    }
    // Paths near the assets are no way around the token nor into files.
    for path in [
        "/dashboard/../v1/status",
        "/dashboard/%2e%2e/v1/status",
        "/dashboard/app.js/../../v1/status",
        "/dashboard/../../etc/passwd",
        "/dashboard/index.html",
        "/dashboard/dashboard.rs",
    ] {
        let (status, _, body) = get(&router, path, None).await;
        assert!(
            status == StatusCode::NOT_FOUND || status == StatusCode::UNAUTHORIZED,
            "{path}: {status} {body}"
        );
    }
}

#[tokio::test]
async fn answers_to_the_token_are_not_cached_and_the_page_is_not_framed() {
    let (_dir, token, router) = router().await;
    for path in ["/v1/status", "/v1/health", "/v1/volumes", "/metrics"] {
        let (status, headers) = call(&router, "GET", path, Some(&token)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(headers[header::CACHE_CONTROL], "no-store", "{path}");
    }
    let (_, headers) = call(&router, "GET", "/v1/status", None).await;
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    let (_, headers, _) = get(&router, "/", None).await;
    assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
    let policy = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
}

#[tokio::test]
async fn the_page_puts_no_text_into_html_nor_style_attributes_the_policy_refuses() {
    let (_dir, _token, router) = router().await;
    let (_, _, script) = get(&router, "/dashboard/app.js", None).await;
    // Volume, initiator and node names and the API's errors reach the page
    // as text only.
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
    ] {
        assert!(!script.contains(sink), "app.js uses {sink}");
    }
    // style-src 'self' refuses style attributes (the script sets styles
    // through the CSSOM, which e2e_dashboard checks in a browser).
    let (_, _, page) = get(&router, "/", None).await;
    assert!(
        !page.contains(" style="),
        "index.html has a style attribute"
    );
    assert!(
        !page.contains("<style"),
        "index.html has an inline style sheet"
    );
}
