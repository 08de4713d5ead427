//! Issue 14 through the binary: `serve` proxies `/v1/*` on the main listener (outside the API's
//! request timeout) or on `[proxy] listen`, its metrics join `/metrics` beside the alerts',
//! the usage it counts while draining is flushed, and the pool is visible in
//! `/oauth/status`, `tokenkeeper status` and `tokenkeeper pool`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Stdio};
use std::time::Duration;

use common::{stderr, World};
use tokenkeeper_mock::{Credential, Fault};

const ADMIN: &str = "proxy-test-admin-token";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `tokenkeeper serve` with `config` (which sets `[server] listen`), ready.
fn spawn_serve(w: &World, config: &str) -> Child {
    w.write_config(config);
    let log = std::fs::OpenOptions::new().create(true).append(true).open(w.dir.path().join("serve.log")).unwrap();
    let ready = common::Ready::new();
    let child = ready
        .attach(&mut w.cmd(&["serve"]))
        .env("TOKENKEEPER_ADMIN_TOKEN", ADMIN)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    ready.wait("serve");
    child
}

fn sigterm(child: &Child) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
}

fn stop(mut child: Child) {
    sigterm(&child);
    let status = child.wait().unwrap();
    assert!(status.success(), "serve exited with {status:?}");
}

/// Two logged-in accounts `a` and `b` (mock logins `a@example.com`, `b@example.com`) and a
/// proxy key.
fn two_accounts_and_a_key(w: &World) -> String {
    for who in ["a", "b"] {
        let out = w.login(Some(who), &format!("{who}@example.com"));
        assert!(out.status.success(), "{}", stderr(&out));
    }
    w.ok(&["keys", "create", "--name", "agent", "--scope", "proxy"], "").trim().to_owned()
}

/// A client that sends `anthropic-version`, as every Anthropic client does.
fn anthropic_client() -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert("anthropic-version", reqwest::header::HeaderValue::from_static("2023-06-01"));
    reqwest::Client::builder().default_headers(h).build().unwrap()
}

fn stream_body() -> &'static str {
    r#"{"model":"claude-sonnet-4-5","max_tokens":16,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_proxy_on_the_main_listener_streams_past_the_request_timeout_and_its_metrics_join_the_alerts() {
    let w = World::new().await;
    let key = two_accounts_and_a_key(&w);
    let port = free_port();
    let server = spawn_serve(
        &w,
        &format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nrequest_timeout = \"1s\"\n\n\
             [[alerts]]\nkind = \"webhook\"\nname = \"ops\"\nurl = \"http://127.0.0.1:9/hook\"\n"
        ),
    );
    let url = format!("http://127.0.0.1:{port}");
    let client = anthropic_client();
    // Ten events 150 ms apart: 1.35 s, longer than the API's 1 s request timeout.
    w.mock.push_account_fault("a@example.com", Fault::SlowStream { delay: Duration::from_millis(150) });
    w.mock.push_account_fault("b@example.com", Fault::SlowStream { delay: Duration::from_millis(150) });
    let started = std::time::Instant::now();
    let r = client
        .post(format!("{url}/v1/messages"))
        .header("x-api-key", &key)
        .header("content-type", "application/json")
        .body(stream_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(started.elapsed() > Duration::from_secs(1), "the stream was meant to outlast the request timeout");
    assert!(text.contains("event: message_stop"), "the stream reached its end: {text}");

    // The API itself still has its timeout and its own routes.
    assert_eq!(client.get(format!("{url}/health")).send().await.unwrap().status(), 200);
    // Non-streaming and other /v1 paths pass too; the mock saw the accounts, never the key.
    let models = client.get(format!("{url}/v1/models")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(models.status(), 200);
    let seen = w.mock.requests();
    assert!(seen.len() >= 2);
    assert!(seen.iter().all(|r| matches!(r.credential, Credential::OAuth(_))), "{seen:?}");
    assert!(seen.iter().all(|r| !r.contains(&key)), "the proxy key never goes upstream");

    // /metrics: the proxy's families beside the alert channel's.
    let metrics = client.get(format!("{url}/metrics")).bearer_auth(ADMIN).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("tokenkeeper_alert_deliveries_total{channel=\"ops\",result=\"sent\"}"), "{metrics}");
    assert!(metrics.contains("tokenkeeper_proxy_requests_total{account="), "{metrics}");
    assert!(metrics.contains("tokenkeeper_proxy_failovers_total"), "{metrics}");
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");
    stop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_proxy_on_its_own_listener_stops_with_serve_and_the_usage_of_a_drained_stream_is_kept() {
    let w = World::new().await;
    let key = two_accounts_and_a_key(&w);
    let (port, proxy_port) = (free_port(), free_port());
    let server = spawn_serve(
        &w,
        &format!("[server]\nlisten = \"127.0.0.1:{port}\"\n\n[proxy]\nlisten = \"127.0.0.1:{proxy_port}\"\n"),
    );
    let (api, proxy) = (format!("http://127.0.0.1:{port}"), format!("http://127.0.0.1:{proxy_port}"));
    let client = anthropic_client();
    let models = client.get(format!("{proxy}/v1/models")).header("x-api-key", &key).send().await.unwrap();
    assert_eq!(models.status(), 200);
    assert_eq!(client.get(format!("{api}/v1/models")).header("x-api-key", &key).send().await.unwrap().status(), 404);
    assert_eq!(client.get(format!("{proxy}/health")).send().await.unwrap().status(), 404);

    // A stream in flight when SIGTERM comes: it is drained to its end, and the tokens it
    // reported (counted when it ends, after the daemon's last flush) reach the store.
    for who in ["a@example.com", "b@example.com"] {
        w.mock.push_account_fault(who, Fault::SlowStream { delay: Duration::from_millis(100) });
    }
    let mut r = client
        .post(format!("{proxy}/v1/messages"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(stream_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut text = String::from_utf8(r.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    sigterm(&server);
    while let Some(c) = r.chunk().await.unwrap() {
        text.push_str(std::str::from_utf8(&c).unwrap());
    }
    assert!(text.contains("event: message_stop"), "drained to its end: {text}");
    let mut server = server;
    let status = server.wait().unwrap();
    assert!(status.success(), "serve exited with {status:?}");
    let since = chrono::Utc::now() - chrono::Duration::hours(2);
    let usage = tokenkeeper_core::Store::usage(&w.store().await, None, since).await.unwrap();
    let output: u64 = usage.iter().map(|u| u.output_tokens).sum();
    let input: u64 = usage.iter().map(|u| u.input_tokens).sum();
    assert_eq!((input, output), (8, 4), "the stream's usage (message_start + message_delta) was flushed: {usage:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_limited_account_shows_its_cooldown_in_oauth_status_status_and_pool() {
    let w = World::new().await;
    let key = two_accounts_and_a_key(&w);
    let port = free_port();
    let server = spawn_serve(&w, &format!("[server]\nlisten = \"127.0.0.1:{port}\"\n"));
    let url = format!("http://127.0.0.1:{port}");
    let client = anthropic_client();
    w.mock.set_account_fault("a@example.com", Some(Fault::Messages429 { reset_secs: 600 }));
    let body = r#"{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;
    for _ in 0..2 {
        let r = client.post(format!("{url}/v1/messages")).header("x-api-key", &key).body(body).send().await.unwrap();
        assert_eq!(r.status(), 200, "failed over to b");
    }
    let now = chrono::Utc::now().timestamp();

    let status: serde_json::Value =
        client.get(format!("{url}/oauth/status")).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap();
    let token = |name: &str| status["tokens"].as_array().unwrap().iter().find(|t| t["account_email"] == name).cloned();
    let (a, b) = (token("a").unwrap(), token("b").unwrap());
    assert_eq!(a["pool"], "default");
    assert_eq!(a["pools"], serde_json::json!(["default"]));
    assert_eq!(a["pool_state"], "cooling_down");
    let until = a["cooldown_until"].as_i64().unwrap();
    assert!((now + 590..=now + 610).contains(&until), "until the reset the headers gave: {until} vs {now}");
    assert_eq!(b["pool_state"], "active");
    assert!(b["cooldown_until"].is_null());
    assert!(b["usage_count"].as_u64().is_some() && b["last_used"].is_string(), "seed 003's fields stay");

    let text = w.ok(&["status"], "");
    assert!(text.contains("proxy a: cooling down (all models) until"), "{text}");
    assert!(!text.contains("proxy b:"), "{text}");
    // `status --json` says the same, with `pool --json`'s field names.
    let rows: serde_json::Value = serde_json::from_str(&w.ok(&["status", "--json"], "")).unwrap();
    let row = |n: &str| rows.as_array().unwrap().iter().find(|r| r["name"] == n).cloned().unwrap();
    let (a, b) = (row("a"), row("b"));
    assert_eq!(a["pool_state"], "cooling_down");
    let until = chrono::DateTime::parse_from_rfc3339(a["cooldown_until"].as_str().unwrap()).unwrap().timestamp();
    assert!((now + 590..=now + 610).contains(&until), "until the reset the headers gave: {until} vs {now}");
    assert_eq!(a["cooldowns"].as_array().unwrap().len(), 1, "{a}");
    assert_eq!(a["cooldowns"][0]["until"], a["cooldown_until"]);
    assert!(a["cooldowns"][0]["reason"].as_str().unwrap().contains("429"), "{a}");
    assert_eq!((b["pool_state"].as_str(), b["cooldown_until"].is_null()), (Some("active"), true), "{b}");
    assert_eq!(b["cooldowns"], serde_json::json!([]));
    assert!(a["expires_at"].is_string() && a["status"].is_string(), "the account's status fields stay: {a}");

    let pools: serde_json::Value = serde_json::from_str(&w.ok(&["pool", "--json"], "")).unwrap();
    let default = &pools.as_array().unwrap()[0];
    assert_eq!(default["name"], "default");
    let member = |n: &str| default["members"].as_array().unwrap().iter().find(|m| m["account"] == n).cloned().unwrap();
    assert_eq!(member("a")["state"], "cooling_down");
    assert_eq!(member("b")["state"], "active");
    let table = w.ok(&["pool"], "");
    assert!(table.contains("pool default (round_robin)") && table.contains("cooling down"), "{table}");
    let out = w.run(&["pool", "nothere"], "");
    assert!(!out.status.success() && stderr(&out).contains("[pools.nothere]"), "{}", stderr(&out));
    stop(server);
}
