//! Files an account is bound to (Claude Code's `.credentials.json`): reading what is there,
//! and writing our credential back through the shared atomic-write machinery.

use std::path::Path;

use tokenkeeper_core::formats::{parse_credential, render_claude_credentials, ParsedCredential, RenderError};
use tokenkeeper_core::{Binding, BindingKind, Credential};
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
}

/// What a bound file holds right now.
#[derive(Debug)]
pub enum BoundContent {
    /// No file.
    Missing,
    /// A credential.
    Credential(Box<ParsedCredential>),
    /// Something unusable (a blank stub, half-written JSON): the reason, without content.
    Unusable(String),
}

/// Reads a bound file, on the blocking pool. A read that could not finish (a panic, the
/// runtime shutting down) counts as no file, so nothing is adopted or repaired on its account.
pub async fn read_bound(binding: &Binding, now: chrono::DateTime<chrono::Utc>) -> BoundContent {
    let owned = binding.clone();
    match unblock("read", &binding.path, move || Ok(read_bound_blocking(&owned, now))).await {
        Ok(content) => content,
        Err(e) => {
            tracing::warn!(file = %binding.path.display(), error = %e, "could not finish reading the bound file");
            BoundContent::Missing
        }
    }
}

/// Reads a bound file (blocking I/O).
fn read_bound_blocking(binding: &Binding, now: chrono::DateTime<chrono::Utc>) -> BoundContent {
    match binding.kind {
        BindingKind::ClaudeCredentials => match read_optional(&binding.path) {
            Ok(None) => BoundContent::Missing,
            Ok(Some(text)) => match parse_credential(&text, now) {
                Ok(p) => BoundContent::Credential(Box::new(p)),
                Err(e) => BoundContent::Unusable(e.to_string()),
            },
            Err(e) => BoundContent::Unusable(e.to_string()),
        },
        // Reading the Keychain means running `security`; the keeper only writes files back.
        BindingKind::Keychain => BoundContent::Missing,
    }
}

/// Writes `credential` into the bound Claude Code file, keeping every key we do not know,
/// atomically, mode 0600, on the blocking pool. Returns whether the file changed.
pub async fn write_bound(binding: &Binding, credential: &Credential) -> Result<WriteOutcome, BoundError> {
    if binding.kind != BindingKind::ClaudeCredentials {
        return Ok(WriteOutcome::Unchanged);
    }
    let (path, credential) = (binding.path.clone(), credential.clone());
    // The outer result is the task's (a panic); the inner one the write's.
    unblock("finish writing", &binding.path, move || Ok(write_claude_file(&path, &credential))).await?
}

/// Writes a Claude Code credentials file (merge, atomic, 0600).
pub fn write_claude_file(path: &Path, credential: &Credential) -> Result<WriteOutcome, BoundError> {
    let existing = read_optional(path)?;
    if let Some(text) = &existing {
        if let Ok(p) = tokenkeeper_core::formats::parse_credential(text, credential.expires_at) {
            match p.credential.compare_to(credential) {
                // Rewriting a file that already holds these tokens would only wake its watchers.
                tokenkeeper_core::Freshness::Same => return Ok(WriteOutcome::Unchanged),
                // Never regress a file either: someone wrote a newer credential there; the
                // caller adopts it on its next read.
                tokenkeeper_core::Freshness::Newer => {
                    tracing::info!(file = %path.display(), "the file holds a newer credential; not overwriting it");
                    return Ok(WriteOutcome::Unchanged);
                }
                _ => {}
            }
        }
    }
    // A half-written or stub file is replaced rather than merged: there is nothing in it to keep.
    let base = existing.as_deref().filter(|t| serde_json_is_object(t));
    let text = render_claude_credentials(base, credential)
        .map_err(|source| BoundError::Render { path: path.to_owned(), source })?;
    Ok(write_file(path, text.as_bytes(), &WriteOptions::default())?)
}

fn serde_json_is_object(text: &str) -> bool {
    matches!(serde_json::from_str::<serde_json::Value>(text), Ok(serde_json::Value::Object(_)))
}
