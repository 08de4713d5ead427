//! The store's own files: the private data directory and small best-effort helpers, used by the
//! key file here and by the SQLite store's files in `tokenkeeper-store`.
//!
//! Everything tokenkeeper keeps lives in one directory that only its owner may enter (0700):
//! the database, its WAL, the key file and the change-notification file.

use std::fs::{DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use tokenkeeper_core::StoreError;

/// Builds a [`StoreError::Io`] for `action` on `path`.
pub fn io_error(action: &str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let action = action.to_owned();
    let path = path.to_owned();
    move |source| StoreError::Io { action, path, source }
}

/// Creates `dir` (and missing parents) with mode 0700 if it does not exist.
///
/// An existing directory is left as it is: it may have been set up on purpose (a shared
/// mount, a systemd `StateDirectory=`); group or other access to it is only warned about,
/// since the key file and database inside are 0600 themselves.
pub fn ensure_private_dir(dir: &Path) -> Result<(), StoreError> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %dir.display(),
                    mode = format_args!("{mode:03o}"),
                    "the data directory is accessible by group or others; `chmod 700` it"
                );
            }
            return Ok(());
        }
        Ok(_) => {
            return Err(io_error("use as the data directory", dir)(io::Error::new(
                io::ErrorKind::NotADirectory,
                "it exists and is not a directory",
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("inspect the data directory", dir)(e)),
    }
    DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_error("create the data directory", dir))?;
    // The umask may have taken the owner's bits too; the directory must be exactly 0700.
    std::fs::set_permissions(dir, Permissions::from_mode(0o700))
        .map_err(io_error("set mode 0700 on the data directory", dir))?;
    Ok(())
}

pub use tokenkeeper_core::fs::sync_dir;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn creates_missing_directories_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        ensure_private_dir(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        // Idempotent.
        ensure_private_dir(&dir).unwrap();
    }

    #[test]
    fn a_file_in_the_way_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let err = ensure_private_dir(&file).unwrap_err().to_string();
        assert!(err.contains("data directory") && err.contains(&file.display().to_string()), "{err}");
    }
}
