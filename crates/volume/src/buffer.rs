//! Reusable I/O buffers. A read takes its buffer here and the transport gives
//! it back once the data is on the wire, so steady-state I/O neither
//! allocates nor zeroes: a 1 MiB read through `vec![0; len]` costs a fresh
//! mapping, 256 page faults and a memset, about a tenth of the CPU time of
//! 1 MiB sequential reads.
//!
//! Buffers come in power-of-two classes from 4 KiB to 2 MiB; larger ones are
//! allocated and freed as usual. Classes from 128 KiB up hold 1/256 more
//! than their power of two ([`HEADROOM_FROM`]), so a message of that much
//! data and a small header (a replication frame of a 1 MiB write) fits the
//! class of its data, not half of the next one, and giving it back rewrites
//! only that headroom. Each class keeps at most [`KEEP_BYTES`]
//! (and at least [`KEEP_MIN`] buffers), so an idle pool holds at most a few
//! MiB per class.

use std::sync::Mutex;

/// Smallest class: one page.
const MIN_SHIFT: u32 = 12;
/// Largest class: 2 MiB, which holds a replication frame of a 2 MiB write
/// (the 1 MiB class holds one of a 1 MiB write, with its headroom), as well
/// as the largest read served inline.
const MAX_SHIFT: u32 = 21;
const CLASSES: usize = (MAX_SHIFT - MIN_SHIFT + 1) as usize;
/// Bytes a class keeps for reuse. Keeping 8 MiB made 1 MiB writes to a
/// single node about 10 % slower here (more buffers in turn, fewer of them
/// in the CPU's caches) and a resync no faster.
pub const KEEP_BYTES: usize = 4 << 20;
/// Buffers a class keeps for reuse, however large they are.
pub const KEEP_MIN: usize = 4;

static POOL: [Mutex<Vec<Vec<u8>>>; CLASSES] = [const { Mutex::new(Vec::new()) }; CLASSES];

/// Smallest class whose buffers hold 1/256 more than their power of two.
const HEADROOM_FROM: u32 = 17;

/// The class a buffer of `len` bytes comes from, if any.
fn class_for(len: usize) -> Option<usize> {
    let shift = len
        .max(1)
        .next_power_of_two()
        .trailing_zeros()
        .max(MIN_SHIFT);
    let class = (shift - MIN_SHIFT) as usize;
    // The class below may hold it, with its headroom.
    if class > 0 && class <= CLASSES && class_len(class - 1) >= len {
        return Some(class - 1);
    }
    (shift <= MAX_SHIFT).then_some(class)
}

/// The largest class an allocation of `cap` bytes holds, unless that would
/// waste half of it or more (a little more where `cap` falls short of a
/// class's headroom).
fn class_holding(cap: usize) -> Option<usize> {
    if cap < 1 << MIN_SHIFT {
        return None;
    }
    let shift = usize::BITS - 1 - cap.leading_zeros();
    if shift > MAX_SHIFT {
        return None;
    }
    let class = (shift - MIN_SHIFT) as usize;
    if class_len(class) <= cap {
        Some(class)
    } else {
        // Short of its class's headroom: the class below.
        class.checked_sub(1)
    }
}

fn class_len(class: usize) -> usize {
    let shift = class as u32 + MIN_SHIFT;
    let base = 1 << shift;
    if shift >= HEADROOM_FROM {
        base + (base >> 8)
    } else {
        base
    }
}

fn keep(class: usize) -> usize {
    (KEEP_BYTES >> (class as u32 + MIN_SHIFT)).max(KEEP_MIN)
}

/// A buffer of exactly `len` bytes whose contents are unspecified: they are
/// whatever its last user left there. The caller overwrites every byte
/// before anything reads them (a read fills it from the disk or fails and
/// drops it), so no data of one volume can reach another.
pub fn take(len: usize) -> Vec<u8> {
    let Some(class) = class_for(len) else {
        return vec![0u8; len];
    };
    let reused = POOL[class].lock().unwrap().pop();
    let mut buf = reused.unwrap_or_else(|| vec![0u8; class_len(class)]);
    buf.truncate(len);
    buf
}

/// A buffer of `len` zero bytes.
pub fn zeroed(len: usize) -> Vec<u8> {
    let mut buf = take(len);
    buf.fill(0);
    buf
}

/// Gives a buffer back for reuse. Buffers that fit no class, and buffers
/// beyond what a class keeps, are freed.
pub fn give(mut buf: Vec<u8>) {
    let Some(class) = class_holding(buf.capacity()) else {
        return;
    };
    let len = class_len(class);
    let mut pool = POOL[class].lock().unwrap();
    if pool.len() >= keep(class) {
        return;
    }
    // Only the part beyond its last use is written; a buffer given back at
    // full length costs nothing here.
    buf.resize(len, 0);
    pool.push(buf);
}

/// A pooled buffer as [`bytes::Bytes`]: its memory goes back to the pool
/// when the last handle on it drops.
pub fn into_bytes(buf: Vec<u8>) -> bytes::Bytes {
    bytes::Bytes::from_owner(Pooled(buf))
}

struct Pooled(Vec<u8>);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        give(std::mem::take(&mut self.0));
    }
}

/// Why [`fill`] stopped before the buffer held what was needed.
#[derive(Debug)]
pub struct Short {
    /// Part of the next message had arrived: it was cut off.
    pub inside: bool,
    /// The read error; `None` when the peer closed the connection.
    pub error: Option<std::io::Error>,
}

/// Reads from `r` until `rx` holds at least `need` bytes. Messages are cut
/// out of `rx` without a copy (`split_to(..).freeze()`), so they share its
/// memory; with many requests in flight one read brings in many of them.
///
/// When no message cut from the buffer is alive any more, what is left of
/// the next one moves to its front and all of the buffer is reused. While
/// one is (a request still running), the rest of the buffer is read into
/// first; only a full buffer takes a new allocation, of `chunk` or the
/// message's size. So a connection whose requests finish as they arrive
/// allocates once, and one with `n` requests running keeps at most about
/// `n` chunks alive.
pub async fn fill<R>(
    r: &mut R,
    rx: &mut bytes::BytesMut,
    need: usize,
    chunk: usize,
) -> Result<(), Short>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    while rx.len() < need {
        let want = (need - rx.len()).max(chunk / 4);
        let spare = rx.capacity() - rx.len();
        if spare < want && !rx.try_reclaim(want) && spare == 0 {
            rx.reserve(want);
        }
        let inside = !rx.is_empty();
        match r.read_buf(rx).await {
            Ok(0) => {
                return Err(Short {
                    inside,
                    error: None,
                })
            }
            Ok(_) => {}
            Err(e) => {
                return Err(Short {
                    inside,
                    error: Some(e),
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_round_up_to_a_power_of_two_from_one_page() {
        assert_eq!(class_for(0), Some(0));
        assert_eq!(class_for(512), Some(0));
        assert_eq!(class_for(4096), Some(0));
        assert_eq!(class_for(4097), Some(1));
        assert_eq!(class_for(1 << 20), Some(8));
        assert_eq!(class_for((2 << 20) + 1), Some(9));
        assert_eq!(class_for((2 << 20) + (8 << 10) + 1), None);
    }

    #[test]
    fn every_length_gets_the_smallest_class_that_holds_it() {
        let mut lens: Vec<usize> = (0..=MAX_SHIFT + 2)
            .flat_map(|s| {
                let p = 1usize << s;
                [p - 1, p, p + 1, p + 40, p + (p >> 8), p + (p >> 8) + 1]
            })
            .collect();
        lens.extend((0..5000).map(|i| i * 613));
        for len in lens {
            match class_for(len) {
                Some(c) => {
                    assert!(class_len(c) >= len, "{len} fits class {c}");
                    assert!(c == 0 || class_len(c - 1) < len, "{len}: not a smaller one");
                }
                None => assert!(len > class_len(CLASSES - 1), "{len} has no class"),
            }
        }
    }

    #[test]
    fn a_large_class_holds_its_power_of_two_and_a_header() {
        // Below 128 KiB a class is its power of two.
        assert_eq!(class_len(class_for(64 << 10).unwrap()), 64 << 10);
        assert_eq!(class_for((64 << 10) + 1), class_for(128 << 10));
        // From 128 KiB up, 1/256 more: a 1 MiB write and its frame header
        // share the 1 MiB class, whose buffers are 1 MiB and 4 KiB.
        assert_eq!(class_len(class_for(128 << 10).unwrap()), (128 << 10) + 512);
        assert_eq!(class_for((1 << 20) + 40), class_for(1 << 20));
        assert_eq!(
            class_len(class_for(1 << 20).unwrap()),
            (1 << 20) + (4 << 10)
        );
        assert_eq!(class_for((1 << 20) + (4 << 10) + 1), class_for(2 << 20));
        // A buffer given back at the length it was taken with is kept in
        // the class it came from.
        for len in [4096, 100 << 10, 128 << 10, (1 << 20) + 40, 2 << 20] {
            let class = class_for(len).unwrap();
            assert_eq!(class_holding(class_len(class)), Some(class), "{len}");
        }
    }

    #[test]
    fn a_buffer_given_back_is_taken_again_without_a_new_allocation() {
        // 96 KiB: a class (128 KiB) no other test in this crate uses.
        let mut a = take(96 * 1024);
        assert_eq!(a.len(), 96 * 1024);
        a.fill(7);
        let at = a.as_ptr();
        give(a);
        let b = take(100 * 1024);
        assert_eq!(b.as_ptr(), at, "the pooled buffer is reused");
        assert_eq!(b.len(), 100 * 1024);
        // Its contents are whatever was left: the caller overwrites them.
        assert_eq!(b[0], 7);
        give(b);
        let z = zeroed(128 * 1024);
        assert!(z.iter().all(|&x| x == 0));
        give(z);
    }

    #[test]
    fn a_buffer_lent_out_as_bytes_comes_back_when_the_last_handle_drops() {
        // 40 KiB: the 64 KiB class, which no other test here uses.
        let mut a = take(40 * 1024);
        a.fill(3);
        let at = a.as_ptr();
        let bytes = into_bytes(a);
        let part = bytes.slice(100..200);
        drop(bytes);
        assert_eq!(&part[..], &[3u8; 100][..], "a slice keeps it alive");
        drop(part);
        let b = take(40 * 1024);
        assert_eq!(b.as_ptr(), at, "back in the pool, taken again");
        give(b);
    }

    #[test]
    fn odd_buffers_and_large_ones_are_not_kept() {
        let big = take(5 << 20);
        assert_eq!(big.len(), 5 << 20);
        give(big);
        assert_eq!(class_holding(5 << 20), None);
        // 12 KiB holds the 8 KiB class, wasting less than half of it.
        assert_eq!(class_holding(12 * 1024), Some(1));
        // A plain 1 MiB allocation lacks the 1 MiB class's headroom.
        assert_eq!(class_holding(1 << 20), Some(7));
        assert_eq!(class_holding(class_len(8)), Some(8));
        // A small vector is not worth keeping.
        assert_eq!(class_holding(100), None);
        give(vec![0u8; 100]);
    }

    #[test]
    fn a_class_keeps_a_bounded_number_of_buffers() {
        // 512 KiB: at most KEEP_BYTES / 512 KiB = 8 are kept.
        let class = class_for(512 * 1024).unwrap();
        let bufs: Vec<Vec<u8>> = (0..20).map(|_| take(512 * 1024)).collect();
        for b in bufs {
            give(b);
        }
        assert_eq!(POOL[class].lock().unwrap().len(), keep(class));
        assert_eq!(keep(class), 8);
    }
}
