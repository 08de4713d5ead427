//! Accounts: one login at one provider, with its credential and what we know about it.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::credential::Credential;

/// Who refreshes an account's credential. Stored, configured and printed as the lowercase word
/// (`own`, `follow`); strum and serde derive both directions from the one spelling.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    Default,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantNames,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Mode {
    /// tokenkeeper refreshes it and writes the result everywhere (including a bound file).
    #[default]
    Own,
    /// Another program (Claude Code) refreshes it; tokenkeeper only reads and propagates.
    Follow,
}

/// The state the keeper keeps for an account (the displayed level is computed from this,
/// the credential and the clock; see [`crate::status`]). Stored as the kebab-case word.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    Default,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantNames,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum AccountState {
    /// Nothing known to be wrong.
    #[default]
    Active,
    /// The provider rejected the refresh token: only a new login or import helps.
    NeedsLogin,
}

impl AccountState {
    /// The string stored in the database (`active`, `needs-login`).
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The kind of file an account is bound to, stored as the snake_case word.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::Display, strum::EnumString, strum::IntoStaticStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum BindingKind {
    /// Claude Code's `.credentials.json`.
    ClaudeCredentials,
    /// macOS Keychain item `Claude Code-credentials`.
    Keychain,
    /// The CLI file of the account's own provider (Codex's `auth.json`, Gemini CLI's
    /// `oauth_creds.json`, …), read and written through that provider's `NativeFile`.
    Native,
}

impl BindingKind {
    /// Whether the binding is a file on this host (watched, read and written back), rather
    /// than a Keychain item.
    pub fn is_file(self) -> bool {
        matches!(self, BindingKind::ClaudeCredentials | BindingKind::Native)
    }
}

/// A place an account's credential lives outside tokenkeeper, kept in step with the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// What kind of place.
    pub kind: BindingKind,
    /// The file's path (for the Keychain, the service name).
    pub path: PathBuf,
}

/// Usage counters, updated by the API and the proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Requests served with this account's token.
    pub requests: u64,
    /// When the token was last handed out or used.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// An account as stored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Account {
    /// Unique name (`main`, or the account's email).
    pub name: String,
    /// Provider id (`anthropic`).
    pub provider: String,
    /// Who refreshes it.
    pub mode: Mode,
    /// The current credential.
    pub credential: Credential,
    /// Version of the credential; every credential update is a compare-and-set on it.
    pub version: i64,
    /// Account email, when the provider said.
    pub email: Option<String>,
    /// Organization name, when the provider said.
    pub organization: Option<String>,
    /// A bound file the credential is kept in step with.
    pub binding: Option<Binding>,
    /// Keeper state.
    pub state: AccountState,
    /// When the account was created.
    pub created_at: DateTime<Utc>,
    /// When anything about it last changed.
    pub updated_at: DateTime<Utc>,
    /// When tokenkeeper (or another refresher we adopted from) last refreshed it.
    pub last_refreshed_at: Option<DateTime<Utc>>,
    /// When the current refresh token was issued (login, import or refresh).
    pub refresh_token_issued_at: Option<DateTime<Utc>>,
    /// Usage counters.
    pub usage: Usage,
    /// The last error, in words, without secrets.
    pub last_error: Option<String>,
}

/// What a caller supplies to create an account.
#[derive(Debug, Clone)]
pub struct NewAccount {
    /// Unique name.
    pub name: String,
    /// Provider id.
    pub provider: String,
    /// Who refreshes it.
    pub mode: Mode,
    /// The first credential.
    pub credential: Credential,
    /// Email, when known.
    pub email: Option<String>,
    /// Organization, when known.
    pub organization: Option<String>,
    /// Bound file, if any.
    pub binding: Option<Binding>,
    /// When its refresh token was issued, when known (otherwise now).
    pub refresh_token_issued_at: Option<DateTime<Utc>>,
}

/// Why an account name is refused by [`validate_account_name`]. The message names the rule, so
/// it can be shown as is after the place the name came from (`--account`, a config key, a form).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountNameError {
    /// Empty, or longer than 128 bytes.
    #[error("an account name must be 1 to 128 characters long")]
    Length,
    /// A character outside the allowed set.
    #[error("account name `{name}` contains `{bad}`: use letters, digits, `.`, `_`, `-`, `@` or `+`")]
    Character {
        /// The name given.
        name: String,
        /// The first character not allowed.
        bad: char,
    },
    /// Starts with `.`, which would make a hidden lock file.
    #[error("account name `{0}` must not start with `.`")]
    LeadingDot(String),
}

/// Checks an account name: letters, digits, `.`, `_`, `-`, `@`, `+`; 1 to 128 characters.
/// Names appear in file names (locks) and URLs, so nothing else is allowed.
pub fn validate_account_name(name: &str) -> Result<(), AccountNameError> {
    if name.is_empty() || name.len() > 128 {
        return Err(AccountNameError::Length);
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | '+'))) {
        return Err(AccountNameError::Character { name: name.to_owned(), bad });
    }
    if name.starts_with('.') {
        return Err(AccountNameError::LeadingDot(name.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_account_name("main").is_ok());
        assert!(validate_account_name("user+1@example.com").is_ok());
        assert_eq!(validate_account_name(""), Err(AccountNameError::Length));
        assert_eq!(validate_account_name(&"a".repeat(129)), Err(AccountNameError::Length));
        assert_eq!(
            validate_account_name("../etc"),
            Err(AccountNameError::Character { name: "../etc".into(), bad: '/' })
        );
        assert_eq!(validate_account_name("a b"), Err(AccountNameError::Character { name: "a b".into(), bad: ' ' }));
        assert_eq!(validate_account_name(".hidden"), Err(AccountNameError::LeadingDot(".hidden".into())));
        assert_eq!(
            validate_account_name("a b").unwrap_err().to_string(),
            "account name `a b` contains ` `: use letters, digits, `.`, `_`, `-`, `@` or `+`"
        );
    }

    #[test]
    fn mode_round_trip() {
        assert_eq!("own".parse::<Mode>().unwrap(), Mode::Own);
        assert_eq!(Mode::Follow.to_string(), "follow");
        assert!("both".parse::<Mode>().is_err());
    }

    #[test]
    fn serde_and_strum_spell_every_variant_the_same() {
        for m in [Mode::Own, Mode::Follow] {
            assert_eq!(serde_json::to_value(m).unwrap(), serde_json::Value::String(m.to_string()));
            assert_eq!(m.to_string().parse::<Mode>().unwrap(), m);
        }
        for st in [AccountState::Active, AccountState::NeedsLogin] {
            assert_eq!(serde_json::to_value(st).unwrap(), serde_json::Value::String(st.as_str().into()));
            assert_eq!(st.as_str().parse::<AccountState>().unwrap(), st);
        }
        assert_eq!(AccountState::NeedsLogin.as_str(), "needs-login");
        // The words existing databases hold.
        for (kind, word) in [
            (BindingKind::ClaudeCredentials, "claude_credentials"),
            (BindingKind::Keychain, "keychain"),
            (BindingKind::Native, "native"),
        ] {
            assert_eq!(<&str>::from(kind), word);
            assert_eq!(word.parse::<BindingKind>().unwrap(), kind);
            assert_eq!(serde_json::to_value(kind).unwrap(), serde_json::Value::String(word.into()));
        }
    }
}
