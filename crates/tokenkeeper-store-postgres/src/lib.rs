//! The PostgreSQL backend of tokenkeeper: several replicas (hosts, pods) share one
//! installation through one database.
//!
//! [`open_backend`] gives the keeper and the daemon everything they need, as a
//! [`tokenkeeper_core::Backend`]:
//!
//! | seam | here | across replicas |
//! |---|---|---|
//! | [`Store`](tokenkeeper_core::Store) | [`PgStore`] | tables of one database; every credential update a compare-and-set under a row lock |
//! | [`AccountLock`](tokenkeeper_core::AccountLock) | [`PgAccountLock`] | a session advisory lock per account, on a dedicated connection |
//! | [`ChangeFeed`](tokenkeeper_core::ChangeFeed) | [`PgChangeFeed`] | `changes` rows + `NOTIFY` in the writing transaction, `LISTEN` on every replica |
//! | [`Leadership`](tokenkeeper_core::Leadership) | [`PgLeadership`] | the session advisory lock `tokenkeeper/leader`, on a dedicated connection, pinged every second |
//!
//! ```no_run
//! # async fn demo(key: tokenkeeper_crypto::EncryptionKey) -> Result<(), tokenkeeper_core::StoreError> {
//! let url = std::env::var("TOKENKEEPER_STORE_URL").unwrap_or_default(); // postgres://…
//! let backend = tokenkeeper_store_postgres::open_backend(&url, key).await?;
//! # let _ = backend; Ok(()) }
//! ```
//!
//! # Keys, locks and what the database sees
//!
//! Tokens are sealed with the installation key ([`tokenkeeper_crypto`]) before they reach the
//! database, exactly as the SQLite store seals them: the database alone reveals no token, and
//! every replica needs the same key (`TOKENKEEPER_KEY` or the key file).
//!
//! Advisory locks share one 64-bit key space per database with anything else that uses them, so
//! tokenkeeper derives its keys from names: [`advisory_key`]`(name)` is the first 8 bytes of
//! SHA-256 of the name, read as a big-endian `i64`. The names are `tokenkeeper/account/<name>`
//! (the lock of one account, [`account_lock_key`]), `tokenkeeper/changes` (held for the commit
//! of each change, which puts `changes.seq` in commit order), `tokenkeeper/migrate` (held
//! while migrating) and `tokenkeeper/leader` (held by the leading replica, [`LEADER_LOCK`]).
//!
//! Advisory locks and `LISTEN` live in a database session: connect tokenkeeper to PostgreSQL
//! directly or through a pooler in *session* mode, never a transaction-mode pooler.
//!
//! # Schema (`migrations/postgres/`)
//!
//! `accounts`, `events`, `api_keys` as in SQLite (times as `timestamptz`, lists as `jsonb`);
//! `usage` (hourly buckets), `refresh_attempts` (the shared budget, last hour only), `state`
//! (installation-wide JSON values) and `changes` (the feed; a day of it).

mod copy;
mod feed;
mod inspect;
mod leader;
mod lock;
mod migrate;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

use std::str::FromStr;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use sqlx::postgres::PgConnectOptions;
use tokenkeeper_core::{Backend, StoreError};
use tokenkeeper_crypto::EncryptionKey;

pub use copy::{CopyError, CopyReport};
pub use feed::{PgChangeFeed, PgSubscription, CHANNEL};
pub use inspect::{
    binary_schema_version, decrypt_all, describe_url, inspect, ConnectProblem, Inspection, CONNECT_TIMEOUT,
};
pub use leader::{PgLeaderGuard, PgLeadership, LEADER_LOCK, PING_EVERY, PING_TIMEOUT};
pub use lock::{PgAccountGuard, PgAccountLock};
pub use sqlx::postgres::PgConnectOptions as ConnectOptions;
pub use store::PgStore;

/// The name of the transaction advisory lock that orders change commits.
pub(crate) const FEED_LOCK: &str = "tokenkeeper/changes";

/// Opens the backend at `url` (`postgres://…`): connects the [`PgStore`] (migrating the schema
/// if needed), and makes the [`PgAccountLock`] and [`PgChangeFeed`] that connect on their own
/// when used. This is all a binary needs to run on PostgreSQL.
pub async fn open_backend(url: &str, key: EncryptionKey) -> Result<Backend, StoreError> {
    backend_with(parse_url(url)?, key).await
}

/// [`open_backend`] with options built in code (a Unix socket directory, TLS settings).
pub async fn backend_with(options: PgConnectOptions, key: EncryptionKey) -> Result<Backend, StoreError> {
    let store = PgStore::connect(options.clone(), key).await?;
    Ok(Backend {
        store: Arc::new(store),
        lock: Arc::new(PgAccountLock::new(options.clone())),
        leader: Arc::new(PgLeadership::new(options.clone())),
        feed: Arc::new(PgChangeFeed::new(options)),
    })
}

/// Whether `url` names a PostgreSQL database (`postgres://` or `postgresql://`), i.e. whether
/// the binary should use this backend rather than SQLite.
pub fn is_postgres_url(url: &str) -> bool {
    let lower = url.trim_start().to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

/// Whether `url` carries a password (`user:password@`, or a `password=` parameter), which must
/// not sit in a config file or a command line. Never shows the URL.
pub fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or("", |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let in_userinfo = authority.rsplit_once('@').is_some_and(|(userinfo, _)| userinfo.contains(':'));
    let in_query = rest.split_once('?').is_some_and(|(_, q)| {
        q.split('&').any(|p| p.split('=').next().is_some_and(|k| k.eq_ignore_ascii_case("password")))
    });
    in_userinfo || in_query
}

/// The 64-bit advisory lock key of `name`: the first 8 bytes of SHA-256(`name`), big-endian.
/// Stable across versions and machines (every replica must compute the same key).
pub fn advisory_key(name: &str) -> i64 {
    let digest = Sha256::digest(name.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// The advisory lock key of an account's [`PgAccountLock`]: [`advisory_key`] of
/// `tokenkeeper/account/<account>`.
pub fn account_lock_key(account: &str) -> i64 {
    advisory_key(&format!("tokenkeeper/account/{account}"))
}

/// Parses a store URL. The error never quotes the URL, which may hold a password.
pub(crate) fn parse_url(url: &str) -> Result<PgConnectOptions, StoreError> {
    if !is_postgres_url(url) {
        return Err(StoreError::Database {
            action: "use the store URL: it must start with postgres:// or postgresql:// (the URL is not shown: it \
                     may hold a password)"
                .to_owned(),
            source: "not a PostgreSQL URL".into(),
        });
    }
    PgConnectOptions::from_str(url).map_err(|e| StoreError::Database {
        action: "parse the store URL postgres://user:password@host:port/database (the URL is not shown: it may \
                 hold a password)"
            .to_owned(),
        source: Box::new(e),
    })
}

/// Where `options` point, in words, without the password: for messages and `Debug`.
pub(crate) fn describe(options: &PgConnectOptions) -> String {
    let database = options.get_database().unwrap_or(options.get_username());
    let place = match options.get_socket() {
        Some(dir) => format!("socket {}", dir.display()),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    };
    format!("PostgreSQL database `{database}` as `{}` at {place}", options.get_username())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_found_in_the_userinfo_and_the_query() {
        assert!(url_has_password("postgres://keeper:hunter2@db/tk"));
        assert!(url_has_password("postgresql://keeper:@db:5432/tk?sslmode=require"));
        assert!(url_has_password("postgres://keeper@db/tk?sslmode=require&password=hunter2"));
        assert!(!url_has_password("postgres://keeper@db:5432/tk?sslmode=verify-full"));
        assert!(!url_has_password("postgres:///tk?host=/run/postgresql"));
        assert!(!url_has_password("postgres://db/tk?user=a:b"), "a colon in a parameter is not a password");
    }

    #[test]
    fn advisory_keys_are_stable_and_distinct() {
        // Pinned: every replica, of every version, must derive the same key.
        let main = account_lock_key("main");
        assert_eq!(main, advisory_key("tokenkeeper/account/main"));
        assert_eq!(main, i64::from_be_bytes(Sha256::digest(b"tokenkeeper/account/main")[..8].try_into().unwrap()));
        assert_ne!(main, account_lock_key("main2"));
        assert_ne!(advisory_key(FEED_LOCK), advisory_key(migrate::MIGRATE_LOCK));
        assert_ne!(advisory_key(LEADER_LOCK), advisory_key(FEED_LOCK));
    }

    #[test]
    fn a_bad_url_never_shows_its_password() {
        for url in ["postgres://user:hunter2@host:notaport/db", "mysql://user:hunter2@host/db", "hunter2"] {
            let err = parse_url(url).unwrap_err();
            let shown = format!("{err} {err:?} {}", std::error::Error::source(&err).map(|s| s.to_string()).unwrap());
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("postgres://"), "the message says what is expected: {shown}");
        }
    }

    #[test]
    fn descriptions_say_where_but_not_the_password() {
        let options = parse_url("postgres://keeper:hunter2@db.example:6543/tk").unwrap();
        let shown = describe(&options);
        assert_eq!(shown, "PostgreSQL database `tk` as `keeper` at db.example:6543");
        let socket = parse_url("postgresql:///tk?host=/run/postgresql&user=keeper").unwrap();
        assert!(describe(&socket).contains("socket /run/postgresql"), "{}", describe(&socket));
    }
}
