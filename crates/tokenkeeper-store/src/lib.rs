//! The durable store of tokenkeeper: implementations of [`tokenkeeper_core::Store`], with the
//! tokens encrypted at rest.
//!
//! # Using it
//!
//! ```no_run
//! # async fn demo(data_dir: std::path::PathBuf) -> Result<(), tokenkeeper_core::StoreError> {
//! use std::sync::Arc;
//! use tokenkeeper_core::Store;
//! use tokenkeeper_store::{EncryptionKey, SqliteStore};
//!
//! let key = EncryptionKey::load_or_create(std::env::var("TOKENKEEPER_KEY").ok().as_deref(), &data_dir)?;
//! let store = SqliteStore::open(&data_dir, key).await?;
//! let watch_this = store.changes_path();
//! let store: Arc<dyn Store> = Arc::new(store);
//! # Ok(()) }
//! ```
//!
//! # Files
//!
//! Everything lives in the data directory (created 0700): `tokenkeeper.db` with its `-wal`
//! and `-shm` files (0600), `key` (0600, unless `TOKENKEEPER_KEY` is set),
//! `tokenkeeper.changed`, rewritten after every committed write so another process can watch it
//! instead of polling, and `tokenkeeper.db.setup-lock`, an advisory lock held only while a
//! process opens and migrates the database (so processes starting at once do it one by one).
//!
//! # Schema (`migrations/sqlite/`)
//!
//! - `accounts`: one row per account, keyed by `name`. Everything `status` shows is in clear
//!   columns (provider, mode, expiry, scopes, subscription, email, binding, state, timestamps,
//!   usage, last error); only the tokens are secret, in `secret`. `version` counts credential
//!   updates.
//! - `events`: the history, `id` increasing; it outlives removed accounts.
//! - `api_keys`: SHA-256 hashes of API keys with their scopes and accounts; a name is unique
//!   among unrevoked keys.
//!
//! Timestamps are integer milliseconds since the Unix epoch; lists are JSON arrays.
//!
//! # Compare-and-set
//!
//! [`Store::update_credential`](tokenkeeper_core::Store::update_credential) runs in one
//! `BEGIN IMMEDIATE` transaction: it takes the database's write lock, reads the row's
//! `version`, fails with [`StoreError::VersionConflict`](tokenkeeper_core::StoreError) unless it
//! is the version the writer read, and otherwise writes the new credential, bumps the version
//! and records the event before committing. Writers in other tasks or processes wait for the
//! lock (busy timeout) and then see the new version, so of several writers racing from the same
//! version exactly one wins and a stale writer can never overwrite a newer token.
//!
//! # Encryption
//!
//! See [`crypto`]: XChaCha20-Poly1305 under a 32-byte key, a random nonce per write, the account
//! name as associated data, stored as `v1:<base64(nonce || ciphertext)>`.
//!
//! # Conformance
//!
//! With the `testing` feature, `testing::story` exercises every method of the trait; every
//! implementation runs it.

pub mod crypto;
pub mod feed;
mod fs;
pub mod lock;
pub mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;

pub use crypto::EncryptionKey;
pub use feed::SqliteChangeFeed;
pub use lock::FlockAccountLock;
pub use sqlite::SqliteStore;

use std::path::Path;
use std::sync::Arc;

use tokenkeeper_core::{Backend, StoreError};

/// Opens the embedded backend of `data_dir`: the SQLite store, `flock`s in
/// `<data_dir>/locks`, and the change feed of the store's `changes` table.
pub async fn open_backend(data_dir: &Path, key: EncryptionKey) -> Result<Backend, StoreError> {
    let store = SqliteStore::open(data_dir, key).await?;
    let feed = store.change_feed();
    Ok(Backend {
        store: Arc::new(store),
        lock: Arc::new(FlockAccountLock::new(data_dir.join("locks"))),
        feed: Arc::new(feed),
    })
}
