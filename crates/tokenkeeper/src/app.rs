//! Opening what every command needs: configuration, data directory, store, keeper.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};

use tokenkeeper_core::{paths, system_clock_handle, Config, Store};
use tokenkeeper_keeper::Keeper;
use tokenkeeper_store::EncryptionKey;

use crate::cli::GlobalArgs;

/// Names a PostgreSQL database shared by replicas (`postgres://…`); wins over `[store] url` and
/// `[store] url_file`. With none of them, the embedded SQLite store in the data directory is used.
pub const STORE_URL_ENV: &str = "TOKENKEEPER_STORE_URL";

/// The store URL in force and where it came from (for messages: the URL itself is never shown,
/// it may hold a password): the environment, then `[store] url_file`, then `[store] url`.
pub fn store_url(config: &Config) -> Result<Option<(String, String)>> {
    if let Some(url) = env(STORE_URL_ENV) {
        return Ok(Some((url, STORE_URL_ENV.to_owned())));
    }
    if let Some(file) = &config.store.url_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read [store] url_file {}", file.display()))?;
        let url = text.trim().to_owned();
        anyhow::ensure!(!url.is_empty(), "[store] url_file {} is empty", file.display());
        return Ok(Some((url, format!("[store] url_file {}", file.display()))));
    }
    Ok(config.store.url.clone().map(|u| (u, "[store] url".to_owned())))
}

/// Everything a command needs.
pub struct App {
    /// Configuration.
    pub config: Arc<Config>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// The store (also reachable as `keeper.store()`).
    pub store: Arc<dyn Store>,
    /// The keeper over the same backend as `store`, with `config` and the system clock.
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
        let backend = match store_url(&config)? {
            // Replicas share PostgreSQL; the URL stays out of every message (it may hold a password).
            Some((url, origin)) if tokenkeeper_store_postgres::is_postgres_url(&url) => {
                tokenkeeper_store_postgres::open_backend(&url, key).await.with_context(|| {
                    format!("cannot open the PostgreSQL store named by {origin}; check the URL, the role and that the server is reachable")
                })?
            }
            Some((_, origin)) => anyhow::bail!(
                "{origin} must be a postgres:// or postgresql:// URL; remove it to use the embedded store in the data directory"
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
