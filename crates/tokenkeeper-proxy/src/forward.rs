//! The request path: admit the key, read the body (capped; kept to retry on another account),
//! pick an account, swap the credential, send, classify, fail over while nothing has reached
//! the client, then stream the answer through untouched.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use rand::Rng;
use serde::Deserialize;
use tokio::sync::OwnedSemaphorePermit;

use tokenkeeper_core::store::UsageRecord;
use tokenkeeper_core::AccountState;
use tokenkeeper_keeper::{KeeperError, Lease, LeaseRequest};
use tokenkeeper_provider::CredentialHeader;
use tokenkeeper_server::auth::ClientAddr;
use tokenkeeper_server::front::Front;

use crate::classify::{classify, family, utilization, Verdict};
use crate::keys::KeyRefusal;
use crate::pool::{availability, with_entry, Candidate, Cooldown};
use crate::route::Route;
use crate::scan::UsageScanner;
use crate::upstream::UpstreamBody;
use crate::ProxyState;

/// The beta flag OAuth tokens need on the Messages API.
pub const OAUTH_BETA: &str = "oauth-2025-04-20";

/// Largest upstream error body kept to hand to the client when every account failed.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The proxy as an axum router (`/v1/*`), for tests that serve it alone; `serve` mounts
/// [`front`] instead. Both answer with [`handle`].
pub(crate) fn routes(state: ProxyState) -> Router {
    let route = |State(state): State<ProxyState>, req: Request| async move {
        let addr = ClientAddr::of(req.extensions());
        handle(state, req, addr).await
    };
    Router::new().route("/v1/{*rest}", axum::routing::any(route)).with_state(state)
}

/// The proxy as the server's front: every `/v1/` request, without the router.
pub(crate) fn front(state: ProxyState) -> Front {
    Front::new("/v1/", move |req, addr| handle(state.clone(), req, addr))
}

/// An error the proxy itself answers, in Anthropic's shape.
fn error(status: StatusCode, kind: &str, message: &str, retry_after: Option<Duration>) -> Response {
    let body = serde_json::json!({"type": "error", "error": {"type": kind, "message": message}});
    let mut r = (status, axum::Json(body)).into_response();
    if let Some(d) = retry_after {
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    r
}

fn refusal(r: KeyRefusal) -> Response {
    match r {
        KeyRefusal::Missing => error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "no proxy key: send a tokenkeeper key with the proxy scope as x-api-key or Authorization: Bearer (ANTHROPIC_API_KEY or ANTHROPIC_AUTH_TOKEN)",
            None,
        ),
        KeyRefusal::Invalid => error(StatusCode::UNAUTHORIZED, "authentication_error", "invalid proxy key", None),
        KeyRefusal::NoScope => error(
            StatusCode::FORBIDDEN,
            "permission_error",
            "this key lacks the proxy scope; create one with `tokenkeeper keys create --scope proxy`",
            None,
        ),
        KeyRefusal::Blocked(d) => {
            error(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "too many invalid keys from this address", Some(d))
        }
        KeyRefusal::RateLimited(d) => error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "this proxy key's requests-per-minute limit is reached",
            Some(d),
        ),
        KeyRefusal::Concurrency => error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "this proxy key's limit of concurrent requests is reached",
            Some(Duration::from_secs(1)),
        ),
        KeyRefusal::Store => {
            error(StatusCode::SERVICE_UNAVAILABLE, "api_error", "the proxy cannot read its keys right now; try again", None)
        }
    }
}

/// What the proxy reads from a request body (everything else is ignored and forwarded).
#[derive(Deserialize, Default)]
struct Meta {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    metadata: Option<MetaMetadata>,
}

#[derive(Deserialize, Default)]
struct MetaMetadata {
    #[serde(default)]
    user_id: Option<String>,
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and the ones the proxy sets itself.
fn is_dropped(name: &HeaderName, listed: &[String]) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    ) || listed.iter().any(|l| l == name.as_str())
}

/// The headers named in `Connection` (also hop-by-hop).
fn connection_listed(h: &HeaderMap) -> Vec<String> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The client's headers as sent upstream, before the credential: without its own
/// credential and hop-by-hop headers, everything else as it came.
fn upstream_headers(client: &HeaderMap) -> HeaderMap {
    let listed = connection_listed(client);
    let mut out = HeaderMap::with_capacity(client.len() + 2);
    for (name, value) in client {
        if name == header::AUTHORIZATION || name.as_str() == "x-api-key" || is_dropped(name, &listed) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// Sets the account's credential as its provider's route says: `x-api-key` (an API key), or
/// `Authorization: Bearer` plus the OAuth beta flag, merged into the client's own list; then
/// any header the provider derives from the credential (none for Anthropic's).
fn set_credential(h: &mut HeaderMap, lease: &Lease, route: &Route) -> Result<(), ()> {
    let token = lease.token().expose();
    for (name, value) in route.access.extra_headers(&lease.account().credential) {
        let mut v = HeaderValue::from_str(&value).map_err(|_| ())?;
        v.set_sensitive(true);
        h.insert(HeaderName::from_bytes(name.as_bytes()).map_err(|_| ())?, v);
    }
    if route.header == CredentialHeader::XApiKey {
        let mut v = HeaderValue::from_str(token).map_err(|_| ())?;
        v.set_sensitive(true);
        h.insert("x-api-key", v);
        return Ok(());
    }
    let mut v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| ())?;
    v.set_sensitive(true);
    h.insert(header::AUTHORIZATION, v);
    let flags: Vec<&str> = h
        .get_all("anthropic-beta")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .collect();
    if flags.is_empty() {
        h.insert("anthropic-beta", HeaderValue::from_static(OAUTH_BETA));
    } else if !flags.contains(&OAUTH_BETA) {
        let mut merged = flags.join(",");
        if !merged.is_empty() {
            merged.push(',');
        }
        merged.push_str(OAUTH_BETA);
        let v = HeaderValue::from_str(&merged).map_err(|_| ())?;
        h.insert("anthropic-beta", v);
    }
    Ok(())
}

/// Whether the proxy may send `account`'s requests (its provider has a route). An account it
/// skips is logged once, as a warning when a configured pool lists it (`listed`), at debug
/// level when it is only in the implicit pool of every account.
fn served(state: &ProxyState, account: &tokenkeeper_core::Account, listed: bool) -> bool {
    let inner = state.inner();
    if inner.routes.get(&account.provider).is_some() {
        return true;
    }
    let first = inner.warned.lock().map(|mut w| w.insert(account.name.clone())).unwrap_or(false);
    let reason = if first { inner.routes.refusal(&account.provider).unwrap_or_default() } else { String::new() };
    if first && listed {
        tracing::warn!(account = %account.name, provider = %account.provider, "proxy: a pool lists this account but it is never picked: {reason}");
    } else if first {
        tracing::debug!(account = %account.name, provider = %account.provider, "proxy: not picked: {reason}");
    }
    false
}

/// The session a sticky pool binds: Claude Code's session header, `x-session-id`, or the
/// body's `metadata.user_id`.
fn session_of<'a>(h: &'a HeaderMap, meta: &'a Meta) -> Option<&'a str> {
    for name in ["x-claude-code-session-id", "x-session-id"] {
        if let Some(v) = h.get(name).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()) {
            return Some(v);
        }
    }
    meta.metadata.as_ref().and_then(|m| m.user_id.as_deref()).filter(|v| !v.is_empty())
}

fn jitter(min_ms: u64, max_ms: u64) -> Duration {
    Duration::from_millis(rand::thread_rng().gen_range(min_ms..=max_ms))
}

/// An upstream failure kept to hand to the client when no account is left.
struct Failed {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Failed {
    fn into_response(self) -> Response {
        let mut r = Response::new(Body::from(self.body));
        *r.status_mut() = self.status;
        *r.headers_mut() = response_headers(self.headers);
        r
    }
}

/// An upstream answer's headers as the client gets them: without hop-by-hop headers, the
/// rest as they came. Edited in place: an answer has none of those, as a rule, and then
/// nothing is copied.
fn response_headers(mut headers: HeaderMap) -> HeaderMap {
    let listed = connection_listed(&headers);
    // content-length stays: the body is passed on unchanged.
    let dropped: Vec<HeaderName> =
        headers.keys().filter(|n| *n != header::CONTENT_LENGTH && is_dropped(n, &listed)).cloned().collect();
    for name in dropped {
        headers.remove(name);
    }
    headers
}

/// One proxied request, from the client's (possibly still arriving) body to the answer.
async fn handle<B>(state: ProxyState, req: hyper::Request<B>, addr: ClientAddr) -> Response
where
    B: HttpBody<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let inner = state.inner();
    let admitted = match inner.keys.admit(inner, req.headers(), addr).await {
        Ok(a) => a,
        Err(r) => return refusal(r),
    };
    let (parts, body) = req.into_parts();
    let body = match http_body_util::Limited::new(body, inner.config.max_body_bytes).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if !is_length_limit(&*e) => {
            // The server's body timeout (`[server] body_read_timeout`) or a client that went
            // away mid-body.
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "timeout_error",
                "the request body stopped arriving before its end",
                None,
            );
        }
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                &format!(
                    "the request body is larger than the proxy's limit of {} bytes ([proxy] max_body_bytes)",
                    inner.config.max_body_bytes
                ),
                None,
            )
        }
    };
    let meta: Meta = if body.is_empty() { Meta::default() } else { serde_json::from_slice(&body).unwrap_or_default() };
    let streaming = meta.stream.unwrap_or(false);
    let model_family = meta.model.as_deref().and_then(family);
    // Parsed by the server already (an absolute-form target included); `/` when it had none.
    let path = parts.uri.path_and_query().cloned().unwrap_or_else(|| hyper::http::uri::PathAndQuery::from_static("/"));
    // The first attempt takes these; a failover builds them again.
    let mut base_headers = Some(upstream_headers(&parts.headers));
    let pool_name = admitted.key.principal.pool();
    let Some(pool) = inner.pools.get(pool_name) else {
        return error(
            StatusCode::FORBIDDEN,
            "permission_error",
            &format!("this key's pool `{}` is not configured ([pools.NAME])", pool_name.unwrap_or("default")),
            None,
        );
    };
    state.refresh_cooldowns(false).await;
    let all = match inner.keeper.accounts().await {
        Ok(mut a) => {
            a.sort_by(|x, y| x.name.cmp(&y.name));
            a
        }
        Err(e) => {
            tracing::warn!(error = %e, "proxy cannot list accounts");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "api_error",
                "the proxy cannot read its accounts right now",
                None,
            );
        }
    };
    let candidates: Vec<Candidate> = pool
        .candidates(&all)
        .into_iter()
        .filter(|c| admitted.key.principal.may_use(&c.account.name))
        .filter(|c| served(&state, &c.account, pool.members.is_some()))
        .collect();
    if candidates.is_empty() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            &format!(
                "pool `{}` has no account this key may use; add one with `tokenkeeper login` or `tokenkeeper import`",
                pool.name
            ),
            None,
        );
    }
    let session = session_of(&parts.headers, &meta).map(str::to_owned);
    let started = Instant::now();
    let deadline = (!streaming).then(|| started + inner.config.total_timeout);

    let mut excluded: HashSet<String> = HashSet::new();
    // Accounts that failed softly (429 without headers, 529, 5xx, network): one more try each
    // after a short backoff, once nobody else is left.
    let mut soft: Vec<String> = Vec::new();
    let mut soft_retried: HashSet<String> = HashSet::new();
    let mut last_failure: Option<Failed> = None;
    let mut forced: Option<Lease> = None;
    let mut refreshed: HashSet<String> = HashSet::new();
    let mut attempts = 0usize;
    let max_attempts = candidates.len() * 3 + 2;

    loop {
        attempts += 1;
        if attempts > max_attempts {
            break;
        }
        let now = inner.keeper.clock().now();
        let lease = match forced.take() {
            Some(l) => l,
            None => {
                let mut earliest: Option<DateTime<Utc>> = None;
                let chosen = inner.accounts.with(|map| {
                    let available: Vec<&Candidate> = candidates
                        .iter()
                        .filter(|c| !excluded.contains(&c.account.name))
                        .filter(|c| match availability(&c.account, map.get(&c.account.name), model_family, now) {
                            Ok(()) => true,
                            Err(until) => {
                                if let Some(u) = until {
                                    earliest = Some(earliest.map_or(u, |e| e.min(u)));
                                }
                                false
                            }
                        })
                        .collect();
                    let chosen = pool.pick(&available, session.as_deref(), map, now);
                    if let Some(name) = &chosen {
                        with_entry(map, name, |rt| rt.started += 1);
                    }
                    chosen
                });
                let Some(name) = chosen else {
                    // Nobody left: give a soft failure its second chance, after a backoff.
                    if let Some(name) = soft.iter().find(|n| !soft_retried.contains(*n)).cloned() {
                        soft_retried.insert(name.clone());
                        excluded.remove(&name);
                        tokio::time::sleep(jitter(100, 300)).await;
                        continue;
                    }
                    return exhausted(last_failure, earliest, now, &pool.name, candidates.len());
                };
                match inner
                    .keeper
                    .lease(LeaseRequest {
                        account: Some(&name),
                        key_id: Some(&admitted.key.key_id),
                        model: meta.model.as_deref(),
                    })
                    .await
                {
                    Ok(l) => l,
                    Err(e) => {
                        note_error(&state, &name, lease_error_class(&e), &admitted.key.key_id, meta.model.as_deref());
                        tracing::warn!(account = %name, error = %e, "proxy: no token for this account; trying another");
                        excluded.insert(name);
                        continue;
                    }
                }
            }
        };
        let name = lease.account().name.clone();
        // Candidates are only accounts with a route; the lease is of one of them.
        let Some(route) = inner.routes.get(&lease.account().provider) else {
            excluded.insert(name);
            continue;
        };
        let Ok(uri) = route.upstream.uri(&path) else {
            return error(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid request path", None);
        };
        let mut headers = base_headers.take().unwrap_or_else(|| upstream_headers(&parts.headers));
        headers.insert(header::HOST, route.upstream.host.clone());
        if set_credential(&mut headers, &lease, route).is_err() {
            excluded.insert(name);
            continue;
        }
        let mut upstream_req = hyper::Request::new(Full::new(body.clone()));
        *upstream_req.method_mut() = parts.method.clone();
        *upstream_req.uri_mut() = uri;
        *upstream_req.headers_mut() = headers;
        inner.accounts.of(&name, |rt| rt.in_flight += 1);
        let mut flight = InFlight { state: state.clone(), account: Some(name.clone()) };
        let wait = match deadline {
            Some(d) => inner.config.header_timeout.min(d.saturating_duration_since(Instant::now())),
            None => inner.config.header_timeout,
        };
        let response = match tokio::time::timeout(wait, inner.upstreams.send(&route.upstream, upstream_req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(account = %name, error = %e, "proxy: upstream request failed; trying another account");
                note_error(&state, &name, "network", &admitted.key.key_id, meta.model.as_deref());
                last_failure.get_or_insert(Failed {
                    status: StatusCode::BAD_GATEWAY,
                    headers: HeaderMap::new(),
                    body: error_body("api_error", "the proxy could not reach the Anthropic API"),
                });
                excluded.insert(name.clone());
                soft.push(name);
                inner.failovers.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(_) => {
                note_error(&state, &name, "network", &admitted.key.key_id, meta.model.as_deref());
                last_failure = Some(Failed {
                    status: StatusCode::GATEWAY_TIMEOUT,
                    headers: HeaderMap::new(),
                    body: error_body("api_error", "the Anthropic API did not answer in time ([proxy] header_timeout)"),
                });
                excluded.insert(name.clone());
                inner.failovers.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let now = inner.keeper.clock().now();
        let cap = tokenkeeper_core::clock::chrono_duration(inner.config.max_cooldown);
        let verdict = classify(response.status(), response.headers(), now, cap);
        if let Some(u) = utilization(response.headers()) {
            inner.accounts.of(&name, |rt| rt.utilization = Some(u));
        }
        match verdict {
            Verdict::Pass => {
                let (head, mut incoming) = response.into_parts();
                // Fail over even after the headers, as long as no byte reached the client: a
                // body that breaks before its first byte is this account's failure.
                let first = match first_frame(&mut incoming, inner.config.idle_timeout).await {
                    Ok(f) => f,
                    Err(what) => {
                        tracing::warn!(account = %name, "proxy: upstream body {what} before its first byte; trying another account");
                        note_error(&state, &name, "broken_stream", &admitted.key.key_id, meta.model.as_deref());
                        excluded.insert(name.clone());
                        soft.push(name);
                        inner.failovers.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                if head.status.is_success() {
                    succeeded(&state, &name, model_family).await;
                }
                let account = flight.account.take().unwrap_or_default();
                let body = ProxyBody {
                    first,
                    inner: incoming,
                    done: false,
                    broken: false,
                    scanner: UsageScanner::default(),
                    idle_timeout: inner.config.idle_timeout,
                    last_frame: tokio::time::Instant::now(),
                    deadline: deadline.map(tokio::time::Instant::from_std),
                    timer: None,
                    finish: Some(Finish {
                        state: state.clone(),
                        account,
                        key_id: admitted.key.key_id.clone(),
                        model: meta.model.clone(),
                        ok_status: head.status.is_success(),
                    }),
                    _permit: admitted.permit,
                };
                let mut r = Response::new(Body::new(body));
                *r.status_mut() = head.status;
                *r.headers_mut() = response_headers(head.headers);
                return r;
            }
            Verdict::Unauthorized => {
                let failed = buffered_failure(response).await;
                note_error(&state, &name, "unauthorized", &admitted.key.key_id, meta.model.as_deref());
                last_failure = Some(failed);
                drop(flight);
                if refreshed.insert(name.clone()) {
                    match inner.keeper.lease_after_rejection(&lease).await {
                        Ok(fresh) => {
                            forced = Some(fresh);
                            continue;
                        }
                        Err(e) => {
                            if matches!(e, KeeperError::NeedsLogin { .. }) {
                                inner.accounts.of(&name, |rt| rt.state = Some(AccountState::NeedsLogin));
                                note_error(&state, &name, "needs_login", &admitted.key.key_id, meta.model.as_deref());
                            }
                            tracing::warn!(account = %name, error = %e, "proxy: refresh after a 401 failed; trying another account");
                        }
                    }
                }
                excluded.insert(name);
                inner.failovers.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::RateLimited { until, family: limited } => {
                let failed = buffered_failure(response).await;
                note_error(&state, &name, "rate_limited", &admitted.key.key_id, meta.model.as_deref());
                cool_down(&state, &name, until, limited, now).await;
                last_failure = Some(failed);
                excluded.insert(name);
                inner.failovers.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::RateLimitedBare => {
                let failed = buffered_failure(response).await;
                note_error(&state, &name, "rate_limited_bare", &admitted.key.key_id, meta.model.as_deref());
                last_failure = Some(failed);
                excluded.insert(name.clone());
                soft.push(name);
                inner.failovers.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(jitter(50, 200)).await;
            }
            Verdict::Overloaded => {
                let failed = buffered_failure(response).await;
                note_error(&state, &name, "overloaded", &admitted.key.key_id, meta.model.as_deref());
                last_failure = Some(failed);
                excluded.insert(name.clone());
                soft.push(name);
                inner.failovers.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(jitter(20, 100)).await;
            }
        }
    }
    let now = inner.keeper.clock().now();
    exhausted(last_failure, None, now, &pool.name, candidates.len())
}

/// The answer when no account is left: every account cooling down → 429 with `retry-after`
/// at the earliest reset; otherwise the last upstream failure as it came (or a 503).
fn exhausted(
    last: Option<Failed>,
    earliest: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    pool: &str,
    members: usize,
) -> Response {
    let last_was_429 = last.as_ref().is_some_and(|f| f.status == StatusCode::TOO_MANY_REQUESTS);
    if let Some(until) = earliest.filter(|_| last.is_none() || last_was_429) {
        let wait = (until - now).to_std().unwrap_or_default();
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            &format!(
                "every account of pool `{pool}` is rate limited; the first is available again at {}",
                until.to_rfc3339()
            ),
            Some(wait),
        );
    }
    if let Some(f) = last {
        return f.into_response();
    }
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "api_error",
        &format!("none of the {members} accounts of pool `{pool}` can take requests (they need a new login: `tokenkeeper status`)"),
        None,
    )
}

/// Whether reading a body failed on `[proxy] max_body_bytes` (rather than a timeout or a
/// broken connection).
fn is_length_limit(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    tokenkeeper_core::error_text::caused_by::<http_body_util::LengthLimitError>(e)
}

fn error_body(kind: &str, message: &str) -> Bytes {
    Bytes::from(serde_json::json!({"type": "error", "error": {"type": kind, "message": message}}).to_string())
}

fn lease_error_class(e: &KeeperError) -> &'static str {
    match e {
        KeeperError::NeedsLogin { .. } => "needs_login",
        _ => "network",
    }
}

/// Counts a failed attempt: in the usage meter (an error in the account's bucket) and in the
/// per-account counters.
fn note_error(state: &ProxyState, account: &str, class: &'static str, key_id: &str, model: Option<&str>) {
    let inner = state.inner();
    let now = inner.keeper.clock().now();
    inner.accounts.of(account, |rt| *rt.errors.entry(class).or_default() += 1);
    inner.keeper.usage().add(UsageRecord {
        account: account.to_owned(),
        key_id: Some(key_id.to_owned()),
        model: model.map(str::to_owned),
        hour: now,
        errors: 1,
        last_used_at: now,
        ..UsageRecord::default()
    });
}

/// Stores a cooldown (absolute) in memory and in the store.
async fn cool_down(
    state: &ProxyState,
    account: &str,
    until: DateTime<Utc>,
    family: Option<String>,
    now: DateTime<Utc>,
) {
    let inner = state.inner();
    let reason = format!("rate limited (429) at {}", now.to_rfc3339());
    let c = Cooldown { until, family: family.clone(), reason };
    inner.accounts.of(account, |rt| {
        rt.cooldowns.retain(|x| x.family != c.family);
        rt.cooldowns.push(c.clone());
    });
    tracing::info!(account, until = %until.to_rfc3339(), family = family.as_deref().unwrap_or("all"), "proxy: account rate limited; cooling down until the reset");
    let key = Cooldown::key(account, family.as_deref());
    match serde_json::to_value(&c) {
        Ok(v) => {
            if let Err(e) = inner.keeper.store().put_state(&key, &v, now).await {
                tracing::warn!(account, error = %e, "cannot store a cooldown; it holds in this process only");
            }
        }
        Err(e) => tracing::warn!(account, error = %e, "cannot encode a cooldown"),
    }
}

/// A success ends the account's cooldowns that apply to this model (and expired ones).
async fn succeeded(state: &ProxyState, account: &str, family: Option<&str>) {
    let inner = state.inner();
    let now = inner.keeper.clock().now();
    let cleared: Vec<Option<String>> = inner.accounts.with(|m| {
        let Some(rt) = m.get_mut(account) else { return Vec::new() };
        rt.state = Some(AccountState::Active);
        rt.ok += 1;
        rt.last_used = Some(now);
        let (gone, kept): (Vec<Cooldown>, Vec<Cooldown>) = std::mem::take(&mut rt.cooldowns)
            .into_iter()
            .partition(|c| c.until <= now || c.family.is_none() || c.family.as_deref() == family);
        rt.cooldowns = kept;
        gone.into_iter().map(|c| c.family).collect()
    });
    for f in cleared {
        if let Err(e) = inner.keeper.store().delete_state(&Cooldown::key(account, f.as_deref())).await {
            tracing::warn!(account, error = %e, "cannot clear a cooldown in the store; it ends at its reset anyway");
        }
    }
}

/// Reads a failure's body (bounded) so it can be handed on if no account is left.
async fn buffered_failure(response: hyper::Response<UpstreamBody>) -> Failed {
    let (head, body) = response.into_parts();
    let limited = http_body_util::Limited::new(body, MAX_ERROR_BODY);
    let body = match tokio::time::timeout(Duration::from_secs(10), limited.collect()).await {
        Ok(Ok(c)) => c.to_bytes(),
        _ => Bytes::new(),
    };
    Failed { status: head.status, headers: head.headers, body }
}

/// The first data frame of a body (`None` for an empty body); `Err` when it breaks or stalls
/// before any byte.
async fn first_frame(body: &mut UpstreamBody, idle: Duration) -> Result<Option<Frame<Bytes>>, &'static str> {
    match tokio::time::timeout(idle, body.frame()).await {
        Err(_) => Err("stalled"),
        Ok(None) => Ok(None),
        Ok(Some(Err(_))) => Err("broke"),
        Ok(Some(Ok(f))) => Ok(Some(f)),
    }
}

/// Decrements an account's in-flight count when the attempt ends (unless handed to the body).
struct InFlight {
    state: ProxyState,
    account: Option<String>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(a) = self.account.take() {
            self.state.inner().accounts.with(|m| {
                if let Some(rt) = m.get_mut(&a) {
                    rt.in_flight = rt.in_flight.saturating_sub(1);
                }
            });
        }
    }
}

/// What a streamed answer records when it ends, however it ends.
struct Finish {
    state: ProxyState,
    account: String,
    key_id: String,
    model: Option<String>,
    ok_status: bool,
}

/// Why a passed-through body ended badly; the client's connection is aborted (never a clean
/// end), which HTTP clients report as a broken or incomplete response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// The upstream body broke.
    #[error("the upstream response broke off: {0}")]
    Upstream(#[source] hyper::Error),
    /// No bytes for `[proxy] idle_timeout`.
    #[error("the upstream response stalled for longer than [proxy] idle_timeout")]
    Idle,
    /// A non-streaming exchange took longer than `[proxy] total_timeout`.
    #[error("the upstream response took longer than [proxy] total_timeout")]
    Total,
}

/// The upstream body, passed through frame by frame: polled only when the client side polls
/// (backpressure), scanned for `usage` as it passes, never changed.
struct ProxyBody {
    first: Option<Frame<Bytes>>,
    inner: UpstreamBody,
    done: bool,
    broken: bool,
    scanner: UsageScanner,
    idle_timeout: Duration,
    /// When the last frame passed (or the body began): `[proxy] idle_timeout` counts from it.
    last_frame: tokio::time::Instant,
    /// The end of `[proxy] total_timeout` (non-streaming answers only).
    deadline: Option<tokio::time::Instant>,
    /// Made only once the body first has to wait, set to whichever limit comes first: an
    /// answer that arrives whole (most JSON answers) never touches the runtime's timer.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    finish: Option<Finish>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl ProxyBody {
    /// Ends the body as broken (the client's connection is aborted, never a clean end).
    fn fail(&mut self, e: BodyError) -> BodyError {
        self.done = true;
        self.broken = true;
        e
    }

    fn pass(&mut self, frame: Frame<Bytes>) -> Frame<Bytes> {
        if let Some(data) = frame.data_ref() {
            self.scanner.feed(data);
        }
        self.last_frame = tokio::time::Instant::now();
        frame
    }
}

impl HttpBody for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some(f) = this.first.take() {
            return Poll::Ready(Some(Ok(this.pass(f))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        if this.deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return Poll::Ready(Some(Err(this.fail(BodyError::Total))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(this.pass(frame)))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(this.fail(BodyError::Upstream(e))))),
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => loop {
                let now = tokio::time::Instant::now();
                if this.deadline.is_some_and(|d| now >= d) {
                    return Poll::Ready(Some(Err(this.fail(BodyError::Total))));
                }
                let idle_at = this.last_frame + this.idle_timeout;
                if now >= idle_at {
                    return Poll::Ready(Some(Err(this.fail(BodyError::Idle))));
                }
                let wake = this.deadline.map_or(idle_at, |d| d.min(idle_at));
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(wake)));
                if timer.deadline() != wake {
                    timer.as_mut().reset(wake);
                }
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && (self.done || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.first.is_some() {
            return SizeHint::default();
        }
        self.inner.size_hint()
    }
}

impl Drop for ProxyBody {
    // However the body ends (complete, broken, or the client went away, which drops it and
    // with it the upstream connection), record what passed.
    fn drop(&mut self) {
        let Some(f) = self.finish.take() else { return };
        let inner = f.state.inner();
        let now = inner.keeper.clock().now();
        let tokens = self.scanner.tokens().unwrap_or_default();
        let class = if self.broken { Some("broken_stream") } else { None };
        inner.accounts.of(&f.account, |rt| {
            rt.in_flight = rt.in_flight.saturating_sub(1);
            rt.tokens.input += tokens.input;
            rt.tokens.output += tokens.output;
            rt.tokens.cache_read += tokens.cache_read;
            rt.tokens.cache_creation += tokens.cache_creation;
            if let Some(c) = class {
                *rt.errors.entry(c).or_default() += 1;
            }
        });
        inner.keeper.usage().add(UsageRecord {
            account: f.account,
            key_id: Some(f.key_id),
            model: f.model,
            hour: now,
            requests: 0,
            input_tokens: tokens.input,
            output_tokens: tokens.output,
            cache_read_tokens: tokens.cache_read,
            cache_creation_tokens: tokens.cache_creation,
            errors: u64::from(self.broken || !f.ok_status),
            last_used_at: now,
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_loses_its_hop_by_hop_headers_and_keeps_the_rest_with_each_names_values_in_order() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("connection", "keep-alive, x-up-hop"),
            ("x-up-hop", "dropped"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("content-length", "12"),
            ("request-id", "req_1"),
            ("anthropic-ratelimit-unified-status", "allowed"),
            ("request-id", "req_2"),
        ] {
            h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        let kept = response_headers(h);
        let mut kept: Vec<(&str, &str)> = kept.iter().map(|(n, v)| (n.as_str(), v.to_str().unwrap())).collect();
        // The order of differently named fields carries no meaning (RFC 9110 §5.3); a stable
        // sort keeps that of each name's values, which does.
        kept.sort_by_key(|(n, _)| *n);
        assert_eq!(
            kept,
            [
                ("anthropic-ratelimit-unified-status", "allowed"),
                ("content-length", "12"),
                ("request-id", "req_1"),
                ("request-id", "req_2"),
            ]
        );
    }

    /// axum boxes each request's future, so its size is allocated and copied per request:
    /// 24 KB when the keeper's refresh path was inlined into it through `Keeper::lease`.
    #[tokio::test]
    async fn a_proxied_request_future_stays_a_few_kilobytes() {
        let env = tokenkeeper_keeper::testing::env(|_| {}).await;
        let state = ProxyState::new(env.keeper.clone(), &env.config).unwrap();
        let size = std::mem::size_of_val(&handle(state, Request::new(Body::empty()), ClientAddr::Local));
        assert!(size <= 8 * 1024, "the proxy's request future is {size} bytes; box the cold paths it awaits");
    }
}
