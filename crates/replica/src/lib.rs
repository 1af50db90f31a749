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

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use volume::{BlockState, Provisioning, Volume, VolumeError};

pub use auth::ClusterKey;
pub use copy::LocalCopy;
pub use forward::ForwardVolume;
pub use primary::{AckWindow, Control, PeerSpec, PeerStatus, PrimaryConfig, ReplicatedVolume};
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

/// A volume whose implementation follows this node's role. Geometry comes
/// from the local copy, which every role shares.
pub struct RoleVolume {
    copy: Arc<LocalCopy>,
    role: RwLock<Role>,
    /// Writes acknowledged by earlier primary roles of this node.
    acknowledged: std::sync::Mutex<Vec<AckWindow>>,
}

impl RoleVolume {
    /// Starts in [`Role::Waiting`].
    pub fn new(copy: Arc<LocalCopy>) -> RoleVolume {
        RoleVolume {
            copy,
            role: RwLock::new(Role::Waiting),
            acknowledged: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The local copy.
    pub fn copy(&self) -> &Arc<LocalCopy> {
        &self.copy
    }

    /// Switches the role; the previous primary (if any) is stopped and
    /// forwarded I/O from other nodes follows.
    pub fn set_role(&self, role: Role) {
        match &role {
            Role::Primary(p) => self.copy.set_primary(Some(p.clone() as Arc<dyn Volume>)),
            _ => self.copy.set_primary(None),
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
                self.copy.name()
            ))),
        }
    }
}

#[async_trait]
impl Volume for RoleVolume {
    fn block_size(&self) -> u32 {
        self.copy.volume().block_size()
    }

    fn num_blocks(&self) -> u64 {
        self.copy.volume().num_blocks()
    }

    fn provisioning(&self) -> Provisioning {
        self.copy.volume().provisioning()
    }

    fn write_cache(&self) -> bool {
        self.copy.volume().write_cache()
    }

    fn low_on_space(&self) -> bool {
        self.copy.volume().low_on_space()
    }

    async fn read(&self, lba: u64, blocks: u32) -> volume::Result<Vec<u8>> {
        self.current()?.read(lba, blocks).await
    }

    async fn write(&self, lba: u64, data: Bytes, fua: bool) -> volume::Result<()> {
        self.current()?.write(lba, data, fua).await
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
