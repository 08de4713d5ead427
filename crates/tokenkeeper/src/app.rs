//! Opening what every command needs: configuration, data directory, store, keeper.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};

use tokenkeeper_core::{paths, system_clock_handle, Config, Store};
use tokenkeeper_keeper::Keeper;
use tokenkeeper_store::EncryptionKey;

use crate::cli::GlobalArgs;

/// Names a PostgreSQL database shared by replicas (`postgres://…`); unset, the embedded
/// SQLite store in the data directory is used. An environment variable, not a config key, so
/// a password in it never lands in a config file.
pub const STORE_URL_ENV: &str = "TOKENKEEPER_STORE_URL";

/// Everything a command needs.
pub struct App {
    /// Configuration.
    pub config: Arc<Config>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// The store (also reachable as `keeper.store()`).
    pub store: Arc<dyn Store>,
    /// The keeper.
    pub keeper: Arc<Keeper>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Loads the configuration only (for commands that need no store).
pub fn load_config(global: &GlobalArgs) -> Result<Config> {
    let default = paths::default_config_path();
    Ok(Config::load(global.config.as_deref(), default.as_deref(), &env)?)
}

/// The data directory in force.
pub fn data_dir(global: &GlobalArgs) -> Result<PathBuf> {
    match &global.data_dir {
        Some(d) => Ok(d.clone()),
        None => paths::default_data_dir().context(
            "cannot find a home directory for the default data directory; pass --data-dir or set TOKENKEEPER_DATA_DIR",
        ),
    }
}

impl App {
    /// Opens config, store and keeper.
    pub async fn open(global: &GlobalArgs) -> Result<App> {
        let config = Arc::new(load_config(global)?);
        let data_dir = data_dir(global)?;
        let key = EncryptionKey::load_or_create(env("TOKENKEEPER_KEY").as_deref(), &data_dir)?;
        let backend = match env(STORE_URL_ENV) {
            // Replicas share PostgreSQL; the URL stays out of every message (it may hold a password).
            Some(url) if tokenkeeper_store_postgres::is_postgres_url(&url) => {
                tokenkeeper_store_postgres::open_backend(&url, key).await.with_context(|| {
                    format!("cannot open the PostgreSQL store named by {STORE_URL_ENV}; check the URL, the role and that the server is reachable")
                })?
            }
            Some(_) => anyhow::bail!(
                "{STORE_URL_ENV} must be a postgres:// or postgresql:// URL; unset it to use the embedded store in the data directory"
            ),
            None => tokenkeeper_store::open_backend(&data_dir, key)
                .await
                .with_context(|| format!("cannot open the store in {}", data_dir.display()))?,
        };
        let store = backend.store.clone();
        let keeper = Arc::new(Keeper::new(backend, config.clone(), &data_dir, system_clock_handle())?);
        Ok(App { config, data_dir, store, keeper })
    }
}
