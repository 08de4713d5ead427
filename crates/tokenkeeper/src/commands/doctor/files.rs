//! Doctor's file checks: modes of the data directory and its secrets, bound Claude Code files
//! and file sinks (writable, in step with the store), Claude Code's lock directories.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use nix::unistd::{access, AccessFlags};

use tokenkeeper_core::config::{FileTarget, SinkConfig};
use tokenkeeper_core::formats::parse_credential;
use tokenkeeper_core::paths::expand_tilde;
use tokenkeeper_core::status::human_duration;
use tokenkeeper_core::{Account, BindingKind, Config, Freshness, Mode};
use tokenkeeper_keeper::locks::claude_lock_dirs;
use tokenkeeper_store::crypto::KEY_FILE_NAME;
use tokenkeeper_store::sqlite::DATABASE_FILE_NAME;
use tokenkeeper_sync::render::render_sink;

use super::{shell_quote, Finding};

/// Whether a file in the data directory holds a secret (or something derived from one):
/// the key, the database and its WAL/SHM companions, an admin-token file. Lock and change
/// files hold nothing and may keep the umask's mode.
fn holds_secret(name: &str) -> bool {
    let db = |suffix: &str| name.strip_prefix(DATABASE_FILE_NAME) == Some(suffix);
    name == KEY_FILE_NAME
        || db("")
        || db("-wal")
        || db("-shm")
        || db("-journal")
        || name.contains("admin") // `admin-token`, the HTTP server's
        || name.ends_with(".key")
        || name.ends_with(".token")
}

fn mode_of(meta: &std::fs::Metadata) -> u32 {
    meta.permissions().mode() & 0o7777
}

/// The data directory: exists, mode 0700; its secret files have no group/other bits; the key
/// is somewhere.
pub fn data_dir(dir: &Path, key_from_env: bool) -> Vec<Finding> {
    let shown = shell_quote(dir);
    let meta = match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => m,
        Ok(_) => {
            return vec![Finding::fail(
                format!("data directory {} is not a directory", dir.display()),
                "move it aside, or pass --data-dir / set TOKENKEEPER_DATA_DIR to a directory",
            )]
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return vec![Finding::fail(
            format!("data directory {} does not exist", dir.display()),
            "`tokenkeeper login` or `tokenkeeper import` creates it (mode 0700); or point --data-dir at the right one",
        )]
        }
        Err(e) => {
            return vec![Finding::fail(
                format!("data directory {} cannot be inspected: {e}", dir.display()),
                format!("check the permissions of its parent directories (`ls -ld {shown}`)"),
            )]
        }
    };
    let mut out = Vec::new();
    let mode = mode_of(&meta);
    if mode & 0o077 != 0 {
        out.push(Finding::fail(
            format!("data directory {} is mode {mode:04o}: group or others can reach it", dir.display()),
            format!("chmod 700 {shown}"),
        ));
    } else {
        out.push(Finding::ok(format!("data directory {} is mode {mode:04o}", dir.display())));
    }

    let mut private = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            out.push(Finding::fail(
                format!("data directory {} cannot be listed: {e}", dir.display()),
                format!("run doctor as the user tokenkeeper runs as, or `chmod 700 {shown}`"),
            ));
            return out;
        }
    };
    let mut names: Vec<(String, PathBuf)> =
        entries.flatten().map(|e| (e.file_name().to_string_lossy().into_owned(), e.path())).collect();
    names.sort();
    for (name, path) in names {
        // symlink_metadata: a link's own mode means nothing; its target is checked where it lives.
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if !meta.is_file() || !holds_secret(&name) {
            continue;
        }
        let mode = mode_of(&meta);
        if mode & 0o077 != 0 {
            out.push(Finding::fail(
                format!("{} is mode {mode:04o}: group or others can read it", path.display()),
                format!("chmod 600 {}", shell_quote(&path)),
            ));
        } else {
            private.push(name);
        }
    }
    if !private.is_empty() {
        out.push(Finding::ok(format!("private to the owner: {}", private.join(", "))));
    }
    let key = dir.join(KEY_FILE_NAME);
    if !key_from_env && dir.join(DATABASE_FILE_NAME).exists() && !key.exists() {
        out.push(Finding::fail(
            format!("the store exists but its key file {} does not, and TOKENKEEPER_KEY is not set", key.display()),
            "restore the key file from a backup, or set TOKENKEEPER_KEY to the key the store was made with",
        ));
    }
    out
}

/// Whether this process may write `path` (which must exist).
fn writable(path: &Path) -> bool {
    access(path, AccessFlags::W_OK).is_ok()
}

/// Why a file cannot be replaced by an atomic write (temp file, rename), if it cannot.
fn not_writable(path: &Path) -> Option<String> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.exists() {
        return Some(format!("its directory {} does not exist", dir.display()));
    }
    if !writable(dir) {
        return Some(format!("its directory {} is not writable by this user", dir.display()));
    }
    if path.exists() && !writable(path) {
        return Some("it is not writable by this user".to_owned());
    }
    None
}

/// A bound file (Claude Code's, or a `native` one read by the account's provider in
/// `providers`): exists, private, writable, and holds the stored access token.
pub fn bound_file(
    account: &Account,
    now: DateTime<Utc>,
    providers: Option<&tokenkeeper_provider::Providers>,
) -> Vec<Finding> {
    let Some(binding) = &account.binding else { return Vec::new() };
    if !binding.kind.is_file() {
        return Vec::new();
    }
    let name = &account.name;
    let path = &binding.path;
    let shown = shell_quote(path);
    let mut out = Vec::new();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return vec![Finding::warn(
                format!("account `{name}`: its bound file {} does not exist", path.display()),
                if account.mode == Mode::Own {
                    format!("`tokenkeeper refresh --force --account {name}` writes it back")
                } else {
                    "log in with Claude Code again (`claude login`), or re-import".to_owned()
                },
            )];
        }
        Err(e) => {
            return vec![Finding::fail(
                format!("account `{name}`: its bound file {} cannot be inspected: {e}", path.display()),
                format!("check the permissions of {shown} and its directory"),
            )]
        }
    };
    let mode = mode_of(&meta);
    if mode & 0o077 != 0 {
        out.push(Finding::fail(
            format!("{} is mode {mode:04o}: group or others can read its tokens", path.display()),
            format!("chmod 600 {shown}"),
        ));
    }
    if let Some(why) = not_writable(path) {
        out.push(Finding::fail(
            format!("account `{name}`: its bound file {} cannot be written back: {why}", path.display()),
            format!("give this user write access (`ls -l {shown}`), or re-import with `--no-bind`"),
        ));
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            out.push(Finding::fail(
                format!("account `{name}`: its bound file {} cannot be read: {e}", path.display()),
                format!("check the permissions of {shown}"),
            ));
            return out;
        }
    };
    // How the keeper will treat the file: adopt it (newer), or write ours back over it.
    let adopt = format!("`tokenkeeper refresh --if-needed --account {name}` adopts it");
    let write_back = if account.mode == Mode::Own {
        format!(
            "`tokenkeeper refresh --force --account {name}` writes a fresh token back (a running `tokenkeeper serve` \
             repairs the file by itself)"
        )
    } else {
        format!("this account follows Claude Code: log in there again (`claude login`), or `tokenkeeper login --account {name}`")
    };
    let read = match binding.kind {
        BindingKind::Native => match providers.and_then(|p| p.get(&account.provider)).and_then(|p| p.native_file()) {
            Some(file) => file.parse(&text, now).map(|c| c.credential).map_err(|e| e.to_string()),
            None => Err(format!("provider `{}` keeps no CLI file here", account.provider)),
        },
        _ => parse_credential(&text, now).map(|p| p.credential).map_err(|e| e.to_string()),
    };
    let problem = match read.map(|credential| tokenkeeper_core::formats::ParsedCredential {
        credential,
        format: tokenkeeper_core::formats::Format::Native,
        email: None,
    }) {
        Err(e) => Some((format!("does not hold a usable credential ({e})"), write_back)),
        Ok(p) if p.credential.access_token == account.credential.access_token => None,
        Ok(p) => Some(match p.credential.compare_to(&account.credential) {
            // Same expiry, other token: the keeper lets the file win (see `bound_freshness`).
            Freshness::Newer | Freshness::Older if p.credential.expires_at >= account.credential.expires_at => (
                format!(
                    "holds a newer token ({}, expires {}) than the store: someone else logged in or refreshed",
                    p.credential.access_token.fingerprint(),
                    p.credential.expires_at.format("%Y-%m-%d %H:%M UTC")
                ),
                adopt,
            ),
            Freshness::Blank => ("holds a blank stub (emptied tokens)".to_owned(), write_back),
            _ => (
                format!(
                    "holds an older token ({}) than the store ({})",
                    p.credential.access_token.fingerprint(),
                    account.credential.access_token.fingerprint()
                ),
                write_back,
            ),
        }),
    };
    match problem {
        None => out.push(Finding::ok(format!(
            "account `{name}`: bound file {} holds the stored token {}",
            path.display(),
            account.credential.access_token.fingerprint()
        ))),
        Some((why, fix)) => out.push(Finding::warn(
            format!("account `{name}`: bound file {} is out of step with the store: it {why}", path.display()),
            fix,
        )),
    }
    out
}

/// Every file sink: its account exists, the file exists, is writable and holds what would be
/// rendered now.
pub fn sinks(config: &Config, accounts: &[Account]) -> Vec<Finding> {
    let mut out = Vec::new();
    for cfg in &config.sinks {
        // Infisical and command sinks have nothing on disk to compare; `tokenkeeper sync`
        // reports their errors.
        if let Some(file) = cfg.file() {
            out.push(file_sink(cfg, file, accounts));
        }
    }
    out
}

fn file_sink(cfg: &SinkConfig, file: &FileTarget, accounts: &[Account]) -> Finding {
    let name = cfg.display_name();
    let Some(account) = accounts.iter().find(|a| a.name == cfg.account) else {
        return Finding::fail(
            format!("sink {name} is for account `{}`, which does not exist", cfg.account),
            format!(
                "correct `account` of this [[sinks]] entry, or create it with `tokenkeeper login --account {}`",
                cfg.account
            ),
        );
    };
    let path = expand_tilde(&file.path);
    let sync = format!("tokenkeeper sync --account {}", account.name);
    if let Some(why) = not_writable(&path) {
        return Finding::fail(
            format!("sink {name}: {} cannot be written: {why}", path.display()),
            format!("create the directory or give this user write access (`ls -ld {}`)", shell_quote(&path)),
        );
    }
    let existing = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Finding::warn(format!("sink {name}: {} does not exist yet", path.display()), sync);
        }
        Err(e) => {
            return Finding::fail(
                format!("sink {name}: {} cannot be read: {e}", path.display()),
                format!("check the permissions of {}", shell_quote(&path)),
            )
        }
    };
    match render_sink(cfg, account, Some(&existing)) {
        Ok(r) if r.contents == existing => {
            Finding::ok(format!("sink {name}: {} is in step with the store", path.display()))
        }
        Ok(_) => Finding::warn(
            format!(
                "sink {name}: {} is out of step with the store (it does not hold token {})",
                path.display(),
                account.credential.access_token.fingerprint()
            ),
            sync,
        ),
        Err(e) => Finding::fail(
            format!("sink {name}: cannot render it: {e}"),
            "correct this [[sinks]] entry (docs/CONFIG.md), then run `tokenkeeper sync`",
        ),
    }
}

/// Process ids of running Claude Code processes (`claude`, or node running claude-code), or
/// `None` where `/proc` cannot tell.
fn claude_processes() -> Option<Vec<u32>> {
    let entries = std::fs::read_dir("/proc").ok()?;
    let mut pids = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else { continue };
        let argv: Vec<String> =
            cmdline.split(|b| *b == 0).take(3).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let is_claude = argv.iter().enumerate().any(|(i, a)| {
            let base = Path::new(a).file_name().and_then(|n| n.to_str()).unwrap_or("");
            (i == 0 && base == "claude") || a.contains("@anthropic-ai/claude-code") || (i == 1 && base == "claude")
        });
        if is_claude && pid != std::process::id() {
            pids.push(pid);
        }
    }
    Some(pids)
}

/// Claude Code's lock directories next to and in each config directory: none may be stale.
pub fn claude_locks(config_dirs: &BTreeSet<PathBuf>) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut processes: Option<Option<Vec<u32>>> = None;
    for dir in config_dirs {
        let mut clean = true;
        for lock in claude_lock_dirs(dir) {
            let Ok(meta) = std::fs::symlink_metadata(&lock.path) else { continue };
            clean = false;
            let age = meta.modified().ok().and_then(|m| SystemTime::now().duration_since(m).ok()).unwrap_or_default();
            let age_text = human_duration(tokenkeeper_core::clock::chrono_duration(age));
            if age <= lock.stale {
                out.push(Finding::ok(format!(
                    "Claude Code's lock {} is held and fresh (touched {age_text} ago): a refresh is under way",
                    lock.path.display()
                )));
                continue;
            }
            let what = format!(
                "Claude Code's lock {} is stale: untouched for {age_text} (stale after {})",
                lock.path.display(),
                human_duration(tokenkeeper_core::clock::chrono_duration(lock.stale))
            );
            let rmdir = format!("rmdir {}", shell_quote(&lock.path));
            let fix = match processes.get_or_insert_with(claude_processes) {
                Some(pids) if pids.is_empty() => format!("no Claude Code process is running: `{rmdir}`"),
                Some(pids) => format!(
                    "Claude Code is running (pid {}): let it finish, or quit it and `{rmdir}`",
                    pids.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
                ),
                None => format!("if no Claude Code process is running, `{rmdir}`"),
            };
            out.push(Finding::warn(what, fix));
        }
        if clean && dir.exists() {
            out.push(Finding::ok(format!("no Claude Code lock held for {}", dir.display())));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_the_key_the_database_and_the_admin_token() {
        for name in ["key", "tokenkeeper.db", "tokenkeeper.db-wal", "tokenkeeper.db-shm", "admin-token"] {
            assert!(holds_secret(name), "{name}");
        }
        for name in ["tokenkeeper.changed", "tokenkeeper.db.setup-lock", "locks", "notes.txt"] {
            assert!(!holds_secret(name), "{name}");
        }
    }
}
