//! The server on real sockets: the seeds' `curl` commands run literally (with an
//! `Authorization` header added) against 127.0.0.1:0, TLS with a self-signed certificate, the
//! Unix socket, and draining of a request in flight at shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use support::{claude_json, env, env_with, Env, ADMIN};
use tokenkeeper_mock::Fault;
use tokenkeeper_server::Scope;

struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    handle: JoinHandle<std::io::Result<()>>,
}

async fn start(e: &Env) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(tokenkeeper_server::serve(listener, e.state.clone(), async move {
        let _ = rx.await;
    }));
    Running { addr, stop, handle }
}

impl Running {
    async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.handle).await.unwrap().unwrap().unwrap();
    }
}

fn have_curl() -> bool {
    std::process::Command::new("curl").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Runs a shell command line as a person would type it, with `$URL` and `$KEY` set.
async fn sh(dir: &Path, url: &str, key: &str, line: &str) -> Value {
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(line)
        .current_dir(dir)
        .env("URL", url)
        .env("KEY", key)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "`{line}` failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("`{line}` printed no JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_001_curl_commands_work_as_written() {
    assert!(
        have_curl(),
        "curl is not installed: run scripts/test-deps (needed for the literal curl commands of seed 001)"
    );
    let e = env().await;
    let key = e.key(&[Scope::Push, Scope::StatusRead, Scope::Refresh], &[]).await;
    let server = start(&e).await;
    let url = format!("http://{}", server.addr);
    let dir = e.dir.path();
    let t = e.mock.issue_login("me@example.com");
    std::fs::write(dir.join("credentials.json"), claude_json(&t)).unwrap();

    let v = sh(
        dir,
        &url,
        &key,
        r#"curl -X POST $URL/api/push -H "Content-Type: application/json" -d @credentials.json -H "Authorization: Bearer $KEY""#,
    )
    .await;
    assert_eq!(v["result"], "created", "{v}");
    let v = sh(dir, &url, &key, r#"curl $URL/api/status -H "Authorization: Bearer $KEY""#).await;
    assert_eq!(v["status"], "healthy", "{v}");
    assert_eq!(v["is_expired"], false);
    assert!(v["expires"].is_string() && v["days_remaining"].is_number() && v["needs_refresh"].is_boolean());
    let v = sh(dir, &url, &key, r#"curl -s $URL/api/status -H "Authorization: Bearer $KEY""#).await;
    assert!(v["hours_remaining"].as_f64().unwrap() > 7.0);
    let v =
        sh(dir, &url, &key, r#"curl -X POST $URL/api/auto-refresh-if-needed -H "Authorization: Bearer $KEY""#).await;
    assert_eq!(v["result"], "not_needed");
    let v = sh(dir, &url, &key, r#"curl -X POST $URL/api/auto-refresh -H "Authorization: Bearer $KEY""#).await;
    assert_eq!(v["result"], "refreshed");
    let v = sh(dir, &url, &key, r#"curl $URL/health"#).await;
    assert_eq!(v["status"], "ok");
    // Without the key: a clear JSON refusal.
    let v = sh(dir, &url, &key, r#"curl $URL/api/status"#).await;
    assert!(v["hint"].as_str().unwrap().contains("Bearer"), "{v}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_003_curl_commands_work_as_written() {
    assert!(
        have_curl(),
        "curl is not installed: run scripts/test-deps (needed for the literal curl commands of seed 003)"
    );
    let e = env().await;
    let key = e.key(&[Scope::Login, Scope::StatusRead, Scope::AccountsWrite], &[]).await;
    let server = start(&e).await;
    let url = format!("http://{}", server.addr);
    let dir = e.dir.path();
    // The caller names each login (`account_email`); the provider reports other emails. The
    // caller's value is what status lists and what deletion takes, as in seed 003.
    for (email, provider) in [("user1@example.com", "alice@corp.example"), ("user2@example.com", "bob@corp.example")] {
        let start = sh(dir, &url, &key, r#"curl -X POST $URL/oauth/start -H "Authorization: Bearer $KEY""#).await;
        let code = e.mock.authorize(start["authorize_url"].as_str().unwrap(), provider).unwrap();
        let line = format!(
            r#"curl -X POST $URL/oauth/exchange-code \
     -H "Content-Type: application/json" \
     -d '{{"code":"{code}","account_email":"{email}"}}' -H "Authorization: Bearer $KEY""#
        );
        let v = sh(dir, &url, &key, &line).await;
        assert_eq!(v["result"], "created", "{v}");
        assert_eq!(v["account_email"], email, "{v}");
        assert_eq!(v["provider_email"], provider, "{v}");
    }
    let v = sh(dir, &url, &key, r#"curl $URL/oauth/status -H "Authorization: Bearer $KEY""#).await;
    assert_eq!(v["total_tokens"], 2);
    let listed: Vec<&str> =
        v["tokens"].as_array().unwrap().iter().map(|t| t["account_email"].as_str().unwrap()).collect();
    assert_eq!(listed, ["user1@example.com", "user2@example.com"], "{v}");
    assert_eq!(v["tokens"][0]["provider_email"], "alice@corp.example");
    assert!(v["tokens"][0]["expires_in_minutes"].as_f64().unwrap() > 60.0);
    // Logging the same account in again (seed 003's re-authorisation) updates it in place
    // (a minute later, so the new login expires later than the stored one).
    e.clock.advance(chrono::Duration::minutes(1));
    let start = sh(dir, &url, &key, r#"curl -X POST $URL/oauth/start -H "Authorization: Bearer $KEY""#).await;
    let code = e.mock.authorize(start["authorize_url"].as_str().unwrap(), "alice@corp.example").unwrap();
    let line = format!(
        r#"curl -X POST $URL/oauth/exchange-code -H "Content-Type: application/json" -d '{{"code":"{code}","account_email":"user1@example.com"}}' -H "Authorization: Bearer $KEY""#
    );
    let v = sh(dir, &url, &key, &line).await;
    assert_eq!(
        (v["result"].as_str(), v["account_email"].as_str()),
        (Some("updated"), Some("user1@example.com")),
        "{v}"
    );
    let v = sh(dir, &url, &key, r#"curl $URL/oauth/status -H "Authorization: Bearer $KEY""#).await;
    assert_eq!(v["total_tokens"], 2, "{v}");
    let v =
        sh(dir, &url, &key, r#"curl -X DELETE $URL/oauth/tokens/user1@example.com -H "Authorization: Bearer $KEY""#)
            .await;
    assert_eq!(v["deleted"], "user1@example.com");
    assert_eq!(v["account_email"], "user1@example.com");
    assert!(e.account("user1@example.com").await.is_none());
    let v = sh(dir, &url, &key, r#"curl $URL/oauth/status -H "Authorization: Bearer $KEY""#).await;
    assert_eq!(v["total_tokens"], 1, "{v}");
    assert_eq!(v["tokens"][0]["account_email"], "user2@example.com", "{v}");
    let v = sh(dir, &url, &key, r#"curl -X DELETE $URL/oauth/tokens -H "Authorization: Bearer $KEY""#).await;
    assert_eq!(v["count"], 1);
    assert!(e.account("user2@example.com").await.is_none());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_finishes_before_serve_returns() {
    let e = env().await;
    e.seed("main").await;
    let server = start(&e).await;
    e.mock.push_fault(Fault::Slow(Duration::from_millis(300)));
    let before = e.mock.counts().token_requests;
    let mut conn = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let req = format!(
        "POST /api/auto-refresh HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(req.as_bytes()).await.unwrap();
    // Wait (bounded) until the refresh is at the provider: the request is in flight.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while e.mock.counts().token_requests == before {
        assert!(tokio::time::Instant::now() < deadline, "the request never reached the provider");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let Running { addr, stop, handle } = server;
    stop.send(()).unwrap();
    // New connections are refused once shutdown began.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "still accepting after shutdown");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"refreshed\""), "{answer}");
    tokio::time::timeout(Duration::from_secs(10), handle).await.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_with_the_configured_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let e = env_with(|c| {
        c.server.tls_cert = Some(cert.clone());
        c.server.tls_key = Some(key.clone());
    })
    .await;
    let server = start(&e).await;
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ck.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", server.addr)
        .build()
        .unwrap();
    let url = format!("https://localhost:{}", server.addr.port());
    let r = client.get(format!("{url}/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client.get(format!("{url}/api/status")).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Plain HTTP on the TLS port gets no API answer.
    let plain = reqwest::get(format!("http://{}/health", server.addr)).await;
    assert!(plain.map(|r| r.status() != 200).unwrap_or(true));
    server.stop().await;
}

#[tokio::test]
async fn tls_misconfiguration_is_a_clear_error() {
    let e = env_with(|c| c.server.tls_cert = Some("/nonexistent/cert.pem".into())).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = tokenkeeper_server::serve(listener, e.state.clone(), async {}).await.unwrap_err();
    assert!(err.to_string().contains("tls_cert and tls_key"), "{err}");
    let e = env_with(|c| {
        c.server.tls_cert = Some("/nonexistent/cert.pem".into());
        c.server.tls_key = Some("/nonexistent/key.pem".into());
    })
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = tokenkeeper_server::serve(listener, e.state.clone(), async {}).await.unwrap_err();
    assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unix_socket_serves_the_same_api() {
    use std::os::unix::fs::PermissionsExt;
    let sockdir = tempfile::tempdir().unwrap();
    let sock = sockdir.path().join("api.sock");
    let e = env_with(|c| c.server.unix_socket = Some(sock.clone())).await;
    e.seed("main").await;
    let server = start(&e).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(tokio::time::Instant::now() < deadline, "no socket");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);
    let ask = |auth: Option<&str>| {
        let sock = sock.clone();
        let auth = auth.map(|a| format!("Authorization: Bearer {a}\r\n")).unwrap_or_default();
        async move {
            let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
            let req = format!("GET /api/status HTTP/1.1\r\nHost: local\r\n{auth}Connection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        }
    };
    let ok = ask(Some(ADMIN)).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("\"account\":\"main\""), "{ok}");
    let refused = ask(None).await;
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    server.stop().await;
    assert!(!sock.exists(), "the socket file is removed at shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_without_length_is_cut_at_the_limit() {
    let e = env().await;
    let server = start(&e).await;
    let mut conn = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /api/push HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 8192, "a".repeat(8192));
    for _ in 0..10 {
        // The server may answer and close before taking it all.
        if conn.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = conn.write_all(b"0\r\n\r\n").await;
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"hint\""), "{answer}");
    assert!(e.account("main").await.is_none());
    server.stop().await;
}
