//! `tokenkeeper store copy`: moves an installation from the embedded SQLite store of the data
//! directory to PostgreSQL, so its replicas can share it. The target must be empty; the copy is
//! verified (every table's rows, every account decrypted with the installation key); the SQLite
//! store is opened read-only and left as it was. The URL never shows in a message, and a
//! password is refused in `--to` (argv is visible to every user of the machine).

use std::path::Path;

use anyhow::{bail, Context, Result};

use tokenkeeper_store::sqlite::DATABASE_FILE_NAME;
use tokenkeeper_store::EncryptionKey;
use tokenkeeper_store_postgres::{url_has_password, CopyError, PgStore};

use crate::app::{data_dir, load_config, store_url};
use crate::cli::{GlobalArgs, StoreCopyArgs};
use crate::exit;

/// The target URL and where it came from (for messages; the URL itself is never shown).
fn target(global: &GlobalArgs, args: &StoreCopyArgs) -> Result<(String, String)> {
    if let Some(url) = &args.to {
        if url_has_password(url) {
            bail!(
                "--to holds a password, which other users of this machine can read in the process list (the URL is \
                 not shown); put the whole URL in a 0600 file and pass --to-file, or set TOKENKEEPER_STORE_URL, or \
                 give the password in PGPASSWORD or ~/.pgpass"
            );
        }
        return Ok((url.clone(), "--to".to_owned()));
    }
    if let Some(file) = &args.to_file {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("cannot read --to-file {}", file.display()))?;
        let url = text.trim().to_owned();
        anyhow::ensure!(!url.is_empty(), "--to-file {} is empty", file.display());
        return Ok((url, format!("--to-file {}", file.display())));
    }
    let config = load_config(global)?;
    store_url(&config)?.ok_or_else(|| {
        anyhow::anyhow!(
            "no target: pass --to postgres://user@host:port/database, or --to-file FILE, or set \
             TOKENKEEPER_STORE_URL (or [store] url / url_file) to the database the replicas will use"
        )
    })
}

/// The installation key, as the SQLite store's processes had it; never creates one (a new key
/// would open nothing).
fn key(dir: &Path) -> Result<(EncryptionKey, String)> {
    let from_env = std::env::var("TOKENKEEPER_KEY").ok().filter(|k| !k.trim().is_empty());
    let file = dir.join(tokenkeeper_store::crypto::KEY_FILE_NAME);
    let source = match &from_env {
        Some(_) => "TOKENKEEPER_KEY".to_owned(),
        None if file.exists() => format!("the key file {}", file.display()),
        None => bail!(
            "no installation key: {} does not exist and TOKENKEEPER_KEY is not set; set TOKENKEEPER_KEY to the key \
             the SQLite store was made with",
            file.display()
        ),
    };
    let key = EncryptionKey::load_or_create(from_env.as_deref(), dir)
        .with_context(|| format!("cannot load the installation key from {source}"))?;
    Ok((key, source))
}

pub async fn run(global: &GlobalArgs, args: StoreCopyArgs) -> Result<i32> {
    let (url, origin) = target(global, &args)?;
    if !tokenkeeper_store_postgres::is_postgres_url(&url) {
        bail!("{origin} must be a postgres:// or postgresql:// URL (the value is not shown)");
    }
    let dir = data_dir(global)?;
    let database = dir.join(DATABASE_FILE_NAME);
    if !database.exists() {
        bail!("there is no SQLite store to copy: {} does not exist (check --data-dir)", database.display());
    }
    let (key, key_source) = key(&dir)?;
    let store = PgStore::open(&url, key).await.with_context(|| {
        format!("cannot open the PostgreSQL database named by {origin}; check the URL, the role and that the server is reachable")
    })?;
    let report = match store.copy_from_sqlite(&database).await {
        Ok(report) => report,
        Err(e @ CopyError::WrongKey { .. }) => {
            return Err(anyhow::Error::new(e).context(format!("the key used was {key_source}")));
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot copy {} to {origin}", database.display()))),
    };
    store.close().await;
    println!("Copied {} to {} ({origin}):", database.display(), store.target());
    for (table, rows) in &report.tables {
        println!("  {table:<17} {rows:>7} rows");
    }
    println!(
        "Verified: every table's rows, and {} accounts decrypted with the installation key ({key_source}).",
        report.accounts_verified
    );
    eprintln!(
        "Next: give every replica the same key and the database's URL (TOKENKEEPER_STORE_URL or [store] url / \
         url_file), then start them. The SQLite store in {} is unchanged; do not run it beside the replicas.",
        dir.display()
    );
    Ok(exit::OK)
}
