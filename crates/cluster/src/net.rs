//! Authenticated HTTP between cluster members.
//!
//! Every request carries `x-tandem-time`, `x-tandem-nonce` and
//! `x-tandem-auth` = HMAC-SHA256(secret, "req" | method | path | time | nonce
//! | SHA-256(body)); the server refuses a wrong tag, a time more than 30 s
//! off, or a nonce it has seen, with 401. Every answer carries
//! `x-tandem-auth` = HMAC-SHA256(secret, "resp" | nonce | status |
//! SHA-256(body)), which the client checks before trusting it: both ends
//! prove they know the cluster secret on every call.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::ClusterError;

/// Largest clock difference accepted between members.
const MAX_SKEW_SECS: u64 = 30;

/// The cluster secret.
#[derive(Clone)]
pub struct Key(Vec<u8>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// A fresh random 32-byte secret.
    pub fn generate() -> Key {
        let mut k = vec![0u8; 32];
        rand::thread_rng().fill_bytes(&mut k);
        Key(k)
    }

    /// Wraps secret bytes.
    pub fn from_bytes(b: Vec<u8>) -> Key {
        Key(b)
    }

    /// The secret bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    fn mac(&self, parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        for p in parts {
            m.update(&(p.len() as u64).to_be_bytes());
            m.update(p);
        }
        m
    }

    fn tag(&self, parts: &[&[u8]]) -> String {
        hex::encode(self.mac(parts).finalize().into_bytes())
    }

    fn verify(&self, parts: &[&[u8]], tag: &str) -> bool {
        match hex::decode(tag) {
            // Constant-time comparison.
            Ok(t) => self.mac(parts).verify_slice(&t).is_ok(),
            Err(_) => false,
        }
    }
}

/// The `x-tandem-auth` tag of a request: HMAC-SHA256 over "req", the
/// method, path, time (Unix seconds, as sent), nonce and SHA-256 of the body.
pub fn request_tag(key: &Key, path: &str, time: &str, nonce: &str, body: &[u8]) -> String {
    key.tag(&request_parts(path, time, nonce, &digest(body)))
}

fn request_parts<'a>(
    path: &'a str,
    time: &'a str,
    nonce: &'a str,
    hash: &'a [u8],
) -> [&'a [u8]; 6] {
    [
        b"req",
        b"POST",
        path.as_bytes(),
        time.as_bytes(),
        nonce.as_bytes(),
        hash,
    ]
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn digest(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

/// The server side: checks requests, signs answers.
pub struct Gate {
    key: Key,
    seen: Mutex<HashMap<String, Instant>>,
}

impl Gate {
    /// A gate for `key`.
    pub fn new(key: Key) -> Gate {
        Gate {
            key,
            seen: Mutex::default(),
        }
    }

    /// The secret the gate checks against.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Checks a request; returns its nonce for signing the answer.
    pub fn check(&self, headers: &HeaderMap, path: &str, body: &[u8]) -> Result<String, Response> {
        let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
        let (time, nonce, tag) = (h("x-tandem-time"), h("x-tandem-nonce"), h("x-tandem-auth"));
        let refuse = |why: &str| {
            tracing::warn!(path, "cluster request refused: {why}");
            (StatusCode::UNAUTHORIZED, why.to_string()).into_response()
        };
        let t: u64 = time.parse().map_err(|_| refuse("no time"))?;
        if nonce.len() < 16 || nonce.len() > 64 {
            return Err(refuse("bad nonce"));
        }
        if !self
            .key
            .verify(&request_parts(path, time, nonce, &digest(body)), tag)
        {
            return Err(refuse("wrong cluster secret"));
        }
        if now_secs().abs_diff(t) > MAX_SKEW_SECS {
            return Err(refuse("clock too far off (more than 30 s)"));
        }
        let mut seen = self.seen.lock().unwrap();
        seen.retain(|_, at| at.elapsed() < Duration::from_secs(2 * MAX_SKEW_SECS + 5));
        if seen.insert(nonce.to_string(), Instant::now()).is_some() {
            return Err(refuse("replayed request"));
        }
        Ok(nonce.to_string())
    }

    /// A signed JSON answer.
    pub fn answer<T: Serialize>(&self, nonce: &str, value: &T) -> Response {
        let body = serde_json::to_vec(value).expect("serializable");
        let tag = self
            .key
            .tag(&[b"resp", nonce.as_bytes(), b"200", &digest(&body)]);
        (
            StatusCode::OK,
            [
                ("x-tandem-auth", tag),
                ("content-type", "application/json".into()),
            ],
            body,
        )
            .into_response()
    }
}

/// The client side: signs requests, checks answers.
#[derive(Clone)]
pub struct Caller {
    key: Key,
    http: reqwest::Client,
}

impl Caller {
    /// A caller for `key` with a per-request `timeout`.
    pub fn new(key: Key, timeout: Duration) -> Caller {
        Caller {
            key,
            http: reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout)
                .build()
                .expect("HTTP client builds"),
        }
    }

    /// A caller for `key` that connects within `connect` and waits up to
    /// `answer` for each answer: for requests that take as long as the work
    /// they ask for.
    pub fn patient(key: Key, connect: Duration, answer: Duration) -> Caller {
        Caller {
            key,
            http: reqwest::Client::builder()
                .timeout(answer)
                .connect_timeout(connect)
                .build()
                .expect("HTTP client builds"),
        }
    }

    /// POSTs `body` as JSON to `http://addr/path` and decodes the signed answer.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: &B,
    ) -> Result<T, ClusterError> {
        let body = serde_json::to_vec(body).expect("serializable");
        let time = now_secs().to_string();
        let mut n = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut n);
        let nonce = hex::encode(n);
        let tag = request_tag(&self.key, path, &time, &nonce, &body);
        let unreachable = |e: reqwest::Error| ClusterError::Unreachable {
            addr: addr.to_string(),
            reason: e.to_string(),
        };
        let resp = self
            .http
            .post(format!("http://{addr}{path}"))
            .header("x-tandem-time", time)
            .header("x-tandem-nonce", &nonce)
            .header("x-tandem-auth", tag)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(unreachable)?;
        let status = resp.status();
        let their_tag = resp
            .headers()
            .get("x-tandem-auth")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = resp.bytes().await.map_err(unreachable)?;
        if status == StatusCode::UNAUTHORIZED {
            return Err(ClusterError::Auth(format!(
                "{addr} refused this node: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        if !status.is_success() {
            return Err(ClusterError::Remote(format!(
                "{addr} answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        if !self.key.verify(
            &[b"resp", nonce.as_bytes(), b"200", &digest(&bytes)],
            &their_tag,
        ) {
            return Err(ClusterError::Auth(format!(
                "{addr} does not know the cluster secret (unsigned or wrongly signed answer)"
            )));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ClusterError::Remote(format!("{addr}: bad answer: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(key: &Key, path: &str, time: u64, nonce: &str, body: &[u8]) -> HeaderMap {
        let time = time.to_string();
        let mut h = HeaderMap::new();
        h.insert("x-tandem-time", time.parse().unwrap());
        h.insert("x-tandem-nonce", nonce.parse().unwrap());
        h.insert(
            "x-tandem-auth",
            request_tag(key, path, &time, nonce, body).parse().unwrap(),
        );
        h
    }

    const NONCE: &str = "00112233445566778899aabbccddeeff";

    #[test]
    fn gate_takes_a_signed_request_once() {
        let key = Key::generate();
        let gate = Gate::new(key.clone());
        let h = headers(&key, "/cluster/status", now_secs(), NONCE, b"null");
        assert_eq!(gate.check(&h, "/cluster/status", b"null").unwrap(), NONCE);
        let again = gate.check(&h, "/cluster/status", b"null").unwrap_err();
        assert_eq!(again.status(), StatusCode::UNAUTHORIZED, "replay");
    }

    #[test]
    fn gate_refuses_wrong_secret_tampering_and_old_requests() {
        let key = Key::generate();
        let gate = Gate::new(key.clone());
        let refused = |h: &HeaderMap, path: &str, body: &[u8]| {
            gate.check(h, path, body).unwrap_err().status() == StatusCode::UNAUTHORIZED
        };
        let now = now_secs();
        let stranger = headers(&Key::generate(), "/raft/vote", now, NONCE, b"{}");
        assert!(refused(&stranger, "/raft/vote", b"{}"));
        let good = headers(&key, "/raft/vote", now, NONCE, b"{}");
        assert!(refused(&good, "/raft/vote", b"{ }"), "body changed");
        assert!(refused(&good, "/raft/append", b"{}"), "path changed");
        let old = headers(&key, "/raft/vote", now - 31, NONCE, b"{}");
        assert!(refused(&old, "/raft/vote", b"{}"), "31 s old");
        let ahead = headers(&key, "/raft/vote", now + 31, NONCE, b"{}");
        assert!(refused(&ahead, "/raft/vote", b"{}"), "31 s ahead");
        let short = headers(&key, "/raft/vote", now, "abc", b"{}");
        assert!(refused(&short, "/raft/vote", b"{}"), "short nonce");
        assert!(refused(&HeaderMap::new(), "/raft/vote", b"{}"), "unsigned");
        let mut bad_hex = good.clone();
        bad_hex.insert("x-tandem-auth", "zz".parse().unwrap());
        assert!(refused(&bad_hex, "/raft/vote", b"{}"));
        // None of the refusals used up the nonce of the good request.
        assert!(gate.check(&good, "/raft/vote", b"{}").is_ok());
    }

    #[test]
    fn answers_are_bound_to_the_request_nonce_and_body() {
        let key = Key::generate();
        let r = Gate::new(key.clone()).answer(NONCE, &42u32);
        let tag = r.headers()["x-tandem-auth"].to_str().unwrap().to_string();
        let hash = digest(b"42");
        assert!(key.verify(&[b"resp", NONCE.as_bytes(), b"200", &hash], &tag));
        assert!(!key.verify(&[b"resp", b"other-nonce-0000", b"200", &hash], &tag));
        assert!(!key.verify(&[b"resp", NONCE.as_bytes(), b"200", &digest(b"43")], &tag));
        assert!(!Key::generate().verify(&[b"resp", NONCE.as_bytes(), b"200", &hash], &tag));
    }
}
