//! Moving an installation from its embedded SQLite store to PostgreSQL
//! ([`PgStore::copy_from_sqlite`], behind `tokenkeeper store copy`).
//!
//! The two schemas hold the same tables column for column (SQLite keeps times as epoch
//! milliseconds and lists as JSON text; PostgreSQL as `timestamptz` and `jsonb`), and tokens are
//! sealed the same way under the same installation key with the account name as associated data,
//! so the sealed secrets are copied as they are: no token is ever decrypted for the copy itself,
//! only to verify it. Every table the source has is copied (accounts with their versions, events
//! with their ids, API keys with revoked ones, usage, refresh attempts, installation state such
//! as alert state and cooldowns, web sessions), in one transaction; `changes`, the feed's recent
//! history, is not (replicas start from the new database's feed).
//!
//! The source is opened read-only, in one read transaction (a consistent snapshot), and never
//! migrated; the target must be empty.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteRow};
use sqlx::types::Json;
use sqlx::{Connection, Row, SqliteConnection};
use tokenkeeper_core::{Store, StoreError};

use crate::advisory_key;
use crate::store::{db, PgStore};

/// The advisory lock held (for the copying transaction) so two copies into one database queue.
const COPY_LOCK: &str = "tokenkeeper/copy";

/// How a column is kept in SQLite, and so how it is read and bound for PostgreSQL.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Text,
    OptText,
    Int,
    /// Epoch milliseconds in SQLite, `timestamptz` in PostgreSQL.
    Time,
    OptTime,
    /// JSON text in SQLite, `jsonb` in PostgreSQL.
    Json,
}

use Kind::{Int, Json as J, OptText, OptTime, Text, Time};

/// One table to copy: its name, its columns, and whether its identity column is copied too
/// (`events.id`: the history keeps its order and numbers).
struct Table {
    name: &'static str,
    columns: &'static [(&'static str, Kind)],
    identity: bool,
}

/// Every table copied, in an order that satisfies any reference between them.
const TABLES: &[Table] = &[
    Table {
        name: "accounts",
        columns: &[
            ("name", Text),
            ("provider", Text),
            ("mode", Text),
            ("version", Int),
            ("secret", Text),
            ("expires_at", Time),
            ("scopes", J),
            ("subscription_type", OptText),
            ("rate_limit_tier", OptText),
            ("email", OptText),
            ("organization", OptText),
            ("binding_kind", OptText),
            ("binding_path", OptText),
            ("state", Text),
            ("created_at", Time),
            ("updated_at", Time),
            ("last_refreshed_at", OptTime),
            ("refresh_token_issued_at", OptTime),
            ("usage_requests", Int),
            ("last_used_at", OptTime),
            ("last_error", OptText),
        ],
        identity: false,
    },
    Table {
        name: "events",
        columns: &[("id", Int), ("account", Text), ("kind", Text), ("at", Time), ("detail", Text)],
        identity: true,
    },
    Table {
        name: "api_keys",
        columns: &[
            ("id", Text),
            ("name", Text),
            ("hash", Text),
            ("scopes", J),
            ("accounts", J),
            ("created_at", Time),
            ("revoked_at", OptTime),
        ],
        identity: false,
    },
    Table {
        name: "usage",
        columns: &[
            ("account", Text),
            ("key_id", Text),
            ("model", Text),
            ("hour", Time),
            ("requests", Int),
            ("input_tokens", Int),
            ("output_tokens", Int),
            ("cache_read_tokens", Int),
            ("cache_creation_tokens", Int),
            ("errors", Int),
            ("last_used_at", Time),
        ],
        identity: false,
    },
    Table { name: "refresh_attempts", columns: &[("account", Text), ("at", Time)], identity: false },
    Table { name: "state", columns: &[("key", Text), ("value", J), ("updated_at", Time)], identity: false },
    Table {
        name: "web_sessions",
        columns: &[("hash", Text), ("csrf", Text), ("created_at", Time), ("expires_at", Time), ("flash", OptText)],
        identity: false,
    },
];

/// What a copy did: rows per table (tables the source lacks, from an older release, are
/// absent), and how many accounts were read back and decrypted from the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// Rows copied per table, in copy order.
    pub tables: Vec<(&'static str, u64)>,
    /// Accounts whose credential the target decrypted to what the source holds.
    pub accounts_verified: usize,
}

/// Why a copy did not happen, or did not verify.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The target already holds an installation (or part of one).
    #[error(
        "{target} is not empty ({found}); copy into an empty database (create a new one, or drop and recreate this \
         one if its contents are not needed)"
    )]
    NotEmpty {
        /// Where, without credentials.
        target: String,
        /// What it holds, as `3 accounts, 1 api_keys`.
        found: String,
    },
    /// A credential of the source does not open with the key given.
    #[error(
        "the credential of `{account}` in the SQLite store does not open with this key: give the installation's \
         key (the data directory's key file, or TOKENKEEPER_KEY as the SQLite store's processes had it); nothing \
         was copied"
    )]
    WrongKey {
        /// The first account that failed.
        account: String,
    },
    /// After the copy, the target did not hold what the source does.
    #[error("the copy into {target} did not verify: {what}")]
    Verify {
        /// Where, without credentials.
        target: String,
        /// What differed.
        what: String,
    },
    /// Reading the source or writing the target failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A value read from SQLite, ready to bind for PostgreSQL.
enum Value {
    Text(Option<String>),
    Int(i64),
    Time(Option<DateTime<Utc>>),
    Json(serde_json::Value),
}

impl PgStore {
    /// Copies the SQLite database `sqlite_db` (`<data dir>/tokenkeeper.db`) into this store's
    /// database, which must be empty, then verifies it: the row count of every table, and
    /// every account read back through this store (decrypted with its key) equal to the
    /// source's, version included. Before anything is written, every source credential must
    /// open with this store's key, so a wrong key copies nothing.
    pub async fn copy_from_sqlite(&self, sqlite_db: &Path) -> Result<CopyReport, CopyError> {
        let shown = sqlite_db.display().to_string();
        let options = SqliteConnectOptions::new().filename(sqlite_db).read_only(true).create_if_missing(false);
        let mut source =
            SqliteConnection::connect_with(&options).await.map_err(db(format!("open the SQLite store {shown}")))?;
        let mut snapshot = source.begin().await.map_err(db(format!("read {shown}")))?;
        let present: Vec<String> = sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(&mut *snapshot)
            .await
            .map_err(db(format!("list the tables of {shown}")))?;

        let mut rows: Vec<(&Table, Vec<Vec<Value>>)> = Vec::new();
        for table in TABLES.iter().filter(|t| present.iter().any(|p| p == t.name)) {
            let names: Vec<&str> = table.columns.iter().map(|(c, _)| *c).collect();
            let read = sqlx::query(&format!("SELECT {} FROM {}", names.join(", "), table.name))
                .fetch_all(&mut *snapshot)
                .await
                .map_err(db(format!("read table {} of {shown}", table.name)))?;
            let values = read.iter().map(|row| values_of(table, row)).collect::<Result<Vec<_>, _>>()?;
            rows.push((table, values));
        }
        snapshot.rollback().await.map_err(db(format!("end reading {shown}")))?;
        drop(source);

        // Every credential must open with this key before anything is written.
        let mut expected = BTreeMap::new();
        if let Some((_, accounts)) = rows.iter().find(|(t, _)| t.name == "accounts") {
            for row in accounts {
                let (Some(Value::Text(Some(name))), Some(Value::Int(version)), Some(Value::Text(Some(secret)))) =
                    (row.first(), row.get(3), row.get(4))
                else {
                    return Err(
                        StoreError::Corrupt { account: "accounts".into(), reason: "unreadable row".into() }.into()
                    );
                };
                let (access, refresh) =
                    self.key.open(name, secret).map_err(|_| CopyError::WrongKey { account: name.clone() })?;
                expected.insert(name.clone(), (*version, access, refresh));
            }
        }

        let target = self.target().to_owned();
        let mut tx = self.pool.begin().await.map_err(db(format!("begin the copy into {target}")))?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(advisory_key(COPY_LOCK))
            .execute(&mut *tx)
            .await
            .map_err(db(format!("take the copy lock of {target}")))?;
        let mut found = Vec::new();
        for table in TABLES {
            let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}", table.name))
                .fetch_one(&mut *tx)
                .await
                .map_err(db(format!("count the rows of {} in {target}", table.name)))?;
            if n > 0 {
                found.push(format!("{n} {}", table.name));
            }
        }
        if !found.is_empty() {
            return Err(CopyError::NotEmpty { target, found: found.join(", ") });
        }
        let mut report = CopyReport { tables: Vec::new(), accounts_verified: 0 };
        for (table, values) in &rows {
            let names: Vec<&str> = table.columns.iter().map(|(c, _)| *c).collect();
            let params: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
            let overriding = if table.identity { " OVERRIDING SYSTEM VALUE" } else { "" };
            let sql =
                format!("INSERT INTO {} ({}){overriding} VALUES ({})", table.name, names.join(", "), params.join(", "));
            for row in values {
                let mut query = sqlx::query(&sql);
                for value in row {
                    query = match value {
                        Value::Text(v) => query.bind(v.clone()),
                        Value::Int(v) => query.bind(*v),
                        Value::Time(v) => query.bind(*v),
                        Value::Json(v) => query.bind(Json(v.clone())),
                    };
                }
                query.execute(&mut *tx).await.map_err(db(format!("copy a row of {} into {target}", table.name)))?;
            }
            if table.identity {
                // The next event continues after the copied ones.
                sqlx::query(&format!(
                    "SELECT setval(pg_get_serial_sequence('{0}', 'id'), coalesce(max(id), 0) + 1, false) FROM {0}",
                    table.name
                ))
                .execute(&mut *tx)
                .await
                .map_err(db(format!("continue the ids of {} in {target}", table.name)))?;
            }
            report.tables.push((table.name, values.len() as u64));
        }
        tx.commit().await.map_err(db(format!("commit the copy into {target}")))?;

        // Verify what was committed, as a replica will read it.
        for (name, copied) in &report.tables {
            let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {name}"))
                .fetch_one(&self.pool)
                .await
                .map_err(db(format!("count the rows of {name} in {target}")))?;
            if u64::try_from(n).ok() != Some(*copied) {
                return Err(CopyError::Verify { target, what: format!("{name} has {n} rows, the source {copied}") });
            }
        }
        for (name, (version, access, refresh)) in &expected {
            let account = self.get_account(name).await?;
            let same = account.as_ref().is_some_and(|a| {
                a.version == *version
                    && a.credential.access_token.expose() == access.expose()
                    && a.credential.refresh_token.as_ref().map(|s| s.expose()) == refresh.as_ref().map(|s| s.expose())
            });
            if !same {
                return Err(CopyError::Verify { target, what: format!("account `{name}` reads back differently") });
            }
            report.accounts_verified += 1;
        }
        Ok(report)
    }
}

/// The values of one SQLite row of `table`, converted for PostgreSQL.
fn values_of(table: &Table, row: &SqliteRow) -> Result<Vec<Value>, StoreError> {
    let bad = |column: &str, reason: String| StoreError::Corrupt {
        account: table.name.to_owned(),
        reason: format!("column `{column}`: {reason}"),
    };
    table
        .columns
        .iter()
        .map(|&(column, kind)| {
            let text =
                |row: &SqliteRow| row.try_get::<Option<String>, _>(column).map_err(|e| bad(column, e.to_string()));
            let millis =
                |row: &SqliteRow| row.try_get::<Option<i64>, _>(column).map_err(|e| bad(column, e.to_string()));
            let time = |ms: Option<i64>| -> Result<Option<DateTime<Utc>>, StoreError> {
                ms.map(|ms| DateTime::from_timestamp_millis(ms).ok_or_else(|| bad(column, format!("time {ms}"))))
                    .transpose()
            };
            Ok(match kind {
                Text | OptText => {
                    let v = text(row)?;
                    if matches!(kind, Text) && v.is_none() {
                        return Err(bad(column, "NULL in a required column".into()));
                    }
                    Value::Text(v)
                }
                Int => Value::Int(millis(row)?.ok_or_else(|| bad(column, "NULL in a required column".into()))?),
                Time | OptTime => {
                    let v = time(millis(row)?)?;
                    if matches!(kind, Time) && v.is_none() {
                        return Err(bad(column, "NULL in a required column".into()));
                    }
                    Value::Time(v)
                }
                J => {
                    let v = text(row)?.ok_or_else(|| bad(column, "NULL in a required column".into()))?;
                    Value::Json(serde_json::from_str(&v).map_err(|e| bad(column, e.to_string()))?)
                }
            })
        })
        .collect()
}
