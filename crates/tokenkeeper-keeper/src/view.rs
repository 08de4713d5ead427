//! One account's status as every interface shows it (CLI, HTTP API, web page, metrics): the
//! level and its sentence from `tokenkeeper_core::status`, times, and fingerprints at most.

use chrono::{DateTime, Utc};
use serde::Serialize;

use tokenkeeper_core::status::{assess, human_duration, Assessment, Facts, Level, Thresholds};
use tokenkeeper_core::{Account, Config};

/// One account's status, as `status --json` prints it.
#[derive(Debug, Serialize)]
pub struct AccountView {
    /// Account name.
    pub name: String,
    /// `own` or `follow`.
    pub mode: String,
    /// The level, for code (serialised as `status`).
    #[serde(skip)]
    pub level: Level,
    /// Level word.
    pub status: String,
    /// What to do, in words.
    pub message: String,
    /// Email, when known.
    pub email: Option<String>,
    /// Access token expiry.
    pub expires_at: DateTime<Utc>,
    /// Seconds until expiry (negative once expired).
    pub expires_in_seconds: i64,
    /// Time left in words ("7h 05m").
    pub expires_in: String,
    /// Refresh token age in seconds, when known.
    pub refresh_token_age_seconds: Option<i64>,
    /// Whether it can be refreshed.
    pub refreshable: bool,
    /// Last refresh.
    pub last_refreshed_at: Option<DateTime<Utc>>,
    /// Last error.
    pub last_error: Option<String>,
    /// Fingerprint of the access token.
    pub token_fingerprint: String,
    /// Bound file.
    pub bound_file: Option<String>,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Organization, when known.
    pub organization: Option<String>,
    /// Requests served with this account's token.
    pub usage_count: u64,
    /// When the token was last handed out or used.
    pub last_used_at: Option<DateTime<Utc>>,
    /// When the account was created.
    pub created_at: DateTime<Utc>,
    /// When the refresh token was issued.
    pub refresh_token_issued_at: Option<DateTime<Utc>>,
    /// Sinks of this account that are failing.
    pub failing_sinks: Vec<String>,
}

/// Thresholds for an account's provider.
pub fn thresholds(config: &Config, account: &Account) -> Thresholds {
    let p = config.provider(&account.provider);
    Thresholds {
        lead: chrono::Duration::from_std(config.keeper.lead).unwrap_or(chrono::Duration::MAX),
        refresh_token_warn_age: chrono::Duration::from_std(p.refresh_token_warn_age).unwrap_or(chrono::Duration::MAX),
        refresh_token_life: chrono::Duration::from_std(p.refresh_token_life).unwrap_or(chrono::Duration::MAX),
    }
}

/// Assesses an account for display. `failing_sinks` names the account's sinks that are
/// currently failing (empty when unknown).
pub fn account_view(config: &Config, account: &Account, now: DateTime<Utc>, failing_sinks: Vec<String>) -> AccountView {
    let facts = Facts { refresh_failing: account.last_error.is_some(), failing_sinks: failing_sinks.clone() };
    let Assessment { level, message } = assess(account, &facts, now, &thresholds(config, account));
    let left = account.credential.time_left(now);
    AccountView {
        name: account.name.clone(),
        mode: account.mode.to_string(),
        level,
        status: level.as_str().to_owned(),
        message,
        email: account.email.clone(),
        expires_at: account.credential.expires_at,
        expires_in_seconds: left.num_seconds(),
        expires_in: human_duration(left),
        refresh_token_age_seconds: account
            .credential
            .is_refreshable()
            .then(|| account.refresh_token_issued_at.map(|t| (now - t).num_seconds()))
            .flatten(),
        refreshable: account.credential.is_refreshable(),
        last_refreshed_at: account.last_refreshed_at,
        last_error: account.last_error.clone(),
        token_fingerprint: account.credential.access_token.fingerprint(),
        bound_file: account.binding.as_ref().map(|b| b.path.display().to_string()),
        scopes: account.credential.scopes.clone(),
        organization: account.organization.clone(),
        usage_count: account.usage.requests,
        last_used_at: account.usage.last_used_at,
        created_at: account.created_at,
        refresh_token_issued_at: account.refresh_token_issued_at,
        failing_sinks,
    }
}
