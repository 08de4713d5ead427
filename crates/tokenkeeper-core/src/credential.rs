//! An OAuth credential and the never-regress rule that decides whether an incoming credential
//! may replace a stored one.

use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;

use crate::secret::Secret;

/// The scope without which Claude Code refuses to use (or save) a credential.
pub const SCOPE_INFERENCE: &str = "user:inference";

/// Scopes assumed when a source gives none (Claude Code's own set for a subscription login).
pub const DEFAULT_SCOPES: &[&str] = &["user:inference", "user:profile"];

/// How long a `claude setup-token` long-lived token lives when nothing says otherwise.
pub const LONG_LIVED_TOKEN_LIFETIME_DAYS: i64 = 365;

/// One login's tokens. `Debug` never shows the token values.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Credential {
    /// The bearer token for API calls (`sk-ant-oat01-…`).
    pub access_token: Secret,
    /// The single-use refresh token (`sk-ant-ort01-…`); absent for long-lived setup tokens.
    pub refresh_token: Option<Secret>,
    /// When the access token stops working.
    pub expires_at: DateTime<Utc>,
    /// OAuth scopes granted.
    pub scopes: Vec<String>,
    /// Subscription type reported by Claude Code (`max`, `pro`, …), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_type: Option<String>,
    /// Rate-limit tier reported by Claude Code, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_tier: Option<String>,
    /// What a provider keeps beside the tokens and needs again to write its CLI's file (Codex
    /// and Gemini CLI: the `id_token`; Codex: the `account_id`): a JSON object only that
    /// provider reads. Sealed with the tokens in the store, since an `id_token` is a bearer
    /// of identity; `None` for Anthropic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_data: Option<Secret>,
}

/// What the never-regress rule decided about an incoming credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Newer than the stored one: adopt it.
    Newer,
    /// The same tokens as the stored one: nothing to do.
    Same,
    /// Older than (or as old as, with other tokens) the stored one: refuse it.
    Older,
    /// A blank stub (empty access token or no expiry): refuse it.
    Blank,
}

impl Credential {
    /// Whether this is a blank stub, like the one a Claude Code process that lost a refresh race
    /// writes (empty tokens, `expiresAt: 0`).
    pub fn is_blank(&self) -> bool {
        self.access_token.is_empty() || self.expires_at.timestamp_millis() <= 0
    }

    /// Whether the access token is expired at `now`.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at <= now
    }

    /// Time left until expiry (negative once expired).
    pub fn time_left(&self, now: DateTime<Utc>) -> Duration {
        self.expires_at - now
    }

    /// Whether the access token is inside the lead time (or expired): time to refresh.
    pub fn needs_refresh(&self, now: DateTime<Utc>, lead: Duration) -> bool {
        self.expires_at - lead <= now
    }

    /// Whether this credential can be refreshed at all.
    pub fn is_refreshable(&self) -> bool {
        self.refresh_token.as_ref().is_some_and(|r| !r.is_empty())
    }

    /// Whether the scopes allow inference; Claude Code ignores a credential without it.
    pub fn has_inference_scope(&self) -> bool {
        self.scopes.iter().any(|s| s == SCOPE_INFERENCE)
    }

    /// An incoming credential (`self`) that carries no refresh token, completed with the
    /// stored one's: a refresh token is never lost to a source that leaves it out (Google's
    /// refresh answers, and so Gemini CLI's `oauth_creds.json` after one; a pasted bare access
    /// token). Call it before [`Credential::compare_to`], so a re-read that only dropped the
    /// refresh token is `Same`.
    pub fn keeping_refresh_token_of(mut self, stored: &Credential) -> Credential {
        if !self.is_refreshable() && stored.is_refreshable() {
            self.refresh_token = stored.refresh_token.clone();
        }
        self
    }

    /// The never-regress rule: compares an incoming credential (`self`) with the stored one.
    ///
    /// A credential is newer when it expires later. The same access token is `Same` even if
    /// metadata differs. A different token with the same or an earlier expiry is `Older`:
    /// when in doubt, keep what we have, since a wrong adoption can lose a live refresh token.
    pub fn compare_to(&self, stored: &Credential) -> Freshness {
        if self.is_blank() {
            return Freshness::Blank;
        }
        if self.access_token == stored.access_token && self.refresh_token == stored.refresh_token {
            return Freshness::Same;
        }
        if stored.is_blank() || self.expires_at > stored.expires_at {
            Freshness::Newer
        } else {
            Freshness::Older
        }
    }

    /// Scopes to write to a file Claude Code reads: never empty, so Claude Code accepts it.
    pub fn scopes_for_writing(&self) -> Vec<String> {
        if self.scopes.is_empty() {
            DEFAULT_SCOPES.iter().map(|s| (*s).to_owned()).collect()
        } else {
            self.scopes.clone()
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn cred(access: &str, refresh: Option<&str>, expires_ms: i64) -> Credential {
        Credential {
            access_token: Secret::new(access),
            refresh_token: refresh.map(Secret::new),
            expires_at: DateTime::from_timestamp_millis(expires_ms).unwrap(),
            scopes: vec!["user:inference".into()],
            subscription_type: None,
            rate_limit_tier: None,
            provider_data: None,
        }
    }

    #[test]
    fn never_regress_rule() {
        let stored = cred("a1", Some("r1"), 1_000_000);
        assert_eq!(cred("a2", Some("r2"), 2_000_000).compare_to(&stored), Freshness::Newer);
        assert_eq!(cred("a0", Some("r0"), 500_000).compare_to(&stored), Freshness::Older);
        assert_eq!(cred("a9", Some("r9"), 1_000_000).compare_to(&stored), Freshness::Older);
        assert_eq!(cred("a1", Some("r1"), 1_000_000).compare_to(&stored), Freshness::Same);
        assert_eq!(cred("", Some(""), 0).compare_to(&stored), Freshness::Blank);
        assert_eq!(cred("a3", Some("r3"), 0).compare_to(&stored), Freshness::Blank);
    }

    #[test]
    fn anything_real_replaces_a_blank_stored_credential() {
        let stored = cred("", None, 0);
        assert_eq!(cred("a", Some("r"), 5).compare_to(&stored), Freshness::Newer);
    }

    #[test]
    fn lead_time_arithmetic() {
        let c = cred("a", Some("r"), 10 * 3_600_000);
        let at = |h: i64| DateTime::from_timestamp_millis(h * 3_600_000).unwrap();
        assert!(!c.needs_refresh(at(9) - Duration::minutes(31), Duration::minutes(30)));
        assert!(c.needs_refresh(at(9) + Duration::minutes(31), Duration::minutes(30)));
        assert!(c.is_expired(at(10)));
        assert_eq!(c.time_left(at(8)), Duration::hours(2));
    }

    #[test]
    fn writing_always_includes_scopes() {
        let mut c = cred("a", None, 5);
        c.scopes.clear();
        assert!(c.scopes_for_writing().iter().any(|s| s == SCOPE_INFERENCE));
    }
}
