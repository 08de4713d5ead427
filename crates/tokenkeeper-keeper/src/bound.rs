//! Files an account is bound to (Claude Code's `.credentials.json`): reading what is there,
//! and writing our credential back through the shared atomic-write machinery.

use std::path::Path;

use tokenkeeper_core::formats::{parse_credential, render_claude_credentials, ParsedCredential, RenderError};
use tokenkeeper_core::{Binding, BindingKind, Credential};
use tokenkeeper_sync::fs::{read_optional, write_file, WriteOptions, WriteOutcome};
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

/// Reads a bound file.
pub fn read_bound(binding: &Binding, now: chrono::DateTime<chrono::Utc>) -> BoundContent {
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
/// atomically, mode 0600. Returns whether the file changed.
pub fn write_bound(binding: &Binding, credential: &Credential) -> Result<WriteOutcome, BoundError> {
    if binding.kind != BindingKind::ClaudeCredentials {
        return Ok(WriteOutcome::Unchanged);
    }
    write_claude_file(&binding.path, credential)
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
