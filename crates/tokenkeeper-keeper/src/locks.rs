//! The three locks a refresh takes, in this order:
//!
//! 1. [`SingleFlight`]: one refresh per account inside this process (a tokio mutex per account);
//! 2. the backend's [`AccountLock`]: one refresh or ingest per
//!    account across every process of the installation (`exec`, `refresh` from cron, the
//!    daemon, other replicas): a `flock` in the data directory on the embedded backend, an
//!    advisory lock with PostgreSQL; released if the holder dies;
//! 3. [`ClaudeLock`]: when the account is bound to a Claude Code credentials file, Claude Code's
//!    own `proper-lockfile` locks, so tokenkeeper and Claude Code never refresh at once. These
//!    are directories (`mkdir` is atomic): `<configdir>.lock` (older versions, stale after
//!    ~10 s) and `<configdir>/.oauth_refresh.lock` (newer versions, stale after 60 s). While we
//!    hold them we touch their mtime every couple of seconds, as `proper-lockfile` does, so
//!    Claude Code does not take them for stale.
//!
//! [`HeldLocks`] is the only way the keeper holds locks 2 and 3, so the order is kept here:
//! the cross-process lock first, then Claude Code's; released in the opposite order.
//!
//! Waiting for a lock is bounded; a caller that cannot get one gets [`SeamError::Timeout`].

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};
use tokio::task::JoinHandle;

use tokenkeeper_core::backend::{AccountLock, AccountLockGuard, SeamError};

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

/// How often a waiting process retries a taken Claude Code lock directory.
const RETRY: Duration = Duration::from_millis(15);

/// The cross-process lock of an account and, when it is bound to Claude Code's file, Claude
/// Code's lock directories, released Claude's first (fields drop in declaration order).
#[derive(Debug)]
pub struct HeldLocks {
    claude: Option<ClaudeLock>,
    _cross_process: Box<dyn AccountLockGuard>,
}

impl HeldLocks {
    /// Takes the cross-process lock of `account` from `lock`, waiting up to `wait`.
    pub async fn take(lock: &dyn AccountLock, account: &str, wait: Duration) -> Result<Self, SeamError> {
        Ok(Self { claude: None, _cross_process: lock.acquire(account, wait).await? })
    }

    /// Also takes Claude Code's lock directories `dirs` (after the cross-process lock: the
    /// one order every tokenkeeper process uses, so two never deadlock).
    pub async fn and_claude(mut self, dirs: Option<Vec<ClaudeLockDir>>, wait: Duration) -> Result<Self, SeamError> {
        if let Some(dirs) = dirs {
            self.claude = Some(ClaudeLock::acquire(&dirs, wait).await?);
        }
        Ok(self)
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

/// What one try at a Claude Code lock directory found.
enum Attempt {
    /// We created it: it is ours.
    Taken,
    /// Someone holds it (and it is not stale).
    Busy,
    /// Its parent, the config directory, does not exist.
    NoConfigDir,
}

/// One try at `dir` on the blocking pool (mkdir, and the mtime of a held one): takes it, or
/// takes over a stale one as `proper-lockfile` does.
async fn try_take(dir: &ClaudeLockDir) -> Result<Attempt, SeamError> {
    let owned = dir.clone();
    tokio::task::spawn_blocking(move || try_take_blocking(&owned)).await.map_err(|e| SeamError::Io {
        action: "create lock directory",
        path: dir.path.clone(),
        source: std::io::Error::other(e.to_string()),
    })?
}

fn try_take_blocking(dir: &ClaudeLockDir) -> Result<Attempt, SeamError> {
    if dir.path.parent().is_some_and(|parent| !parent.exists()) {
        return Ok(Attempt::NoConfigDir);
    }
    loop {
        match std::fs::create_dir(&dir.path) {
            Ok(()) => return Ok(Attempt::Taken),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if mtime_age(&dir.path).is_some_and(|age| age > dir.stale) {
                    tracing::warn!(lock = %dir.path.display(), "taking over a stale Claude Code lock");
                    // Another waiter may remove it first; either way we retry mkdir.
                    let _ = std::fs::remove_dir(&dir.path);
                    continue;
                }
                return Ok(Attempt::Busy);
            }
            Err(source) => {
                return Err(SeamError::Io { action: "create lock directory", path: dir.path.clone(), source })
            }
        }
    }
}

impl ClaudeLock {
    /// Takes every lock directory of `dirs` (in order), waiting up to `wait` in all.
    /// A directory whose mtime is older than its stale threshold is taken over, as
    /// `proper-lockfile` itself does.
    pub async fn acquire(dirs: &[ClaudeLockDir], wait: Duration) -> Result<Self, SeamError> {
        let started = tokio::time::Instant::now();
        let mut lock = ClaudeLock { held: Vec::new(), keeper: None };
        for dir in dirs {
            loop {
                match try_take(dir).await? {
                    Attempt::Taken => {
                        lock.held.push(dir.path.clone());
                        break;
                    }
                    // No config directory means no Claude Code to coordinate with.
                    Attempt::NoConfigDir => break,
                    Attempt::Busy => {}
                }
                if started.elapsed() >= wait {
                    return Err(SeamError::Timeout {
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
                    let held = held.clone();
                    // Best effort: a missed touch is retried at the next tick, well inside
                    // the stale threshold.
                    let _ = tokio::task::spawn_blocking(move || held.iter().for_each(|p| drop(touch(p)))).await;
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
    async fn claude_lock_honours_a_fresh_lock_and_takes_a_stale_one() {
        let home = tempfile::tempdir().unwrap();
        let config = home.path().join(".claude");
        std::fs::create_dir(&config).unwrap();
        let dirs = claude_lock_dirs(&config);
        assert_eq!(dirs[0].path, home.path().join(".claude.lock"));
        // Claude Code holds the newer lock, fresh.
        std::fs::create_dir(&dirs[1].path).unwrap();
        let r = ClaudeLock::acquire(&dirs, Duration::from_millis(40)).await;
        assert!(matches!(r, Err(SeamError::Timeout { .. })), "{r:?}");
        assert!(!dirs[0].path.exists(), "the older lock taken while trying was released again");
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
