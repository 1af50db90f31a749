//! Frames on an open replication connection, both ways.
//!
//! Receiving, frames are cut out of one buffer ([`FrameReader`]): one read
//! brings in every frame that has arrived, and a frame's data is a slice of
//! that buffer, not an allocation of its own.
//!
//! Sending, frames are queued in an [`Outbox`] and a flusher task writes
//! them. The flusher first lets every task that can run at that moment
//! queue its frames too, then writes all of them in as few vectored calls
//! as the socket takes: at queue depth 32, requests (and a replica's
//! answers) leave many per system call and per TCP segment, which costs
//! both ends far less than a call and a segment each.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;

use crate::wire;

/// How much a connection reads at once; also the size of its receive buffer.
const RX_CHUNK: usize = 256 * 1024;

/// Frames larger than this are read into a pooled buffer of their own
/// rather than cut out of the receive buffer.
const LARGE_FRAME: usize = RX_CHUNK / 2;

/// Most pieces one vectored write takes.
const MAX_SLICES: usize = 64;

/// Frames read off one connection.
pub(crate) struct FrameReader<R> {
    r: R,
    rx: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(r: R) -> FrameReader<R> {
        FrameReader {
            r,
            rx: BytesMut::with_capacity(RX_CHUNK),
        }
    }

    /// The next frame's body; `None` at end of stream, on a read error or
    /// on a frame longer than the protocol allows.
    pub(crate) async fn next(&mut self) -> Option<Bytes> {
        volume::buffer::fill(&mut self.r, &mut self.rx, 4, RX_CHUNK)
            .await
            .ok()?;
        let prefix: [u8; 4] = self.rx[..4].try_into().expect("four bytes");
        let n = wire::frame_len(prefix).ok()?;
        if n > LARGE_FRAME {
            // Read into a buffer of the pool, which gets it back once the
            // frame is dropped: a fresh allocation of this size would cost
            // a mapping and a page fault per 4 KiB every time.
            self.rx.advance(4);
            let mut body = volume::buffer::take(n);
            let have = self.rx.len().min(n);
            body[..have].copy_from_slice(&self.rx[..have]);
            self.rx.advance(have);
            if have < n {
                self.r.read_exact(&mut body[have..]).await.ok()?;
            }
            return Some(volume::buffer::into_bytes(body));
        }
        volume::buffer::fill(&mut self.r, &mut self.rx, 4 + n, RX_CHUNK)
            .await
            .ok()?;
        let mut frame = self.rx.split_to(4 + n);
        frame.advance(4);
        Some(frame.freeze())
    }
}

/// The connection is closed: nothing more can be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

/// The sending side of one connection, shared by every task that sends on it.
pub(crate) struct Outbox {
    state: Mutex<Out>,
    /// Wakes the flusher: frames are queued, or the outbox closes.
    wake: Notify,
}

struct Out {
    /// Frame pieces not yet written, in order; the first may be partly written.
    queue: VecDeque<Bytes>,
    /// The flusher was told about what is queued.
    scheduled: bool,
    /// Closed, by the owner or by a failed write: sends fail.
    closed: bool,
    /// The owner has nothing more to send: the flusher ends once all is out.
    finishing: bool,
}

impl Outbox {
    /// An outbox writing to `w`, and its flusher, which the caller runs as a
    /// task and which owns the socket. The flusher returns (dropping the
    /// socket) when the outbox closes, the socket fails, or after
    /// [`Outbox::finish`] once everything is written.
    pub(crate) fn new(w: OwnedWriteHalf) -> (Arc<Outbox>, impl std::future::Future<Output = ()>) {
        let out = Arc::new(Outbox {
            state: Mutex::new(Out {
                queue: VecDeque::new(),
                scheduled: false,
                closed: false,
                finishing: false,
            }),
            wake: Notify::new(),
        });
        let me = out.clone();
        (out, async move { me.flusher(w).await })
    }

    /// Queues the pieces of one or more frames, in order and together; the
    /// flusher writes them.
    pub(crate) fn send(&self, pieces: impl IntoIterator<Item = Bytes>) -> Result<(), Closed> {
        let mut out = self.state.lock().unwrap();
        if out.closed {
            return Err(Closed);
        }
        out.queue
            .extend(pieces.into_iter().filter(|p| !p.is_empty()));
        if !out.scheduled {
            out.scheduled = true;
            drop(out);
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Closes the connection's sending side: what is queued is dropped, and
    /// the flusher drops the socket as soon as it runs (or is aborted).
    pub(crate) fn close(&self) {
        let mut out = self.state.lock().unwrap();
        out.closed = true;
        out.queue.clear();
        drop(out);
        self.wake.notify_one();
    }

    /// Nothing more will be sent: the flusher writes what is queued, then ends.
    pub(crate) fn finish(&self) {
        self.state.lock().unwrap().finishing = true;
        self.wake.notify_one();
    }

    async fn flusher(&self, sock: OwnedWriteHalf) {
        loop {
            loop {
                {
                    let out = self.state.lock().unwrap();
                    if out.closed || (out.finishing && out.queue.is_empty()) {
                        return;
                    }
                    if out.scheduled {
                        break;
                    }
                }
                self.wake.notified().await;
            }
            // Let the tasks that can run now queue their frames too: they
            // leave together, in as few system calls and segments as fit.
            tokio::task::yield_now().await;
            loop {
                let written = {
                    let mut out = self.state.lock().unwrap();
                    if out.closed {
                        return;
                    }
                    let written = write_queue(&sock, &mut out.queue);
                    match written {
                        Written::All => out.scheduled = false,
                        Written::Full => {}
                        Written::Failed => {
                            out.closed = true;
                            out.queue.clear();
                        }
                    }
                    written
                };
                match written {
                    Written::All => break,
                    Written::Failed => return,
                    Written::Full => {
                        tokio::select! {
                            ready = sock.writable() => if ready.is_err() {
                                self.close();
                                return;
                            },
                            // Closed meanwhile, or more queued.
                            _ = self.wake.notified() => {}
                        }
                    }
                }
            }
        }
    }
}

/// What writing the queue came to.
enum Written {
    /// Everything is out.
    All,
    /// The socket is full; the rest stays queued.
    Full,
    /// The socket failed.
    Failed,
}

/// Writes as much of `queue` as `sock` takes without waiting, many pieces
/// per call.
fn write_queue(sock: &OwnedWriteHalf, queue: &mut VecDeque<Bytes>) -> Written {
    while !queue.is_empty() {
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let mut k = 0;
        for (slot, piece) in slices.iter_mut().zip(queue.iter()) {
            *slot = IoSlice::new(piece);
            k += 1;
        }
        match sock.try_write_vectored(&slices[..k]) {
            Ok(0) => return Written::Failed,
            Ok(mut n) => {
                while n > 0 {
                    let first = queue.front_mut().expect("written bytes were queued");
                    if n >= first.len() {
                        n -= first.len();
                        queue.pop_front();
                    } else {
                        first.advance(n);
                        n = 0;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Written::Full,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Written::Failed,
        }
    }
    Written::All
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncReadExt, ReadBuf};
    use tokio::net::{TcpListener, TcpStream};

    /// Hands out its bytes a few at a time, as a slow socket would.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        step: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let n = self
                .step
                .min(self.data.len() - self.at)
                .min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.data[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(()))
        }
    }

    fn framed(bodies: &[Vec<u8>]) -> Vec<u8> {
        let mut v = Vec::new();
        for b in bodies {
            v.extend_from_slice(&(b.len() as u32).to_be_bytes());
            v.extend_from_slice(b);
        }
        v
    }

    #[tokio::test]
    async fn frames_are_cut_whole_however_the_bytes_arrive() {
        // Small frames cut from the receive buffer, and large ones (read
        // into a pooled buffer of their own) among them.
        let bodies: Vec<Vec<u8>> = (0..40u8)
            .map(|i| match i {
                20 => vec![i; 1 << 20],
                _ if i % 7 == 3 => vec![i; 200_000 + i as usize * 1000],
                _ => vec![i; (i as usize * 977) % 70_000 + 1],
            })
            .collect();
        let bytes = framed(&bodies);
        for step in [1, 3, 4096, 1 << 20] {
            let mut rd = FrameReader::new(Trickle {
                data: bytes.clone(),
                at: 0,
                step,
            });
            let mut held = Vec::new();
            for b in &bodies {
                let f = rd.next().await.expect("a whole frame");
                assert_eq!(&f[..], &b[..], "step {step}");
                // Frames kept alive do not disturb the ones after them.
                held.push(f);
            }
            assert!(rd.next().await.is_none(), "end of stream");
            for (f, b) in held.iter().zip(&bodies) {
                assert_eq!(&f[..], &b[..]);
            }
        }
    }

    #[tokio::test]
    async fn a_bad_length_ends_the_stream() {
        let mut bad = ((wire::MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        bad.extend_from_slice(&[0; 16]);
        let mut rd = FrameReader::new(Trickle {
            data: bad,
            at: 0,
            step: 64,
        });
        assert!(rd.next().await.is_none());
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_queued_behind_a_full_socket_leave_in_order() {
        let (a, mut b) = pair().await;
        let (_rd, wr) = a.into_split();
        let (out, flusher) = Outbox::new(wr);
        let flusher = tokio::spawn(flusher);
        // Far more than the socket buffers hold while nobody reads: the
        // later sends only queue behind the flusher.
        let pieces: Vec<Bytes> = (0..64u32)
            .map(|i| Bytes::from(vec![i as u8; 256 * 1024 + i as usize]))
            .collect();
        let senders: Vec<_> = pieces
            .chunks(8)
            .map(|c| {
                let (out, c) = (out.clone(), c.to_vec());
                std::thread::spawn(move || out.send(c))
            })
            .collect();
        let mut order = Vec::new();
        for s in senders {
            s.join().unwrap().unwrap();
        }
        assert!(
            !out.state.lock().unwrap().queue.is_empty(),
            "16 MiB do not fit the socket"
        );
        out.finish();
        let total: usize = pieces.iter().map(|p| p.len()).sum();
        let mut got = vec![0u8; total];
        b.read_exact(&mut got).await.unwrap();
        flusher.await.unwrap();
        assert!(out.state.lock().unwrap().queue.is_empty());
        // Each send's pieces arrive together and in order.
        let mut at = 0;
        while at < got.len() {
            let i = got[at];
            let len = 256 * 1024 + pieces.iter().position(|p| p[0] == i).unwrap();
            assert!(got[at..at + len].iter().all(|&x| x == i));
            order.push(i);
            at += len;
        }
        assert_eq!(order.len(), 64);
        for group in order.chunks(8) {
            let first = group[0];
            assert_eq!(first % 8, 0, "a send starts a group");
            assert!(group.iter().enumerate().all(|(k, &x)| x == first + k as u8));
        }
    }

    #[tokio::test]
    async fn a_closed_outbox_drops_what_is_queued_and_refuses_more() {
        let (a, mut b) = pair().await;
        let (_rd, wr) = a.into_split();
        let (out, flusher) = Outbox::new(wr);
        let flusher = tokio::spawn(flusher);
        out.send([Bytes::from_static(b"hello")]).unwrap();
        let mut hello = [0u8; 5];
        b.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello, b"hello");
        // Queued, but closed before the flusher ran: never sent.
        out.send([Bytes::from_static(b"queued")]).unwrap();
        out.close();
        flusher.await.unwrap();
        assert_eq!(out.send([Bytes::from_static(b"late")]), Err(Closed));
        drop(_rd);
        let mut got = Vec::new();
        // The socket is gone: the reader sees the end and nothing more.
        let _ = b.read_to_end(&mut got).await;
        assert!(got.is_empty(), "{got:?}");
    }

    #[tokio::test]
    async fn a_send_to_a_vanished_peer_fails() {
        let (a, b) = pair().await;
        let _ = b.set_zero_linger();
        drop(b);
        let (_rd, wr) = a.into_split();
        let (out, flusher) = Outbox::new(wr);
        let flusher = tokio::spawn(flusher);
        let mut failed = false;
        for _ in 0..100 {
            if out.send([Bytes::from(vec![0u8; 64 * 1024])]).is_err() {
                failed = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(failed, "the reset reaches the sender");
        flusher.await.unwrap();
    }
}
