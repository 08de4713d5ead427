//! Sessions of the signed-in admin, kept in the store ([`Store::create_session`]) so that every
//! replica of an installation knows them: a browser signed in through replica A is signed in on
//! B, and signing out anywhere ends the session everywhere. The store holds only the SHA-256 of
//! the random cookie value, so reading the database signs nobody in. A session expires
//! [`SESSION_LIFETIME`] after sign-in, by the keeper's clock.
//!
//! There is no in-process cache: each request reads its session from the store, so a session
//! ended on another replica is never served (a page request is one indexed read).
//!
//! Each session has its CSRF token, a one-shot flash message for the next page, and the PKCE
//! login the wizard started, parked in the store under `logins/web/<session hash>` by the same
//! mechanism as the API's `/oauth/start` ([`Keeper::park_login`], the verifier sealed with the
//! installation key), so the wizard started on one replica can be finished on another.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};
use axum::response::{IntoResponse, Redirect, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use tokenkeeper_core::clock::chrono_duration;
use tokenkeeper_core::config::ANTHROPIC;
use tokenkeeper_core::store::{Store, StoreError, WebSession};
use tokenkeeper_keeper::{Keeper, KeeperError, StartedLogin};
use tokenkeeper_provider::PkceLogin;

use crate::WebState;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "tk_session";
/// Name of the cookie that carries the sign-in form's CSRF token (double submit: there is no
/// session yet to hold it).
pub const LOGIN_CSRF_COOKIE: &str = "tk_login_csrf";
/// How long a session lasts after sign-in.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// How long the wizard keeps a started login: the provider's codes expire after about ten
/// minutes, so an older attempt can only fail.
pub const LOGIN_ATTEMPT_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// Sessions kept at most; the oldest goes first. Only a correct admin token creates one, so
/// this only bounds a forgetful admin's many devices.
const MAX_SESSIONS: u32 = 256;
/// The state-key prefix of the wizard's parked logins (the API's are under `logins/api/`).
const LOGIN_PREFIX: &str = "logins/web/";

/// 32 random bytes from the OS, base64url: session ids and CSRF tokens.
pub fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(tokenkeeper_core::random_bytes::<32>())
}

/// What the store keys a session by: the SHA-256 of the cookie value, hex.
fn hash_of(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

/// A message shown once on the next page.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Flash {
    /// `ok` or `error`: the colour.
    pub kind: &'static str,
    /// The sentence.
    pub text: String,
}

impl Flash {
    /// Good news.
    pub fn ok(text: impl Into<String>) -> Flash {
        Flash { kind: "ok", text: text.into() }
    }

    /// Bad news.
    pub fn error(text: impl Into<String>) -> Flash {
        Flash { kind: "error", text: text.into() }
    }

    /// The message as the store keeps it (JSON `{kind, text}`).
    fn encode(&self) -> String {
        serde_json::json!({ "kind": self.kind, "text": self.text }).to_string()
    }

    /// The message back from [`Flash::encode`]; `None` for text this release cannot read.
    fn decode(stored: &str) -> Option<Flash> {
        #[derive(Deserialize)]
        struct Stored {
            kind: String,
            text: String,
        }
        let s: Stored = serde_json::from_str(stored).ok()?;
        Some(if s.kind == "error" { Flash::error(s.text) } else { Flash::ok(s.text) })
    }
}

/// A login the wizard started.
#[derive(Debug, Clone)]
pub struct PendingLogin {
    /// PKCE verifier and state.
    pub login: PkceLogin,
    /// The authorize URL shown to the user.
    pub url: String,
    /// When it was started.
    pub started_at: DateTime<Utc>,
    /// A login of another provider than Anthropic (its provider and redirect URI), finished
    /// with `Keeper::finish_provider_login`; `None` for Anthropic's.
    pub started: Option<StartedLogin>,
}

impl PendingLogin {
    /// The provider id this login signs in with.
    pub fn provider(&self) -> &str {
        self.started.as_ref().map_or(ANTHROPIC, |s| s.provider.as_str())
    }
}

/// The sessions of the page, in the keeper's store.
#[derive(Debug)]
pub struct Sessions {
    keeper: Arc<Keeper>,
}

impl Sessions {
    /// The sessions in `keeper`'s store, expiring by `keeper`'s clock.
    pub fn new(keeper: Arc<Keeper>) -> Sessions {
        Sessions { keeper }
    }

    fn store(&self) -> &Arc<dyn Store> {
        self.keeper.store()
    }

    fn now(&self) -> DateTime<Utc> {
        self.keeper.clock().now()
    }

    /// Creates a session; returns its id (the cookie value, which only the browser keeps).
    /// Ended sessions, the oldest beyond the newest `MAX_SESSIONS` (256) and expired wizard logins are pruned
    /// on the way, so the tables stay small without a background task.
    pub async fn create(&self, flash: Option<Flash>) -> Result<String, KeeperError> {
        let now = self.now();
        let id = random_token();
        let session = WebSession {
            hash: hash_of(&id),
            csrf: random_token(),
            created_at: now,
            expires_at: now + chrono_duration(SESSION_LIFETIME),
            flash: flash.map(|f| f.encode()),
        };
        self.store().create_session(&session).await?;
        self.store().prune_sessions(now, MAX_SESSIONS).await?;
        self.keeper.sweep_logins(LOGIN_PREFIX).await?;
        Ok(id)
    }

    /// The CSRF token of a live session; `None` when there is none (never was, ended, signed
    /// out on any replica).
    pub async fn csrf(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(self.store().session(&hash_of(id), self.now()).await?.map(|s| s.csrf))
    }

    /// Ends a session and forgets its wizard login.
    pub async fn remove(&self, id: &str) -> Result<(), KeeperError> {
        let hash = hash_of(id);
        self.store().delete_session(&hash).await?;
        self.keeper.unpark_login(&login_key(&hash)).await?;
        Ok(())
    }

    /// Sets the message for the next page. A store failure loses only the message (logged).
    pub async fn set_flash(&self, id: &str, flash: Flash) {
        if let Err(e) = self.store().set_session_flash(&hash_of(id), Some(&flash.encode())).await {
            tracing::warn!(error = %tokenkeeper_core::error_chain(&e), "the page's message could not be kept");
        }
    }

    /// Takes the message for this page. A store failure loses only the message (logged).
    pub async fn take_flash(&self, id: &str) -> Option<Flash> {
        match self.store().take_session_flash(&hash_of(id)).await {
            Ok(stored) => stored.as_deref().and_then(Flash::decode),
            Err(e) => {
                tracing::warn!(error = %tokenkeeper_core::error_chain(&e), "the page's message could not be read");
                None
            }
        }
    }

    /// The wizard's login, unless it is older than [`LOGIN_ATTEMPT_LIFETIME`].
    pub async fn pending_login(&self, id: &str) -> Result<Option<PendingLogin>, KeeperError> {
        let parked = self.keeper.parked_login(&login_key(&hash_of(id))).await?;
        Ok(parked.map(|p| {
            let started = p.started();
            PendingLogin { login: p.login, url: p.url, started_at: p.started_at, started }
        }))
    }

    /// Starts a login with `provider` (Anthropic's when `None`) and parks it for this session,
    /// replacing the one it had. A provider without a login flow is
    /// `KeeperError::NoLoginFlow`, an unknown one `KeeperError::UnknownProvider`.
    pub async fn start_login(&self, id: &str, provider: Option<&str>) -> Result<PendingLogin, KeeperError> {
        let key = login_key(&hash_of(id));
        let ttl = chrono_duration(LOGIN_ATTEMPT_LIFETIME);
        match provider.filter(|p| *p != ANTHROPIC) {
            None => {
                let (login, url) = self.keeper.start_login();
                self.keeper.park_login(&key, &login, &url, ttl).await?;
                Ok(PendingLogin { login, url, started_at: self.now(), started: None })
            }
            Some(p) => {
                let started = self.keeper.start_provider_login(p, None)?;
                self.keeper.park_started_login(&key, &started, ttl).await?;
                Ok(PendingLogin {
                    login: started.login.clone(),
                    url: started.url.clone(),
                    started_at: self.now(),
                    started: Some(started),
                })
            }
        }
    }

    /// Forgets the wizard's login (its code was used, or the login was refused).
    pub async fn forget_login(&self, id: &str) -> Result<(), KeeperError> {
        self.keeper.unpark_login(&login_key(&hash_of(id))).await?;
        Ok(())
    }
}

/// The state key of the wizard login of the session with `hash`.
fn login_key(hash: &str) -> String {
    format!("{LOGIN_PREFIX}{hash}")
}

/// The value of cookie `name` in the request, if any.
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, `Secure` when asked; `max_age` zero
/// deletes it.
pub fn set_cookie(name: &str, value: &str, path: &str, max_age: Duration, secure: bool) -> String {
    let max_age = cookie::time::Duration::seconds(i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX));
    cookie::Cookie::build((name, value))
        .path(path)
        .http_only(true)
        .same_site(cookie::SameSite::Strict)
        .secure(secure)
        .max_age(max_age)
        .build()
        .to_string()
}

/// A signed-in request: its session id and CSRF token. Pages that need sign-in take this
/// extractor, so none can forget the check; without a live session a GET is sent to the sign-in
/// page and anything else is refused with 403.
#[derive(Debug, Clone)]
pub struct SignedIn {
    /// Session id (cookie value).
    pub id: String,
    /// The session's CSRF token, for the page's forms.
    pub csrf: String,
}

impl FromRequestParts<WebState> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &WebState) -> Result<Self, Self::Rejection> {
        let found = match cookie_value(&parts.headers, SESSION_COOKIE) {
            Some(id) => match state.sessions().csrf(&id).await {
                Ok(csrf) => csrf.map(|csrf| (id, csrf)),
                Err(source) => return Err(crate::WebError::Sessions { source }.into_response()),
            },
            None => None,
        };
        match found {
            Some((id, csrf)) => Ok(SignedIn { id, csrf }),
            None if parts.method == Method::GET || parts.method == Method::HEAD => {
                Err(Redirect::to("/login").into_response())
            }
            None => Err(crate::pages::refused(
                state,
                "You are not signed in, or your session has ended. Sign in again, then repeat what you were doing.",
            )),
        }
    }
}
