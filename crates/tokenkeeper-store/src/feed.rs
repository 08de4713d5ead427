//! [`SqliteChangeFeed`]: the embedded backend's [`ChangeFeed`].
//!
//! Every write that matters to another process inserts a row into `changes` inside its own
//! transaction, then rewrites `<data_dir>/tokenkeeper.changed`. A subscriber watches that file
//! (inotify, through `notify`, on its directory so a replaced file is still seen), and on each
//! wake-up reads the rows after the last `seq` it handed out. Wake-ups coalesce: a burst of
//! commits costs one query. A subscriber that fell behind the pruned end of the table yields
//! [`FeedItem::Resync`].

use std::collections::VecDeque;
use std::path::PathBuf;

use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use sqlx::{Row, SqlitePool};
use tokenkeeper_core::backend::{ChangeFeed, ChangeKind, ChangeSubscription, FeedItem, SeamError, StoreChange};
use tokio::sync::mpsc;

/// Rows read per query; more are read on the next call.
const BATCH: i64 = 500;

/// The change feed of one data directory.
#[derive(Debug, Clone)]
pub struct SqliteChangeFeed {
    pool: SqlitePool,
    changes_path: PathBuf,
}

impl SqliteChangeFeed {
    pub(crate) fn new(pool: SqlitePool, changes_path: PathBuf) -> Self {
        Self { pool, changes_path }
    }
}

fn backend(action: &str) -> impl FnOnce(sqlx::Error) -> SeamError + '_ {
    move |e| SeamError::Backend { action: action.to_owned(), source: Box::new(e) }
}

#[async_trait]
impl ChangeFeed for SqliteChangeFeed {
    async fn subscribe(&self) -> Result<Box<dyn ChangeSubscription>, SeamError> {
        let (wake_tx, wake_rx) = mpsc::channel(1);
        let name = self.changes_path.file_name().map(|n| n.to_owned());
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                if event.paths.iter().any(|p| p.file_name() == name.as_deref()) {
                    // Full means a wake-up is pending already: this one coalesces into it.
                    let _ = wake_tx.try_send(());
                }
            }
        })
        .map_err(|e| SeamError::Backend { action: "start watching the change file".into(), source: Box::new(e) })?;
        let dir = self.changes_path.parent().map(|d| d.to_owned()).unwrap_or_else(|| PathBuf::from("."));
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|e| SeamError::Backend { action: format!("watch {}", dir.display()), source: Box::new(e) })?;
        // Start after the newest change committed so far: the subscriber loads current state
        // itself, and follows from here.
        let cursor: i64 = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS seq FROM changes")
            .fetch_one(&self.pool)
            .await
            .map_err(backend("read the change feed's position"))?
            .try_get("seq")
            .map_err(backend("read the change feed's position"))?;
        Ok(Box::new(SqliteSubscription {
            pool: self.pool.clone(),
            _watcher: watcher,
            wake: wake_rx,
            cursor,
            pending: VecDeque::new(),
        }))
    }
}

/// One subscriber: its watcher, its position and the rows read but not yet handed out.
struct SqliteSubscription {
    pool: SqlitePool,
    _watcher: notify::RecommendedWatcher,
    wake: mpsc::Receiver<()>,
    cursor: i64,
    pending: VecDeque<FeedItem>,
}

impl std::fmt::Debug for SqliteSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteSubscription").field("cursor", &self.cursor).finish_non_exhaustive()
    }
}

impl SqliteSubscription {
    /// Reads the rows after the cursor into `pending`. Returns whether any were found.
    async fn read(&mut self) -> Result<bool, SeamError> {
        let rows = sqlx::query("SELECT seq, account, kind, version FROM changes WHERE seq > ? ORDER BY seq LIMIT ?")
            .bind(self.cursor)
            .bind(BATCH)
            .fetch_all(&self.pool)
            .await
            .map_err(backend("read the change feed"))?;
        let Some(first) = rows.first() else { return Ok(false) };
        let first_seq: i64 = first.try_get("seq").map_err(backend("read the change feed"))?;
        if first_seq > self.cursor + 1 {
            // Rows between were pruned before we read them: what they said is lost.
            tracing::info!(behind = first_seq - self.cursor - 1, "the change feed fell behind; resynchronising");
            self.pending.push_back(FeedItem::Resync);
        }
        for row in &rows {
            let seq: i64 = row.try_get("seq").map_err(backend("read the change feed"))?;
            let kind: String = row.try_get("kind").map_err(backend("read the change feed"))?;
            self.cursor = seq;
            let Some(kind) = ChangeKind::parse(&kind) else {
                tracing::warn!(seq, %kind, "unknown change kind in the feed (a newer tokenkeeper?); resynchronising");
                self.pending.push_back(FeedItem::Resync);
                continue;
            };
            self.pending.push_back(FeedItem::Change(StoreChange {
                seq,
                account: row.try_get("account").map_err(backend("read the change feed"))?,
                kind,
                version: row.try_get("version").map_err(backend("read the change feed"))?,
            }));
        }
        Ok(true)
    }
}

#[async_trait]
impl ChangeSubscription for SqliteSubscription {
    async fn next(&mut self) -> Option<FeedItem> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            match self.read().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    // The rows stay in the table; the next wake-up reads them.
                    tracing::warn!(error = %e, "cannot read the change feed");
                }
            }
            self.wake.recv().await?;
        }
    }
}
