//! Test support, compiled only with the `testing` feature: a keeper over a temporary SQLite
//! store, the mock provider and a manual clock ([`env`] builds it, [`Env`] holds it), plus the
//! pieces for tests that need another shape (a real clock, their own router): [`mock_config`],
//! [`open_keeper`], [`log_in`], [`Env::credential`], [`claude_json`].
//!
//! The keeper's own tests use it, and so do the server's and the web page's, so the setup of
//! "a keeper the mock answers" is written once.

// Test support: a broken setup should stop the test with its message, right there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokenkeeper_core::formats::{Format, ParsedCredential};
use tokenkeeper_core::store::CredentialChange;
use tokenkeeper_core::{Account, Backend, Binding, Clock, Config, Credential, ManualClock, Mode, Secret, Store};
use tokenkeeper_mock::{IssuedTokens, MockProvider};
use tokenkeeper_store::{EncryptionKey, FlockAccountLock, FlockLeadership, SqliteStore};

use crate::{Ingest, Keeper};

/// A keeper over a temporary store and the mock provider, on a manual clock the mock shares.
pub struct Env {
    /// The temporary directory; the data directory is its `data`.
    pub dir: tempfile::TempDir,
    /// The mock provider the configuration points at.
    pub mock: MockProvider,
    /// The clock of the keeper and the mock.
    pub clock: ManualClock,
    /// The store under the keeper.
    pub store: Arc<SqliteStore>,
    /// A keeper over `store`, with `config` and `clock`, no accounts yet (data directory `dir/data`).
    pub keeper: Arc<Keeper>,
    /// The keeper's configuration.
    pub config: Arc<Config>,
}

/// The instant every [`env`] starts at: 2026-01-01T00:00:00Z.
pub fn start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&Utc)
}

/// The default configuration with the `anthropic` provider pointed at `mock`.
pub fn mock_config(mock: &MockProvider) -> Config {
    let mut config = Config::default();
    let p = config.providers.get_mut("anthropic").unwrap();
    p.token_url = mock.token_url();
    p.authorize_url = mock.authorize_url();
    p.redirect_uri = mock.redirect_uri();
    p.api_base_url = mock.api_base_url();
    p.timeout = std::time::Duration::from_secs(5);
    config
}

/// A new store (with a fresh key) in `dir/data`, and a keeper over it.
pub async fn open_keeper(dir: &Path, config: Arc<Config>, clock: Arc<dyn Clock>) -> (Arc<SqliteStore>, Arc<Keeper>) {
    let data = dir.join("data");
    let store = Arc::new(SqliteStore::open(&data, EncryptionKey::generate()).await.unwrap());
    let keeper = Arc::new(Keeper::new(backend_of(&store, &data), config, &data, clock).unwrap());
    (store, keeper)
}

/// As [`open_keeper`], with the keeper's providers given (a test's own provider among them).
pub async fn open_keeper_with(
    dir: &Path,
    config: Arc<Config>,
    clock: Arc<dyn Clock>,
    providers: tokenkeeper_provider::Providers,
) -> (Arc<SqliteStore>, Arc<Keeper>) {
    let data = dir.join("data");
    let store = Arc::new(SqliteStore::open(&data, EncryptionKey::generate()).await.unwrap());
    let keeper = Arc::new(Keeper::with_providers(backend_of(&store, &data), config, &data, clock, providers).unwrap());
    (store, keeper)
}

/// The embedded backend around an open store of `data`.
pub fn backend_of(store: &Arc<SqliteStore>, data: &Path) -> Backend {
    Backend {
        store: store.clone(),
        lock: Arc::new(FlockAccountLock::new(data.join("locks"))),
        feed: Arc::new(store.change_feed()),
        leader: Arc::new(FlockLeadership::new(data.to_owned())),
    }
}

/// An [`Env`] starting at [`start`], its configuration changed by `tweak`.
pub async fn env(tweak: impl FnOnce(&mut Config)) -> Env {
    env_at(ManualClock::new(start()), tweak).await
}

/// An [`Env`] on `clock`, its configuration changed by `tweak`.
pub async fn env_at(clock: ManualClock, tweak: impl FnOnce(&mut Config)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockProvider::start().await.unwrap();
    mock.set_clock(Arc::new(clock.clone()));
    let mut config = mock_config(&mock);
    tweak(&mut config);
    let config = Arc::new(config);
    let (store, keeper) = open_keeper(dir.path(), config.clone(), Arc::new(clock.clone())).await;
    Env { dir, mock, clock, store, keeper, config }
}

/// Claude Code's credentials JSON for tokens the mock issued.
pub fn claude_json(t: &IssuedTokens) -> String {
    serde_json::json!({
        "claudeAiOauth": {
            "accessToken": t.access_token,
            "refreshToken": t.refresh_token,
            "expiresAt": t.expires_at_ms,
            "scopes": ["user:inference", "user:profile"],
            "subscriptionType": "max"
        }
    })
    .to_string()
}

/// Logs in at `mock` as `name@example.com` and has `keeper` store the account `name`, as
/// [`Env::seed`] does, for a keeper that is not in an [`Env`].
pub async fn log_in(
    keeper: &Keeper,
    mock: &MockProvider,
    name: &str,
    binding: Option<Binding>,
    mode: impl Into<Option<Mode>>,
) -> (Account, IssuedTokens) {
    let t = mock.issue_login(&format!("{name}@example.com"));
    let parsed = ParsedCredential { credential: Env::credential(&t), format: Format::ClaudeJson, email: None };
    let a = keeper
        .ingest(Ingest {
            account: Some(name.into()),
            parsed,
            mode: mode.into(),
            binding,
            change: CredentialChange::LoggedIn,
            organization: None,
            provider: None,
        })
        .await
        .unwrap();
    (a.account().clone(), t)
}

impl Env {
    /// A second keeper on the same data directory: what another process has.
    pub async fn other_process(&self) -> Arc<Keeper> {
        Arc::new(
            Keeper::new(
                backend_of(&self.store, &self.dir.path().join("data")),
                self.config.clone(),
                &self.dir.path().join("data"),
                Arc::new(self.clock.clone()),
            )
            .unwrap(),
        )
    }

    /// The credential of tokens the mock issued (a Max subscription).
    pub fn credential(t: &IssuedTokens) -> Credential {
        Credential {
            access_token: Secret::new(t.access_token.clone()),
            refresh_token: Some(Secret::new(t.refresh_token.clone())),
            expires_at: DateTime::from_timestamp_millis(t.expires_at_ms).unwrap(),
            scopes: vec!["user:inference".into(), "user:profile".into()],
            subscription_type: Some("max".into()),
            rate_limit_tier: None,
            provider_data: None,
        }
    }

    /// Logs in at the mock as `name@example.com` and stores the account `name`; `mode` may be
    /// `None` to leave it to the keeper.
    pub async fn seed(
        &self,
        name: &str,
        binding: Option<Binding>,
        mode: impl Into<Option<Mode>>,
    ) -> (Account, IssuedTokens) {
        log_in(&self.keeper, &self.mock, name, binding, mode).await
    }

    /// The stored account `name`, which must exist.
    pub async fn account(&self, name: &str) -> Account {
        self.store.get_account(name).await.unwrap().unwrap()
    }
}

/// Imports `parsed` as account `name` through `keeper` (as `tokenkeeper import` does).
pub async fn import_as(
    keeper: &crate::Keeper,
    name: &str,
    parsed: tokenkeeper_core::formats::ParsedCredential,
) -> Result<crate::IngestOutcome, crate::KeeperError> {
    keeper
        .ingest(crate::Ingest {
            account: Some(name.into()),
            parsed,
            mode: None,
            binding: None,
            change: tokenkeeper_core::store::CredentialChange::Imported,
            organization: None,
            provider: None,
        })
        .await
}
