//! The connecting end of a replication connection: many requests in flight,
//! answered in any order, each matched to its caller by id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use volume::latency::LatencyHistogram;

use crate::auth::{self, AuthError, ClusterKey};
use crate::frames::{FrameReader, Next, Outbox};
use crate::wire::{self, Failure, Hello, Op, Refusal, Refused, Request, Response, Welcome};
use crate::PollFor;

/// Why a request over a link did not get an answer.
#[derive(Debug, Error)]
pub enum LinkError {
    /// The peer could not be reached.
    #[error("cannot connect to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The peer is not a cluster member.
    #[error("authentication with {addr} failed")]
    Auth {
        addr: String,
        #[source]
        source: AuthError,
    },
    /// The peer refused the hello: `refusal` says why, `message` says it
    /// to a person.
    #[error("{addr} refused: {message}")]
    Refused {
        addr: String,
        refusal: Refusal,
        message: String,
    },
    /// The connection broke or sent something outside the protocol.
    #[error("the connection to {0} is down")]
    Down(String),
    /// No answer within the request timeout.
    #[error("{0} did not answer in time")]
    Timeout(String),
    /// The peer answered with a failure.
    #[error("{addr} failed the request: {failure:?}")]
    Failed { addr: String, failure: Failure },
}

/// Requests waiting for their answer: who waits, and when a timed request
/// was sent.
type Pending = Arc<Mutex<HashMap<u64, Waiting>>>;

struct Waiting {
    tx: oneshot::Sender<Result<Bytes, Failure>>,
    sent: Option<Instant>,
}

/// An authenticated connection to one peer for one volume.
pub struct Link {
    addr: String,
    out: Arc<Outbox>,
    /// Wakes the reader to poll for an answer (busy polling only).
    kick: Option<Arc<Notify>>,
    pending: Pending,
    next_id: AtomicU64,
    alive: Arc<AtomicBool>,
    timeout: Duration,
    welcome: Welcome,
    tasks: [JoinHandle<()>; 2],
}

/// A request sent and not yet answered.
pub struct Call<'a> {
    link: &'a Link,
    id: u64,
    rx: oneshot::Receiver<Result<Bytes, Failure>>,
    lone: bool,
}

impl Link {
    /// Connects to `addr`, authenticates both ways, and says `hello`. With
    /// `round_trips`, the time from sending each request of the I/O path
    /// (writes, unmaps, flushes, pings; not the slow control requests such
    /// as snapshots) to reading its answer is counted there.
    pub async fn connect(
        addr: &str,
        key: &ClusterKey,
        hello: &Hello,
        timeout: Duration,
        round_trips: Option<Arc<LatencyHistogram>>,
    ) -> Result<Link, LinkError> {
        let a = addr.to_string();
        let setup = async {
            let mut s = TcpStream::connect(addr)
                .await
                .map_err(|source| LinkError::Connect {
                    addr: a.clone(),
                    source,
                })?;
            let _ = s.set_nodelay(true);
            // Closing the link discards what it has not delivered yet (and
            // resets the connection): a request given up on must not reach
            // the peer later, when a cut link comes back.
            let _ = s.set_zero_linger();
            auth::client(&mut s, key)
                .await
                .map_err(|source| LinkError::Auth {
                    addr: a.clone(),
                    source,
                })?;
            s.write_all(&hello.encode())
                .await
                .map_err(|_| LinkError::Down(a.clone()))?;
            let body = read_frame(&mut s)
                .await
                .ok_or_else(|| LinkError::Down(a.clone()))?;
            match Welcome::decode(body) {
                Ok(Ok(w)) => Ok((s, w)),
                Ok(Err(Refused { refusal, message })) => Err(LinkError::Refused {
                    addr: a.clone(),
                    refusal,
                    message,
                }),
                Err(_) => Err(LinkError::Down(a.clone())),
            }
        };
        let (stream, welcome) = tokio::time::timeout(timeout, setup)
            .await
            .map_err(|_| LinkError::Timeout(a.clone()))??;
        let (rd, wr) = stream.into_split();
        let pending: Pending = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let (out, flusher) = Outbox::new(wr);
        let lone = pending.clone();
        let mut rd = FrameReader::new(rd)
            .busy_polling_as_set(PollFor::Answer, move || lone.lock().unwrap().len() == 1);
        // With busy polling, a request sent wakes the reader, which then
        // polls for the answer while it is the only one awaited.
        let kick = rd.is_polling().then(|| Arc::new(Notify::new()));

        let (p, al, k) = (pending.clone(), alive.clone(), kick.clone());
        let reader = tokio::spawn(async move {
            loop {
                let body = match rd.next_or(k.as_deref()).await {
                    Next::Frame(body) => body,
                    Next::Kicked => continue,
                    Next::End => break,
                };
                let Ok(resp) = Response::decode(body) else {
                    break;
                };
                let waiting = p.lock().unwrap().remove(&resp.id);
                if let Some(w) = waiting {
                    if let (Some(sent), Some(h)) = (w.sent, &round_trips) {
                        h.observe(sent.elapsed().as_nanos() as u64);
                    }
                    let _ = w.tx.send(resp.result);
                }
            }
            al.store(false, Ordering::Release);
            p.lock().unwrap().clear();
        });
        let (p, al) = (pending.clone(), alive.clone());
        let writer = tokio::spawn(async move {
            flusher.await;
            al.store(false, Ordering::Release);
            p.lock().unwrap().clear();
        });
        Ok(Link {
            addr: a,
            out,
            kick,
            pending,
            next_id: AtomicU64::new(1),
            alive,
            timeout,
            welcome,
            tasks: [reader, writer],
        })
    }

    /// What the peer answered to the hello.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Whether the connection still works.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Sends a request; the answer is awaited with [`Call::wait`].
    pub fn send(&self, epoch: u64, op: Op) -> Result<Call<'_>, LinkError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let timed = matches!(
            op,
            Op::Write { .. }
                | Op::WriteSame { .. }
                | Op::Unmap { .. }
                | Op::CompareAndWrite { .. }
                | Op::Flush
                | Op::Ping
        );
        let sent = timed.then(Instant::now);
        let lone = {
            let mut p = self.pending.lock().unwrap();
            // Checked under the lock the reader drains with: a request
            // registered after the drain sees the link dead.
            if !self.is_alive() {
                return Err(LinkError::Down(self.addr.clone()));
            }
            p.insert(id, Waiting { tx, sent });
            p.len() == 1
        };
        let (head, data) = Request { id, epoch, op }.encode();
        // A request alone on the link leaves at once: nothing would join it.
        if self
            .out
            .send_as([head].into_iter().chain(data), lone)
            .is_err()
        {
            self.pending.lock().unwrap().remove(&id);
            return Err(LinkError::Down(self.addr.clone()));
        }
        if let (Some(kick), true) = (&self.kick, lone) {
            kick.notify_one();
        }
        Ok(Call {
            link: self,
            id,
            rx,
            lone,
        })
    }

    /// Sends a request and waits for its answer.
    pub async fn call(&self, epoch: u64, op: Op) -> Result<Bytes, LinkError> {
        self.send(epoch, op)?.wait().await
    }

    /// As [`Link::call`], for a request that may take the peer longer than
    /// the link's timeout (at most `limit`).
    pub async fn call_at_most(
        &self,
        epoch: u64,
        op: Op,
        limit: std::time::Duration,
    ) -> Result<Bytes, LinkError> {
        self.send(epoch, op)?.wait_at_most(limit).await
    }

    /// Closes the connection; requests in flight fail.
    pub fn close(&self) {
        self.alive.store(false, Ordering::Release);
        self.out.close();
        for t in &self.tasks {
            t.abort();
        }
        self.pending.lock().unwrap().clear();
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.close();
    }
}

impl Call<'_> {
    /// Whether no other request was awaited on the link when this one was
    /// sent.
    pub fn lone(&self) -> bool {
        self.lone
    }

    /// Waits for the answer, at most the link's timeout. A timeout closes the
    /// link: a peer that does not answer in time is treated as gone.
    pub async fn wait(self) -> Result<Bytes, LinkError> {
        let limit = self.link.timeout;
        self.wait_at_most(limit).await
    }

    /// As [`Call::wait`], the link's timeout counted from `sent` (when the
    /// request and others sent with it went out): requests to several peers
    /// waited for one after the other then take one timeout in all, not
    /// one each.
    pub async fn wait_from(self, sent: Instant) -> Result<Bytes, LinkError> {
        let limit = self.link.timeout.saturating_sub(sent.elapsed());
        self.wait_at_most(limit).await
    }

    /// As [`Call::wait`], for a request that may take the peer longer than
    /// the link's timeout (at most `limit`).
    pub async fn wait_at_most(self, limit: std::time::Duration) -> Result<Bytes, LinkError> {
        let addr = || self.link.addr.clone();
        match tokio::time::timeout(limit, self.rx).await {
            Ok(Ok(Ok(data))) => Ok(data),
            Ok(Ok(Err(failure))) => Err(LinkError::Failed {
                addr: addr(),
                failure,
            }),
            Ok(Err(_)) => Err(LinkError::Down(addr())),
            Err(_) => {
                self.link.pending.lock().unwrap().remove(&self.id);
                tracing::warn!(peer = %self.link.addr, "no answer within {limit:?}, dropping the connection");
                self.link.close();
                Err(LinkError::Timeout(addr()))
            }
        }
    }
}

/// Reads one frame body; `None` at end of stream, on error or on a bad length.
pub(crate) async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> Option<Bytes> {
    let mut prefix = [0u8; 4];
    r.read_exact(&mut prefix).await.ok()?;
    let n = wire::frame_len(prefix).ok()?;
    let mut body = BytesMut::zeroed(n);
    r.read_exact(&mut body).await.ok()?;
    Some(body.freeze())
}
