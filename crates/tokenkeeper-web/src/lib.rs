//! The web page of tokenkeeper: sign in with the admin token, see every account's status, refresh
//! or remove an account, log in a new account with the PKCE wizard, or paste a credential.
//!
//! Server-rendered HTML with inline SVG charts and one small inline style sheet; every action is
//! a plain form, so it works on any phone browser, with JavaScript disabled, and under a strict
//! Content-Security-Policy. One optional script, served by the page itself
//! (`/assets/dashboard.js`, no inline code), refreshes the dashboard's numbers in place.
//!
//! - [`session`]: sessions in the store (cookie `tk_session`, shared by every replica), their
//!   CSRF tokens, flash messages and the pending PKCE login;
//! - [`security`]: the cross-site guard, security headers, constant-time comparison and the
//!   sign-in rate limiter;
//! - [`templates`]: the embedded minijinja templates;
//! - [`pages`]: the handlers;
//! - [`dashboard`]: the dashboard's model (summary, bars, strips, sparklines, pools);
//! - [`error`]: the page's own failures, [`WebError`].
//!
//! The API engineer merges [`router`] into the server's router. Serve it with
//! `into_make_service_with_connect_info::<SocketAddr>()` so failed sign-ins are rate-limited
//! per client address; without it all clients share one budget.

pub mod dashboard;
pub mod error;
pub mod pages;
pub mod security;
pub mod session;
pub mod templates;

use std::fmt;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use tokenkeeper_core::Secret;
use tokenkeeper_keeper::Keeper;
use tokenkeeper_proxy::ProxyState;
use tokenkeeper_sync::sink::SinkSet;

pub use error::WebError;
pub use session::{LOGIN_CSRF_COOKIE, SESSION_COOKIE, SESSION_LIFETIME};

/// Largest form body accepted: a pasted credential is a few kilobytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Everything the page's handlers share. Cheap to clone.
#[derive(Clone)]
pub struct WebState {
    inner: Arc<Inner>,
    /// The proxy whose pools the dashboard shows, when one runs in this process.
    pool: Option<ProxyState>,
}

struct Inner {
    keeper: Arc<Keeper>,
    sinks: Option<Arc<SinkSet>>,
    admin_token: Secret,
    secure_cookies: bool,
    sessions: session::Sessions,
    limiter: tokenkeeper_server::client::FailureLimiter,
    templates: templates::Templates,
}

impl fmt::Debug for WebState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebState")
            .field("admin_token", &self.inner.admin_token)
            .field("secure_cookies", &self.inner.secure_cookies)
            .field("sinks", &self.inner.sinks.is_some())
            .field("pool", &self.pool.is_some())
            .finish_non_exhaustive()
    }
}

impl WebState {
    /// The page's state over `keeper`. `sinks` (when the daemon runs them) adds each sink's
    /// state to the dashboard; `admin_token` is what signs in; `secure_cookies` marks cookies
    /// `Secure` (set it when the page is served over TLS).
    pub fn new(
        keeper: Arc<Keeper>,
        sinks: Option<Arc<SinkSet>>,
        admin_token: Secret,
        secure_cookies: bool,
    ) -> WebState {
        let sessions = session::Sessions::new(keeper.clone());
        WebState {
            inner: Arc::new(Inner {
                keeper,
                sinks,
                admin_token,
                secure_cookies,
                sessions,
                limiter: security::sign_in_limiter(),
                templates: templates::Templates::new(),
            }),
            pool: None,
        }
    }

    /// Shows `proxy`'s pools on the dashboard (each account's state, cooldown, share of requests
    /// and load), from [`ProxyState::pool_snapshot`]. Without it the page has no pool view.
    pub fn with_pool(mut self, proxy: ProxyState) -> WebState {
        self.pool = Some(proxy);
        self
    }

    /// The proxy whose pools are shown, if any.
    pub fn pool(&self) -> Option<&ProxyState> {
        self.pool.as_ref()
    }

    /// The keeper the page shows and acts on, as given to [`WebState::new`].
    pub fn keeper(&self) -> &Arc<Keeper> {
        &self.inner.keeper
    }

    /// The sinks, when they run in this process.
    pub fn sinks(&self) -> Option<&Arc<SinkSet>> {
        self.inner.sinks.as_ref()
    }

    /// Whether cookies are marked `Secure`.
    pub fn secure_cookies(&self) -> bool {
        self.inner.secure_cookies
    }

    pub(crate) fn admin_token(&self) -> &Secret {
        &self.inner.admin_token
    }

    pub(crate) fn sessions(&self) -> &session::Sessions {
        &self.inner.sessions
    }

    pub(crate) fn limiter(&self) -> &tokenkeeper_server::client::FailureLimiter {
        &self.inner.limiter
    }

    pub(crate) fn templates(&self) -> &templates::Templates {
        &self.inner.templates
    }
}

/// The page's routes: `/`, `/login`, `/logout`, `/accounts/{name}/refresh`,
/// `/accounts/{name}/remove`, `/wizard`, `/paste`, and the optional script
/// `/assets/dashboard.js`. Every response carries the security headers;
/// every state-changing request passes the cross-site guard and a CSRF check.
pub fn router(state: WebState) -> Router {
    Router::new()
        .route("/", get(pages::dashboard))
        .route("/assets/dashboard.js", get(pages::dashboard_script))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/accounts/{name}/refresh", post(pages::refresh))
        .route("/accounts/{name}/remove", get(pages::remove_confirm).post(pages::remove))
        .route("/wizard", get(pages::wizard).post(pages::wizard_finish))
        .route("/paste", get(pages::paste_form).post(pages::paste))
        .layer(axum::middleware::from_fn_with_state(state.clone(), security::guard))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}
