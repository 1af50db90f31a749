//! The one object initiators' commands reach for a cluster volume on this
//! node, whatever the node's part in it.
//!
//! A [`ClusterVolume`] owns the volume's geometry (from this node's copy, or
//! from the control plane's record on a node without one) and checks every
//! request against it once. What happens next depends on its [`Route`]: the
//! primary mirrors the request to the other copies ([`Primary`]), any other
//! node forwards it to the primary ([`Forwarder`]), and while no primary is
//! known the request fails as an access state transition, which initiators
//! retry. The control plane moves the route; initiators keep talking to the
//! same object.
//!
//! The volume's SCSI state (persistent reservations and what they fence)
//! is the primary's too: other nodes pass whole commands to the primary's
//! logical unit ([`ClusterVolume::command`], served through the [`Unit`]
//! the node attaches), and the primary keeps the reservations on every
//! copy that takes writes ([`ClusterVolume::save_reservations`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use volume::{BlockState, Provisioning, Unavailable, Volume, VolumeError};

use crate::copy::LocalCopy;
use crate::forward::{Forwarded, Forwarder};
use crate::primary::{AckWindow, Primary};
use crate::wire::{volume_error_of, Answer, Command, Op};

/// The logical unit a node presents the volume through, as commands that
/// other nodes pass on reach it (see [`ClusterVolume::set_unit`]).
#[async_trait]
pub trait Unit: Send + Sync {
    /// Runs a command that reached the volume through another node.
    async fn run(&self, command: Command) -> Answer;

    /// An initiator's nexus ended on another node.
    fn nexus_ended(&self, nexus: &str);

    /// The unit was reset through another node.
    async fn reset(&self);
}

/// Where this node sends a volume's I/O.
#[derive(Clone)]
pub enum Route {
    /// This node orders and mirrors the writes.
    Primary(Arc<Primary>),
    /// Another node is the primary; I/O is forwarded there.
    Forward(Arc<Forwarder>),
    /// No primary is known (between primaries, or cut off): I/O fails with
    /// "access state transition" and initiators retry.
    Waiting,
}

/// Where the geometry comes from.
enum Shape {
    /// This node's copy of the volume.
    Copy(Arc<LocalCopy>),
    /// No copy here: the geometry the control plane records.
    Recorded { block_size: u32, blocks: AtomicU64 },
}

/// A cluster volume as this node exports it.
pub struct ClusterVolume {
    name: String,
    shape: Shape,
    route: RwLock<Route>,
    /// Writes acknowledged by earlier primary roles of this node.
    acknowledged: Mutex<Vec<AckWindow>>,
    /// The logical unit this node presents the volume through.
    unit: RwLock<Option<Arc<dyn Unit>>>,
}

impl ClusterVolume {
    /// The volume over this node's copy; starts in [`Route::Waiting`].
    pub fn over_copy(copy: Arc<LocalCopy>) -> Arc<ClusterVolume> {
        Arc::new(ClusterVolume {
            name: copy.name().to_string(),
            shape: Shape::Copy(copy),
            route: RwLock::new(Route::Waiting),
            acknowledged: Mutex::new(Vec::new()),
            unit: RwLock::new(None),
        })
    }

    /// The volume on a node without a copy (it can only forward), with the
    /// geometry the control plane records; starts in [`Route::Waiting`].
    pub fn recorded(name: &str, block_size: u32, blocks: u64) -> Arc<ClusterVolume> {
        Arc::new(ClusterVolume {
            name: name.to_string(),
            shape: Shape::Recorded {
                block_size,
                blocks: AtomicU64::new(blocks),
            },
            route: RwLock::new(Route::Waiting),
            acknowledged: Mutex::new(Vec::new()),
            unit: RwLock::new(None),
        })
    }

    /// Volume name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This node's copy, if it holds one.
    pub fn copy(&self) -> Option<&Arc<LocalCopy>> {
        match &self.shape {
            Shape::Copy(c) => Some(c),
            Shape::Recorded { .. } => None,
        }
    }

    /// Grows the volume to `blocks` blocks: the copy (and its activity log)
    /// here, or the recorded geometry. Returns whether it grew.
    pub async fn grow_to(&self, blocks: u64) -> Result<bool, VolumeError> {
        match &self.shape {
            Shape::Copy(c) => {
                if c.volume().num_blocks() >= blocks {
                    return Ok(false);
                }
                c.grow(blocks).await?;
                Ok(true)
            }
            Shape::Recorded { blocks: b, .. } => {
                Ok(b.fetch_max(blocks, Ordering::Relaxed) < blocks)
            }
        }
    }

    /// Switches the route; a previous primary is stopped (its writes are
    /// remembered for [`ClusterVolume::acknowledged`]) and a previous
    /// forwarder closed, so operations still waiting on it give up.
    pub fn set_route(&self, route: Route) {
        let old = std::mem::replace(&mut *self.route.write().unwrap(), route);
        match old {
            Route::Primary(p) => {
                p.stop();
                self.acknowledged.lock().unwrap().extend(p.acknowledged());
            }
            Route::Forward(f) => f.close(),
            Route::Waiting => {}
        }
    }

    /// The current route.
    pub fn route(&self) -> Route {
        self.route.read().unwrap().clone()
    }

    /// What `f` makes of the current route, read in place: for questions
    /// asked of every command, which need no handle on the role.
    pub fn with_route<T>(&self, f: impl FnOnce(&Route) -> T) -> T {
        f(&self.route.read().unwrap())
    }

    /// The primary role, when this node holds it: forwarded I/O from other
    /// nodes goes there.
    pub fn primary(&self) -> Option<Arc<Primary>> {
        match &*self.route.read().unwrap() {
            Route::Primary(p) => Some(p.clone()),
            _ => None,
        }
    }

    /// The writes this node acknowledged as primary of the volume, one
    /// window per primary role it held (oldest first).
    pub fn acknowledged(&self) -> Vec<AckWindow> {
        let mut all = self.acknowledged.lock().unwrap().clone();
        if let Some(p) = self.primary() {
            all.extend(p.acknowledged());
        }
        all
    }

    /// Attaches the logical unit this node presents the volume through:
    /// while this node is the primary, commands other nodes pass on run there.
    pub fn set_unit(&self, unit: Arc<dyn Unit>) {
        *self.unit.write().unwrap() = Some(unit);
    }

    /// The logical unit this node presents the volume through, if attached.
    pub fn unit(&self) -> Option<Arc<dyn Unit>> {
        self.unit.read().unwrap().clone()
    }

    /// Passes a whole SCSI command to the primary's logical unit. Only
    /// for a node that forwards: on the primary the command runs here, and
    /// without a known primary it fails as [`Unavailable::NoPrimary`].
    pub async fn command(&self, command: Command) -> volume::Result<Answer> {
        match self.route() {
            Route::Forward(f) => {
                let bytes = self.forward(&f, Op::Command(command)).await?;
                Answer::decode(bytes).map_err(|e| {
                    VolumeError::Unavailable(Unavailable::PrimaryUnreachable(format!(
                        "its answer to a command does not follow the protocol: {e}"
                    )))
                })
            }
            Route::Primary(_) => Err(VolumeError::Unavailable(Unavailable::RoleEnded)),
            Route::Waiting => Err(self.waiting()),
        }
    }

    /// Tells the primary, in the background, that an initiator's nexus
    /// ended here. Lost when the primary cannot be reached: a RESERVE the
    /// nexus held there then lasts until that primary's role ends.
    pub fn nexus_ended(&self, nexus: &str) {
        let Route::Forward(f) = self.route() else {
            return;
        };
        let op = Op::NexusEnded {
            nexus: Some(nexus.to_string()),
        };
        let name = self.name.clone();
        tokio::spawn(async move {
            if let Err(e) = f.call(op).await {
                tracing::warn!(volume = %name, "the primary did not hear of an ended nexus: {e:?}");
            }
        });
    }

    /// Resets the unit on the primary (a LUN RESET through this node) and
    /// waits for it; when the primary cannot be reached, nexuses logged
    /// in elsewhere do not hear of it.
    pub async fn reset(&self) {
        let Route::Forward(f) = self.route() else {
            return;
        };
        if let Err(e) = f.call(Op::NexusEnded { nexus: None }).await {
            tracing::warn!(volume = %self.name, "the primary did not hear of a reset: {e:?}");
        }
    }

    /// Saves the volume's persistent reservations, encoded, on every copy
    /// that takes writes, as the primary. Fails when this node is not the
    /// primary, or the primary may not acknowledge.
    pub async fn save_reservations(&self, state: Bytes) -> volume::Result<()> {
        match self.route() {
            Route::Primary(p) => p.save_reservations(state).await,
            _ => Err(VolumeError::Unavailable(Unavailable::NotPrimary)),
        }
    }

    fn waiting(&self) -> VolumeError {
        VolumeError::Unavailable(Unavailable::NoPrimary)
    }

    /// Forwards `op` to the primary; its failure becomes this volume's.
    async fn forward(&self, f: &Forwarder, op: Op) -> volume::Result<Bytes> {
        f.call(op).await.map_err(|e| match e {
            Forwarded::Failed(failure) => {
                volume_error_of(&failure, self.num_blocks(), self.block_size())
            }
            Forwarded::Unavailable(e) => e,
        })
    }

    fn range(&self, lba: u64, blocks: u64) -> volume::Result<()> {
        volume::check_range(self.num_blocks(), lba, blocks)
    }
}

#[async_trait]
impl Volume for ClusterVolume {
    fn block_size(&self) -> u32 {
        match &self.shape {
            Shape::Copy(c) => c.volume().block_size(),
            Shape::Recorded { block_size, .. } => *block_size,
        }
    }

    fn num_blocks(&self) -> u64 {
        match &self.shape {
            Shape::Copy(c) => c.volume().num_blocks(),
            Shape::Recorded { blocks, .. } => blocks.load(Ordering::Relaxed),
        }
    }

    fn provisioning(&self) -> Provisioning {
        match &self.shape {
            Shape::Copy(c) => c.volume().provisioning(),
            // Every copy is thin.
            Shape::Recorded { .. } => Provisioning::Thin,
        }
    }

    fn write_cache(&self) -> bool {
        match &self.shape {
            Shape::Copy(c) => c.volume().write_cache(),
            // Every copy needs a flush to make writes durable.
            Shape::Recorded { .. } => true,
        }
    }

    fn low_on_space(&self) -> bool {
        match &self.shape {
            Shape::Copy(c) => c.volume().low_on_space(),
            Shape::Recorded { .. } => false,
        }
    }

    fn completes_now(&self, write: bool) -> bool {
        // The primary reads its own copy; every write waits for the peers,
        // and forwarded I/O for the primary.
        !write && self.with_route(|r| matches!(r, Route::Primary(_)))
    }

    async fn read(&self, lba: u64, blocks: u32) -> volume::Result<Vec<u8>> {
        self.range(lba, blocks as u64)?;
        match self.route() {
            Route::Primary(p) => p.read(lba, blocks).await,
            Route::Forward(f) => {
                let data = self.forward(&f, Op::Read { lba, blocks }).await?;
                if data.len() != blocks as usize * self.block_size() as usize {
                    return Err(VolumeError::Unavailable(Unavailable::PrimaryUnreachable(
                        format!("it answered a read with {} bytes", data.len()),
                    )));
                }
                Ok(data.to_vec())
            }
            Route::Waiting => Err(self.waiting()),
        }
    }

    fn read_now(&self, lba: u64, blocks: u32) -> Option<volume::Result<Vec<u8>>> {
        if let Err(e) = self.range(lba, blocks as u64) {
            return Some(Err(e));
        }
        match &*self.route.read().unwrap() {
            Route::Primary(p) => p.read_now(lba, blocks),
            _ => None,
        }
    }

    async fn write(&self, lba: u64, data: Bytes, fua: bool) -> volume::Result<()> {
        let blocks = volume::blocks_in(data.len(), self.block_size())?;
        self.range(lba, blocks)?;
        match self.route() {
            Route::Primary(p) => p.write(lba, data, fua).await,
            Route::Forward(f) => self
                .forward(&f, Op::Write { lba, fua, data })
                .await
                .map(drop),
            Route::Waiting => Err(self.waiting()),
        }
    }

    async fn flush(&self) -> volume::Result<()> {
        match self.route() {
            Route::Primary(p) => p.flush().await,
            Route::Forward(f) => self.forward(&f, Op::Flush).await.map(drop),
            Route::Waiting => Err(self.waiting()),
        }
    }

    async fn unmap(&self, lba: u64, blocks: u64) -> volume::Result<()> {
        self.range(lba, blocks)?;
        match self.route() {
            Route::Primary(p) => p.unmap(lba, blocks).await,
            Route::Forward(f) => self.forward(&f, Op::Unmap { lba, blocks }).await.map(drop),
            Route::Waiting => Err(self.waiting()),
        }
    }

    async fn write_same(
        &self,
        lba: u64,
        blocks: u64,
        pattern: Bytes,
        unmap: bool,
        fua: bool,
    ) -> volume::Result<()> {
        volume::check_pattern(pattern.len(), self.block_size())?;
        self.range(lba, blocks)?;
        match self.route() {
            Route::Primary(p) => p.write_same(lba, blocks, pattern, unmap, fua).await,
            Route::Forward(f) => {
                let op = Op::WriteSame {
                    lba,
                    blocks,
                    unmap,
                    fua,
                    pattern,
                };
                self.forward(&f, op).await.map(drop)
            }
            Route::Waiting => Err(self.waiting()),
        }
    }

    async fn compare_and_write(
        &self,
        lba: u64,
        compare: Bytes,
        write: Bytes,
        fua: bool,
    ) -> volume::Result<()> {
        self.compare_and_write_for("", lba, compare, write, fua)
            .await
    }

    async fn compare_and_write_for(
        &self,
        initiator: &str,
        lba: u64,
        compare: Bytes,
        write: Bytes,
        fua: bool,
    ) -> volume::Result<()> {
        let blocks =
            volume::compare_and_write_blocks(compare.len(), write.len(), self.block_size())?;
        self.range(lba, blocks)?;
        match self.route() {
            Route::Primary(p) => {
                p.compare_and_write(initiator, lba, compare, write, fua)
                    .await
            }
            Route::Forward(f) => {
                // The primary receives both halves in one buffer.
                let mut data = Vec::with_capacity(compare.len() * 2);
                data.extend_from_slice(&compare);
                data.extend_from_slice(&write);
                let op = Op::CompareAndWrite {
                    lba,
                    fua,
                    initiator: initiator.to_string(),
                    data: Bytes::from(data),
                };
                self.forward(&f, op).await.map(drop)
            }
            Route::Waiting => Err(self.waiting()),
        }
    }

    async fn block_status(&self, lba: u64) -> volume::Result<(BlockState, u64)> {
        self.range(lba, 1)?;
        match self.route() {
            Route::Primary(p) => p.block_status(lba).await,
            // A copy that is not the primary's may be behind: "mapped" is
            // always a correct answer (SBC-4 5.5).
            Route::Forward(_) => Ok((BlockState::Mapped, self.num_blocks() - lba)),
            Route::Waiting => Err(self.waiting()),
        }
    }

    async fn resize(&self, blocks: u64) -> volume::Result<()> {
        match self.route() {
            Route::Primary(p) => p.resize(blocks).await,
            Route::Forward(f) => self.forward(&f, Op::Resize { blocks }).await.map(drop),
            Route::Waiting => Err(self.waiting()),
        }
    }
}
