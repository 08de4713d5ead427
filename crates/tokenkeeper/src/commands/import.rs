//! `tokenkeeper import`: a credential from Claude Code's file, stdin, the macOS Keychain, or
//! another provider's CLI file (`--provider codex`, or detected from the file's shape).
//!
//! Detection order: Claude Code's and OpenClaw's shapes (and bare tokens, base64, API keys)
//! first, exactly as before; JSON that none of them claims is offered to each provider's
//! [`tokenkeeper_provider::NativeFile::detect`].

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};

use tokenkeeper_core::config::ANTHROPIC;
use tokenkeeper_core::formats::{parse_credential, Format, FormatError, ParsedCredential, API_KEY_PROVIDER};
use tokenkeeper_core::store::CredentialChange;
use tokenkeeper_core::{paths, Binding, BindingKind, Mode};
use tokenkeeper_keeper::{Ingest, IngestOutcome};
use tokenkeeper_provider::Provider;

use crate::app::App;
use crate::cli::{ImportArgs, ModeArg};
use crate::exit;
use crate::source::{Source, KEYCHAIN_SERVICE};

/// What was read, and as whose.
struct Read {
    parsed: ParsedCredential,
    /// `Some` when a provider's own file format read it (the account's provider, bound as
    /// `native`); `None` for the Anthropic formats.
    native: Option<Arc<dyn Provider>>,
}

pub async fn run(app: &App, args: ImportArgs) -> Result<i32> {
    let providers = app.keeper.providers();
    let chosen = match args.provider.as_deref() {
        Some(id) => Some(providers.get(id).cloned().ok_or_else(|| {
            let known: Vec<&str> = providers.iter().map(|p| p.id()).collect();
            anyhow!(
                "unknown provider `{id}`; known here: {}. Add a `[providers.{id}]` table to the configuration for another one",
                known.join(", ")
            )
        })?),
        None => None,
    };
    // A provider with a CLI file of its own (not Claude Code's) reads it; the Anthropic ids keep
    // the formats `import` always read.
    let native_of_choice = chosen.clone().filter(|p| !is_anthropic(p.id()) && p.native_file().is_some());
    let source = match (&native_of_choice, args.source.as_deref()) {
        (Some(p), None) => {
            let home = paths::home_dir().context("cannot find the home directory; name the credentials file")?;
            let file = p.native_file().map(|f| f.default_path(&home, &|n| std::env::var(n).ok()));
            Source::File(file.context("the provider keeps no CLI file; name the file to import")?)
        }
        (_, arg) => Source::from_arg(arg)?,
    };
    let text = source.read()?;
    let now = app.keeper.clock().now();
    let read = match &chosen {
        Some(p) if !is_anthropic(p.id()) => {
            let file = p.native_file().with_context(|| {
                format!("provider `{}` keeps no CLI file, so there is nothing to import from", p.id())
            })?;
            let c = file.parse(&text, now).with_context(|| format!("cannot import from {}", source.describe()))?;
            Read { parsed: native_parsed(c), native: Some(p.clone()) }
        }
        _ => match parse_credential(&text, now) {
            Ok(parsed) => Read { parsed, native: None },
            Err(FormatError::UnknownShape) if chosen.is_none() => {
                detect(app, &text, now).with_context(|| format!("cannot import from {}", source.describe()))?
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot import from {}", source.describe()))),
        },
    };
    let provider = match (&read.native, &chosen) {
        (Some(p), _) => Some(p.id().to_owned()),
        (None, Some(p)) if p.id() == API_KEY_PROVIDER || read.parsed.format == Format::ApiKey => {
            Some(API_KEY_PROVIDER.to_owned())
        }
        (None, Some(_)) => Some(ANTHROPIC.to_owned()),
        (None, None) => None,
    };
    let binding = match &source {
        Source::Stdin => None,
        Source::Keychain => Some(Binding { kind: BindingKind::Keychain, path: PathBuf::from(KEYCHAIN_SERVICE) }),
        Source::File(path) if read.native.is_some() => Some(Binding { kind: BindingKind::Native, path: path.clone() }),
        Source::File(path) => Some(Binding { kind: BindingKind::ClaudeCredentials, path: path.clone() }),
    };
    // Only a CLI's own JSON file is bound: it is the file the CLI reads and writes.
    let binding = binding
        .filter(|_| !args.no_bind && matches!(read.parsed.format, Format::ClaudeJson | Format::Native))
        .filter(|b| b.kind.is_file() || cfg!(target_os = "macos"));
    let format = read
        .native
        .as_ref()
        .and_then(|p| p.native_file())
        .map_or_else(|| read.parsed.format.describe().to_owned(), |f| f.describe().to_owned());
    let outcome = app
        .keeper
        .ingest(Ingest {
            account: args.account.clone(),
            parsed: read.parsed,
            mode: args.mode.map(|m| match m {
                ModeArg::Own => Mode::Own,
                ModeArg::Follow => Mode::Follow,
            }),
            binding,
            change: CredentialChange::Imported,
            organization: None,
            provider,
        })
        .await?;
    let a = outcome.account();
    let what = match &outcome {
        IngestOutcome::Created(_) => "imported into a new account",
        IngestOutcome::Updated(_) => "imported (newer than the stored one)",
        IngestOutcome::Unchanged(_) => "already stored (nothing changed)",
    };
    eprintln!(
        "{format} {what} `{}` (provider {}, {} mode{}); token {} valid until {}.",
        a.name,
        a.provider,
        a.mode,
        a.binding.as_ref().map(|b| format!(", bound to {}", b.path.display())).unwrap_or_default(),
        a.credential.access_token.fingerprint(),
        a.credential.expires_at.to_rfc3339()
    );
    Ok(exit::OK)
}

fn is_anthropic(id: &str) -> bool {
    id == ANTHROPIC || id == API_KEY_PROVIDER
}

fn native_parsed(c: tokenkeeper_provider::NativeCredential) -> ParsedCredential {
    ParsedCredential { credential: c.credential, format: Format::Native, email: c.email }
}

/// JSON that no Anthropic shape claims: the provider whose CLI file it looks like reads it.
fn detect(app: &App, text: &str, now: chrono::DateTime<chrono::Utc>) -> Result<Read> {
    let doc: serde_json::Value = serde_json::from_str(text.trim()).map_err(|_| FormatError::UnknownShape)?;
    let Some(p) = app.keeper.providers().detect_native(&doc) else {
        let files: Vec<String> =
            app.keeper.providers().iter().filter_map(|p| p.native_file().map(|f| f.describe().to_owned())).collect();
        return Err(anyhow!(
            "{}; nor does it look like any provider's CLI file ({}). Name the provider with --provider",
            FormatError::UnknownShape,
            files.join(", ")
        ));
    };
    let file = p.native_file().context("the detected provider keeps no CLI file")?;
    let c = file.parse(text, now)?;
    Ok(Read { parsed: native_parsed(c), native: Some(p.clone()) })
}
