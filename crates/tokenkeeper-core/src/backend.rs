//! The seams of every guarantee that spans processes (and, with PostgreSQL, machines).
//!
//! The keeper and the daemon never name a backend. They are handed a [`Backend`]: a
//! [`Store`] (durable state), an [`AccountLock`] (one refresh or ingest of an account at a
//! time across every process of the installation), a [`ChangeFeed`] (what other processes
//! committed, as it happens) and a [`Leadership`] (which one process runs the installation's
//! scheduled work). Each backend crate provides all four:
//!
//! | seam | embedded (`tokenkeeper-store`) | replicas (PostgreSQL) |
//! |---|---|---|
//! | [`Store`] | SQLite in the data directory | tables in the database |
//! | [`AccountLock`] | `flock` on `<data_dir>/locks/<account>.lock` | session advisory lock |
//! | [`ChangeFeed`] | `changes` table + change file watched with inotify | `LISTEN`/`NOTIFY` |
//! | [`Leadership`] | `flock` on `<data_dir>/leader.lock` | session advisory lock `tokenkeeper/leader` |
//!
//! Claude Code's own lock directories are not here: they belong to the host whose file is
//! bound, whatever the backend, and the keeper takes them itself.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::store::Store;

/// Errors taking a cross-process lock or following the change feed.
#[derive(Debug, thiserror::Error)]
pub enum SeamError {
    /// The lock stayed taken for longer than the caller waits.
    #[error("{what} is held by another process (waited {waited:?}); try again later")]
    Timeout {
        /// Which lock, in words (an account name and where the lock lives).
        what: String,
        /// How long the caller waited.
        waited: Duration,
    },
    /// A file the seam needs (lock file, change file, directory) could not be used.
    #[error("cannot {action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Which path.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The backend (database connection, watcher) failed.
    #[error("cannot {action}")]
    Backend {
        /// What was being done, in words.
        action: String,
        /// The driver's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A held cross-process lock of one account. Dropping the guard releases the lock; a
/// process that dies releases it too (the kernel closes the `flock`ed file, the database
/// closes the connection that holds the advisory lock).
pub trait AccountLockGuard: Send + Sync + fmt::Debug {}

/// One refresh or ingest of an account at a time, across every process (and replica) that
/// shares the installation. Taken after the keeper's in-process single-flight and before
/// Claude Code's lock directories; see `tokenkeeper-keeper`'s `locks` module for the order.
#[async_trait]
pub trait AccountLock: Send + Sync + fmt::Debug {
    /// Takes the lock of `account`, waiting up to `wait`; [`SeamError::Timeout`] after that.
    async fn acquire(&self, account: &str, wait: Duration) -> Result<Box<dyn AccountLockGuard>, SeamError>;
}

/// What a committed write changed.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ChangeKind {
    /// A new account, or a new credential of an account (its version grew). Sinks must be
    /// re-delivered and caches of the token dropped.
    Credential,
    /// Settings or state of an account that carry no token: mode, binding, state, last
    /// error. Caches reload the account; sinks are not re-delivered.
    Metadata,
    /// The account was removed.
    Removed,
    /// An API key was created or revoked (no account).
    Keys,
}

impl ChangeKind {
    /// The word stored in a backend's change table (`credential`, `metadata`, `removed`, `keys`).
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Parses [`ChangeKind::as_str`]'s word; `None` for a word this release does not know.
    pub fn parse(word: &str) -> Option<Self> {
        word.parse().ok()
    }
}

/// One committed change, in commit order. Usage counters and installation state (alert
/// state, sink health) are written without a change: they never wake anybody.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreChange {
    /// Position in the feed; grows with every change.
    pub seq: i64,
    /// The account changed (`None` for [`ChangeKind::Keys`]).
    pub account: Option<String>,
    /// What changed.
    pub kind: ChangeKind,
    /// The account's credential version after the change ([`ChangeKind::Credential`] only),
    /// so a process that already holds that version can skip it.
    pub version: Option<i64>,
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedItem {
    /// One change, in commit order.
    Change(StoreChange),
    /// Changes may have been missed (the feed fell behind, or its connection was re-made):
    /// the subscriber must reload everything it caches.
    Resync,
}

/// A live subscription to the change feed.
#[async_trait]
pub trait ChangeSubscription: Send + fmt::Debug {
    /// The next item; `None` once the feed has shut down for good.
    async fn next(&mut self) -> Option<FeedItem>;
}

/// What other processes commit to the store, as it happens, without polling.
#[async_trait]
pub trait ChangeFeed: Send + Sync + fmt::Debug {
    /// Follows changes committed from now on (by any process, this one included).
    async fn subscribe(&self) -> Result<Box<dyn ChangeSubscription>, SeamError>;
}

/// Installation state (`Store::put_state`): `{"replica": id, "since": time}` of the replica that
/// took leadership last, written by it when it takes over. Shown by `status`.
pub const LEADER_KEY: &str = "replicas/leader";

/// Held leadership of the installation. Dropping the guard gives it up (another process may
/// take over at once); a process that dies gives it up too.
#[async_trait]
pub trait LeaderGuard: Send + Sync + fmt::Debug {
    /// Resolves once this process can no longer vouch that it leads (the connection that holds
    /// the lock failed or stopped answering); never while leadership is certainly held. The
    /// caller stops its leader work at once and drops the guard.
    async fn lost(&mut self) -> SeamError;
}

/// Which one process of the installation runs the scheduled work: proactive refreshes, alert
/// evaluation and the sinks marked `run_on = "leader"`. Every process serves hand-outs either
/// way; correctness of a rotation never depends on leadership (the [`AccountLock`] and the
/// compare-and-set do that), only "once per installation" of the scheduled work does.
#[async_trait]
pub trait Leadership: Send + Sync + fmt::Debug {
    /// Becomes the leader, waiting up to `wait` for the current one to go; `Ok(None)` when
    /// another process still leads after that. `replica` names this process where the backend
    /// can show it (PostgreSQL's `application_name`).
    async fn acquire(&self, replica: &str, wait: Duration) -> Result<Option<Box<dyn LeaderGuard>>, SeamError>;
}

/// Everything the keeper and the daemon need from a backend, injected as one value.
#[derive(Clone, Debug)]
pub struct Backend {
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// The cross-process lock of an account.
    pub lock: Arc<dyn AccountLock>,
    /// Committed changes, as they happen.
    pub feed: Arc<dyn ChangeFeed>,
    /// Who runs the installation's scheduled work.
    pub leader: Arc<dyn Leadership>,
}

#[cfg(test)]
mod change_kind_tests {
    use super::ChangeKind;

    #[test]
    fn change_kinds_keep_the_words_existing_change_tables_hold() {
        let words = [
            (ChangeKind::Credential, "credential"),
            (ChangeKind::Metadata, "metadata"),
            (ChangeKind::Removed, "removed"),
            (ChangeKind::Keys, "keys"),
        ];
        for (kind, word) in words {
            assert_eq!(kind.as_str(), word);
            assert_eq!(ChangeKind::parse(word), Some(kind));
        }
        assert_eq!(ChangeKind::parse("usage"), None);
    }
}
