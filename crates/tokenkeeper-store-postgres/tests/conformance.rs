//! The store conformance suite (`tokenkeeper_store::store_conformance!`) on PostgreSQL: every
//! test gets a fresh database in this binary's throwaway cluster.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sqlx::postgres::PgConnectOptions;
use tokenkeeper_core::Backend;
use tokenkeeper_crypto::EncryptionKey;
use tokenkeeper_store::testing::Installation;
use tokenkeeper_store_postgres::testing::Cluster;

/// One database and the installation key every "replica" opening it gets.
struct Postgres {
    options: PgConnectOptions,
    key: String,
}

#[async_trait::async_trait]
impl Installation for Postgres {
    async fn open(&self) -> Backend {
        let key = EncryptionKey::from_base64(&self.key).unwrap();
        tokenkeeper_store_postgres::backend_with(self.options.clone(), key).await.unwrap()
    }

    async fn raw(&self) -> Vec<u8> {
        // Every row of every table of the schema, as text: what a reader of the database sees.
        use sqlx::Connection;
        let mut admin = sqlx::postgres::PgConnection::connect_with(&self.options).await.unwrap();
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema()",
        )
        .fetch_all(&mut admin)
        .await
        .unwrap();
        let mut all = Vec::new();
        for table in tables {
            let rows: Option<String> =
                sqlx::query_scalar(&format!("SELECT string_agg(t::text, ' ') FROM \"{table}\" t"))
                    .fetch_one(&mut admin)
                    .await
                    .unwrap();
            all.extend(rows.unwrap_or_default().into_bytes());
            all.push(b'\n');
        }
        all
    }
}

async fn fresh() -> Postgres {
    let options = Cluster::get().create_database().await;
    Postgres { options, key: EncryptionKey::generate().to_base64().to_string() }
}

tokenkeeper_store::store_conformance!(fresh);
