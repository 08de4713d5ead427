//! A mock of Anthropic's OAuth provider and Messages API on loopback, for tokenkeeper's tests.
//!
//! [`MockProvider::start`] binds `127.0.0.1:0` and serves, on a tokio task:
//!
//! - `POST /v1/oauth/token`: the refresh grant with **single-use rotation** and the
//!   authorization-code grant with PKCE S256 checks, JSON bodies only;
//! - `GET /oauth/authorize` and `GET /oauth/code/callback`: a tiny approve page and the page
//!   that shows `CODE#STATE` for manual copy (element id `code`), for browser tests;
//! - `POST /v1/messages` (plain JSON or SSE with `"stream": true`),
//!   `POST /v1/messages/count_tokens`, `GET /v1/models` and `GET /api/oauth/usage`, which
//!   accept only live, unexpired access tokens judged by the mock's [`SharedClock`] (with the
//!   OAuth beta flag), or an API key it issued ([`MockProvider::issue_api_key`]) as `x-api-key`;
//!   any other `/v1/*` path answers 404 in Anthropic's error shape. Every such request is
//!   recorded whole ([`MockProvider::requests`]): which account's credential it carried, and
//!   the exact bytes of its headers and body, for the proxy's pass-through tests.
//! - Rate-limit headers per account ([`MockProvider::set_utilization`]), faults per account
//!   ([`MockProvider::push_account_fault`], [`MockProvider::set_account_fault`]): 429 with
//!   and without rate-limit headers, 529, 500, a stream cut mid-way, a slow stream; a stream
//!   whose client goes away is counted ([`Counts::streams_cancelled`],
//!   [`MockProvider::wait_streams_cancelled`]).
//!
//! - `POST /codex/oauth/token`, `POST /google/token`, `POST /generic/token`: the token
//!   endpoints of OpenAI (as Codex CLI uses it), Google (as Gemini CLI uses it) and a
//!   configurable RFC 6749 one, each with its own encoding, rotation and errors, counted per
//!   endpoint (see [`shapes`]).
//!
//! Tests inject failures with [`MockProvider::push_fault`] (FIFO, one per request) and
//! [`MockProvider::set_persistent_fault`], and read what happened with
//! [`MockProvider::counts`]. [`Fault::Messages401`] and [`Fault::Messages429`] are taken by
//! Messages API requests, every other fault by token requests (see [`Fault::is_messages_fault`]).
//!
//! The tokens it issues are random, fake, and only ever valid against this mock; the handle
//! therefore hands them out as plain `String`s.

mod api;
mod authorize;
mod routes;
pub mod shapes;
mod state;

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokenkeeper_core::SharedClock;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use crate::shapes::{
    Encoding, GenericShape, Shape, ShapeCounts, ShapeLogin, ShapeRequest, CODEX_CLIENT_ID, GEMINI_CLIENT_ID,
    GEMINI_CLIENT_SECRET,
};
use crate::state::State;

/// The OAuth client id of Claude Code, which the mock accepts (and only it).
pub const CLIENT_ID: &str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e";

/// A failure to inject. Faults are applied before normal handling and counted in
/// [`Counts::faults_served`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Token endpoint: `500` with a JSON error body.
    ServerError,
    /// Token endpoint: `502` with a Cloudflare-style HTML page.
    BadGateway,
    /// Token endpoint: `429` with `Retry-After: <retry_after_secs>`.
    RateLimited {
        /// Seconds announced in `Retry-After`.
        retry_after_secs: u64,
    },
    /// Token endpoint: wait this long, then answer normally.
    Slow(Duration),
    /// Token endpoint: `200` with a `text/html` body.
    Html,
    /// Token endpoint: `400 invalid_grant`, without touching any token.
    InvalidGrant,
    /// Token endpoint: answer a refresh normally but leave `refresh_token` out of the answer;
    /// the old refresh token then stays live (the provider did not rotate it).
    OmitRefreshToken,
    /// Messages API: `401 authentication_error`, whatever the token.
    Messages401,
    /// Messages API: `429` with `anthropic-ratelimit-unified-status: rejected`, a reset
    /// `reset_secs` from the mock's now, and `Retry-After`.
    Messages429 {
        /// Seconds until the announced reset.
        reset_secs: u64,
    },
    /// Messages API: `429 rate_limit_error` without any rate-limit or `Retry-After` header.
    Messages429Bare,
    /// Messages API: `529 overloaded_error`.
    Messages529,
    /// Messages API: `500 api_error`.
    Messages500,
    /// Messages API, streaming: send this many events, then break the connection (no end of
    /// the chunked body). A non-streaming request answers normally.
    StreamCut {
        /// Events sent before the cut.
        after_events: usize,
    },
    /// Messages API, streaming: the first event at once, then a pause this long before each
    /// of the others.
    SlowStream {
        /// The pause between two events.
        delay: Duration,
    },
}

impl Fault {
    /// Whether this fault is taken by Messages API requests (`true`) or token requests.
    pub fn is_messages_fault(&self) -> bool {
        self.target() == state::Target::Messages
    }
}

/// Counters of what the mock answered; a snapshot from [`MockProvider::counts`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counts {
    /// Refresh grants that issued new tokens.
    pub refresh_ok: u64,
    /// Refresh grants refused because the refresh token was spent, revoked or unknown
    /// (not counting [`Fault::InvalidGrant`]).
    pub refresh_invalid_grant: u64,
    /// Code exchanges that issued tokens.
    pub exchange_ok: u64,
    /// Code exchanges refused (unknown, used or expired code, wrong state, redirect or verifier).
    pub exchange_rejected: u64,
    /// Every request that reached the token endpoint, faulted or not.
    pub token_requests: u64,
    /// Faults applied (token and Messages).
    pub faults_served: u64,
    /// Messages requests answered 200.
    pub messages_ok: u64,
    /// Messages requests answered 401.
    pub messages_401: u64,
    /// Messages requests answered 429.
    pub messages_429: u64,
    /// Requests to `GET /api/oauth/usage`.
    pub usage_requests: u64,
    /// Messages requests answered 529.
    pub messages_529: u64,
    /// Messages requests answered 500.
    pub messages_500: u64,
    /// Streams sent to their end.
    pub streams_completed: u64,
    /// Streams broken on purpose ([`Fault::StreamCut`]).
    pub streams_cut: u64,
    /// Streams whose client went away before their end.
    pub streams_cancelled: u64,
}

/// Whose credential an API request carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// A live OAuth access token of this login (email) as `Authorization: Bearer`.
    OAuth(String),
    /// An API key the mock issued (its label) as `x-api-key`.
    ApiKey(String),
    /// A credential the mock does not know (or an expired token).
    Unknown,
    /// No credential at all.
    None,
}

/// One API request exactly as the mock received it.
#[derive(Clone)]
pub struct RecordedRequest {
    /// The HTTP method as received, upper case (`POST`).
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Every header, in the order received, with the raw value bytes.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body bytes.
    pub body: Vec<u8>,
    /// Whose credential it carried.
    pub credential: Credential,
}

impl RecordedRequest {
    /// The values of header `name` (case-insensitive), as text.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    /// Whether any header value or the body contains `needle` (to prove a secret was not
    /// forwarded).
    pub fn contains(&self, needle: &str) -> bool {
        let n = needle.as_bytes();
        let has = |hay: &[u8]| !n.is_empty() && hay.windows(n.len()).any(|w| w == n);
        self.headers.iter().any(|(k, v)| has(k.as_bytes()) || has(v)) || has(&self.body)
    }
}

impl fmt::Debug for RecordedRequest {
    // Credentials stay out of test output, like everywhere else.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|(n, v)| {
                let secret = n.eq_ignore_ascii_case("authorization") || n.eq_ignore_ascii_case("x-api-key");
                let shown = if secret { "<redacted>".to_owned() } else { String::from_utf8_lossy(v).into_owned() };
                (n.clone(), shown)
            })
            .collect();
        f.debug_struct("RecordedRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("headers", &headers)
            .field("body_len", &self.body.len())
            .field("credential", &self.credential)
            .finish()
    }
}

/// A login created by [`MockProvider::issue_login`]: a live access and refresh token pair.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedTokens {
    /// `sk-ant-oat01-…`
    pub access_token: String,
    /// `sk-ant-ort01-…`, live until spent by a refresh or revoked.
    pub refresh_token: String,
    /// Lifetime of the access token in seconds.
    pub expires_in: u64,
    /// Expiry of the access token, milliseconds since the epoch, by the mock's clock.
    pub expires_at_ms: i64,
}

impl fmt::Debug for IssuedTokens {
    // The tokens are fake, but they are still tokens: keep them out of test logs like the
    // real ones, so that leak tests elsewhere stay meaningful.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedTokens")
            .field("access_token", &tokenkeeper_core::Secret::new(self.access_token.as_str()))
            .field("refresh_token", &tokenkeeper_core::Secret::new(self.refresh_token.as_str()))
            .field("expires_in", &self.expires_in)
            .field("expires_at_ms", &self.expires_at_ms)
            .finish()
    }
}

/// What the last token request carried, without any token, code or verifier.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenRequestSummary {
    /// `grant_type` as sent.
    pub grant_type: Option<String>,
    /// `client_id` as sent.
    pub client_id: Option<String>,
    /// `scope` as sent (space-separated), if any.
    pub scope: Option<String>,
    /// `redirect_uri` as sent, if any.
    pub redirect_uri: Option<String>,
}

/// What the last Messages API request carried, for tests of the proxy: which account's token
/// it used and which headers and body it forwarded. The bearer token itself is not kept.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MessagesRequestSummary {
    /// Email of the login whose live access token authorised the request; `None` when the
    /// token was missing, unknown or expired.
    pub email: Option<String>,
    /// `anthropic-version` as sent.
    pub anthropic_version: Option<String>,
    /// `anthropic-beta` values as sent, joined with `,`.
    pub anthropic_beta: Option<String>,
    /// `user-agent` as sent.
    pub user_agent: Option<String>,
    /// The JSON body (`Null` when it was not JSON).
    pub body: serde_json::Value,
}

/// What the server's handlers share with the handle.
pub(crate) struct Shared {
    state: Mutex<State>,
    base_url: String,
    /// The number of cancelled streams, for waiters.
    pub(crate) cancelled: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    /// Locks the state. A panic in a handler cannot leave it half-updated in a way that matters
    /// to a test, so a poisoned lock is simply taken over.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn redirect_uri(&self) -> String {
        format!("{}/oauth/code/callback", self.base_url)
    }

    pub(crate) fn authorize_url(&self) -> String {
        format!("{}/oauth/authorize", self.base_url)
    }
}

struct Inner {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    // The last handle gone, nobody can reach the server's state any more: stop serving so a
    // test's runtime is not kept busy.
    fn drop(&mut self) {
        if let Some(task) = self.task.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

/// A running mock provider. Cloning gives another handle to the same server; the server stops
/// when [`MockProvider::stop`] is called or the last handle is dropped.
#[derive(Clone)]
pub struct MockProvider {
    inner: Arc<Inner>,
}

impl fmt::Debug for MockProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockProvider").field("base_url", &self.base_url()).finish()
    }
}

impl MockProvider {
    /// Starts a mock on `127.0.0.1` with a port chosen by the system.
    pub async fn start() -> std::io::Result<MockProvider> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a mock listening on `addr`. It is serving when this returns.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<MockProvider> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(tokenkeeper_core::clock::system_clock())),
            base_url: format!("http://{addr}"),
            cancelled: tokio::sync::watch::channel(0).0,
        });
        let (tx, rx) = oneshot::channel::<()>();
        let app = routes::router(shared.clone());
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = rx.await;
            });
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "mock provider stopped with an error");
            }
        });
        Ok(MockProvider {
            inner: Arc::new(Inner { shared, addr, shutdown: Mutex::new(Some(tx)), task: Mutex::new(Some(task)) }),
        })
    }

    /// Stops serving, waits for open connections to finish (up to a second), and returns.
    pub async fn stop(&self) {
        let tx = self.inner.shutdown.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(tx) = tx {
            let _ = tx.send(());
        }
        let task = self.inner.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut task) = task {
            if tokio::time::timeout(Duration::from_secs(1), &mut task).await.is_err() {
                task.abort();
            }
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        self.inner.shared.base_url.clone()
    }

    /// `{base}/v1/oauth/token`
    pub fn token_url(&self) -> String {
        format!("{}/v1/oauth/token", self.base_url())
    }

    /// `{base}/oauth/authorize`
    pub fn authorize_url(&self) -> String {
        self.inner.shared.authorize_url()
    }

    /// `{base}/oauth/code/callback`
    pub fn redirect_uri(&self) -> String {
        self.inner.shared.redirect_uri()
    }

    /// Base of the Messages API: `{base}`.
    pub fn api_base_url(&self) -> String {
        self.base_url()
    }

    /// The client id it accepts, [`CLIENT_ID`].
    pub fn client_id(&self) -> &str {
        CLIENT_ID
    }

    /// Creates a login directly, as if `email` had logged in: a live access and refresh token
    /// pair with Claude Code's default scopes.
    pub fn issue_login(&self, email: &str) -> IssuedTokens {
        let mut st = self.inner.shared.lock();
        let pair = st.issue_pair(email, State::default_scopes(), true);
        IssuedTokens {
            access_token: pair.access_token,
            refresh_token: pair.refresh_token.unwrap_or_default(),
            expires_in: pair.expires_in,
            expires_at_ms: pair.expires_at.timestamp_millis(),
        }
    }

    /// Completes the browser step of a login: checks the authorize URL tokenkeeper built
    /// (`response_type=code`, `client_id`, `redirect_uri`, `code_challenge` with
    /// `code_challenge_method=S256`, `state`, `scope`, `code=true`) and returns what the
    /// callback page shows the user to paste, `CODE#STATE`. The error says what was wrong.
    pub fn authorize(&self, authorize_url: &str, email: &str) -> Result<String, String> {
        let req = authorize::check_url(authorize_url, &self.authorize_url(), &self.redirect_uri())?;
        let mut st = self.inner.shared.lock();
        let code = st.register_code(email, &req.state, &req.redirect_uri, &req.challenge, req.scopes);
        Ok(format!("{code}#{}", req.state))
    }

    /// Lifetime of access tokens issued from now on (default 8 h).
    pub fn set_access_lifetime(&self, d: Duration) {
        self.inner.shared.lock().access_lifetime = d;
    }

    /// The clock by which the mock stamps and judges access-token expiry and code age
    /// (default: the system clock).
    pub fn set_clock(&self, clock: SharedClock) {
        self.inner.shared.lock().clock = clock;
    }

    /// Queues a fault; each request of the fault's kind takes the oldest one queued.
    pub fn push_fault(&self, fault: Fault) {
        self.inner.shared.lock().push_fault(fault);
    }

    /// Applies `fault` to every request of its kind (after queued faults) until cleared with
    /// `None`.
    pub fn set_persistent_fault(&self, fault: Option<Fault>) {
        self.inner.shared.lock().persistent = fault;
    }

    /// A snapshot of the counters.
    pub fn counts(&self) -> Counts {
        self.inner.shared.lock().counts.clone()
    }

    /// What the last token request carried (no tokens), to check what a client sends.
    pub fn last_token_request(&self) -> Option<TokenRequestSummary> {
        self.inner.shared.lock().last_token_request.clone()
    }

    /// What the last Messages API request carried (no token).
    pub fn last_messages_request(&self) -> Option<MessagesRequestSummary> {
        self.inner.shared.lock().last_messages_request.clone()
    }

    /// Issues an API key (`sk-ant-api03-…`) that the Messages API accepts as `x-api-key`;
    /// requests with it are recorded as [`Credential::ApiKey`] with `label`.
    pub fn issue_api_key(&self, label: &str) -> String {
        let key = format!("sk-ant-api03-{}", state::random_string(48));
        self.inner.shared.lock().api_keys.insert(key.clone(), label.to_owned());
        key
    }

    /// Queues a Messages fault for one account (its login email, or its API key's label).
    pub fn push_account_fault(&self, who: &str, fault: Fault) {
        self.inner.shared.lock().account_faults.entry(who.to_owned()).or_default().push_back(fault);
    }

    /// Applies a Messages fault to every request of one account until cleared with `None`.
    pub fn set_account_fault(&self, who: &str, fault: Option<Fault>) {
        let mut st = self.inner.shared.lock();
        match fault {
            Some(f) => {
                st.account_persistent.insert(who.to_owned(), f);
            }
            None => {
                st.account_persistent.remove(who);
            }
        }
    }

    /// The 5-hour and 7-day utilisation (0..=1) reported in one account's rate-limit headers
    /// (default 0.12 and 0.34).
    pub fn set_utilization(&self, who: &str, five_hour: f64, seven_day: f64) {
        self.inner.shared.lock().utilization.insert(who.to_owned(), (five_hour, seven_day));
    }

    /// Every API request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.inner.shared.lock().recorded.clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.inner.shared.lock().recorded.clear();
    }

    /// Waits until at least `n` streams have been cancelled by their client; false after
    /// `timeout`.
    pub async fn wait_streams_cancelled(&self, n: u64, timeout: Duration) -> bool {
        let mut rx = self.inner.shared.cancelled.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n)).await.is_ok_and(|r| r.is_ok())
    }

    /// The URL of another provider's token endpoint on this mock ([`Shape::path`]).
    pub fn shape_token_url(&self, shape: Shape) -> String {
        format!("{}{}", self.base_url(), shape.path())
    }

    /// `{base}` + [`Shape::authorize_path`]: the authorize page of `shape` to configure as
    /// `[providers.codex] authorize_url` or `[providers.gemini] authorize_url`.
    pub fn shape_authorize_url(&self, shape: Shape) -> String {
        format!("{}{}", self.base_url(), shape.authorize_path())
    }

    /// Completes the browser step of a Codex or Google login: checks the authorize URL
    /// tokenkeeper built (client id, S256 challenge, state, scope, Codex's
    /// `id_token_add_organizations` and `codex_cli_simplified_flow`, Google's
    /// `access_type=offline`), issues a single-use code for `email` bound to the challenge and
    /// the redirect URI, and returns the URL the browser lands on (`redirect_uri?code=…&state=…`).
    pub fn authorize_shape(&self, shape: Shape, authorize_url: &str, email: &str) -> Result<String, String> {
        let base = self.shape_authorize_url(shape);
        self.inner.shared.lock().shapes.authorize(shape, authorize_url, &base, email)
    }

    /// Creates a login at `shape`'s endpoint directly, as if `email` had logged in with that
    /// provider's CLI.
    pub fn issue_shape_login(&self, shape: Shape, email: &str) -> ShapeLogin {
        let mut st = self.inner.shared.lock();
        let now = st.now();
        st.shapes.issue(shape, email, now, true).0
    }

    /// Lifetime of access tokens `shape` issues from now on (Codex about 10 days, Google 3599 s,
    /// generic an hour).
    pub fn set_shape_access_lifetime(&self, shape: Shape, d: Duration) {
        self.inner.shared.lock().shapes.set_lifetime(shape, d);
    }

    /// How [`Shape::Generic`] behaves from now on.
    pub fn set_generic_shape(&self, generic: GenericShape) {
        self.inner.shared.lock().shapes.generic = generic;
    }

    /// Revokes a refresh token of `shape`: Codex then answers `refresh_token_invalidated`,
    /// the others `invalid_grant`.
    pub fn revoke_shape(&self, shape: Shape, refresh_token: &str) {
        self.inner.shared.lock().shapes.revoke(shape, refresh_token);
    }

    /// The counters of `shape`'s endpoint.
    pub fn shape_counts(&self, shape: Shape) -> ShapeCounts {
        self.inner.shared.lock().shapes.counts(shape)
    }

    /// What the last request to `shape`'s endpoint carried (field names, no secret values).
    pub fn last_shape_request(&self, shape: Shape) -> Option<ShapeRequest> {
        self.inner.shared.lock().shapes.last(shape)
    }

    /// Revokes a refresh token: from now on it answers `invalid_grant`.
    pub fn revoke(&self, refresh_token: &str) {
        self.inner.shared.lock().revoke(refresh_token);
    }

    /// Whether `token` is an access token this mock issued and that has not expired by its
    /// clock.
    pub fn is_access_token_valid(&self, token: &str) -> bool {
        self.inner.shared.lock().access_valid(token)
    }
}
