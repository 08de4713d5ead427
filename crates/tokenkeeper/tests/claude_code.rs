//! The real Claude Code CLI (`@anthropic-ai/claude-code`, pinned and installed into
//! `.tools/claude-code/` by `scripts/test-deps`) through `tokenkeeper serve`'s proxy, pointed at
//! the mock: `claude -p` with a proxy key succeeds, its requests alternate between two pooled
//! OAuth accounts, one account answering 429 does not fail a run, and the mock sees the
//! accounts' tokens, never the proxy key.
//!
//! Nothing leaves loopback: Claude Code's autoupdater, telemetry, error reporting and other
//! non-essential traffic are switched off by its own environment variables, and every proxy
//! variable points at a closed loopback port, so a request to anywhere but the proxy fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::{stderr, World};
use tokenkeeper_mock::{Credential, Fault};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Claude Code as `scripts/test-deps` installs it.
fn claude() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/claude-code/node_modules/.bin/claude");
    assert!(
        path.exists(),
        "Claude Code is not installed at {}: run scripts/test-deps (it installs the pinned @anthropic-ai/claude-code there)",
        path.display()
    );
    path
}

fn spawn_serve(w: &World, port: u16) -> Child {
    w.write_config(&format!("[server]\nlisten = \"127.0.0.1:{port}\"\n"));
    let log = std::fs::OpenOptions::new().create(true).append(true).open(w.dir.path().join("serve.log")).unwrap();
    let ready = common::Ready::new();
    let child = ready
        .attach(&mut w.cmd(&["serve"]))
        .env("TOKENKEEPER_ADMIN_TOKEN", "claude-code-test-admin")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    ready.wait("serve");
    child
}

/// How Claude Code is given the proxy key.
#[derive(Clone, Copy)]
enum KeyVia {
    ApiKey,
    AuthToken,
}

/// Runs `claude -p "hi"` against `base_url` with `key`; returns (success, stdout, stderr).
async fn claude_p(w: &World, base_url: &str, key: &str, via: KeyVia) -> (bool, String, String) {
    let home = w.dir.path().join("claude-home");
    std::fs::create_dir_all(&home).unwrap();
    let dead = "http://127.0.0.1:9";
    let mut cmd = tokio::process::Command::new(claude());
    cmd.args(["-p", "hi"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("ANTHROPIC_BASE_URL", base_url)
        .env("DISABLE_AUTOUPDATER", "1")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_TELEMETRY", "1")
        .env("DISABLE_ERROR_REPORTING", "1")
        .env("DISABLE_BUG_COMMAND", "1")
        .env("DISABLE_NON_ESSENTIAL_MODEL_CALLS", "1")
        .env("CLAUDE_CODE_ENABLE_TELEMETRY", "0")
        .env("HTTP_PROXY", dead)
        .env("HTTPS_PROXY", dead)
        .env("http_proxy", dead)
        .env("https_proxy", dead)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .current_dir(&home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    match via {
        KeyVia::ApiKey => cmd.env("ANTHROPIC_API_KEY", key),
        KeyVia::AuthToken => cmd.env("ANTHROPIC_AUTH_TOKEN", key),
    };
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("claude -p did not finish within 2 minutes")
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The accounts (login emails) of the recorded Messages requests, in order.
fn messages_accounts(w: &World) -> Vec<String> {
    w.mock
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/v1/messages") && !r.path.contains("count_tokens"))
        .map(|r| match r.credential {
            Credential::OAuth(email) => email,
            other => panic!("the mock saw {other:?} instead of an account's token"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claude_code_runs_through_the_proxy_over_two_pooled_accounts() {
    let claude_bin = claude();
    let w = World::new().await;
    for who in ["a", "b"] {
        let out = w.login(Some(who), &format!("{who}@example.com"));
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let key = w.ok(&["keys", "create", "--name", "claude", "--scope", "proxy"], "").trim().to_owned();
    let port = free_port();
    let server = spawn_serve(&w, port);
    let base = format!("http://127.0.0.1:{port}");
    assert!(claude_bin.exists());

    // Two runs with ANTHROPIC_API_KEY, one with ANTHROPIC_AUTH_TOKEN: each succeeds and shows
    // the mock's answer.
    for via in [KeyVia::ApiKey, KeyVia::ApiKey, KeyVia::AuthToken] {
        let (ok, out, err) = claude_p(&w, &base, &key, via).await;
        assert!(
            ok && out.contains("Hello from the mock."),
            "claude -p failed:\nstdout: {out}\nstderr: {err}\nrecorded: {:?}",
            w.mock.requests()
        );
    }
    let paths: Vec<String> = w.mock.requests().iter().map(|r| format!("{} {}", r.method, r.path)).collect();
    eprintln!("claude -p sent: {paths:?}");
    let seen = messages_accounts(&w);
    assert!(seen.len() >= 3, "{seen:?}");
    assert!(seen.contains(&"a@example.com".to_owned()) && seen.contains(&"b@example.com".to_owned()), "{seen:?}");
    assert!(seen.windows(2).all(|p| p[0] != p[1]), "round robin alternates the accounts: {seen:?}");
    let all = w.mock.requests();
    assert!(all.iter().all(|r| !r.contains(&key)), "the proxy key never reaches the provider");
    assert!(
        all.iter().all(|r| !matches!(r.credential, Credential::None | Credential::Unknown | Credential::ApiKey(_))),
        "{all:?}"
    );
    // Only the credential changed: Claude Code's own user agent arrives as it sent it.
    assert!(all.iter().all(|r| r.header("user-agent").iter().any(|u| u.contains("claude"))), "{all:?}");

    // One account rate limited: every run still succeeds, through the other.
    w.mock.clear_requests();
    w.mock.set_account_fault("a@example.com", Some(Fault::Messages429 { reset_secs: 3600 }));
    for _ in 0..2 {
        let (ok, out, err) = claude_p(&w, &base, &key, KeyVia::ApiKey).await;
        assert!(
            ok && out.contains("Hello from the mock."),
            "claude -p failed with a 429 on one account:\nstdout: {out}\nstderr: {err}"
        );
    }
    let served: Vec<Credential> = w.mock.requests().into_iter().map(|r| r.credential).collect();
    let b_ok = served.iter().filter(|c| **c == Credential::OAuth("b@example.com".into())).count();
    assert!(b_ok >= 2, "b served the runs: {served:?}");
    assert!(
        served.iter().filter(|c| **c == Credential::OAuth("a@example.com".into())).count() <= 1,
        "a cooled down after its 429 and got no more requests: {served:?}"
    );

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(server.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut server = server;
    assert!(server.wait().unwrap().success());
}
