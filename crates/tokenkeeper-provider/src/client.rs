//! [`OAuthClient`]: the token endpoint's client, and the classification of its answers into
//! [`TokenOutcome`]s.

use std::fmt;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE, LOCATION, RETRY_AFTER, USER_AGENT};
use reqwest::StatusCode;
use serde_json::Value;
use tokenkeeper_core::config::{ProviderConfig, ProviderKind, TokenBody};
use tokenkeeper_core::Secret;

use crate::error::ProviderError;
use crate::grant::TokenGrant;
use crate::pkce::{PastedCode, PkceLogin};

/// How many redirects within the token endpoint's own origin are followed.
const MAX_SAME_ORIGIN_REDIRECTS: usize = 3;

/// What a 404 from Anthropic's old token endpoint means, added to the reason of a 404 for
/// Anthropic's kind only.
const ANTHROPIC_404_HINT: &str = " console.anthropic.com no longer serves it";

/// Longest provider message quoted in a reason.
const MAX_DETAIL_CHARS: usize = 300;

/// OAuth error codes that mean the login itself is dead: only a new login helps. Providers add
/// their own (`[providers.<id>] rejection_codes`; Codex's `refresh_token_reused`).
const REJECTION_CODES: &[&str] = &[
    "invalid_grant",
    "invalid_client",
    "unauthorized_client",
    "access_denied",
    "invalid_scope",
    "revoked",
    "token_revoked",
    "authentication_error",
    "permission_error",
];

/// What a token request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenOutcome {
    /// New tokens.
    Success(TokenGrant),
    /// The provider refused the grant (`invalid_grant`, `invalid_client`, a revoked login, any
    /// JSON 401/403): the account needs a new login; retrying cannot help.
    Rejected {
        /// HTTP status and the provider's `error`/`error_description`.
        reason: String,
    },
    /// `429`: wait before the next request.
    RateLimited {
        /// From `Retry-After` (seconds or an HTTP date), else from
        /// `anthropic-ratelimit-unified-reset`; `None` when the answer did not say.
        retry_after: Option<Duration>,
        /// HTTP status and the provider's message.
        reason: String,
    },
    /// Anything that may pass: 5xx, a network error or timeout, an HTML page (Cloudflare), an
    /// answer without tokens, a 404 from a wrong endpoint. Back off and retry.
    Transient {
        /// What happened.
        reason: String,
    },
}

impl TokenOutcome {
    /// A short name of the kind of outcome, for metrics and logs: `success`, `rejected`,
    /// `rate_limited` or `transient`.
    pub fn kind(&self) -> &'static str {
        match self {
            TokenOutcome::Success(_) => "success",
            TokenOutcome::Rejected { .. } => "rejected",
            TokenOutcome::RateLimited { .. } => "rate_limited",
            TokenOutcome::Transient { .. } => "transient",
        }
    }
}

impl fmt::Display for TokenOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenOutcome::Success(g) => {
                write!(f, "new access token {} valid for {}s", g.access_token, g.expires_in.as_secs())?;
                match &g.refresh_token {
                    Some(r) => write!(f, ", new refresh token {r}"),
                    None => f.write_str(", refresh token not rotated"),
                }
            }
            TokenOutcome::Rejected { reason } => write!(f, "rejected by the provider: {reason}"),
            TokenOutcome::RateLimited { retry_after: Some(d), reason } => {
                write!(f, "rate limited, retry after {}s: {reason}", d.as_secs())
            }
            TokenOutcome::RateLimited { retry_after: None, reason } => write!(f, "rate limited: {reason}"),
            TokenOutcome::Transient { reason } => write!(f, "transient failure: {reason}"),
        }
    }
}

/// The client of one provider's token endpoint. Cheap to clone (the HTTP client is shared).
#[derive(Debug, Clone)]
pub struct OAuthClient {
    http: reqwest::Client,
    token_url: String,
    authorize_url: url::Url,
    redirect_uri: String,
    client_id: String,
    client_secret: Option<Secret>,
    scopes: Vec<String>,
    timeout: Duration,
    body: TokenBody,
    rejection_codes: Vec<String>,
    not_found_hint: &'static str,
}

fn check_url(key: &'static str, value: &str) -> Result<url::Url, ProviderError> {
    let invalid = |message: String| ProviderError::InvalidUrl { key, url: value.to_owned(), message };
    let url = url::Url::parse(value).map_err(|e| invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("only http and https URLs are supported".into()));
    }
    Ok(url)
}

impl OAuthClient {
    /// A client for the endpoints in `cfg`, with `cfg.timeout` per request, its body encoding
    /// and its extra rejection codes. The client secret is `cfg.client_secret` as written; a
    /// provider that allows it from a file or the environment resolves it and sets it with
    /// [`OAuthClient::with_client_secret`]. Redirects are followed only within the token
    /// endpoint's own origin, so a token is never re-sent to another host. `authorize_url` and
    /// `redirect_uri` may be empty for a provider without a login flow.
    pub fn new(cfg: &ProviderConfig) -> Result<Self, ProviderError> {
        check_url("token_url", &cfg.token_url)?;
        let authorize_url = if cfg.authorize_url.is_empty() {
            check_url("token_url", &cfg.token_url)?
        } else {
            check_url("authorize_url", &cfg.authorize_url)?
        };
        if !cfg.redirect_uri.is_empty() {
            check_url("redirect_uri", &cfg.redirect_uri)?;
        }
        let policy = reqwest::redirect::Policy::custom(|attempt| {
            let same_origin = attempt.previous().first().is_some_and(|first| first.origin() == attempt.url().origin());
            if same_origin && attempt.previous().len() <= MAX_SAME_ORIGIN_REDIRECTS {
                attempt.follow()
            } else {
                attempt.stop()
            }
        });
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .redirect(policy)
            .build()
            .map_err(ProviderError::Client)?;
        Ok(Self {
            http,
            token_url: cfg.token_url.clone(),
            authorize_url,
            redirect_uri: cfg.redirect_uri.clone(),
            client_id: cfg.client_id.clone(),
            client_secret: cfg.client_secret.clone(),
            scopes: cfg.scopes.clone(),
            timeout: cfg.timeout,
            body: cfg.body,
            rejection_codes: cfg.rejection_codes.clone(),
            not_found_hint: if cfg.kind == ProviderKind::Anthropic { ANTHROPIC_404_HINT } else { "" },
        })
    }

    /// The same client with another client secret (`None`: send none).
    pub fn with_client_secret(mut self, secret: Option<Secret>) -> Self {
        self.client_secret = secret;
        self
    }

    /// The redirect URI of the login.
    pub fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    /// The token endpoint this client talks to.
    pub fn token_url(&self) -> &str {
        &self.token_url
    }

    /// Spends `refresh_token` for a new pair: `grant_type=refresh_token`, `refresh_token`,
    /// `client_id`, the client secret when there is one, in the configured encoding. `scopes`
    /// are sent space-joined as `scope` (left out when empty), as Claude Code does; pass none
    /// for a provider whose CLI sends none.
    pub async fn refresh(&self, refresh_token: &Secret, scopes: &[String]) -> TokenOutcome {
        tracing::debug!(refresh_token = %refresh_token.fingerprint(), ?scopes, body = %self.body, "refreshing");
        let joined = scopes.join(" ");
        let mut fields: Vec<(&str, &str)> = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose()),
            ("client_id", &self.client_id),
        ];
        if let Some(secret) = &self.client_secret {
            fields.push(("client_secret", secret.expose()));
        }
        if !scopes.is_empty() {
            fields.push(("scope", &joined));
        }
        let mut secrets = vec![refresh_token];
        secrets.extend(self.client_secret.as_ref());
        self.request("refresh", &fields, &secrets).await
    }

    /// Exchanges the pasted authorization code of the login attempt `login` for a pair.
    pub async fn exchange_code(&self, pasted: &PastedCode, login: &PkceLogin) -> TokenOutcome {
        tracing::debug!(code = %pasted.code.fingerprint(), "exchanging an authorization code");
        let fields = [
            ("grant_type", "authorization_code"),
            ("code", pasted.code.expose()),
            ("state", pasted.state.as_str()),
            ("client_id", self.client_id.as_str()),
            ("redirect_uri", self.redirect_uri.as_str()),
            ("code_verifier", login.verifier.expose()),
        ];
        self.request("code exchange", &fields, &[&pasted.code, &login.verifier]).await
    }

    /// Exchanges an authorization code the way Codex CLI and google-auth-library do: a form
    /// body (whatever the refresh encoding) of `grant_type=authorization_code`, `code`,
    /// `redirect_uri`, `client_id`, the client secret when there is one, and `code_verifier`;
    /// no `state`.
    pub async fn exchange_code_form(&self, code: &Secret, verifier: &Secret, redirect_uri: &str) -> TokenOutcome {
        tracing::debug!(code = %code.fingerprint(), "exchanging an authorization code (form body)");
        let mut fields = vec![
            ("grant_type", "authorization_code"),
            ("code", code.expose()),
            ("redirect_uri", redirect_uri),
            ("client_id", self.client_id.as_str()),
        ];
        if let Some(secret) = &self.client_secret {
            fields.push(("client_secret", secret.expose()));
        }
        fields.push(("code_verifier", verifier.expose()));
        let mut secrets = vec![code, verifier];
        secrets.extend(self.client_secret.as_ref());
        self.request_as(TokenBody::Form, "code exchange", &fields, &secrets).await
    }

    /// The configured authorize page, the client id and the scopes, for a provider building
    /// its own authorize URL.
    pub(crate) fn authorize_parts(&self) -> (&url::Url, &str, &[String]) {
        (&self.authorize_url, &self.client_id, &self.scopes)
    }

    /// The URL the user opens to log in, for the attempt `login`.
    pub fn authorize_url(&self, login: &PkceLogin) -> String {
        let mut url = self.authorize_url.clone();
        url.query_pairs_mut()
            .append_pair("code", "true")
            .append_pair("client_id", &self.client_id)
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("scope", &self.scopes.join(" "))
            .append_pair("code_challenge", &login.challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("state", &login.state);
        url.into()
    }

    /// Checks that the token endpoint answers, without spending anything: posts an empty body
    /// (`{}`, or an empty form), which no grant can match. Any HTTP answer (a 400 included)
    /// counts as reachable. Returns the round-trip time.
    pub async fn probe(&self) -> Result<Duration, ProviderError> {
        let started = Instant::now();
        let response = self
            .encode(self.http.post(&self.token_url).header(USER_AGENT, user_agent()), &[])
            .send()
            .await
            .map_err(|source| ProviderError::Unreachable { url: self.token_url.clone(), source })?;
        let elapsed = started.elapsed();
        tracing::debug!(status = %response.status(), elapsed_ms = elapsed.as_millis() as u64, "token endpoint probed");
        Ok(elapsed)
    }

    /// `fields` as the request's body: a JSON object of strings, or a form.
    fn encode(&self, request: reqwest::RequestBuilder, fields: &[(&str, &str)]) -> reqwest::RequestBuilder {
        encode_as(self.body, request, fields)
    }

    /// Posts `fields` to the token endpoint in the configured encoding and classifies the
    /// answer. `secrets` are the values in the body, scrubbed from any reason in case the
    /// provider echoes them.
    async fn request(&self, what: &'static str, fields: &[(&str, &str)], secrets: &[&Secret]) -> TokenOutcome {
        self.request_as(self.body, what, fields, secrets).await
    }

    /// [`Self::request`] in the encoding `body`.
    async fn request_as(
        &self,
        body: TokenBody,
        what: &'static str,
        fields: &[(&str, &str)],
        secrets: &[&Secret],
    ) -> TokenOutcome {
        let started = Instant::now();
        let sent = encode_as(
            body,
            self.http.post(&self.token_url).header(USER_AGENT, user_agent()).header(ACCEPT, "application/json"),
            fields,
        )
        .send()
        .await;
        self.classify_sent(sent, started, what, secrets).await
    }
}

/// `fields` as a request's body in the encoding `body`: a JSON object of strings, or a form.
fn encode_as(body: TokenBody, request: reqwest::RequestBuilder, fields: &[(&str, &str)]) -> reqwest::RequestBuilder {
    {
        match body {
            TokenBody::Json => {
                let body: serde_json::Map<String, Value> =
                    fields.iter().map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned()))).collect();
                request.json(&body)
            }
            TokenBody::Form => request.form(fields),
        }
    }
}

impl OAuthClient {
    /// Classifies what the token endpoint answered (or why it did not), scrubbing `secrets`
    /// from any reason, and logs the outcome without secrets.
    async fn classify_sent(
        &self,
        sent: Result<reqwest::Response, reqwest::Error>,
        started: Instant,
        what: &'static str,
        secrets: &[&Secret],
    ) -> TokenOutcome {
        let outcome = match sent {
            Ok(response) => {
                let status = response.status();
                let headers = response.headers().clone();
                match response.bytes().await {
                    Ok(bytes) => {
                        classify_with(status, &headers, &bytes, Utc::now(), &self.rejection_codes, self.not_found_hint)
                    }
                    Err(e) => TokenOutcome::Transient {
                        reason: format!("HTTP {status}, then reading the answer failed: {}", self.describe(&e)),
                    },
                }
            }
            Err(e) => {
                TokenOutcome::Transient { reason: format!("no answer from the token endpoint: {}", self.describe(&e)) }
            }
        };
        let outcome = scrub(outcome, secrets);
        match &outcome {
            TokenOutcome::Success(g) => tracing::debug!(
                what,
                access_token = %g.access_token.fingerprint(),
                refresh_token = ?g.refresh_token.as_ref().map(Secret::fingerprint),
                expires_in_s = g.expires_in.as_secs(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "token endpoint granted"
            ),
            other => tracing::debug!(
                what,
                kind = other.kind(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "token endpoint refused: {other}"
            ),
        }
        outcome
    }

    /// A network error in words, with its causes. reqwest's messages name the URL (the token
    /// endpoint, no secret) and never the body.
    fn describe(&self, e: &reqwest::Error) -> String {
        if e.is_timeout() {
            return format!("timed out after {}s ({})", self.timeout.as_secs_f64(), self.token_url);
        }
        // reqwest's own message is only "error sending request"; the cause (refused, DNS,
        // TLS) is in the chain.
        tokenkeeper_core::error_text::error_chain(e)
    }
}

fn user_agent() -> String {
    format!("tokenkeeper/{}", env!("CARGO_PKG_VERSION"))
}

/// Replaces any of `secrets` found in a reason by its fingerprint.
fn scrub(outcome: TokenOutcome, secrets: &[&Secret]) -> TokenOutcome {
    let clean = |reason: String| {
        secrets.iter().filter(|s| !s.is_empty()).fold(reason, |r, s| r.replace(s.expose(), &s.fingerprint()))
    };
    match outcome {
        TokenOutcome::Rejected { reason } => TokenOutcome::Rejected { reason: clean(reason) },
        TokenOutcome::RateLimited { retry_after, reason } => {
            TokenOutcome::RateLimited { retry_after, reason: clean(reason) }
        }
        TokenOutcome::Transient { reason } => TokenOutcome::Transient { reason: clean(reason) },
        success => success,
    }
}

/// Whether an answer is an HTML page (Cloudflare's challenge and error pages are).
fn is_html(headers: &HeaderMap, body: &[u8]) -> bool {
    let declared = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("html"));
    let text = String::from_utf8_lossy(&body[..body.len().min(64)]);
    declared || text.trim_start().starts_with('<')
}

/// The provider's `error` code and message, from the OAuth shape
/// (`{"error":"invalid_grant","error_description":"…"}`), Anthropic's API shape
/// (`{"type":"error","error":{"type":"…","message":"…"}}`) or OpenAI's
/// (`{"error":{"message":"…","type":"invalid_request_error","code":"refresh_token_reused"}}`,
/// where `code` is the precise one), or a bare top-level `code`.
fn error_detail(v: &Value) -> (Option<String>, Option<String>) {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    match v.get("error") {
        Some(Value::String(code)) => {
            (Some(code.clone()), text(v.get("error_description")).or_else(|| text(v.get("message"))))
        }
        Some(obj @ Value::Object(_)) => {
            (text(obj.get("code")).or_else(|| text(obj.get("type"))), text(obj.get("message")))
        }
        _ => (text(v.get("code")), text(v.get("error_description")).or_else(|| text(v.get("message")))),
    }
}

/// Whether a word of a provider's message looks like a token: Anthropic's `sk-ant-…`, a JWT
/// (`eyJ…` with dots: Codex's tokens), Google's access (`ya29.…`) and refresh (`1//…`) tokens.
fn looks_like_token(word: &str) -> bool {
    let w = word.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '/' && c != '.');
    word.contains("sk-ant-")
        || (w.starts_with("eyJ") && w.contains('.'))
        || w.starts_with("ya29.")
        || (w.starts_with("1//") && w.len() > 8)
}

/// Shortens a provider message and hides anything shaped like a token. The provider's messages
/// carry no secrets, but a reason ends up in logs, alerts and the web page: take no chances.
fn sanitize(message: &str) -> String {
    let words: Vec<&str> =
        message.split_whitespace().map(|w| if looks_like_token(w) { "[token]" } else { w }).collect();
    let joined = words.join(" ");
    if joined.chars().count() > MAX_DETAIL_CHARS {
        let cut: String = joined.chars().take(MAX_DETAIL_CHARS).collect();
        format!("{cut}…")
    } else {
        joined
    }
}

/// `HTTP 400 Bad Request: invalid_grant (Refresh token not found or invalid)`, or the status
/// with a description of the body when it is no JSON error.
fn describe_answer(status: StatusCode, headers: &HeaderMap, body: &[u8], json: Option<&Value>) -> String {
    let head = format!("HTTP {status}");
    if let Some(v) = json {
        match error_detail(v) {
            (Some(code), Some(msg)) => return format!("{head}: {} ({})", sanitize(&code), sanitize(&msg)),
            (Some(code), None) => return format!("{head}: {}", sanitize(&code)),
            (None, Some(msg)) => return format!("{head}: {}", sanitize(&msg)),
            (None, None) => {}
        }
    }
    if is_html(headers, body) {
        format!("{head} with an HTML page (Cloudflare?)")
    } else if body.is_empty() {
        format!("{head} with an empty body")
    } else if json.is_some() {
        format!("{head} with JSON that is neither tokens nor an error")
    } else {
        format!("{head} with a body that is not a JSON object")
    }
}

/// Classifies one answer of the token endpoint with the standard rejection codes only. `now`
/// dates a `Retry-After` given as a date.
#[cfg(test)]
pub(crate) fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8], now: DateTime<Utc>) -> TokenOutcome {
    classify_with(status, headers, body, now, &[], ANTHROPIC_404_HINT)
}

/// Classifies one answer of the token endpoint. `extra` are the provider's own rejection codes
/// (a 400, or any status, with one of them means the login is dead). `now` dates a
/// `Retry-After` given as a date; `not_found_hint` is added to the advice of a 404.
pub(crate) fn classify_with(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
    extra: &[String],
    not_found_hint: &str,
) -> TokenOutcome {
    let json: Option<Value> = serde_json::from_slice(body).ok().filter(Value::is_object);
    if status.is_success() {
        if let Some(grant) = json.as_ref().and_then(TokenGrant::from_json) {
            return TokenOutcome::Success(grant);
        }
        let mut reason = describe_answer(status, headers, body, json.as_ref());
        if json.is_some() && !reason.contains("neither") {
            reason.push_str(", without an access token");
        }
        return TokenOutcome::Transient { reason };
    }
    let reason = describe_answer(status, headers, body, json.as_ref());
    if status == StatusCode::TOO_MANY_REQUESTS {
        return TokenOutcome::RateLimited { retry_after: retry_after(headers, now), reason };
    }
    if status == StatusCode::NOT_FOUND {
        return TokenOutcome::Transient {
            reason: format!("the token endpoint answered 404: is token_url right?{not_found_hint} ({reason})"),
        };
    }
    if status.is_redirection() {
        let to = headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| url::Url::parse(l).ok())
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_else(|| "elsewhere".into());
        return TokenOutcome::Transient {
            reason: format!("HTTP {status}: the token endpoint redirects to {to}; not followed (is token_url right?)"),
        };
    }
    let code = json.as_ref().and_then(|v| error_detail(v).0);
    let is_rejection_code = code.as_deref().is_some_and(|c| REJECTION_CODES.contains(&c));
    // A provider's own codes are precise (Codex treats `refresh_token_reused` as permanent
    // whatever the status), so they count on any 4xx.
    let is_provider_code =
        code.as_deref().is_some_and(|c| extra.iter().any(|e| e.eq_ignore_ascii_case(c))) && status.is_client_error();
    let dead_login = is_provider_code
        || match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => json.is_some(),
            StatusCode::BAD_REQUEST => is_rejection_code,
            _ => false,
        };
    if dead_login {
        TokenOutcome::Rejected { reason }
    } else {
        TokenOutcome::Transient { reason }
    }
}

/// How long a 429 asks to wait: `Retry-After` in seconds or as an HTTP date, else the unified
/// rate limit's reset time.
fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let header = |name| headers.get(name).and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok()).map(str::trim);
    let until = |at: DateTime<Utc>| (at - now).to_std().unwrap_or(Duration::ZERO);
    if let Some(v) = header(RETRY_AFTER.as_str()) {
        if let Ok(secs) = v.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        if let Ok(secs) = v.parse::<f64>() {
            if secs.is_finite() && secs >= 0.0 {
                return Some(Duration::from_secs_f64(secs));
            }
        }
        if let Ok(at) = DateTime::parse_from_rfc2822(v) {
            return Some(until(at.with_timezone(&Utc)));
        }
    }
    let reset = header("anthropic-ratelimit-unified-reset")?.parse::<i64>().ok()?;
    DateTime::from_timestamp(reset, 0).map(until)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use reqwest::header::HeaderValue;
    use serde_json::json;

    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
    }

    fn answer(status: u16, headers: &[(&'static str, &str)], body: &str) -> TokenOutcome {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        classify(StatusCode::from_u16(status).unwrap(), &map, body.as_bytes(), now())
    }

    #[test]
    fn rejections_need_a_new_login() {
        for body in [
            r#"{"error":"invalid_grant","error_description":"Refresh token not found or invalid"}"#,
            r#"{"error":"invalid_client"}"#,
            r#"{"error":"unauthorized_client"}"#,
            r#"{"type":"error","error":{"type":"invalid_grant","message":"revoked"}}"#,
        ] {
            assert!(matches!(answer(400, &[], body), TokenOutcome::Rejected { .. }), "{body}");
        }
        let TokenOutcome::Rejected { reason } =
            answer(400, &[], r#"{"error":"invalid_grant","error_description":"gone"}"#)
        else {
            panic!("not rejected");
        };
        assert_eq!(reason, "HTTP 400 Bad Request: invalid_grant (gone)");
        let any_json_401 = r#"{"type":"error","error":{"type":"authentication_error","message":"Invalid token"}}"#;
        assert!(matches!(answer(401, &[], any_json_401), TokenOutcome::Rejected { .. }));
        assert!(matches!(answer(403, &[], r#"{"error":"whatever"}"#), TokenOutcome::Rejected { .. }));
    }

    #[test]
    fn odd_answers_are_transient() {
        let cases = [
            (400, "", r#"{"error":"invalid_request","error_description":"grant_type is required"}"#, "invalid_request"),
            (500, "", r#"{"error":"server_error"}"#, "HTTP 500"),
            (502, "text/html", "<html>cloudflare</html>", "an HTML page (Cloudflare?)"),
            (403, "text/html", "<!DOCTYPE html><html>blocked</html>", "an HTML page (Cloudflare?)"),
            (200, "text/html", "<html>Just a moment</html>", "HTTP 200 OK with an HTML page (Cloudflare?)"),
            (200, "application/json", r#"{"token_type":"Bearer"}"#, "neither tokens nor an error"),
            (200, "application/json", "[1,2]", "not a JSON object"),
            (200, "", "", "empty body"),
            (404, "", "Not Found", "is token_url right? console.anthropic.com no longer serves it"),
            (307, "", "", "not followed"),
        ];
        for (status, ct, body, want) in cases {
            let headers: Vec<(&'static str, &str)> = if ct.is_empty() { vec![] } else { vec![("content-type", ct)] };
            match answer(status, &headers, body) {
                TokenOutcome::Transient { reason } => assert!(reason.contains(want), "{status}: {reason}"),
                other => panic!("{status} {body}: {other:?}"),
            }
        }
    }

    #[test]
    fn rate_limits_carry_the_wait() {
        let wait = |headers: &[(&'static str, &str)]| match answer(429, headers, r#"{"error":"rate_limited"}"#) {
            TokenOutcome::RateLimited { retry_after, reason } => {
                assert!(reason.starts_with("HTTP 429"), "{reason}");
                retry_after
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(wait(&[("retry-after", "120")]), Some(Duration::from_secs(120)));
        let date = (now() + chrono::Duration::seconds(90)).format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        assert_eq!(wait(&[("retry-after", &date)]), Some(Duration::from_secs(90)));
        let past = (now() - chrono::Duration::seconds(90)).format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        assert_eq!(wait(&[("retry-after", &past)]), Some(Duration::ZERO));
        let reset = (now().timestamp() + 300).to_string();
        assert_eq!(wait(&[("anthropic-ratelimit-unified-reset", &reset)]), Some(Duration::from_secs(300)));
        assert_eq!(wait(&[("retry-after", "soon")]), None);
        assert_eq!(wait(&[]), None);
    }

    #[test]
    fn token_shaped_words_and_long_messages_are_cut_from_reasons() {
        let long = "x".repeat(1000);
        let body =
            json!({"error": "invalid_grant", "error_description": format!("bad sk-ant-ort01-SECRETVALUE {long}")});
        let TokenOutcome::Rejected { reason } = answer(400, &[], &body.to_string()) else { panic!("not rejected") };
        assert!(!reason.contains("SECRETVALUE"), "{reason}");
        assert!(reason.contains("[token]"));
        assert!(reason.chars().count() < 400, "{}", reason.len());
    }

    #[test]
    fn openai_error_codes_are_read_and_provider_codes_reject() {
        let reused = r#"{"error":{"message":"Your refresh token has already been used to generate a new access token. Please try signing in again.","type":"invalid_request_error","param":null,"code":"refresh_token_reused"}}"#;
        let TokenOutcome::Rejected { reason } = answer(401, &[], reused) else { panic!("not rejected") };
        assert!(reason.starts_with("HTTP 401 Unauthorized: refresh_token_reused ("), "{reason}");
        let codex = vec!["refresh_token_expired".to_owned()];
        let expired = r#"{"error":{"code":"refresh_token_expired","message":"expired"}}"#;
        let got = classify_with(StatusCode::BAD_REQUEST, &HeaderMap::new(), expired.as_bytes(), now(), &codex, "");
        assert!(matches!(got, TokenOutcome::Rejected { .. }), "{got:?}");
        // Without the provider's codes the same answer is a malformed request, retried.
        assert!(matches!(answer(400, &[], expired), TokenOutcome::Transient { .. }));
        // Only Anthropic's 404 mentions Anthropic's old host.
        let got = classify_with(StatusCode::NOT_FOUND, &HeaderMap::new(), b"", now(), &codex, "");
        assert!(matches!(&got, TokenOutcome::Transient { reason } if !reason.contains("anthropic")), "{got:?}");
        // A 5xx stays transient whatever it says.
        let got = classify_with(StatusCode::BAD_GATEWAY, &HeaderMap::new(), expired.as_bytes(), now(), &codex, "");
        assert!(matches!(got, TokenOutcome::Transient { .. }), "{got:?}");
    }

    #[test]
    fn jwt_and_google_token_shapes_are_cut_from_reasons() {
        let body = json!({"error": "invalid_grant",
            "error_description": "bad eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjF9.c2ln and ya29.a0AfB_secret and 1//0gSECRETREFRESH"});
        let TokenOutcome::Rejected { reason } = answer(400, &[], &body.to_string()) else { panic!("not rejected") };
        for leak in ["eyJleHAiOjF9", "a0AfB_secret", "0gSECRETREFRESH"] {
            assert!(!reason.contains(leak), "{leak} in {reason}");
        }
    }

    #[test]
    fn scrub_replaces_echoed_secrets_by_fingerprints() {
        let secret = Secret::new("opaque-code-value");
        let out = scrub(TokenOutcome::Transient { reason: "echo opaque-code-value".into() }, &[&secret]);
        assert_eq!(out, TokenOutcome::Transient { reason: format!("echo {}", secret.fingerprint()) });
    }
}
