//! Synchronous mirroring of a [`Volume`] across the nodes of a cluster.
//!
//! - [`wire`]: the replication protocol (pure, fuzzable).
//! - [`auth`]: mutual authentication of the two ends with the cluster secret.
//! - [`copy::LocalCopy`]: one node's copy of a volume, its accepted epoch and
//!   its activity log.
//! - [`server::ReplicaServer`]: applies a primary's writes to local copies
//!   (refusing stale epochs) and executes I/O forwarded by other nodes.
//! - [`primary::ReplicatedVolume`]: the primary's volume; a write is
//!   acknowledged once every in-sync copy has it, absent copies are tracked
//!   in dirty maps and resynced incrementally.
//! - [`forward::ForwardVolume`]: the volume on a non-primary node.
//! - [`RoleVolume`]: what the SCSI layer holds; it switches between the two
//!   as the control plane moves the primary role.
#![forbid(unsafe_code)]

pub mod auth;
pub mod copy;
pub mod dirty;
pub mod forward;
pub mod link;
pub mod primary;
pub mod ranges;
pub mod server;
pub mod wire;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use volume::{BlockState, Provisioning, Volume, VolumeError};

pub use auth::ClusterKey;
pub use copy::LocalCopy;
pub use forward::ForwardVolume;
pub use primary::{
    AckWindow, Control, ControlError, PeerSpec, PeerState, PeerStatus, PrimaryConfig,
    ReplicatedVolume,
};
pub use server::ReplicaServer;

/// The role this node plays for a volume.
#[derive(Clone)]
pub enum Role {
    /// This node orders and mirrors the writes.
    Primary(Arc<ReplicatedVolume>),
    /// Another node is the primary; I/O is forwarded there.
    Forward(Arc<ForwardVolume>),
    /// No primary is known (between primaries, or cut off): I/O fails with
    /// "access state transition" and initiators retry.
    Waiting,
}

/// Where a node takes a volume's geometry from.
#[derive(Clone)]
pub enum Shape {
    /// The node's copy of the volume.
    Copy(Arc<LocalCopy>),
    /// The node holds no copy: the geometry the control plane records.
    Recorded(Arc<Recorded>),
}

/// Geometry of a volume this node presents without holding a copy.
pub struct Recorded {
    name: String,
    block_size: u32,
    blocks: AtomicU64,
}

impl Recorded {
    /// A volume of `blocks` blocks of `block_size` bytes.
    pub fn new(name: &str, block_size: u32, blocks: u64) -> Arc<Recorded> {
        Arc::new(Recorded {
            name: name.to_string(),
            block_size,
            blocks: AtomicU64::new(blocks),
        })
    }

    /// Records that the volume grew to `blocks` blocks.
    pub fn grow(&self, blocks: u64) {
        self.blocks.fetch_max(blocks, Ordering::Relaxed);
    }
}

impl Shape {
    /// Volume name.
    pub fn name(&self) -> &str {
        match self {
            Shape::Copy(c) => c.name(),
            Shape::Recorded(r) => &r.name,
        }
    }

    /// The local copy, if this node holds one.
    pub fn copy(&self) -> Option<&Arc<LocalCopy>> {
        match self {
            Shape::Copy(c) => Some(c),
            Shape::Recorded(_) => None,
        }
    }

    /// Logical block size in bytes.
    pub fn block_size(&self) -> u32 {
        match self {
            Shape::Copy(c) => c.volume().block_size(),
            Shape::Recorded(r) => r.block_size,
        }
    }

    /// Number of logical blocks.
    pub fn num_blocks(&self) -> u64 {
        match self {
            Shape::Copy(c) => c.volume().num_blocks(),
            Shape::Recorded(r) => r.blocks.load(Ordering::Relaxed),
        }
    }

    /// How the volume allocates space (every copy is thin).
    pub fn provisioning(&self) -> Provisioning {
        match self {
            Shape::Copy(c) => c.volume().provisioning(),
            Shape::Recorded(_) => Provisioning::Thin,
        }
    }

    /// Whether writes need a flush to become durable (they do on every copy).
    pub fn write_cache(&self) -> bool {
        match self {
            Shape::Copy(c) => c.volume().write_cache(),
            Shape::Recorded(_) => true,
        }
    }

    fn low_on_space(&self) -> bool {
        match self {
            Shape::Copy(c) => c.volume().low_on_space(),
            Shape::Recorded(_) => false,
        }
    }
}

/// A volume whose implementation follows this node's role. Geometry comes
/// from the local copy, which every role shares, or, on a node without a
/// copy (which can only forward), from the control plane's record.
pub struct RoleVolume {
    shape: Shape,
    role: RwLock<Role>,
    /// Writes acknowledged by earlier primary roles of this node.
    acknowledged: std::sync::Mutex<Vec<AckWindow>>,
}

impl RoleVolume {
    /// Starts in [`Role::Waiting`].
    pub fn new(shape: Shape) -> RoleVolume {
        RoleVolume {
            shape,
            role: RwLock::new(Role::Waiting),
            acknowledged: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Where the geometry comes from (and the local copy, if any).
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The local copy, if this node holds one.
    pub fn copy(&self) -> Option<&Arc<LocalCopy>> {
        self.shape.copy()
    }

    /// Switches the role; the previous primary (if any) is stopped and
    /// forwarded I/O from other nodes follows. Only a node with a copy can
    /// be primary.
    pub fn set_role(&self, role: Role) {
        if let Some(copy) = self.copy() {
            match &role {
                Role::Primary(p) => copy.set_primary(Some(p.clone() as Arc<dyn Volume>)),
                _ => copy.set_primary(None),
            }
        }
        let old = std::mem::replace(&mut *self.role.write().unwrap(), role);
        match old {
            Role::Primary(p) => {
                p.stop();
                self.acknowledged.lock().unwrap().extend(p.acknowledged());
            }
            Role::Forward(f) => f.close(),
            Role::Waiting => {}
        }
    }

    /// The writes this node acknowledged as primary of the volume, one
    /// window per primary role it held (oldest first).
    pub fn acknowledged(&self) -> Vec<AckWindow> {
        let mut all = self.acknowledged.lock().unwrap().clone();
        if let Role::Primary(p) = self.role() {
            all.extend(p.acknowledged());
        }
        all
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role.read().unwrap().clone()
    }

    fn current(&self) -> Result<Arc<dyn Volume>, VolumeError> {
        match &*self.role.read().unwrap() {
            Role::Primary(p) => Ok(p.clone()),
            Role::Forward(f) => Ok(f.clone()),
            Role::Waiting => Err(VolumeError::Unavailable(format!(
                "volume {} has no primary right now",
                self.shape.name()
            ))),
        }
    }
}

#[async_trait]
impl Volume for RoleVolume {
    fn block_size(&self) -> u32 {
        self.shape.block_size()
    }

    fn num_blocks(&self) -> u64 {
        self.shape.num_blocks()
    }

    fn provisioning(&self) -> Provisioning {
        self.shape.provisioning()
    }

    fn write_cache(&self) -> bool {
        self.shape.write_cache()
    }

    fn low_on_space(&self) -> bool {
        self.shape.low_on_space()
    }

    async fn read(&self, lba: u64, blocks: u32) -> volume::Result<Vec<u8>> {
        self.current()?.read(lba, blocks).await
    }

    async fn write(&self, lba: u64, data: Bytes, fua: bool) -> volume::Result<()> {
        self.current()?.write(lba, data, fua).await
    }

    fn read_now(&self, lba: u64, blocks: u32) -> Option<volume::Result<Vec<u8>>> {
        self.current().ok()?.read_now(lba, blocks)
    }

    fn write_now(&self, lba: u64, data: &Bytes) -> Option<volume::Result<()>> {
        self.current().ok()?.write_now(lba, data)
    }

    async fn flush(&self) -> volume::Result<()> {
        self.current()?.flush().await
    }

    async fn unmap(&self, lba: u64, blocks: u64) -> volume::Result<()> {
        self.current()?.unmap(lba, blocks).await
    }

    async fn write_same(
        &self,
        lba: u64,
        blocks: u64,
        pattern: Bytes,
        unmap: bool,
        fua: bool,
    ) -> volume::Result<()> {
        self.current()?
            .write_same(lba, blocks, pattern, unmap, fua)
            .await
    }

    async fn compare_and_write(
        &self,
        lba: u64,
        compare: Bytes,
        write: Bytes,
        fua: bool,
    ) -> volume::Result<()> {
        self.current()?
            .compare_and_write(lba, compare, write, fua)
            .await
    }

    async fn block_status(&self, lba: u64) -> volume::Result<(BlockState, u64)> {
        self.current()?.block_status(lba).await
    }

    async fn resize(&self, blocks: u64) -> volume::Result<()> {
        self.current()?.resize(blocks).await
    }
}
