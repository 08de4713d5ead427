//! Test support: a keeper over a temp store, the mock provider and a manual clock, the API
//! router over it, and helpers to call it with `Router::oneshot`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use chrono::{DateTime, Utc};
use serde_json::Value;
use tower::ServiceExt;

use tokenkeeper_core::formats::{Format, ParsedCredential};
use tokenkeeper_core::store::CredentialChange;
use tokenkeeper_core::{Account, Clock, Config, Credential, ManualClock, Mode, Secret, Store};
use tokenkeeper_keeper::{Ingest, Keeper};
use tokenkeeper_mock::{IssuedTokens, MockProvider};
use tokenkeeper_server::{AppState, Scope};
use tokenkeeper_store::{EncryptionKey, SqliteStore};

pub const ADMIN: &str = "tka_test-admin-token-0123456789abcdef";

pub struct Env {
    pub dir: tempfile::TempDir,
    pub mock: MockProvider,
    pub clock: ManualClock,
    pub store: Arc<SqliteStore>,
    pub keeper: Arc<Keeper>,
    pub state: AppState,
    /// Every response body seen, for the leak check.
    pub seen: Arc<Mutex<Vec<(String, String)>>>,
}

pub fn start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&Utc)
}

pub async fn env() -> Env {
    env_with(|_| {}).await
}

pub async fn env_with(tweak: impl FnOnce(&mut Config)) -> Env {
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
    config.keeper.max_attempts_per_hour = 1000;
    tweak(&mut config);
    let config = Arc::new(config);
    let data = dir.path().join("data");
    let store = Arc::new(SqliteStore::open(&data, EncryptionKey::generate()).await.unwrap());
    let keeper = Arc::new(Keeper::new(store.clone(), config, &data, Arc::new(clock.clone())).unwrap());
    let state = AppState::new(keeper.clone(), None, Secret::new(ADMIN));
    Env { dir, mock, clock, store, keeper, state, seen: Arc::default() }
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

/// Claude Code's credentials JSON for tokens.
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

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// Asserts the API's error shape and status.
    pub fn expect_error(&self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "expected {status}, got {}: {}", self.status, self.text);
        let v = self.json();
        assert!(v["error"].as_str().is_some_and(|s| !s.is_empty()), "no error message: {v}");
        assert!(v["hint"].as_str().is_some_and(|s| !s.is_empty()), "no hint: {v}");
        v
    }
}

impl Env {
    pub fn router(&self) -> axum::Router {
        tokenkeeper_server::router(self.state.clone())
    }

    /// Calls the router as a client at `from` (no address: the Unix socket).
    pub async fn call_from(
        &self,
        from: Option<SocketAddr>,
        method: Method,
        uri: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> Reply {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(k) = key {
            b = b.header("authorization", format!("Bearer {k}"));
        }
        if body.is_some() {
            b = b.header("content-type", "application/json");
        }
        let mut req = b.body(body.map_or_else(Body::empty, |s| Body::from(s.to_owned()))).unwrap();
        if let Some(addr) = from {
            req.extensions_mut().insert(ConnectInfo(addr));
        }
        let resp = self.router().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        self.seen.lock().unwrap().push((uri.to_owned(), text.clone()));
        Reply { status, headers, text }
    }

    pub async fn call(&self, method: Method, uri: &str, key: Option<&str>, body: Option<&str>) -> Reply {
        self.call_from(Some("127.0.0.1:40000".parse().unwrap()), method, uri, key, body).await
    }

    pub async fn get(&self, uri: &str, key: &str) -> Reply {
        self.call(Method::GET, uri, Some(key), None).await
    }

    pub async fn post(&self, uri: &str, key: &str, body: &str) -> Reply {
        self.call(Method::POST, uri, Some(key), Some(body)).await
    }

    pub async fn delete(&self, uri: &str, key: &str) -> Reply {
        self.call(Method::DELETE, uri, Some(key), None).await
    }

    /// Logs in at the mock as `email` and stores the account `name`.
    pub async fn seed(&self, name: &str) -> (Account, IssuedTokens) {
        let t = self.mock.issue_login(&format!("{name}@example.com"));
        let parsed = ParsedCredential { credential: credential(&t), format: Format::ClaudeJson, email: None };
        let a = self
            .keeper
            .ingest(Ingest {
                account: Some(name.into()),
                parsed,
                mode: Some(Mode::Own),
                binding: None,
                change: CredentialChange::LoggedIn,
                organization: None,
            })
            .await
            .unwrap();
        (a.account().clone(), t)
    }

    pub async fn account(&self, name: &str) -> Option<Account> {
        self.store.get_account(name).await.unwrap()
    }

    /// A new API key with `scopes`, limited to `accounts`.
    pub async fn key(&self, scopes: &[Scope], accounts: &[&str]) -> String {
        let scopes: Vec<String> = scopes.iter().map(|s| s.as_str().to_owned()).collect();
        let accounts: Vec<String> = accounts.iter().map(|s| (*s).to_owned()).collect();
        let name = format!("k{}", rand_suffix());
        let k = tokenkeeper_server::create_api_key(self.store.as_ref(), &name, &scopes, &accounts, self.clock.now())
            .await
            .unwrap();
        k.key.expose().to_owned()
    }

    /// Every response body seen so far.
    pub fn seen(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap().clone()
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Captures this thread's tracing output while alive.
pub struct LogCapture {
    buf: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

#[derive(Clone)]
struct BufWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for BufWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    pub fn start() -> LogCapture {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = BufWriter(buf.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || w.clone())
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        LogCapture { buf, _guard: guard }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap()).into_owned()
    }
}
