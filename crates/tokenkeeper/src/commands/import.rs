//! `tokenkeeper import`: a credential from Claude Code's file, stdin, or the macOS Keychain.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use tokenkeeper_core::formats::{parse_credential, Format};
use tokenkeeper_core::store::CredentialChange;
use tokenkeeper_core::{paths, Binding, BindingKind, Mode};
use tokenkeeper_keeper::{Ingest, IngestOutcome};

use crate::app::App;
use crate::cli::{ImportArgs, ModeArg};
use crate::exit;

/// The Keychain item Claude Code keeps its credential in on macOS.
const KEYCHAIN_SERVICE: &str = "Claude Code-credentials";

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn read_keychain() -> Result<String> {
    if !cfg!(target_os = "macos") {
        bail!("`import keychain` works only on macOS, where Claude Code keeps its login in the Keychain; on this system import ~/.claude/.credentials.json or pipe the JSON to `tokenkeeper import -`");
    }
    let out = std::process::Command::new("security")
        .args(["find-generic-password", "-s", KEYCHAIN_SERVICE, "-w"])
        .output()
        .context("cannot run `security` to read the Keychain")?;
    if !out.status.success() {
        bail!("the Keychain has no `{KEYCHAIN_SERVICE}` item (or access was denied); run `claude` once and log in, then retry");
    }
    String::from_utf8(out.stdout).context("the Keychain item is not text")
}

pub async fn run(app: &App, args: ImportArgs) -> Result<i32> {
    let (text, binding) = match args.source.as_deref() {
        Some("-") => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("cannot read stdin")?;
            (s, None)
        }
        Some("keychain") => {
            (read_keychain()?, Some(Binding { kind: BindingKind::Keychain, path: PathBuf::from(KEYCHAIN_SERVICE) }))
        }
        other => {
            let path = match other {
                Some(p) => paths::expand_tilde(std::path::Path::new(p)),
                None => paths::claude_credentials_file(
                    &paths::claude_config_dir(&env)
                        .context("cannot find the home directory; name the file to import")?,
                ),
            };
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!("cannot read {}; check the path and its permissions (Claude Code keeps it at ~/.claude/.credentials.json)", path.display())
            })?;
            let abs = std::path::absolute(&path).unwrap_or(path);
            (text, Some(Binding { kind: BindingKind::ClaudeCredentials, path: abs }))
        }
    };
    let parsed = parse_credential(&text, app.keeper.clock().now()).with_context(|| {
        format!("cannot import from {}", args.source.as_deref().unwrap_or("the Claude Code credentials file"))
    })?;
    // Only Claude Code's own JSON file is bound: it is the file Claude Code reads and writes.
    let binding = binding
        .filter(|_| !args.no_bind && matches!(parsed.format, Format::ClaudeJson))
        .filter(|b| b.kind == BindingKind::ClaudeCredentials || cfg!(target_os = "macos"));
    let format = parsed.format;
    let outcome = app
        .keeper
        .ingest(Ingest {
            account: args.account.clone(),
            parsed,
            mode: args.mode.map(|m| match m {
                ModeArg::Own => Mode::Own,
                ModeArg::Follow => Mode::Follow,
            }),
            binding,
            change: CredentialChange::Imported,
            organization: None,
        })
        .await?;
    let a = outcome.account();
    let what = match &outcome {
        IngestOutcome::Created(_) => "imported into a new account",
        IngestOutcome::Updated(_) => "imported (newer than the stored one)",
        IngestOutcome::Unchanged(_) => "already stored (nothing changed)",
    };
    eprintln!(
        "{} {what} `{}` ({} mode{}); token {} valid until {}.",
        format.describe(),
        a.name,
        a.mode,
        a.binding.as_ref().map(|b| format!(", bound to {}", b.path.display())).unwrap_or_default(),
        a.credential.access_token.fingerprint(),
        a.credential.expires_at.to_rfc3339()
    );
    Ok(exit::OK)
}
