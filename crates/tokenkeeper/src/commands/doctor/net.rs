//! Doctor's network checks: the token endpoint answers (a request that spends nothing), and,
//! with `--probe`, a real one-token Messages API call with an account's token (what
//! `claude --print 'say OK'` proves by hand).

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};

use tokenkeeper_core::config::ProviderConfig;
use tokenkeeper_core::redact;
use tokenkeeper_core::{Account, AccountState};
use tokenkeeper_provider::{ApiAccess, CredentialHeader, Provider, ProviderError};

use super::Finding;

/// `anthropic-version` of the probe request.
const ANTHROPIC_VERSION: &str = "2023-06-01";
/// `anthropic-beta` flag that lets an OAuth subscription token call the API.
const OAUTH_BETA: &str = "oauth-2025-04-20";

use tokenkeeper_core::error_chain as chain;

/// Whether the provider's token endpoint answers at all ([`Provider::probe`]: a request no
/// grant matches, so nothing is spent; any HTTP answer counts).
pub async fn token_endpoint(provider: &dyn Provider, cfg: &ProviderConfig) -> Finding {
    let id = provider.id();
    let setting = format!("[providers.{id}] token_url");
    let env_hint = if id == tokenkeeper_core::config::ANTHROPIC { " (or TOKENKEEPER_ANTHROPIC_TOKEN_URL)" } else { "" };
    match provider.probe().await {
        Ok(rtt) => Finding::ok(format!("token endpoint {} answers ({} ms)", cfg.token_url, rtt.as_millis())),
        Err(e) => Finding::fail(
            format!(
                "token endpoint {} is unreachable: {}",
                cfg.token_url,
                // The error's own sentence repeats the URL; its causes say why.
                match &e {
                    ProviderError::Unreachable { source, .. } => chain(source),
                    other => chain(other),
                }
            ),
            format!(
                "check this machine's network, DNS and proxy (`curl -sS -X POST {}`), or correct `{setting}`{env_hint}",
                cfg.token_url
            ),
        ),
    }
}

/// A one-token Messages API call with the account's access token. `None` when the account
/// has no usable token to try (its own finding already says so).
/// `access` is how the account's provider sends requests; only the Anthropic Messages API is
/// probed (another provider's API takes other requests).
pub async fn api_probe(
    access: &ApiAccess,
    cfg: &ProviderConfig,
    account: &Account,
    model: &str,
    now: DateTime<Utc>,
) -> Option<Finding> {
    let c = &account.credential;
    if c.is_blank() || c.is_expired(now) || account.state == AccountState::NeedsLogin {
        return None;
    }
    let name = &account.name;
    if !account.provider.starts_with(tokenkeeper_core::config::ANTHROPIC) {
        return None;
    }
    let url = format!("{}/v1/messages", access.base_url.trim_end_matches('/'));
    let http = match reqwest::Client::builder().timeout(cfg.timeout.min(Duration::from_secs(60))).build() {
        Ok(h) => h,
        Err(e) => {
            return Some(Finding::fail(
                format!("cannot set up an HTTP client: {}", chain(&e)),
                "check the system's TLS set-up",
            ))
        }
    };
    let body = json!({
        "model": model,
        "max_tokens": 1,
        "messages": [{"role": "user", "content": "say OK"}],
    });
    let request = http.post(&url).header("anthropic-version", ANTHROPIC_VERSION);
    let request = match access.header {
        CredentialHeader::Bearer => request.bearer_auth(c.access_token.expose()).header("anthropic-beta", OAUTH_BETA),
        CredentialHeader::XApiKey => request.header("x-api-key", c.access_token.expose()),
    };
    let sent = request
        .header(reqwest::header::USER_AGENT, format!("tokenkeeper/{} (doctor)", env!("CARGO_PKG_VERSION")))
        .json(&body)
        .send()
        .await;
    let response = match sent {
        Ok(r) => r,
        Err(e) => {
            return Some(Finding::fail(
                format!("API call with `{name}`'s token: {url} is unreachable: {}", chain(&e)),
                "check this machine's network, DNS and proxy, or correct `[providers.anthropic] api_base_url`",
            ))
        }
    };
    let status = response.status();
    let reset = response
        .headers()
        .get("anthropic-ratelimit-unified-reset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .and_then(|s| DateTime::from_timestamp(s, 0));
    // The provider's error type and message say why; they never hold the token, but scrub it
    // anyway in case an echo ever does.
    let detail = response.json::<Value>().await.ok().and_then(|v| {
        let e = v.get("error")?;
        let kind = e.get("type").and_then(Value::as_str).unwrap_or("error");
        let message = e.get("message").and_then(Value::as_str).unwrap_or("");
        Some(redact(&format!("{kind}: {message}"), [&c.access_token]))
    });
    let what = |s: &str| {
        format!(
            "API call with `{name}`'s token ({}, model {model}): {s}{}",
            c.access_token.fingerprint(),
            detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default()
        )
    };
    let refreshable = c.is_refreshable();
    Some(match status {
        s if s.is_success() => Finding::ok(what(&format!("answered {}", s.as_u16()))),
        StatusCode::UNAUTHORIZED => Finding::fail(
            what("refused with 401: the provider does not accept this token"),
            if refreshable {
                format!("`tokenkeeper refresh --force --account {name}`; if that is refused, `tokenkeeper login --account {name}`")
            } else {
                format!("`tokenkeeper login --account {name}`")
            },
        ),
        StatusCode::TOO_MANY_REQUESTS => Finding::warn(
            what("rate limited (429): the token works but the subscription's limit is reached"),
            match reset {
                Some(t) => format!(
                    "wait until {} (the announced reset), or use another account",
                    t.format("%Y-%m-%d %H:%M UTC")
                ),
                None => "wait for the limit to reset, or use another account".to_owned(),
            },
        ),
        StatusCode::FORBIDDEN => Finding::fail(
            what("refused with 403: the token lacks a scope or the subscription this needs"),
            format!("`tokenkeeper login --account {name}` (a new login gets every scope)"),
        ),
        s if s.is_server_error() || s.as_u16() == 529 => Finding::warn(
            what(&format!("the API answered {}: the provider is having trouble", s.as_u16())),
            "try again later; nothing is wrong on this side",
        ),
        s => Finding::warn(
            what(&format!("the API answered {}", s.as_u16())),
            "if the model is the problem, pass another with `--model`; otherwise read the error above",
        ),
    })
}
