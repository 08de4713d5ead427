//! tokenkeeper's Anthropic API proxy: one endpoint (`/v1/*`) for every agent. A request comes
//! in with a proxy key; a pool picks an account; the proxy swaps the credential (and nothing
//! else), sends the request on, and handles what the account's answer means.
//!
//! - [`ProxyState::new`] builds it over the keeper; [`router`] serves it (the binary mounts it
//!   on the main listener or on `[proxy] listen`).
//! - The token comes only from [`tokenkeeper_keeper::Keeper::lease`] (memory, the hot path);
//!   a 401 goes through [`tokenkeeper_keeper::Keeper::lease_after_rejection`] (one coalesced
//!   refresh) and one retry on the same account.
//! - [`pool`]: pools, strategies, cooldowns (stored, absolute, self-ending).
//! - [`classify`]: what an upstream answer means; [`scan`]: usage read as the bytes pass.
//! - `forward`: the request path: rewriting, failover, the streamed body.
//! - `upstream`: the upstream connections, pooled per upstream and driven by the task of the
//!   request that holds one (no second task per exchange).
//! - [`ProxyState::pool_snapshot`] and [`ProxyState::register_metrics`]: what status, the web page and
//!   `/metrics` show.
//!
//! `docs/PROXY.md` states what the proxy changes in a request (only the credential) and the
//! failure table.

pub mod classify;
mod forward;
mod keys;
pub mod pool;
mod route;
pub mod scan;
mod upstream;

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::HeaderValue;
use axum::Router;
use chrono::{DateTime, Utc};
use serde::Serialize;

use tokenkeeper_core::config::{Config, ProxyConfig, Strategy};
use tokenkeeper_core::AccountState;
use tokenkeeper_keeper::Keeper;
use tokenkeeper_server::metrics::prometheus_client::metrics::counter::Counter;
use tokenkeeper_server::metrics::prometheus_client::metrics::family::Family;
use tokenkeeper_server::metrics::prometheus_client::metrics::gauge::Gauge;
use tokenkeeper_server::metrics::prometheus_client::registry::Registry;

use crate::pool::{availability, Accounts, Cooldown, Pools, COOLDOWN_PREFIX};

pub use forward::OAUTH_BETA;

/// Why the proxy could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The upstream URL is not an absolute http(s) URL.
    #[error("proxy upstream `{url}` is not an absolute http(s) URL; set [proxy] upstream or providers.anthropic.api_base_url")]
    Upstream {
        /// The upstream as configured (`[proxy] upstream`, or else the provider's API base URL), verbatim.
        url: String,
    },
    /// TLS could not be set up for the upstream client.
    #[error("cannot set up TLS for the proxy's upstream client: {0}")]
    Tls(#[source] rustls::Error),
    /// The store failed while reading pool state.
    #[error("cannot read the pool state from the store: {0}")]
    Store(#[from] tokenkeeper_core::StoreError),
    /// The keeper failed while listing accounts.
    #[error(transparent)]
    Keeper(#[from] tokenkeeper_keeper::KeeperError),
}

/// The proxy's state: cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct ProxyState {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ProxyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyState").field("routes", &self.inner.routes).finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub keeper: Arc<Keeper>,
    pub config: ProxyConfig,
    /// Where each provider's accounts are sent; providers without a route are never picked.
    pub routes: route::Routes,
    /// Accounts already warned about being skipped for their provider (one warning each).
    pub warned: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Upstream connections, pooled and driven by the requests using them.
    pub upstreams: upstream::Upstreams,
    pub pools: Pools,
    pub accounts: Accounts,
    pub keys: keys::KeyCache,
    /// When cooldowns were last read from the store.
    pub cooldowns_read: tokio::sync::Mutex<Option<std::time::Instant>>,
    pub failovers: std::sync::atomic::AtomicU64,
}

/// Where one route's requests go.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    /// The path prefix requests' paths are appended to (no trailing `/`).
    pub prefix: String,
    /// `scheme://authority`, what the connector dials.
    pub origin: hyper::Uri,
    /// The `Host` header of its requests: the authority without a default port.
    pub host: HeaderValue,
    /// Its connections' key in the pool (`scheme://authority`).
    pub key: Arc<str>,
}

impl Upstream {
    /// The origin-form URI (path and query) of a request for `path`, what HTTP/1.1 puts on
    /// the request line to an origin server. Without a prefix, `path` as it came (no copy).
    pub fn uri(&self, path: &hyper::http::uri::PathAndQuery) -> Result<hyper::Uri, hyper::http::Error> {
        if self.prefix.is_empty() {
            return hyper::Uri::builder().path_and_query(path.clone()).build();
        }
        hyper::Uri::builder().path_and_query(format!("{}{}", self.prefix, path)).build()
    }
}

/// How often cooldowns are re-read from the store (another replica's cooldowns appear within
/// this time).
const COOLDOWN_REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

impl ProxyState {
    /// The proxy over `keeper`, configured by `config`'s `[proxy]` and `[pools.*]`. Each
    /// account's requests go where its provider's API is (`Provider::api`: for Claude logins
    /// and API keys `providers.anthropic.api_base_url`), or to `[proxy] upstream` when set;
    /// accounts whose provider does not speak Anthropic's Messages API are never picked.
    pub fn new(keeper: Arc<Keeper>, config: &Config) -> Result<Self, ProxyError> {
        let routes = route::Routes::new(keeper.providers(), config)?;
        let upstreams = upstream::Upstreams::new(config.proxy.connect_timeout).map_err(ProxyError::Tls)?;
        Ok(ProxyState {
            inner: Arc::new(Inner {
                keeper,
                config: config.proxy.clone(),
                routes,
                warned: std::sync::Mutex::new(std::collections::HashSet::new()),
                upstreams,
                pools: Pools::new(config),
                accounts: Accounts::default(),
                keys: keys::KeyCache::new(tokenkeeper_server::auth::MAX_FAILURES),
                cooldowns_read: tokio::sync::Mutex::new(None),
                failovers: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// Re-reads the cooldowns from the store when the last read is older than
    /// [`COOLDOWN_REFRESH`] (or `force`). One reader at a time; the others go on with what
    /// they have.
    pub(crate) async fn refresh_cooldowns(&self, force: bool) {
        let Ok(mut last) = self.inner.cooldowns_read.try_lock() else { return };
        if !force && last.is_some_and(|t| t.elapsed() < COOLDOWN_REFRESH) {
            return;
        }
        match self.inner.keeper.store().list_state(COOLDOWN_PREFIX).await {
            Ok(stored) => {
                self.inner.accounts.set_cooldowns(stored);
                *last = Some(std::time::Instant::now());
            }
            Err(e) => tracing::warn!(error = %e, "cannot read cooldowns from the store; using the ones in memory"),
        }
    }

    /// Every pool with its accounts' state, for `tokenkeeper pool`, `/oauth/status`, the web
    /// page and tests. Usage comes from the store (every process's flushed counts, last 24 h)
    /// plus what this process counted and has not flushed.
    pub async fn pool_snapshot(&self) -> Result<Vec<PoolSnapshot>, ProxyError> {
        self.refresh_cooldowns(true).await;
        let now = self.inner.keeper.clock().now();
        let mut all = self.inner.keeper.accounts().await?;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        let since = now - chrono::Duration::hours(24);
        let mut usage: HashMap<String, UsageTotals> = HashMap::new();
        for r in self.inner.keeper.store().usage(None, since).await? {
            usage.entry(r.account.clone()).or_default().add(&r);
        }
        let mut out = Vec::new();
        for pool in self.inner.pools.all() {
            let (served, refused): (Vec<_>, Vec<_>) =
                pool.candidates(&all).into_iter().partition(|c| self.inner.routes.get(&c.account.provider).is_some());
            let skipped = refused.iter().map(|c| self.skipped(&pool.name, &c.account)).collect();
            let members = served
                .into_iter()
                .map(|c| {
                    let a = &c.account;
                    self.inner.accounts.with(|map| {
                        let rt = map.get(&a.name);
                        let cooldowns: Vec<Cooldown> = rt
                            .map(|r| r.cooldowns.iter().filter(|c| c.until > now).cloned().collect())
                            .unwrap_or_default();
                        let state = match availability(a, rt, None, now) {
                            Ok(()) => MemberState::Active,
                            Err(None) => MemberState::NeedsLogin,
                            Err(Some(_)) => MemberState::CoolingDown,
                        };
                        let u = usage.get(&a.name).cloned().unwrap_or_default();
                        MemberSnapshot {
                            account: a.name.clone(),
                            provider: a.provider.clone(),
                            state,
                            cooldown_until: cooldowns.iter().filter(|c| c.family.is_none()).map(|c| c.until).max(),
                            cooldowns,
                            priority: c.priority,
                            weight: c.weight,
                            utilization: rt.and_then(|r| r.utilization),
                            in_flight: rt.map_or(0, |r| r.in_flight),
                            requests_24h: u.requests,
                            errors_24h: u.errors,
                            input_tokens_24h: u.input,
                            output_tokens_24h: u.output,
                            cache_read_tokens_24h: u.cache_read,
                            cache_creation_tokens_24h: u.cache_creation,
                            usage_count: a.usage.requests,
                            last_used: a.usage.last_used_at.max(rt.and_then(|r| r.last_used)),
                        }
                    })
                })
                .collect();
            out.push(PoolSnapshot { name: pool.name.clone(), strategy: pool.strategy, members, skipped });
        }
        Ok(out)
    }

    fn skipped(&self, pool: &str, account: &tokenkeeper_core::Account) -> SkippedMember {
        SkippedMember {
            pool: pool.to_owned(),
            account: account.name.clone(),
            provider: account.provider.clone(),
            reason: self.inner.routes.refusal(&account.provider).unwrap_or_default(),
        }
    }

    /// The accounts a configured `[pools.NAME]` lists that the proxy will never pick, because
    /// their provider does not speak Anthropic's Messages API (or is unknown), each with why.
    /// `serve` logs a warning for each at startup; the implicit `default` pool of every
    /// account is left out (it holds every account, Codex and Gemini logins included, and
    /// skipping those there is expected).
    pub async fn unservable(&self) -> Result<Vec<SkippedMember>, ProxyError> {
        let mut all = self.inner.keeper.accounts().await?;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out = Vec::new();
        for pool in self.inner.pools.all().filter(|p| p.members.is_some()) {
            for c in pool.candidates(&all) {
                if self.inner.routes.get(&c.account.provider).is_none() {
                    out.push(self.skipped(&pool.name, &c.account));
                }
            }
        }
        Ok(out)
    }

    /// Registers the proxy's families in the one `/metrics` registry (no secrets; account
    /// names only): requests by account and result, tokens by account and kind, in-flight
    /// requests, failovers, and each account's state and cooldown end as this process last saw
    /// them. Built from the counters as they are at the scrape.
    pub fn register_metrics(&self, registry: &mut Registry) {
        let now = self.inner.keeper.clock().now();
        let label = |pairs: &[(&str, &str)]| -> Labels {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        let requests = Family::<Labels, Counter>::default();
        let tokens = Family::<Labels, Counter>::default();
        let in_flight = Family::<Labels, Gauge>::default();
        let state = Family::<Labels, Gauge>::default();
        let cooldown_until = Family::<Labels, Gauge>::default();
        self.inner.accounts.with(|map| {
            for (name, rt) in map.iter() {
                let a = name.as_str();
                requests.get_or_create(&label(&[("account", a), ("result", "ok")])).inc_by(rt.ok);
                for class in classify::CLASSES {
                    let n = rt.errors.get(class).copied().unwrap_or(0);
                    requests.get_or_create(&label(&[("account", a), ("result", class)])).inc_by(n);
                }
                for (kind, n) in [
                    ("input", rt.tokens.input),
                    ("output", rt.tokens.output),
                    ("cache_read", rt.tokens.cache_read),
                    ("cache_creation", rt.tokens.cache_creation),
                ] {
                    tokens.get_or_create(&label(&[("account", a), ("kind", kind)])).inc_by(n);
                }
                in_flight.get_or_create(&label(&[("account", a)])).set(gauge_value(rt.in_flight));
                let cooling = rt.cooldowns.iter().any(|c| c.until > now && c.family.is_none());
                let needs_login = rt.state == Some(AccountState::NeedsLogin);
                for (word, on) in [
                    ("active", !cooling && !needs_login),
                    ("cooling_down", cooling && !needs_login),
                    ("needs_login", needs_login),
                ] {
                    state.get_or_create(&label(&[("account", a), ("state", word)])).set(i64::from(on));
                }
                for c in rt.cooldowns.iter().filter(|c| c.until > now) {
                    let family = c.family.as_deref().unwrap_or("");
                    cooldown_until
                        .get_or_create(&label(&[("account", a), ("family", family)]))
                        .set(c.until.timestamp());
                }
            }
        });
        let failovers = Counter::<u64>::default();
        failovers.inc_by(self.inner.failovers.load(std::sync::atomic::Ordering::Relaxed));
        registry.register(
            "tokenkeeper_proxy_requests",
            "Upstream attempts of the proxy, by account and result",
            requests,
        );
        registry.register(
            "tokenkeeper_proxy_tokens",
            "Tokens the provider reported in proxied answers, by account and kind",
            tokens,
        );
        registry.register("tokenkeeper_proxy_in_flight", "Proxied requests in progress, by account", in_flight);
        registry.register(
            "tokenkeeper_proxy_account_state",
            "1 for the state each pooled account is in (active, cooling_down, needs_login)",
            state,
        );
        registry.register(
            "tokenkeeper_proxy_cooldown_until_seconds",
            "When an account's cooldown ends (unix seconds), by model family (\"\" for all)",
            cooldown_until,
        );
        registry.register(
            "tokenkeeper_proxy_failovers",
            "Requests the proxy moved to another account after a failure",
            failovers,
        );
    }
}

/// The proxy's router: `/v1/*` (every method), for serving the proxy alone with axum (tests).
/// `serve` mounts [`front`] instead, which answers the same way without the router's work.
pub fn router(state: ProxyState) -> Router {
    forward::routes(state)
}

/// The proxy as a front of the server (`AppState::with_front`, `serve_front`): every request
/// under `/v1/`, ahead of the router and outside the API's request timeout (streams last as
/// long as they last).
pub fn front(state: ProxyState) -> tokenkeeper_server::front::Front {
    forward::front(state)
}

fn parse_upstream(url: &str) -> Result<Upstream, ProxyError> {
    let bad = || ProxyError::Upstream { url: url.to_owned() };
    let uri: hyper::Uri = url.parse().map_err(|_| bad())?;
    let scheme = uri.scheme().cloned().ok_or_else(bad)?;
    if scheme != hyper::http::uri::Scheme::HTTP && scheme != hyper::http::uri::Scheme::HTTPS {
        return Err(bad());
    }
    let authority = uri.authority().cloned().ok_or_else(bad)?;
    let default_port = if scheme == hyper::http::uri::Scheme::HTTPS { 443 } else { 80 };
    let host = match authority.port_u16() {
        Some(port) if port != default_port => format!("{}:{port}", authority.host()),
        _ => authority.host().to_owned(),
    };
    let host = HeaderValue::from_str(&host).map_err(|_| bad())?;
    let key: Arc<str> = Arc::from(format!("{scheme}://{authority}"));
    let origin =
        hyper::Uri::builder().scheme(scheme).authority(authority).path_and_query("/").build().map_err(|_| bad())?;
    Ok(Upstream { prefix: uri.path().trim_end_matches('/').to_owned(), origin, host, key })
}

#[derive(Debug, Clone, Default)]
struct UsageTotals {
    requests: u64,
    errors: u64,
    input: u64,
    output: u64,
    cache_read: u64,
    cache_creation: u64,
}

impl UsageTotals {
    fn add(&mut self, r: &tokenkeeper_core::store::UsageRecord) {
        self.requests += r.requests;
        self.errors += r.errors;
        self.input += r.input_tokens;
        self.output += r.output_tokens;
        self.cache_read += r.cache_read_tokens;
        self.cache_creation += r.cache_creation_tokens;
    }
}

/// A pool as [`ProxyState::pool_snapshot`] shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PoolSnapshot {
    /// The pool's name (`default` for keys that name none).
    pub name: String,
    /// How it picks.
    pub strategy: Strategy,
    /// Its accounts, in configuration order (by name for the implicit default pool).
    pub members: Vec<MemberSnapshot>,
    /// Its accounts the proxy never picks: their provider does not speak Anthropic's Messages
    /// API (a Codex or Gemini CLI login) or is not configured.
    pub skipped: Vec<SkippedMember>,
}

/// An account of a pool that the proxy never picks, and why.
#[derive(Debug, Clone, Serialize)]
pub struct SkippedMember {
    /// Name of the pool the account is listed in (`default` for the implicit pool).
    pub pool: String,
    /// Account name.
    pub account: String,
    /// Its provider id (`codex`, `gemini`, …).
    pub provider: String,
    /// Why, in words (names the provider and the API it speaks).
    pub reason: String,
}

/// Whether an account takes requests (active, cooling down, needs login).
pub use tokenkeeper_core::pool::PoolState as MemberState;

/// One account of a pool.
#[derive(Debug, Clone, Serialize)]
pub struct MemberSnapshot {
    /// Account name.
    pub account: String,
    /// Provider (`anthropic`, `anthropic-api-key`, or another provider whose API is
    /// Anthropic's Messages API).
    pub provider: String,
    /// Active, cooling down, or needs login.
    pub state: MemberState,
    /// When its account-wide cooldown ends, if it is cooling down.
    pub cooldown_until: Option<DateTime<Utc>>,
    /// Every cooldown still running, per model family included.
    pub cooldowns: Vec<Cooldown>,
    /// `fill_first` priority (lower first).
    pub priority: i32,
    /// Round-robin weight.
    pub weight: u32,
    /// Used share of its tightest quota window, from the last answer's headers (0..=1).
    pub utilization: Option<f64>,
    /// Requests in progress in this process.
    pub in_flight: u64,
    /// Requests (hand-outs and proxied) in the last 24 h, as flushed to the store.
    pub requests_24h: u64,
    /// Failed proxied requests in the last 24 h.
    pub errors_24h: u64,
    /// Input tokens in the last 24 h.
    pub input_tokens_24h: u64,
    /// Output tokens in the last 24 h.
    pub output_tokens_24h: u64,
    /// Cache-read input tokens in the last 24 h.
    pub cache_read_tokens_24h: u64,
    /// Cache-creation input tokens in the last 24 h.
    pub cache_creation_tokens_24h: u64,
    /// All-time requests (seed 003's `usage_count`).
    pub usage_count: u64,
    /// When it was last used.
    pub last_used: Option<DateTime<Utc>>,
}

/// Label pairs of the proxy's families (account names and fixed words only).
type Labels = Vec<(String, String)>;

/// A count as a gauge's value (saturating: a gauge is signed).
fn gauge_value<T: TryInto<i64>>(n: T) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}
