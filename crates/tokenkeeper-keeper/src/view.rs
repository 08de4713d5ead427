//! One account's status as every interface shows it (CLI, HTTP API, web page, metrics): the
//! level and its sentence from `tokenkeeper_core::status`, times, and fingerprints at most.

use chrono::{DateTime, Utc};
use serde::Serialize;

use tokenkeeper_core::status::{assess, human_duration, Assessment, Facts, Level, Thresholds};
use tokenkeeper_core::{Account, Config};

use crate::schedule::{effective_lead, lead_not_shorter_than_lifetime};

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

/// Thresholds for an account's provider. The lead is the effective one
/// ([`effective_lead`]): `expiring` means the keeper is about to refresh it.
pub fn thresholds(config: &Config, account: &Account) -> Thresholds {
    let p = config.provider(&account.provider);
    let lead = effective_lead(config.keeper.lead, account);
    Thresholds {
        lead: chrono::Duration::from_std(lead).unwrap_or(chrono::Duration::MAX),
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

/// A configured `[keeper] lead` that is not shorter than an account's token lifetime. The
/// keeper refreshes such an account at half its lifetime instead (and logs it once); `doctor`
/// and `check` show this, so the configuration gets fixed rather than worked around.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeadTooLong {
    /// The account.
    pub account: String,
    /// The configured lead, in words (`10m`).
    pub lead: String,
    /// The token's lifetime (expiry minus its last refresh), in words.
    pub lifetime: String,
    /// The lead the keeper uses instead (half the lifetime), in words.
    pub effective_lead: String,
    /// A lead to set instead, as it would be written in the config (`"2m 30s"`).
    pub suggested_lead: String,
}

impl LeadTooLong {
    /// What is wrong, in one sentence naming `[keeper] lead` and the account.
    pub fn problem(&self) -> String {
        format!(
            "`[keeper] lead` ({}) is not shorter than the lifetime of account `{}`'s token ({}): \
             it is refreshed at half its lifetime ({} before expiry) instead",
            self.lead, self.account, self.lifetime, self.effective_lead
        )
    }

    /// The fix, in one sentence.
    pub fn fix(&self) -> String {
        format!(
            "set `lead` under `[keeper]` in the config (or TOKENKEEPER_LEAD) shorter than {}, \
             for example `lead = \"{}\"`",
            self.lifetime, self.suggested_lead
        )
    }
}

/// `Some` when `config`'s lead is not shorter than `account`'s token lifetime (known once the
/// token has been refreshed or adopted here; see [`crate::schedule::token_lifetime`]).
pub fn lead_too_long(config: &Config, account: &Account) -> Option<LeadTooLong> {
    let lead = config.keeper.lead;
    let life = lead_not_shorter_than_lifetime(lead, account)?;
    // Whole seconds, rounded: the lifetime is measured between two clock readings and may be a
    // few milliseconds short of what the provider issued.
    let secs = |d: std::time::Duration| (d + std::time::Duration::from_millis(500)).as_secs();
    let words =
        |d: std::time::Duration| humantime::format_duration(std::time::Duration::from_secs(secs(d))).to_string();
    let half = std::time::Duration::from_secs((secs(life) / 2).max(1));
    Some(LeadTooLong {
        account: account.name.clone(),
        lead: words(lead),
        lifetime: words(life),
        effective_lead: words(effective_lead(lead, account)),
        suggested_lead: words(half),
    })
}
