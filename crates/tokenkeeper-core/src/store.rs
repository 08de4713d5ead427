//! The durable state of tokenkeeper, behind one trait so SQLite (embedded, the default) and
//! PostgreSQL (shared by replicas) serve the same callers.
//!
//! Every credential update is a compare-and-set on [`Account::version`]: a writer holding an
//! older version gets [`StoreError::VersionConflict`] instead of overwriting a newer token.
//! The store knows nothing of sqlx; implementations live in `tokenkeeper-store`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::account::{Account, AccountState, Binding, Mode, NewAccount};
use crate::credential::Credential;

/// What can go wrong in a store. Each variant says which action failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No account of that name.
    #[error("no account named `{0}`")]
    NotFound(String),
    /// An account of that name exists already.
    #[error("an account named `{0}` already exists")]
    AlreadyExists(String),
    /// Someone else updated the credential first.
    #[error("the credential of `{account}` changed meanwhile (expected version {expected}, found {found})")]
    VersionConflict {
        /// Account name.
        account: String,
        /// The version the writer held.
        expected: i64,
        /// The version in the store.
        found: i64,
    },
    /// The stored ciphertext could not be decrypted (wrong key, or tampered data).
    #[error("cannot decrypt the credential of `{account}`: {reason}. Was the store created with another TOKENKEEPER_KEY or key file?")]
    Decrypt {
        /// Account name.
        account: String,
        /// What failed.
        reason: String,
    },
    /// The encryption key is unusable.
    #[error("encryption key: {0}")]
    Key(String),
    /// A row held something this version cannot read.
    #[error("corrupt row for `{account}`: {reason}")]
    Corrupt {
        /// Account name (or table).
        account: String,
        /// What was wrong.
        reason: String,
    },
    /// The database itself failed.
    #[error("database error while trying to {action}")]
    Database {
        /// What we were doing.
        action: String,
        /// The driver's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A file of the store (directory, key file) could not be used.
    #[error("cannot {action} {path}")]
    Io {
        /// What we were doing.
        action: String,
        /// Which path.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Why a credential changed; recorded in the event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialChange {
    /// tokenkeeper refreshed it.
    Refreshed,
    /// Someone else refreshed it (Claude Code, another process) and we adopted theirs.
    Adopted,
    /// Imported from a file, stdin, the Keychain or a push.
    Imported,
    /// A new login.
    LoggedIn,
}

impl CredentialChange {
    /// The event kind recorded for this change.
    pub fn event_kind(self) -> EventKind {
        match self {
            CredentialChange::Refreshed => EventKind::Refreshed,
            CredentialChange::Adopted => EventKind::Adopted,
            CredentialChange::Imported => EventKind::Imported,
            CredentialChange::LoggedIn => EventKind::LoggedIn,
        }
    }
}

/// A compare-and-set update of an account's credential.
#[derive(Debug, Clone)]
pub struct CredentialUpdate {
    /// The version the writer read; the update fails if the store has another.
    pub expected_version: i64,
    /// The new credential.
    pub credential: Credential,
    /// Why it changed.
    pub change: CredentialChange,
    /// When it changed.
    pub at: DateTime<Utc>,
    /// Event detail (no secrets): fingerprints, old and new expiry.
    pub detail: String,
    /// Email learned with this credential, if any.
    pub email: Option<String>,
    /// Organization learned with this credential, if any.
    pub organization: Option<String>,
}

/// Changes to an account that are not its credential (no version check: they never carry
/// tokens, and the last writer's view of state is the right one).
#[derive(Debug, Clone, Default)]
pub struct AccountPatch {
    /// New keeper state.
    pub state: Option<AccountState>,
    /// New last error (`Some(None)` clears it).
    pub last_error: Option<Option<String>>,
    /// New mode.
    pub mode: Option<Mode>,
    /// New binding (`Some(None)` unbinds).
    pub binding: Option<Option<Binding>>,
}

/// Kinds of events in an account's history, stored and shown as the snake_case word.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::EnumIter,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum EventKind {
    /// Account created or credential imported.
    Imported,
    /// A login's code exchange stored a new credential (`tokenkeeper login`, or a login over HTTP).
    LoggedIn,
    /// Refreshed by tokenkeeper.
    Refreshed,
    /// Adopted a credential someone else refreshed.
    Adopted,
    /// A refresh failed, transiently or with the refresh token rejected (`needs login: …`); the
    /// detail says why.
    RefreshFailed,
    /// An incoming credential was refused (older or blank).
    Refused,
    /// A bound file was repaired.
    Repaired,
    /// State changed (for example to needs-login).
    StateChanged,
    /// Account removed.
    Removed,
}

impl EventKind {
    /// The string stored in the database (`refreshed`, `refresh_failed`, …).
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Parses the stored string; `None` for a word this release does not know.
    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

/// One entry of the event log. Never holds a secret (fingerprints at most).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Sequence number.
    pub id: i64,
    /// Account name.
    pub account: String,
    /// What happened.
    pub kind: EventKind,
    /// When.
    pub at: DateTime<Utc>,
    /// Details in words.
    pub detail: String,
}

/// An event to record.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Account name.
    pub account: String,
    /// What happened.
    pub kind: EventKind,
    /// When.
    pub at: DateTime<Utc>,
    /// Details in words, without secrets.
    pub detail: String,
}

/// An API key as stored: only a hash of the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// Key id (public, shown in listings).
    pub id: String,
    /// Human name.
    pub name: String,
    /// SHA-256 of the key, hex.
    pub hash: String,
    /// Scopes such as `token:read`.
    pub scopes: Vec<String>,
    /// Accounts it may touch; empty means all.
    pub accounts: Vec<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Usage counted in memory (by the hand-out path and the proxy) and flushed in batches, or
/// read back as hourly totals. One record is one (account, key, model, hour) bucket.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UsageRecord {
    /// Account name.
    pub account: String,
    /// Id of the API key the use came through (`None`: the CLI or the admin token).
    pub key_id: Option<String>,
    /// The model the proxy forwarded a request for (`None` for plain token hand-outs).
    pub model: Option<String>,
    /// The start of the UTC hour the uses fall in (minutes, seconds and below are zero).
    pub hour: DateTime<Utc>,
    /// Hand-outs or proxied requests.
    pub requests: u64,
    /// Input tokens, from the provider's own `usage` fields.
    pub input_tokens: u64,
    /// Output tokens, from the provider's own `usage` fields.
    pub output_tokens: u64,
    /// Input tokens read from the prompt cache.
    pub cache_read_tokens: u64,
    /// Input tokens written to the prompt cache.
    pub cache_creation_tokens: u64,
    /// Requests that ended in an error (of any class).
    pub errors: u64,
    /// The latest use in the bucket; the account's stored `last_used_at` never moves back.
    pub last_used_at: DateTime<Utc>,
}

impl UsageRecord {
    /// The start of the UTC hour `at` falls in.
    pub fn hour_of(at: DateTime<Utc>) -> DateTime<Utc> {
        let secs = at.timestamp().div_euclid(3600) * 3600;
        DateTime::from_timestamp(secs, 0).unwrap_or(at)
    }
}

/// A signed-in browser of the web page, as stored. Only the SHA-256 of the session cookie is
/// kept, never the cookie itself, so reading the database does not sign anybody in; the CSRF
/// token is worthless without the cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSession {
    /// SHA-256 of the cookie value, hex (the key of the row).
    pub hash: String,
    /// The CSRF token the session's forms carry.
    pub csrf: String,
    /// When it was signed in.
    pub created_at: DateTime<Utc>,
    /// When it ends; from then on [`Store::session`] no longer finds it.
    pub expires_at: DateTime<Utc>,
    /// The one-shot message for the next page, as the web page encoded it (opaque to the store).
    pub flash: Option<String>,
}

/// The answer of [`Store::take_refresh_attempt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The attempt was counted; go ahead.
    Granted,
    /// The budget is spent; the oldest attempt in the window leaves it at `until`.
    Exhausted {
        /// When the next attempt will be granted.
        until: DateTime<Utc>,
    },
}

/// The durable store. Implementations must be safe to share across tasks and processes:
/// every method is its own transaction, committed durably before it returns.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// All accounts, by name.
    async fn list_accounts(&self) -> Result<Vec<Account>, StoreError>;

    /// One account, or `None`.
    async fn get_account(&self, name: &str) -> Result<Option<Account>, StoreError>;

    /// Creates an account (version 1) and records an `imported`/`logged_in` event.
    async fn create_account(
        &self,
        new: &NewAccount,
        at: DateTime<Utc>,
        change: CredentialChange,
    ) -> Result<Account, StoreError>;

    /// Replaces the credential if the stored version is `update.expected_version`; bumps the
    /// version, sets refresh times, clears the last error, resets the state to active and
    /// records the event, all in one durable transaction.
    async fn update_credential(&self, name: &str, update: &CredentialUpdate) -> Result<Account, StoreError>;

    /// Changes state, last error, mode or binding.
    async fn patch_account(&self, name: &str, patch: &AccountPatch, at: DateTime<Utc>) -> Result<Account, StoreError>;

    /// Adds a batch of usage counted in memory (by the keeper's hand-out path) to the stored
    /// counters, in one transaction. Writes no change to the feed: a usage flush never wakes
    /// sink delivery or alerts. Accounts removed meanwhile are skipped.
    /// Adding a record to an existing bucket adds every counter; the account's own
    /// `usage.requests` and `usage.last_used_at` follow.
    async fn record_usage(&self, batch: &[UsageRecord]) -> Result<(), StoreError>;

    /// Hourly usage buckets from `since` on, optionally of one account, oldest first.
    async fn usage(&self, account: Option<&str>, since: DateTime<Utc>) -> Result<Vec<UsageRecord>, StoreError>;

    /// Takes one refresh attempt from the account's budget of `max` per rolling hour, shared
    /// by every process of the installation (a cron job that runs `refresh` every minute
    /// cannot exceed it). Atomic: two processes never both take the last attempt.
    async fn take_refresh_attempt(&self, name: &str, now: DateTime<Utc>, max: u32) -> Result<Attempt, StoreError>;

    /// A value of installation-wide state (alert state, sink and channel health, cooldowns),
    /// by key. Keys are `/`-separated words such as `alerts/state`.
    async fn get_state(&self, key: &str) -> Result<Option<serde_json::Value>, StoreError>;

    /// Sets (replaces) a value of installation-wide state. Writes no change to the feed.
    async fn put_state(&self, key: &str, value: &serde_json::Value, at: DateTime<Utc>) -> Result<(), StoreError>;

    /// Removes a value of installation-wide state. Returns whether it existed.
    async fn delete_state(&self, key: &str) -> Result<bool, StoreError>;

    /// Every value whose key starts with `prefix`, by key.
    async fn list_state(&self, prefix: &str) -> Result<Vec<(String, serde_json::Value)>, StoreError>;

    /// Seals a secret that is not a credential (a pending login's PKCE verifier) with the
    /// installation key, bound to `purpose` (the state key it is kept under), so it can live
    /// in [`Store::put_state`] and the database alone reveals nothing.
    fn seal_secret(&self, purpose: &str, secret: &crate::Secret) -> Result<String, StoreError>;

    /// Opens what [`Store::seal_secret`] sealed for the same `purpose`.
    fn open_secret(&self, purpose: &str, sealed: &str) -> Result<crate::Secret, StoreError>;

    /// Removes an account (and records a `removed` event). Returns whether it existed.
    async fn remove_account(&self, name: &str, at: DateTime<Utc>) -> Result<bool, StoreError>;

    /// Records an event.
    async fn record_event(&self, event: &NewEvent) -> Result<(), StoreError>;

    /// The newest events, newest first, optionally for one account.
    async fn events(&self, account: Option<&str>, limit: u32) -> Result<Vec<Event>, StoreError>;

    /// Stores a new API key.
    async fn create_api_key(&self, key: &ApiKey) -> Result<(), StoreError>;

    /// All API keys, including revoked ones.
    async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError>;

    /// Finds an unrevoked key by its hash.
    async fn find_api_key(&self, hash: &str) -> Result<Option<ApiKey>, StoreError>;

    /// Revokes a key by id or name. Returns whether one was revoked.
    async fn revoke_api_key(&self, id_or_name: &str, at: DateTime<Utc>) -> Result<bool, StoreError>;

    /// Stores a new web session (replacing one with the same hash, which only a repeated random
    /// value could produce). Writes no change to the feed: every replica reads sessions from
    /// the store on each request.
    async fn create_session(&self, session: &WebSession) -> Result<(), StoreError>;

    /// The session with this hash, unless it has ended by `now` (the caller's clock).
    async fn session(&self, hash: &str, now: DateTime<Utc>) -> Result<Option<WebSession>, StoreError>;

    /// Sets (`None`: clears) the session's message for the next page. Returns whether the
    /// session exists.
    async fn set_session_flash(&self, hash: &str, flash: Option<&str>) -> Result<bool, StoreError>;

    /// Takes the session's message, atomically: of two pages reading it at once, one gets it.
    async fn take_session_flash(&self, hash: &str) -> Result<Option<String>, StoreError>;

    /// Ends a session (sign-out). Returns whether it existed.
    async fn delete_session(&self, hash: &str) -> Result<bool, StoreError>;

    /// Deletes the sessions that ended by `now`, then the oldest beyond the newest `keep`.
    /// Returns how many were deleted.
    async fn prune_sessions(&self, now: DateTime<Utc>, keep: u32) -> Result<u64, StoreError>;
}
