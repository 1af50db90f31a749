//! A volume on a node that is not its primary: every operation is forwarded
//! to the primary (the ALUA active/non-optimized path). When the primary
//! cannot be reached the operation fails with "access state transition",
//! which initiators retry; by then the control plane names the new primary.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Mutex;
use volume::{BlockState, Provisioning, Volume, VolumeError};

use crate::auth::ClusterKey;
use crate::link::{Link, LinkError};
use crate::wire::{volume_error_of, Hello, Mode, Op};
use crate::Shape;

/// Forwards I/O for a volume to its primary at `addr`.
pub struct ForwardVolume {
    shape: Shape,
    node: u64,
    addr: String,
    key: ClusterKey,
    timeout: Duration,
    link: RwLock<Option<Arc<Link>>>,
    connecting: Mutex<()>,
    /// Set when this node stops forwarding (its role changed): operations
    /// still waiting for the old primary give up at once.
    closed: tokio::sync::watch::Sender<bool>,
}

impl ForwardVolume {
    /// A volume of `shape`'s geometry whose I/O goes to the primary at
    /// `addr` (replication address).
    pub fn new(
        shape: Shape,
        node: u64,
        addr: String,
        key: ClusterKey,
        timeout: Duration,
    ) -> ForwardVolume {
        ForwardVolume {
            shape,
            node,
            addr,
            key,
            timeout,
            link: RwLock::new(None),
            connecting: Mutex::new(()),
            closed: tokio::sync::watch::Sender::new(false),
        }
    }

    async fn link(&self) -> Result<Arc<Link>, VolumeError> {
        let alive = |l: &Option<Arc<Link>>| l.as_ref().filter(|l| l.is_alive()).cloned();
        if let Some(l) = alive(&self.link.read().unwrap()) {
            return Ok(l);
        }
        let _one = self.connecting.lock().await;
        if let Some(l) = alive(&self.link.read().unwrap()) {
            return Ok(l);
        }
        // The primary does not check a forwarder's epoch or copy (it may have none).
        let copy = self.shape.copy();
        let hello = Hello {
            mode: Mode::Forward,
            node: self.node,
            epoch: copy.map_or(0, |c| c.epoch()),
            copy_id: copy.map_or([0; 16], |c| c.copy_id()),
            volume: self.shape.name().to_string(),
        };
        let l = Link::connect(&self.addr, &self.key, &hello, self.timeout)
            .await
            .map(Arc::new)
            .map_err(|e| {
                VolumeError::Unavailable(format!(
                    "volume {}: the primary cannot be reached: {e}",
                    self.shape.name()
                ))
            })?;
        *self.link.write().unwrap() = Some(l.clone());
        Ok(l)
    }

    async fn call(&self, op: Op) -> Result<Bytes, VolumeError> {
        let mut closed = self.closed.subscribe();
        tokio::select! {
            r = self.forward(op) => r,
            _ = closed.wait_for(|c| *c) => Err(VolumeError::Unavailable(format!(
                "volume {}: the primary changed while the operation waited",
                self.shape.name()
            ))),
        }
    }

    async fn forward(&self, op: Op) -> Result<Bytes, VolumeError> {
        let link = self.link().await?;
        link.call(0, op).await.map_err(|e| match e {
            LinkError::Failed { failure, .. } => {
                volume_error_of(&failure, self.num_blocks(), self.block_size())
            }
            other => {
                // Given up on: the connection goes, with what it has not
                // delivered, so the request cannot reach the primary after
                // the initiator was told it failed. The next one reconnects.
                let mut current = self.link.write().unwrap();
                if current.as_ref().is_some_and(|l| Arc::ptr_eq(l, &link)) {
                    current.take();
                }
                link.close();
                VolumeError::Unavailable(format!(
                    "volume {}: forwarding to the primary failed: {other}",
                    self.shape.name()
                ))
            }
        })
    }

    /// Closes the connection to the primary.
    pub fn close(&self) {
        self.closed.send_replace(true);
        if let Some(l) = self.link.write().unwrap().take() {
            l.close();
        }
    }
}

#[async_trait]
impl Volume for ForwardVolume {
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

    async fn read(&self, lba: u64, blocks: u32) -> volume::Result<Vec<u8>> {
        volume::check_range(self.num_blocks(), lba, blocks as u64)?;
        let data = self.call(Op::Read { lba, blocks }).await?;
        if data.len() != blocks as usize * self.block_size() as usize {
            return Err(VolumeError::Unavailable(format!(
                "volume {}: the primary answered a read with {} bytes",
                self.shape.name(),
                data.len()
            )));
        }
        Ok(data.to_vec())
    }

    async fn write(&self, lba: u64, data: Bytes, fua: bool) -> volume::Result<()> {
        let blocks = volume::blocks_in(data.len(), self.block_size())?;
        volume::check_range(self.num_blocks(), lba, blocks)?;
        self.call(Op::Write { lba, fua, data }).await.map(|_| ())
    }

    async fn flush(&self) -> volume::Result<()> {
        self.call(Op::Flush).await.map(|_| ())
    }

    async fn unmap(&self, lba: u64, blocks: u64) -> volume::Result<()> {
        volume::check_range(self.num_blocks(), lba, blocks)?;
        self.call(Op::Unmap { lba, blocks }).await.map(|_| ())
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
        volume::check_range(self.num_blocks(), lba, blocks)?;
        self.call(Op::WriteSame {
            lba,
            blocks,
            unmap,
            fua,
            pattern,
        })
        .await
        .map(|_| ())
    }

    async fn compare_and_write(
        &self,
        lba: u64,
        compare: Bytes,
        write: Bytes,
        fua: bool,
    ) -> volume::Result<()> {
        let blocks =
            volume::compare_and_write_blocks(compare.len(), write.len(), self.block_size())?;
        volume::check_range(self.num_blocks(), lba, blocks)?;
        let mut both = Vec::with_capacity(compare.len() * 2);
        both.extend_from_slice(&compare);
        both.extend_from_slice(&write);
        self.call(Op::CompareAndWrite {
            lba,
            fua,
            data: Bytes::from(both),
        })
        .await
        .map(|_| ())
    }

    async fn block_status(&self, lba: u64) -> volume::Result<(BlockState, u64)> {
        // The local copy may be behind: report the range as mapped, which
        // is always a correct answer (SBC-4 5.5).
        volume::check_range(self.num_blocks(), lba, 1)?;
        Ok((BlockState::Mapped, self.num_blocks() - lba))
    }

    async fn resize(&self, blocks: u64) -> volume::Result<()> {
        self.call(Op::Resize { blocks }).await.map(|_| ())
    }
}

impl Drop for ForwardVolume {
    fn drop(&mut self) {
        self.close();
    }
}
