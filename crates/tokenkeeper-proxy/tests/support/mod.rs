//! A proxy over a keeper whose accounts the mock issued, served on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use tokenkeeper_core::formats::parse_credential;
use tokenkeeper_core::Config;
use tokenkeeper_keeper::testing::{self, Env};
use tokenkeeper_proxy::ProxyState;

pub struct Proxy {
    pub env: Env,
    pub state: ProxyState,
    pub addr: SocketAddr,
    pub key: String,
    server: tokio::task::JoinHandle<()>,
    follow: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.server.abort();
        self.follow.abort();
    }
}

/// A keeper with OAuth accounts `accounts` (logins `NAME@example.com` at the mock), a proxy
/// key with the `proxy` scope, and the proxy serving; `tweak` changes the config first.
pub async fn start(accounts: &[&str], tweak: impl FnOnce(&mut Config)) -> Proxy {
    let env = testing::env(tweak).await;
    for a in accounts {
        env.seed(a, None, None).await;
    }
    let follow = env.keeper.follow_changes().await.unwrap();
    let key = new_key(&env, "agent", &["proxy"]).await;
    let state = ProxyState::new(env.keeper.clone(), &env.config).unwrap();
    let (addr, server) = serve(&state).await;
    Proxy { env, state, addr, key, server, follow }
}

pub async fn serve(state: &ProxyState) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = tokenkeeper_proxy::router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, server)
}

pub async fn new_key(env: &Env, name: &str, scopes: &[&str]) -> String {
    let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
    let created = tokenkeeper_server::auth::create_api_key(env.store.as_ref(), name, &scopes, &[], env.clock.now_utc())
        .await
        .unwrap();
    created.key.expose().to_owned()
}

/// Imports a plain API key the mock issued (label `label`) as account `name`.
pub async fn add_api_key_account(env: &Env, name: &str, label: &str) {
    let key = env.mock.issue_api_key(label);
    let parsed = parse_credential(&key, env.clock.now_utc()).unwrap();
    testing::import_as(&env.keeper, name, parsed).await.unwrap();
}

impl Proxy {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A Messages request with the proxy key as `x-api-key`, as Claude Code sends it.
    pub fn messages(&self, body: &serde_json::Value) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .post(self.url("/v1/messages"))
            .header("x-api-key", &self.key)
            .header("anthropic-version", "2023-06-01")
            .header("content-type", "application/json")
            .body(body.to_string())
    }

    /// Which account's credential each request the mock received carried (emails / labels).
    pub fn seen(&self) -> Vec<String> {
        self.env
            .mock
            .requests()
            .into_iter()
            .map(|r| match r.credential {
                tokenkeeper_mock::Credential::OAuth(e) | tokenkeeper_mock::Credential::ApiKey(e) => e,
                other => format!("{other:?}"),
            })
            .collect()
    }
}

pub fn hello(stream: bool) -> serde_json::Value {
    serde_json::json!({"model": "claude-sonnet-4-5", "max_tokens": 16, "stream": stream,
        "messages": [{"role": "user", "content": "hi"}]})
}

pub trait NowUtc {
    fn now_utc(&self) -> chrono::DateTime<chrono::Utc>;
}

impl NowUtc for tokenkeeper_core::ManualClock {
    fn now_utc(&self) -> chrono::DateTime<chrono::Utc> {
        tokenkeeper_core::Clock::now(self)
    }
}

pub fn arc<T>(t: T) -> Arc<T> {
    Arc::new(t)
}

/// The proxy's families as `/metrics` encodes them (OpenMetrics text, one registry).
pub fn metrics_text(state: &ProxyState) -> String {
    use tokenkeeper_server::metrics::prometheus_client::encoding::text::encode;
    use tokenkeeper_server::metrics::prometheus_client::registry::Registry;
    let mut registry = Registry::default();
    state.register_metrics(&mut registry);
    let mut out = String::new();
    encode(&mut out, &registry).unwrap();
    out
}
