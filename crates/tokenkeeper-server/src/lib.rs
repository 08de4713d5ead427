//! The HTTP API of tokenkeeper: the seeds' endpoints (`/api/status`, `/api/push`,
//! `/api/auto-refresh[-if-needed]`, `/oauth/exchange-code`, `/oauth/status`,
//! `DELETE /oauth/tokens[/{email}]`, `/health`) plus `/api/token`, `/oauth/start`, `/ready`,
//! `/metrics` and `/api/openapi.json`, all behind scoped API keys.
//!
//! - [`router`] builds the API's axum router; the binary merges in the routes of other
//!   components: the web page with [`AppState::with_routes`]; the proxy (whose streams must
//!   not meet the API's request timeout, and whose requests skip the router) is served ahead
//!   of the router as a [`front::Front`] with [`AppState::with_front`];
//! - [`serve`] runs it on a TCP listener (TLS when configured) and a Unix socket, until a
//!   shutdown future resolves, draining requests in flight, each connection on a connection
//!   thread (`shards`); [`serve_front`] serves a front alone on a listener of its own with the
//!   same TLS and connection limits;
//! - [`auth`] has the admin token, API keys and the authentication extractor;
//! - [`client`] has the client-address extractor and the per-address failure limit that the
//!   API, the proxy and the web page share;
//! - [`error::ApiError`] is the one error answer of every handler.
//!
//! See `docs/API.md` for every endpoint with `curl` examples.

pub mod api;
pub mod auth;
pub mod body;
pub mod client;
pub mod error;
pub mod front;
pub mod listen;
pub mod metrics;
pub mod oauth;
mod shards;
pub mod state;

use axum::http::StatusCode;
use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};

pub use auth::{
    create_api_key, list_api_keys, load_or_create_admin_token, revoke_api_key, Authed, NewApiKey, Principal, Scope,
    ADMIN_TOKEN_ENV,
};
pub use error::{ApiError, ServerError};
pub use listen::{serve, serve_front};
pub use state::{AppState, ExtraRoutes, RegistryMetrics, Replica};

/// The OpenAPI 3 document served at `/api/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// Every API route: method, path (axum and OpenAPI share the `{param}` syntax), handler. One
/// table, so [`api_routes`] lists exactly what [`router`] serves.
fn table() -> Vec<(&'static str, &'static str, MethodRouter<AppState>)> {
    vec![
        ("get", "/health", get(api::health)),
        ("get", "/ready", get(api::ready)),
        ("get", "/metrics", get(metrics::metrics)),
        ("get", "/api/status", get(api::status)),
        ("post", "/api/push", post(api::push)),
        ("post", "/api/auto-refresh", post(api::auto_refresh)),
        ("post", "/api/auto-refresh-if-needed", post(api::auto_refresh_if_needed)),
        ("get", "/api/token", get(api::token)),
        ("get", "/api/openapi.json", get(api::openapi)),
        ("post", "/oauth/start", post(oauth::start)),
        ("post", "/oauth/exchange-code", post(oauth::exchange_code)),
        ("get", "/oauth/status", get(oauth::status)),
        ("delete", "/oauth/tokens/{account_email}", delete(oauth::delete_one)),
        ("delete", "/oauth/tokens", delete(oauth::delete_all)),
    ]
}

/// Every route [`router`] serves for the API (the web page's routes aside), as
/// `(method, path)` with lower-case methods.
pub fn api_routes() -> Vec<(&'static str, &'static str)> {
    table().into_iter().map(|(m, p, _)| (m, p)).collect()
}

/// The API router over `state` (plain-HTTP cookies for the web page).
pub fn router(state: AppState) -> Router {
    router_with(state, false)
}

/// The router; `secure_cookies` when served over TLS.
pub(crate) fn router_with(state: AppState, secure_cookies: bool) -> Router {
    let mut api: Router<AppState> = Router::new();
    for (_, path, handler) in table() {
        api = api.route(path, handler);
    }
    let extra = state.extra_routes.as_ref().map(|f| f(secure_cookies));
    let limits = &state.keeper.config().server;
    // A body that stops arriving ends after `body_read_timeout`; a whole request (a body
    // trickled in a byte at a time included) after `request_timeout`, answered 408.
    let body_timeout = RequestBodyTimeoutLayer::new(limits.body_read_timeout);
    let request_timeout = TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, limits.request_timeout);
    let mut app = api.with_state(state);
    if let Some(extra) = extra {
        app = app.merge(extra);
    }
    app.layer(body_timeout).layer(request_timeout)
}
