//! Ordering of overlapping writes on the primary.
//!
//! The primary sends a write to its own copy and to every replica at once,
//! and the copies may apply concurrent writes in different orders. Two
//! writes that touch the same blocks therefore never run at the same time: a
//! write waits until every overlapping write in flight has completed
//! everywhere. Non-overlapping writes run concurrently, so every copy ends up
//! with the same contents whatever order it applied them in.

use std::sync::Mutex;

use tokio::sync::Notify;

/// Block ranges currently in flight.
#[derive(Default)]
pub struct RangeLock {
    held: Mutex<Vec<(u64, u64, u64)>>,
    next: std::sync::atomic::AtomicU64,
    released: Notify,
}

/// Holds a block range until dropped.
pub struct RangeGuard<'a> {
    lock: &'a RangeLock,
    id: u64,
}

impl RangeLock {
    /// Waits until no range in flight overlaps `[start, start + len)`, then holds it.
    pub async fn lock(&self, start: u64, len: u64) -> RangeGuard<'_> {
        let end = start.saturating_add(len.max(1));
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut held = self.held.lock().unwrap();
                if !held.iter().any(|&(s, e, _)| s < end && start < e) {
                    held.push((start, end, id));
                    return RangeGuard { lock: self, id };
                }
            }
            notified.await;
        }
    }

    /// Number of ranges in flight.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.held.lock().unwrap().len()
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        self.lock
            .held
            .lock()
            .unwrap()
            .retain(|&(_, _, id)| id != self.id);
        self.lock.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn overlapping_ranges_wait_and_disjoint_ones_do_not() {
        let l = Arc::new(RangeLock::default());
        let a = l.lock(0, 8).await;
        let _b = l.lock(8, 8).await;
        assert_eq!(l.in_flight(), 2);
        let l2 = l.clone();
        let waiter = tokio::spawn(async move {
            let _c = l2.lock(4, 2).await;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "overlapping lock must wait");
        drop(a);
        tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("released range lets the waiter in")
            .unwrap();
    }
}
