//! `tokenkeeper migrate`: applies the store's pending migrations as a step of its own (before
//! starting a new version of every replica, or with a more privileged role) and prints the
//! schema version. Every command migrates on open too; this only makes it explicit.

use anyhow::{Context, Result};

use crate::app::{data_dir, load_config, store_url};
use crate::cli::GlobalArgs;
use crate::exit;

pub async fn run(global: &GlobalArgs) -> Result<i32> {
    let config = load_config(global)?;
    match store_url(&config)? {
        Some((url, origin)) if tokenkeeper_store_postgres::is_postgres_url(&url) => {
            let version = tokenkeeper_store_postgres::PgStore::migrate(&url)
                .await
                .with_context(|| format!("cannot migrate the PostgreSQL store named by {origin}"))?;
            println!("PostgreSQL store ({origin}): schema version {version}, up to date");
        }
        Some((_, origin)) => anyhow::bail!("{origin} must be a postgres:// or postgresql:// URL"),
        None => {
            let dir = data_dir(global)?;
            let key = tokenkeeper_store::EncryptionKey::load_or_create(
                std::env::var("TOKENKEEPER_KEY").ok().filter(|k| !k.is_empty()).as_deref(),
                &dir,
            )?;
            tokenkeeper_store::SqliteStore::open(&dir, key)
                .await
                .with_context(|| format!("cannot migrate the store in {}", dir.display()))?;
            println!("SQLite store in {}: up to date", dir.display());
        }
    }
    Ok(exit::OK)
}
