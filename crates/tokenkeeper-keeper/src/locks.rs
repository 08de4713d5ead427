//! The three locks a refresh takes, in this order:
//!
//! 1. [`SingleFlight`]: one refresh per account inside this process (a tokio mutex per account);
//! 2. [`DataDirLock`]: one refresh per account across processes sharing the data directory
//!    (`exec`, `refresh` from cron, the daemon): an advisory `flock` on
//!    `<data_dir>/locks/<account>.lock`, released by the kernel if the process dies;
//! 3. [`ClaudeLock`]: when the account is bound to a Claude Code credentials file, Claude Code's
//!    own `proper-lockfile` locks, so tokenkeeper and Claude Code never refresh at once. These
//!    are directories (`mkdir` is atomic): `<configdir>.lock` (older versions, stale after
//!    ~10 s) and `<configdir>/.oauth_refresh.lock` (newer versions, stale after 60 s). While we
//!    hold them we touch their mtime every couple of seconds, as `proper-lockfile` does, so
//!    Claude Code does not take them for stale.
//!
//! Waiting for a lock is bounded; a caller that cannot get one gets [`LockError::Timeout`].

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fs4::fs_std::FileExt;
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};
use tokio::task::JoinHandle;

/// Errors taking a lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lock stayed taken for longer than we wait.
    #[error("{what} is held by another process (waited {waited:?}); try again later")]
    Timeout {
        /// Which lock.
        what: String,
        /// How long we waited.
        waited: Duration,
    },
    /// The lock file or directory could not be used.
    #[error("cannot {action} {path}")]
    Io {
        /// What we were doing.
        action: &'static str,
        /// Which path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// One refresh per account within this process.
#[derive(Debug, Default)]
pub struct SingleFlight {
    locks: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

impl SingleFlight {
    /// Waits for and takes the account's in-process lock.
    pub async fn acquire(&self, account: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(account.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }
}

/// How often a waiting process retries a taken lock. Short, because a refresh takes
/// milliseconds on a good day and every waiter is a user or a script.
const RETRY: Duration = Duration::from_millis(15);

/// An exclusive `flock` on `<data_dir>/locks/<account>.lock`, held until dropped.
#[derive(Debug)]
pub struct DataDirLock {
    file: File,
}

impl DataDirLock {
    /// Takes the cross-process lock of `account`, waiting up to `wait`.
    pub async fn acquire(data_dir: &Path, account: &str, wait: Duration) -> Result<Self, LockError> {
        let dir = data_dir.join("locks");
        std::fs::create_dir_all(&dir).map_err(|source| LockError::Io {
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
            .map_err(|source| LockError::Io { action: "open", path: path.clone(), source })?;
        let started = tokio::time::Instant::now();
        loop {
            match FileExt::try_lock_exclusive(&file) {
                Ok(true) => return Ok(Self { file }),
                Ok(false) => {}
                Err(source) => return Err(LockError::Io { action: "lock", path, source }),
            }
            if started.elapsed() >= wait {
                return Err(LockError::Timeout {
                    what: format!("the refresh lock of `{account}` ({})", path.display()),
                    waited: wait,
                });
            }
            tokio::time::sleep(RETRY).await;
        }
    }
}

impl Drop for DataDirLock {
    fn drop(&mut self) {
        let _ = FileExt::unlock(&self.file);
    }
}

/// One of Claude Code's lock directories and how long until it counts as stale.
#[derive(Debug, Clone)]
pub struct ClaudeLockDir {
    /// The directory.
    pub path: PathBuf,
    /// Age of mtime after which the holder is presumed dead.
    pub stale: Duration,
}

/// The lock directories Claude Code uses around a refresh of the file in `config_dir`.
pub fn claude_lock_dirs(config_dir: &Path) -> Vec<ClaudeLockDir> {
    let mut older = config_dir.as_os_str().to_owned();
    older.push(".lock");
    vec![
        ClaudeLockDir { path: PathBuf::from(older), stale: Duration::from_secs(10) },
        ClaudeLockDir { path: config_dir.join(".oauth_refresh.lock"), stale: Duration::from_secs(60) },
    ]
}

/// Claude Code's `proper-lockfile` locks, held until dropped.
#[derive(Debug)]
pub struct ClaudeLock {
    held: Vec<PathBuf>,
    keeper: Option<JoinHandle<()>>,
}

/// How often we refresh the mtime of a lock we hold (`proper-lockfile` uses stale/2; we use
/// less than the shortest stale threshold's half).
const TOUCH_EVERY: Duration = Duration::from_secs(2);

fn mtime_age(path: &Path) -> Option<Duration> {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok()?;
    Some(SystemTime::now().duration_since(modified).unwrap_or_default())
}

fn touch(path: &Path) -> std::io::Result<()> {
    File::open(path)?.set_modified(SystemTime::now())
}

impl ClaudeLock {
    /// Takes every lock directory of `dirs` (in order), waiting up to `wait` in all.
    /// A directory whose mtime is older than its stale threshold is taken over, as
    /// `proper-lockfile` itself does.
    pub async fn acquire(dirs: &[ClaudeLockDir], wait: Duration) -> Result<Self, LockError> {
        let started = tokio::time::Instant::now();
        let mut lock = ClaudeLock { held: Vec::new(), keeper: None };
        for dir in dirs {
            if let Some(parent) = dir.path.parent() {
                if !parent.exists() {
                    // No config directory means no Claude Code to coordinate with.
                    continue;
                }
            }
            loop {
                match std::fs::create_dir(&dir.path) {
                    Ok(()) => {
                        lock.held.push(dir.path.clone());
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        if mtime_age(&dir.path).is_some_and(|age| age > dir.stale) {
                            tracing::warn!(lock = %dir.path.display(), "taking over a stale Claude Code lock");
                            // Another waiter may remove it first; either way we retry mkdir.
                            let _ = std::fs::remove_dir(&dir.path);
                            continue;
                        }
                    }
                    Err(source) => {
                        return Err(LockError::Io { action: "create lock directory", path: dir.path.clone(), source })
                    }
                }
                if started.elapsed() >= wait {
                    return Err(LockError::Timeout {
                        what: format!("Claude Code's lock {}", dir.path.display()),
                        waited: wait,
                    });
                }
                tokio::time::sleep(RETRY).await;
            }
        }
        if !lock.held.is_empty() {
            let held = lock.held.clone();
            lock.keeper = Some(tokio::spawn(async move {
                let mut tick = tokio::time::interval(TOUCH_EVERY);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    for p in &held {
                        let _ = touch(p);
                    }
                }
            }));
        }
        Ok(lock)
    }

    /// The directories held.
    pub fn held(&self) -> &[PathBuf] {
        &self.held
    }
}

impl Drop for ClaudeLock {
    fn drop(&mut self) {
        if let Some(k) = self.keeper.take() {
            k.abort();
        }
        for p in self.held.iter().rev() {
            let _ = std::fs::remove_dir(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn data_dir_lock_excludes_a_second_holder_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path(), "main", Duration::from_millis(10)).await.unwrap();
        let second = DataDirLock::acquire(dir.path(), "main", Duration::from_millis(40)).await;
        assert!(matches!(second, Err(LockError::Timeout { .. })));
        let other_account = DataDirLock::acquire(dir.path(), "other", Duration::from_millis(10)).await;
        assert!(other_account.is_ok());
        drop(first);
        assert!(DataDirLock::acquire(dir.path(), "main", Duration::from_millis(10)).await.is_ok());
    }

    #[tokio::test]
    async fn claude_lock_honours_a_fresh_lock_and_takes_a_stale_one() {
        let home = tempfile::tempdir().unwrap();
        let config = home.path().join(".claude");
        std::fs::create_dir(&config).unwrap();
        let dirs = claude_lock_dirs(&config);
        assert_eq!(dirs[0].path, home.path().join(".claude.lock"));
        // Claude Code holds the newer lock, fresh.
        std::fs::create_dir(&dirs[1].path).unwrap();
        let r = ClaudeLock::acquire(&dirs, Duration::from_millis(40)).await;
        assert!(matches!(r, Err(LockError::Timeout { .. })), "{r:?}");
        // The older lock we took while trying was released again.
        // Make Claude's lock stale: older than 60 s.
        File::open(&dirs[1].path).unwrap().set_modified(SystemTime::now() - Duration::from_secs(61)).unwrap();
        let lock = ClaudeLock::acquire(&dirs, Duration::from_millis(40)).await.unwrap();
        assert_eq!(lock.held().len(), 2);
        drop(lock);
        assert!(!dirs[0].path.exists() && !dirs[1].path.exists());
    }

    #[tokio::test]
    async fn single_flight_serialises_one_account() {
        let sf = Arc::new(SingleFlight::default());
        let g = sf.acquire("a").await;
        let sf2 = sf.clone();
        let waiter = tokio::spawn(async move {
            let _g = sf2.acquire("a").await;
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let _other = sf.acquire("b").await;
        drop(g);
        tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
    }
}
