//! [`PgLeadership`]: one leader among the replicas, as the session advisory lock
//! `tokenkeeper/leader` held on a connection of its own.
//!
//! A follower waits for the lock *in the server* (`pg_advisory_lock` under a `lock_timeout`), so
//! it is woken the moment the leader's session ends: a SIGKILLed leader's socket is closed by
//! its kernel, PostgreSQL ends the session and releases the lock, and a waiter has it within
//! milliseconds. The wait is bounded so a follower whose own connection silently died finds out
//! and reconnects.
//!
//! The leader pings its connection every [`PING_EVERY`]; a ping that fails or takes longer than
//! [`PING_TIMEOUT`] means it can no longer vouch for the lock, and [`LeaderGuard::lost`]
//! resolves. The server keeps a vanished client's session (and lock) for about 25 s (the TCP
//! keepalives asked for below), longer than a leader takes to notice, so two replicas never
//! both believe they lead for more than a ping timeout.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::Connection;
use tokenkeeper_core::backend::{LeaderGuard, Leadership, SeamError};

use crate::{advisory_key, describe};

/// The name whose [`advisory_key`] is the leader lock.
pub const LEADER_LOCK: &str = "tokenkeeper/leader";

/// How often the leader checks that its lock connection is alive.
pub const PING_EVERY: Duration = Duration::from_secs(1);

/// How long a ping may take before the leader gives up its leadership.
pub const PING_TIMEOUT: Duration = Duration::from_secs(3);

use crate::lock::{lock_session_options, LOCK_NOT_AVAILABLE, QUERY_CANCELED};

/// Leadership of the installation in one database.
#[derive(Clone)]
pub struct PgLeadership {
    options: PgConnectOptions,
}

impl PgLeadership {
    /// Leadership in the database `options` point to; connects only when campaigning.
    pub fn new(options: PgConnectOptions) -> PgLeadership {
        PgLeadership { options: lock_session_options(options) }
    }
}

impl std::fmt::Debug for PgLeadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgLeadership({})", describe(&self.options))
    }
}

#[async_trait]
impl Leadership for PgLeadership {
    async fn acquire(&self, replica: &str, wait: Duration) -> Result<Option<Box<dyn LeaderGuard>>, SeamError> {
        let backend = |action: &str, e: sqlx::Error| SeamError::Backend {
            action: format!("{action} the leader lock in {}", describe(&self.options)),
            source: Box::new(e),
        };
        // Shown in pg_stat_activity: an operator sees which replica leads (or waits to).
        let options = self.options.clone().application_name(&format!("tokenkeeper leader: {replica}"));
        let mut conn = PgConnection::connect_with(&options).await.map_err(|e| backend("connect to take", e))?;
        let key = advisory_key(LEADER_LOCK);
        let millis = wait.as_millis();
        if millis == 0 {
            let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(key)
                .fetch_one(&mut conn)
                .await
                .map_err(|e| backend("try", e))?;
            if !taken {
                return Ok(None);
            }
        } else {
            sqlx::query(&format!("SET lock_timeout = {millis}"))
                .execute(&mut conn)
                .await
                .map_err(|e| backend("prepare to wait for", e))?;
            match sqlx::query("SELECT pg_advisory_lock($1)").bind(key).execute(&mut conn).await {
                Ok(_) => {}
                Err(sqlx::Error::Database(e))
                    if matches!(e.code().as_deref(), Some(LOCK_NOT_AVAILABLE | QUERY_CANCELED)) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(backend("take", e)),
            }
            // The lock outlives the setting; reset it so pings are not affected.
            sqlx::query("SET lock_timeout = 0").execute(&mut conn).await.map_err(|e| backend("hold", e))?;
        }
        tracing::info!(replica, key, "leader lock taken");
        Ok(Some(Box::new(PgLeaderGuard { conn: Some(conn), place: describe(&self.options) })))
    }
}

/// The held leader lock: its session. Dropping it closes the connection, which releases it.
pub struct PgLeaderGuard {
    conn: Option<PgConnection>,
    place: String,
}

impl std::fmt::Debug for PgLeaderGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLeaderGuard").field("place", &self.place).finish_non_exhaustive()
    }
}

#[async_trait]
impl LeaderGuard for PgLeaderGuard {
    async fn lost(&mut self) -> SeamError {
        let lost = |why: Box<dyn std::error::Error + Send + Sync>| SeamError::Backend {
            action: format!("keep the leader lock in {}", self.place),
            source: why,
        };
        let Some(conn) = self.conn.as_mut() else {
            return lost("the lock connection is already closed".into());
        };
        loop {
            tokio::time::sleep(PING_EVERY).await;
            match tokio::time::timeout(PING_TIMEOUT, sqlx::query("SELECT 1").execute(&mut *conn)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    // The session (and with it the lock) is gone or unusable: never use it again.
                    self.conn = None;
                    return lost(Box::new(e));
                }
                Err(_) => {
                    self.conn = None;
                    return lost(format!("the database did not answer a ping within {PING_TIMEOUT:?}").into());
                }
            }
        }
    }
}
