//! Test support: a keeper over a temp store, the mock provider and a manual clock.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokenkeeper_core::formats::{Format, ParsedCredential};
use tokenkeeper_core::store::CredentialChange;
use tokenkeeper_core::{Account, Binding, Config, Credential, ManualClock, Mode, Secret, Store};
use tokenkeeper_keeper::{Ingest, Keeper};
use tokenkeeper_mock::{IssuedTokens, MockProvider};
use tokenkeeper_store::{EncryptionKey, SqliteStore};

pub struct Env {
    pub dir: tempfile::TempDir,
    pub mock: MockProvider,
    pub clock: ManualClock,
    pub store: Arc<SqliteStore>,
    pub keeper: Arc<Keeper>,
    pub config: Arc<Config>,
}

pub fn start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&Utc)
}

pub async fn env(tweak: impl FnOnce(&mut Config)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockProvider::start().await.unwrap();
    let clock = ManualClock::new(start());
    mock.set_clock(Arc::new(clock.clone()));
    let mut config = Config::default();
    {
        let p = config.providers.get_mut("anthropic").unwrap();
        p.token_url = mock.token_url();
        p.authorize_url = mock.authorize_url();
        p.redirect_uri = mock.redirect_uri();
        p.api_base_url = mock.api_base_url();
        p.timeout = std::time::Duration::from_secs(5);
    }
    tweak(&mut config);
    let config = Arc::new(config);
    let store = Arc::new(SqliteStore::open(&dir.path().join("data"), EncryptionKey::generate()).await.unwrap());
    let keeper = Arc::new(
        Keeper::new(store.clone(), config.clone(), &dir.path().join("data"), Arc::new(clock.clone())).unwrap(),
    );
    Env { dir, mock, clock, store, keeper, config }
}

impl Env {
    /// A second keeper on the same data directory: what another process has.
    pub async fn other_process(&self) -> Arc<Keeper> {
        Arc::new(
            Keeper::new(
                self.store.clone(),
                self.config.clone(),
                &self.dir.path().join("data"),
                Arc::new(self.clock.clone()),
            )
            .unwrap(),
        )
    }

    pub fn credential(t: &IssuedTokens) -> Credential {
        Credential {
            access_token: Secret::new(t.access_token.clone()),
            refresh_token: Some(Secret::new(t.refresh_token.clone())),
            expires_at: DateTime::from_timestamp_millis(t.expires_at_ms).unwrap(),
            scopes: vec!["user:inference".into(), "user:profile".into()],
            subscription_type: Some("max".into()),
            rate_limit_tier: None,
        }
    }

    /// Logs in at the mock and stores the account.
    pub async fn seed(&self, name: &str, binding: Option<Binding>, mode: Mode) -> (Account, IssuedTokens) {
        let t = self.mock.issue_login(&format!("{name}@example.com"));
        let parsed = ParsedCredential { credential: Self::credential(&t), format: Format::ClaudeJson, email: None };
        let a = self
            .keeper
            .ingest(Ingest {
                account: Some(name.into()),
                parsed,
                mode: Some(mode),
                binding,
                change: CredentialChange::LoggedIn,
                organization: None,
            })
            .await
            .unwrap();
        (a.account().clone(), t)
    }

    pub async fn account(&self, name: &str) -> Account {
        self.store.get_account(name).await.unwrap().unwrap()
    }
}
