//! A successful answer of the token endpoint ([`TokenGrant`]) and how it becomes a stored
//! [`Credential`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokenkeeper_core::{Credential, Secret};

/// Lifetime assumed when a successful answer has no usable `expires_in`. Short on purpose: an
/// early refresh costs little, serving a token past its real expiry breaks every client.
pub(crate) const FALLBACK_EXPIRES_IN: Duration = Duration::from_secs(3600);

/// What the token endpoint granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrant {
    /// The new access token.
    pub access_token: Secret,
    /// The new refresh token; `None` when the provider did not rotate it (keep the old one).
    pub refresh_token: Option<Secret>,
    /// Lifetime of the access token from the moment of the answer.
    pub expires_in: Duration,
    /// Granted scopes; empty when the answer did not say.
    pub scopes: Vec<String>,
    /// `account.email_address`, when given.
    pub email: Option<String>,
    /// `organization.name`, when given.
    pub organization: Option<String>,
    /// `account.uuid`, when given.
    pub account_uuid: Option<String>,
    /// The OpenID Connect `id_token` of the answer, when given (Codex, Google). A provider
    /// turns it into `provider_data`; the keeper never reads it.
    pub id_token: Option<Secret>,
    /// What the provider keeps beside the tokens after this grant (Codex and Gemini CLI: a new
    /// `id_token`), as the JSON object text of [`Credential::provider_data`]. `None` keeps the
    /// previous credential's: a provider that wants it gone says so with an empty object.
    pub provider_data: Option<Secret>,
}

impl TokenGrant {
    /// Reads a 2xx JSON answer. `None` when it has no access token: such an answer is not a
    /// grant whatever its status. Other fields are read leniently, because by the time the
    /// answer arrives the provider has already spent the old refresh token: throwing away an
    /// answer for a cosmetic defect would lose the login.
    pub(crate) fn from_json(v: &Value) -> Option<TokenGrant> {
        fn text(v: Option<&Value>) -> Option<&str> {
            v.and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
        }
        let access_token = text(v.get("access_token"))?;
        let expires_in = match v.get("expires_in") {
            Some(Value::Number(n)) => n.as_f64().filter(|s| s.is_finite() && *s > 0.0).map(Duration::from_secs_f64),
            Some(Value::String(s)) => s.trim().parse::<u64>().ok().filter(|s| *s > 0).map(Duration::from_secs),
            _ => None,
        };
        let expires_in = expires_in.unwrap_or_else(|| {
            tracing::warn!(fallback_s = FALLBACK_EXPIRES_IN.as_secs(), "token answer without a usable expires_in");
            FALLBACK_EXPIRES_IN
        });
        let scopes = match v.get("scope").or_else(|| v.get("scopes")) {
            Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        let account = v.get("account");
        let organization = v.get("organization");
        Some(TokenGrant {
            access_token: Secret::new(access_token),
            refresh_token: text(v.get("refresh_token")).map(Secret::new),
            expires_in,
            scopes,
            email: text(account.and_then(|a| a.get("email_address"))).map(str::to_owned),
            organization: text(organization.and_then(|o| o.get("name"))).map(str::to_owned),
            account_uuid: text(account.and_then(|a| a.get("uuid"))).map(str::to_owned),
            id_token: text(v.get("id_token")).map(Secret::new),
            provider_data: None,
        })
    }

    /// The credential to store, answered at `now`. A missing refresh token keeps `previous`'s
    /// (the provider did not rotate it); missing scopes keep `previous`'s; the subscription type
    /// and rate-limit tier, which the token endpoint does not report, are carried over, and so is
    /// `previous`'s provider data unless the grant brings its own.
    pub fn into_credential(self, now: DateTime<Utc>, previous: Option<&Credential>) -> Credential {
        let lifetime = tokenkeeper_core::clock::chrono_duration(self.expires_in);
        let scopes =
            if self.scopes.is_empty() { previous.map(|p| p.scopes.clone()).unwrap_or_default() } else { self.scopes };
        Credential {
            access_token: self.access_token,
            refresh_token: self.refresh_token.or_else(|| previous.and_then(|p| p.refresh_token.clone())),
            expires_at: now + lifetime,
            scopes,
            subscription_type: previous.and_then(|p| p.subscription_type.clone()),
            rate_limit_tier: previous.and_then(|p| p.rate_limit_tier.clone()),
            provider_data: self.provider_data.or_else(|| previous.and_then(|p| p.provider_data.clone())),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn previous() -> Credential {
        Credential {
            access_token: Secret::new("sk-ant-oat01-old"),
            refresh_token: Some(Secret::new("sk-ant-ort01-old")),
            expires_at: DateTime::from_timestamp(1_000, 0).unwrap_or_default(),
            scopes: vec!["user:inference".into()],
            subscription_type: Some("max".into()),
            rate_limit_tier: Some("default_claude_max_20x".into()),
            provider_data: Some(Secret::new(r#"{"id_token":"old"}"#)),
        }
    }

    #[test]
    fn full_answer_is_read() {
        let g = TokenGrant::from_json(&json!({
            "access_token": "sk-ant-oat01-new", "refresh_token": "sk-ant-ort01-new", "expires_in": 28800,
            "scope": "user:inference user:profile", "token_type": "Bearer",
            "account": {"uuid": "u-1", "email_address": "a@example.com"},
            "organization": {"uuid": "o-1", "name": "Org"},
        }))
        .unwrap();
        assert_eq!(g.access_token.expose(), "sk-ant-oat01-new");
        assert_eq!(g.refresh_token.as_ref().map(Secret::expose), Some("sk-ant-ort01-new"));
        assert_eq!(g.expires_in, Duration::from_secs(28_800));
        assert_eq!(g.scopes, ["user:inference", "user:profile"]);
        assert_eq!(g.email.as_deref(), Some("a@example.com"));
        assert_eq!(g.organization.as_deref(), Some("Org"));
        assert_eq!(g.account_uuid.as_deref(), Some("u-1"));
    }

    #[test]
    fn lenient_about_everything_but_the_access_token() {
        assert!(TokenGrant::from_json(&json!({"refresh_token": "r", "expires_in": 5})).is_none());
        assert!(TokenGrant::from_json(&json!({"access_token": "  "})).is_none());
        let g = TokenGrant::from_json(&json!({"access_token": "a", "expires_in": "60", "refresh_token": ""})).unwrap();
        assert_eq!(g.expires_in, Duration::from_secs(60));
        assert_eq!(g.refresh_token, None);
        let g = TokenGrant::from_json(&json!({"access_token": "a", "expires_in": -3})).unwrap();
        assert_eq!(g.expires_in, FALLBACK_EXPIRES_IN);
    }

    #[test]
    fn into_credential_keeps_what_the_answer_left_out() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let g = TokenGrant::from_json(&json!({"access_token": "sk-ant-oat01-new", "expires_in": 100})).unwrap();
        let c = g.into_credential(now, Some(&previous()));
        assert_eq!(c.access_token.expose(), "sk-ant-oat01-new");
        assert_eq!(c.refresh_token.as_ref().map(Secret::expose), Some("sk-ant-ort01-old"));
        assert_eq!(c.expires_at, now + chrono::Duration::seconds(100));
        assert_eq!(c.scopes, ["user:inference"]);
        assert_eq!(c.subscription_type.as_deref(), Some("max"));
        assert_eq!(c.rate_limit_tier.as_deref(), Some("default_claude_max_20x"));
        assert_eq!(c.provider_data.as_ref().map(Secret::expose), Some(r#"{"id_token":"old"}"#));

        let mut g =
            TokenGrant::from_json(&json!({"access_token": "a", "refresh_token": "r", "expires_in": 1, "scope": "x"}))
                .unwrap();
        g.provider_data = Some(Secret::new(r#"{"id_token":"new"}"#));
        let c = g.into_credential(now, Some(&previous()));
        assert_eq!(c.refresh_token.as_ref().map(Secret::expose), Some("r"));
        assert_eq!(c.provider_data.as_ref().map(Secret::expose), Some(r#"{"id_token":"new"}"#));
        assert_eq!(c.scopes, ["x"]);
        let fresh =
            TokenGrant::from_json(&json!({"access_token": "a", "expires_in": 1})).unwrap().into_credential(now, None);
        assert_eq!((fresh.refresh_token, fresh.scopes.len(), fresh.subscription_type), (None, 0, None));
    }
}
