//! What this node reports of the cluster volumes it presents: how far each
//! copy is behind the primary, and when this node acknowledged writes as a
//! primary.

use std::collections::BTreeMap;

use crate::Node;

impl Node {
    /// Replication status of the volumes this node is primary of.
    pub async fn peer_status(&self) -> BTreeMap<String, Vec<replica::PeerStatus>> {
        let vols = self.exported.lock().await;
        vols.presented()
            .filter_map(|(e, p)| Some((e.name.clone(), p.volume.primary()?.peer_status())))
            .collect()
    }

    /// Per cluster volume presented here: when this node acknowledged
    /// writes as its primary.
    pub async fn acknowledged(&self) -> BTreeMap<String, Vec<replica::AckWindow>> {
        let vols = self.exported.lock().await;
        vols.presented()
            .map(|(e, p)| (e.name.clone(), p.volume.acknowledged()))
            .filter(|(_, w)| !w.is_empty())
            .collect()
    }
}
