//! Access rules as the cluster state records them: read with this data
//! node's key, sealed where an older node left secrets in clear, and
//! replaced on every node.

use std::sync::Arc;

use cluster::Command;

use super::{Clustered, DATA_KEY_TIMEOUT, RECORD_TIMEOUT};
use crate::{Node, NodeError};

/// The access rules the cluster records for `v`, secrets opened with this
/// data node's key.
pub(super) fn access_of(
    c: &Clustered,
    v: &cluster::VolumeRecord,
) -> Result<crate::AccessConfig, NodeError> {
    match &v.access {
        None => Ok(crate::AccessConfig::default()),
        Some(record) => {
            crate::AccessConfig::from_record(record, c.cluster.data_key().as_ref(), v.id).map_err(
                |e| {
                    NodeError::Cluster(format!(
                        "volume {}: the access rules in the cluster state: {e}",
                        v.name
                    ))
                },
            )
        }
    }
}

/// This data node's data key, waiting a little for it (a node that just
/// joined or started fetches it from another data node).
async fn data_key(c: &Clustered) -> Result<cluster::DataKey, NodeError> {
    c.cluster
        .wait_data_key(DATA_KEY_TIMEOUT)
        .await
        .ok_or_else(|| {
            NodeError::Cluster(
                "this node has not received the cluster's data key yet; try again".into(),
            )
        })
}

/// Seals the CHAP secrets of `v` that the state holds in clear (recorded
/// by a node from before secrets were sealed): done by the volume's
/// primary, once it holds the data key; tried again at the next reconcile
/// if it fails.
/// Starts [`reseal`] in the background when `v`'s rules still hold a clear
/// secret (once at a time per volume): it waits for a quorum, and the
/// reconcile that calls this holds the node's registry.
pub(super) fn reseal_soon(c: &Arc<Clustered>, v: &cluster::VolumeRecord) {
    let clear = v
        .access
        .as_deref()
        .is_some_and(crate::AccessConfig::record_has_clear_secret);
    if !clear || !c.sealing.lock().unwrap().insert(v.name.clone()) {
        return;
    }
    let (c, v) = (c.clone(), v.clone());
    tokio::spawn(async move {
        reseal(&c, &v).await;
        c.sealing.lock().unwrap().remove(&v.name);
    });
}

pub(super) async fn reseal(c: &Clustered, v: &cluster::VolumeRecord) {
    let Some(record) = v.access.as_deref() else {
        return;
    };
    if !crate::AccessConfig::record_has_clear_secret(record) || !c.cluster.lease_valid() {
        return;
    }
    let Some(key) = c.cluster.data_key() else {
        return;
    };
    let Ok(rules) = crate::AccessConfig::from_record(record, Some(&key), v.id) else {
        return;
    };
    let cmd = Command::ResealAccess {
        volume: v.name.clone(),
        replaces: cluster::access_digest(record),
        access: match rules.to_record(Some(&key), v.id) {
            Ok(sealed) => sealed,
            Err(_) => return,
        },
    };
    match tokio::time::timeout(RECORD_TIMEOUT, c.cluster.propose(cmd)).await {
        Ok(Ok(())) => tracing::info!(volume = %v.name, "CHAP secrets in the cluster state sealed"),
        Ok(Err(e)) => tracing::warn!(volume = %v.name, "sealing the CHAP secrets: {e}"),
        Err(_) => tracing::warn!(volume = %v.name, "sealing the CHAP secrets: no answer"),
    }
}

impl Node {
    /// Replaces the access rules of cluster volume `name` on every node.
    pub(crate) async fn set_access_clustered(
        &self,
        c: &Arc<Clustered>,
        name: &str,
        access: &crate::AccessConfig,
    ) -> Result<(), NodeError> {
        let id = c
            .cluster
            .state()
            .volumes
            .get(name)
            .map(|v| v.id)
            .ok_or_else(|| NodeError::NotFound(name.to_string()))?;
        let json = if *access == crate::AccessConfig::default() {
            None
        } else {
            // Only rules with CHAP secrets need the data key.
            let key = match access.chap {
                Some(_) => Some(data_key(c).await?),
                None => None,
            };
            let record = access
                .to_record(key.as_ref(), id)
                .map_err(|e| NodeError::Cluster(format!("volume {name}: access rules: {e}")))?;
            Some(record)
        };
        self.change(
            c,
            Command::SetAccess {
                volume: name.to_string(),
                access: json,
            },
        )
        .await
    }
}
