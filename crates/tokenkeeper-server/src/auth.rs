//! Who may call the API: the admin token, scoped API keys, the [`Authed`] extractor that every
//! handler but `/health` takes, and the per-address limit on failed attempts.
//!
//! - The **admin token** is generated on first start and kept 0600 in
//!   `<data_dir>/admin-token` (`TOKENKEEPER_ADMIN_TOKEN` overrides it). It may do everything.
//! - **API keys** look like `tk_<id>_<secret>`. Only the SHA-256 of the whole key is stored;
//!   the key is shown once when it is created. A key has scopes and may be limited to some
//!   accounts.
//! - Authentication is an extractor, so a handler cannot forget it: a handler that takes
//!   `Authed<scope::TokenRead>` is only called for a caller holding that scope. Account limits
//!   are checked by [`Principal::resolve_account`] and [`Principal::check_account`].
//! - Presented-but-wrong keys count as failures per client address; past
//!   [`MAX_FAILURES`] within a minute the address gets 429 for [`BLOCK_FOR`], measured on the
//!   keeper's clock.

use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use tokenkeeper_core::account::validate_account_name;
use tokenkeeper_core::fs::{create_once, Created};
use tokenkeeper_core::store::ApiKey;
use tokenkeeper_core::{constant_time_eq, Account, Secret, Store};
use tokenkeeper_keeper::Keeper;

pub use crate::client::{Blocked, ClientAddr, FailureLimiter};
use crate::error::{ApiError, ServerError};
use crate::state::AppState;

/// The file in the data directory that holds the admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// The environment variable that overrides the admin token file.
pub const ADMIN_TOKEN_ENV: &str = "TOKENKEEPER_ADMIN_TOKEN";

/// Failed attempts allowed per client address within [`FAILURE_WINDOW_SECS`].
pub const MAX_FAILURES: usize = 10;

/// The window failures are counted in, in seconds.
pub const FAILURE_WINDOW_SECS: i64 = 60;

/// How long an address that failed too often is refused, in seconds.
pub const BLOCK_FOR: i64 = 60;

/// What a key may do. Keys store, and `keys create --scope` takes, the word strum derives
/// (`token:read`, `accounts:write`, …).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, strum::Display, strum::IntoStaticStr, strum::EnumIter,
)]
#[strum(serialize_all = "lowercase")]
pub enum Scope {
    /// `GET /api/token`: read access tokens.
    #[strum(serialize = "token:read")]
    TokenRead,
    /// Status endpoints: `/api/status`, `/oauth/status`, `/ready`.
    #[strum(serialize = "status:read")]
    StatusRead,
    /// `POST /api/push`.
    Push,
    /// `POST /api/auto-refresh[-if-needed]`.
    Refresh,
    /// `POST /oauth/start`, `POST /oauth/exchange-code`.
    Login,
    /// `DELETE /oauth/tokens[/{account}]`.
    #[strum(serialize = "accounts:write")]
    AccountsWrite,
    /// `GET /metrics`.
    #[strum(serialize = "metrics:read")]
    MetricsRead,
    /// The Anthropic API proxy, `/v1/*` (a key may be tied to one pool).
    Proxy,
    /// Everything.
    Admin,
}

impl Scope {
    /// Every scope, in declaration order.
    pub fn all() -> impl Iterator<Item = Scope> {
        <Scope as strum::IntoEnumIterator>::iter()
    }

    /// The scope's name, as keys store it.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// All scope names, comma-separated, for messages.
    pub fn known() -> String {
        Scope::all().map(Scope::as_str).collect::<Vec<_>>().join(", ")
    }
}

impl FromStr for Scope {
    type Err = ServerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::all()
            .find(|x| x.as_str() == s.trim())
            .ok_or_else(|| ServerError::UnknownScope { scope: s.to_owned(), known: Scope::known() })
    }
}

/// Type-level scopes for [`Authed`].
pub mod scope {
    use super::Scope;

    /// The scope an [`super::Authed`] extractor demands (`None`: any valid key).
    pub trait Required: Send + Sync + 'static {
        /// The scope.
        const SCOPE: Option<Scope>;
    }

    macro_rules! scopes {
        ($($(#[$doc:meta])* $name:ident => $value:expr;)*) => {$(
            $(#[$doc])*
            #[derive(Debug)]
            pub struct $name;
            impl Required for $name {
                const SCOPE: Option<Scope> = $value;
            }
        )*};
    }

    scopes! {
        /// Any valid key or the admin token.
        AnyKey => None;
        /// `token:read`.
        TokenRead => Some(Scope::TokenRead);
        /// `status:read`.
        StatusRead => Some(Scope::StatusRead);
        /// `push`.
        Push => Some(Scope::Push);
        /// `refresh`.
        Refresh => Some(Scope::Refresh);
        /// `login`.
        Login => Some(Scope::Login);
        /// `accounts:write`.
        AccountsWrite => Some(Scope::AccountsWrite);
        /// `metrics:read`.
        MetricsRead => Some(Scope::MetricsRead);
        /// `proxy`.
        Proxy => Some(Scope::Proxy);
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The admin token.
    Admin,
    /// An API key.
    Key {
        /// Its id.
        id: String,
        /// Its name.
        name: String,
    },
}

/// An authenticated caller and what it may do.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Who.
    pub caller: Caller,
    scopes: Vec<Scope>,
    accounts: Vec<String>,
    pool: Option<String>,
}

impl Principal {
    /// The admin: every scope, every account.
    pub fn admin() -> Self {
        Principal { caller: Caller::Admin, scopes: vec![Scope::Admin], accounts: Vec::new(), pool: None }
    }

    /// The principal of a stored (unrevoked) key.
    pub fn from_key(key: &ApiKey) -> Self {
        Principal {
            caller: Caller::Key { id: key.id.clone(), name: key.name.clone() },
            // Unknown scope names (written by a newer version) grant nothing.
            scopes: key.scopes.iter().filter_map(|s| s.parse().ok()).collect(),
            accounts: key.accounts.clone(),
            pool: key.scopes.iter().find_map(|s| s.strip_prefix(POOL_PREFIX)).map(str::to_owned),
        }
    }

    /// The proxy pool the key is tied to (`None`: the default pool).
    pub fn pool(&self) -> Option<&str> {
        self.pool.as_deref()
    }

    /// Whether the caller holds `scope` (`admin` holds every scope).
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.iter().any(|s| *s == scope || *s == Scope::Admin)
    }

    /// Whether the caller may use every account.
    pub fn is_unrestricted(&self) -> bool {
        self.accounts.is_empty()
    }

    /// Whether the caller may use `account`.
    pub fn may_use(&self, account: &str) -> bool {
        self.accounts.is_empty() || self.accounts.iter().any(|a| a == account)
    }

    /// Fails unless the caller may use `account`.
    pub fn check_account(&self, account: &str) -> Result<(), ApiError> {
        if self.may_use(account) {
            Ok(())
        } else {
            Err(ApiError::AccountDenied { account: account.to_owned() })
        }
    }

    /// The account a request names, or the one implied by the key (a key limited to one
    /// account acts on it); checked against the key's limits. `None` means "let the keeper
    /// choose" and is only returned for unrestricted callers.
    pub fn target(&self, requested: Option<&str>) -> Result<Option<String>, ApiError> {
        match requested {
            Some(n) => {
                self.check_account(n)?;
                Ok(Some(n.to_owned()))
            }
            None => match self.accounts.as_slice() {
                [] => Ok(None),
                [only] => Ok(Some(only.clone())),
                _ => Err(ApiError::AccountRequired),
            },
        }
    }

    /// Resolves the account a request acts on (named, implied by the key, or the only one)
    /// and checks that the caller may use it.
    pub async fn resolve_account(&self, keeper: &Keeper, requested: Option<&str>) -> Result<Account, ApiError> {
        let target = self.target(requested)?;
        let account = keeper.resolve_account(target.as_deref()).await?;
        self.check_account(&account.name)?;
        Ok(account)
    }
}

/// The extractor: an authenticated caller holding scope `S`.
pub struct Authed<S> {
    /// The caller.
    pub principal: Principal,
    _scope: PhantomData<S>,
}

impl<S> fmt::Debug for Authed<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authed").field("principal", &self.principal).finish()
    }
}

impl<S> std::ops::Deref for Authed<S> {
    type Target = Principal;
    fn deref(&self) -> &Principal {
        &self.principal
    }
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim()).filter(|t| !t.is_empty())
}

impl<S: scope::Required> FromRequestParts<AppState> for Authed<S> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let addr = ClientAddr::of(&parts.extensions);
        let now = state.keeper.clock().now();
        // No key at all is a 401 even from a blocked address: it guesses nothing.
        let Some(presented) = bearer(parts) else { return Err(ApiError::MissingKey) };
        state.limiter().check(addr, now)?;
        let principal = match authenticate(state, presented).await? {
            Some(p) => p,
            None => {
                state.limiter().fail(addr, now);
                tracing::info!(client = ?addr, "API request with an invalid key");
                return Err(ApiError::BadKey);
            }
        };
        if let Some(scope) = S::SCOPE {
            if !principal.has(scope) {
                return Err(ApiError::MissingScope { scope });
            }
        }
        Ok(Authed { principal, _scope: PhantomData })
    }
}

/// Checks a presented token: the admin token (in constant time, hiding its length too: the
/// same comparison as the web page's sign-in), then the stored API keys.
async fn authenticate(state: &AppState, presented: &str) -> Result<Option<Principal>, ApiError> {
    if constant_time_eq(presented.as_bytes(), state.admin_token.expose().as_bytes()) {
        return Ok(Some(Principal::admin()));
    }
    if !presented.starts_with(KEY_PREFIX) {
        return Ok(None);
    }
    let hash = hash_key(presented);
    // The lookup is by the hash of a 256-bit random secret: timing reveals nothing usable.
    let found = state.find_api_key(&hash).await?;
    Ok(found
        .filter(|k| k.revoked_at.is_none() && constant_time_eq(k.hash.as_bytes(), hash.as_bytes()))
        .map(|k| Principal::from_key(&k)))
}

impl FailureLimiter {
    /// The API's limit: [`MAX_FAILURES`] failures (or `max_failures`, for API testers) within
    /// [`FAILURE_WINDOW_SECS`] refuse the address for [`BLOCK_FOR`] seconds.
    pub fn for_api(max_failures: usize) -> Self {
        Self::new(max_failures, secs(FAILURE_WINDOW_SECS), secs(BLOCK_FOR))
    }
}

/// The API's limit with the default [`MAX_FAILURES`].
impl Default for FailureLimiter {
    fn default() -> Self {
        Self::for_api(MAX_FAILURES)
    }
}

fn secs(s: i64) -> std::time::Duration {
    std::time::Duration::from_secs(s.unsigned_abs())
}

impl From<Blocked> for ApiError {
    fn from(b: Blocked) -> Self {
        ApiError::RateLimited { retry_after: b.retry_after }
    }
}

/// A key's proxy pool is kept among its scopes as `pool:<name>`: older versions read it as an
/// unknown scope, which grants nothing.
pub const POOL_PREFIX: &str = "pool:";

/// The prefix of every API key.
pub const KEY_PREFIX: &str = "tk_";

/// The prefix of a generated admin token.
pub const ADMIN_PREFIX: &str = "tka_";

/// `N` random bytes (core's one generator), hex.
fn random_hex<const N: usize>() -> String {
    hex::encode(tokenkeeper_core::random_bytes::<N>())
}

/// SHA-256 of a key, hex: what the store keeps.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A key just created: the stored record and the key itself, shown once.
#[derive(Debug)]
pub struct NewApiKey {
    /// What the store keeps (no secret).
    pub record: ApiKey,
    /// The key (`tk_<id>_<secret>`).
    pub key: Secret,
}

/// Creates an API key with `scopes`, limited to `accounts` (empty: all), and stores its hash.
pub async fn create_api_key(
    store: &dyn Store,
    name: &str,
    scopes: &[String],
    accounts: &[String],
    now: DateTime<Utc>,
) -> Result<NewApiKey, ServerError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(ServerError::BadKeyName);
    }
    if scopes.is_empty() {
        return Err(ServerError::NoScopes { known: Scope::known() });
    }
    let (pools, scopes): (Vec<&String>, Vec<&String>) = scopes.iter().partition(|s| s.starts_with(POOL_PREFIX));
    let mut parsed: Vec<Scope> = scopes.iter().map(|s| s.parse()).collect::<Result<_, _>>()?;
    parsed.sort();
    parsed.dedup();
    let pool = match pools.as_slice() {
        [] => None,
        [one] if parsed.contains(&Scope::Proxy) => {
            let name = &one[POOL_PREFIX.len()..];
            validate_account_name(name)
                .map_err(|reason| ServerError::BadAccount { account: name.to_owned(), reason })?;
            Some(one.to_string())
        }
        [_] => return Err(ServerError::BadPool("a pool is only for keys with the `proxy` scope; add --scope proxy")),
        _ => return Err(ServerError::BadPool("a key can be tied to one pool only")),
    };
    for a in accounts {
        validate_account_name(a).map_err(|reason| ServerError::BadAccount { account: a.clone(), reason })?;
    }
    let existing =
        store.list_api_keys().await.map_err(|source| ServerError::Store { action: "list API keys", source })?;
    if existing.iter().any(|k| k.revoked_at.is_none() && k.name == name) {
        return Err(ServerError::DuplicateKeyName(name.to_owned()));
    }
    let id = random_hex::<6>();
    let key = Secret::new(format!("{KEY_PREFIX}{id}_{}", random_hex::<32>()));
    let mut accounts = accounts.to_vec();
    accounts.sort();
    accounts.dedup();
    let record = ApiKey {
        id,
        name: name.to_owned(),
        hash: hash_key(key.expose()),
        scopes: parsed.iter().map(|s| s.as_str().to_owned()).chain(pool).collect(),
        accounts,
        created_at: now,
        revoked_at: None,
    };
    store.create_api_key(&record).await.map_err(|source| ServerError::Store { action: "store the API key", source })?;
    tracing::info!(id = %record.id, name = %record.name, scopes = ?record.scopes, accounts = ?record.accounts, "API key created");
    Ok(NewApiKey { record, key })
}

/// Revokes a key by id or name. Returns whether one was revoked.
pub async fn revoke_api_key(store: &dyn Store, id_or_name: &str, now: DateTime<Utc>) -> Result<bool, ServerError> {
    store
        .revoke_api_key(id_or_name, now)
        .await
        .map_err(|source| ServerError::Store { action: "revoke the API key", source })
}

/// Every key (revoked ones too), without secrets.
pub async fn list_api_keys(store: &dyn Store) -> Result<Vec<ApiKey>, ServerError> {
    store.list_api_keys().await.map_err(|source| ServerError::Store { action: "list API keys", source })
}

/// The path of the admin token file.
pub fn admin_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join(ADMIN_TOKEN_FILE)
}

/// The admin token: `env_override` when set (from `TOKENKEEPER_ADMIN_TOKEN`), else the one in
/// `<data_dir>/admin-token`, generated (0600) on first use.
pub fn load_or_create_admin_token(data_dir: &Path, env_override: Option<&str>) -> Result<Secret, ServerError> {
    if let Some(v) = env_override.map(str::trim).filter(|v| !v.is_empty()) {
        return Ok(Secret::new(v));
    }
    let path = admin_token_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let token = text.trim();
            if token.is_empty() {
                return Err(ServerError::EmptyAdminToken { path });
            }
            return Ok(Secret::new(token));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(ServerError::Io { action: "read the admin token file", path, source }),
    }
    create_dir_private(data_dir)?;
    let token = Secret::new(format!("{ADMIN_PREFIX}{}", random_hex::<32>()));
    // Of two processes starting at once exactly one creates the file; the other reads it.
    let content = format!("{}\n", token.expose());
    match create_once(&path, content.as_bytes()) {
        Ok(Created::New) => {
            tracing::info!(file = %path.display(), "generated the admin token (print it with `tokenkeeper server token`)");
            Ok(token)
        }
        Ok(Created::Existed) => load_or_create_admin_token(data_dir, None),
        Err(source) => Err(ServerError::Io { action: "create the admin token file", path, source }),
    }
}

fn create_dir_private(dir: &Path) -> Result<(), ServerError> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir).map_err(|source| ServerError::Io {
        action: "create the data directory",
        path: dir.to_owned(),
        source,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn scopes_round_trip_and_unknown_ones_are_refused() {
        for s in Scope::all() {
            assert_eq!(s.as_str().parse::<Scope>().unwrap(), s);
        }
        let e = "tokens:read".parse::<Scope>().unwrap_err().to_string();
        assert!(e.contains("token:read"), "{e}");
    }

    #[test]
    fn limiter_blocks_after_ten_failures_for_a_minute() {
        let l = FailureLimiter::for_api(MAX_FAILURES);
        let a = ClientAddr::Ip("127.0.0.1".parse().unwrap());
        let b = ClientAddr::Ip("127.0.0.2".parse().unwrap());
        for i in 0..9 {
            l.fail(a, t(i));
            assert!(l.check(a, t(i)).is_ok());
        }
        l.fail(a, t(9));
        assert!(matches!(l.check(a, t(10)).map_err(ApiError::from), Err(ApiError::RateLimited { .. })));
        assert!(l.check(b, t(10)).is_ok(), "other addresses are not affected");
        assert!(matches!(l.check(a, t(68)).map_err(ApiError::from), Err(ApiError::RateLimited { .. })));
        assert!(l.check(a, t(70)).is_ok());
        l.fail(a, t(71));
        assert!(l.check(a, t(71)).is_ok(), "the count starts again after a block");
    }

    #[test]
    fn failures_spread_over_more_than_a_minute_do_not_block() {
        let l = FailureLimiter::for_api(MAX_FAILURES);
        let a = ClientAddr::Local;
        for i in 0..30 {
            l.fail(a, t(i * 7));
            assert!(l.check(a, t(i * 7)).is_ok(), "blocked at failure {i}");
        }
    }

    #[test]
    fn principal_limits() {
        let key = ApiKey {
            id: "abc".into(),
            name: "bot".into(),
            hash: String::new(),
            scopes: vec!["token:read".into(), "from-the-future".into()],
            accounts: vec!["a".into()],
            created_at: t(0),
            revoked_at: None,
        };
        let p = Principal::from_key(&key);
        assert!(p.has(Scope::TokenRead));
        assert!(!p.has(Scope::Push));
        assert!(p.may_use("a") && !p.may_use("b"));
        assert_eq!(p.target(None).unwrap().as_deref(), Some("a"));
        assert!(matches!(p.target(Some("b")), Err(ApiError::AccountDenied { .. })));
        assert!(Principal::admin().has(Scope::AccountsWrite));
        assert_eq!(Principal::admin().target(None).unwrap(), None);
    }

    #[test]
    fn admin_token_is_created_once_with_mode_0600_and_env_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let a = load_or_create_admin_token(&data, None).unwrap();
        assert!(a.expose().starts_with(ADMIN_PREFIX));
        let b = load_or_create_admin_token(&data, None).unwrap();
        assert_eq!(a, b);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(admin_token_path(&data)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let c = load_or_create_admin_token(&data, Some("from-env")).unwrap();
        assert_eq!(c.expose(), "from-env");
        assert_eq!(load_or_create_admin_token(&data, Some("  ")).unwrap(), a);
    }
}
