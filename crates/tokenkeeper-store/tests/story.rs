//! The conformance story against SQLite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use tokenkeeper_store::{testing, EncryptionKey, SqliteStore};

#[tokio::test]
async fn sqlite_passes_the_store_story() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), EncryptionKey::generate()).await.unwrap();
    testing::story(&store).await;
}

#[tokio::test]
async fn sqlite_passes_the_story_behind_a_trait_object() {
    let dir = tempfile::tempdir().unwrap();
    let store: std::sync::Arc<dyn tokenkeeper_core::Store> =
        std::sync::Arc::new(SqliteStore::open(dir.path(), EncryptionKey::generate()).await.unwrap());
    testing::story(store.as_ref()).await;
}
