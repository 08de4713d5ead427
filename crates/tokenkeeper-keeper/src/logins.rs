//! Logins waiting for their code, kept in the store (installation state) so that a login
//! started on one replica can be finished on another: `POST /oauth/start` on A and
//! `/oauth/exchange-code` on B, or the web wizard behind a load balancer.
//!
//! A parked login is the JSON `{state, challenge, verifier, url, started_at, expires_at}` under
//! a state key the caller chooses (`logins/api/<state>`, `logins/web/<session hash>`); the PKCE
//! verifier is sealed with the installation key ([`Store::seal_secret`](tokenkeeper_core::Store::seal_secret)) bound to that key, so
//! the database alone cannot finish anybody's login. An expired login is deleted when read, and
//! [`Keeper::sweep_logins`] removes the rest.

use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use tokenkeeper_provider::PkceLogin;

use crate::{Keeper, KeeperError, StartedLogin};

/// A login waiting for its code.
#[derive(Debug, Clone)]
pub struct ParkedLogin {
    /// The PKCE verifier, challenge and state.
    pub login: PkceLogin,
    /// The authorize URL shown to the user.
    pub url: String,
    /// When it was started.
    pub started_at: DateTime<Utc>,
    /// When it is forgotten.
    pub expires_at: DateTime<Utc>,
    /// The provider it logs in with; `None` for a login parked by [`Keeper::park_login`]
    /// (Anthropic's).
    pub provider: Option<String>,
    /// The redirect URI of its authorize URL, which the code exchange repeats; `None` with
    /// `provider`.
    pub redirect_uri: Option<String>,
}

impl ParkedLogin {
    /// The parked login as a [`StartedLogin`] of its provider, to finish with
    /// [`Keeper::finish_provider_login`]; `None` for Anthropic's (finished with
    /// [`Keeper::finish_login`]).
    pub fn started(&self) -> Option<StartedLogin> {
        let provider = self.provider.clone()?;
        Some(StartedLogin {
            provider,
            login: self.login.clone(),
            url: self.url.clone(),
            redirect_uri: self.redirect_uri.clone().unwrap_or_default(),
        })
    }
}

#[derive(Debug, Deserialize)]
struct Stored {
    state: String,
    challenge: String,
    /// Sealed with the installation key, bound to the state key.
    verifier: String,
    url: String,
    started_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    redirect_uri: Option<String>,
}

impl Keeper {
    /// Keeps `login` under the state key `key` until `ttl` from now.
    pub async fn park_login(&self, key: &str, login: &PkceLogin, url: &str, ttl: Duration) -> Result<(), KeeperError> {
        self.park(key, login, url, None, ttl).await
    }

    /// Keeps a login of [`Keeper::start_provider_login`] under `key` until `ttl` from now,
    /// with its provider and redirect URI.
    pub async fn park_started_login(
        &self,
        key: &str,
        started: &StartedLogin,
        ttl: Duration,
    ) -> Result<(), KeeperError> {
        self.park(key, &started.login, &started.url, Some((&started.provider, &started.redirect_uri)), ttl).await
    }

    async fn park(
        &self,
        key: &str,
        login: &PkceLogin,
        url: &str,
        provider: Option<(&str, &str)>,
        ttl: Duration,
    ) -> Result<(), KeeperError> {
        let now = self.clock().now();
        // Built with `json!` (which cannot fail) in `Stored`'s field names, which reads it back.
        let value = serde_json::json!({
            "state": login.state,
            "challenge": login.challenge,
            "verifier": self.store().seal_secret(key, &login.verifier)?,
            "url": url,
            "started_at": now,
            "expires_at": now + ttl,
            "provider": provider.map(|(p, _)| p),
            "redirect_uri": provider.map(|(_, r)| r),
        });
        self.store().put_state(key, &value, now).await?;
        Ok(())
    }

    /// The login parked under `key`, unless it expired (then it is deleted).
    pub async fn parked_login(&self, key: &str) -> Result<Option<ParkedLogin>, KeeperError> {
        let Some(value) = self.store().get_state(key).await? else { return Ok(None) };
        let stored: Stored = match serde_json::from_value(value) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "dropping an unreadable pending login");
                self.store().delete_state(key).await?;
                return Ok(None);
            }
        };
        if stored.expires_at <= self.clock().now() {
            self.store().delete_state(key).await?;
            return Ok(None);
        }
        let verifier = self.store().open_secret(key, &stored.verifier)?;
        Ok(Some(ParkedLogin {
            login: PkceLogin { verifier, challenge: stored.challenge, state: stored.state },
            url: stored.url,
            started_at: stored.started_at,
            expires_at: stored.expires_at,
            provider: stored.provider,
            redirect_uri: stored.redirect_uri,
        }))
    }

    /// Forgets the login parked under `key`; whether it was there (of two replicas finishing
    /// the same login, one sees `true`).
    pub async fn unpark_login(&self, key: &str) -> Result<bool, KeeperError> {
        Ok(self.store().delete_state(key).await?)
    }

    /// The state keys of the unexpired logins parked under `prefix`, oldest first; expired ones
    /// are deleted on the way.
    pub async fn sweep_logins(&self, prefix: &str) -> Result<Vec<String>, KeeperError> {
        let now = self.clock().now();
        let mut live = Vec::new();
        for (key, value) in self.store().list_state(prefix).await? {
            match serde_json::from_value::<Stored>(value) {
                Ok(s) if s.expires_at > now => live.push((s.started_at, key)),
                _ => {
                    self.store().delete_state(&key).await?;
                }
            }
        }
        live.sort();
        Ok(live.into_iter().map(|(_, k)| k).collect())
    }
}
