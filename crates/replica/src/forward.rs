//! The route of a volume on a node that is not its primary: every operation
//! is forwarded to the primary (the ALUA active/non-optimized path). When the primary
//! cannot be reached the operation fails with "access state transition",
//! which initiators retry; by then the control plane names the new primary.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Mutex;
use volume::{Unavailable, VolumeError};

use crate::auth::ClusterKey;
use crate::copy::LocalCopy;
use crate::link::{Link, LinkError};
use crate::wire::{Failure, Hello, Mode, Op};

/// Why a forwarded operation failed.
#[derive(Debug)]
pub enum Forwarded {
    /// The primary ran it and it failed there.
    Failed(Failure),
    /// It did not get an answer from the primary.
    Unavailable(VolumeError),
}

/// Forwards I/O for a volume to its primary at `addr`.
pub struct Forwarder {
    volume: String,
    /// This node's copy, if any: the primary learns its identity.
    copy: Option<Arc<LocalCopy>>,
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

impl Forwarder {
    /// Forwards `volume`'s I/O from this node (`node`, holding `copy` if
    /// any) to the primary at `addr` (replication address).
    pub fn new(
        volume: &str,
        copy: Option<Arc<LocalCopy>>,
        node: u64,
        addr: String,
        key: ClusterKey,
        timeout: Duration,
    ) -> Forwarder {
        Forwarder {
            volume: volume.to_string(),
            copy,
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
        let copy = self.copy.as_ref();
        let hello = Hello {
            mode: Mode::Forward,
            node: self.node,
            epoch: copy.map_or(0, |c| c.epoch()),
            copy_id: copy.map_or([0; 16], |c| c.copy_id()),
            volume: self.volume.clone(),
        };
        let l = Link::connect(&self.addr, &self.key, &hello, self.timeout, None)
            .await
            .map(Arc::new)
            .map_err(|e| {
                VolumeError::Unavailable(Unavailable::PrimaryUnreachable(e.to_string()))
            })?;
        *self.link.write().unwrap() = Some(l.clone());
        Ok(l)
    }

    /// Runs `op` on the primary.
    pub async fn call(&self, op: Op) -> Result<Bytes, Forwarded> {
        let mut closed = self.closed.subscribe();
        tokio::select! {
            r = self.forward(op) => r,
            _ = closed.wait_for(|c| *c) => Err(Forwarded::Unavailable(
                VolumeError::Unavailable(Unavailable::PrimaryChanged),
            )),
        }
    }

    async fn forward(&self, op: Op) -> Result<Bytes, Forwarded> {
        let link = self.link().await.map_err(Forwarded::Unavailable)?;
        link.call(0, op).await.map_err(|e| match e {
            LinkError::Failed { failure, .. } => Forwarded::Failed(failure),
            other => {
                // Given up on: the connection goes, with what it has not
                // delivered, so the request cannot reach the primary after
                // the initiator was told it failed. The next one reconnects.
                let mut current = self.link.write().unwrap();
                if current.as_ref().is_some_and(|l| Arc::ptr_eq(l, &link)) {
                    current.take();
                }
                link.close();
                Forwarded::Unavailable(VolumeError::Unavailable(Unavailable::PrimaryUnreachable(
                    other.to_string(),
                )))
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

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.close();
    }
}
