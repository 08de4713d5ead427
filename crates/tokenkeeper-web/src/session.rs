//! Sessions of the signed-in admin: kept in memory (a restart signs everyone out, which is fine
//! for a page one person uses), keyed by the SHA-256 of the random cookie value so the map's
//! lookups reveal nothing about live ids, and expiring after [`SESSION_LIFETIME`].
//!
//! Each session holds its CSRF token, a one-shot flash message for the next page, and the PKCE
//! login the wizard started (its verifier never leaves the server).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};
use axum::response::{IntoResponse, Redirect, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use tokenkeeper_core::SharedClock;
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
const MAX_SESSIONS: usize = 256;

/// 32 random bytes from the OS, base64url: session ids and CSRF tokens.
pub fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(tokenkeeper_core::random_bytes::<32>())
}

fn key_of(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
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
}

#[derive(Debug)]
struct Session {
    csrf: String,
    expires_at: DateTime<Utc>,
    flash: Option<Flash>,
    pending_login: Option<PendingLogin>,
}

/// The in-memory session table.
#[derive(Debug)]
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
    clock: SharedClock,
}

impl Sessions {
    /// An empty table on `clock`.
    pub fn new(clock: SharedClock) -> Sessions {
        Sessions { map: Mutex::new(HashMap::new()), clock }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<[u8; 32], Session>> {
        // A panic while holding the lock cannot leave a half-written session behind.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a session; returns its id (the cookie value).
    pub fn create(&self, flash: Option<Flash>) -> String {
        let now = self.clock.now();
        let id = random_token();
        let mut map = self.lock();
        map.retain(|_, s| s.expires_at > now);
        while map.len() >= MAX_SESSIONS {
            let oldest = map.iter().min_by_key(|(_, s)| s.expires_at).map(|(k, _)| *k);
            match oldest {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
        let expires_at = now + chrono::Duration::from_std(SESSION_LIFETIME).unwrap_or(chrono::Duration::hours(12));
        map.insert(key_of(&id), Session { csrf: random_token(), expires_at, flash, pending_login: None });
        id
    }

    /// The CSRF token of a live session.
    pub fn csrf(&self, id: &str) -> Option<String> {
        let now = self.clock.now();
        let key = key_of(id);
        let mut map = self.lock();
        match map.get(&key) {
            Some(s) if s.expires_at > now => Some(s.csrf.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends a session.
    pub fn remove(&self, id: &str) {
        self.lock().remove(&key_of(id));
    }

    /// Sets the message for the next page.
    pub fn set_flash(&self, id: &str, flash: Flash) {
        if let Some(s) = self.lock().get_mut(&key_of(id)) {
            s.flash = Some(flash);
        }
    }

    /// Takes the message for this page.
    pub fn take_flash(&self, id: &str) -> Option<Flash> {
        self.lock().get_mut(&key_of(id)).and_then(|s| s.flash.take())
    }

    /// The wizard's login, unless it is older than [`LOGIN_ATTEMPT_LIFETIME`].
    pub fn pending_login(&self, id: &str) -> Option<PendingLogin> {
        let now = self.clock.now();
        let limit = chrono::Duration::from_std(LOGIN_ATTEMPT_LIFETIME).unwrap_or(chrono::Duration::minutes(30));
        let mut map = self.lock();
        let s = map.get_mut(&key_of(id))?;
        match &s.pending_login {
            Some(p) if now - p.started_at < limit => Some(p.clone()),
            Some(_) => {
                s.pending_login = None;
                None
            }
            None => None,
        }
    }

    /// Keeps (or, with `None`, forgets) the wizard's login.
    pub fn set_pending_login(&self, id: &str, login: Option<PendingLogin>) {
        if let Some(s) = self.lock().get_mut(&key_of(id)) {
            s.pending_login = login;
        }
    }

    /// Live sessions (for tests and metrics).
    pub fn len(&self) -> usize {
        let now = self.clock.now();
        self.lock().values().filter(|s| s.expires_at > now).count()
    }

    /// Whether there is no live session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
        let found = cookie_value(&parts.headers, SESSION_COOKIE)
            .and_then(|id| state.sessions().csrf(&id).map(|csrf| (id, csrf)));
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
