//! Test support: a keeper over a temp store, the mock provider and a manual clock, the API
//! router over it, and helpers to call it with `Router::oneshot`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

use tokenkeeper_core::{Account, Clock, Config, Mode, Secret, Store};
use tokenkeeper_keeper::testing;
use tokenkeeper_mock::IssuedTokens;
use tokenkeeper_server::{AppState, Scope};

#[allow(unused_imports)]
pub use tokenkeeper_keeper::testing::claude_json;

pub const ADMIN: &str = "tka_test-admin-token-0123456789abcdef";

/// The keeper's test environment (reached through `Deref`) plus the API's state.
pub struct Env {
    pub base: testing::Env,
    pub state: AppState,
    /// Every response body seen, for the leak check.
    pub seen: Arc<Mutex<Vec<(String, String)>>>,
}

impl Deref for Env {
    type Target = testing::Env;

    fn deref(&self) -> &testing::Env {
        &self.base
    }
}

pub async fn env() -> Env {
    env_with(|_| {}).await
}

pub async fn env_with(tweak: impl FnOnce(&mut Config)) -> Env {
    let base = testing::env(|config| {
        config.keeper.max_attempts_per_hour = 1000;
        tweak(config);
    })
    .await;
    let state = AppState::new(base.keeper.clone(), None, Secret::new(ADMIN));
    Env { base, state, seen: Arc::default() }
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

    /// Logs in at the mock as `name@example.com` and stores the account `name` (mode `own`).
    pub async fn seed(&self, name: &str) -> (Account, IssuedTokens) {
        self.base.seed(name, None, Mode::Own).await
    }

    /// The stored account `name`, if any.
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
