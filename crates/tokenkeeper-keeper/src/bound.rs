//! Files an account is bound to: Claude Code's `.credentials.json` (`claude_credentials`, read
//! with every format `import` knows, as always) or its provider's own CLI file (`native`, read
//! and written through the provider's [`NativeFile`]). Reading what is there, and writing our
//! credential back through the shared atomic-write machinery without ever regressing the file.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokenkeeper_core::formats::{parse_credential, render_claude_credentials, RenderError};
use tokenkeeper_core::{Binding, BindingKind, Credential, Freshness};
use tokenkeeper_provider::{NativeCredential, NativeFile, NativeFileError, Provider};
use tokenkeeper_sync::fs::{read_optional, unblock, write_file, WriteOptions, WriteOutcome};
use tokenkeeper_sync::SyncError;

/// Why a bound file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum BoundError {
    /// Reading or writing the file failed.
    #[error(transparent)]
    File(#[from] SyncError),
    /// The existing file is something we must not overwrite.
    #[error("cannot write the credential into {path}")]
    Render {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: RenderError,
    },
    /// The provider's file format refused the write (its existing content is not JSON, …).
    #[error("cannot write the credential into {path}")]
    Native {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: NativeFileError,
    },
    /// A `native` binding of an account whose provider is unknown or keeps no CLI file.
    #[error("{path} is bound as the native file of provider `{provider}`, which has none here; add a `[providers.{provider}]` table of a kind with a CLI file, or bind the account again with `tokenkeeper import`")]
    NoNativeFile {
        /// The file.
        path: std::path::PathBuf,
        /// The account's provider id.
        provider: String,
    },
}

/// What a bound file holds right now.
#[derive(Debug)]
pub enum BoundContent {
    /// No file.
    Missing,
    /// A credential the file holds (parsed, not yet compared with the stored one).
    Credential(Box<NativeCredential>),
    /// Something unusable (a blank stub, half-written JSON): the reason, without content.
    Unusable(String),
}

/// Reads a bound file, on the blocking pool. `provider` is the account's (`None` when the
/// installation does not know it); only `native` bindings need it. A read that could not
/// finish (a panic, the runtime shutting down) counts as no file, so nothing is adopted or
/// repaired on its account.
pub async fn read_bound(binding: &Binding, provider: Option<Arc<dyn Provider>>, now: DateTime<Utc>) -> BoundContent {
    let owned = binding.clone();
    match unblock("read", &binding.path, move || Ok(read_bound_blocking(&owned, provider.as_deref(), now))).await {
        Ok(content) => content,
        Err(e) => {
            tracing::warn!(file = %binding.path.display(), error = %e, "could not finish reading the bound file");
            BoundContent::Missing
        }
    }
}

/// Reads a bound file (blocking I/O).
fn read_bound_blocking(binding: &Binding, provider: Option<&dyn Provider>, now: DateTime<Utc>) -> BoundContent {
    let text = match binding.kind {
        // Reading the Keychain means running `security`; the keeper only writes files back.
        BindingKind::Keychain => return BoundContent::Missing,
        BindingKind::ClaudeCredentials | BindingKind::Native => match read_optional(&binding.path) {
            Ok(None) => return BoundContent::Missing,
            Ok(Some(text)) => text,
            Err(e) => return BoundContent::Unusable(e.to_string()),
        },
    };
    match binding.kind {
        BindingKind::Native => match provider.and_then(|p| p.native_file()) {
            Some(file) => match file.parse(&text, now) {
                Ok(c) => BoundContent::Credential(Box::new(c)),
                Err(e) => BoundContent::Unusable(e.to_string()),
            },
            None => BoundContent::Unusable(format!(
                "the account's provider `{}` keeps no CLI file here",
                provider.map_or("(unknown)", |p| p.id())
            )),
        },
        _ => match parse_credential(&text, now) {
            Ok(p) => BoundContent::Credential(Box::new(NativeCredential { credential: p.credential, email: p.email })),
            Err(e) => BoundContent::Unusable(e.to_string()),
        },
    }
}

/// Writes `credential` into the bound file, keeping every key we do not know, atomically, mode
/// 0600, on the blocking pool; never over a newer credential. Returns whether the file changed.
pub async fn write_bound(
    binding: &Binding,
    provider: Option<Arc<dyn Provider>>,
    credential: &Credential,
) -> Result<WriteOutcome, BoundError> {
    let (path, credential) = (binding.path.clone(), credential.clone());
    // The outer result is the task's (a panic); the inner one the write's.
    match binding.kind {
        BindingKind::Keychain => Ok(WriteOutcome::Unchanged),
        BindingKind::ClaudeCredentials => {
            unblock("finish writing", &binding.path, move || Ok(write_claude_file(&path, &credential))).await?
        }
        BindingKind::Native => {
            let id = provider.as_ref().map_or_else(String::new, |p| p.id().to_owned());
            let Some(provider) = provider.filter(|p| p.native_file().is_some()) else {
                return Err(BoundError::NoNativeFile { path, provider: id });
            };
            unblock("finish writing", &binding.path, move || {
                let Some(file) = provider.native_file() else {
                    return Ok(Err(BoundError::NoNativeFile { path: path.clone(), provider: id }));
                };
                Ok(write_native_file(&path, file, &credential, Utc::now()))
            })
            .await?
        }
    }
}

/// Whether the text already in a file keeps us from writing `credential` there: it holds the
/// same tokens (rewriting would only wake its watchers) or a newer credential (never regress
/// a file either: someone wrote it there, and the caller adopts it on its next read).
fn keep_existing(on_disk: &Credential, credential: &Credential, path: &Path) -> bool {
    match on_disk.compare_to(credential) {
        Freshness::Same => true,
        Freshness::Newer => {
            tracing::info!(file = %path.display(), "the file holds a newer credential; not overwriting it");
            true
        }
        Freshness::Older | Freshness::Blank => false,
    }
}

/// Writes a Claude Code credentials file (merge, atomic, 0600).
pub fn write_claude_file(path: &Path, credential: &Credential) -> Result<WriteOutcome, BoundError> {
    let existing = read_optional(path)?;
    if let Some(text) = &existing {
        if let Ok(p) = parse_credential(text, credential.expires_at) {
            if keep_existing(&p.credential, credential, path) {
                return Ok(WriteOutcome::Unchanged);
            }
        }
    }
    // A half-written or stub file is replaced rather than merged: there is nothing in it to keep.
    let base = existing.as_deref().filter(|t| is_json_object(t));
    let text = render_claude_credentials(base, credential)
        .map_err(|source| BoundError::Render { path: path.to_owned(), source })?;
    Ok(write_file(path, text.as_bytes(), &WriteOptions::default())?)
}

/// Writes a provider's CLI file through its [`NativeFile`] (merge, atomic, 0600), under the
/// same never-regress rule as Claude Code's file.
pub fn write_native_file(
    path: &Path,
    file: &dyn NativeFile,
    credential: &Credential,
    now: DateTime<Utc>,
) -> Result<WriteOutcome, BoundError> {
    let existing = read_optional(path)?;
    if let Some(text) = &existing {
        if let Ok(on_disk) = file.parse(text, now) {
            if keep_existing(&on_disk.credential, credential, path) {
                return Ok(WriteOutcome::Unchanged);
            }
        }
    }
    let base = existing.as_deref().filter(|t| is_json_object(t));
    let text =
        file.render(base, credential, now).map_err(|source| BoundError::Native { path: path.to_owned(), source })?;
    Ok(write_file(path, text.as_bytes(), &WriteOptions::default())?)
}

fn is_json_object(text: &str) -> bool {
    matches!(serde_json::from_str::<serde_json::Value>(text), Ok(serde_json::Value::Object(_)))
}
