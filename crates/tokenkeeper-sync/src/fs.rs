//! The one place tokenkeeper writes the files it delivers and keeps in step: [`write_file`].
//! Every sink and every bound-file write goes through it. (Two secrets that are created once
//! and never rewritten, the key file and the admin token file, are created whole with
//! `create_new` by their own crates.)
//!
//! # Guarantees
//!
//! - **Only on change.** The current content is read first; identical content is not
//!   rewritten ([`WriteOutcome::Unchanged`]), so watchers of the file see nothing and
//!   `on_change` commands do not run.
//! - **Symlinks are written through.** A path that is a symlink (or a chain of them, relative
//!   or absolute, even dangling) is resolved to its final target, and the target is replaced;
//!   the link itself stays a link. (`~/.claude/.credentials.json -> /secrets/claude.json` keeps
//!   working.)
//! - **[`WriteMode::Atomic`] (default)**: a temporary file `.<name>.tk-XXXXXX.tmp` is created
//!   in the target's own directory (so the rename never crosses file systems), gets its mode
//!   and owner *before* any byte is written (a secret is never readable by others, not even
//!   for a moment), is written, fsynced, renamed over the target, and then the directory is
//!   fsynced so the rename itself survives a power cut. A reader, or a crash at any instant,
//!   sees either the whole old file or the whole new one, never a mix and never no file.
//!   Leftover temporary files of killed writers are removed by later writes once they are a
//!   minute old.
//! - **[`WriteMode::InPlace`]**: the existing file is opened without truncation, written from
//!   the start, cut to the new length and fsynced: the inode stays the same. Use it for a
//!   file bind-mounted into a container *as a single file* (`-v /srv/bot/.env:/app/.env`):
//!   such a mount pins the inode it was made with, so after an atomic rename the container
//!   keeps seeing the old file forever. The price is a weaker guarantee: a reader racing the
//!   write, or a crash in the middle of it, can see a mix of old and new bytes. The file is
//!   never missing and never has another inode, and the next write repairs it. Prefer
//!   bind-mounting the *directory* and keeping the atomic mode whenever you can. When the file
//!   does not exist yet, an in-place sink creates it atomically.
//! - **Mode and owner.** `mode` (default `0600`) is set on every write; `owner`/`group` (names
//!   or numeric ids) when configured. When they are not configured, a replaced file keeps the
//!   owner and group it had, where the process is allowed to set them (root is), so a root
//!   keeper rewriting `/srv/bot/.env` does not lock the bot out of its own file.
//!
//! Names are resolved with the `nix` crate (`getpwnam_r`/`getgrnam_r`) rather than by parsing
//! `/etc/passwd`: that goes through NSS, so users from LDAP or sssd resolve as they do for
//! `chown`.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{ErrorKind, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokenkeeper_core::config::{FileTarget, WriteMode};

use crate::error::SyncError;

/// Temporary files of killed writers older than this are removed by the next write.
const STALE_TEMP_AGE: Duration = Duration::from_secs(60);

/// Symlink hops followed before giving up (the kernel's own limit is 40).
const MAX_SYMLINK_HOPS: usize = 40;

/// How to write a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOptions {
    /// Permission bits of the file (default `0o600`).
    pub mode: u32,
    /// Owner: a user name or a numeric uid.
    pub owner: Option<String>,
    /// Group: a group name or a numeric gid.
    pub group: Option<String>,
    /// Atomic rename (default) or in place.
    pub write: WriteMode,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self { mode: 0o600, owner: None, group: None, write: WriteMode::Atomic }
    }
}

impl WriteOptions {
    /// The options a file sink's config asks for.
    pub fn from_sink(file: &FileTarget) -> Self {
        Self { mode: file.mode, owner: file.owner.clone(), group: file.group.clone(), write: file.write }
    }
}

/// What [`write_file`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The content changed and was written.
    Written,
    /// The file already held exactly this content; nothing was written.
    Unchanged,
}

/// Runs blocking file work `f` on tokio's blocking pool, so a slow disk (or a network file
/// system) never stalls the async workers; every file access made from async code goes through
/// here. A task that panicked or was cancelled at shutdown is an I/O error of `action` on `path`.
pub async fn unblock<T: Send + 'static>(
    action: &'static str,
    path: &Path,
    f: impl FnOnce() -> Result<T, SyncError> + Send + 'static,
) -> Result<T, SyncError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SyncError::io(action, path, std::io::Error::other(e.to_string())))?
}

/// Reads a file as UTF-8, or `None` when it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<String>, SyncError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SyncError::io("read", path, e)),
    }
}

/// Follows `path` through any chain of symlinks to the file that would be written. A dangling
/// link resolves to its (missing) target, so the target gets created.
pub fn resolve_symlinks(path: &Path) -> Result<PathBuf, SyncError> {
    let mut current = path.to_owned();
    for _ in 0..MAX_SYMLINK_HOPS {
        match fs::symlink_metadata(&current) {
            Ok(m) if m.file_type().is_symlink() => {
                let link = fs::read_link(&current).map_err(|e| SyncError::io("read the symlink", &current, e))?;
                current =
                    if link.is_absolute() { link } else { current.parent().map(|p| p.join(&link)).unwrap_or(link) };
            }
            Ok(_) => return Ok(current),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(current),
            Err(e) => return Err(SyncError::io("inspect", &current, e)),
        }
    }
    Err(SyncError::io("resolve the symlinks of", path, std::io::Error::other("too many levels of symbolic links")))
}

/// Writes `contents` to `path` as described in the [module docs](self): through symlinks, only
/// when changed, atomically or in place, with the mode and owner asked for.
pub fn write_file(path: &Path, contents: &[u8], opts: &WriteOptions) -> Result<WriteOutcome, SyncError> {
    let target = resolve_symlinks(path)?;
    let meta = match fs::metadata(&target) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(SyncError::io("inspect", &target, e)),
    };
    let ids = desired_ids(&target, opts, meta.as_ref())?;
    if meta.is_some() {
        let current = fs::read(&target).map_err(|e| SyncError::io("read", &target, e))?;
        if current == contents {
            let file = File::open(&target).map_err(|e| SyncError::io("open", &target, e))?;
            apply_mode_and_owner(&file, &target, opts.mode, &ids)?;
            return Ok(WriteOutcome::Unchanged);
        }
    }
    match (opts.write, meta.is_some()) {
        (WriteMode::InPlace, true) => write_in_place(&target, contents, opts.mode, &ids)?,
        _ => write_atomic(&target, contents, opts.mode, &ids)?,
    }
    Ok(WriteOutcome::Written)
}

fn write_atomic(target: &Path, contents: &[u8], mode: u32, ids: &Ids) -> Result<(), SyncError> {
    let dir = parent_dir(target);
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let prefix = temp_prefix(&name);
    remove_stale_temps(dir, &prefix);
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .permissions(Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(|e| SyncError::io("create a temporary file in", dir, e))?;
    // The umask may have narrowed the mode at creation; set it exactly before any byte lands.
    apply_mode_and_owner(tmp.as_file(), tmp.path(), mode, ids)?;
    tmp.write_all(contents).map_err(|e| SyncError::io("write the temporary file", tmp.path(), e))?;
    tmp.as_file().sync_all().map_err(|e| SyncError::io("fsync the temporary file", tmp.path(), e))?;
    tmp.persist(target).map_err(|e| SyncError::io("rename the temporary file over", target, e.error))?;
    let d = File::open(dir).map_err(|e| SyncError::io("open the directory", dir, e))?;
    d.sync_all().map_err(|e| SyncError::io("fsync the directory", dir, e))?;
    Ok(())
}

fn write_in_place(target: &Path, contents: &[u8], mode: u32, ids: &Ids) -> Result<(), SyncError> {
    let mut f =
        OpenOptions::new().write(true).open(target).map_err(|e| SyncError::io("open for writing", target, e))?;
    apply_mode_and_owner(&f, target, mode, ids)?;
    f.seek(SeekFrom::Start(0)).map_err(|e| SyncError::io("seek in", target, e))?;
    // One write call and the length cut only after it, so a shorter new content never leaves
    // the file briefly empty.
    f.write_all(contents).map_err(|e| SyncError::io("write in place", target, e))?;
    f.set_len(contents.len() as u64).map_err(|e| SyncError::io("truncate", target, e))?;
    f.sync_all().map_err(|e| SyncError::io("fsync", target, e))?;
    Ok(())
}

fn parent_dir(target: &Path) -> &Path {
    match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The prefix of this file's temporary files; public to tests through [`temp_files_of`].
fn temp_prefix(name: &str) -> String {
    format!(".{name}.tk-")
}

/// Temporary files left next to `path` by writers that were killed (for tests and `doctor`).
pub fn temp_files_of(path: &Path) -> Vec<PathBuf> {
    let dir = parent_dir(path);
    let prefix = temp_prefix(&path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(&prefix) && n.ends_with(".tmp")
        })
        .map(|e| e.path())
        .collect()
}

fn remove_stale_temps(dir: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    let now = SystemTime::now();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with(prefix) && name.ends_with(".tmp")) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > STALE_TEMP_AGE);
        if old {
            if let Err(e) = fs::remove_file(entry.path()) {
                tracing::debug!(path = %entry.path().display(), error = %e, "cannot remove a stale temporary file");
            }
        }
    }
}

/// The uid/gid a written file should have, and whether they were asked for (an error to
/// miss) or only inherited from the file being replaced (best effort).
#[derive(Debug, Default)]
struct Ids {
    uid: Option<u32>,
    gid: Option<u32>,
    uid_required: bool,
    gid_required: bool,
}

fn desired_ids(target: &Path, opts: &WriteOptions, existing: Option<&fs::Metadata>) -> Result<Ids, SyncError> {
    let mut ids = Ids::default();
    match &opts.owner {
        Some(owner) => {
            ids.uid = Some(resolve_user(owner).ok_or_else(|| SyncError::UnknownIdentity {
                action: "resolve owner",
                path: target.to_owned(),
                name: owner.clone(),
            })?);
            ids.uid_required = true;
        }
        None => ids.uid = existing.map(MetadataExt::uid),
    }
    match &opts.group {
        Some(group) => {
            ids.gid = Some(resolve_group(group).ok_or_else(|| SyncError::UnknownIdentity {
                action: "resolve group",
                path: target.to_owned(),
                name: group.clone(),
            })?);
            ids.gid_required = true;
        }
        None => ids.gid = existing.map(MetadataExt::gid),
    }
    Ok(ids)
}

/// A user name or numeric uid.
pub fn resolve_user(name: &str) -> Option<u32> {
    if let Ok(id) = name.parse::<u32>() {
        return Some(id);
    }
    nix::unistd::User::from_name(name).ok().flatten().map(|u| u.uid.as_raw())
}

/// A group name or numeric gid.
pub fn resolve_group(name: &str) -> Option<u32> {
    if let Ok(id) = name.parse::<u32>() {
        return Some(id);
    }
    nix::unistd::Group::from_name(name).ok().flatten().map(|g| g.gid.as_raw())
}

fn apply_mode_and_owner(file: &File, path: &Path, mode: u32, ids: &Ids) -> Result<(), SyncError> {
    let meta = file.metadata().map_err(|e| SyncError::io("inspect", path, e))?;
    if meta.mode() & 0o7777 != mode {
        file.set_permissions(Permissions::from_mode(mode)).map_err(|e| SyncError::io("set the mode of", path, e))?;
    }
    let uid = ids.uid.filter(|u| *u != meta.uid());
    let gid = ids.gid.filter(|g| *g != meta.gid());
    if uid.is_none() && gid.is_none() {
        return Ok(());
    }
    match std::os::unix::fs::fchown(file, uid, gid) {
        Ok(()) => {}
        Err(e) if (uid.is_some() && ids.uid_required) || (gid.is_some() && ids.gid_required) => {
            return Err(SyncError::io("set the owner of", path, e))
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot keep the previous owner and group of the file");
        }
    }
    // chown clears set-uid/set-gid bits; put the asked mode back.
    let meta = file.metadata().map_err(|e| SyncError::io("inspect", path, e))?;
    if meta.mode() & 0o7777 != mode {
        file.set_permissions(Permissions::from_mode(mode)).map_err(|e| SyncError::io("set the mode of", path, e))?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn opts() -> WriteOptions {
        WriteOptions::default()
    }

    fn inode(p: &Path) -> u64 {
        fs::metadata(p).unwrap().ino()
    }

    #[tokio::test]
    async fn unblock_runs_the_work_off_the_runtime_and_reports_a_panic_as_io() {
        let runtime_thread = std::thread::current().id();
        let ran_on = unblock("read", Path::new("/x"), || Ok(std::thread::current().id())).await.unwrap();
        assert_ne!(ran_on, runtime_thread);
        let e = unblock::<()>("read", Path::new("/srv/bot/.env"), || panic!("disk on fire")).await.unwrap_err();
        assert_eq!(e.to_string(), "cannot read /srv/bot/.env");
        assert!(matches!(e, SyncError::Io { .. }), "{e:?}");
    }

    #[test]
    fn creates_with_mode_and_reports_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        assert_eq!(write_file(&p, b"one", &opts()).unwrap(), WriteOutcome::Written);
        assert_eq!(fs::read(&p).unwrap(), b"one");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
        let ino = inode(&p);
        assert_eq!(write_file(&p, b"one", &opts()).unwrap(), WriteOutcome::Unchanged);
        assert_eq!(inode(&p), ino, "an unchanged write must not replace the file");
        assert_eq!(write_file(&p, b"two", &opts()).unwrap(), WriteOutcome::Written);
        assert_ne!(inode(&p), ino, "an atomic write replaces the inode");
        assert!(temp_files_of(&p).is_empty());
    }

    #[test]
    fn mode_is_applied_even_when_content_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"x").unwrap();
        fs::set_permissions(&p, Permissions::from_mode(0o644)).unwrap();
        let o = WriteOptions { mode: 0o640, ..opts() };
        assert_eq!(write_file(&p, b"x", &o).unwrap(), WriteOutcome::Unchanged);
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
    }

    #[test]
    fn writes_through_symlink_chains() {
        let dir = tempfile::tempdir().unwrap();
        let real_dir = dir.path().join("real");
        fs::create_dir(&real_dir).unwrap();
        let target = real_dir.join("target.json");
        fs::write(&target, b"old").unwrap();
        let link1 = dir.path().join("link1");
        let link2 = dir.path().join("link2");
        symlink("real/target.json", &link1).unwrap();
        symlink(&link1, &link2).unwrap();
        write_file(&link2, b"new", &opts()).unwrap();
        assert!(fs::symlink_metadata(&link2).unwrap().file_type().is_symlink());
        assert!(fs::symlink_metadata(&link1).unwrap().file_type().is_symlink());
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert!(temp_files_of(&target).is_empty());
    }

    #[test]
    fn dangling_symlink_creates_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("link");
        symlink(dir.path().join("missing"), &link).unwrap();
        write_file(&link, b"v", &opts()).unwrap();
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(fs::read(dir.path().join("missing")).unwrap(), b"v");
    }

    #[test]
    fn symlink_loop_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        symlink(&b, &a).unwrap();
        symlink(&a, &b).unwrap();
        let e = write_file(&a, b"v", &opts()).unwrap_err().to_string();
        assert!(e.contains("resolve the symlinks"), "{e}");
    }

    #[test]
    fn in_place_keeps_the_inode_and_cuts_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"a much longer old content").unwrap();
        let ino = inode(&p);
        let o = WriteOptions { write: WriteMode::InPlace, ..opts() };
        assert_eq!(write_file(&p, b"short", &o).unwrap(), WriteOutcome::Written);
        assert_eq!(fs::read(&p).unwrap(), b"short");
        assert_eq!(inode(&p), ino);
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
        // A missing in-place file is created (atomically).
        let q = dir.path().join("g");
        write_file(&q, b"new", &o).unwrap();
        assert_eq!(fs::read(&q).unwrap(), b"new");
    }

    #[test]
    fn missing_directory_names_the_directory_and_action() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope").join("f");
        let e = write_file(&p, b"v", &opts()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("create a temporary file in") && msg.contains("nope"), "{msg}");
    }

    #[test]
    fn owner_and_group_by_name_and_number() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let unknown = WriteOptions { owner: Some("no-such-user-tk".into()), ..opts() };
        let e = write_file(&p, b"v", &unknown).unwrap_err().to_string();
        assert!(e.contains("no-such-user-tk") && e.contains("resolve owner"), "{e}");
        assert!(!p.exists(), "nothing is written when the owner is unknown");
        assert_eq!(resolve_user("0"), Some(0));
        assert_eq!(resolve_user("root"), Some(0));
        assert_eq!(resolve_group("root"), Some(0));
        if nix::unistd::geteuid().is_root() {
            let o = WriteOptions { owner: Some("65534".into()), group: Some("65534".into()), ..opts() };
            write_file(&p, b"v", &o).unwrap();
            let m = fs::metadata(&p).unwrap();
            assert_eq!((m.uid(), m.gid()), (65534, 65534));
            // Not configured: a rewrite keeps the owner the file had.
            write_file(&p, b"v2", &opts()).unwrap();
            let m = fs::metadata(&p).unwrap();
            assert_eq!((m.uid(), m.gid()), (65534, 65534));
        }
    }

    #[test]
    fn stale_temp_files_are_removed_fresh_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let stale = dir.path().join(".f.tk-AAAAAA.tmp");
        let fresh = dir.path().join(".f.tk-BBBBBB.tmp");
        let other = dir.path().join(".g.tk-CCCCCC.tmp");
        for t in [&stale, &fresh, &other] {
            fs::write(t, b"partial").unwrap();
        }
        let old = SystemTime::now() - Duration::from_secs(3600);
        for t in [&stale, &other] {
            File::options().write(true).open(t).unwrap().set_modified(old).unwrap();
        }
        write_file(&p, b"v", &opts()).unwrap();
        assert!(!stale.exists());
        assert!(fresh.exists());
        assert!(other.exists(), "another file's temporaries are not ours to remove");
    }

    #[test]
    fn read_optional_distinguishes_missing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_optional(&dir.path().join("x")).unwrap(), None);
        fs::write(dir.path().join("y"), "hi").unwrap();
        assert_eq!(read_optional(&dir.path().join("y")).unwrap().as_deref(), Some("hi"));
        assert!(read_optional(dir.path()).is_err());
    }
}
