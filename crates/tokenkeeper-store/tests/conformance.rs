//! The store conformance suite (`store_conformance!`) on SQLite: every test gets a fresh data
//! directory; each "process" opens its own `SqliteStore`, flock lock and change feed on it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use tokenkeeper_core::Backend;
use tokenkeeper_store::lock::{FlockAccountLock, FlockLeadership};
use tokenkeeper_store::testing::Installation;
use tokenkeeper_store::{EncryptionKey, SqliteStore};

/// A data directory and the key every process opening it gets.
struct Sqlite {
    dir: tempfile::TempDir,
    key: String,
}

#[async_trait::async_trait]
impl Installation for Sqlite {
    async fn open(&self) -> Backend {
        let data = self.dir.path().join("data");
        let store = Arc::new(SqliteStore::open(&data, EncryptionKey::from_base64(&self.key).unwrap()).await.unwrap());
        Backend {
            feed: Arc::new(store.change_feed()),
            lock: Arc::new(FlockAccountLock::new(data.join("locks"))),
            leader: Arc::new(FlockLeadership::new(data.clone())),
            store,
        }
    }

    async fn raw(&self) -> Vec<u8> {
        // The database, its WAL and its shared-memory file: every byte SQLite keeps.
        let data = self.dir.path().join("data");
        let mut all = Vec::new();
        for entry in std::fs::read_dir(&data).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                all.extend(std::fs::read(&path).unwrap());
            }
        }
        all
    }
}

async fn fresh() -> Sqlite {
    Sqlite { dir: tempfile::tempdir().unwrap(), key: EncryptionKey::generate().to_base64().to_string() }
}

tokenkeeper_store::store_conformance!(fresh);
