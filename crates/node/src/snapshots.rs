//! Snapshots, clones and rollback of the volumes of this node
//! (docs/snapshots.md): names and sessions checked here, the work done by
//! the store.

use serde::{Deserialize, Serialize};
use store::{SnapshotInfo, SnapshotSpace};

use crate::{Node, NodeError, VolumeInfo};

/// What an administrator sees of one snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotView {
    /// The volume it is a snapshot of.
    pub volume: String,
    /// Its name, unique on the volume.
    pub name: String,
    /// Stable id.
    pub id: String,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// The volume's size when it was taken.
    pub size_bytes: u64,
    /// Bytes of data the snapshot keeps in its own files.
    pub kept_bytes: u64,
    /// Of those, what deleting it frees.
    pub exclusive_bytes: u64,
    /// Deleted, kept only while clones read from it.
    pub hidden: bool,
    /// The consistency group it was taken in.
    #[serde(default)]
    pub group: Option<String>,
    /// Clones made from it.
    #[serde(default)]
    pub clones: Vec<String>,
}

/// What deleting a snapshot did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotDeleted {
    /// Clones still read from the snapshot: it is hidden, and freed when
    /// the last of them is deleted. Empty: its space is free now.
    pub kept_for_clones: Vec<String>,
}

/// Seconds since the Unix epoch as a UTC date and time: year, month, day,
/// hour, minute, second (proleptic Gregorian calendar).
pub fn utc_time(secs: u64) -> [u64; 6] {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    [
        y as u64,
        m as u64,
        d as u64,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
    ]
}

/// A default snapshot name: `snap-YYYYMMDD-HHMMSS` (UTC).
fn default_name(secs: u64) -> String {
    let [y, m, d, h, mi, s] = utc_time(secs);
    format!("snap-{y:04}{m:02}{d:02}-{h:02}{mi:02}{s:02}")
}

impl Node {
    /// Refuses a volume the cluster holds, for what only this node's own
    /// volumes have (`what`: clones and rollback).
    fn refuse_cluster_volume(&self, name: &str, what: &str) -> Result<(), NodeError> {
        if self.cluster_volume(name).is_some() || self.is_cluster_copy(name) {
            return Err(NodeError::Invalid(format!(
                "volume {name} is a cluster volume: {what} of cluster volumes is not supported yet (docs/snapshots.md)"
            )));
        }
        if self.store.get(name).is_none() {
            return Err(NodeError::NotFound(name.to_string()));
        }
        Ok(())
    }

    /// Takes a snapshot of each volume named, all at one point of their
    /// write orders (a consistency group when there are several). Without
    /// a name, one is made from the time.
    pub async fn create_snapshots(
        &self,
        volumes: &[String],
        name: Option<&str>,
        group: Option<&str>,
    ) -> Result<Vec<SnapshotView>, NodeError> {
        if volumes.is_empty() {
            return Err(NodeError::Invalid("name at least one volume".into()));
        }
        let clustered = volumes
            .iter()
            .filter(|v| self.cluster_volume(v).is_some())
            .count();
        if clustered == 0 {
            for v in volumes {
                self.refuse_cluster_volume(v, "this")?;
            }
        } else if clustered < volumes.len() {
            return Err(NodeError::Invalid(
                "a consistency group is of cluster volumes or of this node's own volumes, not both"
                    .into(),
            ));
        }
        let name = match name {
            Some(n) => n.to_string(),
            None => default_name(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            ),
        };
        if volumes.len() > 1 && group.is_none() {
            tracing::info!(
                volumes = volumes.len(),
                "several volumes: taken as a consistency group named after the snapshot"
            );
        }
        if clustered > 0 {
            return self.create_cluster_snapshots(volumes, &name, group).await;
        }
        // Serialized with volume deletes and other catalog changes.
        let _catalog = self.exported.lock().await;
        let taken = self.store.take_snapshots(volumes, &name, group).await?;
        crate::event_watch::snapshots_taken(&self.events, &taken);
        Ok(taken
            .into_iter()
            .map(|(volume, info)| self.view(&volume, info, SnapshotSpace::default()))
            .collect())
    }

    fn view(&self, volume: &str, s: SnapshotInfo, space: SnapshotSpace) -> SnapshotView {
        SnapshotView {
            volume: volume.to_string(),
            clones: self.store.clones_of_snapshot(volume, s.id),
            name: s.name,
            id: s.id.to_string(),
            created: s.created,
            size_bytes: s.size_bytes,
            kept_bytes: space.kept_bytes,
            exclusive_bytes: space.exclusive_bytes,
            hidden: s.hidden,
            group: s.group,
        }
    }

    /// The snapshots of one volume, or of every volume, with their space,
    /// oldest first per volume.
    pub async fn list_snapshots(
        &self,
        volume: Option<&str>,
    ) -> Result<Vec<SnapshotView>, NodeError> {
        let (names, cluster): (Vec<String>, Vec<cluster::VolumeRecord>) = match volume {
            Some(v) => match self.cluster_volume(v) {
                Some(r) => (Vec::new(), vec![r]),
                None => {
                    self.refuse_cluster_volume(v, "this")?;
                    (vec![v.to_string()], Vec::new())
                }
            },
            None => (
                self.store
                    .list()
                    .into_iter()
                    .map(|m| m.name)
                    .filter(|n| self.refuse_cluster_volume(n, "this").is_ok())
                    .collect(),
                self.clustered()
                    .map(|c| c.cluster().state().volumes.values().cloned().collect())
                    .unwrap_or_default(),
            ),
        };
        let mut out = Vec::new();
        for v in &cluster {
            out.extend(self.cluster_snapshots(v).await);
        }
        for v in names {
            for (s, space) in self.store.snapshot_space(&v).await? {
                out.push(self.view(&v, s, space));
            }
        }
        Ok(out)
    }

    /// One snapshot.
    pub async fn snapshot(&self, volume: &str, name: &str) -> Result<SnapshotView, NodeError> {
        let id = match self.cluster_volume(volume) {
            Some(v) => v
                .snapshots
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.id.to_string()),
            None => Some(self.store.find_snapshot(volume, name)?.id.to_string()),
        };
        self.list_snapshots(Some(volume))
            .await?
            .into_iter()
            .find(|v| Some(&v.id) == id.as_ref())
            .ok_or_else(|| {
                NodeError::Store(store::StoreError::SnapshotNotFound {
                    volume: volume.to_string(),
                    name: name.to_string(),
                })
            })
    }

    /// Deletes a snapshot. One that clones read from is hidden and freed
    /// with its last clone; the answer names those clones.
    pub async fn delete_snapshot(
        &self,
        volume: &str,
        name: &str,
    ) -> Result<SnapshotDeleted, NodeError> {
        if let Some(v) = self.cluster_volume(volume) {
            return self.delete_cluster_snapshot(&v, name).await;
        }
        self.refuse_cluster_volume(volume, "this")?;
        let _catalog = self.exported.lock().await;
        let kept_for_clones = self.store.delete_snapshot(volume, name).await?;
        crate::event_watch::snapshot_deleted(&self.events, volume, name);
        Ok(SnapshotDeleted { kept_for_clones })
    }

    /// Makes a writable volume `new` from a snapshot of `source` (or, with
    /// no snapshot named, from `source` as it is now), exported at once
    /// with an identity of its own.
    pub async fn clone_volume(
        &self,
        source: &str,
        snapshot: Option<&str>,
        new: &str,
    ) -> Result<VolumeInfo, NodeError> {
        if let Some(v) = self.cluster_volume(source) {
            self.clone_cluster_volume(&v, snapshot, new).await?;
            return match self.volume(new).await {
                Ok(info) => Ok(info),
                // Placed on other nodes only: described from the cluster state.
                Err(NodeError::NotFound(_)) => match self.clustered() {
                    Some(c) => Ok(self.remote_info(&c, new)),
                    None => Err(NodeError::NotFound(new.to_string())),
                },
                Err(e) => Err(e),
            };
        }
        self.refuse_cluster_volume(source, "cloning")?;
        if self
            .clustered()
            .is_some_and(|c| c.cluster().state().volumes.contains_key(new))
        {
            return Err(NodeError::Store(store::StoreError::Exists(new.to_string())));
        }
        let mut exported = self.exported.lock().await;
        let meta = self.store.clone_volume(source, snapshot, new).await?;
        let e = match self.export(&meta) {
            Ok(e) => e,
            Err(err) => {
                let _ = self.store.delete(new);
                return Err(err);
            }
        };
        let info = self.info(new, &e);
        exported.insert(e);
        Ok(info)
    }

    /// Makes a volume's content a snapshot's again. Refused while
    /// initiators are logged in unless `force`, which logs them out first
    /// (they may log in again once it is done).
    pub async fn rollback_volume(
        &self,
        volume: &str,
        snapshot: &str,
        force: bool,
    ) -> Result<(), NodeError> {
        self.refuse_cluster_volume(volume, "rollback")?;
        let exported = self.exported.lock().await;
        let e = exported
            .get(volume)
            .ok_or_else(|| NodeError::NotFound(volume.to_string()))?;
        self.store.find_snapshot(volume, snapshot)?;
        let sessions = self.local_sessions(e);
        if !sessions.is_empty() && !force {
            return Err(NodeError::Busy {
                name: volume.to_string(),
                sessions,
                what: "roll back",
            });
        }
        if !sessions.is_empty() {
            tracing::warn!(
                volume,
                sessions = sessions.len(),
                "logging initiators out for a forced rollback"
            );
        }
        // Out of sight meanwhile: sessions end, new logins find no target.
        self.targets.remove(&e.iqn);
        let rolled = self.store.rollback(volume, snapshot).await;
        self.targets
            .insert_with_access(e.iqn.clone(), e.lun.clone(), e.access.target_access());
        rolled?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::default_name;

    #[test]
    fn default_names_read_as_utc_dates() {
        assert_eq!(default_name(0), "snap-19700101-000000");
        assert_eq!(default_name(951_782_400), "snap-20000229-000000");
        assert_eq!(default_name(1_796_000_059), "snap-20261130-005419");
    }
}
