//! Frames on an open replication connection, both ways.
//!
//! Receiving, frames are cut out of one buffer ([`FrameReader`]): one read
//! brings in every frame that has arrived, and a frame's data is a slice of
//! that buffer, not an allocation of its own.
//!
//! With busy polling on ([`crate::set_busy_poll`]), a reader whose frames
//! come one at a time and that finds no whole frame waiting reads the
//! socket again and again without blocking (a system call of its own, as
//! the runtime reads a socket only once its event loop has reported it
//! ready, which another, sleeping, thread may hold), letting the runtime's
//! other tasks run in between, for up to that long before it sleeps.
//! Frames that come many at a time (a queue depth above one) are never
//! polled for: a thread is rarely idle long then, and polling would only
//! take CPU time from the work that sends them.
//!
//! Sending, frames are queued in an [`Outbox`] and a flusher task writes
//! them. The flusher first lets every task that can run at that moment
//! queue its frames too, then writes all of them in as few vectored calls
//! as the socket takes: at queue depth 32, requests (and a replica's
//! answers) leave many per system call and per TCP segment, which costs
//! both ends far less than a call and a segment each. A request sent alone
//! on a link (nothing else awaited there) is urgent and leaves without that
//! round: no other frame would join it, and the primary lets it go before
//! its own write starts, so both copies write at once.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
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
    /// Busy polling, when on.
    poll: Option<Polling>,
    /// How many of the recent frames were waiting when asked for, in
    /// 1/1024ths: a moving average over about 16 frames.
    waiting: u32,
    /// This reader's polls that caught a frame, and that ran out.
    polls: [u64; 2],
}

/// How a reader polls.
struct Polling {
    /// For how long at most, each time.
    budget: Duration,
    /// The socket, read without blocking (a second descriptor of it).
    socket: std::net::TcpStream,
    /// Where those reads land before they join the receive buffer.
    scratch: Box<[u8]>,
    /// What the frames are, for the counts.
    what: crate::PollFor,
    /// Whether to poll now, besides frames coming one at a time.
    wanted: Box<dyn Fn() -> bool + Send + Sync>,
}

/// A second descriptor of `socket`, for polling it without the runtime;
/// `None` where the system has none to give.
fn pollable(socket: &tokio::net::TcpStream) -> Option<std::net::TcpStream> {
    use std::os::fd::AsFd;
    let fd = socket.as_fd().try_clone_to_owned().ok()?;
    Some(std::net::TcpStream::from(fd))
}

/// What [`FrameReader::next_or`] got.
pub(crate) enum Next {
    /// A frame's body.
    Frame(Bytes),
    /// The end of the stream, a read error or a frame longer than the
    /// protocol allows.
    End,
    /// Woken before a frame began to arrive.
    Kicked,
}

/// Above this share of frames found waiting (in 1/1024ths, a quarter),
/// frames are taken to come many at a time and are not polled for.
const POLL_WAITING_MAX: u32 = 256;

impl FrameReader<OwnedReadHalf> {
    /// [`FrameReader::busy_polling`] for as long as this process polls
    /// ([`crate::busy_poll`]): not at all by default.
    pub(crate) fn busy_polling_as_set(
        self,
        what: crate::PollFor,
        wanted: impl Fn() -> bool + Send + Sync + 'static,
    ) -> FrameReader<OwnedReadHalf> {
        let budget = crate::busy_poll();
        let socket = (!budget.is_zero())
            .then(|| pollable(self.r.as_ref()))
            .flatten();
        self.busy_polling(budget, socket, what, wanted)
    }
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(r: R) -> FrameReader<R> {
        FrameReader {
            r,
            rx: BytesMut::with_capacity(RX_CHUNK),
            poll: None,
            waiting: 0,
            polls: [0; 2],
        }
    }

    /// Polls `socket` (see [`pollable`]) for up to `budget` for each frame
    /// not already received, while frames come one at a time and `wanted`
    /// says so, before it sleeps until the socket has more (see the
    /// module's notes). Zero: never.
    pub(crate) fn busy_polling(
        mut self,
        budget: Duration,
        socket: Option<std::net::TcpStream>,
        what: crate::PollFor,
        wanted: impl Fn() -> bool + Send + Sync + 'static,
    ) -> FrameReader<R> {
        self.poll = socket.filter(|_| !budget.is_zero()).map(|socket| Polling {
            budget,
            socket,
            scratch: vec![0; RX_CHUNK / 4].into_boxed_slice(),
            what,
            wanted: Box::new(wanted),
        });
        self
    }

    /// Whether this reader polls.
    pub(crate) fn is_polling(&self) -> bool {
        self.poll.is_some()
    }

    /// Whether a whole frame (or the prefix of one too large to cut from
    /// the receive buffer, or a bad prefix) has been received.
    fn has_frame(&self) -> bool {
        let Some(prefix) = self.rx.get(..4) else {
            return false;
        };
        match wire::frame_len(prefix.try_into().expect("four bytes")) {
            Ok(n) => n > LARGE_FRAME || self.rx.len() >= 4 + n,
            Err(_) => true,
        }
    }

    /// Polls for a frame if this reader polls, its frames come one at a
    /// time and it is wanted; counts the poll.
    async fn maybe_poll(&mut self) {
        let Some(p) = &self.poll else { return };
        if self.has_frame() || self.waiting > POLL_WAITING_MAX || !(p.wanted)() {
            return;
        }
        let what = p.what;
        // A poll ended by the end of the stream is not counted.
        if let Some(caught) = self.poll_for_frame().await {
            self.polls[usize::from(!caught)] += 1;
            crate::count_poll(what, caught);
        }
    }

    /// Reads what the socket holds, without blocking, until a frame is
    /// whole or the budget has passed, yielding to the runtime's other
    /// tasks between tries. Whether a frame came; `None` when the stream
    /// ended or failed instead, which the read that follows sees as its
    /// end (a failure is told once, to the first read).
    async fn poll_for_frame(&mut self) -> Option<bool> {
        use std::io::Read;
        let since = Instant::now();
        loop {
            let Some(p) = &mut self.poll else {
                return Some(false);
            };
            if since.elapsed() >= p.budget {
                return Some(false);
            }
            match (&p.socket).read(&mut p.scratch) {
                Ok(0) => return None,
                Ok(n) => {
                    self.rx.extend_from_slice(&p.scratch[..n]);
                    if self.has_frame() {
                        return Some(true);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    tokio::task::yield_now().await
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }

    /// The next frame's body; `None` at end of stream, on a read error or
    /// on a frame longer than the protocol allows.
    pub(crate) async fn next(&mut self) -> Option<Bytes> {
        match self.next_or(None).await {
            Next::Frame(body) => Some(body),
            Next::End | Next::Kicked => None,
        }
    }

    /// As [`FrameReader::next`], but `kick` ends the wait for a frame that
    /// has not begun to arrive ([`Next::Kicked`]): the caller may want to
    /// poll from then on. Waiting for the rest of a frame is not cut short.
    pub(crate) async fn next_or(&mut self, kick: Option<&tokio::sync::Notify>) -> Next {
        let waiting = self.has_frame();
        self.maybe_poll().await;
        let filled = match kick {
            // Reading into the receive buffer loses nothing when cut short.
            Some(kick) if self.rx.len() < 4 => tokio::select! {
                // Bytes that came win over a kick.
                biased;
                filled = volume::buffer::fill(&mut self.r, &mut self.rx, 4, RX_CHUNK) => filled,
                _ = kick.notified() => return Next::Kicked,
            },
            _ => volume::buffer::fill(&mut self.r, &mut self.rx, 4, RX_CHUNK).await,
        };
        match self.next_filled(filled.is_ok()).await {
            Some(body) => {
                self.waiting = self.waiting - self.waiting / 16 + if waiting { 64 } else { 0 };
                Next::Frame(body)
            }
            None => Next::End,
        }
    }

    /// The rest of [`FrameReader::next_or`], once the frame's length has
    /// come (`filled`) or the stream has ended.
    async fn next_filled(&mut self, filled: bool) -> Option<Bytes> {
        if !filled {
            return None;
        }
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
    /// What is queued should leave without waiting for other frames.
    urgent: bool,
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
                urgent: false,
            }),
            wake: Notify::new(),
        });
        let me = out.clone();
        (out, async move { me.flusher(w).await })
    }

    /// Queues the pieces of one or more frames, in order and together; the
    /// flusher writes them.
    pub(crate) fn send(&self, pieces: impl IntoIterator<Item = Bytes>) -> Result<(), Closed> {
        self.send_as(pieces, false)
    }

    /// As [`Outbox::send`]; `urgent` frames leave as soon as the flusher
    /// runs, without first letting other tasks queue theirs.
    pub(crate) fn send_as(
        &self,
        pieces: impl IntoIterator<Item = Bytes>,
        urgent: bool,
    ) -> Result<(), Closed> {
        let mut out = self.state.lock().unwrap();
        if out.closed {
            return Err(Closed);
        }
        out.urgent |= urgent;
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
            let urgent = std::mem::take(&mut self.state.lock().unwrap().urgent);
            if !urgent {
                tokio::task::yield_now().await;
            }
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadBuf};
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

    /// Sends `body` as a frame on `w` after `after`.
    fn send_later(
        mut w: TcpStream,
        body: Vec<u8>,
        after: Duration,
    ) -> tokio::task::JoinHandle<TcpStream> {
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            w.write_all(&framed(&[body])).await.unwrap();
            w
        })
    }

    // Two runtime threads: the one polling does not hold the event loop,
    // which must not keep it from seeing the frame.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_frame_that_comes_while_the_reader_polls_is_caught_and_one_that_comes_later_still_arrives(
    ) {
        let (a, b) = pair().await;
        let mut rd = polling(b, Duration::from_secs(2));
        // Polled for, not slept for: the write lands within the budget.
        let w = send_later(a, vec![1; 100], Duration::from_millis(5));
        assert_eq!(&rd.next().await.unwrap()[..], &[1; 100][..]);
        assert_eq!(rd.polls, [1, 0]);
        // Past a short budget the reader sleeps and is woken by the frame.
        let w = send_later(w.await.unwrap(), vec![2; 100], Duration::from_millis(300));
        set_budget(&mut rd, Duration::from_millis(1));
        assert_eq!(&rd.next().await.unwrap()[..], &[2; 100][..]);
        assert_eq!(rd.polls, [1, 1]);
        // The end of the stream ends a poll at once.
        set_budget(&mut rd, Duration::from_secs(60));
        drop(w.await.unwrap());
        let t = Instant::now();
        assert!(rd.next().await.is_none());
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn frames_that_come_many_at_a_time_are_not_polled_for_until_they_come_one_at_a_time_again(
    ) {
        let (mut a, b) = pair().await;
        let mut rd = polling(b, Duration::from_secs(2));
        let many: Vec<Vec<u8>> = (0..64u8).map(|i| vec![i; 64]).collect();
        a.write_all(&framed(&many)).await.unwrap();
        for body in &many {
            assert_eq!(&rd.next().await.unwrap()[..], &body[..]);
        }
        let after_many = rd.polls;
        assert!(after_many.iter().sum::<u64>() <= 1, "{after_many:?}");
        // Frames one at a time: the first ones are not polled for, then
        // polling comes back as the share found waiting falls.
        for i in 0..40u8 {
            a = send_later(a, vec![i; 10], Duration::from_millis(2))
                .await
                .unwrap();
            assert_eq!(&rd.next().await.unwrap()[..], &[i; 10][..]);
            let polled = rd.polls.iter().sum::<u64>() - after_many.iter().sum::<u64>();
            if i < 16 {
                assert_eq!(polled, 0, "frame {i} came right after many");
            }
        }
        assert!(rd.polls[0] - after_many[0] >= 10, "{:?}", rd.polls);
    }

    /// A reader of `s` that polls for up to `budget`.
    fn polling(s: TcpStream, budget: Duration) -> FrameReader<TcpStream> {
        let socket = pollable(&s);
        assert!(socket.is_some());
        FrameReader::new(s).busy_polling(budget, socket, crate::PollFor::Request, || true)
    }

    fn set_budget(rd: &mut FrameReader<TcpStream>, budget: Duration) {
        rd.poll.as_mut().unwrap().budget = budget;
    }

    // The poll takes one frame and the start of the next, then runs out;
    // the runtime, which saw the socket ready before the poll emptied it,
    // reads the rest.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_frame_begun_by_a_poll_that_ran_out_is_finished_by_the_wait_that_follows() {
        for round in 0..20u64 {
            let (mut a, b) = pair().await;
            let mut rd = polling(b, Duration::from_secs(2));
            let frames = framed(&[vec![1; 1000], vec![2; 3000]]);
            a.write_all(&frames[..2500]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
            assert_eq!(&rd.next().await.unwrap()[..], &[1; 1000][..]);
            set_budget(&mut rd, Duration::from_micros(200 + round % 7 * 100));
            let rest = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(3)).await;
                a.write_all(&frames[2500..2600]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(3)).await;
                a.write_all(&frames[2600..]).await.unwrap();
                a
            });
            let second = tokio::time::timeout(Duration::from_secs(10), rd.next())
                .await
                .expect("the rest of the frame is read");
            assert_eq!(&second.unwrap()[..], &[2; 3000][..], "round {round}");
            drop(rest.await.unwrap());
        }
    }

    #[tokio::test]
    async fn a_kick_ends_the_wait_for_a_frame_not_begun_and_loses_nothing() {
        let (mut a, b) = pair().await;
        let mut rd = FrameReader::new(b);
        let kick = Arc::new(tokio::sync::Notify::new());
        kick.notify_one();
        assert!(matches!(rd.next_or(Some(&kick)).await, Next::Kicked));
        // Half a length prefix in, then a kick: cut short, the two bytes
        // are kept. Later, mid-frame, a kick does not cut the wait short.
        let frame = framed(&[vec![7; 300_000], vec![8; 10]]);
        a.write_all(&frame[..2]).await.unwrap();
        let k = kick.clone();
        let later = tokio::spawn(async move {
            let pause = || tokio::time::sleep(Duration::from_millis(20));
            pause().await;
            k.notify_one();
            pause().await;
            a.write_all(&frame[2..100]).await.unwrap();
            pause().await;
            k.notify_one();
            pause().await;
            a.write_all(&frame[100..]).await.unwrap();
            a
        });
        let mut kicks = 0;
        let first = loop {
            match rd.next_or(Some(&kick)).await {
                Next::Frame(body) => break body,
                Next::Kicked => kicks += 1,
                Next::End => panic!("the stream ended"),
            }
        };
        assert_eq!(kicks, 1, "kicked before the frame began, not during it");
        assert_eq!(first.len(), 300_000);
        assert!(first.iter().all(|&x| x == 7));
        let _a = later.await.unwrap();
        assert_eq!(&rd.next().await.unwrap()[..], &[8; 10][..]);
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
    async fn an_urgent_frame_is_written_before_the_sender_runs_again() {
        let (a, b) = pair().await;
        let (_rd, wr) = a.into_split();
        let (out, flusher) = Outbox::new(wr);
        let _flusher = tokio::spawn(flusher);
        let peer = pollable(&b).unwrap();
        let mut got = [0u8; 16];
        for (frame, urgent) in [(&b"batched"[..], false), (&b"urgent"[..], true)] {
            out.send_as([Bytes::from_static(frame)], urgent).unwrap();
            tokio::task::yield_now().await;
            let read = std::io::Read::read(&mut &peer, &mut got);
            if urgent {
                // The flusher ran once, and wrote at once.
                assert_eq!(&got[..read.unwrap()], frame);
            } else {
                // The flusher ran once, and let others queue first.
                let kind = read.map(|n| n.to_string()).map_err(|e| e.kind());
                assert_eq!(kind, Err(std::io::ErrorKind::WouldBlock));
                // It writes once this task lets it run again.
                tokio::time::sleep(Duration::from_millis(10)).await;
                let n = std::io::Read::read(&mut &peer, &mut got).unwrap();
                assert_eq!(&got[..n], frame);
            }
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
