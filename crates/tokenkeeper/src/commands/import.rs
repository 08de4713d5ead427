//! `tokenkeeper import`: a credential from Claude Code's file, stdin, or the macOS Keychain.

use std::path::PathBuf;

use anyhow::{Context, Result};

use tokenkeeper_core::formats::{parse_credential, Format};
use tokenkeeper_core::store::CredentialChange;
use tokenkeeper_core::{Binding, BindingKind, Mode};
use tokenkeeper_keeper::{Ingest, IngestOutcome};

use crate::app::App;
use crate::cli::{ImportArgs, ModeArg};
use crate::exit;
use crate::source::{Source, KEYCHAIN_SERVICE};

pub async fn run(app: &App, args: ImportArgs) -> Result<i32> {
    let source = Source::from_arg(args.source.as_deref())?;
    let text = source.read()?;
    let binding = match &source {
        Source::Stdin => None,
        Source::Keychain => Some(Binding { kind: BindingKind::Keychain, path: PathBuf::from(KEYCHAIN_SERVICE) }),
        Source::File(path) => Some(Binding { kind: BindingKind::ClaudeCredentials, path: path.clone() }),
    };
    let parsed = parse_credential(&text, app.keeper.clock().now())
        .with_context(|| format!("cannot import from {}", source.describe()))?;
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
