//! The node's event history and report over HTTP: the routes and the
//! client calls.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use node::{Event, EventKind, EventQuery, Node, NodeError, Report};
use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::server::ApiError;
use crate::{ApiClient, ClientError};

/// Longest a `GET /v1/events?wait=` waits for a new event.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// Query of `GET /v1/events`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EventsQuery {
    /// Only events at or after this time: a span back (`10m`, `2h`, `7d`)
    /// or a UTC time (`2026-11-30T14:05:00Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Only events numbered above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// Only these kinds, separated by commas (`failover,resync-end`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// At most this many, the newest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// When none matches yet, wait up to this many seconds (at most 30)
    /// for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<u64>,
}

impl EventsQuery {
    /// What the node is asked, or why the query is wrong.
    pub fn to_query(&self) -> Result<EventQuery, String> {
        let since_ms = match &self.since {
            Some(s) => Some(node::parse_since(s, node::now_ms())?),
            None => None,
        };
        let kinds = match &self.kind {
            Some(k) => k
                .split(',')
                .filter(|k| !k.trim().is_empty())
                .map(|k| {
                    EventKind::parse(k.trim()).ok_or_else(|| {
                        format!(
                            "no event kind {k:?}; the kinds are {}",
                            EventKind::ALL.map(EventKind::as_str).join(", ")
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        Ok(EventQuery {
            after: self.after,
            since_ms,
            kinds,
            limit: self.limit,
        })
    }

    fn to_url(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = &self.since {
            parts.push(format!("since={}", encode(s)));
        }
        if let Some(a) = self.after {
            parts.push(format!("after={a}"));
        }
        if let Some(k) = &self.kind {
            parts.push(format!("kind={}", encode(k)));
        }
        if let Some(l) = self.limit {
            parts.push(format!("limit={l}"));
        }
        if let Some(w) = self.wait {
            parts.push(format!("wait={w}"));
        }
        if parts.is_empty() {
            "/v1/events".to_string()
        } else {
            format!("/v1/events?{}", parts.join("&"))
        }
    }
}

/// Percent-encodes what a query value may not hold as is.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b',' | b':' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// The routes; the caller adds authorization.
pub(crate) fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/v1/events", get(events))
        .route("/v1/report", get(report))
}

async fn events(
    State(node): State<Arc<Node>>,
    Query(q): Query<EventsQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let query = q.to_query().map_err(NodeError::Invalid)?;
    let log = node.events();
    let mut found = log.query(&query);
    if found.is_empty() {
        if let Some(wait) = q.wait.filter(|&w| w > 0) {
            let wait = Duration::from_secs(wait).min(MAX_WAIT);
            let deadline = tokio::time::Instant::now() + wait;
            let mut after = log.all().last().map_or(0, |e| e.seq);
            while found.is_empty() && tokio::time::Instant::now() < deadline {
                log.wait_after(after, deadline - tokio::time::Instant::now())
                    .await;
                after = log.all().last().map_or(after, |e| e.seq);
                found = log.query(&query);
            }
        }
    }
    Ok(Json(found))
}

async fn report(State(node): State<Arc<Node>>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(node.report().await))
}

impl ApiClient {
    /// `GET /v1/events`.
    pub async fn events(&self, q: &EventsQuery) -> Result<Vec<Event>, ClientError> {
        let v = self.call::<(), _>(Method::GET, &q.to_url(), None).await?;
        self.expect(v)
    }

    /// `GET /v1/report`.
    pub async fn report(&self) -> Result<Report, ClientError> {
        let v = self.call::<(), _>(Method::GET, "/v1/report", None).await?;
        self.expect(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_names_its_kinds_and_says_which_exist() {
        let q = EventsQuery {
            kind: Some("failover, resync-end".into()),
            limit: Some(5),
            ..Default::default()
        };
        let query = q.to_query().unwrap();
        assert_eq!(query.kinds, [EventKind::Failover, EventKind::ResyncEnd]);
        assert_eq!(query.limit, Some(5));
        let err = EventsQuery {
            kind: Some("failovers".into()),
            ..Default::default()
        }
        .to_query()
        .unwrap_err();
        assert!(
            err.contains("failovers") && err.contains("resync-start"),
            "{err}"
        );
        assert!(EventsQuery {
            since: Some("soon".into()),
            ..Default::default()
        }
        .to_query()
        .is_err());
    }

    #[test]
    fn a_query_goes_into_the_url_encoded() {
        let q = EventsQuery {
            since: Some("2026-11-30T14:05:00Z".into()),
            after: Some(7),
            kind: Some("failover".into()),
            limit: None,
            wait: Some(10),
        };
        assert_eq!(
            q.to_url(),
            "/v1/events?since=2026-11-30T14:05:00Z&after=7&kind=failover&wait=10"
        );
        assert_eq!(EventsQuery::default().to_url(), "/v1/events");
        assert_eq!(encode("a b+c"), "a%20b%2Bc");
    }
}
