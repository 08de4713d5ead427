//! The two error types of the server: [`ApiError`], which every handler returns and which
//! becomes one JSON answer (`{"error": "...", "hint": "..."}`), and [`ServerError`], for the
//! set-up around the API (admin token file, API keys, TLS files).
//!
//! The person calling the API sees a clear sentence and a hint; the whole error chain goes to
//! the log. Neither ever holds a token: keeper and format errors never quote one, and the
//! messages here only name accounts, scopes and paths.

use std::path::PathBuf;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use tokenkeeper_core::formats::FormatError;
use tokenkeeper_core::StoreError;
use tokenkeeper_keeper::KeeperError;

use crate::auth::Scope;

/// Everything an API request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No `Authorization: Bearer` header.
    #[error("this endpoint needs an API key")]
    MissingKey,
    /// A key was sent but it is unknown, revoked or malformed.
    #[error("the API key is not valid (unknown or revoked)")]
    BadKey,
    /// The key is valid but lacks the scope the endpoint needs.
    #[error("this API key lacks the `{scope}` scope")]
    MissingScope {
        /// The scope the endpoint needs.
        scope: Scope,
    },
    /// The key is limited to other accounts.
    #[error("this API key may not use account `{account}`")]
    AccountDenied {
        /// The account asked for.
        account: String,
    },
    /// The key is limited to several accounts and the request named none.
    #[error("this API key is limited to several accounts; name one with `?account=`")]
    AccountRequired,
    /// Clearing every account needs a key that is not limited to accounts.
    #[error("deleting every account needs a key that is not limited to some accounts")]
    NeedsUnrestrictedKey,
    /// Too many failed authentications from this client address.
    #[error("too many failed authentication attempts from this address")]
    RateLimited {
        /// How long until attempts are accepted again.
        retry_after: Duration,
    },
    /// The request body is larger than the limit.
    #[error("the request body is larger than {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The request body stopped arriving for longer than `[server] body_read_timeout`.
    #[error("the request body arrived too slowly (nothing for {after:?})")]
    SlowBody {
        /// The timeout.
        after: std::time::Duration,
    },
    /// The request body could not be read as what the endpoint expects.
    #[error("the request body is not valid: {reason}")]
    BadBody {
        /// What was wrong (never quotes the body).
        reason: String,
        /// What to send instead.
        hint: &'static str,
    },
    /// The pushed text is not a credential in any known format.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The state of a pasted code matches no login started here (or it expired).
    #[error("no login started with `POST /oauth/start` matches this code (it may have expired after 10 minutes)")]
    UnknownLogin,
    /// No account by that name or email.
    #[error("no account named `{0}` (nor with that email)")]
    NoSuchAccount(String),
    /// The store could not be reached for the readiness check.
    #[error("the store is not reachable")]
    NotReady(#[source] StoreError),
    /// The keeper refused or failed.
    #[error(transparent)]
    Keeper(#[from] KeeperError),
    /// The store failed.
    #[error("the store failed")]
    Store(#[from] StoreError),
    /// Rendering the metrics failed.
    #[error("cannot render the metrics")]
    Metrics(#[source] std::fmt::Error),
}

/// The JSON body of every error answer.
#[derive(Debug, serde::Serialize)]
struct ErrorBody {
    error: String,
    hint: String,
}

impl ApiError {
    /// The HTTP status, and a `Retry-After` when waiting helps.
    pub fn status(&self) -> (StatusCode, Option<Duration>) {
        match self {
            ApiError::MissingKey | ApiError::BadKey => (StatusCode::UNAUTHORIZED, None),
            ApiError::MissingScope { .. }
            | ApiError::AccountDenied { .. }
            | ApiError::AccountRequired
            | ApiError::NeedsUnrestrictedKey => (StatusCode::FORBIDDEN, None),
            ApiError::RateLimited { retry_after } => (StatusCode::TOO_MANY_REQUESTS, Some(*retry_after)),
            ApiError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, None),
            ApiError::SlowBody { .. } => (StatusCode::REQUEST_TIMEOUT, None),
            ApiError::BadBody { .. } | ApiError::Format(_) | ApiError::UnknownLogin => (StatusCode::BAD_REQUEST, None),
            ApiError::NoSuchAccount(_) => (StatusCode::NOT_FOUND, None),
            ApiError::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, None),
            ApiError::Keeper(e) => keeper_status(e),
            ApiError::Store(_) | ApiError::Metrics(_) => (StatusCode::INTERNAL_SERVER_ERROR, None),
        }
    }

    /// What the caller can do about it.
    pub fn hint(&self) -> String {
        match self {
            ApiError::MissingKey => "send `Authorization: Bearer <key>`: create a key with `tokenkeeper keys create --name NAME --scope SCOPE`, or use the admin token printed by `tokenkeeper server token`".into(),
            ApiError::BadKey => "check the key for copy-and-paste errors; list keys with `tokenkeeper keys list` and create a new one with `tokenkeeper keys create`".into(),
            ApiError::MissingScope { scope } => format!("create a key with `--scope {scope}` (or `--scope admin`)"),
            ApiError::AccountDenied { account } => format!("create a key with `--account {account}`, or one without account limits"),
            ApiError::AccountRequired => "add `?account=NAME` for one of the accounts the key may use".into(),
            ApiError::NeedsUnrestrictedKey => "delete the accounts one by one with `DELETE /oauth/tokens/{account}`, or use a key without account limits".into(),
            ApiError::RateLimited { retry_after } => format!("wait {} s; failed attempts are counted per client address", retry_after.as_secs().max(1)),
            ApiError::TooLarge { .. } => "send one credential (a .credentials.json file is well under 64 KiB)".into(),
            ApiError::SlowBody { .. } => "send the whole body at once; a credential is a few kilobytes".into(),
            ApiError::BadBody { hint, .. } => (*hint).into(),
            ApiError::Format(_) => "send Claude Code's .credentials.json, its base64 form, OpenClaw's oauth.json or a sk-ant-oat01- token, as the body or as {\"credential\": \"...\"}".into(),
            ApiError::UnknownLogin => "start a new login with `POST /oauth/start`, open its authorize_url, and send the code it shows (CODE#STATE) within 10 minutes".into(),
            ApiError::NoSuchAccount(_) => "list the accounts with `GET /oauth/status` or `GET /api/status`".into(),
            ApiError::NotReady(_) => "see the server's log; the data directory may be unreadable or full".into(),
            ApiError::Keeper(e) => keeper_hint(e).into(),
            ApiError::Store(_) | ApiError::Metrics(_) => "see the server's log for the cause".into(),
        }
    }
}

fn keeper_status(e: &KeeperError) -> (StatusCode, Option<Duration>) {
    match e {
        KeeperError::NoSuchAccount(_) | KeeperError::NoAccounts => (StatusCode::NOT_FOUND, None),
        KeeperError::Ambiguous(_)
        | KeeperError::BadAccountName(_)
        | KeeperError::BadLoginCode(_)
        | KeeperError::LoginCodeRefused { .. }
        | KeeperError::NoLoginFlow { .. } => (StatusCode::BAD_REQUEST, None),
        KeeperError::NeedsLogin { .. }
        | KeeperError::Refused { .. }
        | KeeperError::NotRefreshable { .. }
        | KeeperError::FollowMode { .. }
        | KeeperError::UnknownProvider { .. } => (StatusCode::CONFLICT, None),
        KeeperError::TryLater { retry_after, .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, Some(retry_after.unwrap_or(Duration::from_secs(30))))
        }
        e if e.is_temporary() => (StatusCode::SERVICE_UNAVAILABLE, Some(Duration::from_secs(5))),
        KeeperError::Lock(_) | KeeperError::Store(_) | KeeperError::Provider(_) | KeeperError::Watcher(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, None)
        }
    }
}

fn keeper_hint(e: &KeeperError) -> &'static str {
    match e {
        KeeperError::NoSuchAccount(_) => "list the accounts with `GET /api/status`",
        KeeperError::NoAccounts => "push a credential with `POST /api/push` or log in with `POST /oauth/start`",
        KeeperError::Ambiguous(_) => "add `?account=NAME`",
        KeeperError::NeedsLogin { .. } => {
            "log in again (`POST /oauth/start`, or `tokenkeeper login --push URL` on a machine with a browser)"
        }
        KeeperError::Refused { .. } => {
            "the stored credential is newer; nothing was changed. Push a credential from a newer login"
        }
        KeeperError::NotRefreshable { .. } => {
            "long-lived tokens cannot be refreshed; create a new one with `claude setup-token` and push it"
        }
        KeeperError::FollowMode { .. } => "Claude Code refreshes this account; run `claude` where it lives",
        KeeperError::UnknownProvider { .. } => {
            "add a `[providers.ID]` table for the account's provider to the server's configuration and restart it"
        }
        KeeperError::NoLoginFlow { .. } => "push the provider's credential with `POST /api/push` instead",
        KeeperError::TryLater { .. } => "try again after the time in Retry-After",
        KeeperError::BadAccountName(_) => "name the account with letters, digits, `.`, `_`, `-`, `@` or `+`",
        KeeperError::BadLoginCode(_) => "send the whole string the authorize page shows after login (CODE#STATE)",
        KeeperError::LoginCodeRefused { .. } => {
            "codes work once, for about ten minutes: start a new login with `POST /oauth/start` and send its code promptly"
        }
        KeeperError::Lock(_) | KeeperError::Store(_) | KeeperError::Provider(_) | KeeperError::Watcher(_) => {
            "see the server's log for the cause"
        }
    }
}

use tokenkeeper_core::error_chain as chain;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, retry_after) = self.status();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %chain(&self), "API request failed");
        } else {
            tracing::debug!(status = status.as_u16(), error = %chain(&self), "API request refused");
        }
        let body = ErrorBody { error: self.to_string(), hint: self.hint() };
        let mut response = (status, Json(body)).into_response();
        if let Some(after) = retry_after {
            if let Ok(v) = HeaderValue::from_str(&after.as_secs().max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Errors of the set-up around the API: the admin token file, API keys, TLS files.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A file could not be read or written.
    #[error("cannot {action} {path}")]
    Io {
        /// What we were doing.
        action: &'static str,
        /// Which file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The admin token file exists but holds nothing usable.
    #[error("the admin token file {path} is empty; delete it to have a new token generated")]
    EmptyAdminToken {
        /// Which file.
        path: PathBuf,
    },
    /// An unknown scope was asked for.
    #[error("unknown scope `{scope}`; use one of: {known}")]
    UnknownScope {
        /// The scope given.
        scope: String,
        /// The scopes there are.
        known: String,
    },
    /// A key needs at least one scope.
    #[error("an API key needs at least one --scope (one of: {known})")]
    NoScopes {
        /// The scopes there are.
        known: String,
    },
    /// `--pool` without the `proxy` scope, or more than one pool.
    #[error("--pool: {0}")]
    BadPool(&'static str),
    /// A key name is empty or too long.
    #[error("a key name must be 1 to 64 characters without control characters")]
    BadKeyName,
    /// An account name given for a key is not valid.
    #[error("--account {account}: {reason}")]
    BadAccount {
        /// The name given.
        account: String,
        /// Which rule it breaks.
        reason: tokenkeeper_core::account::AccountNameError,
    },
    /// Another active key has that name.
    #[error("an active key named `{0}` exists already; revoke it first or pick another name")]
    DuplicateKeyName(String),
    /// The store failed.
    #[error("the store failed while trying to {action}")]
    Store {
        /// What we were doing.
        action: &'static str,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// The TLS certificate or key could not be used.
    #[error("TLS: cannot use {path}: {reason}")]
    Tls {
        /// Which file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Only one of `tls_cert` and `tls_key` is set.
    #[error("[server] tls_cert and tls_key must be set together (only one of them is set)")]
    TlsHalfConfigured,
}

impl From<ServerError> for std::io::Error {
    fn from(e: ServerError) -> Self {
        match e {
            ServerError::Io { source, action, path } => {
                std::io::Error::new(source.kind(), format!("cannot {action} {}: {source}", path.display()))
            }
            other => std::io::Error::new(std::io::ErrorKind::InvalidInput, other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeper_errors_map_the_callers_input_to_400_and_internal_failures_to_500() {
        let bad_name = tokenkeeper_core::account::validate_account_name("../x").unwrap_err();
        for e in [
            KeeperError::BadAccountName(bad_name),
            KeeperError::BadLoginCode(tokenkeeper_provider::LoginError::MissingState),
            KeeperError::LoginCodeRefused { reason: "invalid_grant".into() },
        ] {
            assert_eq!(keeper_status(&e), (StatusCode::BAD_REQUEST, None), "{e}");
            assert_ne!(keeper_hint(&e), "see the server's log for the cause", "{e}");
        }
        let watcher = KeeperError::Watcher(tokenkeeper_sync::SyncError::Io {
            action: "watch",
            path: "/data".into(),
            source: std::io::Error::other("too many open files"),
        });
        assert_eq!(keeper_status(&watcher), (StatusCode::INTERNAL_SERVER_ERROR, None));
        assert_eq!(keeper_hint(&watcher), "see the server's log for the cause");
    }
}
