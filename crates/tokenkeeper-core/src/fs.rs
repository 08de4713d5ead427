//! Files created once and never rewritten: the encryption key file, the admin token file and
//! the empty SQLite database file. [`create_once`] is the one writer for them; the files
//! tokenkeeper delivers and rewrites go through `tokenkeeper_sync::fs::write_file` instead.
//!
//! The two share the rules of an atomic write (a temporary file in the target's directory,
//! private before any byte is written, fsynced, then moved into place, then the directory
//! fsynced), but differ in the last step: a create-once file is hard-linked into place, which
//! fails when the file exists, so it never replaces what another process created meanwhile.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// What [`create_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The file did not exist and now holds the content.
    New,
    /// The file existed already (perhaps made by another process a moment ago) and was left as
    /// it was: read it to use its content.
    Existed,
}

/// Creates `path` with mode 0600 holding exactly `content`, unless it exists.
///
/// The content is written to `.<name>.<pid>.<random>.tmp` beside `path` (mode 0600 set before
/// any byte, whatever the umask), fsynced, hard-linked to `path` (which fails rather than
/// replace an existing file) and the temporary name removed; on success the directory is
/// fsynced so the new name survives a power cut. A reader never sees a partial file, a crash
/// never leaves an empty one, and of processes racing to create it exactly one gets
/// [`Created::New`]. The parent directory must exist. Errors are the raw I/O error of the
/// step that failed; the caller adds which file and what for.
pub fn create_once(path: &Path, content: &[u8]) -> io::Result<Created> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.{}.tmp", std::process::id(), hex_suffix()));
    let linked = write_private(&tmp, content).and_then(|()| std::fs::hard_link(&tmp, path));
    if let Err(e) = std::fs::remove_file(&tmp) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::debug!(path = %tmp.display(), error = %e, "cannot remove a temporary file");
        }
    }
    match linked {
        Ok(()) => {
            sync_dir(dir);
            Ok(Created::New)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Created::Existed),
        Err(e) => Err(e),
    }
}

/// Flushes a directory's entries (a file created or linked in it) to disk. Best effort: some
/// filesystems refuse to fsync a directory, and the file's own content was already synced.
pub fn sync_dir(dir: &Path) {
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::debug!(path = %dir.display(), error = %e, "cannot fsync directory");
    }
}

fn hex_suffix() -> String {
    crate::random_bytes::<8>().iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `content` to a new file of mode 0600, synced to disk.
fn write_private(path: &Path, content: &[u8]) -> io::Result<()> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut file = opts.open(path)?;
    // `mode` is filtered by the umask, which could have taken the owner's bits too.
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(content)?;
    file.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    }

    #[test]
    fn creates_once_private_and_never_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("admin-token");
        assert_eq!(create_once(&path, b"first\n").unwrap(), Created::New);
        assert_eq!(create_once(&path, b"second\n").unwrap(), Created::Existed);
        assert_eq!(std::fs::read(&path).unwrap(), b"first\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(leftovers(tmp.path()).is_empty(), "{:?}", leftovers(tmp.path()));
    }

    #[test]
    fn of_racing_creators_exactly_one_wins() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("key");
        let outcomes: Vec<(usize, Created)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let path = &path;
                    s.spawn(move || (i, create_once(path, format!("{i}").as_bytes()).unwrap()))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<usize> = outcomes.iter().filter(|(_, c)| *c == Created::New).map(|(i, _)| *i).collect();
        assert_eq!(winners.len(), 1, "{outcomes:?}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), winners[0].to_string());
        assert!(leftovers(tmp.path()).is_empty());
    }

    #[test]
    fn a_missing_directory_is_an_error_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let e = create_once(&tmp.path().join("no/such/file"), b"x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
