//! The schema's migrations (`migrations/postgres/`), embedded in the binary and applied one
//! replica at a time.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::PgPool;
use tokenkeeper_core::StoreError;

use crate::advisory_key;
use crate::store::db;

/// The migrations in `migrations/postgres/`: (version, description, SQL).
///
/// Embedded by hand rather than with `sqlx::migrate!`, which needs sqlx's `macros` feature
/// (and its compile-time cost); the checksums are the same, so either can apply them later.
/// Every migration must be able to run inside a transaction (no `CREATE INDEX CONCURRENTLY`):
/// all pending ones run in one, under the migration lock.
pub(crate) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "initial", include_str!("../migrations/postgres/0001_initial.sql")),
    (2, "web_sessions", include_str!("../migrations/postgres/0002_web_sessions.sql")),
];

/// The name of the advisory lock held (for one transaction) while migrating.
pub(crate) const MIGRATE_LOCK: &str = "tokenkeeper/migrate";

/// Applies the pending migrations in one transaction that first takes a transaction-level
/// advisory lock: replicas starting at once queue on the lock, and each one after the first
/// finds the schema current. sqlx's own session lock is off (ours covers it, and is released by
/// the commit even if this process dies halfway).
pub(crate) async fn run_migrations(pool: &PgPool, target: &str) -> Result<(), StoreError> {
    let mut migrator = Migrator::new(EmbeddedMigrations)
        .await
        .map_err(|e| StoreError::Database { action: "load the embedded migrations".to_owned(), source: Box::new(e) })?;
    migrator.set_locking(false);
    let mut tx = pool.begin().await.map_err(db(format!("begin migrating {target}")))?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(advisory_key(MIGRATE_LOCK))
        .execute(&mut *tx)
        .await
        .map_err(db(format!("take the migration lock of {target}")))?;
    // `run_direct` is `run` without the `Acquire` bound, whose lifetimes make the future of an
    // `async_trait` method fail to be `Send` (sqlx documents it as the way around that).
    migrator.run_direct(&mut *tx).await.map_err(|e| StoreError::Database {
        action: format!(
            "migrate {target} (a schema newer than this tokenkeeper means an older binary is running: upgrade it)"
        ),
        source: Box::new(e),
    })?;
    tx.commit().await.map_err(db(format!("commit the migration of {target}")))?;
    Ok(())
}

/// The migrations of [`MIGRATIONS`] as sqlx wants them.
#[derive(Debug)]
struct EmbeddedMigrations;

impl MigrationSource<'static> for EmbeddedMigrations {
    fn resolve(self) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 'static>> {
        let migrations = MIGRATIONS
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(version, Cow::Borrowed(description), MigrationType::Simple, Cow::Borrowed(sql), false)
            })
            .collect();
        Box::pin(std::future::ready(Ok(migrations)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::path::Path;

    use super::MIGRATIONS;

    #[test]
    fn every_migration_file_is_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/postgres");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let embedded: Vec<String> = MIGRATIONS.iter().map(|(v, d, _)| format!("{v:04}_{d}.sql")).collect();
        assert_eq!(files, embedded);
        for ((_, _, sql), file) in MIGRATIONS.iter().zip(&files) {
            assert_eq!(*sql, std::fs::read_to_string(dir.join(file)).unwrap());
        }
    }
}
