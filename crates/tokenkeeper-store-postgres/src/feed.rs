//! [`PgChangeFeed`]: what any replica commits, as it happens, through `LISTEN`/`NOTIFY`.
//!
//! Every write that produces a change inserts a row into `changes` and calls
//! `pg_notify('tokenkeeper_changes', seq)` in its own transaction, so the notification is sent
//! if and only if the write commits. A subscription `LISTEN`s on a connection of its own and,
//! after each notification, reads the change rows past the last `seq` it has yielded: the rows,
//! not the payloads, are the truth, so a payload limit or coalesced notifications never lose a
//! change, and `seq` is in commit order (see `insert_change` in the store).
//!
//! When the connection drops, notifications sent meanwhile are lost; the subscription
//! reconnects (retrying with a capped backoff while the database is away), `LISTEN`s again and
//! yields [`FeedItem::Resync`]: the subscriber reloads what it caches, and the changes that
//! follow are those committed after the reconnect.

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::Row;
use tokenkeeper_core::backend::{ChangeFeed, ChangeKind, ChangeSubscription, FeedItem, SeamError, StoreChange};

use crate::describe;

/// The notification channel of the change feed.
pub const CHANNEL: &str = "tokenkeeper_changes";

/// The first wait before reconnecting to a database that is away; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Changes read per query; a subscriber far behind reads in several.
const BATCH: i64 = 1000;

/// The change feed of one database. Connects when subscribed to.
#[derive(Clone)]
pub struct PgChangeFeed {
    options: PgConnectOptions,
}

impl PgChangeFeed {
    /// A feed of the database `options` point to.
    pub fn new(options: PgConnectOptions) -> PgChangeFeed {
        PgChangeFeed { options: options.application_name("tokenkeeper feed") }
    }

    /// Connects a listener and `LISTEN`s.
    async fn listen(&self) -> Result<PgListener, SeamError> {
        let backend = |action: &str, e: sqlx::Error| SeamError::Backend {
            action: format!("{action} {} for the change feed", describe(&self.options)),
            source: Box::new(e),
        };
        // A pool of one, of its own: the listener keeps its connection for good, and the pool
        // is how sqlx re-makes it after a loss.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(self.options.clone());
        let mut listener = PgListener::connect_with(&pool).await.map_err(|e| backend("connect to", e))?;
        listener.ignore_pool_close_event(true);
        listener.listen(CHANNEL).await.map_err(|e| backend("LISTEN on", e))?;
        Ok(listener)
    }
}

impl std::fmt::Debug for PgChangeFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgChangeFeed({})", describe(&self.options))
    }
}

#[async_trait]
impl ChangeFeed for PgChangeFeed {
    async fn subscribe(&self) -> Result<Box<dyn ChangeSubscription>, SeamError> {
        let mut listener = self.listen().await?;
        // After LISTEN: every change committed from here on is either past `last` or notified.
        let last = newest_seq(&mut listener).await.map_err(|e| SeamError::Backend {
            action: format!("read the newest change of {}", describe(&self.options)),
            source: Box::new(e),
        })?;
        Ok(Box::new(PgSubscription { feed: self.clone(), listener: Some(listener), last, pending: VecDeque::new() }))
    }
}

/// A live subscription: a listening connection and the last `seq` yielded.
pub struct PgSubscription {
    feed: PgChangeFeed,
    /// `None` after a failure, until reconnected.
    listener: Option<PgListener>,
    last: i64,
    pending: VecDeque<FeedItem>,
}

impl std::fmt::Debug for PgSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSubscription")
            .field("feed", &self.feed)
            .field("last", &self.last)
            .field("connected", &self.listener.is_some())
            .finish_non_exhaustive()
    }
}

impl PgSubscription {
    /// Reconnects (retrying until the database answers), `LISTEN`s, moves `last` to the newest
    /// change and queues a [`FeedItem::Resync`].
    async fn resync(&mut self) {
        self.listener = None;
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.feed.listen().await {
                Ok(mut listener) => match newest_seq(&mut listener).await {
                    Ok(newest) => {
                        self.last = newest;
                        self.listener = Some(listener);
                        self.pending.push_back(FeedItem::Resync);
                        tracing::info!(seq = newest, "change feed reconnected; subscribers resynchronise");
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "change feed: cannot read the newest change; retrying"),
                },
                Err(e) => tracing::warn!(error = %e, retry_in = ?backoff, "change feed: database unreachable"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Queues the changes committed after `last`, oldest first; a [`FeedItem::Resync`] instead
    /// if the rows after `last` were pruned before this subscription read them.
    async fn catch_up(&mut self, listener: &mut PgListener) -> Result<(), sqlx::Error> {
        if self.last > 0 {
            // The row at `last` was seen committed; only pruning removes it.
            let kept: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM changes WHERE seq = $1)")
                .bind(self.last)
                .fetch_one(&mut *listener)
                .await?;
            if !kept {
                tracing::warn!(seq = self.last, "change feed: fell behind the kept changes; resynchronising");
                self.last = newest_seq(listener).await?;
                self.pending.push_back(FeedItem::Resync);
                return Ok(());
            }
        }
        loop {
            let rows =
                sqlx::query("SELECT seq, account, kind, version FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2")
                    .bind(self.last)
                    .bind(BATCH)
                    .fetch_all(&mut *listener)
                    .await?;
            let full = rows.len() as i64 == BATCH;
            for row in rows {
                let seq: i64 = row.try_get("seq")?;
                let kind: String = row.try_get("kind")?;
                self.last = seq;
                let Some(kind) = ChangeKind::parse(&kind) else {
                    // A newer tokenkeeper wrote a kind this one does not know: reload everything.
                    tracing::warn!(seq, kind, "change feed: unknown change kind; resynchronising");
                    self.pending.push_back(FeedItem::Resync);
                    continue;
                };
                let version: Option<i64> = row.try_get("version")?;
                self.pending.push_back(FeedItem::Change(StoreChange {
                    seq,
                    account: row.try_get("account")?,
                    kind,
                    version: version.filter(|_| kind == ChangeKind::Credential),
                }));
            }
            if !full {
                return Ok(());
            }
        }
    }
}

#[async_trait]
impl ChangeSubscription for PgSubscription {
    async fn next(&mut self) -> Option<FeedItem> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            let Some(mut listener) = self.listener.take() else {
                self.resync().await;
                continue;
            };
            match listener.try_recv().await {
                Ok(Some(_)) => {
                    // One read covers every notification already buffered.
                    while listener.next_buffered().is_some() {}
                    match self.catch_up(&mut listener).await {
                        Ok(()) => self.listener = Some(listener),
                        Err(e) => {
                            tracing::warn!(error = %e, "change feed: cannot read changes; reconnecting");
                            self.resync().await;
                        }
                    }
                }
                // The connection was lost and sqlx re-made it (LISTEN included); what was
                // notified meanwhile is gone, so start over from the newest change.
                Ok(None) => {
                    tracing::warn!("change feed: connection lost; reconnecting");
                    self.resync().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "change feed: listening failed; reconnecting");
                    self.resync().await;
                }
            }
        }
    }
}

/// The newest `seq` in the feed (0 when it is empty).
async fn newest_seq(listener: &mut PgListener) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COALESCE(max(seq), 0)::bigint FROM changes").fetch_one(listener).await
}
