//! The join token: `tandem-join:<cluster id>:<secret hex>`.

use uuid::Uuid;

use crate::{ClusterError, Key};

/// The join token format: `tandem-join:<cluster id>:<secret hex>`.
pub fn join_token(cluster_id: Uuid, key: &Key) -> String {
    format!("tandem-join:{cluster_id}:{}", hex::encode(key.bytes()))
}

pub(crate) fn parse_token(token: &str) -> Result<(Uuid, Key), ClusterError> {
    let mut parts = token.trim().splitn(3, ':');
    if parts.next() != Some("tandem-join") {
        return Err(ClusterError::BadToken);
    }
    let id = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(ClusterError::BadToken)?;
    let key = parts
        .next()
        .and_then(|s| hex::decode(s).ok())
        .filter(|k| k.len() >= 16)
        .ok_or(ClusterError::BadToken)?;
    Ok((id, Key::from_bytes(key)))
}
