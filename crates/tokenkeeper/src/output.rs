//! How accounts are shown: a table for people, JSON for machines. Both carry fingerprints of
//! tokens at most, never tokens.

use chrono::{DateTime, Utc};
use serde::Serialize;

use tokenkeeper_core::status::{assess, human_duration, Assessment, Facts, Thresholds};
use tokenkeeper_core::{Account, Config};

/// One account's status, as `status --json` prints it.
#[derive(Debug, Serialize)]
pub struct AccountStatus {
    /// Account name.
    pub name: String,
    /// `own` or `follow`.
    pub mode: String,
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

/// Assesses an account for display.
pub fn account_status(config: &Config, account: &Account, now: DateTime<Utc>) -> AccountStatus {
    let facts = Facts { refresh_failing: account.last_error.is_some(), failing_sinks: Vec::new() };
    let Assessment { level, message } = assess(account, &facts, now, &thresholds(config, account));
    let left = account.credential.time_left(now);
    AccountStatus {
        name: account.name.clone(),
        mode: account.mode.to_string(),
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
    }
}

fn ago(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    match t {
        Some(t) => format!("{} ago", human_duration(now - t)),
        None => "never".into(),
    }
}

/// The status table.
pub fn status_table(rows: &[AccountStatus], now: DateTime<Utc>) -> String {
    let mut out = String::new();
    let header = ["ACCOUNT", "MODE", "STATUS", "EXPIRES IN", "RT AGE", "LAST REFRESH"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.mode.clone(),
                r.status.clone(),
                if r.expires_in_seconds > 0 { r.expires_in.clone() } else { "expired".into() },
                match r.refresh_token_age_seconds {
                    Some(s) => human_duration(chrono::Duration::seconds(s)),
                    None if !r.refreshable => "no refresh".into(),
                    None => "unknown".into(),
                },
                ago(r.last_refreshed_at, now),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cols: &[String]| {
        cols.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_owned()
    };
    out.push_str(&line(&header.map(str::to_owned)));
    out.push('\n');
    for (row, r) in cells.iter().zip(rows) {
        out.push_str(&line(row));
        out.push('\n');
        out.push_str(&format!("  {}\n", r.message));
        if let Some(e) = &r.last_error {
            out.push_str(&format!("  last error: {e}\n"));
        }
    }
    out
}
