//! [`FlockAccountLock`]: the embedded backend's [`AccountLock`]: an advisory `flock` on
//! `<data_dir>/locks/<account>.lock`, shared by every tokenkeeper process of the data directory
//! (`exec`, `refresh` from cron, the daemon). The kernel releases it when the holder's file is
//! closed, so a process that dies never wedges the others.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use fs4::fs_std::FileExt;
use tokenkeeper_core::backend::{AccountLock, AccountLockGuard, SeamError};

/// How often a waiting process retries a taken lock. Short, because a refresh takes
/// milliseconds on a good day and every waiter is a user or a script.
const RETRY: Duration = Duration::from_millis(15);

/// Locks in one directory, one file per account.
#[derive(Debug, Clone)]
pub struct FlockAccountLock {
    dir: PathBuf,
}

impl FlockAccountLock {
    /// Locks kept in `dir` (created on first use), normally `<data_dir>/locks`.
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// Creates the directory and opens the lock file (blocking file-system calls).
    fn open(dir: PathBuf, account: &str) -> Result<(File, PathBuf), SeamError> {
        std::fs::create_dir_all(&dir).map_err(|source| SeamError::Io {
            action: "create",
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(format!("{account}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| SeamError::Io { action: "open", path: path.clone(), source })?;
        Ok((file, path))
    }
}

/// A held `flock`; released when dropped.
#[derive(Debug)]
struct FlockGuard {
    file: File,
}

impl AccountLockGuard for FlockGuard {}

impl Drop for FlockGuard {
    fn drop(&mut self) {
        let _ = FileExt::unlock(&self.file);
    }
}

#[async_trait]
impl AccountLock for FlockAccountLock {
    async fn acquire(&self, account: &str, wait: Duration) -> Result<Box<dyn AccountLockGuard>, SeamError> {
        let dir = self.dir.clone();
        let name = account.to_owned();
        let (file, path) = tokio::task::spawn_blocking(move || Self::open(dir, &name))
            .await
            .map_err(|e| SeamError::Backend { action: "open a lock file".into(), source: Box::new(e) })??;
        let started = tokio::time::Instant::now();
        loop {
            // Non-blocking try: waiting happens on the runtime's timer, never in a thread.
            match FileExt::try_lock_exclusive(&file) {
                Ok(true) => return Ok(Box::new(FlockGuard { file })),
                Ok(false) => {}
                Err(source) => return Err(SeamError::Io { action: "lock", path, source }),
            }
            if started.elapsed() >= wait {
                return Err(SeamError::Timeout {
                    what: format!("the refresh lock of `{account}` ({})", path.display()),
                    waited: wait,
                });
            }
            tokio::time::sleep(RETRY).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn excludes_and_releases() {
        let dir = tempfile::tempdir().unwrap();
        let lock = FlockAccountLock::new(dir.path().join("locks"));
        let held = lock.acquire("main", Duration::from_millis(10)).await.unwrap();
        // Another open file description of the same lock file (as another process has).
        let other = FlockAccountLock::new(dir.path().join("locks"));
        let err = other.acquire("main", Duration::from_millis(40)).await.unwrap_err();
        assert!(err.to_string().contains("`main`"), "{err}");
        // A different account is independent.
        let _b = other.acquire("spare", Duration::from_millis(10)).await.unwrap();
        drop(held);
        other.acquire("main", Duration::from_millis(10)).await.unwrap();
    }
}
