//! `tokenkeeper exec -- CMD`: a fresh token in the environment, then `exec` (the process is
//! replaced, so signals and the exit status belong to CMD) — or, when a file was written for
//! CMD (below), CMD run in the foreground and waited for, so the file can be removed when it
//! ends ([`ChildCommand::run_attached`]: same process group, signals passed on, its exit code
//! passed through; a death by a signal tokenkeeper does not pass on is repeated on itself, one
//! it does is exit code 128 + the signal, as a shell reports it).
//!
//! CMD gets tokenkeeper's environment through the one child-process policy
//! ([`tokenkeeper_process::env`], purpose `Exec`): `TOKENKEEPER_KEY`, `TOKENKEEPER_ADMIN_TOKEN`
//! and every other `TOKENKEEPER_*` but a few non-secret settings are withheld, so neither
//! Claude Code nor any tool it runs sees the key to the store. It gets what the account's
//! provider puts there ([`tokenkeeper_provider::Provider::exec_env`]: `CLAUDE_CODE_OAUTH_TOKEN`
//! for a Claude login, `ANTHROPIC_API_KEY` for an API key, …) and each `--env NAME`, set to the
//! access token.
//!
//! A provider whose CLI reads its credential from a file in a directory an environment
//! variable names ([`tokenkeeper_provider::NativeFile::home_var`], Codex's `CODEX_HOME`) gets
//! that file written into a private directory of the data dir (`exec/<account>/`, mode 0700,
//! the file 0600, rewritten at every `exec`, removed when CMD ends), and the variable pointed
//! at it. The file holds the
//! access token only; its refresh token is empty: a CLI that refreshed by itself would
//! otherwise spend the keeper's refresh token and log the keeper out (the field is there, empty,
//! because Codex refuses a file without it).

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tokenkeeper_core::Credential;
use tokenkeeper_keeper::LeaseRequest;
use tokenkeeper_process::{exit_code_of, ChildCommand, Purpose, ATTACHED_SIGNALS};
use tokenkeeper_provider::NativeFile;
use tokenkeeper_sync::fs::{write_file, WriteOptions};

use crate::app::App;
use crate::cli::ExecArgs;

pub async fn run(app: &App, args: ExecArgs) -> Result<i32> {
    let lease = app.keeper.lease(LeaseRequest::account(args.account.as_deref())).await?;
    if let Some(w) = lease.warning() {
        eprintln!("warning: {w}; running with the current token, valid until {}", lease.expires_at().to_rfc3339());
    }
    let account = lease.account();
    let provider = app.keeper.provider_of(account)?.clone();
    let token = lease.token();
    let credential = Credential { access_token: token.clone(), ..account.credential.clone() };
    let mut cmd = ChildCommand::new(Purpose::Exec, &args.command)?;
    for (name, value) in provider.exec_env(&credential) {
        cmd = cmd.secret_env(&name, &value);
    }
    let mut written: Option<PathBuf> = None;
    if let Some(file) = provider.native_file() {
        if let Some(var) = file.home_var() {
            let dir = app.data_dir.join("exec").join(&account.name);
            let path = write_private_native_file(file, &dir, var, &credential, app.keeper.clock().now())
                .with_context(|| format!("cannot write {} for the command into {}", file.describe(), dir.display()))?;
            written = Some(path);
            cmd = cmd.env(var, dir.display().to_string());
        }
    }
    for var in &args.env {
        cmd = cmd.secret_env(var, token);
    }
    if let Some(r) = &account.credential.refresh_token {
        cmd = cmd.redact(r);
    }
    // exec never returns on success: the use is saved first.
    if let Err(e) = app.keeper.flush_usage().await {
        tracing::debug!(error = %e, "cannot record usage");
    }
    let Some(path) = written else {
        // exec only returns on failure.
        return Err(cmd.exec().into());
    };
    let status = cmd.run_attached().await;
    // The file holds an access token: it goes whatever became of the child.
    if let Err(e) = std::fs::remove_file(&path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("warning: cannot remove {}: {e}", path.display());
        }
    }
    let status = status?;
    if let Some(sig) = status.signal() {
        // A signal tokenkeeper has no handler for ends it as it ended the child, as after
        // exec; for one it handles, this returns and the shell's 128 + N stands.
        if let Ok(sig) = nix::sys::signal::Signal::try_from(sig) {
            if !ATTACHED_SIGNALS.contains(&sig) {
                let _ = nix::sys::signal::raise(sig);
            }
        }
    }
    Ok(exit_code_of(status))
}

/// Writes `credential`, its refresh token emptied, as the CLI's file under `dir` (created 0700),
/// where the CLI looks when `var` points at `dir`. Returns the file's path.
fn write_private_native_file(
    file: &dyn NativeFile,
    dir: &Path,
    var: &str,
    credential: &Credential,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<PathBuf> {
    private_dir(dir)?;
    let path = file.default_path(dir, &|name| (name == var).then(|| dir.display().to_string()));
    if let Some(parent) = path.parent() {
        private_dir(parent)?;
    }
    let access_only = Credential { refresh_token: Some(tokenkeeper_core::Secret::new("")), ..credential.clone() };
    let text = file.render(None, &access_only, now)?;
    write_file(&path, text.as_bytes(), &WriteOptions::default())?;
    Ok(path)
}

/// Creates `dir` (and its parents) mode 0700, and makes an existing one 0700.
fn private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}
