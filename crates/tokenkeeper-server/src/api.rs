//! The `/health`, `/ready` and `/api/...` handlers, with seed 001's paths and shapes.
//!
//! `GET /api/status` keeps seed 001's fields for the default account and maps tokenkeeper's
//! richer levels onto its four words (see [`seed_status`]); the exact level is in `level`.

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Local, Utc};
use serde::Serialize;
use serde_json::{json, Value};

use tokenkeeper_core::formats::parse_credential;
use tokenkeeper_core::status::Level;
use tokenkeeper_core::store::CredentialChange;
use tokenkeeper_core::{Account, Mode};
use tokenkeeper_keeper::keeper::chrono_duration;
use tokenkeeper_keeper::view::{AccountView, History};
use tokenkeeper_keeper::{Ingest, IngestOutcome, LeaseRequest, RefreshPolicy, RefreshResult};

use crate::auth::{scope, Authed, Caller};
use crate::body::LimitedBody;
use crate::error::ApiError;
use crate::state::{AccountWithSinks, AppState};

/// The value of `?name=` in a query string.
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// `GET /health`: liveness, no auth, nothing about accounts.
pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /ready`: the store answers.
pub async fn ready(_auth: Authed<scope::StatusRead>, State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    st.keeper.store().list_accounts().await.map_err(ApiError::NotReady)?;
    Ok(Json(json!({"status": "ready"})))
}

/// Seed 001's four status words for a level.
///
/// - `healthy`: healthy, and `expiring` when tokenkeeper itself will refresh it (an `own`
///   account with a refresh token): inside the lead time is then the normal moment before a
///   refresh, which `needs_refresh: true` tells;
/// - `warning`: `expiring` when nobody here will refresh it (a long-lived token, or a
///   `follow` account whose owner must act), `warning` and `critical`;
/// - `needs_login`: the provider rejected the refresh token;
/// - `expired`: the access token has expired.
pub fn seed_status(level: Level, account: &Account) -> &'static str {
    match level {
        Level::Healthy => "healthy",
        Level::Expiring if account.mode == Mode::Own && account.credential.is_refreshable() => "healthy",
        Level::Expiring | Level::Warning | Level::Critical => "warning",
        Level::NeedsLogin => "needs_login",
        Level::Expired => "expired",
    }
}

/// `GET /api/status`: seed 001's fields for the default account, and every account.
#[derive(Debug, Serialize)]
pub struct StatusResponse {
    /// The account the top-level fields describe (`null` without accounts).
    pub account: Option<String>,
    /// Its expiry as local time without offset, like seed 001 (`2026-01-24T06:18:47`).
    pub expires: Option<String>,
    /// Its expiry in RFC 3339 (UTC).
    pub expires_at: Option<DateTime<Utc>>,
    /// Whole days left (0 under a day: see `hours_remaining`).
    pub days_remaining: Option<i64>,
    /// Hours left, with fractions (7 hours is 7.0, not "0 days").
    pub hours_remaining: Option<f64>,
    /// Whether it has expired.
    pub is_expired: bool,
    /// Whether it is inside the refresh lead time (or expired).
    pub needs_refresh: bool,
    /// `healthy`, `warning`, `expired` or `needs_login` (see the mapping in the docs).
    pub status: &'static str,
    /// tokenkeeper's exact level (`healthy`, `expiring`, `warning`, `critical`,
    /// `needs-login`, `expired`).
    pub level: String,
    /// What is going on, in words.
    pub message: String,
    /// Every account the key may see, with its sinks.
    pub accounts: Vec<AccountWithSinks>,
    /// With `?history=true`: the last 24 hours of each visible account's events and hourly
    /// usage (what the web page's strips and sparklines draw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<History>,
    /// Which replica answered and who leads (only when `serve` runs the daemon beside the API).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<ReplicaStatus>,
}

/// The replica part of `/api/status`.
#[derive(Debug, Serialize)]
pub struct ReplicaStatus {
    /// This replica's id.
    pub id: String,
    /// Whether this replica leads (runs the scheduler, alerts and leader-only sinks).
    pub leader: bool,
    /// The replica that took leadership last, as recorded in the store.
    pub leader_id: Option<String>,
    /// When it did.
    pub leader_since: Option<DateTime<Utc>>,
}

/// This process's [`ReplicaStatus`], when it is told it is a replica.
pub(crate) async fn replica_status(st: &AppState) -> Option<ReplicaStatus> {
    let r = st.replica.as_ref()?;
    let recorded = st.keeper.store().get_state(tokenkeeper_core::backend::LEADER_KEY).await.ok().flatten();
    let field = |k: &str| recorded.as_ref().and_then(|v| v.get(k)).cloned();
    Some(ReplicaStatus {
        id: r.id.clone(),
        leader: *r.leading.borrow(),
        leader_id: field("replica").and_then(|v| v.as_str().map(str::to_owned)),
        leader_since: field("since").and_then(|v| serde_json::from_value(v).ok()),
    })
}

/// Whether a query flag is set (`true`, `1`, `yes`; anything else is off).
fn flag(value: Option<String>) -> bool {
    matches!(value.as_deref().map(str::to_ascii_lowercase).as_deref(), Some("true" | "1" | "yes"))
}

fn pick_default<'a>(accounts: &'a [Account], requested: Option<&str>) -> Option<&'a Account> {
    if let Some(n) = requested {
        return accounts.iter().find(|a| a.name == n);
    }
    accounts.iter().find(|a| a.name == "main").or_else(|| accounts.first())
}

/// `GET /api/status[?account=NAME][&history=true]`.
pub async fn status(
    auth: Authed<scope::StatusRead>,
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Json<StatusResponse>, ApiError> {
    let requested = query_param(q.as_deref(), "account");
    if let Some(n) = &requested {
        auth.check_account(n)?;
    }
    let mut all: Vec<Account> =
        st.keeper.store().list_accounts().await?.into_iter().filter(|a| auth.may_use(&a.name)).collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(n) = &requested {
        if !all.iter().any(|a| &a.name == n) {
            return Err(ApiError::Keeper(tokenkeeper_keeper::KeeperError::NoSuchAccount(n.clone())));
        }
    }
    let sinks = st.sink_statuses();
    let now = st.keeper.clock().now();
    let lead = chrono_duration(st.keeper.lead());
    let views: Vec<AccountWithSinks> = all.iter().map(|a| st.view_with(a, &sinks)).collect();
    let response = match pick_default(&all, requested.as_deref()) {
        Some(a) => {
            let view: &AccountView = views
                .iter()
                .find(|v| v.view.name == a.name)
                .map(|v| &v.view)
                .ok_or_else(|| ApiError::NoSuchAccount(a.name.clone()))?;
            let left = a.credential.time_left(now);
            StatusResponse {
                account: Some(a.name.clone()),
                expires: Some(a.credential.expires_at.with_timezone(&Local).format("%Y-%m-%dT%H:%M:%S").to_string()),
                expires_at: Some(a.credential.expires_at),
                days_remaining: Some(left.num_days().max(0)),
                hours_remaining: Some(((left.num_seconds().max(0) as f64) / 36.0).round() / 100.0),
                is_expired: a.credential.is_expired(now),
                needs_refresh: a.credential.needs_refresh(now, lead),
                status: seed_status(view.level, a),
                level: view.level.as_str().to_owned(),
                message: view.message.clone(),
                accounts: Vec::new(),
                history: None,
                replica: None,
            }
        }
        None => StatusResponse {
            account: None,
            expires: None,
            expires_at: None,
            days_remaining: None,
            hours_remaining: None,
            is_expired: true,
            needs_refresh: true,
            status: "needs_login",
            level: Level::NeedsLogin.as_str().to_owned(),
            message: "there are no accounts yet: push a credential (POST /api/push) or log in (POST /oauth/start)"
                .into(),
            accounts: Vec::new(),
            history: None,
            replica: None,
        },
    };
    let history = if flag(query_param(q.as_deref(), "history")) {
        let mut h = History::read(st.keeper.store().as_ref(), now).await?;
        // Only the accounts this key may see.
        h.accounts.retain(|name, _| all.iter().any(|a| &a.name == name));
        Some(h)
    } else {
        None
    };
    let replica = replica_status(&st).await;
    Ok(Json(StatusResponse { accounts: views, history, replica, ..response }))
}

/// What `/api/push` and the refresh endpoints answer.
#[derive(Debug, Serialize)]
pub struct ChangeResponse {
    /// `created`, `updated`, `unchanged`; or `refreshed`, `adopted`, `not_needed`.
    pub result: &'static str,
    /// What happened, in words.
    pub message: String,
    /// The stored account.
    pub account: AccountWithSinks,
}

/// Takes the credential out of a push body: `{"credential": "..."}` (or an object), else the
/// whole body (Claude JSON, base64, OpenClaw, a bare token). Public for the fuzz tests.
pub fn credential_text(body: &str) -> Result<String, ApiError> {
    let trimmed = body.trim();
    if trimmed.starts_with('{') {
        if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(trimmed) {
            match map.get("credential") {
                Some(Value::String(s)) => return Ok(s.clone()),
                Some(v @ Value::Object(_)) => return Ok(v.to_string()),
                Some(_) => {
                    return Err(ApiError::BadBody {
                        reason: "`credential` must be a string or an object".into(),
                        hint:
                            "send {\"credential\": \"<JSON, base64 or token>\"}, or the credential itself as the body",
                    })
                }
                None => {}
            }
        }
    }
    Ok(trimmed.to_owned())
}

/// `POST /api/push[?account=NAME]`: stores a credential unless it is older than the stored one.
pub async fn push(
    auth: Authed<scope::Push>,
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
    body: LimitedBody,
) -> Result<Response, ApiError> {
    let target = auth.target(query_param(q.as_deref(), "account").as_deref())?;
    let text = credential_text(&body.0)?;
    let parsed = parse_credential(&text, st.keeper.clock().now())?;
    let format = parsed.format.describe();
    let outcome = st
        .keeper
        .ingest(Ingest {
            account: target,
            parsed,
            mode: None,
            binding: None,
            change: CredentialChange::Imported,
            organization: None,
            provider: None,
        })
        .await?;
    let (status, result, message) = match &outcome {
        IngestOutcome::Created(_) => (StatusCode::CREATED, "created", format!("{format} stored in a new account")),
        IngestOutcome::Updated(_) => (StatusCode::OK, "updated", format!("{format} replaced an older credential")),
        IngestOutcome::Unchanged(_) => (StatusCode::OK, "unchanged", "this credential was stored already".to_owned()),
    };
    let account = st.view(outcome.account());
    Ok((status, Json(ChangeResponse { result, message, account })).into_response())
}

async fn refresh_with(
    auth: &Authed<impl scope::Required>,
    st: &AppState,
    q: Option<&str>,
    policy: RefreshPolicy,
) -> Result<Json<ChangeResponse>, ApiError> {
    let account = auth.resolve_account(&st.keeper, query_param(q, "account").as_deref()).await?;
    let r = st.keeper.refresh(&account.name, policy).await?;
    let (result, message) = match &r {
        RefreshResult::Refreshed(_) => ("refreshed", "refreshed with the provider".to_owned()),
        RefreshResult::Adopted(_) => ("adopted", "someone else had just refreshed it; took theirs".to_owned()),
        RefreshResult::NotNeeded(a) => (
            "not_needed",
            format!(
                "not due: valid for {}",
                tokenkeeper_core::status::human_duration(a.credential.time_left(st.keeper.clock().now()))
            ),
        ),
    };
    Ok(Json(ChangeResponse { result, message, account: st.view(r.account()) }))
}

/// `POST /api/auto-refresh[?account=NAME]`: refresh now (a refresh by anyone in the last 30 s
/// counts).
pub async fn auto_refresh(
    auth: Authed<scope::Refresh>,
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Json<ChangeResponse>, ApiError> {
    refresh_with(&auth, &st, q.as_deref(), RefreshPolicy::Force).await
}

/// `POST /api/auto-refresh-if-needed[?account=NAME]`: refresh only inside the lead time.
pub async fn auto_refresh_if_needed(
    auth: Authed<scope::Refresh>,
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Json<ChangeResponse>, ApiError> {
    let lead = st.keeper.lead();
    refresh_with(&auth, &st, q.as_deref(), RefreshPolicy::IfWithin(lead)).await
}

/// What `GET /api/token` answers: the only answer that holds a token. It borrows from the
/// lease (nothing copied on the hot path) and has no `Debug`, so it cannot be logged.
#[derive(Serialize)]
struct TokenResponse<'a> {
    access_token: &'a str,
    expires_at: DateTime<Utc>,
    expires_in_seconds: i64,
    account: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    warning: Option<&'a str>,
}

/// `GET /api/token[?account=NAME]`: a fresh access token (refreshed first inside the lead
/// time), from the keeper's one hand-out path; counts one use under the caller's key.
pub async fn token(
    auth: Authed<scope::TokenRead>,
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let target = auth.target(query_param(q.as_deref(), "account").as_deref())?;
    let key_id = match &auth.caller {
        Caller::Key { id, .. } => Some(id.as_str()),
        _ => None,
    };
    let lease = st.keeper.lease(LeaseRequest { account: target.as_deref(), key_id, model: None }).await?;
    auth.check_account(&lease.account().name)?;
    let now = st.keeper.clock().now();
    if let Some(w) = lease.warning() {
        tracing::warn!(account = %lease.account().name, warning = %w, "handing out a still-valid token; the refresh failed");
    }
    tracing::debug!(account = %lease.account().name, token = %lease.token().fingerprint(), caller = ?auth.caller, "access token handed out");
    let body = TokenResponse {
        access_token: lease.token().expose(),
        expires_at: lease.expires_at(),
        expires_in_seconds: lease.account().credential.time_left(now).num_seconds(),
        account: &lease.account().name,
        warning: lease.warning(),
    };
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response())
}

/// `GET /api/openapi.json`: the OpenAPI 3 document of this API.
pub async fn openapi(_auth: Authed<scope::AnyKey>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], crate::OPENAPI_JSON).into_response()
}
