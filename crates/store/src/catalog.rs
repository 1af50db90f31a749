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
use crate::{LocalVolume, StoreError, VolumeFiles, REGION_BYTES};

/// The checksum sidecar of a volume's data file.
const SUMS: &str = "data.crc32c";
/// The dirty-region bitmap of a volume's data file.
const DIRTY: &str = "data.dirty";

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
        };
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
        // meta.json last: a volume exists once its metadata is durable.
        let json = serde_json::to_vec_pretty(&meta).expect("metadata serializes");
        write_atomic(&vdir.join("meta.json"), &json)?;
        sync_dir(&self.volumes_dir())?;
        cat.metas.insert(name.to_string(), meta.clone());
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
        let v = LocalVolume::new(files, meta, vdir.join("meta.json"))
            .map_err(StoreError::io("cannot open checksums of", &vdir))?;
        let v = Arc::new(v);
        cat.open.insert(name.to_string(), v.clone());
        Ok(v)
    }

    /// Deletes a volume and its data; open handles fail further I/O with `Closed`.
    pub fn delete(&self, name: &str) -> Result<(), StoreError> {
        let mut cat = self.catalog.lock().unwrap();
        let meta = cat
            .metas
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(name.to_string()))?;
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
        drop(cat);
        fs::remove_dir_all(&tomb).map_err(StoreError::io("cannot remove", &tomb))?;
        Ok(())
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
