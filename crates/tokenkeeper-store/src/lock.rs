//! [`FlockAccountLock`]: the embedded backend's [`AccountLock`]: an advisory `flock` on
//! `<data_dir>/locks/<account>.lock`, shared by every tokenkeeper process of the data directory
//! (`exec`, `refresh` from cron, the daemon). The kernel releases it when the holder's file is
//! closed, so a process that dies never wedges the others.
//!
//! [`FlockLeadership`] is the embedded backend's [`Leadership`]: the same kind of `flock`, on
//! `<data_dir>/leader.lock`. Only `serve` campaigns, so with one `serve` per data directory (the
//! usual case) it always leads; a second `serve` on the same directory waits and takes over when
//! the first ends. A `flock` cannot be lost while its holder lives, so the guard never reports a
//! loss.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use fs4::fs_std::FileExt;
use tokenkeeper_core::backend::{AccountLock, AccountLockGuard, LeaderGuard, Leadership, SeamError};

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
        open_lock_file(&dir, &format!("{account}.lock"))
    }
}

/// Creates `dir` and opens (creating) `dir/name` for `flock`ing.
fn open_lock_file(dir: &std::path::Path, name: &str) -> Result<(File, PathBuf), SeamError> {
    std::fs::create_dir_all(dir).map_err(|source| SeamError::Io { action: "create", path: dir.to_owned(), source })?;
    let path = dir.join(name);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| SeamError::Io { action: "open", path: path.clone(), source })?;
    Ok((file, path))
}

/// How often a `serve` waiting for leadership of a data directory retries the lock.
const LEADER_RETRY: Duration = Duration::from_millis(200);

/// Leadership of one data directory: a `flock` on `<data_dir>/leader.lock`.
#[derive(Debug, Clone)]
pub struct FlockLeadership {
    dir: PathBuf,
}

impl FlockLeadership {
    /// Leadership of the data directory `data_dir` (the lock file is created on first use).
    pub fn new(data_dir: PathBuf) -> Self {
        Self { dir: data_dir }
    }
}

/// Held leadership of a data directory; released when dropped.
#[derive(Debug)]
struct FlockLeaderGuard {
    file: File,
}

impl Drop for FlockLeaderGuard {
    fn drop(&mut self) {
        let _ = FileExt::unlock(&self.file);
    }
}

#[async_trait]
impl LeaderGuard for FlockLeaderGuard {
    async fn lost(&mut self) -> SeamError {
        // The kernel keeps a `flock` for as long as the file is open: it is never lost.
        std::future::pending().await
    }
}

#[async_trait]
impl Leadership for FlockLeadership {
    async fn acquire(&self, _replica: &str, wait: Duration) -> Result<Option<Box<dyn LeaderGuard>>, SeamError> {
        let dir = self.dir.clone();
        let (file, path) = tokio::task::spawn_blocking(move || open_lock_file(&dir, "leader.lock"))
            .await
            .map_err(|e| SeamError::Backend { action: "open the leader lock file".into(), source: Box::new(e) })??;
        let started = tokio::time::Instant::now();
        loop {
            match FileExt::try_lock_exclusive(&file) {
                Ok(true) => return Ok(Some(Box::new(FlockLeaderGuard { file }))),
                Ok(false) => {}
                Err(source) => return Err(SeamError::Io { action: "lock", path, source }),
            }
            if started.elapsed() >= wait {
                return Ok(None);
            }
            tokio::time::sleep(LEADER_RETRY.min(wait)).await;
        }
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

    #[tokio::test]
    async fn one_leader_per_data_directory_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = FlockLeadership::new(dir.path().to_owned());
        let held = first.acquire("a", Duration::ZERO).await.unwrap().expect("nobody leads yet");
        let second = FlockLeadership::new(dir.path().to_owned());
        assert!(second.acquire("b", Duration::from_millis(30)).await.unwrap().is_none(), "two leaders");
        drop(held);
        assert!(second.acquire("b", Duration::ZERO).await.unwrap().is_some(), "no takeover after release");
    }
}
