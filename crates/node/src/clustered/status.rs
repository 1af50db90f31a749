//! What this node reports of the cluster volumes it presents: how far each
//! copy is behind the primary, and when this node acknowledged writes as a
//! primary. The types are the node's own, so that the API shows the
//! service layer's view rather than the replication engine's; they are
//! what the API sends, as [`crate::VolumeInfo`] is.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Node;

/// One copy of a volume on another node, as this node (its primary) sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Id of the node that holds the copy.
    pub node: u64,
    /// Whether the copy holds every acknowledged write; in JSON
    /// `"in-sync"`, `"syncing"` or `"out-of-sync"`.
    pub state: PeerState,
    /// Whether a connection to the copy is up.
    pub connected: bool,
    /// Bytes the copy is known to miss.
    pub dirty_bytes: u64,
    /// Bytes copied by the running resync.
    pub resync_done: u64,
    /// Bytes the running resync set out to copy.
    pub resync_total: u64,
    /// Bytes the running (or the last) resync sent as data.
    #[serde(default)]
    pub resync_data_bytes: u64,
    /// Bytes the running (or the last) resync unmapped on the copy without
    /// reading them (blocks never written here).
    #[serde(default)]
    pub resync_unmapped_bytes: u64,
    /// Bytes the running resync copies a second, lately; 0 when none runs.
    #[serde(default)]
    pub resync_rate: u64,
    /// Bytes a second the running resync is held to while it yields to
    /// client writes; `None` when it is not held.
    #[serde(default)]
    pub resync_limit: Option<u64>,
    /// Whether the running resync yields to client writes now.
    #[serde(default)]
    pub resync_yielding: bool,
    /// Round trips of the I/O requests sent to the copy (the metrics show
    /// them; not in JSON).
    #[serde(skip)]
    pub round_trips: scsi::stats::HistogramSnapshot,
    /// Why the copy is detached and tried again only after a wait: "disk
    /// failed: ..." (what its storage said) or "too slow: ..."; `None`
    /// while it works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detached: Option<String>,
}

impl PeerStatus {
    /// Whether the copy holds every acknowledged write, with nothing left
    /// to reconcile.
    pub fn in_sync(&self) -> bool {
        self.state == PeerState::InSync
    }
}

/// How far a copy is from its primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerState {
    /// Holds every acknowledged write, with nothing left to reconcile.
    InSync,
    /// Catching up (also an in-sync copy reconciling regions written
    /// before the last stop).
    Syncing,
    /// Recorded as missing writes, or being recorded so.
    OutOfSync,
}

impl PeerState {
    /// The name status displays use (the same as in JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::InSync => "in-sync",
            PeerState::Syncing => "syncing",
            PeerState::OutOfSync => "out-of-sync",
        }
    }
}

impl std::fmt::Display for PeerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When this node acknowledged writes of a volume as its primary, in one
/// primary role. Times are wall-clock microseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckWindow {
    /// Epoch the writes were acknowledged under.
    pub epoch: u64,
    /// Writes acknowledged.
    pub writes: u64,
    /// First acknowledgement.
    pub first_us: u64,
    /// Last acknowledgement.
    pub last_us: u64,
}

/// How the replication engine's view of a peer is shown.
fn peer_status(p: replica::PeerStatus) -> PeerStatus {
    PeerStatus {
        node: p.node,
        state: match p.state {
            replica::PeerState::InSync => PeerState::InSync,
            replica::PeerState::Syncing => PeerState::Syncing,
            // A status never shows a copy being lost: it shows it out of sync.
            replica::PeerState::OutOfSync | replica::PeerState::Losing => PeerState::OutOfSync,
        },
        connected: p.connected,
        dirty_bytes: p.dirty_bytes,
        resync_done: p.resync_done,
        resync_total: p.resync_total,
        resync_data_bytes: p.resync_data_bytes,
        resync_unmapped_bytes: p.resync_unmapped_bytes,
        resync_rate: p.resync_rate,
        resync_limit: p.resync_limit,
        resync_yielding: p.resync_yielding,
        round_trips: p.round_trips,
        detached: p.detached,
    }
}

fn ack_window(w: replica::AckWindow) -> AckWindow {
    AckWindow {
        epoch: w.epoch,
        writes: w.writes,
        first_us: w.first_us,
        last_us: w.last_us,
    }
}

impl Node {
    /// Replication status of the volumes this node is primary of.
    pub async fn peer_status(&self) -> BTreeMap<String, Vec<PeerStatus>> {
        let vols = self.exported.lock().await;
        vols.presented()
            .filter_map(|(e, p)| {
                let peers = p.volume.primary()?.peer_status();
                Some((e.name.clone(), peers.into_iter().map(peer_status).collect()))
            })
            .collect()
    }

    /// Per cluster volume presented here: when this node acknowledged
    /// writes as its primary.
    pub async fn acknowledged(&self) -> BTreeMap<String, Vec<AckWindow>> {
        let vols = self.exported.lock().await;
        vols.presented()
            .map(|(e, p)| (e.name.clone(), p.volume.acknowledged()))
            .filter(|(_, w)| !w.is_empty())
            .map(|(name, w)| (name, w.into_iter().map(ack_window).collect()))
            .collect()
    }
}
