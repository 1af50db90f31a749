//! The worker threads that run blocking file calls for every volume of the
//! store. A sleeping worker is woken only when the jobs waiting outnumber the
//! workers already running, so a busy volume served by one or two awake
//! workers pays no thread wake-up per I/O (tokio's blocking pool wakes a
//! thread for every call), while calls that stall (writeback throttling, a
//! slow disk) let the backlog grow and bring in more workers.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send>;

struct Queue {
    jobs: VecDeque<Job>,
    idle: usize,
    /// Workers running a job right now.
    active: usize,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

/// A fixed pool of I/O worker threads.
pub(crate) struct IoPool {
    shared: Arc<Shared>,
}

impl IoPool {
    /// Starts `threads` workers.
    pub(crate) fn new(threads: usize) -> IoPool {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                idle: 0,
                active: 0,
            }),
            ready: Condvar::new(),
        });
        for i in 0..threads.max(1) {
            let s = shared.clone();
            std::thread::Builder::new()
                .name(format!("tandem-io-{i}"))
                .spawn(move || worker(&s))
                .expect("start an I/O worker thread");
        }
        IoPool { shared }
    }

    /// The pool shared by every volume of the process: enough workers that
    /// calls stalled in the kernel do not hold up the rest.
    pub(crate) fn global() -> &'static IoPool {
        static POOL: OnceLock<IoPool> = OnceLock::new();
        POOL.get_or_init(|| {
            let cpus = std::thread::available_parallelism().map_or(4, |n| n.get());
            IoPool::new((cpus * 4).max(16))
        })
    }

    /// Runs `f` on a worker; the result comes back through the future.
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T, std::io::Error>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        {
            let mut q = self.shared.queue.lock().unwrap();
            q.jobs.push_back(job);
            if q.idle > 0 && (q.active == 0 || q.jobs.len() > q.active) {
                self.shared.ready.notify_one();
            }
        }
        rx.await
            .map_err(|_| std::io::Error::other("an I/O worker thread died"))
    }
}

fn worker(s: &Shared) {
    loop {
        let job = {
            let mut q = s.queue.lock().unwrap();
            loop {
                if let Some(j) = q.jobs.pop_front() {
                    q.active += 1;
                    break j;
                }
                q.idle += 1;
                q = s.ready.wait(q).unwrap();
                q.idle -= 1;
            }
        };
        // A panicking job must not take the worker with it.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        s.queue.lock().unwrap().active -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_and_survives_a_panicking_one() {
        let pool = IoPool::new(2);
        let mut handles = Vec::new();
        for i in 0..100u64 {
            handles.push(pool.run(move || i * 2));
        }
        let mut sum = 0;
        for h in handles {
            sum += h.await.unwrap();
        }
        assert_eq!(sum, 9900);
        let r: Result<(), _> = pool.run(|| panic!("job failed")).await;
        assert!(r.is_err());
        assert_eq!(pool.run(|| 7).await.unwrap(), 7);
    }
}
