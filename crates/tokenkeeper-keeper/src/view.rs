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
    /// Provider id (`anthropic`, `anthropic-api-key`, `codex`, …).
    pub provider: String,
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
    /// When tokenkeeper (or a refresher it adopted from) last refreshed it; `None` if never.
    pub last_refreshed_at: Option<DateTime<Utc>>,
    /// Why the last refresh failed, in words and without secrets; `None` once a credential
    /// update succeeds (and before any failure).
    pub last_error: Option<String>,
    /// Fingerprint of the access token.
    pub token_fingerprint: String,
    /// Path of the file the credential is kept in step with (for the Keychain, its service
    /// name); `None` when the account is not bound.
    pub bound_file: Option<String>,
    /// OAuth scopes the current credential was granted, as the provider listed them (empty
    /// for credentials that carry none).
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
        lead: tokenkeeper_core::clock::chrono_duration(lead),
        refresh_token_warn_age: tokenkeeper_core::clock::chrono_duration(p.refresh_token_warn_age),
        refresh_token_life: tokenkeeper_core::clock::chrono_duration(p.refresh_token_life),
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
        provider: account.provider.clone(),
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
    /// The account's name, as in `tokenkeeper status`.
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

/// How far back the history that the web page draws and `GET /api/status?history=true` carries
/// reaches: one day, the span of a refresh token's three or so rotations and of a usage day.
pub const HISTORY_WINDOW: chrono::Duration = chrono::Duration::hours(24);

/// Events read at most for one history, newest first. A fleet of fifty accounts refreshing every
/// eight hours writes about 150 a day; the cap only bites when many accounts fail in a loop, and
/// then the newest failures are the ones worth drawing.
pub const HISTORY_EVENT_LIMIT: u32 = 5_000;

/// One event of an account's history (no secrets: the event log never holds any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryEvent {
    /// What happened (`refreshed`, `adopted`, `refresh_failed`, `logged_in`, …).
    pub kind: tokenkeeper_core::store::EventKind,
    /// When.
    pub at: DateTime<Utc>,
    /// In words.
    pub detail: String,
}

/// One hour of an account's usage, every API key and model added up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HourUsage {
    /// The start of the UTC hour.
    pub hour: DateTime<Utc>,
    /// Hand-outs and proxied requests.
    pub requests: u64,
    /// Requests that ended in an error.
    pub errors: u64,
    /// Input tokens (prompt cache reads and writes not included).
    pub input_tokens: u64,
    /// Output tokens, from the provider's own `usage` fields.
    pub output_tokens: u64,
    /// Input tokens read from the prompt cache.
    pub cache_read_tokens: u64,
    /// Input tokens written to the prompt cache.
    pub cache_creation_tokens: u64,
}

impl HourUsage {
    /// Every token of the hour: input, output and both kinds of cache.
    pub fn tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_creation_tokens
    }
}

/// One account's recent history: its events and its hourly usage, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AccountHistory {
    /// Events since the window's start, oldest first.
    pub events: Vec<HistoryEvent>,
    /// Hours with any use since the window's start, oldest first (hours without use are left
    /// out).
    pub usage: Vec<HourUsage>,
}

/// Every account's history over `[since, until]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct History {
    /// The window's start.
    pub since: DateTime<Utc>,
    /// The window's end (now).
    pub until: DateTime<Utc>,
    /// By account name; accounts with neither events nor use are absent.
    pub accounts: std::collections::BTreeMap<String, AccountHistory>,
}

impl History {
    /// The history of `account` (empty when it has none).
    pub fn of(&self, account: &str) -> AccountHistory {
        self.accounts.get(account).cloned().unwrap_or_default()
    }

    /// Groups the event log (any order) and usage buckets (per key and model) into each
    /// account's history over `[since, until]`.
    pub fn build(
        events: Vec<tokenkeeper_core::store::Event>,
        usage: Vec<tokenkeeper_core::store::UsageRecord>,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> History {
        let mut accounts: std::collections::BTreeMap<String, AccountHistory> = Default::default();
        for e in events.into_iter().filter(|e| e.at >= since && e.at <= until) {
            accounts.entry(e.account).or_default().events.push(HistoryEvent {
                kind: e.kind,
                at: e.at,
                detail: e.detail,
            });
        }
        // A bucket's hour may start before `since` and still hold uses inside the window.
        let first_hour = tokenkeeper_core::store::UsageRecord::hour_of(since);
        for r in usage.into_iter().filter(|r| r.hour >= first_hour && r.hour <= until) {
            let hours = &mut accounts.entry(r.account.clone()).or_default().usage;
            let h = match hours.iter_mut().find(|h| h.hour == r.hour) {
                Some(h) => h,
                None => {
                    hours.push(HourUsage { hour: r.hour, ..HourUsage::default() });
                    let last = hours.len() - 1;
                    &mut hours[last]
                }
            };
            h.requests += r.requests;
            h.errors += r.errors;
            h.input_tokens += r.input_tokens;
            h.output_tokens += r.output_tokens;
            h.cache_read_tokens += r.cache_read_tokens;
            h.cache_creation_tokens += r.cache_creation_tokens;
        }
        for a in accounts.values_mut() {
            a.events.sort_by_key(|e| e.at);
            a.usage.sort_by_key(|h| h.hour);
        }
        History { since, until, accounts }
    }

    /// Reads the last [`HISTORY_WINDOW`] before `now` from `store`: two queries, whatever the
    /// number of accounts.
    pub async fn read(
        store: &dyn tokenkeeper_core::Store,
        now: DateTime<Utc>,
    ) -> Result<History, tokenkeeper_core::StoreError> {
        let since = now - HISTORY_WINDOW;
        let events = store.events(None, HISTORY_EVENT_LIMIT).await?;
        let usage = store.usage(None, since).await?;
        Ok(History::build(events, usage, since, now))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod history_tests {
    use super::*;
    use tokenkeeper_core::store::{Event, EventKind, UsageRecord};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn history_groups_by_account_keeps_the_window_and_adds_up_hours() {
        let now = at("2026-01-02T12:30:00Z");
        let since = now - HISTORY_WINDOW;
        let ev = |id, account: &str, kind, t: &str| Event {
            id,
            account: account.into(),
            kind,
            at: at(t),
            detail: format!("#{id}"),
        };
        let events = vec![
            ev(4, "b", EventKind::RefreshFailed, "2026-01-02T10:00:00Z"),
            ev(3, "a", EventKind::Refreshed, "2026-01-02T04:00:00Z"),
            ev(2, "a", EventKind::Refreshed, "2026-01-01T20:00:00Z"),
            ev(1, "a", EventKind::LoggedIn, "2026-01-01T12:00:00Z"), // 30 min before the window
        ];
        let use_ = |account: &str, model: Option<&str>, hour: &str, requests, output| UsageRecord {
            account: account.into(),
            model: model.map(Into::into),
            hour: at(hour),
            requests,
            output_tokens: output,
            last_used_at: at(hour),
            ..UsageRecord::default()
        };
        let usage = vec![
            use_("a", Some("opus"), "2026-01-02T11:00:00Z", 3, 100),
            use_("a", None, "2026-01-02T11:00:00Z", 2, 0),
            use_("a", None, "2026-01-01T12:00:00Z", 1, 0), // the hour the window starts in
            use_("a", None, "2026-01-01T10:00:00Z", 9, 0), // before it
        ];
        let h = History::build(events, usage, since, now);
        let a = h.of("a");
        let kinds: Vec<_> = a.events.iter().map(|e| (e.kind, e.at)).collect();
        assert_eq!(
            kinds,
            [(EventKind::Refreshed, at("2026-01-01T20:00:00Z")), (EventKind::Refreshed, at("2026-01-02T04:00:00Z"))]
        );
        let hours: Vec<_> = a.usage.iter().map(|u| (u.hour, u.requests, u.tokens())).collect();
        assert_eq!(hours, [(at("2026-01-01T12:00:00Z"), 1, 0), (at("2026-01-02T11:00:00Z"), 5, 100)]);
        assert_eq!(h.of("b").events.len(), 1);
        assert!(h.of("c").events.is_empty() && h.of("c").usage.is_empty());
    }
}
