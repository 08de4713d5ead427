//! [`PgAccountLock`]: one refresh or ingest of an account at a time across every replica, as a
//! session-level advisory lock held on a connection of its own.
//!
//! The lock lives as long as the session that took it: dropping the guard closes the
//! connection, and a replica that dies (SIGKILL, OOM, power) releases it as soon as PostgreSQL
//! sees the connection close. A host that vanishes without closing its socket is noticed through
//! TCP keepalives, which these connections ask for (`tcp_keepalives_idle` 10 s, interval 5 s,
//! 3 probes: about 25 s).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use tokenkeeper_core::backend::{AccountLock, AccountLockGuard, SeamError};

use crate::{account_lock_key, describe};

/// The SQLSTATE of `lock_timeout` expiring (`lock_not_available`).
pub(crate) const LOCK_NOT_AVAILABLE: &str = "55P03";

/// The SQLSTATE of a statement cancelled by `statement_timeout` (`query_canceled`).
pub(crate) const QUERY_CANCELED: &str = "57014";

/// Options for a connection that holds a session advisory lock (account locks, leadership):
/// server-side keepalives, so a holder whose host disappears is dropped within ~25 s, and no
/// statement logging.
pub(crate) fn lock_session_options(options: PgConnectOptions) -> PgConnectOptions {
    options
        .options([("tcp_keepalives_idle", "10"), ("tcp_keepalives_interval", "5"), ("tcp_keepalives_count", "3")])
        .disable_statement_logging()
}

/// Takes accounts' advisory locks, each on a connection of its own.
#[derive(Clone)]
pub struct PgAccountLock {
    options: PgConnectOptions,
}

impl PgAccountLock {
    /// A lock on the database `options` point to; connects only when a lock is taken.
    pub fn new(options: PgConnectOptions) -> PgAccountLock {
        PgAccountLock { options: lock_session_options(options) }
    }

    async fn connect(&self, account: &str) -> Result<PgConnection, SeamError> {
        // Shown in pg_stat_activity, so an operator sees who holds what (names carry no secret).
        let options = self.options.clone().application_name(&format!("tokenkeeper lock: {account}"));
        PgConnection::connect_with(&options).await.map_err(|e| SeamError::Backend {
            action: format!("connect to {} to lock account `{account}`", describe(&self.options)),
            source: Box::new(e),
        })
    }
}

impl std::fmt::Debug for PgAccountLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgAccountLock({})", describe(&self.options))
    }
}

#[async_trait]
impl AccountLock for PgAccountLock {
    async fn acquire(&self, account: &str, wait: Duration) -> Result<Box<dyn AccountLockGuard>, SeamError> {
        let started = Instant::now();
        let mut conn = self.connect(account).await?;
        let key = account_lock_key(account);
        let backend = |action: &str, e: sqlx::Error| SeamError::Backend {
            action: format!("{action} the lock of account `{account}`"),
            source: Box::new(e),
        };
        let timeout = || SeamError::Timeout {
            what: format!("the lock of account `{account}` (PostgreSQL advisory lock {key})"),
            waited: wait,
        };
        let left = wait.saturating_sub(started.elapsed());
        // lock_timeout = 0 would mean "wait forever": not waiting at all is a plain try.
        let millis = left.as_millis();
        if millis == 0 {
            let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(key)
                .fetch_one(&mut conn)
                .await
                .map_err(|e| backend("try", e))?;
            if !taken {
                return Err(timeout());
            }
        } else {
            // Blocking in the server wakes us the moment the holder lets go; lock_timeout bounds it.
            sqlx::query(&format!("SET lock_timeout = {millis}"))
                .execute(&mut conn)
                .await
                .map_err(|e| backend("prepare to wait for", e))?;
            match sqlx::query("SELECT pg_advisory_lock($1)").bind(key).execute(&mut conn).await {
                Ok(_) => {}
                Err(sqlx::Error::Database(e))
                    if matches!(e.code().as_deref(), Some(LOCK_NOT_AVAILABLE | QUERY_CANCELED)) =>
                {
                    return Err(timeout())
                }
                Err(e) => return Err(backend("take", e)),
            }
        }
        tracing::debug!(account, key, "account lock taken");
        Ok(Box::new(PgAccountGuard { account: account.to_owned(), _conn: Mutex::new(conn) }))
    }
}

/// A held account lock. Dropping it closes its connection, which ends the session and with it
/// the advisory lock.
pub struct PgAccountGuard {
    account: String,
    // Only held, never used again (the mutex makes the guard `Sync` as the seam requires).
    // Dropping it closes its socket; the server ends the session at once and releases the lock.
    _conn: Mutex<PgConnection>,
}

impl PgAccountGuard {
    /// The account whose lock this is.
    pub fn account(&self) -> &str {
        &self.account
    }
}

impl std::fmt::Debug for PgAccountGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgAccountGuard").field("account", &self.account).finish_non_exhaustive()
    }
}

impl AccountLockGuard for PgAccountGuard {}

impl Drop for PgAccountGuard {
    fn drop(&mut self) {
        // The connection is dropped right after this, with the other fields.
        tracing::debug!(account = %self.account, "account lock released");
    }
}
