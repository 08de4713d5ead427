//! What the database holds: no token in clear anywhere, nothing that opens with another key;
//! migrations applied once, by `PgStore::migrate` or on open, and a newer schema refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sqlx::postgres::PgConnection;
use sqlx::Connection;
use tokenkeeper_core::store::{CredentialChange, Store, StoreError};
use tokenkeeper_crypto::EncryptionKey;
use tokenkeeper_store::testing::{at, credential, new_account};
use tokenkeeper_store_postgres::testing::Cluster;
use tokenkeeper_store_postgres::PgStore;

const ACCESS: &str = "sk-ant-oat01-SECRETaccessVALUE";
const REFRESH: &str = "sk-ant-ort01-SECRETrefreshVALUE";

#[tokio::test]
async fn the_database_alone_reveals_no_token() {
    let options = Cluster::get().create_database().await;
    let key = EncryptionKey::generate();
    let copy = key.to_base64();
    let store = PgStore::connect(options.clone(), key).await.unwrap();
    let mut new = new_account("main", credential(ACCESS, Some(REFRESH), 100));
    new.email = Some("main@example.com".into());
    store.create_account(&new, at(0), CredentialChange::Imported).await.unwrap();
    let mut admin = PgConnection::connect_with(&options).await.unwrap();
    // Every row of every table, as text.
    let dump: Vec<String> = sqlx::query_scalar(
        "SELECT string_agg(t::text, ' ') FROM accounts t UNION ALL SELECT string_agg(t::text, ' ') FROM events t \
         UNION ALL SELECT string_agg(t::text, ' ') FROM changes t",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap()
    .into_iter()
    .map(|s: Option<String>| s.unwrap_or_default())
    .collect();
    let dump = dump.join("\n");
    assert!(dump.contains("main@example.com"), "the clear columns are there: {dump}");
    for secret in ["SECRETaccessVALUE", "SECRETrefreshVALUE"] {
        assert!(!dump.contains(secret), "a token in the database: {dump}");
    }
    // Same database, same key (another replica): readable. Another key: a clear error.
    let same = PgStore::connect(options.clone(), EncryptionKey::from_base64(&copy).unwrap()).await.unwrap();
    assert_eq!(same.get_account("main").await.unwrap().unwrap().credential.access_token.expose(), ACCESS);
    let other = PgStore::connect(options, EncryptionKey::generate()).await.unwrap();
    match other.get_account("main").await {
        Err(e @ StoreError::Decrypt { .. }) => assert!(e.to_string().contains("TOKENKEEPER_KEY"), "{e}"),
        other => panic!("another key must fail to decrypt, got {other:?}"),
    }
    assert!(!format!("{store:?}").contains("SECRET"));
}

#[tokio::test]
async fn migrate_applies_the_schema_once_and_open_finds_it_current() {
    let options = Cluster::get().create_database().await;
    let url = Cluster::get().url(options.get_database().unwrap());
    PgStore::migrate(&url).await.unwrap();
    PgStore::migrate(&url).await.unwrap();
    let store = PgStore::open(&url, EncryptionKey::generate()).await.unwrap();
    assert!(store.list_accounts().await.unwrap().is_empty());
    let mut admin = PgConnection::connect_with(&options).await.unwrap();
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&mut admin)
        .await
        .unwrap();
    assert_eq!(applied, [1, 2]);
    // A newer tokenkeeper migrated this database: this one says so instead of guessing.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99, 'from the future', true, '\\x00', 0)",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    let err = PgStore::open(&url, EncryptionKey::generate()).await.unwrap_err();
    assert!(err.to_string().contains("newer"), "{err}");
}

#[tokio::test]
async fn an_unreachable_database_is_a_clear_error_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("postgres://keeper:hunter2@localhost/none?host={}", dir.path().display());
    let err = PgStore::open(&url, EncryptionKey::generate()).await.unwrap_err();
    let shown = format!("{err} / {err:?}");
    assert!(shown.contains("TOKENKEEPER_STORE_URL"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[tokio::test]
async fn a_database_of_the_previous_release_is_migrated_and_keeps_its_accounts() {
    let options = Cluster::get().create_database().await;
    let key = EncryptionKey::generate();
    let copy = key.to_base64();
    let store = PgStore::connect(options.clone(), key).await.unwrap();
    store
        .create_account(&new_account("main", credential(ACCESS, Some(REFRESH), 100)), at(0), CredentialChange::Imported)
        .await
        .unwrap();
    // Back to the schema the previous release left (migration 1 only, same checksums).
    let mut admin = PgConnection::connect_with(&options).await.unwrap();
    sqlx::query("DROP TABLE web_sessions").execute(&mut admin).await.unwrap();
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version >= 2").execute(&mut admin).await.unwrap();
    let upgraded = PgStore::connect(options, EncryptionKey::from_base64(&copy).unwrap()).await.unwrap();
    let main = upgraded.get_account("main").await.unwrap().unwrap();
    assert_eq!(main.credential.access_token.expose(), ACCESS);
    assert_eq!(main.version, 1);
    let session = tokenkeeper_core::store::WebSession {
        hash: "ab".into(),
        csrf: "c".into(),
        created_at: at(0),
        expires_at: at(60),
        flash: None,
    };
    upgraded.create_session(&session).await.unwrap();
    assert_eq!(upgraded.session("ab", at(1)).await.unwrap(), Some(session));
}
