//! The `/oauth/...` handlers, with seed 003's paths and shapes: start a login, exchange the
//! pasted code, the per-token status, and removal of accounts.
//!
//! In seed 003 the caller names each login: `POST /oauth/exchange-code {"code": ...,
//! "account_email": "one@example.com"}` stores the login under `one@example.com`, whatever
//! email the provider reports for it. That value is the account's *name* here, and every
//! answer of these handlers gives it back as `account_email` (so `GET /oauth/status` lists it
//! and `DELETE /oauth/tokens/{account_email}` removes it). The provider's own email, which may
//! differ, is `provider_email`.

use axum::extract::{Path, Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use tokenkeeper_core::pool::{self, PoolState};
use tokenkeeper_core::status::human_duration;
use tokenkeeper_core::Account;
use tokenkeeper_keeper::{IngestOutcome, KeeperError};

use crate::auth::{scope, Authed};
use crate::body::LimitedBody;
use crate::error::ApiError;
use crate::state::{AccountWithSinks, AppState, LOGIN_TTL_SECS};

/// `POST /oauth/start`: a new PKCE login; open `authorize_url`, then send the code it shows
/// to `/oauth/exchange-code` within 10 minutes.
/// `?provider=codex` (or `gemini`, or a `[providers.ID]` of those kinds) logs in with that
/// provider instead of Anthropic.
pub async fn start(
    _auth: Authed<scope::Login>,
    State(st): State<AppState>,
    Query(query): Query<StartQuery>,
) -> Result<Json<Value>, ApiError> {
    let (url, state) = st.start_login(query.provider.as_deref()).await?;
    Ok(Json(json!({"authorize_url": url, "state": state, "expires_in_seconds": LOGIN_TTL_SECS})))
}

/// The query of `POST /oauth/start`.
#[derive(Debug, Deserialize)]
pub struct StartQuery {
    /// The provider to log in with (default Anthropic).
    #[serde(default)]
    provider: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ExchangeRequest {
    code: String,
    #[serde(default)]
    account_email: Option<String>,
    #[serde(default)]
    account: Option<String>,
}

const EXCHANGE_HINT: &str = "send {\"code\": \"CODE#STATE\", \"account_email\": \"you@example.com\"}";

/// The `state` in what a person pasted: after `#`, or the `state` parameter of a callback URL.
fn pasted_state(code: &str) -> Option<String> {
    let code = code.trim().trim_matches(|c| c == '"' || c == '\'');
    if code.starts_with("http://") || code.starts_with("https://") {
        let url = url::Url::parse(code).ok()?;
        let state = url.query_pairs().find(|(k, _)| k == "state").map(|(_, v)| v.into_owned());
        return state.or_else(|| url.fragment().map(str::to_owned));
    }
    code.split_once('#').map(|(_, s)| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// What `/oauth/exchange-code` answers.
#[derive(Debug, Serialize)]
pub struct ExchangeResponse {
    /// `created`, `updated` or `unchanged`.
    pub result: &'static str,
    /// The account's name: the caller's `account_email` when it sent one.
    pub account_email: String,
    /// The email the provider reports for this login, when it reports one.
    pub provider_email: Option<String>,
    /// The stored account.
    pub account: AccountWithSinks,
}

/// `POST /oauth/exchange-code`: `{"code": "CODE#STATE", "account_email": "..."}`. The account
/// is named `account_email` when given (seed 003), else after the provider's email. A bare
/// `CODE` (seed 003's console flow) is accepted while exactly one login is pending.
pub async fn exchange_code(
    auth: Authed<scope::Login>,
    State(st): State<AppState>,
    body: LimitedBody,
) -> Result<Json<ExchangeResponse>, ApiError> {
    let req: ExchangeRequest = body.json(EXCHANGE_HINT)?;
    if req.code.trim().is_empty() {
        return Err(ApiError::BadBody { reason: "`code` is empty".into(), hint: EXCHANGE_HINT });
    }
    let requested = req.account_email.as_deref().or(req.account.as_deref()).map(str::trim).filter(|s| !s.is_empty());
    let target = auth.target(requested)?;
    let state = pasted_state(&req.code);
    let pending = st.pending_login(state.as_deref()).await?.ok_or(ApiError::UnknownLogin)?;
    let pasted = match state {
        Some(_) => req.code.clone(),
        None => format!("{}#{}", req.code.trim(), pending.login.state),
    };
    let result = match &pending.started {
        Some(started) => st.keeper.finish_provider_login(target.as_deref(), &pasted, started).await,
        None => st.keeper.finish_login(target.as_deref(), &pasted, &pending.login).await,
    };
    // A code is single-use: forget the login unless waiting may help.
    if !matches!(&result, Err(e) if e.is_temporary()) {
        if let Err(e) = st.forget_login(&pending.login.state).await {
            tracing::warn!(error = %e, "cannot forget a used login; it expires on its own");
        }
    }
    let outcome = result?;
    let account = outcome.account();
    if let Err(e) = auth.check_account(&account.name) {
        // Only unrestricted callers leave the name to the keeper, so this cannot happen; it
        // stays as a guard against a future change of `target`.
        tracing::error!(account = %account.name, "login stored an account the key may not use");
        return Err(e);
    }
    let result = match &outcome {
        IngestOutcome::Created(_) => "created",
        IngestOutcome::Updated(_) => "updated",
        IngestOutcome::Unchanged(_) => "unchanged",
    };
    Ok(Json(ExchangeResponse {
        result,
        account_email: account.name.clone(),
        provider_email: account.email.clone(),
        account: st.view(account),
    }))
}

/// One token in `/oauth/status`: seed 003's fields, plus `provider_email`.
#[derive(Debug, Serialize)]
pub struct TokenStatus {
    /// The account's name: the `account_email` it was created with.
    pub account_email: String,
    /// The email the provider reports for this login, when known (may differ from
    /// `account_email`).
    pub provider_email: Option<String>,
    /// The account's provider id (`anthropic`, `anthropic-api-key`, `codex`, `gemini`, …).
    pub provider: String,
    /// Minutes until the access token expires (negative once expired), one decimal.
    pub expires_in_minutes: f64,
    /// Whether the token is usable and nothing critical is wrong (level healthy, expiring or
    /// warning).
    pub is_healthy: bool,
    /// Tokens handed out or requests served.
    pub usage_count: u64,
    /// When it was last used, in words ("5m ago", "never").
    pub last_used: String,
    /// When it was last used, unix seconds.
    pub last_used_timestamp: Option<i64>,
    /// When the account was created, unix seconds.
    pub created_at: i64,
    /// OAuth scopes.
    pub scopes: Vec<String>,
    /// The proxy pool the account serves first: the first `[pools.*]` listing it, else
    /// `default` (`null` when it is in none).
    pub pool: Option<String>,
    /// Every proxy pool the account belongs to.
    pub pools: Vec<String>,
    /// `active`, `cooling_down` (rate limited until `cooldown_until`) or `needs_login`.
    pub pool_state: PoolState,
    /// When its account-wide rate-limit cooldown ends, unix seconds (`null` when none runs).
    pub cooldown_until: Option<i64>,
}

/// `GET /oauth/status`.
#[derive(Debug, Serialize)]
pub struct OauthStatus {
    /// How many tokens (accounts).
    pub total_tokens: usize,
    /// Each.
    pub tokens: Vec<TokenStatus>,
}

fn last_used(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    t.map_or_else(|| "never".to_owned(), |t| format!("{} ago", human_duration(now - t)))
}

/// `GET /oauth/status`: every account the key may see, in seed 003's shape.
pub async fn status(
    auth: Authed<scope::StatusRead>,
    State(st): State<AppState>,
) -> Result<Json<OauthStatus>, ApiError> {
    let now = st.keeper.clock().now();
    let mut accounts = st.keeper.store().list_accounts().await?;
    accounts.retain(|a| auth.may_use(&a.name));
    accounts.sort_by(|a, b| a.name.cmp(&b.name));
    let sinks = st.sink_statuses();
    let cooldowns = pool::cooldowns_by_account(st.keeper.store().list_state(pool::COOLDOWN_PREFIX).await?);
    let config = st.keeper.config();
    let tokens: Vec<TokenStatus> = accounts
        .iter()
        .map(|a| {
            let mine = cooldowns.get(&a.name).map_or(&[][..], Vec::as_slice);
            let pools = pool::pools_of(config, &a.name);
            let level = st.view_with(a, &sinks).view.level;
            let minutes = a.credential.time_left(now).num_seconds() as f64 / 60.0;
            TokenStatus {
                account_email: a.name.clone(),
                provider_email: a.email.clone(),
                provider: a.provider.clone(),
                expires_in_minutes: (minutes * 10.0).round() / 10.0,
                is_healthy: level.exit_code() < 2,
                usage_count: a.usage.requests,
                last_used: last_used(a.usage.last_used_at, now),
                last_used_timestamp: a.usage.last_used_at.map(|t| t.timestamp()),
                created_at: a.created_at.timestamp(),
                scopes: a.credential.scopes.clone(),
                pool: pools.first().cloned(),
                pool_state: PoolState::of(a, mine, now),
                cooldown_until: pool::cooldown_until(mine, now).map(|t| t.timestamp()),
                pools,
            }
        })
        .collect();
    Ok(Json(OauthStatus { total_tokens: tokens.len(), tokens }))
}

/// The account an `{account_email}` path segment means: the account of that name (the
/// `account_email` it was created with), else the one account whose provider email it is.
async fn find_account(st: &AppState, key: &str) -> Result<Account, ApiError> {
    let store = st.keeper.store();
    if let Some(a) = store.get_account(key).await? {
        return Ok(a);
    }
    let mut by_email: Vec<Account> =
        store.list_accounts().await?.into_iter().filter(|a| a.email.as_deref() == Some(key)).collect();
    match by_email.len() {
        1 => Ok(by_email.remove(0)),
        0 => Err(ApiError::NoSuchAccount(key.to_owned())),
        _ => Err(ApiError::Keeper(KeeperError::Ambiguous(
            by_email.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(", "),
        ))),
    }
}

/// `DELETE /oauth/tokens/{account_email}`: removes one account (by the `account_email` it
/// was created with, or by its provider email when that names exactly one account).
pub async fn delete_one(
    auth: Authed<scope::AccountsWrite>,
    State(st): State<AppState>,
    Path(account_email): Path<String>,
) -> Result<Json<Value>, ApiError> {
    // A limited key learns nothing about accounts outside its limits: 403 either way.
    let account = match find_account(&st, &account_email).await {
        Ok(a) => a,
        Err(e) if auth.is_unrestricted() => return Err(e),
        // Only "no such account" is hidden; a store failure stays a server error.
        Err(ApiError::NoSuchAccount(_) | ApiError::Keeper(KeeperError::Ambiguous(_))) => {
            return Err(ApiError::AccountDenied { account: account_email })
        }
        Err(e) => return Err(e),
    };
    auth.check_account(&account.name)?;
    if !st.keeper.remove(&account.name).await? {
        return Err(ApiError::NoSuchAccount(account_email));
    }
    tracing::info!(account = %account.name, caller = ?auth.caller, "account removed through the API");
    Ok(Json(json!({"deleted": account.name, "account_email": account.name})))
}

/// `DELETE /oauth/tokens`: removes every account (needs a key without account limits).
pub async fn delete_all(
    auth: Authed<scope::AccountsWrite>,
    State(st): State<AppState>,
) -> Result<Json<Value>, ApiError> {
    if !auth.is_unrestricted() {
        return Err(ApiError::NeedsUnrestrictedKey);
    }
    let mut deleted = Vec::new();
    for a in st.keeper.store().list_accounts().await? {
        if st.keeper.remove(&a.name).await? {
            deleted.push(a.name);
        }
    }
    tracing::info!(count = deleted.len(), caller = ?auth.caller, "every account removed through the API");
    Ok(Json(json!({"count": deleted.len(), "deleted": deleted})))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn states_are_found_in_every_pasted_form() {
        assert_eq!(pasted_state("abc#st4te").as_deref(), Some("st4te"));
        assert_eq!(pasted_state("\"abc#st4te\"\n").as_deref(), Some("st4te"));
        assert_eq!(pasted_state("https://x.example/cb?code=abc&state=st4te").as_deref(), Some("st4te"));
        assert_eq!(pasted_state("abc"), None);
        assert_eq!(pasted_state("abc#"), None);
    }
}
