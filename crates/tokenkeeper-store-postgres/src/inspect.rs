//! What `tokenkeeper doctor` asks of a PostgreSQL store, without changing it: can it be reached
//! (and if not, why, in words that name the next step), which schema version it is at against
//! this binary's, whether the installation key opens its credentials, and which replica leads.
//! Unlike [`PgStore::open`](crate::PgStore::open), nothing here migrates.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection};
use tokenkeeper_core::{Account, Store, StoreError};
use tokenkeeper_crypto::EncryptionKey;

use crate::migrate::MIGRATIONS;
use crate::store::PgStore;
use crate::{advisory_key, describe, parse_url, LEADER_LOCK};

/// How long doctor waits for the server before calling it unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The schema version this binary's migrations bring a database to.
pub fn binary_schema_version() -> i64 {
    MIGRATIONS.last().map_or(0, |&(version, _, _)| version)
}

/// Why a connection failed, sorted by what the operator does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectProblem {
    /// The URL does not parse (never quoted: it may hold a password).
    BadUrl,
    /// Nothing answers at the address, or it did not answer in time.
    Unreachable,
    /// The server refused the role or its password.
    AuthRefused,
    /// The server has no database of that name.
    NoDatabase,
    /// Anything else, with the server's or driver's words (which never include the password).
    Other(String),
}

/// Where the URL points, in words, without the password (`PostgreSQL database `tk` as `keeper`
/// at db:5432`); `None` when it does not parse.
pub fn describe_url(url: &str) -> Option<String> {
    parse_url(url).ok().map(|o| describe(&o))
}

/// One connection to the database of `url`, classified on failure.
async fn connect(options: &PgConnectOptions) -> Result<PgConnection, ConnectProblem> {
    let options = options.clone().application_name("tokenkeeper doctor");
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await {
        Err(_) => Err(ConnectProblem::Unreachable),
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(classify(&e)),
    }
}

fn classify(e: &sqlx::Error) -> ConnectProblem {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => ConnectProblem::Unreachable,
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // invalid_password, invalid_authorization_specification
            Some("28P01" | "28000") => ConnectProblem::AuthRefused,
            // invalid_catalog_name
            Some("3D000") => ConnectProblem::NoDatabase,
            _ => ConnectProblem::Other(db.message().to_owned()),
        },
        other => ConnectProblem::Other(other.to_string()),
    }
}

/// What doctor learned from a reachable database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// Where it is, without the password.
    pub target: String,
    /// The highest migration applied successfully (0: none, an empty database).
    pub schema_version: i64,
    /// The replica holding the leader lock, by the name it gave (`None`: no replica leads, or
    /// this role may not see the other sessions).
    pub leader: Option<String>,
}

/// Connects to `url` and reads the schema version and the leader, changing nothing.
pub async fn inspect(url: &str) -> Result<Inspection, ConnectProblem> {
    let options = parse_url(url).map_err(|_| ConnectProblem::BadUrl)?;
    let target = describe(&options);
    let mut conn = connect(&options).await?;
    let other = |e: sqlx::Error| ConnectProblem::Other(e.to_string());
    let has_table: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut conn)
        .await
        .map_err(other)?;
    let schema_version = if has_table {
        sqlx::query_scalar::<_, Option<i64>>("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(&mut conn)
            .await
            .map_err(other)?
            .unwrap_or(0)
    } else {
        0
    };
    // A bigint advisory lock shows in pg_locks as classid (high 32 bits), objid (low), objsubid 1.
    let key = advisory_key(LEADER_LOCK);
    let leader: Option<String> = sqlx::query_scalar(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
         AND l.classid::bigint = $1 AND l.objid::bigint = $2 LIMIT 1",
    )
    .bind((key >> 32) & 0xffff_ffff)
    .bind(key & 0xffff_ffff)
    .fetch_optional(&mut conn)
    .await
    .map_err(other)?;
    conn.close().await.ok();
    let leader = leader.map(|name| name.strip_prefix("tokenkeeper leader: ").unwrap_or(&name).to_owned());
    Ok(Inspection { target, schema_version, leader })
}

/// Opens every account of the store at `url` with `key` (the schema must be current): the
/// accounts on success, the store's error (naming the account) on the first that does not
/// decrypt.
pub async fn decrypt_all(url: &str, key: EncryptionKey) -> Result<Vec<Account>, StoreError> {
    let options = parse_url(url)?;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_with(options.clone().application_name("tokenkeeper doctor"))
        .await
        .map_err(crate::store::db(format!("connect to {}", describe(&options))))?;
    let store = PgStore::unmigrated(pool, key, describe(&options));
    let accounts = store.list_accounts().await;
    store.close().await;
    accounts
}
