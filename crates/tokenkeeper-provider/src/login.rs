//! A provider's login flow ([`LoginFlow`]): the PKCE authorize URL, reading the code that comes
//! back (pasted, or caught on a loopback redirect) and the code exchange, answered as a
//! [`TokenGrant`] already fitted to the provider (expiry, `provider_data`, email).
//!
//! Anthropic's flow is its own (see [`crate::Anthropic`]); Codex CLI's ChatGPT login and Gemini
//! CLI's Google login share [`PkceFlow`], which differs between them only in the extra
//! authorize parameters, the loopback redirect and what is read from the `id_token`.

use std::fmt;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokenkeeper_core::config::ProviderConfig;

use crate::client::{OAuthClient, TokenOutcome};
use crate::error::LoginError;
use crate::pkce::{parse_pasted_code, PastedCode, PkceLogin};
use crate::shared;

/// Where a provider lets a login's redirect land on this machine: `http://HOST:PORT/PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loopback {
    /// The host written into the redirect URI (`localhost` for Codex, `127.0.0.1` for Google).
    /// The listener always binds `127.0.0.1`.
    pub host: String,
    /// The port to bind: the provider's registered one (Codex: 1455), or 0 for any free port
    /// (Google allows any loopback port).
    pub port: u16,
    /// The redirect's path (`/auth/callback`, `/oauth2callback`).
    pub path: String,
}

impl Loopback {
    /// The redirect URI once the listener is bound to `port`.
    pub fn redirect_uri(&self, port: u16) -> String {
        format!("http://{}:{port}{}", self.host, self.path)
    }
}

/// One provider's login: everything the keeper, the CLI and the server need to log an account
/// in without knowing which provider it is.
#[async_trait::async_trait]
pub trait LoginFlow: Send + Sync + fmt::Debug {
    /// The redirect URI of a login whose code is pasted back (the page the browser lands on
    /// after sign-in; it may fail to load, its URL still holds the code).
    fn redirect_uri(&self) -> &str;

    /// The loopback redirect the provider allows, when it does.
    fn loopback(&self) -> Option<Loopback> {
        None
    }

    /// What to paste, in words, for the prompt.
    fn paste_hint(&self) -> &str;

    /// The URL the user opens for the attempt `login`, redirecting to `redirect_uri` (this
    /// flow's [`Self::redirect_uri`] or a loopback one).
    fn authorize_url(&self, login: &PkceLogin, redirect_uri: &str) -> String;

    /// Reads what came back (pasted text or the loopback request's URL) for the attempt whose
    /// state is `expected_state`.
    fn read_code(&self, input: &str, expected_state: &str) -> Result<PastedCode, LoginError>;

    /// Exchanges the code for tokens, answered at `now`.
    async fn exchange(
        &self,
        code: &PastedCode,
        login: &PkceLogin,
        redirect_uri: &str,
        now: DateTime<Utc>,
    ) -> TokenOutcome;
}

/// Reads the code of a provider that redirects with `?code=…&state=…` (Codex, Google): the
/// whole redirect URL (the state must match; an `error` in it is the provider's refusal),
/// `CODE#STATE`, or the bare code (Gemini CLI's authcode page shows only the code; the PKCE
/// verifier still binds it to this attempt).
pub fn read_redirect_code(input: &str, expected_state: &str) -> Result<PastedCode, LoginError> {
    let input = input.trim().trim_matches(|c| c == '"' || c == '\'').trim();
    if input.is_empty() {
        return Err(LoginError::Empty);
    }
    if input.starts_with("http://") || input.starts_with("https://") || input.starts_with('/') {
        let base = if input.starts_with('/') { "http://127.0.0.1" } else { "" };
        let url = url::Url::parse(&format!("{base}{input}")).map_err(|e| LoginError::BadUrl(e.to_string()))?;
        let get = |key: &str| url.query_pairs().find(|(k, _)| k == key).map(|(_, v)| v.into_owned());
        if let Some(error) = get("error") {
            // An OAuth error code is a short word (`access_denied`); keep it short all the same.
            return Err(LoginError::Denied(error.chars().take(64).collect()));
        }
        let code = get("code").filter(|c| !c.is_empty()).ok_or(LoginError::MissingCode)?;
        let state = get("state").filter(|s| !s.is_empty()).ok_or(LoginError::MissingState)?;
        if state != expected_state {
            return Err(LoginError::StateMismatch);
        }
        return Ok(PastedCode { code: tokenkeeper_core::Secret::new(code), state });
    }
    if input.contains('#') {
        return parse_pasted_code(input, expected_state);
    }
    if input.chars().any(char::is_whitespace) {
        return Err(LoginError::MissingCode);
    }
    Ok(PastedCode { code: tokenkeeper_core::Secret::new(input), state: expected_state.to_owned() })
}

/// The PKCE login of Codex CLI and Gemini CLI.
#[derive(Clone)]
pub(crate) struct PkceFlow {
    client: OAuthClient,
    cfg: ProviderConfig,
    cli: &'static str,
    extra_params: Vec<(&'static str, &'static str)>,
    loopback: Option<Loopback>,
    hint: &'static str,
    from_id_token: fn(&str, &mut Map<String, Value>),
}

impl fmt::Debug for PkceFlow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PkceFlow")
            .field("cli", &self.cli)
            .field("authorize_url", &self.cfg.authorize_url)
            .field("redirect_uri", &self.cfg.redirect_uri)
            .field("loopback", &self.loopback)
            .finish_non_exhaustive()
    }
}

/// What differs between the providers sharing [`PkceFlow`].
pub(crate) struct FlowSpec {
    /// The CLI's name, for messages.
    pub cli: &'static str,
    /// Authorize parameters beyond the standard ones.
    pub extra_params: Vec<(&'static str, &'static str)>,
    /// The loopback redirect, when allowed.
    pub loopback: Option<Loopback>,
    /// What to paste.
    pub hint: &'static str,
    /// What the provider keeps from the `id_token` beside it (Codex: the account id).
    pub from_id_token: fn(&str, &mut Map<String, Value>),
}

impl PkceFlow {
    /// The flow of `cfg`, when it has an authorize page and a redirect URI.
    pub(crate) fn new(client: &OAuthClient, cfg: &ProviderConfig, spec: FlowSpec) -> Option<PkceFlow> {
        if cfg.authorize_url.trim().is_empty() || cfg.redirect_uri.trim().is_empty() {
            return None;
        }
        Some(PkceFlow {
            client: client.clone(),
            cfg: cfg.clone(),
            cli: spec.cli,
            extra_params: spec.extra_params,
            loopback: spec.loopback,
            hint: spec.hint,
            from_id_token: spec.from_id_token,
        })
    }
}

#[async_trait::async_trait]
impl LoginFlow for PkceFlow {
    fn redirect_uri(&self) -> &str {
        &self.cfg.redirect_uri
    }

    fn loopback(&self) -> Option<Loopback> {
        self.loopback.clone()
    }

    fn paste_hint(&self) -> &str {
        self.hint
    }

    fn authorize_url(&self, login: &PkceLogin, redirect_uri: &str) -> String {
        let (base, client_id, scopes) = self.client.authorize_parts();
        let mut url = base.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", client_id)
                .append_pair("redirect_uri", redirect_uri)
                .append_pair("scope", &scopes.join(" "))
                .append_pair("code_challenge", &login.challenge)
                .append_pair("code_challenge_method", "S256");
            for (k, v) in &self.extra_params {
                q.append_pair(k, v);
            }
            q.append_pair("state", &login.state);
        }
        url.into()
    }

    fn read_code(&self, input: &str, expected_state: &str) -> Result<PastedCode, LoginError> {
        read_redirect_code(input, expected_state)
    }

    async fn exchange(
        &self,
        code: &PastedCode,
        login: &PkceLogin,
        redirect_uri: &str,
        now: DateTime<Utc>,
    ) -> TokenOutcome {
        match self.client.exchange_code_form(&code.code, &login.verifier, redirect_uri).await {
            TokenOutcome::Success(grant) => {
                let extra = |id: &str, data: &mut Map<String, Value>| (self.from_id_token)(id, data);
                TokenOutcome::Success(shared::fit(&self.cfg, grant, Map::new(), now, self.cli, &extra))
            }
            other => other,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn redirect_urls_codes_and_refusals() {
        let ok = [
            "http://localhost:1455/auth/callback?code=abc&scope=openid&state=st",
            "  'https://codeassist.google.com/authcode?state=st&code=abc&scope=x'\n",
            "/oauth2callback?code=abc&state=st",
            "abc#st",
            "abc",
        ];
        for input in ok {
            let c = read_redirect_code(input, "st").unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!((c.code.expose(), c.state.as_str()), ("abc", "st"), "{input}");
        }
        let cases = [
            ("", LoginError::Empty),
            ("http://localhost:1455/auth/callback?code=abc&state=other", LoginError::StateMismatch),
            ("http://localhost:1455/auth/callback?code=abc", LoginError::MissingState),
            ("http://localhost:1455/auth/callback?state=st", LoginError::MissingCode),
            ("abc#other", LoginError::StateMismatch),
            ("two words", LoginError::MissingCode),
            ("http://127.0.0.1:9/cb?error=access_denied&state=st", LoginError::Denied("access_denied".into())),
        ];
        for (input, want) in cases {
            assert_eq!(read_redirect_code(input, "st").err(), Some(want), "{input:?}");
        }
    }

    #[test]
    fn loopback_redirect_uri() {
        let l = Loopback { host: "127.0.0.1".into(), port: 0, path: "/oauth2callback".into() };
        assert_eq!(l.redirect_uri(4242), "http://127.0.0.1:4242/oauth2callback");
    }
}
