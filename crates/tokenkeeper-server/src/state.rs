//! What every handler shares: the keeper, the sinks (for their status), the admin token, the
//! logins started with `POST /oauth/start` and not yet finished, and the failure limiter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use tokenkeeper_core::{Account, Secret};
use tokenkeeper_keeper::view::{account_view, AccountView};
use tokenkeeper_keeper::Keeper;
use tokenkeeper_provider::PkceLogin;
use tokenkeeper_sync::sink::{SinkSet, SinkStatus};

use crate::auth::FailureLimiter;

/// How long a login started with `POST /oauth/start` waits for its code (the provider's codes
/// live about as long).
pub const LOGIN_TTL_SECS: i64 = 600;

/// At most this many logins wait at once; the oldest is dropped past it.
const MAX_PENDING_LOGINS: usize = 64;

/// The default limit of a request body.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// A component's metrics (the alert channels' deliveries, say), registered into the one
/// prometheus-client registry that `/metrics` encodes, on every scrape: the hook builds its
/// families from the component's counters as they are then.
pub type RegistryMetrics = Arc<dyn Fn(&mut prometheus_client::registry::Registry) + Send + Sync>;

/// Routes of other components (the web page, the proxy) served beside the API on the same
/// listener, built by the binary; the argument says whether the listener uses TLS (so cookies
/// can be `Secure`).
pub type ExtraRoutes = Arc<dyn Fn(bool) -> axum::Router + Send + Sync>;

/// Where `POST /oauth/start` parks its logins in the store's installation state.
pub const LOGIN_PREFIX: &str = "logins/api/";

/// The state key of the login whose OAuth `state` is `state` (base64url, so it is one word).
fn login_key(state: &str) -> String {
    format!("{LOGIN_PREFIX}{state}")
}

/// A login waiting for its code.
#[derive(Debug, Clone)]
pub(crate) struct PendingLogin {
    pub(crate) login: PkceLogin,
    /// A login of another provider than Anthropic (`POST /oauth/start?provider=ID`).
    pub(crate) started: Option<tokenkeeper_keeper::StartedLogin>,
}

/// The server's shared state. Cheap to clone: one reference count (axum clones the state for
/// every request that extracts it, so one `Arc` instead of one per field keeps the hot path
/// to a single atomic increment and decrement).
#[derive(Clone)]
pub struct AppState {
    shared: Arc<Shared>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

/// What [`AppState`] shares. The builder methods (`with_…`) run before the server starts;
/// they copy it only if it is already shared.
#[derive(Clone)]
pub struct Shared {
    pub(crate) keeper: Arc<Keeper>,
    pub(crate) sinks: Option<Arc<SinkSet>>,
    pub(crate) admin_token: Arc<Secret>,
    limiter: Arc<FailureLimiter>,
    pub(crate) registry_metrics: Vec<RegistryMetrics>,
    pub(crate) body_limit: usize,
    pub(crate) extra_routes: Option<ExtraRoutes>,
    pub(crate) front: Option<crate::front::Front>,
    keys: Arc<Mutex<KeyCache>>,
    pub(crate) replica: Option<Replica>,
}

/// This process as one replica: its id and whether it leads (from the daemon's campaign).
#[derive(Debug, Clone)]
pub struct Replica {
    /// The replica id (`[replica] id`, default `<hostname>:<pid>`).
    pub id: String,
    /// Whether this process leads, as it changes.
    pub leading: tokio::sync::watch::Receiver<bool>,
}

/// Unrevoked API keys found so far, by hash, valid for one generation of the keeper's change
/// feed (a key created or revoked by any process starts a new one). Unknown keys are not
/// remembered: a flood of wrong keys must not grow memory (the failure limiter handles it).
#[derive(Debug, Default)]
struct KeyCache {
    generation: u64,
    /// Shared, so a hit is a reference count, not a copy of the key's strings.
    by_hash: HashMap<String, Arc<tokenkeeper_core::store::ApiKey>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("keeper", &self.keeper)
            .field("admin_token", &self.admin_token)
            .field("body_limit", &self.body_limit)
            .finish_non_exhaustive()
    }
}

/// A sink's state as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SinkView {
    /// The sink's name.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// Whether the last delivery succeeded.
    pub ok: bool,
    /// The last error, without secrets.
    pub last_error: Option<String>,
    /// When it last wrote successfully.
    pub last_written_at: Option<DateTime<Utc>>,
    /// Successful writes.
    pub writes: u64,
    /// Failed attempts.
    pub failures: u64,
}

impl From<&SinkStatus> for SinkView {
    fn from(s: &SinkStatus) -> Self {
        SinkView {
            name: s.name.clone(),
            kind: serde_json::to_value(s.kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
            ok: s.ok,
            last_error: s.last_error.clone(),
            last_written_at: s.last_written_at,
            writes: s.writes,
            failures: s.failures,
        }
    }
}

/// An account's view (as `tokenkeeper status --json` shows it) with its sinks.
#[derive(Debug, Serialize)]
pub struct AccountWithSinks {
    /// The shared account view.
    #[serde(flatten)]
    pub view: AccountView,
    /// The account's sinks.
    pub sinks: Vec<SinkView>,
}

impl AppState {
    /// The state for a server over `keeper`; `sinks` (when the daemon delivers) feed the
    /// status and metrics; `admin_token` is the token that may do everything.
    pub fn new(keeper: Arc<Keeper>, sinks: Option<Arc<SinkSet>>, admin_token: Secret) -> Self {
        AppState {
            shared: Arc::new(Shared {
                keeper,
                sinks,
                admin_token: Arc::new(admin_token),
                limiter: Arc::default(),
                registry_metrics: Vec::new(),
                body_limit: DEFAULT_BODY_LIMIT,
                keys: Arc::default(),
                extra_routes: None,
                front: None,
                replica: None,
            }),
        }
    }

    /// Says in `/api/status` and `/metrics` which replica this is and whether it leads.
    pub fn with_replica(mut self, replica: Replica) -> Self {
        Arc::make_mut(&mut self.shared).replica = Some(replica);
        self
    }

    /// Also serves the routes `routes` builds (see [`ExtraRoutes`]).
    pub fn with_routes(mut self, routes: ExtraRoutes) -> Self {
        Arc::make_mut(&mut self.shared).extra_routes = Some(routes);
        self
    }

    /// Also serves `front` on the same listener, ahead of the router: the requests it claims
    /// skip the router and the API's whole-request timeout (`[server] request_timeout`), for
    /// answers that last as long as they last, such as the proxy's streams. Only the request
    /// *body* timeout (`[server] body_read_timeout`, the longest pause while a body arrives)
    /// still applies; the front bounds everything else itself (body size, upstream timeouts).
    pub fn with_front(mut self, front: crate::front::Front) -> Self {
        Arc::make_mut(&mut self.shared).front = Some(front);
        self
    }

    /// The unrevoked key with SHA-256 `hash`: from memory while the keeper follows the change
    /// feed, from the store otherwise (and to fill the memory).
    pub(crate) async fn find_api_key(
        &self,
        hash: &str,
    ) -> Result<Option<Arc<tokenkeeper_core::store::ApiKey>>, tokenkeeper_core::StoreError> {
        let generation = self.keeper.keys_generation();
        if let Some(g) = generation {
            let mut cache = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            if cache.generation != g {
                cache.by_hash.clear();
                cache.generation = g;
            }
            if let Some(k) = cache.by_hash.get(hash) {
                return Ok(Some(k.clone()));
            }
        }
        let found = self.keeper.store().find_api_key(hash).await?.map(Arc::new);
        if let (Some(g), Some(k)) = (generation, &found) {
            let mut cache = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            // A change that arrived during the read starts a newer generation: keep nothing.
            if cache.generation == g && self.keeper.keys_generation() == Some(g) {
                cache.by_hash.insert(hash.to_owned(), k.clone());
            }
        }
        Ok(found)
    }

    /// Adds a hook that registers a component's metric families into `/metrics`' registry,
    /// after the server's own and those of the hooks added before.
    pub fn with_metrics(mut self, hook: RegistryMetrics) -> Self {
        Arc::make_mut(&mut self.shared).registry_metrics.push(hook);
        self
    }

    /// Sets how many failed authentications an address may make per minute before it is
    /// refused for a while (default [`crate::auth::MAX_FAILURES`]). For API testers such as
    /// schemathesis, which present wrong keys on purpose.
    pub fn with_failure_limit(mut self, max_failures: usize) -> Self {
        Arc::make_mut(&mut self.shared).limiter = Arc::new(FailureLimiter::for_api(max_failures));
        self
    }

    /// Sets the request body limit (default 64 KiB).
    pub fn with_body_limit(mut self, bytes: usize) -> Self {
        Arc::make_mut(&mut self.shared).body_limit = bytes;
        self
    }

    /// The keeper the handlers serve, as given to [`AppState::new`].
    pub fn keeper(&self) -> &Arc<Keeper> {
        &self.keeper
    }

    /// The sinks, when the daemon runs beside the server.
    pub fn sinks(&self) -> Option<&Arc<SinkSet>> {
        self.sinks.as_ref()
    }

    /// The admin token (for the web page's sign-in).
    pub fn admin_token(&self) -> &Secret {
        &self.admin_token
    }

    pub(crate) fn limiter(&self) -> &FailureLimiter {
        &self.limiter
    }

    /// Starts a login and parks it in the store (so any replica can finish it) until its code
    /// comes back or it expires.
    pub(crate) async fn start_login(
        &self,
        provider: Option<&str>,
    ) -> Result<(String, String), tokenkeeper_keeper::KeeperError> {
        let started = match provider.filter(|p| *p != tokenkeeper_core::config::ANTHROPIC) {
            Some(p) => Some(self.keeper.start_provider_login(p, None)?),
            None => None,
        };
        let (login, url) = match &started {
            Some(s) => (s.login.clone(), s.url.clone()),
            None => self.keeper.start_login(),
        };
        let state = login.state.clone();
        let live = self.keeper.sweep_logins(LOGIN_PREFIX).await?;
        // Oldest first: drop the oldest past the bound, so a flood of starts cannot grow the store.
        for old in live.iter().take((live.len() + 1).saturating_sub(MAX_PENDING_LOGINS)) {
            self.keeper.unpark_login(old).await?;
        }
        let ttl = Duration::seconds(LOGIN_TTL_SECS);
        match &started {
            Some(s) => self.keeper.park_started_login(&login_key(&state), s, ttl).await?,
            None => self.keeper.park_login(&login_key(&state), &login, &url, ttl).await?,
        }
        Ok((url, state))
    }

    /// The pending login for `state` (`None` picks the only pending login), if not expired.
    pub(crate) async fn pending_login(
        &self,
        state: Option<&str>,
    ) -> Result<Option<PendingLogin>, tokenkeeper_keeper::KeeperError> {
        let key = match state {
            Some(s) => login_key(s),
            None => {
                let mut live = self.keeper.sweep_logins(LOGIN_PREFIX).await?;
                if live.len() != 1 {
                    return Ok(None);
                }
                live.remove(0)
            }
        };
        Ok(self.keeper.parked_login(&key).await?.map(|p| PendingLogin { started: p.started(), login: p.login }))
    }

    /// Forgets a pending login (its code was used); whether it was still there.
    pub(crate) async fn forget_login(&self, state: &str) -> Result<bool, tokenkeeper_keeper::KeeperError> {
        self.keeper.unpark_login(&login_key(state)).await
    }

    /// Every sink's status (empty without sinks).
    pub(crate) fn sink_statuses(&self) -> Vec<SinkStatus> {
        self.sinks.as_ref().map(|s| s.statuses()).unwrap_or_default()
    }

    /// An account's view with its sinks, from a snapshot of sink statuses.
    pub(crate) fn view_with(&self, account: &Account, sinks: &[SinkStatus]) -> AccountWithSinks {
        let mine: Vec<&SinkStatus> = sinks.iter().filter(|s| s.account == account.name).collect();
        let failing = mine.iter().filter(|s| !s.ok).map(|s| s.name.clone()).collect();
        let view = account_view(self.keeper.config(), account, self.keeper.clock().now(), failing);
        AccountWithSinks { view, sinks: mine.into_iter().map(SinkView::from).collect() }
    }

    /// An account's view with its sinks.
    pub(crate) fn view(&self, account: &Account) -> AccountWithSinks {
        self.view_with(account, &self.sink_statuses())
    }
}
