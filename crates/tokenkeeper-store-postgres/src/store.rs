//! [`PgStore`]: the [`Store`] of an installation whose replicas share one PostgreSQL database.
//!
//! Every method is one transaction in `READ COMMITTED`. A credential update locks the account's
//! row (`SELECT … FOR UPDATE`), compares its version with the writer's and only then writes, so
//! of several replicas racing from the same version exactly one wins. Writes that the change
//! feed reports (credentials, account metadata, removals, API keys) insert their row into
//! `changes` and `NOTIFY` in the same transaction (see [`crate::feed`]); usage flushes and
//! installation state never do.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{Postgres, Row, Transaction};
use tokenkeeper_core::account::{Account, AccountState, Binding, BindingKind, Mode, NewAccount, Usage};
use tokenkeeper_core::backend::ChangeKind;
use tokenkeeper_core::credential::Credential;
use tokenkeeper_core::store::{
    AccountPatch, ApiKey, Attempt, CredentialChange, CredentialUpdate, Event, EventKind, NewEvent, Store, StoreError,
    UsageRecord, WebSession,
};
use tokenkeeper_crypto::EncryptionKey;

use crate::feed::CHANNEL;
use crate::migrate::run_migrations;
use crate::{advisory_key, describe, parse_url};

/// Connections per replica. Writes are short transactions; a few connections let reads (the
/// API's key look-ups, `status`) proceed beside a refresh.
const MAX_CONNECTIONS: u32 = 8;

/// How long a caller waits for a free connection before the store reports the database as
/// unreachable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The window of the refresh attempt budget.
const ATTEMPT_WINDOW: TimeDelta = TimeDelta::hours(1);

/// How long hourly usage buckets are kept (as in SQLite).
const USAGE_KEPT: TimeDelta = TimeDelta::days(35);

/// The change feed keeps at least this many rows (as in SQLite); a subscriber further behind
/// resynchronises.
const CHANGES_KEPT: i64 = 10_000;

/// Every this many changes, the writer prunes the rows beyond [`CHANGES_KEPT`].
const PRUNE_EVERY: i64 = 256;

/// The columns of `accounts`, in the order [`PgStore::account_from_row`] reads them.
const ACCOUNT_COLUMNS: &str = "name, provider, mode, version, secret, expires_at, scopes, subscription_type, \
     rate_limit_tier, email, organization, binding_kind, binding_path, state, created_at, updated_at, \
     last_refreshed_at, refresh_token_issued_at, usage_requests, last_used_at, last_error";

/// The columns of `api_keys`.
const API_KEY_COLUMNS: &str = "id, name, hash, scopes, accounts, created_at, revoked_at";

/// The PostgreSQL store. Cheap to share (`Arc<dyn Store>`); every replica opens its own on the
/// same database, and they see each other's writes at once.
pub struct PgStore {
    pub(crate) pool: PgPool,
    pub(crate) key: EncryptionKey,
    target: String,
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db?sslmode=…`, or
    /// `postgres:///db?host=/run/postgresql` for a Unix socket) and applies pending migrations
    /// (one replica at a time, see [`PgStore::migrate`]).
    pub async fn open(url: &str, key: EncryptionKey) -> Result<PgStore, StoreError> {
        PgStore::connect(parse_url(url)?, key).await
    }

    /// [`PgStore::open`] with options built in code.
    pub async fn connect(options: PgConnectOptions, key: EncryptionKey) -> Result<PgStore, StoreError> {
        let target = describe(&options);
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.application_name("tokenkeeper"))
            .await
            .map_err(db(format!("connect to {target}; check [store] url / TOKENKEEPER_STORE_URL")))?;
        run_migrations(&pool, &target).await?;
        tracing::debug!(target = %target, "store opened");
        Ok(PgStore { pool, key, target })
    }

    /// A store on `pool` as it is, without migrating (for `doctor`, which only looks).
    pub(crate) fn unmigrated(pool: PgPool, key: EncryptionKey, target: String) -> PgStore {
        PgStore { pool, key, target }
    }

    /// Applies pending migrations to the database at `url` and returns the schema version now
    /// in force, for the `tokenkeeper migrate` command. [`PgStore::open`] does the same on every start; calling this first
    /// only makes the upgrade a separate step.
    ///
    /// Replicas starting at once migrate one at a time: the migrations run in one transaction
    /// that first takes a transaction-level advisory lock, so a second replica waits for the
    /// first to commit and then finds nothing left to do.
    pub async fn migrate(url: &str) -> Result<i64, StoreError> {
        let options = parse_url(url)?;
        let target = describe(&options);
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.application_name("tokenkeeper migrate"))
            .await
            .map_err(db(format!("connect to {target} to migrate it")))?;
        let migrated = run_migrations(&pool, &target).await;
        let version = match migrated {
            Ok(()) => sqlx::query_scalar::<_, Option<i64>>("SELECT max(version) FROM _sqlx_migrations")
                .fetch_one(&pool)
                .await
                .map(|v| v.unwrap_or(0))
                .map_err(db(format!("read the schema version of {target}"))),
            Err(e) => Err(e),
        };
        pool.close().await;
        version
    }

    /// Where the database is, in words, without credentials (for messages).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Closes every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn begin(&self, action: &str) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.pool.begin().await.map_err(db(format!("begin a transaction to {action}")))
    }

    async fn fetch_account(&self, conn: &mut PgConnection, name: &str) -> Result<Option<Account>, StoreError> {
        let row = sqlx::query(&format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE name = $1"))
            .bind(name)
            .fetch_optional(conn)
            .await
            .map_err(db(format!("read account `{name}`")))?;
        row.map(|row| self.account_from_row(&row)).transpose()
    }

    fn account_from_row(&self, row: &PgRow) -> Result<Account, StoreError> {
        let name: String = column(row, "accounts", "name")?;
        let n = name.as_str();
        let sealed = self.key.open_credential(n, &column::<String>(row, n, "secret")?)?;
        let Json(scopes): Json<Vec<String>> = column(row, n, "scopes")?;
        let mode: String = column(row, n, "mode")?;
        let state: String = column(row, n, "state")?;
        let binding_kind: Option<String> = column(row, n, "binding_kind")?;
        let binding_path: Option<String> = column(row, n, "binding_path")?;
        let binding = match (binding_kind, binding_path) {
            (Some(kind), Some(path)) => Some(Binding { kind: parse_binding_kind(n, &kind)?, path: path.into() }),
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
                expires_at: column(row, n, "expires_at")?,
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
            created_at: column(row, n, "created_at")?,
            updated_at: column(row, n, "updated_at")?,
            last_refreshed_at: column(row, n, "last_refreshed_at")?,
            refresh_token_issued_at: column(row, n, "refresh_token_issued_at")?,
            usage: Usage {
                requests: u64::try_from(requests).map_err(|_| corrupt(n, format!("usage_requests is {requests}")))?,
                last_used_at: column(row, n, "last_used_at")?,
            },
            last_error: column(row, n, "last_error")?,
            name,
        })
    }
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore").field("target", &self.target).finish_non_exhaustive()
    }
}

#[async_trait]
impl Store for PgStore {
    async fn list_accounts(&self) -> Result<Vec<Account>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY name"))
            .fetch_all(&self.pool)
            .await
            .map_err(db("list accounts"))?;
        rows.iter().map(|row| self.account_from_row(row)).collect()
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
        let (binding_kind, binding_path) = binding_columns(name, new.binding.as_ref())?;
        let issued_at = new.refresh_token_issued_at.unwrap_or(at);
        let action = format!("create account `{name}`");
        let mut tx = self.begin(&action).await?;
        let inserted = sqlx::query(
            "INSERT INTO accounts (name, provider, mode, version, secret, expires_at, scopes, subscription_type, \
             rate_limit_tier, email, organization, binding_kind, binding_path, state, created_at, updated_at, \
             refresh_token_issued_at) \
             VALUES ($1, $2, $3, 1, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'active', $13, $13, $14)",
        )
        .bind(name)
        .bind(&new.provider)
        .bind(new.mode.to_string())
        .bind(&secret)
        .bind(ts(credential.expires_at))
        .bind(Json(&credential.scopes))
        .bind(&credential.subscription_type)
        .bind(&credential.rate_limit_tier)
        .bind(&new.email)
        .bind(&new.organization)
        .bind(binding_kind)
        .bind(&binding_path)
        .bind(ts(at))
        .bind(ts(issued_at))
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
        let account = self.fetch_account(&mut tx, name).await?.ok_or_else(|| vanished(name))?;
        insert_change(&mut tx, Some(name), ChangeKind::Credential, Some(account.version)).await?;
        tx.commit().await.map_err(db(format!("commit {action}")))?;
        Ok(account)
    }

    async fn update_credential(&self, name: &str, update: &CredentialUpdate) -> Result<Account, StoreError> {
        let action = format!("update the credential of `{name}`");
        let credential = &update.credential;
        let secret = self.key.seal_credential(name, &tokenkeeper_crypto::SealedRef::of(credential))?;
        let mut tx = self.begin(&action).await?;
        // The row lock is ours until commit: a writer in another replica waits here and then
        // reads the version this transaction wrote.
        let row = sqlx::query("SELECT version, secret FROM accounts WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db(format!("lock and read the version of `{name}`")))?
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
        let at = ts(update.at);
        let refreshed_at =
            matches!(update.change, CredentialChange::Refreshed | CredentialChange::Adopted).then_some(at);
        let issued_at = (old_refresh != credential.refresh_token).then_some(at);
        sqlx::query(
            "UPDATE accounts SET secret = $1, expires_at = $2, scopes = $3, subscription_type = $4, \
             rate_limit_tier = $5, version = version + 1, updated_at = $6, \
             last_refreshed_at = COALESCE($7, last_refreshed_at), \
             refresh_token_issued_at = COALESCE($8, refresh_token_issued_at), state = 'active', last_error = NULL, \
             email = COALESCE($9, email), organization = COALESCE($10, organization) \
             WHERE name = $11",
        )
        .bind(&secret)
        .bind(ts(credential.expires_at))
        .bind(Json(&credential.scopes))
        .bind(&credential.subscription_type)
        .bind(&credential.rate_limit_tier)
        .bind(at)
        .bind(refreshed_at)
        .bind(issued_at)
        .bind(&update.email)
        .bind(&update.organization)
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(db(action.clone()))?;
        insert_event(&mut tx, name, update.change.event_kind(), update.at, &update.detail).await?;
        let account = self.fetch_account(&mut tx, name).await?.ok_or_else(|| vanished(name))?;
        insert_change(&mut tx, Some(name), ChangeKind::Credential, Some(account.version)).await?;
        tx.commit().await.map_err(db(format!("commit {action}")))?;
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
            "UPDATE accounts SET state = COALESCE($1, state), mode = COALESCE($2, mode), \
             last_error = CASE WHEN $3 THEN $4 ELSE last_error END, \
             binding_kind = CASE WHEN $5 THEN $6 ELSE binding_kind END, \
             binding_path = CASE WHEN $5 THEN $7 ELSE binding_path END, \
             updated_at = $8 WHERE name = $9",
        )
        .bind(patch.state.map(AccountState::as_str))
        .bind(patch.mode.map(|m| m.to_string()))
        .bind(patch.last_error.is_some())
        .bind(patch.last_error.clone().flatten())
        .bind(set_binding)
        .bind(binding_kind)
        .bind(binding_path)
        .bind(ts(at))
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(db(action.clone()))?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound(name.to_owned()));
        }
        let account = self.fetch_account(&mut tx, name).await?.ok_or_else(|| vanished(name))?;
        insert_change(&mut tx, Some(name), ChangeKind::Metadata, None).await?;
        tx.commit().await.map_err(db(format!("commit {action}")))?;
        Ok(account)
    }

    async fn record_usage(&self, batch: &[UsageRecord]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        // Added up here first: one upsert statement may not touch a bucket twice.
        let mut buckets: BTreeMap<(&str, &str, &str, DateTime<Utc>), Counters> = BTreeMap::new();
        let mut totals: BTreeMap<&str, (u64, DateTime<Utc>)> = BTreeMap::new();
        for record in batch {
            let key = (
                record.account.as_str(),
                record.key_id.as_deref().unwrap_or(""),
                record.model.as_deref().unwrap_or(""),
                // Whatever instant the record names, its bucket is the hour it falls in.
                ts(UsageRecord::hour_of(record.hour)),
            );
            buckets.entry(key).or_insert_with(|| Counters::empty(record.last_used_at)).add(record);
            let total = totals.entry(record.account.as_str()).or_insert((0, record.last_used_at));
            total.0 = total.0.saturating_add(record.requests);
            total.1 = total.1.max(record.last_used_at);
        }
        let names: Vec<&str> = totals.keys().copied().collect();
        let mut tx = self.begin("count usage").await?;
        // Locked in name order, so two flushes never deadlock, and held to commit, so an account
        // cannot be removed between this check and the writes below. Missing ones are skipped.
        let present: BTreeSet<String> =
            sqlx::query_scalar("SELECT name FROM accounts WHERE name = ANY($1) ORDER BY name FOR NO KEY UPDATE")
                .bind(&names)
                .fetch_all(&mut *tx)
                .await
                .map_err(db("lock the accounts whose usage is counted"))?
                .into_iter()
                .collect();
        let mut columns = UsageColumns::default();
        for ((account, key_id, model, hour), counters) in &buckets {
            if present.contains(*account) {
                columns.push(account, key_id, model, *hour, counters);
            }
        }
        if !columns.account.is_empty() {
            sqlx::query(
                "INSERT INTO usage (account, key_id, model, hour, requests, input_tokens, output_tokens, \
                 cache_read_tokens, cache_creation_tokens, errors, last_used_at) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::bigint[], \
                 $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::timestamptz[]) \
                 ON CONFLICT (account, key_id, model, hour) DO UPDATE SET \
                 requests = usage.requests + EXCLUDED.requests, \
                 input_tokens = usage.input_tokens + EXCLUDED.input_tokens, \
                 output_tokens = usage.output_tokens + EXCLUDED.output_tokens, \
                 cache_read_tokens = usage.cache_read_tokens + EXCLUDED.cache_read_tokens, \
                 cache_creation_tokens = usage.cache_creation_tokens + EXCLUDED.cache_creation_tokens, \
                 errors = usage.errors + EXCLUDED.errors, \
                 last_used_at = GREATEST(usage.last_used_at, EXCLUDED.last_used_at)",
            )
            .bind(&columns.account)
            .bind(&columns.key_id)
            .bind(&columns.model)
            .bind(&columns.hour)
            .bind(&columns.requests)
            .bind(&columns.input_tokens)
            .bind(&columns.output_tokens)
            .bind(&columns.cache_read_tokens)
            .bind(&columns.cache_creation_tokens)
            .bind(&columns.errors)
            .bind(&columns.last_used_at)
            .execute(&mut *tx)
            .await
            .map_err(db("add to the usage buckets"))?;
        }
        let (mut accounts, mut requests, mut last_used) = (Vec::new(), Vec::new(), Vec::new());
        for (account, (count, last)) in &totals {
            if present.contains(*account) {
                accounts.push(*account);
                requests.push(to_i64(*count));
                last_used.push(ts(*last));
            }
        }
        if !accounts.is_empty() {
            // GREATEST ignores NULL, and never moves `last_used_at` back.
            sqlx::query(
                "UPDATE accounts SET usage_requests = accounts.usage_requests + u.requests, \
                 last_used_at = GREATEST(accounts.last_used_at, u.last_used_at) \
                 FROM UNNEST($1::text[], $2::bigint[], $3::timestamptz[]) AS u (name, requests, last_used_at) \
                 WHERE accounts.name = u.name",
            )
            .bind(&accounts)
            .bind(&requests)
            .bind(&last_used)
            .execute(&mut *tx)
            .await
            .map_err(db("add usage to the accounts"))?;
        }
        // Hourly buckets are kept for USAGE_KEPT (as in SQLite); the accounts' totals stay.
        if let Some(newest) = batch.iter().map(|r| r.last_used_at).max() {
            sqlx::query("DELETE FROM usage WHERE hour < $1")
                .bind(ts(newest - USAGE_KEPT))
                .execute(&mut *tx)
                .await
                .map_err(db("prune old usage buckets"))?;
        }
        tx.commit().await.map_err(db("commit a usage flush"))?;
        Ok(())
    }

    async fn usage(&self, account: Option<&str>, since: DateTime<Utc>) -> Result<Vec<UsageRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT account, key_id, model, hour, requests, input_tokens, output_tokens, cache_read_tokens, \
             cache_creation_tokens, errors, last_used_at FROM usage \
             WHERE ($1::text IS NULL OR account = $1) AND hour >= $2 \
             ORDER BY hour, account, key_id, model",
        )
        .bind(account)
        .bind(since)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read usage"))?;
        rows.iter()
            .map(|row| {
                let account: String = column(row, "usage", "account")?;
                let count = |name: &str| -> Result<u64, StoreError> {
                    let value: i64 = column(row, &account, name)?;
                    u64::try_from(value).map_err(|_| corrupt(&account, format!("usage.{name} is {value}")))
                };
                let key_id: String = column(row, &account, "key_id")?;
                let model: String = column(row, &account, "model")?;
                Ok(UsageRecord {
                    key_id: (!key_id.is_empty()).then_some(key_id),
                    model: (!model.is_empty()).then_some(model),
                    hour: column(row, &account, "hour")?,
                    requests: count("requests")?,
                    input_tokens: count("input_tokens")?,
                    output_tokens: count("output_tokens")?,
                    cache_read_tokens: count("cache_read_tokens")?,
                    cache_creation_tokens: count("cache_creation_tokens")?,
                    errors: count("errors")?,
                    last_used_at: column(row, &account, "last_used_at")?,
                    account,
                })
            })
            .collect()
    }

    async fn take_refresh_attempt(&self, name: &str, now: DateTime<Utc>, max: u32) -> Result<Attempt, StoreError> {
        let action = format!("take a refresh attempt of `{name}`");
        let now = ts(now);
        let mut tx = self.begin(&action).await?;
        // Counting and taking are one step across every replica: one transaction lock per
        // account name (the budget is kept by name, like SQLite's, whether the account exists).
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(advisory_key(&format!("tokenkeeper/attempts/{name}")))
            .execute(&mut *tx)
            .await
            .map_err(db(format!("lock the attempt budget to {action}")))?;
        sqlx::query("DELETE FROM refresh_attempts WHERE account = $1 AND at <= $2")
            .bind(name)
            .bind(now - ATTEMPT_WINDOW)
            .execute(&mut *tx)
            .await
            .map_err(db(format!("forget the old refresh attempts of `{name}`")))?;
        let row = sqlx::query("SELECT count(*) AS taken, min(at) AS oldest FROM refresh_attempts WHERE account = $1")
            .bind(name)
            .fetch_one(&mut *tx)
            .await
            .map_err(db(format!("count the refresh attempts of `{name}`")))?;
        let taken: i64 = column(&row, name, "taken")?;
        let oldest: Option<DateTime<Utc>> = column(&row, name, "oldest")?;
        let answer = if taken < i64::from(max) {
            sqlx::query("INSERT INTO refresh_attempts (account, at) VALUES ($1, $2)")
                .bind(name)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db(action.clone()))?;
            Attempt::Granted
        } else {
            // With a budget of 0 nothing ever leaves the window; say "in an hour" rather than now.
            Attempt::Exhausted { until: oldest.unwrap_or(now) + ATTEMPT_WINDOW }
        };
        tx.commit().await.map_err(db(format!("commit {action}")))?;
        Ok(answer)
    }

    async fn get_state(&self, key: &str) -> Result<Option<serde_json::Value>, StoreError> {
        let value: Option<Json<serde_json::Value>> = sqlx::query_scalar("SELECT value FROM state WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db(format!("read state `{key}`")))?;
        Ok(value.map(|Json(v)| v))
    }

    async fn put_state(&self, key: &str, value: &serde_json::Value, at: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO state (key, value, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at",
        )
        .bind(key)
        .bind(Json(value))
        .bind(ts(at))
        .execute(&self.pool)
        .await
        .map_err(db(format!("write state `{key}`")))?;
        Ok(())
    }

    fn seal_secret(&self, purpose: &str, secret: &tokenkeeper_core::Secret) -> Result<String, StoreError> {
        self.key.seal(purpose, secret, None)
    }

    fn open_secret(&self, purpose: &str, sealed: &str) -> Result<tokenkeeper_core::Secret, StoreError> {
        self.key.open(purpose, sealed).map(|(secret, _)| secret)
    }

    async fn delete_state(&self, key: &str) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM state WHERE key = $1")
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(db(format!("remove state `{key}`")))?;
        Ok(deleted.rows_affected() > 0)
    }

    async fn list_state(&self, prefix: &str) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        let rows = sqlx::query("SELECT key, value FROM state WHERE starts_with(key, $1) ORDER BY key")
            .bind(prefix)
            .fetch_all(&self.pool)
            .await
            .map_err(db(format!("list state under `{prefix}`")))?;
        rows.iter()
            .map(|row| {
                let key: String = column(row, "state", "key")?;
                let Json(value): Json<serde_json::Value> = column(row, &key, "value")?;
                Ok((key, value))
            })
            .collect()
    }

    async fn remove_account(&self, name: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let action = format!("remove account `{name}`");
        let mut tx = self.begin(&action).await?;
        // Its events and usage buckets stay (history); its attempt budget goes.
        let deleted = sqlx::query("DELETE FROM accounts WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db(action.clone()))?;
        if deleted.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM refresh_attempts WHERE account = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db(action.clone()))?;
        insert_event(&mut tx, name, EventKind::Removed, at, "account removed").await?;
        insert_change(&mut tx, Some(name), ChangeKind::Removed, None).await?;
        tx.commit().await.map_err(db(format!("commit {action}")))?;
        Ok(true)
    }

    async fn record_event(&self, event: &NewEvent) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db("connect to record an event"))?;
        insert_event(&mut conn, &event.account, event.kind, event.at, &event.detail).await
    }

    async fn events(&self, account: Option<&str>, limit: u32) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, account, kind, at, detail FROM events WHERE ($1::text IS NULL OR account = $1) \
             ORDER BY id DESC LIMIT $2",
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
                Ok(Event {
                    id,
                    kind: EventKind::parse(&kind)
                        .ok_or_else(|| corrupt("events", format!("event {id} has unknown kind `{kind}`")))?,
                    account: column(row, "events", "account")?,
                    at: column(row, "events", "at")?,
                    detail: column(row, "events", "detail")?,
                })
            })
            .collect()
    }

    async fn create_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let name = key.name.as_str();
        let action = format!("create API key `{name}`");
        let mut tx = self.begin(&action).await?;
        let inserted =
            sqlx::query(&format!("INSERT INTO api_keys ({API_KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"))
                .bind(&key.id)
                .bind(name)
                .bind(&key.hash)
                .bind(Json(&key.scopes))
                .bind(Json(&key.accounts))
                .bind(ts(key.created_at))
                .bind(key.revoked_at.map(ts))
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
            Err(e) => return Err(db(action)(e)),
        }
        insert_change(&mut tx, None, ChangeKind::Keys, None).await?;
        tx.commit().await.map_err(db(format!("commit {action}")))?;
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
        let row =
            sqlx::query(&format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE hash = $1 AND revoked_at IS NULL"))
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
                sqlx::query(&format!("UPDATE api_keys SET revoked_at = $1 WHERE {column} = $2 AND revoked_at IS NULL"))
                    .bind(ts(at))
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
        insert_change(&mut tx, None, ChangeKind::Keys, None).await?;
        tx.commit().await.map_err(db(format!("commit {action}")))?;
        Ok(true)
    }

    async fn create_session(&self, session: &WebSession) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO web_sessions (hash, csrf, created_at, expires_at, flash) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (hash) DO UPDATE SET csrf = EXCLUDED.csrf, created_at = EXCLUDED.created_at, \
             expires_at = EXCLUDED.expires_at, flash = EXCLUDED.flash",
        )
        .bind(&session.hash)
        .bind(&session.csrf)
        .bind(ts(session.created_at))
        .bind(ts(session.expires_at))
        .bind(session.flash.as_deref())
        .execute(&self.pool)
        .await
        .map_err(db("store a web session"))?;
        Ok(())
    }

    async fn session(&self, hash: &str, now: DateTime<Utc>) -> Result<Option<WebSession>, StoreError> {
        let row = sqlx::query(
            "SELECT hash, csrf, created_at, expires_at, flash FROM web_sessions WHERE hash = $1 AND expires_at > $2",
        )
        .bind(hash)
        .bind(ts(now))
        .fetch_optional(&self.pool)
        .await
        .map_err(db("look up a web session"))?;
        row.map(|row| {
            Ok(WebSession {
                hash: column(&row, "web_sessions", "hash")?,
                csrf: column(&row, "web_sessions", "csrf")?,
                created_at: column(&row, "web_sessions", "created_at")?,
                expires_at: column(&row, "web_sessions", "expires_at")?,
                flash: column(&row, "web_sessions", "flash")?,
            })
        })
        .transpose()
    }

    async fn set_session_flash(&self, hash: &str, flash: Option<&str>) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE web_sessions SET flash = $1 WHERE hash = $2")
            .bind(flash)
            .bind(hash)
            .execute(&self.pool)
            .await
            .map_err(db("set a web session's message"))?;
        Ok(done.rows_affected() > 0)
    }

    async fn take_session_flash(&self, hash: &str) -> Result<Option<String>, StoreError> {
        // The row lock of the sub-select makes a second reader wait, then see the message gone.
        let flash: Option<Option<String>> = sqlx::query_scalar(
            "UPDATE web_sessions s SET flash = NULL \
             FROM (SELECT hash, flash FROM web_sessions WHERE hash = $1 FOR UPDATE) old \
             WHERE s.hash = old.hash RETURNING old.flash",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("take a web session's message"))?;
        Ok(flash.flatten())
    }

    async fn delete_session(&self, hash: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM web_sessions WHERE hash = $1")
            .bind(hash)
            .execute(&self.pool)
            .await
            .map_err(db("end a web session"))?;
        Ok(done.rows_affected() > 0)
    }

    async fn prune_sessions(&self, now: DateTime<Utc>, keep: u32) -> Result<u64, StoreError> {
        let action = "prune web sessions";
        let mut tx = self.pool.begin().await.map_err(db(action))?;
        let expired = sqlx::query("DELETE FROM web_sessions WHERE expires_at <= $1")
            .bind(ts(now))
            .execute(&mut *tx)
            .await
            .map_err(db(action))?
            .rows_affected();
        let surplus = sqlx::query(
            "DELETE FROM web_sessions WHERE hash NOT IN \
             (SELECT hash FROM web_sessions ORDER BY created_at DESC, hash DESC LIMIT $1)",
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

/// The counters of one usage bucket, added up from a batch.
#[derive(Debug, Clone, Copy)]
struct Counters {
    requests: u64,
    input_tokens: u64,
    output_tokens: u64,
    cache_read_tokens: u64,
    cache_creation_tokens: u64,
    errors: u64,
    last_used_at: DateTime<Utc>,
}

impl Counters {
    fn empty(last_used_at: DateTime<Utc>) -> Counters {
        Counters {
            requests: 0,
            input_tokens: 0,
            output_tokens: 0,
            cache_read_tokens: 0,
            cache_creation_tokens: 0,
            errors: 0,
            last_used_at,
        }
    }

    fn add(&mut self, record: &UsageRecord) {
        self.requests = self.requests.saturating_add(record.requests);
        self.input_tokens = self.input_tokens.saturating_add(record.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(record.output_tokens);
        self.cache_read_tokens = self.cache_read_tokens.saturating_add(record.cache_read_tokens);
        self.cache_creation_tokens = self.cache_creation_tokens.saturating_add(record.cache_creation_tokens);
        self.errors = self.errors.saturating_add(record.errors);
        self.last_used_at = self.last_used_at.max(record.last_used_at);
    }
}

/// Usage buckets as column arrays, for one `UNNEST` upsert.
#[derive(Debug, Default)]
struct UsageColumns<'a> {
    account: Vec<&'a str>,
    key_id: Vec<&'a str>,
    model: Vec<&'a str>,
    hour: Vec<DateTime<Utc>>,
    requests: Vec<i64>,
    input_tokens: Vec<i64>,
    output_tokens: Vec<i64>,
    cache_read_tokens: Vec<i64>,
    cache_creation_tokens: Vec<i64>,
    errors: Vec<i64>,
    last_used_at: Vec<DateTime<Utc>>,
}

impl<'a> UsageColumns<'a> {
    fn push(&mut self, account: &'a str, key_id: &'a str, model: &'a str, hour: DateTime<Utc>, c: &Counters) {
        self.account.push(account);
        self.key_id.push(key_id);
        self.model.push(model);
        self.hour.push(hour);
        self.requests.push(to_i64(c.requests));
        self.input_tokens.push(to_i64(c.input_tokens));
        self.output_tokens.push(to_i64(c.output_tokens));
        self.cache_read_tokens.push(to_i64(c.cache_read_tokens));
        self.cache_creation_tokens.push(to_i64(c.cache_creation_tokens));
        self.errors.push(to_i64(c.errors));
        self.last_used_at.push(ts(c.last_used_at));
    }
}

/// Records one change in the feed and announces it, inside the writer's transaction.
///
/// The transaction advisory lock (held until commit) makes every writer draw its `seq` and
/// commit one after another, so `seq` order is commit order: a subscriber that has read up to
/// `seq` N can never later see a change below N commit. Writes of changes are rare (credential
/// rotations, settings, keys), and the lock is taken last, so it is held only for the commit.
async fn insert_change(
    tx: &mut PgConnection,
    account: Option<&str>,
    kind: ChangeKind,
    version: Option<i64>,
) -> Result<(), StoreError> {
    let action = || format!("record a `{}` change of {}", kind.as_str(), account.unwrap_or("the API keys"));
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(advisory_key(crate::FEED_LOCK))
        .execute(&mut *tx)
        .await
        .map_err(db(action()))?;
    let seq: i64 = sqlx::query_scalar(
        "WITH c AS (INSERT INTO changes (account, kind, version) VALUES ($1, $2, $3) RETURNING seq) \
         SELECT seq, pg_notify($4, seq::text) FROM c",
    )
    .bind(account)
    .bind(kind.as_str())
    .bind(version)
    .bind(CHANNEL)
    .fetch_one(&mut *tx)
    .await
    .map_err(db(action()))?;
    if seq % PRUNE_EVERY == 0 {
        sqlx::query("DELETE FROM changes WHERE seq <= $1")
            .bind(seq - CHANGES_KEPT)
            .execute(&mut *tx)
            .await
            .map_err(db("prune old changes"))?;
    }
    Ok(())
}

async fn insert_event(
    conn: &mut PgConnection,
    account: &str,
    kind: EventKind,
    at: DateTime<Utc>,
    detail: &str,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO events (account, kind, at, detail) VALUES ($1, $2, $3, $4)")
        .bind(account)
        .bind(kind.as_str())
        .bind(ts(at))
        .bind(detail)
        .execute(conn)
        .await
        .map_err(db(format!("record a `{}` event for `{account}`", kind.as_str())))?;
    Ok(())
}

fn api_key_from_row(row: &PgRow) -> Result<ApiKey, StoreError> {
    let id: String = column(row, "api_keys", "id")?;
    let Json(scopes): Json<Vec<String>> = column(row, &id, "scopes")?;
    let Json(accounts): Json<Vec<String>> = column(row, &id, "accounts")?;
    Ok(ApiKey {
        name: column(row, &id, "name")?,
        hash: column(row, &id, "hash")?,
        scopes,
        accounts,
        created_at: column(row, &id, "created_at")?,
        revoked_at: column(row, &id, "revoked_at")?,
        id,
    })
}

/// Reads one column, reporting a type mismatch as a corrupt row of `owner`.
pub(crate) fn column<'r, T>(row: &'r PgRow, owner: &str, name: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(name).map_err(|e| corrupt(owner, format!("column `{name}`: {e}")))
}

pub(crate) fn corrupt(owner: &str, reason: String) -> StoreError {
    StoreError::Corrupt { account: owner.to_owned(), reason }
}

/// The row disappeared inside our own transaction: only a broken database does that.
fn vanished(name: &str) -> StoreError {
    corrupt(name, "the row written in this transaction cannot be read back".to_owned())
}

pub(crate) fn db(action: impl Into<String>) -> impl FnOnce(sqlx::Error) -> StoreError {
    let action = action.into();
    move |source| StoreError::Database { action, source: Box::new(source) }
}

/// `at` cut to whole milliseconds, as the SQLite store keeps times, so both backends hand back
/// the same instants.
fn ts(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or(at)
}

/// A counter as PostgreSQL's `bigint`; beyond 2⁶³ it saturates (no real counter gets there).
fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
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
