//! The serving end: every node accepts replication connections from the
//! primaries of the volumes it holds a copy of, and forwarded I/O from nodes
//! whose initiators use a volume this node is the primary of.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use volume::{Unavailable, Volume, VolumeError};

use crate::auth::{self, AuthError, ClusterKey};
use crate::copy::LocalCopy;
use crate::export::ClusterVolume;
use crate::frames::{FrameReader, Outbox};
use crate::link::read_frame;
use crate::primary::Primary;
use crate::wire::{
    failure_of, Failure, Hello, Mode, Op, Refusal, Refused, Request, Response, SnapshotOp, Welcome,
    WireError,
};

/// Most requests one connection may have in flight; more wait unread.
const MAX_IN_FLIGHT: usize = 256;

/// Why a connection ended before its hello was read.
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    /// The connecting node does not know the cluster secret.
    #[error("authentication failed: {0}")]
    Auth(AuthError),
    /// The connection closed before a whole hello arrived.
    #[error("no hello")]
    NoHello,
    /// The hello does not follow the protocol (or another version of it).
    #[error("bad hello: {0}")]
    BadHello(WireError),
}

/// The volumes this node holds a copy of, by name: their copies are served
/// to primaries, and forwarded I/O goes to those it is the primary of.
pub struct ReplicaServer {
    key: ClusterKey,
    volumes: RwLock<HashMap<String, Arc<ClusterVolume>>>,
    /// Bumped to drop every open connection.
    generation: tokio::sync::watch::Sender<u64>,
}

impl ReplicaServer {
    /// A server that admits only nodes knowing `key`.
    pub fn new(key: ClusterKey) -> Arc<ReplicaServer> {
        Arc::new(ReplicaServer {
            key,
            volumes: RwLock::default(),
            generation: tokio::sync::watch::channel(0).0,
        })
    }

    /// Serves `volume` from now on; ignored for a volume without a copy
    /// here (it can be neither replicated to nor primary).
    pub fn add(&self, volume: Arc<ClusterVolume>) {
        if volume.copy().is_some() {
            self.volumes
                .write()
                .unwrap()
                .insert(volume.name().to_string(), volume);
        }
    }

    /// Stops serving `name`.
    pub fn remove(&self, name: &str) -> Option<Arc<ClusterVolume>> {
        self.volumes.write().unwrap().remove(name)
    }

    /// The volume `name`, if this node holds a copy of it.
    pub fn get(&self, name: &str) -> Option<Arc<ClusterVolume>> {
        self.volumes.read().unwrap().get(name).cloned()
    }

    /// Drops every open connection (peers reconnect if they still may).
    pub fn drop_connections(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Accepts connections on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((s, peer)) => {
                    let me = self.clone();
                    tokio::spawn(async move { me.connection(s, peer).await });
                }
                Err(e) => {
                    tracing::warn!("replication accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn connection(self: Arc<Self>, s: TcpStream, peer: SocketAddr) {
        let mut gen = self.generation.subscribe();
        gen.mark_unchanged();
        tokio::select! {
            _ = self.clone().serve_connection(s, peer) => {}
            _ = gen.changed() => {
                tracing::debug!(%peer, "replication connection dropped");
            }
        }
    }

    async fn serve_connection(self: Arc<Self>, mut s: TcpStream, peer: SocketAddr) {
        let _ = s.set_nodelay(true);
        let handshake = async {
            auth::server(&mut s, &self.key)
                .await
                .map_err(HandshakeError::Auth)?;
            let body = read_frame(&mut s).await.ok_or(HandshakeError::NoHello)?;
            Hello::decode(body).map_err(HandshakeError::BadHello)
        };
        let hello = match tokio::time::timeout(std::time::Duration::from_secs(10), handshake).await
        {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                tracing::warn!(%peer, "replication connection refused: {e}");
                return;
            }
            Err(_) => {
                tracing::warn!(%peer, "replication connection refused: handshake timed out");
                return;
            }
        };
        let answer = self.welcome(&hello).await;
        let volume = answer.as_ref().ok().map(|(_, v, _)| v.clone());
        let session = answer.as_ref().map_or(0, |(_, _, s)| *s);
        let welcome = answer.map(|(w, _, _)| w);
        if let Err(why) = &welcome {
            tracing::warn!(%peer, volume = %hello.volume, node = hello.node, "replication hello refused: {}", why.message);
        }
        if s.write_all(&Welcome::encode(&welcome)).await.is_err() {
            return;
        }
        let Some(volume) = volume else {
            return;
        };
        tracing::debug!(%peer, volume = %hello.volume, node = hello.node, mode = ?hello.mode, "replication connection");
        let (rd, wr) = s.into_split();
        let mut rd = FrameReader::new(rd).busy_polling_as_set(crate::PollFor::Request, || true);
        let (out, flusher) = Outbox::new(wr);
        // Dropped with this task (the connection was dropped): the socket
        // closes at once, though requests still running hold the outbox.
        let _close = CloseOnDrop(out.clone());
        let mut flusher = AbortOnDrop(tokio::spawn(flusher));
        let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        // Answers to requests done on the spot are queued at once; the
        // outbox's flusher runs once this task waits for the next read, so
        // the answers to everything that arrived together leave together.
        while let Some(body) = rd.next().await {
            let req = match Request::decode(body) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(%peer, "malformed replication request, closing: {e}");
                    break;
                }
            };
            if hello.mode == Mode::Replicate {
                let copy = volume.copy().expect("served volumes hold a copy");
                if let Some(result) = replicated_now(copy, session, req.epoch, &req.op) {
                    let (head, data) = Response { id: req.id, result }.encode();
                    let _ = out.send([head].into_iter().chain(data));
                    continue;
                }
            }
            let Ok(permit) = limit.clone().acquire_owned().await else {
                break;
            };
            let (volume, out, mode) = (volume.clone(), out.clone(), hello.mode);
            tokio::spawn(async move {
                let copy = volume.copy().expect("served volumes hold a copy");
                let result = match mode {
                    Mode::Replicate => match copy.in_session(session).await {
                        Some(_current) => replicated(copy, req.epoch, req.op).await,
                        None => Err(failure_of(&VolumeError::Unavailable(
                            Unavailable::Superseded,
                        ))),
                    },
                    Mode::Forward => match volume.primary() {
                        Some(p) => forwarded(&volume, &p, req.op).await,
                        None => Err(Failure::NotPrimary),
                    },
                };
                let (head, data) = Response { id: req.id, result }.encode();
                let _ = out.send([head].into_iter().chain(data));
                drop(permit);
            });
        }
        // Requests still running answer before the connection closes.
        let _all = limit.acquire_many(MAX_IN_FLIGHT as u32).await;
        out.finish();
        let _ = (&mut flusher.0).await;
    }

    /// Admits a connection: the welcome, the volume and, for a replication
    /// connection, its session number.
    async fn welcome(&self, hello: &Hello) -> Result<(Welcome, Arc<ClusterVolume>, u64), Refused> {
        let refused = |refusal, message| Refused { refusal, message };
        let volume = self.get(&hello.volume).ok_or_else(|| {
            refused(
                Refusal::NoCopy,
                format!("this node holds no copy of volume {}", hello.volume),
            )
        })?;
        let copy = volume.copy().expect("served volumes hold a copy");
        match hello.mode {
            Mode::Replicate => {
                copy.note_copy(hello.node, hello.copy_id);
                let current = copy.accept_epoch(hello.epoch).await.map_err(|e| {
                    // What the storage said, for the primary to report.
                    let why = match &e {
                        VolumeError::Io(io) => format!("I/O error: {io}"),
                        e => e.to_string(),
                    };
                    refused(
                        Refusal::Failed,
                        format!(
                            "volume {}: taking up epoch {} failed: {why}",
                            hello.volume, hello.epoch
                        ),
                    )
                })?;
                if hello.epoch < current {
                    return Err(refused(
                        Refusal::StaleEpoch { current },
                        format!(
                            "volume {}: epoch {} is stale, this copy follows epoch {current}",
                            hello.volume, hello.epoch
                        ),
                    ));
                }
            }
            Mode::Forward => {
                if volume.primary().is_none() {
                    return Err(refused(
                        Refusal::NotPrimary,
                        format!("this node is not the primary of volume {}", hello.volume),
                    ));
                }
            }
        }
        let session = match hello.mode {
            Mode::Replicate => copy.open_session().await,
            Mode::Forward => 0,
        };
        if hello.mode == Mode::Replicate {
            // The welcome tells the primary every region of the activity
            // log, those a failed disk may have lost writes in among them.
            copy.suspects_handed_over();
        }
        let v = copy.volume();
        Ok((
            Welcome {
                copy_id: copy.copy_id(),
                epoch: copy.epoch(),
                block_size: v.block_size(),
                num_blocks: v.num_blocks(),
                suspect: copy.suspect_ranges(),
            },
            volume.clone(),
            session,
        ))
    }
}

/// Runs one request of a primary against this node's copy.
async fn replicated(copy: &LocalCopy, epoch: u64, op: Op) -> Result<Bytes, Failure> {
    let current = copy.epoch();
    if epoch < current {
        return Err(Failure::StaleEpoch { current });
    }
    if epoch > current {
        copy.accept_epoch(epoch).await.map_err(|e| failure_of(&e))?;
    }
    let v = copy.volume();
    let bs = v.block_size() as u64;
    // A replica logs the regions it changes too: if it stops before the data
    // is durable, the primary resyncs them when it returns.
    let touched = match &op {
        Op::Write { lba, data, .. } => Some((*lba, data.len() as u64)),
        Op::CompareAndWrite { lba, data, .. } => Some((*lba, (data.len() / 2) as u64)),
        Op::Unmap { lba, blocks } | Op::WriteSame { lba, blocks, .. } => {
            Some((*lba, blocks.saturating_mul(bs)))
        }
        _ => None,
    };
    let _active = match touched {
        Some((lba, len)) => Some(
            copy.enter(lba.saturating_mul(bs), len)
                .await
                .map_err(|e| failure_of(&e))?,
        ),
        None => None,
    };
    // A write or a flush this disk failed: see `LocalCopy::disk_failed`.
    let done = |r: Result<(), VolumeError>| {
        if let Err(e) = &r {
            copy.disk_failed(e);
        }
        done(r)
    };
    match op {
        Op::Write { lba, fua, data } => done(v.write(lba, data, fua).await),
        Op::Unmap { lba, blocks } => done(v.unmap(lba, blocks).await),
        Op::WriteSame {
            lba,
            blocks,
            unmap,
            fua,
            pattern,
        } => done(v.write_same(lba, blocks, pattern, unmap, fua).await),
        Op::Flush => done(copy.flush().await),
        Op::Resize { blocks } => done(copy.grow(blocks).await),
        Op::Ping => Ok(Bytes::new()),
        Op::Settle => done(copy.sweep().await),
        Op::Reservations { state } => done(copy.save_reservations(state).await),
        Op::Snapshots(op) => snapshots(copy, op).await,
        Op::CompareAndWrite {
            lba,
            fua,
            initiator,
            data,
        } => {
            // The primary compared under its range lock: the write half is
            // applied as it is, and the command remembered.
            let half = data.len() / 2;
            let written = v.write(lba, data.slice(half..), fua).await;
            if written.is_ok() {
                copy.note_compare_and_write(lba, &initiator, &data[..half], &data[half..], epoch);
            }
            done(written)
        }
        Op::Read { .. } | Op::Command(_) | Op::NexusEnded { .. } => {
            Err(failure_of(&VolumeError::Io(std::io::Error::other(
                "operation not allowed on a replication connection",
            ))))
        }
    }
}

/// A primary's change to (or look at) this copy's snapshots.
async fn snapshots(copy: &LocalCopy, op: SnapshotOp) -> Result<Bytes, Failure> {
    let Some(s) = copy.snapshots() else {
        return Err(failure_of(&VolumeError::Io(std::io::Error::other(
            "this copy keeps no snapshots",
        ))));
    };
    match op {
        SnapshotOp::List => Ok(Bytes::from(
            serde_json::to_vec(&s.list()).expect("snapshot marks serialize"),
        )),
        SnapshotOp::Take(mark) => {
            let taken = s.take(&mark).await;
            if taken.is_ok() {
                tracing::info!(volume = copy.name(), snapshot = %mark.name, "snapshot taken as the primary asked");
            }
            done(taken)
        }
        SnapshotOp::Delete { id } => done(s.delete(id).await),
        SnapshotOp::Rollback { id } => {
            // Every region changes: logged first, as a write's, so a stop
            // in the middle is resynced whole.
            let v = copy.volume();
            let bytes = v.num_blocks() * v.block_size() as u64;
            let _active = copy.enter(0, bytes).await.map_err(|e| failure_of(&e))?;
            let rolled = s.rollback(id).await;
            if rolled.is_ok() {
                tracing::info!(volume = copy.name(), snapshot = %id, "rolled back as the primary asked");
            }
            done(rolled)
        }
    }
}

/// A primary's write done on the spot, in the connection's own task, when
/// nothing in it has to wait: the connection is the copy's current one, the
/// epoch is the copy's, the regions are marked in the activity log already
/// and the volume takes the data at once (page cache, no FUA). `None` means
/// "not now", with nothing done: the request runs in a task of its own
/// ([`replicated`]), which checks and waits for all of these.
fn replicated_now(
    copy: &LocalCopy,
    session: u64,
    epoch: u64,
    op: &Op,
) -> Option<Result<Bytes, Failure>> {
    let Op::Write {
        lba,
        fua: false,
        data,
    } = op
    else {
        return None;
    };
    let _current = copy.in_session_now(session)?;
    if epoch != copy.epoch() {
        return None;
    }
    let v = copy.volume();
    let _active = copy.enter_now(lba.saturating_mul(v.block_size() as u64), data.len() as u64)?;
    let written = v.write_now(*lba, data)?;
    if let Err(e) = &written {
        copy.disk_failed(e);
    }
    Some(done(written))
}

/// Runs one request another node forwarded to this node's primary role,
/// once it fits the volume as the primary has it. A whole SCSI command
/// runs in the logical unit this node presents the volume through.
///
/// Once a logical unit is attached, reads and writes come only as SCSI
/// commands: a plain one would pass by the unit's reservations (another
/// node's EXTENDED COPY into this volume, or a command that node admitted
/// while it was still the primary) and is refused as a transition.
async fn forwarded(volume: &ClusterVolume, p: &Primary, op: Op) -> Result<Bytes, Failure> {
    p.check_request(&op).map_err(|e| failure_of(&e))?;
    let data = matches!(
        op,
        Op::Read { .. }
            | Op::Write { .. }
            | Op::Unmap { .. }
            | Op::WriteSame { .. }
            | Op::CompareAndWrite { .. }
    );
    if data && volume.unit().is_some() {
        return Err(failure_of(&VolumeError::Unavailable(Unavailable::Remote(
            "the primary takes reads and writes only as SCSI commands to its logical unit"
                .to_string(),
        ))));
    }
    match op {
        Op::Command(command) => match volume.unit() {
            Some(unit) => Ok(unit.run(command).await.encode()),
            None => Err(Failure::NotPrimary),
        },
        Op::NexusEnded { nexus } => {
            if let Some(unit) = volume.unit() {
                match nexus {
                    Some(n) => unit.nexus_ended(&n),
                    None => unit.reset().await,
                }
            }
            Ok(Bytes::new())
        }
        Op::Reservations { .. } | Op::Snapshots(_) => Err(failure_of(&VolumeError::Io(
            std::io::Error::other("reservations and snapshots come from the primary, not to it"),
        ))),
        Op::Read { lba, blocks } => p
            .read(lba, blocks)
            .await
            .map(Bytes::from)
            .map_err(|e| failure_of(&e)),
        Op::Write { lba, fua, data } => done(p.write(lba, data, fua).await),
        Op::Unmap { lba, blocks } => done(p.unmap(lba, blocks).await),
        Op::WriteSame {
            lba,
            blocks,
            unmap,
            fua,
            pattern,
        } => done(p.write_same(lba, blocks, pattern, unmap, fua).await),
        Op::CompareAndWrite {
            lba,
            fua,
            initiator,
            data,
        } => {
            let half = data.len() / 2;
            done(
                p.compare_and_write(&initiator, lba, data.slice(..half), data.slice(half..), fua)
                    .await,
            )
        }
        Op::Flush => done(p.flush().await),
        Op::Resize { blocks } => done(p.resize(blocks).await),
        Op::Ping | Op::Settle => Ok(Bytes::new()),
    }
}

fn done(r: Result<(), VolumeError>) -> Result<Bytes, Failure> {
    r.map(|_| Bytes::new()).map_err(|e| failure_of(&e))
}

/// Closes an outbox when dropped (the connection it served is gone).
struct CloseOnDrop(Arc<Outbox>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Aborts a task when dropped (the connection it served is gone).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use volume::MemVolume;

    fn write(lba: u64, fua: bool, byte: u8) -> Op {
        Op::Write {
            lba,
            fua,
            data: Bytes::from(vec![byte; 512]),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_is_done_on_the_spot_only_when_nothing_in_it_waits() {
        let dir = tempfile::tempdir().unwrap();
        let v: Arc<dyn Volume> = Arc::new(MemVolume::new(512, 1 << 16));
        let copy = LocalCopy::open("vol", v.clone(), &dir.path().join("vol")).unwrap();
        copy.accept_epoch(3).await.unwrap();
        let session = copy.open_session().await;
        // Its region is not marked in the activity log yet: that waits.
        assert!(replicated_now(&copy, session, 3, &write(8, false, 1)).is_none());
        replicated(&copy, 3, write(8, false, 1)).await.unwrap();
        // Marked now: the next write into the region is done at once.
        let r = replicated_now(&copy, session, 3, &write(9, false, 2));
        assert!(matches!(r, Some(Ok(_))), "{r:?}");
        assert_eq!(v.read(9, 1).await.unwrap(), vec![2u8; 512]);
        // FUA, another epoch (older or newer) and other requests wait.
        assert!(replicated_now(&copy, session, 3, &write(9, true, 3)).is_none());
        assert!(replicated_now(&copy, session, 2, &write(9, false, 3)).is_none());
        assert!(replicated_now(&copy, session, 4, &write(9, false, 3)).is_none());
        assert!(replicated_now(&copy, session, 3, &Op::Flush).is_none());
        // A connection a newer one replaced changes nothing here.
        let newer = copy.open_session().await;
        assert!(replicated_now(&copy, session, 3, &write(9, false, 3)).is_none());
        assert_eq!(v.read(9, 1).await.unwrap(), vec![2u8; 512]);
        assert!(replicated_now(&copy, newer, 3, &write(9, false, 4)).is_some());
        assert_eq!(v.read(9, 1).await.unwrap(), vec![4u8; 512]);
    }
}
