//! `tokenkeeper import`: a credential from Claude Code's file, stdin, the macOS Keychain, or
//! another provider's CLI file (`--provider codex`, or detected from the file's shape).
//!
//! A provider whose CLI keeps no file of its own (a generic `[providers.NAME]` with
//! `kind = "oauth2"`) imports a token answer as its endpoint gives it:
//! `{"access_token", "refresh_token", "expires_in" (s) or "expires_at" (RFC 3339 or epoch ms)}`.
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
        Some(p) if !is_anthropic(p.id()) => match p.native_file() {
            Some(file) => {
                let c = file.parse(&text, now).with_context(|| format!("cannot import from {}", source.describe()))?;
                Read { parsed: native_parsed(c), native: Some(p.clone()) }
            }
            None => Read {
                parsed: token_answer(&text, now)
                    .with_context(|| format!("cannot import a `{}` credential from {}", p.id(), source.describe()))?,
                native: None,
            },
        },
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
        (None, Some(p)) if !is_anthropic(p.id()) => Some(p.id().to_owned()),
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
        .filter(|_| !args.no_bind && (read.native.is_some() || read.parsed.format == Format::ClaudeJson))
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

/// A token answer as an OAuth2 endpoint gives it, for providers without a CLI file. The
/// messages name the fields, never their values.
fn token_answer(text: &str, now: chrono::DateTime<chrono::Utc>) -> Result<ParsedCredential> {
    let doc: serde_json::Value = serde_json::from_str(text.trim())
        .map_err(|e| anyhow!("the input is not JSON (line {}, column {}); supply the token answer as JSON: {{\"access_token\", \"refresh_token\", \"expires_in\" or \"expires_at\"}}", e.line(), e.column()))?;
    let text_of = |k: &str| doc.get(k).and_then(serde_json::Value::as_str).map(str::trim).filter(|s| !s.is_empty());
    let access = text_of("access_token").context("`access_token` is missing or empty")?;
    let expires_at = match (doc.get("expires_at"), doc.get("expires_in").and_then(serde_json::Value::as_i64)) {
        (Some(serde_json::Value::String(t)), _) => chrono::DateTime::parse_from_rfc3339(t)
            .map(|t| t.with_timezone(&chrono::Utc))
            .context("`expires_at` is not an RFC 3339 time")?,
        (Some(serde_json::Value::Number(n)), _) => n
            .as_i64()
            .and_then(chrono::DateTime::from_timestamp_millis)
            .context("`expires_at` is not milliseconds since the epoch")?,
        (_, Some(secs)) if secs > 0 => now + chrono::Duration::seconds(secs),
        _ => anyhow::bail!("give the token's expiry: `expires_in` (seconds from now) or `expires_at`"),
    };
    let scopes = text_of("scope").map(|s| s.split_whitespace().map(str::to_owned).collect()).unwrap_or_default();
    let credential = tokenkeeper_core::Credential {
        access_token: tokenkeeper_core::Secret::new(access),
        refresh_token: text_of("refresh_token").map(tokenkeeper_core::Secret::new),
        expires_at,
        scopes,
        subscription_type: None,
        rate_limit_tier: None,
        provider_data: None,
    };
    Ok(ParsedCredential { credential, format: Format::Native, email: text_of("email").map(str::to_owned) })
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
