//! The hop of blocking file work onto tokio's blocking pool.

use std::io;

/// Runs `f`, file work that may wait on the disk (a sync, a rename, hole
/// punching), on tokio's growing blocking pool, so that it never holds up a
/// runtime worker and the tasks queued behind it. A task that panicked or
/// was cancelled by a runtime shutting down comes back as an error.
pub async fn blocking<T, F>(f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(io::Error::other(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn runs_off_the_runtime_and_reports_a_panic() {
        let runtime_thread = std::thread::current().id();
        let ran_on = blocking(|| Ok(std::thread::current().id())).await.unwrap();
        assert_ne!(ran_on, runtime_thread);
        let e = blocking(|| -> io::Result<()> { Err(io::Error::other("disk gone")) })
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "disk gone");
        let panicked = blocking(|| -> io::Result<()> { panic!("bug") }).await;
        assert!(panicked.is_err());
    }
}
