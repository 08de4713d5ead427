//! The token endpoints of the other providers, each shaped like the real one:
//!
//! - [`Shape::Codex`], `POST /codex/oauth/token`: OpenAI's (`auth.openai.com/oauth/token`):
//!   JSON bodies only, Codex CLI's client id, JWT access and id tokens with `exp`, single-use
//!   rotating refresh tokens; a spent one answers `401` with OpenAI's error object and
//!   `"code": "refresh_token_reused"`, a revoked one `refresh_token_invalidated`.
//! - [`Shape::Google`], `POST /google/token`: Google's (`oauth2.googleapis.com/token`): form
//!   bodies only, Gemini CLI's client id and secret, refresh tokens that do not rotate (the
//!   answer leaves `refresh_token` out), `400 invalid_grant` for a revoked or unknown one.
//! - [`Shape::Generic`], `POST /generic/token`: RFC 6749 with the encoding, rotation, client
//!   and expiry of [`GenericShape`].
//!
//! The Codex and Google endpoints also take the authorization-code grant of a login made with
//! [`crate::MockProvider::authorize_shape`] (the browser step): a **form** body at both (Codex
//! CLI posts its code exchange form-encoded although its refresh is JSON), the client id (and
//! Google's secret) checked, the `redirect_uri` of the authorize request, and the PKCE
//! `code_verifier` checked against the S256 challenge; each code is single-use. Codex answers
//! JWT `id_token` and `access_token` (with `exp` and the `https://api.openai.com/auth` claims
//! holding `chatgpt_account_id`) and a refresh token; Google answers `access_token`,
//! `expires_in`, `refresh_token`, `scope`, `token_type` and an `id_token`.
//!
//! Every request is counted per endpoint ([`ShapeCounts`]) and summarised without its
//! secrets ([`ShapeRequest`]), so tests can assert the encoding and "exactly one refresh per
//! rotation". The wrong encoding is answered `400 invalid_request` and counted.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use crate::state::random_string;

/// Codex CLI's OAuth client id, which [`Shape::Codex`] accepts (and only it).
pub const CODEX_CLIENT_ID: &str = "app_EMoamEEZ73f0CkXaXp7hrann";
/// Gemini CLI's installed-app client id, which [`Shape::Google`] accepts.
pub const GEMINI_CLIENT_ID: &str = "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com";
/// Gemini CLI's installed-app client secret (public: it ships in Gemini CLI's source).
pub const GEMINI_CLIENT_SECRET: &str = "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";

/// Which provider's token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    /// OpenAI's, as Codex CLI uses it: `/codex/oauth/token`.
    Codex,
    /// Google's, as Gemini CLI uses it: `/google/token`.
    Google,
    /// A configurable RFC 6749 endpoint: `/generic/token`.
    Generic,
}

impl Shape {
    /// The endpoint's path on the mock.
    pub fn path(self) -> &'static str {
        match self {
            Shape::Codex => "/codex/oauth/token",
            Shape::Google => "/google/token",
            Shape::Generic => "/generic/token",
        }
    }

    /// The path of its authorize page (checked by [`crate::MockProvider::authorize_shape`],
    /// not served).
    pub fn authorize_path(self) -> &'static str {
        match self {
            Shape::Codex => "/codex/oauth/authorize",
            Shape::Google => "/google/auth",
            Shape::Generic => "/generic/authorize",
        }
    }
}

/// A body encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/json`.
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
}

/// How [`Shape::Generic`] behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenericShape {
    /// The only body encoding it accepts.
    pub body: Encoding,
    /// Whether each refresh returns a new refresh token and kills the old one.
    pub rotating: bool,
    /// The client id it accepts.
    pub client_id: String,
    /// The client secret it requires, if any.
    pub client_secret: Option<String>,
    /// Whether access tokens are JWTs with `exp` (and the answer has no `expires_in`).
    pub jwt_access: bool,
}

impl Default for GenericShape {
    /// Form bodies, rotating, client `generic-client` without a secret, opaque access tokens.
    fn default() -> Self {
        Self {
            body: Encoding::Form,
            rotating: true,
            client_id: "generic-client".into(),
            client_secret: None,
            jwt_access: false,
        }
    }
}

/// Counters of one endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShapeCounts {
    /// Every request that reached it, faulted or not.
    pub requests: u64,
    /// Refreshes that issued tokens.
    pub refresh_ok: u64,
    /// Refreshes refused because the refresh token was spent, revoked or unknown.
    pub refresh_rejected: u64,
    /// Requests refused for their body encoding.
    pub wrong_encoding: u64,
    /// Requests refused for their client (unknown id, missing or wrong secret).
    pub bad_client: u64,
    /// Authorization codes exchanged for tokens.
    pub codes_exchanged: u64,
    /// Code exchanges refused (unknown or spent code, wrong verifier or redirect URI).
    pub codes_rejected: u64,
}

/// What the last request to an endpoint carried, without any secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShapeRequest {
    /// The `Content-Type` as sent.
    pub content_type: Option<String>,
    /// The names of the body's fields.
    pub fields: BTreeSet<String>,
    /// `grant_type` as sent.
    pub grant_type: Option<String>,
    /// `client_id` as sent.
    pub client_id: Option<String>,
    /// `scope` as sent.
    pub scope: Option<String>,
}

/// A login issued directly by [`crate::MockProvider::issue_shape_login`].
#[derive(Clone, PartialEq, Eq)]
pub struct ShapeLogin {
    /// The access token (a JWT for Codex, `ya29.…` for Google).
    pub access_token: String,
    /// A live refresh token of the shape's endpoint (`1//mock-…` for Google, `grt-…` otherwise);
    /// [`crate::MockProvider::revoke_shape`] revokes it.
    pub refresh_token: String,
    /// The OpenID `id_token` (Codex, Google), a JWT.
    pub id_token: Option<String>,
    /// The ChatGPT account id (Codex).
    pub account_id: Option<String>,
    /// Expiry of the access token, milliseconds since the epoch, by the mock's clock.
    pub expires_at_ms: i64,
}

impl fmt::Debug for ShapeLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |v: &str| tokenkeeper_core::Secret::new(v).fingerprint();
        f.debug_struct("ShapeLogin")
            .field("access_token", &s(&self.access_token))
            .field("refresh_token", &s(&self.refresh_token))
            .field("id_token", &self.id_token.as_deref().map(s))
            .field("account_id", &self.account_id)
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Live,
    Spent,
    Revoked,
}

/// A code issued by the browser step, waiting for its exchange.
#[derive(Debug, Clone)]
struct PendingCode {
    email: String,
    challenge: String,
    redirect_uri: String,
}

#[derive(Debug, Clone)]
struct Entry {
    email: String,
    status: Status,
}

/// A refused request: status and JSON body.
pub(crate) struct Refusal {
    pub status: u16,
    pub body: Value,
}

/// The state of the three endpoints.
pub(crate) struct Shapes {
    refresh: HashMap<(Shape, String), Entry>,
    counts: HashMap<Shape, ShapeCounts>,
    last: HashMap<Shape, ShapeRequest>,
    lifetime: HashMap<Shape, Duration>,
    codes: HashMap<(Shape, String), PendingCode>,
    pub generic: GenericShape,
}

/// A JWT whose payload is `claims`, with a fake signature: only this mock issues or checks it.
pub(crate) fn jwt(claims: &Value) -> String {
    let enc = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.{}",
        enc(&json!({"alg": "RS256", "typ": "JWT"})),
        enc(claims),
        URL_SAFE_NO_PAD.encode(random_string(16))
    )
}

fn openai_error(status: u16, code: &str, message: &str) -> Refusal {
    Refusal {
        status,
        body: json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}}),
    }
}

fn oauth_error(status: u16, error: &str, description: &str) -> Refusal {
    Refusal { status, body: json!({"error": error, "error_description": description}) }
}

impl Shapes {
    pub(crate) fn new() -> Self {
        Self {
            refresh: HashMap::new(),
            counts: HashMap::new(),
            last: HashMap::new(),
            lifetime: HashMap::new(),
            codes: HashMap::new(),
            generic: GenericShape::default(),
        }
    }

    pub(crate) fn counts(&self, shape: Shape) -> ShapeCounts {
        self.counts.get(&shape).cloned().unwrap_or_default()
    }

    pub(crate) fn last(&self, shape: Shape) -> Option<ShapeRequest> {
        self.last.get(&shape).cloned()
    }

    pub(crate) fn count_request(&mut self, shape: Shape) {
        self.counts.entry(shape).or_default().requests += 1;
    }

    /// Access-token lifetime: Codex's are about 10 days, Google's an hour.
    fn lifetime(&self, shape: Shape) -> Duration {
        self.lifetime.get(&shape).copied().unwrap_or(match shape {
            Shape::Codex => Duration::from_secs(10 * 86_400),
            Shape::Google => Duration::from_secs(3599),
            Shape::Generic => Duration::from_secs(3600),
        })
    }

    pub(crate) fn set_lifetime(&mut self, shape: Shape, d: Duration) {
        self.lifetime.insert(shape, d);
    }

    pub(crate) fn revoke(&mut self, shape: Shape, refresh_token: &str) {
        if let Some(e) = self.refresh.get_mut(&(shape, refresh_token.to_owned())) {
            e.status = Status::Revoked;
        }
    }

    fn account_id(email: &str) -> String {
        format!("acct-{}", email.split('@').next().unwrap_or(email))
    }

    /// Issues tokens for `email` at `now`, registering a new live refresh token when
    /// `new_refresh`. Returns the login and the answer's JSON.
    pub(crate) fn issue(
        &mut self,
        shape: Shape,
        email: &str,
        now: DateTime<Utc>,
        new_refresh: bool,
    ) -> (ShapeLogin, Value) {
        let lifetime = self.lifetime(shape);
        let expires_at = now + tokenkeeper_core::clock::chrono_duration(lifetime);
        let exp = expires_at.timestamp();
        let account_id = Self::account_id(email);
        let (access_token, id_token, account) = match shape {
            Shape::Codex => {
                let auth = json!({"chatgpt_account_id": account_id, "chatgpt_plan_type": "pro"});
                let access = jwt(&json!({"exp": exp, "iat": now.timestamp(), "https://api.openai.com/auth": auth,
                                        "https://api.openai.com/profile": {"email": email}}));
                let id =
                    jwt(&json!({"exp": now.timestamp() + 3600, "email": email, "https://api.openai.com/auth": auth}));
                (access, Some(id), Some(account_id))
            }
            Shape::Google => {
                let id =
                    jwt(&json!({"exp": now.timestamp() + 3600, "email": email, "iss": "https://accounts.google.com"}));
                (format!("ya29.mock-{}", random_string(40)), Some(id), None)
            }
            Shape::Generic if self.generic.jwt_access => (jwt(&json!({"exp": exp, "sub": email})), None, None),
            Shape::Generic => (format!("gat-{}", random_string(40)), None, None),
        };
        let refresh_token = new_refresh.then(|| {
            let t = match shape {
                Shape::Google => format!("1//mock-{}", random_string(40)),
                _ => format!("grt-{}", random_string(40)),
            };
            self.refresh.insert((shape, t.clone()), Entry { email: email.to_owned(), status: Status::Live });
            t
        });
        let mut body = Map::new();
        body.insert("access_token".into(), Value::String(access_token.clone()));
        match shape {
            // OpenAI's answer: Codex reads id_token, access_token, refresh_token. No
            // `expires_in`, so a client must read the JWT's `exp`.
            Shape::Codex => {}
            Shape::Google => {
                body.insert("expires_in".into(), json!(lifetime.as_secs()));
                body.insert("scope".into(), json!("https://www.googleapis.com/auth/cloud-platform https://www.googleapis.com/auth/userinfo.email https://www.googleapis.com/auth/userinfo.profile openid"));
                body.insert("token_type".into(), json!("Bearer"));
            }
            Shape::Generic if self.generic.jwt_access => {}
            Shape::Generic => {
                body.insert("expires_in".into(), json!(lifetime.as_secs()));
                body.insert("token_type".into(), json!("Bearer"));
            }
        }
        if let Some(id) = &id_token {
            body.insert("id_token".into(), Value::String(id.clone()));
        }
        if let Some(r) = &refresh_token {
            body.insert("refresh_token".into(), Value::String(r.clone()));
        }
        let login = ShapeLogin {
            access_token,
            refresh_token: refresh_token.unwrap_or_default(),
            id_token,
            account_id: account,
            expires_at_ms: expires_at.timestamp_millis(),
        };
        (login, Value::Object(body))
    }

    /// The browser step of a login at `shape`: checks the authorize URL (`base` is this mock's
    /// authorize page for it) as the real page would need it, issues a code for `email` and
    /// returns the URL the browser is redirected to: `redirect_uri?code=…&state=…`.
    pub(crate) fn authorize(&mut self, shape: Shape, url: &str, base: &str, email: &str) -> Result<String, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        let at = url.split(['?', '#']).next().unwrap_or_default();
        if at != base {
            return Err(format!("authorize URL points at {at}, expected {base}"));
        }
        let query: HashMap<String, String> = parsed.query_pairs().into_owned().collect();
        let get = |k: &str| query.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let expect = |k: &str, want: &str| match get(k) {
            Some(v) if v == want => Ok(()),
            Some(v) => Err(format!("`{k}` is {v:?}, expected {want:?}")),
            None => Err(format!("missing query parameter `{k}`")),
        };
        let (client_id, needed_scope) = match shape {
            Shape::Codex => (CODEX_CLIENT_ID, "offline_access"),
            Shape::Google => (GEMINI_CLIENT_ID, "https://www.googleapis.com/auth/cloud-platform"),
            Shape::Generic => return Err("the generic endpoint has no authorize page".into()),
        };
        expect("response_type", "code")?;
        expect("client_id", client_id)?;
        expect("code_challenge_method", "S256")?;
        match shape {
            Shape::Codex => {
                expect("id_token_add_organizations", "true")?;
                expect("codex_cli_simplified_flow", "true")?;
            }
            _ => expect("access_type", "offline")?,
        }
        let challenge = get("code_challenge").ok_or("missing query parameter `code_challenge`")?;
        if challenge.len() != 43 || !challenge.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err("`code_challenge` is not a base64url SHA-256 (43 characters)".into());
        }
        let state = get("state").ok_or("missing query parameter `state`")?;
        let redirect_uri = get("redirect_uri").ok_or("missing query parameter `redirect_uri`")?;
        let mut redirect = url::Url::parse(redirect_uri).map_err(|e| format!("`redirect_uri` is not a URL: {e}"))?;
        if !get("scope").is_some_and(|s| s.split_whitespace().any(|x| x == needed_scope)) {
            return Err(format!("`scope` must include {needed_scope}"));
        }
        let code = match shape {
            Shape::Google => format!("4/0mock-{}", random_string(40)),
            _ => format!("ac_mock-{}", random_string(40)),
        };
        let pending = PendingCode {
            email: email.to_owned(),
            challenge: challenge.to_owned(),
            redirect_uri: redirect_uri.to_owned(),
        };
        self.codes.insert((shape, code.clone()), pending);
        redirect.query_pairs_mut().append_pair("code", &code).append_pair("state", state);
        if shape == Shape::Google {
            redirect.query_pairs_mut().append_pair("scope", get("scope").unwrap_or_default());
        }
        Ok(redirect.into())
    }

    /// The authorization-code grant of `fields` at `shape`, the client already checked.
    fn code_grant(&mut self, shape: Shape, fields: &Map<String, Value>, now: DateTime<Utc>) -> Result<Value, Refusal> {
        let text = |k: &str| fields.get(k).and_then(Value::as_str).unwrap_or_default();
        let refuse = |this: &mut Self, description: &str| {
            this.counts.entry(shape).or_default().codes_rejected += 1;
            match shape {
                Shape::Codex => openai_error(400, "invalid_grant", description),
                _ => oauth_error(400, "invalid_grant", description),
            }
        };
        let Some(pending) = self.codes.remove(&(shape, text("code").to_owned())) else {
            return Err(refuse(self, "Invalid authorization code."));
        };
        if text("redirect_uri") != pending.redirect_uri {
            return Err(refuse(self, "redirect_uri does not match the authorization request."));
        }
        if crate::state::s256(text("code_verifier")) != pending.challenge {
            return Err(refuse(self, "Invalid code verifier."));
        }
        self.counts.entry(shape).or_default().codes_exchanged += 1;
        Ok(self.issue(shape, &pending.email, now, true).1)
    }

    fn encoding(&self, shape: Shape) -> Encoding {
        match shape {
            Shape::Codex => Encoding::Json,
            Shape::Google => Encoding::Form,
            Shape::Generic => self.generic.body,
        }
    }

    /// Handles one request to `shape`'s endpoint (after faults) at `now`.
    pub(crate) fn handle(
        &mut self,
        shape: Shape,
        content_type: Option<&str>,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Value, Refusal> {
        let declared = content_type.map(|c| c.trim().to_ascii_lowercase());
        let is = |prefix: &str| declared.as_deref().is_some_and(|c| c.starts_with(prefix));
        // The code exchange is form-encoded at both real endpoints, whatever the refresh's body.
        let is_code = {
            let form: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
            let json: Option<Value> = serde_json::from_slice(body).ok();
            let grant = |v: Option<&str>| v == Some("authorization_code");
            grant(form.iter().find(|(k, _)| k == "grant_type").map(|(_, v)| v.as_str()))
                || grant(json.as_ref().and_then(|j| j.get("grant_type")).and_then(Value::as_str))
        };
        let want = if is_code && shape != Shape::Generic { Encoding::Form } else { self.encoding(shape) };
        let fields: Option<Map<String, Value>> = match want {
            Encoding::Json if is("application/json") => match serde_json::from_slice(body) {
                Ok(Value::Object(m)) => Some(m),
                _ => None,
            },
            Encoding::Form if is("application/x-www-form-urlencoded") => Some(
                url::form_urlencoded::parse(body)
                    .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                    .collect(),
            ),
            _ => None,
        };
        let Some(fields) = fields else {
            self.counts.entry(shape).or_default().wrong_encoding += 1;
            let expected = match want {
                Encoding::Json => "application/json",
                Encoding::Form => "application/x-www-form-urlencoded",
            };
            return Err(oauth_error(400, "invalid_request", &format!("the body must be {expected}")));
        };
        let text = |k: &str| fields.get(k).and_then(Value::as_str).map(str::to_owned);
        self.last.insert(
            shape,
            ShapeRequest {
                content_type: content_type.map(str::to_owned),
                fields: fields.keys().cloned().collect(),
                grant_type: text("grant_type"),
                client_id: text("client_id"),
                scope: text("scope"),
            },
        );
        let grant_type = text("grant_type");
        let code_grant = grant_type.as_deref() == Some("authorization_code") && shape != Shape::Generic;
        if grant_type.as_deref() != Some("refresh_token") && !code_grant {
            return Err(oauth_error(
                400,
                "unsupported_grant_type",
                "only refresh_token and authorization_code are served here",
            ));
        }
        let (client_id, secret) = match shape {
            Shape::Codex => (CODEX_CLIENT_ID.to_owned(), None),
            Shape::Google => (GEMINI_CLIENT_ID.to_owned(), Some(GEMINI_CLIENT_SECRET.to_owned())),
            Shape::Generic => (self.generic.client_id.clone(), self.generic.client_secret.clone()),
        };
        if text("client_id").as_deref() != Some(client_id.as_str()) || text("client_secret") != secret {
            self.counts.entry(shape).or_default().bad_client += 1;
            return Err(match shape {
                Shape::Codex => openai_error(401, "invalid_client", "Unknown client"),
                _ => oauth_error(401, "invalid_client", "The OAuth client was not found."),
            });
        }
        if code_grant {
            return self.code_grant(shape, &fields, now);
        }
        let Some(refresh_token) = text("refresh_token") else {
            return Err(oauth_error(400, "invalid_request", "refresh_token is required"));
        };
        let rotating = match shape {
            Shape::Codex => true,
            Shape::Google => false,
            Shape::Generic => self.generic.rotating,
        };
        let key = (shape, refresh_token);
        let status = self.refresh.get(&key).map(|e| e.status);
        let refused = match (shape, status) {
            (_, Some(Status::Live)) => None,
            (Shape::Codex, Some(Status::Spent)) => Some(openai_error(
                401,
                "refresh_token_reused",
                "Your refresh token has already been used to generate a new access token. Please try signing in again.",
            )),
            (Shape::Codex, Some(Status::Revoked)) => {
                Some(openai_error(401, "refresh_token_invalidated", "Your refresh token has been invalidated."))
            }
            (Shape::Codex, None) => Some(openai_error(401, "invalid_grant", "Invalid refresh token.")),
            (_, _) => Some(oauth_error(400, "invalid_grant", "Token has been expired or revoked.")),
        };
        if let Some(refusal) = refused {
            self.counts.entry(shape).or_default().refresh_rejected += 1;
            return Err(refusal);
        }
        let email = self.refresh.get(&key).map(|e| e.email.clone()).unwrap_or_default();
        if rotating {
            if let Some(e) = self.refresh.get_mut(&key) {
                e.status = Status::Spent;
            }
        }
        self.counts.entry(shape).or_default().refresh_ok += 1;
        Ok(self.issue(shape, &email, now, rotating).1)
    }
}
