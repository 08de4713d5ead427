//! [`SqliteStore`]: the embedded store, one SQLite file in the data directory shared by every
//! tokenkeeper process of the user (the CLI, cron jobs, the daemon).
//!
//! Connections use WAL, `synchronous=FULL` (a committed refresh survives SIGKILL and power
//! loss: the provider has already retired the old refresh token, so losing the new one would
//! lose the login), a busy timeout so processes wait for each other instead of failing, and
//! foreign keys. Every write runs in a `BEGIN IMMEDIATE` transaction, which takes the write
//! lock up front: concurrent writers queue instead of discovering a conflict at commit time.
//!
//! After every committed write the store rewrites `<data_dir>/tokenkeeper.changed`, so another
//! process can watch that file (inotify) rather than poll the database.

use std::borrow::Cow;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fs4::fs_std::FileExt;
use futures::TryStreamExt;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use tokenkeeper_core::account::{Account, AccountState, Binding, BindingKind, Mode, NewAccount, Usage};
use tokenkeeper_core::backend::ChangeKind;
use tokenkeeper_core::credential::Credential;
use tokenkeeper_core::fs::create_once;
use tokenkeeper_core::store::{
    AccountPatch, ApiKey, Attempt, CredentialChange, CredentialUpdate, Event, EventKind, NewEvent, Store, StoreError,
    UsageRecord, WebSession,
};

use crate::crypto::EncryptionKey;
use crate::fs::{ensure_private_dir, io_error};

/// Name of the database file inside the data directory.
pub const DATABASE_FILE_NAME: &str = "tokenkeeper.db";

/// Name of the change-notification file inside the data directory.
pub const CHANGES_FILE_NAME: &str = "tokenkeeper.changed";

/// Serialises opening and migrating the database between processes.
const SETUP_LOCK_FILE_NAME: &str = "tokenkeeper.db.setup-lock";

/// How long a writer waits for another process's transaction before giving up. A refresh
/// transaction is milliseconds; this only has to outlast a slow disk's fsync under load.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// `PRAGMA cache_size` of every connection: 512 KiB.
const CACHE_SIZE_PRAGMA: &str = "-512";

/// Connections per process. SQLite has one writer at a time anyway; a few connections let
/// reads proceed beside a write.
const MAX_CONNECTIONS: u32 = 4;

/// The migrations in `migrations/sqlite/`, embedded in the binary: (version, description, SQL).
///
/// Embedded by hand rather than with `sqlx::migrate!`, which needs sqlx's `macros` feature
/// (and its compile-time cost); the checksums are the same, so either can apply them later.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "initial", include_str!("../migrations/sqlite/0001_initial.sql")),
    (2, "seams", include_str!("../migrations/sqlite/0002_seams.sql")),
    (3, "web_sessions", include_str!("../migrations/sqlite/0003_web_sessions.sql")),
];

/// Hourly usage buckets older than this are pruned at each flush.
const USAGE_KEPT: chrono::Duration = chrono::Duration::days(35);

/// The change feed keeps at least this many rows; a subscriber further behind resynchronises.
const CHANGES_KEPT: i64 = 10_000;

/// The columns of `accounts`, in the order [`SqliteStore::account_from_row`] reads them.
const ACCOUNT_COLUMNS: &str = "name, provider, mode, version, secret, expires_at, scopes, subscription_type, \
     rate_limit_tier, email, organization, binding_kind, binding_path, state, created_at, updated_at, \
     last_refreshed_at, refresh_token_issued_at, usage_requests, last_used_at, last_error";

/// The columns of `api_keys`.
const API_KEY_COLUMNS: &str = "id, name, hash, scopes, accounts, created_at, revoked_at";

/// The SQLite store. Cheap to share (`Arc<dyn Store>`); several instances, in one process or
/// many, may use the same data directory at once.
pub struct SqliteStore {
    pool: SqlitePool,
    key: EncryptionKey,
    data_dir: PathBuf,
    changes_path: PathBuf,
    writes: AtomicU64,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `data_dir`: creates the directory with mode 0700
    /// if it is missing, opens `<data_dir>/tokenkeeper.db` (mode 0600) and applies pending
    /// migrations.
    pub async fn open(data_dir: &Path, key: EncryptionKey) -> Result<SqliteStore, StoreError> {
        ensure_private_dir(data_dir)?;
        let db_path = data_dir.join(DATABASE_FILE_NAME);
        // Two processes setting up a fresh file at once would both switch it to WAL and both
        // apply the first migration; the second would fail. One at a time, then.
        let setup_lock = lock_exclusively(data_dir.join(SETUP_LOCK_FILE_NAME)).await?;
        create_private_file(&db_path)?;
        let options = SqliteConnectOptions::new()
            .filename(&db_path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            // SQLite's page cache per connection (negative: KiB). The keeper serves from its
            // own memory and the operating system caches the file, so 2 MB (the default) per
            // connection would only hold pages already cached twice.
            .pragma("cache_size", CACHE_SIZE_PRAGMA);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(db(format!("open the database {}", db_path.display())))?;
        let migrator = Migrator::new(EmbeddedMigrations).await.map_err(|e| StoreError::Database {
            action: "load the embedded migrations".to_owned(),
            source: Box::new(e),
        })?;
        migrator.run(&pool).await.map_err(|e| StoreError::Database {
            action: format!("migrate the database {}", db_path.display()),
            source: Box::new(e),
        })?;
        drop(setup_lock);
        tracing::debug!(path = %db_path.display(), "store opened");
        Ok(SqliteStore {
            pool,
            key,
            data_dir: data_dir.to_owned(),
            changes_path: data_dir.join(CHANGES_FILE_NAME),
            writes: AtomicU64::new(0),
        })
    }

    /// The data directory the store lives in.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The database file.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join(DATABASE_FILE_NAME)
    }

    /// The file rewritten after every committed write (by any process using this data
    /// directory). Watch it, or its directory, to learn that the store changed.
    pub fn changes_path(&self) -> PathBuf {
        self.changes_path.clone()
    }

    /// The change feed of this data directory (see [`crate::feed`]).
    pub fn change_feed(&self) -> crate::feed::SqliteChangeFeed {
        crate::feed::SqliteChangeFeed::new(self.pool.clone(), self.changes_path.clone())
    }

    /// Closes every connection, waiting for those in use to be returned. Test-only (the
    /// `testing` feature): a process closes its pool by dropping the store.
    #[cfg(any(test, feature = "testing"))]
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Tells watchers that a write was committed: rewrites the change file with a new stamp.
    /// Best effort: the write itself is already durable, and watchers also re-read on start.
    async fn notify_changed(&self) {
        let count = self.writes.fetch_add(1, Ordering::Relaxed) + 1;
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let stamp = format!("{nanos} {} {count}\n", std::process::id());
        if let Err(e) = tokio::fs::write(&self.changes_path, stamp).await {
            tracing::debug!(path = %self.changes_path.display(), error = %e, "cannot touch the change file");
        }
    }

    async fn begin(&self, action: &str) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db(format!("begin a transaction to {action}")))
    }

    async fn fetch_account(&self, conn: &mut SqliteConnection, name: &str) -> Result<Option<Account>, StoreError> {
        let row = sqlx::query(&format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE name = ?"))
            .bind(name)
            .fetch_optional(conn)
            .await
            .map_err(db(format!("read account `{name}`")))?;
        row.map(|row| self.account_from_row(&row)).transpose()
    }

    fn account_from_row(&self, row: &SqliteRow) -> Result<Account, StoreError> {
        let name: String = column(row, "accounts", "name")?;
        let n = name.as_str();
        let sealed = self.key.open_credential(n, &column::<String>(row, n, "secret")?)?;
        let scopes: String = column(row, n, "scopes")?;
        let scopes: Vec<String> = serde_json::from_str(&scopes).map_err(|e| corrupt(n, format!("scopes: {e}")))?;
        let mode: String = column(row, n, "mode")?;
        let state: String = column(row, n, "state")?;
        let binding_kind: Option<String> = column(row, n, "binding_kind")?;
        let binding_path: Option<String> = column(row, n, "binding_path")?;
        let binding = match (binding_kind, binding_path) {
            (Some(kind), Some(path)) => {
                Some(Binding { kind: parse_binding_kind(n, &kind)?, path: PathBuf::from(path) })
            }
            (None, None) => None,
            _ => return Err(corrupt(n, "binding kind and path must both be set or both be empty".to_owned())),
        };
        let requests: i64 = column(row, n, "usage_requests")?;
        Ok(Account {
            provider: column(row, n, "provider")?,
            mode: mode.parse::<Mode>().map_err(|_| corrupt(n, format!("unknown mode `{mode}`")))?,
            credential: Credential {
                access_token: sealed.access,
                refresh_token: sealed.refresh,
                expires_at: time(n, "expires_at", column(row, n, "expires_at")?)?,
                scopes,
                subscription_type: column(row, n, "subscription_type")?,
                rate_limit_tier: column(row, n, "rate_limit_tier")?,
                provider_data: sealed.provider_data,
            },
            version: column(row, n, "version")?,
            email: column(row, n, "email")?,
            organization: column(row, n, "organization")?,
            binding,
            state: state.parse::<AccountState>().map_err(|_| corrupt(n, format!("unknown account state `{state}`")))?,
            created_at: time(n, "created_at", column(row, n, "created_at")?)?,
            updated_at: time(n, "updated_at", column(row, n, "updated_at")?)?,
            last_refreshed_at: opt_time(n, "last_refreshed_at", column(row, n, "last_refreshed_at")?)?,
            refresh_token_issued_at: opt_time(
                n,
                "refresh_token_issued_at",
                column(row, n, "refresh_token_issued_at")?,
            )?,
            usage: Usage {
                requests: u64::try_from(requests).map_err(|_| corrupt(n, format!("usage_requests is {requests}")))?,
                last_used_at: opt_time(n, "last_used_at", column(row, n, "last_used_at")?)?,
            },
            last_error: column(row, n, "last_error")?,
            name,
        })
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore").field("data_dir", &self.data_dir).finish_non_exhaustive()
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn list_accounts(&self) -> Result<Vec<Account>, StoreError> {
        // Each row is decrypted as it arrives and dropped: holding every row and every account
        // at once (10,000 accounts: tens of MB) leaves that high-water mark resident in the
        // allocator long after start-up.
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY name");
        let mut rows = sqlx::query(&sql).fetch(&self.pool);
        let mut accounts = Vec::new();
        while let Some(row) = rows.try_next().await.map_err(db("list accounts"))? {
            accounts.push(self.account_from_row(&row)?);
        }
        Ok(accounts)
    }

    async fn get_account(&self, name: &str) -> Result<Option<Account>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db(format!("connect to read account `{name}`")))?;
        self.fetch_account(&mut conn, name).await
    }

    async fn create_account(
        &self,
        new: &NewAccount,
        at: DateTime<Utc>,
        change: CredentialChange,
    ) -> Result<Account, StoreError> {
        let name = new.name.as_str();
        let credential = &new.credential;
        let secret = self.key.seal_credential(name, &tokenkeeper_crypto::SealedRef::of(credential))?;
        let scopes = to_json(name, &credential.scopes)?;
        let (binding_kind, binding_path) = binding_columns(name, new.binding.as_ref())?;
        let issued_at = new.refresh_token_issued_at.unwrap_or(at);
        let action = format!("create account `{name}`");
        let mut tx = self.begin(&action).await?;
        let inserted = sqlx::query(
            "INSERT INTO accounts (name, provider, mode, version, secret, expires_at, scopes, subscription_type, \
             rate_limit_tier, email, organization, binding_kind, binding_path, state, created_at, updated_at, \
             refresh_token_issued_at) \
             VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'active', ?, ?, ?)",
        )
        .bind(name)
        .bind(&new.provider)
        .bind(new.mode.to_string())
        .bind(&secret)
        .bind(ms(credential.expires_at))
        .bind(&scopes)
        .bind(&credential.subscription_type)
        .bind(&credential.rate_limit_tier)
        .bind(&new.email)
        .bind(&new.organization)
        .bind(binding_kind)
        .bind(&binding_path)
        .bind(ms(at))
        .bind(ms(at))
        .bind(ms(issued_at))
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::AlreadyExists(name.to_owned()))
            }
            Err(e) => return Err(db(action)(e)),
        }
        let detail = format!(
            "account created; access token {}, refresh token {}, expires {}",
            credential.access_token.fingerprint(),
            credential.refresh_token.as_ref().map_or_else(|| "none".to_owned(), |r| r.fingerprint()),
            credential.expires_at.to_rfc3339(),
        );
        insert_event(&mut tx, name, change.event_kind(), at, &detail).await?;
        insert_change(&mut tx, Some(name), ChangeKind::Credential, Some(1), at).await?;
        let account = self.fetch_account(&mut tx, name).await?.ok_or_else(|| vanished(name))?;
        tx.commit().await.map_err(db(format!("commit {action}")))?;
        self.notify_changed().await;
        Ok(account)
    }

    async fn update_credential(&self, name: &str, update: &CredentialUpdate) -> Result<Account, StoreError> {
        let action = format!("update the credential of `{name}`");
        let credential = &update.credential;
        let secret = self.key.seal_credential(name, &tokenkeeper_crypto::SealedRef::of(credential))?;
        let scopes = to_json(name, &credential.scopes)?;
        let mut tx = self.begin(&action).await?;
        // The write lock is ours from BEGIN IMMEDIATE on, so the version read here is the one
        // the UPDATE below replaces.
        let row = sqlx::query("SELECT version, secret FROM accounts WHERE name = ?")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db(format!("read the version of `{name}`")))?
            .ok_or_else(|| StoreError::NotFound(name.to_owned()))?;
        let found: i64 = column(&row, name, "version")?;
        if found != update.expected_version {
            return Err(StoreError::VersionConflict {
                account: name.to_owned(),
                expected: update.expected_version,
                found,
            });
        }
        let (_, old_refresh) = self.key.open(name, &column::<String>(&row, name, "secret")?)?;
        let at = ms(update.at);
        let refreshed_at =
            matches!(update.change, CredentialChange::Refreshed | CredentialChange::Adopted).then_some(at);
        let issued_at = (old_refresh != credential.refresh_token).then_some(at);
        sqlx::query(
            "UPDATE accounts SET secret = ?, expires_at = ?, scopes = ?, subscription_type = ?, rate_limit_tier = ?, \
             version = version + 1, updated_at = ?, last_refreshed_at = COALESCE(?, last_refreshed_at), \
             refresh_token_issued_at = COALESCE(?, refresh_token_issued_at), state = 'active', last_error = NULL, \
             email = COALESCE(?, email), organization = COALESCE(?, organization) \
             WHERE name = ? AND version = ?",
        )
        .bind(&secret)
        .bind(ms(credential.expires_at))
        .bind(&scopes)
        .bind(&credential.subscription_type)
        .bind(&credential.rate_limit_tier)
        .bind(at)
        .bind(refreshed_at)
        .bind(issued_at)
        .bind(&update.email)
        .bind(&update.organization)
        .bind(name)
        .bind(found)
        .execute(&mut *tx)
        .await
        .map_err(db(action.clone()))?;
        insert_event(&mut tx, name, update.change.event_kind(), update.at, &update.detail).await?;
        insert_change(&mut tx, Some(name), ChangeKind::Credential, Some(found + 1), update.at).await?;
        let account = self.fetch_account(&mut tx, name).await?.ok_or_else(|| vanished(name))?;
        tx.commit().await.map_err(db(format!("commit {action}")))?;
        self.notify_changed().await;
        Ok(account)
    }

    async fn patch_account(&self, name: &str, patch: &AccountPatch, at: DateTime<Utc>) -> Result<Account, StoreError> {
        let action = format!("change account `{name}`");
        let (set_binding, binding_kind, binding_path) = match &patch.binding {
            None => (false, None, None),
            Some(binding) => {
                let (kind, path) = binding_columns(name, binding.as_ref())?;
                (true, kind, path)
            }
        };
        let mut tx = self.begin(&action).await?;
        let updated = sqlx::query(
            "UPDATE accounts SET state = COALESCE(?, state), mode = COALESCE(?, mode), \
             last_error = CASE WHEN ? THEN ? ELSE last_error END, \
             binding_kind = CASE WHEN ? THEN ? ELSE binding_kind END, \
             binding_path = CASE WHEN ? THEN ? ELSE binding_path END, \
             updated_at = ? WHERE name = ?",
        )
        .bind(patch.state.map(AccountState::as_str))
        .bind(patch.mode.map(|m| m.to_string()))
        .bind(patch.last_error.is_some())
        .bind(patch.last_error.clone().flatten())
        .bind(set_binding)
        .bind(binding_kind)
        .bind(set_binding)
        .bind(binding_path)
        .bind(ms(at))
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(db(action.clone()))?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound(name.to_owned()));
        }
        insert_change(&mut tx, Some(name), ChangeKind::Metadata, None, at).await?;
        let account = self.fetch_account(&mut tx, name).await?.ok_or_else(|| vanished(name))?;
        tx.commit().await.map_err(db(format!("commit {action}")))?;
        self.notify_changed().await;
        Ok(account)
    }

    async fn record_usage(&self, batch: &[UsageRecord]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let action = format!("add {} usage record(s)", batch.len());
        let mut tx = self.begin(&action).await?;
        for r in batch {
            let requests = count(r.requests);
            // The bucket only for an account that still exists (removed meanwhile: dropped).
            sqlx::query(
                "INSERT INTO usage (account, key_id, model, hour, requests, input_tokens, output_tokens, \
                 cache_read_tokens, cache_creation_tokens, errors, last_used_at) \
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11 WHERE EXISTS (SELECT 1 FROM accounts WHERE name = ?1) \
                 ON CONFLICT (account, key_id, model, hour) DO UPDATE SET \
                 requests = requests + excluded.requests, input_tokens = input_tokens + excluded.input_tokens, \
                 output_tokens = output_tokens + excluded.output_tokens, \
                 cache_read_tokens = cache_read_tokens + excluded.cache_read_tokens, \
                 cache_creation_tokens = cache_creation_tokens + excluded.cache_creation_tokens, \
                 errors = errors + excluded.errors, last_used_at = MAX(last_used_at, excluded.last_used_at)",
            )
            .bind(&r.account)
            .bind(r.key_id.as_deref().unwrap_or(""))
            .bind(r.model.as_deref().unwrap_or(""))
            .bind(ms(UsageRecord::hour_of(r.hour)))
            .bind(requests)
            .bind(count(r.input_tokens))
            .bind(count(r.output_tokens))
            .bind(count(r.cache_read_tokens))
            .bind(count(r.cache_creation_tokens))
            .bind(count(r.errors))
            .bind(ms(r.last_used_at))
            .execute(&mut *tx)
            .await
            .map_err(db(action.clone()))?;
            // MAX keeps a late, out-of-order batch from moving `last_used_at` back.
            sqlx::query(
                "UPDATE accounts SET usage_requests = usage_requests + ?1, \
                 last_used_at = MAX(COALESCE(last_used_at, ?2), ?2) WHERE name = ?3",
            )
            .bind(requests)
            .bind(ms(r.last_used_at))
            .bind(&r.account)
            .execute(&mut *tx)
            .await
            .map_err(db(action.clone()))?;
        }
        // Hourly buckets are kept for USAGE_KEPT; the account's totals stay.
        let oldest = batch.iter().map(|r| r.last_used_at).max().map(|t| ms(t - USAGE_KEPT));
        sqlx::query("DELETE FROM usage WHERE hour < ?")
            .bind(oldest)
            .execute(&mut *tx)
            .await
            .map_err(db("prune old usage buckets"))?;
        tx.commit().await.map_err(db(format!("commit {action}")))?;
        Ok(())
    }

    async fn usage(&self, account: Option<&str>, since: DateTime<Utc>) -> Result<Vec<UsageRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT account, key_id, model, hour, requests, input_tokens, output_tokens, cache_read_tokens, \
             cache_creation_tokens, errors, last_used_at FROM usage \
             WHERE (?1 IS NULL OR account = ?1) AND hour >= ?2 ORDER BY hour, account, key_id, model",
        )
        .bind(account)
        .bind(ms(UsageRecord::hour_of(since)))
        .fetch_all(&self.pool)
        .await
        .map_err(db("read usage"))?;
        rows.iter()
            .map(|row| {
                let account: String = column(row, "usage", "account")?;
                let key_id: String = column(row, &account, "key_id")?;
                let model: String = column(row, &account, "model")?;
                let n = |c: &str| column::<i64>(row, "usage", c).map(|v| u64::try_from(v).unwrap_or(0));
                Ok(UsageRecord {
                    key_id: (!key_id.is_empty()).then_some(key_id),
                    model: (!model.is_empty()).then_some(model),
                    hour: time(&account, "usage.hour", column(row, "usage", "hour")?)?,
                    requests: n("requests")?,
                    input_tokens: n("input_tokens")?,
                    output_tokens: n("output_tokens")?,
                    cache_read_tokens: n("cache_read_tokens")?,
                    cache_creation_tokens: n("cache_creation_tokens")?,
                    errors: n("errors")?,
                    last_used_at: time(&account, "usage.last_used_at", column(row, "usage", "last_used_at")?)?,
                    account,
                })
            })
            .collect()
    }

    async fn take_refresh_attempt(&self, name: &str, now: DateTime<Utc>, max: u32) -> Result<Attempt, StoreError> {
        let action = format!("count a refresh attempt of `{name}`");
        let window = chrono::Duration::hours(1);
        let mut tx = self.begin(&action).await?;
        sqlx::query("DELETE FROM refresh_attempts WHERE account = ? AND at <= ?")
            .bind(name)
            .bind(ms(now - window))
            .execute(&mut *tx)
            .await
            .map_err(db(action.clone()))?;
        let row = sqlx::query("SELECT COUNT(*) AS n, MIN(at) AS oldest FROM refresh_attempts WHERE account = ?")
            .bind(name)
            .fetch_one(&mut *tx)
            .await
            .map_err(db(action.clone()))?;
        let taken: i64 = column(&row, name, "n")?;
        if taken >= i64::from(max) {
            let oldest: Option<i64> = column(&row, name, "oldest")?;
            let until = opt_time(name, "refresh_attempts.at", oldest)?.map_or(now + window, |t| t + window);
            tx.commit().await.map_err(db(format!("commit {action}")))?;
            return Ok(Attempt::Exhausted { until });
        }
        sqlx::query("INSERT INTO refresh_attempts (account, at) VALUES (?, ?)")
            .bind(name)
            .bind(ms(now))
            .execute(&mut *tx)
            .await
            .map_err(db(action.clone()))?;
        tx.commit().await.map_err(db(format!("commit {action}")))?;
        Ok(Attempt::Granted)
    }

    async fn get_state(&self, key: &str) -> Result<Option<serde_json::Value>, StoreError> {
        let row = sqlx::query("SELECT value FROM state WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db(format!("read state `{key}`")))?;
        row.map(|row| {
            let text: String = column(&row, key, "value")?;
            serde_json::from_str(&text).map_err(|e| corrupt(key, format!("state value: {e}")))
        })
        .transpose()
    }

    async fn put_state(&self, key: &str, value: &serde_json::Value, at: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO state (key, value, updated_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(key)
        .bind(value.to_string())
        .bind(ms(at))
        .execute(&self.pool)
        .await
        .map_err(db(format!("save state `{key}`")))?;
        Ok(())
    }

    fn seal_secret(&self, purpose: &str, secret: &tokenkeeper_core::Secret) -> Result<String, StoreError> {
        self.key.seal(purpose, secret, None)
    }

    fn open_secret(&self, purpose: &str, sealed: &str) -> Result<tokenkeeper_core::Secret, StoreError> {
        self.key.open(purpose, sealed).map(|(secret, _)| secret)
    }

    async fn delete_state(&self, key: &str) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM state WHERE key = ?")
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(db(format!("delete state `{key}`")))?;
        Ok(deleted.rows_affected() > 0)
    }

    async fn list_state(&self, prefix: &str) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        // substr rather than LIKE: a prefix may hold `%` or `_`.
        let rows = sqlx::query("SELECT key, value FROM state WHERE substr(key, 1, length(?1)) = ?1 ORDER BY key")
            .bind(prefix)
            .fetch_all(&self.pool)
            .await
            .map_err(db(format!("list state under `{prefix}`")))?;
        rows.iter()
            .map(|row| {
                let key: String = column(row, "state", "key")?;
                let text: String = column(row, &key, "value")?;
                let value = serde_json::from_str(&text).map_err(|e| corrupt(&key, format!("state value: {e}")))?;
                Ok((key, value))
            })
            .collect()
    }

    async fn remove_account(&self, name: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let action = format!("remove account `{name}`");
        let mut tx = self.begin(&action).await?;
        let deleted = sqlx::query("DELETE FROM accounts WHERE name = ?")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db(action.clone()))?;
        if deleted.rows_affected() == 0 {
            return Ok(false);
        }
        insert_event(&mut tx, name, EventKind::Removed, at, "account removed").await?;
        insert_change(&mut tx, Some(name), ChangeKind::Removed, None, at).await?;
        sqlx::query("DELETE FROM refresh_attempts WHERE account = ?")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db(action.clone()))?;
        tx.commit().await.map_err(db(format!("commit {action}")))?;
        self.notify_changed().await;
        Ok(true)
    }

    async fn record_event(&self, event: &NewEvent) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db("connect to record an event"))?;
        // Events wake nobody: they are history, read when shown.
        insert_event(&mut conn, &event.account, event.kind, event.at, &event.detail).await
    }

    async fn events(&self, account: Option<&str>, limit: u32) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, account, kind, at, detail FROM events WHERE (?1 IS NULL OR account = ?1) \
             ORDER BY id DESC LIMIT ?2",
        )
        .bind(account)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("read events"))?;
        rows.iter()
            .map(|row| {
                let id: i64 = column(row, "events", "id")?;
                let kind: String = column(row, "events", "kind")?;
                let account: String = column(row, "events", "account")?;
                Ok(Event {
                    id,
                    kind: EventKind::parse(&kind)
                        .ok_or_else(|| corrupt("events", format!("event {id} has unknown kind `{kind}`")))?,
                    at: time(&account, "events.at", column(row, "events", "at")?)?,
                    detail: column(row, "events", "detail")?,
                    account,
                })
            })
            .collect()
    }

    async fn create_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let name = key.name.as_str();
        let scopes = to_json("api_keys", &key.scopes)?;
        let accounts = to_json("api_keys", &key.accounts)?;
        let action = format!("create API key `{name}`");
        let mut tx = self.begin(&action).await?;
        let inserted = sqlx::query(&format!("INSERT INTO api_keys ({API_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"))
            .bind(&key.id)
            .bind(name)
            .bind(&key.hash)
            .bind(&scopes)
            .bind(&accounts)
            .bind(ms(key.created_at))
            .bind(key.revoked_at.map(ms))
            .execute(&mut *tx)
            .await;
        match inserted {
            Ok(_) => {}
            // The trait has no variant for a duplicate key; say plainly which rule was broken.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::Database {
                    action: format!(
                        "create API key `{name}`: an unrevoked key of that name, or a key with that id or hash, \
                         exists already"
                    ),
                    source: Box::new(sqlx::Error::Database(e)),
                })
            }
            Err(e) => return Err(db(format!("create API key `{name}`"))(e)),
        }
        insert_change(&mut tx, None, ChangeKind::Keys, None, key.created_at).await?;
        tx.commit().await.map_err(db(format!("commit {action}")))?;
        self.notify_changed().await;
        Ok(())
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {API_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"))
            .fetch_all(&self.pool)
            .await
            .map_err(db("list API keys"))?;
        rows.iter().map(api_key_from_row).collect()
    }

    async fn find_api_key(&self, hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let row = sqlx::query(&format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE hash = ? AND revoked_at IS NULL"))
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("look up an API key"))?;
        row.as_ref().map(api_key_from_row).transpose()
    }

    async fn revoke_api_key(&self, id_or_name: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let action = format!("revoke API key `{id_or_name}`");
        let mut tx = self.begin(&action).await?;
        // An id is unambiguous; only if none matches is it taken as a name.
        let mut revoked = 0;
        for column in ["id", "name"] {
            revoked =
                sqlx::query(&format!("UPDATE api_keys SET revoked_at = ? WHERE {column} = ? AND revoked_at IS NULL"))
                    .bind(ms(at))
                    .bind(id_or_name)
                    .execute(&mut *tx)
                    .await
                    .map_err(db(action.clone()))?
                    .rows_affected();
            if revoked > 0 {
                break;
            }
        }
        if revoked == 0 {
            return Ok(false);
        }
        insert_change(&mut tx, None, ChangeKind::Keys, None, at).await?;
        tx.commit().await.map_err(db(format!("commit {action}")))?;
        self.notify_changed().await;
        Ok(true)
    }

    async fn create_session(&self, session: &WebSession) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT OR REPLACE INTO web_sessions (hash, csrf, created_at, expires_at, flash) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&session.hash)
        .bind(&session.csrf)
        .bind(ms(session.created_at))
        .bind(ms(session.expires_at))
        .bind(session.flash.as_deref())
        .execute(&self.pool)
        .await
        .map_err(db("store a web session"))?;
        Ok(())
    }

    async fn session(&self, hash: &str, now: DateTime<Utc>) -> Result<Option<WebSession>, StoreError> {
        let row = sqlx::query(
            "SELECT hash, csrf, created_at, expires_at, flash FROM web_sessions WHERE hash = ? AND expires_at > ?",
        )
        .bind(hash)
        .bind(ms(now))
        .fetch_optional(&self.pool)
        .await
        .map_err(db("look up a web session"))?;
        row.map(|row| {
            Ok(WebSession {
                hash: column(&row, "web_sessions", "hash")?,
                csrf: column(&row, "web_sessions", "csrf")?,
                created_at: time("web_sessions", "created_at", column(&row, "web_sessions", "created_at")?)?,
                expires_at: time("web_sessions", "expires_at", column(&row, "web_sessions", "expires_at")?)?,
                flash: column(&row, "web_sessions", "flash")?,
            })
        })
        .transpose()
    }

    async fn set_session_flash(&self, hash: &str, flash: Option<&str>) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE web_sessions SET flash = ? WHERE hash = ?")
            .bind(flash)
            .bind(hash)
            .execute(&self.pool)
            .await
            .map_err(db("set a web session's message"))?;
        Ok(done.rows_affected() > 0)
    }

    async fn take_session_flash(&self, hash: &str) -> Result<Option<String>, StoreError> {
        let action = "take a web session's message";
        // One write transaction: a second reader waits for it and then finds the message gone.
        let mut tx = self.begin(action).await?;
        let flash: Option<Option<String>> = sqlx::query_scalar("SELECT flash FROM web_sessions WHERE hash = ?")
            .bind(hash)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db(action))?;
        let Some(Some(flash)) = flash else { return Ok(None) };
        sqlx::query("UPDATE web_sessions SET flash = NULL WHERE hash = ?")
            .bind(hash)
            .execute(&mut *tx)
            .await
            .map_err(db(action))?;
        tx.commit().await.map_err(db(action))?;
        Ok(Some(flash))
    }

    async fn delete_session(&self, hash: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM web_sessions WHERE hash = ?")
            .bind(hash)
            .execute(&self.pool)
            .await
            .map_err(db("end a web session"))?;
        Ok(done.rows_affected() > 0)
    }

    async fn prune_sessions(&self, now: DateTime<Utc>, keep: u32) -> Result<u64, StoreError> {
        let action = "prune web sessions";
        let mut tx = self.begin(action).await?;
        let expired = sqlx::query("DELETE FROM web_sessions WHERE expires_at <= ?")
            .bind(ms(now))
            .execute(&mut *tx)
            .await
            .map_err(db(action))?
            .rows_affected();
        let surplus = sqlx::query(
            "DELETE FROM web_sessions WHERE hash NOT IN \
             (SELECT hash FROM web_sessions ORDER BY created_at DESC, hash DESC LIMIT ?)",
        )
        .bind(i64::from(keep))
        .execute(&mut *tx)
        .await
        .map_err(db(action))?
        .rows_affected();
        tx.commit().await.map_err(db(action))?;
        Ok(expired + surplus)
    }
}

/// The migrations of [`MIGRATIONS`] as sqlx wants them.
#[derive(Debug)]
struct EmbeddedMigrations;

impl MigrationSource<'static> for EmbeddedMigrations {
    fn resolve(self) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 'static>> {
        let migrations = MIGRATIONS
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(version, Cow::Borrowed(description), MigrationType::Simple, Cow::Borrowed(sql), false)
            })
            .collect();
        Box::pin(std::future::ready(Ok(migrations)))
    }
}

/// Opens (creating) `path` and takes an exclusive advisory lock on it, without blocking the
/// runtime while another process holds it. The lock lasts as long as the returned file.
async fn lock_exclusively(path: PathBuf) -> Result<File, StoreError> {
    let on_join_error = io_error("wait for the lock", &path);
    let locked = tokio::task::spawn_blocking(move || {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_error("create the lock file", &path))?;
        FileExt::lock_exclusive(&file).map_err(io_error("lock", &path))?;
        Ok(file)
    })
    .await;
    match locked {
        Ok(result) => result,
        Err(e) => Err(on_join_error(io::Error::other(e))),
    }
}

/// Creates `path` empty with mode 0600 unless it exists; SQLite gives its `-wal` and `-shm`
/// files the database file's mode, so the whole database stays private.
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    // An empty file is an empty SQLite database; created whole and 0600 before SQLite opens
    // it, so the database is never readable by others even for a moment.
    create_once(path, b"").map(drop).map_err(io_error("create the database", path))
}

/// Records a change for the feed inside the writer's transaction, and prunes rows far behind.
async fn insert_change(
    conn: &mut SqliteConnection,
    account: Option<&str>,
    kind: ChangeKind,
    version: Option<i64>,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let seq = sqlx::query("INSERT INTO changes (account, kind, version, at) VALUES (?, ?, ?, ?)")
        .bind(account)
        .bind(kind.as_str())
        .bind(version)
        .bind(ms(at))
        .execute(&mut *conn)
        .await
        .map_err(db(format!("record a `{}` change", kind.as_str())))?
        .last_insert_rowid();
    // Pruning by the primary key is an index range delete: cheap enough to do on every write.
    sqlx::query("DELETE FROM changes WHERE seq <= ?")
        .bind(seq - CHANGES_KEPT)
        .execute(conn)
        .await
        .map_err(db("prune the change feed"))?;
    Ok(())
}

/// Saturating u64 → SQLite integer.
fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

async fn insert_event(
    conn: &mut SqliteConnection,
    account: &str,
    kind: EventKind,
    at: DateTime<Utc>,
    detail: &str,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO events (account, kind, at, detail) VALUES (?, ?, ?, ?)")
        .bind(account)
        .bind(kind.as_str())
        .bind(ms(at))
        .bind(detail)
        .execute(conn)
        .await
        .map_err(db(format!("record a `{}` event for `{account}`", kind.as_str())))?;
    Ok(())
}

fn api_key_from_row(row: &SqliteRow) -> Result<ApiKey, StoreError> {
    let id: String = column(row, "api_keys", "id")?;
    let scopes: String = column(row, &id, "scopes")?;
    let accounts: String = column(row, &id, "accounts")?;
    Ok(ApiKey {
        name: column(row, &id, "name")?,
        hash: column(row, &id, "hash")?,
        scopes: serde_json::from_str(&scopes).map_err(|e| corrupt(&id, format!("API key scopes: {e}")))?,
        accounts: serde_json::from_str(&accounts).map_err(|e| corrupt(&id, format!("API key accounts: {e}")))?,
        created_at: time(&id, "created_at", column(row, &id, "created_at")?)?,
        revoked_at: opt_time(&id, "revoked_at", column(row, &id, "revoked_at")?)?,
        id,
    })
}

/// Reads one column, reporting a type mismatch as a corrupt row of `owner`.
fn column<'r, T>(row: &'r SqliteRow, owner: &str, name: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
{
    row.try_get(name).map_err(|e| corrupt(owner, format!("column `{name}`: {e}")))
}

fn corrupt(owner: &str, reason: String) -> StoreError {
    StoreError::Corrupt { account: owner.to_owned(), reason }
}

/// The row disappeared inside our own transaction: only a broken database does that.
fn vanished(name: &str) -> StoreError {
    corrupt(name, "the row written in this transaction cannot be read back".to_owned())
}

fn db(action: impl Into<String>) -> impl FnOnce(sqlx::Error) -> StoreError {
    let action = action.into();
    move |source| StoreError::Database { action, source: Box::new(source) }
}

fn ms(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

fn time(owner: &str, column: &str, millis: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(millis).ok_or_else(|| corrupt(owner, format!("{column} {millis} is out of range")))
}

fn opt_time(owner: &str, column: &str, millis: Option<i64>) -> Result<Option<DateTime<Utc>>, StoreError> {
    millis.map(|m| time(owner, column, m)).transpose()
}

fn to_json(owner: &str, list: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(list).map_err(|e| corrupt(owner, format!("cannot encode a list as JSON: {e}")))
}

fn binding_kind_str(kind: BindingKind) -> &'static str {
    kind.into()
}

fn parse_binding_kind(owner: &str, text: &str) -> Result<BindingKind, StoreError> {
    text.parse().map_err(|_| corrupt(owner, format!("unknown binding kind `{text}`")))
}

/// The `(binding_kind, binding_path)` columns for a binding.
fn binding_columns(
    owner: &str,
    binding: Option<&Binding>,
) -> Result<(Option<&'static str>, Option<String>), StoreError> {
    let Some(binding) = binding else {
        return Ok((None, None));
    };
    let path = binding.path.to_str().ok_or_else(|| {
        corrupt(
            owner,
            format!("the bound path {} is not valid UTF-8, which the store cannot keep", binding.path.display()),
        )
    })?;
    Ok((Some(binding_kind_str(binding.kind)), Some(path.to_owned())))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use sqlx::Connection;

    #[tokio::test]
    async fn connections_are_durable_wal_with_a_busy_timeout() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(tmp.path(), EncryptionKey::generate()).await.unwrap();
        let mut pooled = store.pool.acquire().await.unwrap();
        let mut fresh = SqliteConnection::connect_with(&store.pool.connect_options()).await.unwrap();
        for conn in [&mut *pooled, &mut fresh] {
            let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(&mut *conn).await.unwrap();
            assert_eq!(synchronous, 2, "synchronous must be FULL");
            let journal: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut *conn).await.unwrap();
            assert_eq!(journal, "wal");
            let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout").fetch_one(&mut *conn).await.unwrap();
            assert!(busy >= 5_000, "busy_timeout {busy}");
            let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys").fetch_one(&mut *conn).await.unwrap();
            assert_eq!(fk, 1);
            let cache: i64 = sqlx::query_scalar("PRAGMA cache_size").fetch_one(&mut *conn).await.unwrap();
            assert_eq!(cache, -512, "a small page cache per connection");
        }
    }

    #[test]
    fn every_migration_file_is_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let embedded: Vec<String> = MIGRATIONS.iter().map(|(v, d, _)| format!("{v:04}_{d}.sql")).collect();
        assert_eq!(files, embedded);
        for ((_, _, sql), file) in MIGRATIONS.iter().zip(&files) {
            let on_disk =
                std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite").join(file))
                    .unwrap();
            assert_eq!(*sql, on_disk);
        }
    }

    #[tokio::test]
    async fn reopening_applies_nothing_twice_and_keeps_data() {
        let tmp = tempfile::tempdir().unwrap();
        let key = EncryptionKey::generate();
        let b64 = key.to_base64();
        let store = SqliteStore::open(tmp.path(), key).await.unwrap();
        store
            .record_event(&NewEvent {
                account: "a".into(),
                kind: EventKind::Repaired,
                at: DateTime::from_timestamp_millis(1).unwrap(),
                detail: "x".into(),
            })
            .await
            .unwrap();
        store.close().await;
        let again = SqliteStore::open(tmp.path(), EncryptionKey::from_base64(&b64).unwrap()).await.unwrap();
        assert_eq!(again.events(None, 10).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_data_directory_of_the_previous_release_is_migrated_and_keeps_its_accounts() {
        use tokenkeeper_core::store::CredentialChange;
        let tmp = tempfile::tempdir().unwrap();
        let key = EncryptionKey::generate();
        let b64 = key.to_base64();
        let store = SqliteStore::open(tmp.path(), key).await.unwrap();
        let when = DateTime::from_timestamp_millis(1_700_000_000_000).unwrap();
        let new = tokenkeeper_core::NewAccount {
            name: "main".into(),
            provider: "anthropic".into(),
            mode: tokenkeeper_core::Mode::Own,
            credential: Credential {
                access_token: tokenkeeper_core::Secret::new("sk-ant-oat01-old"),
                refresh_token: Some(tokenkeeper_core::Secret::new("sk-ant-ort01-old")),
                expires_at: when,
                scopes: vec![],
                subscription_type: None,
                rate_limit_tier: None,
                provider_data: None,
            },
            email: None,
            organization: None,
            binding: None,
            refresh_token_issued_at: None,
        };
        store.create_account(&new, when, CredentialChange::Imported).await.unwrap();
        // Back to the schema the previous release (0.2, migrations 1 and 2) left, same checksums.
        sqlx::query("DROP TABLE web_sessions").execute(&store.pool).await.unwrap();
        sqlx::query("DELETE FROM _sqlx_migrations WHERE version >= 3").execute(&store.pool).await.unwrap();
        store.close().await;
        let again = SqliteStore::open(tmp.path(), EncryptionKey::from_base64(&b64).unwrap()).await.unwrap();
        let main = again.get_account("main").await.unwrap().unwrap();
        assert_eq!(main.credential.access_token.expose(), "sk-ant-oat01-old");
        let session = WebSession {
            hash: "ab".into(),
            csrf: "c".into(),
            created_at: when,
            expires_at: when + chrono::TimeDelta::hours(1),
            flash: None,
        };
        again.create_session(&session).await.unwrap();
        assert_eq!(again.session("ab", when).await.unwrap(), Some(session));
    }

    #[tokio::test]
    async fn a_database_failure_is_never_not_found() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(tmp.path(), EncryptionKey::generate()).await.unwrap();
        sqlx::query("DROP TABLE accounts").execute(&store.pool).await.unwrap();
        let when = DateTime::from_timestamp_millis(1).unwrap();
        let credential = Credential {
            access_token: tokenkeeper_core::Secret::new("sk-ant-oat01-x"),
            refresh_token: None,
            expires_at: when,
            scopes: vec![],
            subscription_type: None,
            rate_limit_tier: None,
            provider_data: None,
        };
        let update = CredentialUpdate {
            expected_version: 1,
            credential,
            change: CredentialChange::Refreshed,
            at: when,
            detail: String::new(),
            email: None,
            organization: None,
        };
        assert!(matches!(store.get_account("main").await, Err(StoreError::Database { .. })));
        assert!(matches!(store.update_credential("main", &update).await, Err(StoreError::Database { .. })));
        let used = crate::testing::use_of("main", 1, when);
        assert!(matches!(store.record_usage(&[used]).await, Err(StoreError::Database { .. })));
        assert!(matches!(store.remove_account("main", when).await, Err(StoreError::Database { .. })));
    }

    #[tokio::test]
    async fn an_unreadable_row_is_corrupt_not_a_panic() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(tmp.path(), EncryptionKey::generate()).await.unwrap();
        let new = crate::testing::new_account("main", crate::testing::credential("sk-ant-oat01-x", None, 10));
        store.create_account(&new, crate::testing::at(0), CredentialChange::Imported).await.unwrap();
        sqlx::query("UPDATE accounts SET state = 'sleepy'").execute(&store.pool).await.unwrap();
        match store.get_account("main").await {
            Err(StoreError::Corrupt { account, reason }) => assert_eq!(account, "main", "{reason}"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        sqlx::query("UPDATE accounts SET state = 'active', secret = 'v1:AAAA'").execute(&store.pool).await.unwrap();
        assert!(matches!(store.get_account("main").await, Err(StoreError::Corrupt { .. })));
    }
}
