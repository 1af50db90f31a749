use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::dirty_map::DirtyMap;
use crate::durable::{sync_dir, write_atomic, write_atomic_mode};
use crate::snapshots::{DirShelf, OriginRef, SnapshotInfo};
use crate::{LocalVolume, StoreError, VolumeFiles, REGION_BYTES};

/// The checksum sidecar of a volume's data file.
const SUMS: &str = "data.crc32c";
/// The dirty-region bitmap of a volume's data file.
const DIRTY: &str = "data.dirty";
/// A clone's map of the grains it holds itself.
const HELD: &str = "data.held";
/// Where a volume's snapshots live.
const SNAPSHOTS: &str = "snapshots";

/// What the store records about one volume.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeMeta {
    /// Stable id; names the volume's directory and seeds its SCSI identity.
    pub id: Uuid,
    /// Unique name, part of the volume's IQN.
    pub name: String,
    /// Size in bytes, a multiple of `block_size`.
    pub size_bytes: u64,
    /// Logical block size: 512 or 4096.
    pub block_size: u32,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// A clone's source: the volume and the snapshot it started as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<OriginRef>,
}

impl VolumeMeta {
    /// The metadata of a volume kept in memory only (over simulated disks).
    pub(crate) fn simulated(block_size: u32, num_blocks: u64) -> VolumeMeta {
        VolumeMeta {
            id: Uuid::nil(),
            name: "simulated".into(),
            size_bytes: num_blocks * block_size as u64,
            block_size,
            created: 0,
            origin: None,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Installation {
    id: Uuid,
}

/// A data directory of volumes. One `Store` per directory per machine: the
/// directory is locked while the store is open.
pub struct Store {
    dir: PathBuf,
    _lock: File,
    installation: Uuid,
    catalog: Mutex<Catalog>,
}

#[derive(Default)]
struct Catalog {
    metas: BTreeMap<String, VolumeMeta>,
    open: HashMap<String, Arc<LocalVolume>>,
}

/// Checks a volume's size and block size: 512 or 4096-byte blocks, a
/// positive whole number of them, no larger than a file can be.
pub fn validate_geometry(size_bytes: u64, block_size: u32) -> Result<(), StoreError> {
    if block_size != 512 && block_size != 4096 {
        return Err(StoreError::InvalidSize(format!(
            "block size {block_size} is not supported; use 512 or 4096"
        )));
    }
    if size_bytes == 0 || !size_bytes.is_multiple_of(block_size as u64) {
        return Err(StoreError::InvalidSize(format!(
            "size {size_bytes} bytes is not a positive multiple of the {block_size}-byte block size"
        )));
    }
    if size_bytes > i64::MAX as u64 {
        return Err(StoreError::InvalidSize(format!(
            "size {size_bytes} bytes is larger than a file can be"
        )));
    }
    Ok(())
}

/// Checks a snapshot name: the rules of volume names.
pub fn validate_snapshot_name(name: &str) -> Result<(), StoreError> {
    validate_name(name).map_err(|e| match e {
        StoreError::InvalidName { name, why } => {
            StoreError::Snapshot(format!("snapshot name {name:?} is invalid: {why}"))
        }
        e => e,
    })
}

/// Checks a volume name: `[a-z0-9][a-z0-9.-]{0,62}` (it becomes part of an IQN).
pub fn validate_name(name: &str) -> Result<(), StoreError> {
    let bad = |why| {
        Err(StoreError::InvalidName {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() || name.len() > 63 {
        return bad("it must be 1 to 63 characters long");
    }
    let first = name.as_bytes()[0];
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return bad("it must start with a lowercase letter or a digit");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return bad("only a-z, 0-9, '.' and '-' are allowed");
    }
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the data directory `dir` and locks it.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join("volumes"))
            .map_err(StoreError::io("cannot create data directory", dir))?;
        let lock_path = dir.join("tandem.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(StoreError::io("cannot open lock file", &lock_path))?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Locked(dir.to_path_buf()));
        }

        let inst_path = dir.join("installation.json");
        let installation = match fs::read(&inst_path) {
            Ok(bytes) => {
                serde_json::from_slice::<Installation>(&bytes)
                    .map_err(|source| StoreError::BadMeta {
                        path: inst_path.clone(),
                        source,
                    })?
                    .id
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = Uuid::new_v4();
                let json = serde_json::to_vec_pretty(&Installation { id }).expect("serializes");
                write_atomic(&inst_path, &json)?;
                tracing::info!(installation = %id, dir = %dir.display(), "new installation");
                id
            }
            Err(e) => return Err(StoreError::io("cannot read", &inst_path)(e)),
        };

        let store = Store {
            dir: dir.to_path_buf(),
            _lock: lock,
            installation,
            catalog: Mutex::new(Catalog::default()),
        };
        store.load()?;
        Ok(store)
    }

    fn volumes_dir(&self) -> PathBuf {
        self.dir.join("volumes")
    }

    fn load(&self) -> Result<(), StoreError> {
        let vdir = self.volumes_dir();
        let entries = fs::read_dir(&vdir).map_err(StoreError::io("cannot list", &vdir))?;
        let mut cat = self.catalog.lock().unwrap();
        for entry in entries {
            let entry = entry.map_err(StoreError::io("cannot list", &vdir))?;
            let path = entry.path();
            let fname = entry.file_name().to_string_lossy().into_owned();
            if fname.ends_with(".deleting") {
                tracing::info!(path = %path.display(), "finishing an interrupted volume deletion");
                fs::remove_dir_all(&path).map_err(StoreError::io("cannot remove", &path))?;
                continue;
            }
            let meta_path = path.join("meta.json");
            let bytes = match fs::read(&meta_path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // Create writes meta.json last: without it, creation never finished.
                    tracing::warn!(path = %path.display(), "removing a volume whose creation did not finish");
                    fs::remove_dir_all(&path).map_err(StoreError::io("cannot remove", &path))?;
                    continue;
                }
                Err(e) => return Err(StoreError::io("cannot read", &meta_path)(e)),
            };
            let meta: VolumeMeta =
                serde_json::from_slice(&bytes).map_err(|source| StoreError::BadMeta {
                    path: meta_path.clone(),
                    source,
                })?;
            cat.metas.insert(meta.name.clone(), meta);
        }
        sync_dir(&vdir)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// This installation's UUID (created at first open, never changes).
    pub fn installation_id(&self) -> Uuid {
        self.installation
    }

    /// Every volume, sorted by name.
    pub fn list(&self) -> Vec<VolumeMeta> {
        let cat = self.catalog.lock().unwrap();
        cat.metas
            .keys()
            .map(|name| Self::current_meta(&cat, name))
            .collect()
    }

    fn current_meta(cat: &Catalog, name: &str) -> VolumeMeta {
        match cat.open.get(name) {
            Some(v) => v.meta(),
            None => cat.metas[name].clone(),
        }
    }

    /// One volume's metadata.
    pub fn get(&self, name: &str) -> Option<VolumeMeta> {
        let cat = self.catalog.lock().unwrap();
        cat.metas
            .contains_key(name)
            .then(|| Self::current_meta(&cat, name))
    }

    /// Creates an empty thin volume.
    pub fn create(
        &self,
        name: &str,
        size_bytes: u64,
        block_size: u32,
    ) -> Result<VolumeMeta, StoreError> {
        self.create_with_id(name, size_bytes, block_size, Uuid::new_v4())
    }

    /// Creates a volume with a given id (a cluster volume's copy keeps the
    /// cluster-wide id, which seeds its SCSI identity).
    pub fn create_with_id(
        &self,
        name: &str,
        size_bytes: u64,
        block_size: u32,
        id: Uuid,
    ) -> Result<VolumeMeta, StoreError> {
        validate_name(name)?;
        validate_geometry(size_bytes, block_size)?;
        let mut cat = self.catalog.lock().unwrap();
        if cat.metas.contains_key(name) {
            return Err(StoreError::Exists(name.to_string()));
        }
        let meta = VolumeMeta {
            id,
            name: name.to_string(),
            size_bytes,
            block_size,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            origin: None,
        };
        self.make_volume(&mut cat, meta)
    }

    /// Writes a new volume's files, `meta.json` last.
    fn make_volume(&self, cat: &mut Catalog, meta: VolumeMeta) -> Result<VolumeMeta, StoreError> {
        let (size_bytes, block_size, name) = (meta.size_bytes, meta.block_size, meta.name.clone());
        let vdir = self.volumes_dir().join(meta.id.to_string());
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&vdir)
            .map_err(StoreError::io("cannot create volume directory", &vdir))?;
        let data = vdir.join("data");
        let f = File::create(&data).map_err(StoreError::io("cannot create", &data))?;
        f.set_len(size_bytes)
            .map_err(StoreError::io("cannot size", &data))?;
        f.sync_all().map_err(StoreError::io("cannot sync", &data))?;
        let sums = vdir.join(SUMS);
        let s = File::create(&sums).map_err(StoreError::io("cannot create", &sums))?;
        // A sparse sidecar: every entry 0, "unwritten", like the data.
        s.set_len(size_bytes / block_size as u64 * 4)
            .map_err(StoreError::io("cannot size", &sums))?;
        s.sync_all().map_err(StoreError::io("cannot sync", &sums))?;
        let dirty = vdir.join(DIRTY);
        let d = File::create(&dirty).map_err(StoreError::io("cannot create", &dirty))?;
        DirtyMap::create(&d, size_bytes, REGION_BYTES.trailing_zeros())
            .map_err(StoreError::io("cannot write", &dirty))?;
        if meta.origin.is_some() {
            let held = vdir.join(HELD);
            let h = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&held)
                .map_err(StoreError::io("cannot create", &held))?;
            crate::snapshots::grain_map(h, size_bytes)
                .map_err(StoreError::io("cannot write", &held))?;
        }
        // meta.json last: a volume exists once its metadata is durable.
        let json = serde_json::to_vec_pretty(&meta).expect("metadata serializes");
        write_atomic(&vdir.join("meta.json"), &json)?;
        sync_dir(&self.volumes_dir())?;
        cat.metas.insert(name, meta.clone());
        Ok(meta)
    }

    /// Directory of a volume's files (data, metadata, and what other layers keep beside them).
    pub fn volume_dir(&self, name: &str) -> Option<PathBuf> {
        self.get(name)
            .map(|m| self.volumes_dir().join(m.id.to_string()))
    }

    /// Opens a volume for I/O; every caller gets the same handle.
    pub fn open_volume(&self, name: &str) -> Result<Arc<LocalVolume>, StoreError> {
        let mut cat = self.catalog.lock().unwrap();
        self.open_locked(&mut cat, name)
    }

    fn open_locked(&self, cat: &mut Catalog, name: &str) -> Result<Arc<LocalVolume>, StoreError> {
        if let Some(v) = cat.open.get(name) {
            return Ok(v.clone());
        }
        let meta = cat
            .metas
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(name.to_string()))?;
        let vdir = self.volumes_dir().join(meta.id.to_string());
        let data = vdir.join("data");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&data)
            .map_err(StoreError::io("cannot open", &data))?;
        let len = f
            .metadata()
            .map_err(StoreError::io("cannot stat", &data))?
            .len();
        if len < meta.size_bytes {
            // A crash between growing the file and the metadata cannot shrink it,
            // but a damaged or copied file might: refuse rather than serve garbage.
            f.set_len(meta.size_bytes)
                .map_err(StoreError::io("cannot size", &data))?;
        }
        let sums_path = vdir.join(SUMS);
        // A volume from before checksums has no sidecar: start it empty and
        // drop any bitmap, so the volume computes every checksum at open.
        let upgrade = !sums_path.exists();
        let open_rw = |path: &Path, truncate: bool| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(truncate)
                .open(path)
                .map_err(StoreError::io("cannot open", path))
        };
        let sums = open_rw(&sums_path, false)?;
        // Checksums are read and written a few bytes per block: readahead
        // would only make every later write into them slower.
        if let Err(e) = durable::read_at_random(&sums) {
            tracing::debug!(path = %sums_path.display(), "no readahead advice: {e}");
        }
        let dirty = open_rw(&vdir.join(DIRTY), upgrade)?;
        let files = VolumeFiles {
            data: f,
            sums,
            dirty,
        };
        let origin = match meta.origin {
            None => None,
            Some(o) => {
                let source = cat
                    .metas
                    .values()
                    .find(|m| m.id == o.volume)
                    .map(|m| m.name.clone())
                    .ok_or_else(|| {
                        StoreError::Snapshot(format!("the source volume of clone {name} is gone"))
                    })?;
                let source = self.open_locked(cat, &source)?;
                let held_path = vdir.join(HELD);
                let held = open_rw(&held_path, false)?;
                Some(
                    source
                        .origin_for(o.snapshot, held, meta.size_bytes)
                        .map_err(StoreError::io("cannot open the grain map", &held_path))?,
                )
            }
        };
        let shelf = Box::new(DirShelf::new(vdir.join(SNAPSHOTS)));
        let id = meta.id;
        let v = LocalVolume::with_snapshots(files, meta, vdir.join("meta.json"), shelf, origin)
            .map_err(StoreError::io("cannot open", &vdir))?;
        for s in v.snapshots().into_iter().filter(|s| s.hidden) {
            if Self::clones_of(cat, id, Some(s.id)).is_empty() {
                tracing::info!(volume = name, snapshot = %s.name, "freeing a hidden snapshot no clone reads from (left by an interrupted delete)");
                v.delete_snapshot_now(s.id)?;
            }
        }
        let v = Arc::new(v);
        cat.open.insert(name.to_string(), v.clone());
        Ok(v)
    }

    /// Deletes a volume and its data; open handles fail further I/O with
    /// `Closed`. Refused while clones read from it.
    pub fn delete(&self, name: &str) -> Result<(), StoreError> {
        let mut cat = self.catalog.lock().unwrap();
        let meta = cat
            .metas
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(name.to_string()))?;
        let clones = Self::clones_of(&cat, meta.id, None);
        if !clones.is_empty() {
            return Err(StoreError::HasClones {
                volume: name.to_string(),
                clones: clones.join(", "),
            });
        }
        if let Some(v) = cat.open.remove(name) {
            v.close();
        }
        let vdir = self.volumes_dir().join(meta.id.to_string());
        let tomb = self.volumes_dir().join(format!("{}.deleting", meta.id));
        fs::rename(&vdir, &tomb).map_err(StoreError::io("cannot retire", &vdir))?;
        // The rename is the deletion: once durable, the volume is gone even if
        // removing its files is interrupted (the next open finishes it).
        sync_dir(&self.volumes_dir())?;
        cat.metas.remove(name);
        let source = meta.origin.and_then(|o| {
            cat.metas
                .values()
                .find(|m| m.id == o.volume)
                .map(|m| m.name.clone())
        });
        drop(cat);
        fs::remove_dir_all(&tomb).map_err(StoreError::io("cannot remove", &tomb))?;
        if let Some(source) = source {
            // A hidden snapshot kept for this clone alone goes with it.
            if let Err(e) = self.drop_unused_hidden(&source) {
                tracing::warn!(volume = %source, error = %e, "cannot free a hidden snapshot; the next start frees it");
            }
        }
        Ok(())
    }

    /// Names of the clones of volume `id` (of one of its snapshots only, with `snapshot`).
    fn clones_of(cat: &Catalog, id: Uuid, snapshot: Option<Uuid>) -> Vec<String> {
        cat.metas
            .values()
            .filter(|m| {
                m.origin
                    .is_some_and(|o| o.volume == id && snapshot.is_none_or(|s| s == o.snapshot))
            })
            .map(|m| m.name.clone())
            .collect()
    }

    /// For a clone, `volume@snapshot` it was made from (the snapshot may be
    /// hidden since).
    pub fn clone_origin(&self, name: &str) -> Option<String> {
        let o = self.get(name)?.origin?;
        let source = {
            let cat = self.catalog.lock().unwrap();
            cat.metas.values().find(|m| m.id == o.volume)?.name.clone()
        };
        let snapshot = self
            .open_volume(&source)
            .ok()?
            .snapshots()
            .into_iter()
            .find(|s| s.id == o.snapshot)?;
        Some(format!("{source}@{}", snapshot.name))
    }

    /// The clones reading from a snapshot.
    pub fn clones_of_snapshot(&self, volume: &str, snapshot: Uuid) -> Vec<String> {
        let cat = self.catalog.lock().unwrap();
        match cat.metas.get(volume) {
            Some(m) => Self::clones_of(&cat, m.id, Some(snapshot)),
            None => Vec::new(),
        }
    }

    /// Deletes the hidden snapshots of a volume that no clone reads from
    /// any more.
    fn drop_unused_hidden(&self, volume: &str) -> Result<(), StoreError> {
        let v = self.open_volume(volume)?;
        for s in v.snapshots().into_iter().filter(|s| s.hidden) {
            if self.clones_of_snapshot(volume, s.id).is_empty() {
                tracing::info!(volume, snapshot = %s.name, "freeing a hidden snapshot its last clone read from");
                v.delete_snapshot_now(s.id)?;
            }
        }
        Ok(())
    }

    /// Takes a snapshot called `name` of each volume, at one point of their
    /// write orders (a consistency group when there are several, or when
    /// `group` names one). Returns each volume's name with its snapshot, by
    /// name.
    pub async fn take_snapshots(
        &self,
        volumes: &[String],
        name: &str,
        group: Option<&str>,
    ) -> Result<Vec<(String, SnapshotInfo)>, StoreError> {
        let mut names: Vec<&String> = volumes.iter().collect();
        names.sort();
        names.dedup();
        if names.is_empty() {
            return Err(StoreError::Snapshot("name at least one volume".into()));
        }
        let mut vols = Vec::with_capacity(names.len());
        for n in &names {
            vols.push(self.open_volume(n)?);
        }
        let taken = match (vols.len(), group) {
            (1, None) => vec![vols[0].take_snapshot(name, false).await?],
            (_, group) => LocalVolume::take_group(&vols, name, group.unwrap_or(name)).await?,
        };
        Ok(names.into_iter().cloned().zip(taken).collect())
    }

    /// A volume's snapshot by name (hidden ones are not found).
    pub fn find_snapshot(&self, volume: &str, name: &str) -> Result<SnapshotInfo, StoreError> {
        let v = self.open_volume(volume)?;
        v.snapshot(name)
            .filter(|s| !s.hidden)
            .ok_or_else(|| StoreError::SnapshotNotFound {
                volume: volume.to_string(),
                name: name.to_string(),
            })
    }

    /// Deletes a snapshot; one that clones read from is hidden instead and
    /// freed with its last clone. Returns those clones.
    pub async fn delete_snapshot(
        &self,
        volume: &str,
        name: &str,
    ) -> Result<Vec<String>, StoreError> {
        let s = self.find_snapshot(volume, name)?;
        let v = self.open_volume(volume)?;
        let clones = self.clones_of_snapshot(volume, s.id);
        if clones.is_empty() {
            v.delete_snapshot(s.id).await?;
        } else {
            v.hide_snapshot(s.id).await?;
        }
        tracing::info!(
            volume,
            snapshot = name,
            kept_for = clones.len(),
            "snapshot deleted"
        );
        Ok(clones)
    }

    /// Makes a volume's content a snapshot's again.
    pub async fn rollback(&self, volume: &str, snapshot: &str) -> Result<(), StoreError> {
        let s = self.find_snapshot(volume, snapshot)?;
        self.open_volume(volume)?.rollback(s.id).await
    }

    /// A new volume `new` that starts as snapshot `snapshot` of `source`
    /// and shares every grain it does not write with it; without a
    /// snapshot, one is taken (hidden, kept as long as the clone lives).
    pub async fn clone_volume(
        &self,
        source: &str,
        snapshot: Option<&str>,
        new: &str,
    ) -> Result<VolumeMeta, StoreError> {
        validate_name(new)?;
        if self.get(new).is_some() {
            return Err(StoreError::Exists(new.to_string()));
        }
        let v = self.open_volume(source)?;
        let (s, taken) = match snapshot {
            Some(name) => (self.find_snapshot(source, name)?, false),
            None => {
                let name = format!("for-clone-{}", Uuid::new_v4().simple());
                (v.take_snapshot(&name, true).await?, true)
            }
        };
        let made = self.make_clone(&v, &s, new, Uuid::new_v4());
        if made.is_err() && taken {
            if let Err(e) = v.delete_snapshot_now(s.id) {
                tracing::warn!(volume = source, error = %e, "cannot remove the snapshot taken for a failed clone");
            }
        }
        made
    }

    /// Writes clone `new` (id `id`) of snapshot `s` of volume `v`.
    fn make_clone(
        &self,
        v: &LocalVolume,
        s: &SnapshotInfo,
        new: &str,
        id: Uuid,
    ) -> Result<VolumeMeta, StoreError> {
        let mut cat = self.catalog.lock().unwrap();
        if cat.metas.contains_key(new) {
            return Err(StoreError::Exists(new.to_string()));
        }
        let meta = VolumeMeta {
            id,
            name: new.to_string(),
            size_bytes: s.size_bytes,
            block_size: v.meta().block_size,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            origin: Some(OriginRef {
                volume: v.meta().id,
                snapshot: s.id,
            }),
        };
        let meta = self.make_volume(&mut cat, meta)?;
        tracing::info!(source = %v.meta().name, snapshot = %s.name, clone = new, "volume cloned");
        Ok(meta)
    }

    /// A clone `new`, of id `id`, of snapshot `snapshot` (by id, hidden or
    /// not) of `source`: each copy of a cluster volume's clone is made so
    /// on its node, from that node's copy of the snapshot.
    pub fn clone_snapshot_as(
        &self,
        source: &str,
        snapshot: Uuid,
        new: &str,
        id: Uuid,
    ) -> Result<VolumeMeta, StoreError> {
        validate_name(new)?;
        let v = self.open_volume(source)?;
        let s = v
            .snapshots()
            .into_iter()
            .find(|s| s.id == snapshot)
            .ok_or_else(|| StoreError::SnapshotNotFound {
                volume: source.to_string(),
                name: snapshot.to_string(),
            })?;
        self.make_clone(&v, &s, new, id)
    }

    /// What each of a volume's snapshots keeps and would free.
    pub async fn snapshot_space(
        &self,
        volume: &str,
    ) -> Result<Vec<(SnapshotInfo, crate::SnapshotSpace)>, StoreError> {
        let v = self.open_volume(volume)?;
        let space = v.snapshot_space().await?;
        Ok(v.snapshots()
            .into_iter()
            .filter_map(|s| {
                let sp = space.iter().find(|(id, _)| *id == s.id)?.1;
                Some((s, sp))
            })
            .collect())
    }

    /// Bytes all of a volume's snapshot files take on the filesystem.
    pub fn snapshot_allocated_bytes(&self, name: &str) -> Result<u64, StoreError> {
        let meta = self
            .get(name)
            .ok_or_else(|| StoreError::NotFound(name.to_string()))?;
        let dir = self.volumes_dir().join(meta.id.to_string()).join(SNAPSHOTS);
        let mut total = 0;
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                if let Ok(md) = e.metadata() {
                    total += md.blocks() * 512;
                }
            }
        }
        Ok(total)
    }

    /// The management API token: created at first start (random, 256 bits) in
    /// `<data dir>/api.token`, readable by the owner only.
    pub fn api_token(&self) -> Result<String, StoreError> {
        let path = self.dir.join("api.token");
        match fs::read_to_string(&path) {
            Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("cannot read", &path)(e)),
        }
        let token = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
        write_atomic_mode(&path, format!("{token}\n").as_bytes(), 0o600)?;
        Ok(token)
    }

    /// The access rules saved for a volume (initiator list, CHAP secrets),
    /// or `None` when the volume has none.
    pub fn read_access(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        read_if_exists(&self.volume_file(name, "access.json")?)
    }

    /// Replaces a volume's access rules, durably, in a file only the owner
    /// can read (it holds CHAP secrets).
    pub fn write_access(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.volume_file(name, "access.json")?;
        write_atomic_mode(&path, bytes, 0o600)
    }

    fn volume_file(&self, name: &str, file: &str) -> Result<PathBuf, StoreError> {
        let meta = self
            .get(name)
            .ok_or_else(|| StoreError::NotFound(name.to_string()))?;
        Ok(self.volumes_dir().join(meta.id.to_string()).join(file))
    }

    /// Space the volume's data takes on the filesystem, in bytes.
    pub fn allocated_bytes(&self, name: &str) -> Result<u64, StoreError> {
        let meta = self
            .get(name)
            .ok_or_else(|| StoreError::NotFound(name.to_string()))?;
        let data = self.volumes_dir().join(meta.id.to_string()).join("data");
        let md = fs::metadata(&data).map_err(StoreError::io("cannot stat", &data))?;
        Ok(md.blocks() * 512)
    }
}

/// The contents of `path`, or `None` when there is no such file.
pub fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io("cannot read", path)(e)),
    }
}
