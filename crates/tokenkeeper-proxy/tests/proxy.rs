//! The proxy against the mock: rewriting, pools, failures, streams, keys, usage.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use support::{hello, new_key, start, NowUtc};
use tokenkeeper_core::config::{PoolConfig, PoolMember, Strategy};
use tokenkeeper_mock::{Credential, Fault};
use tokenkeeper_proxy::MemberState;

fn pool(config: &mut tokenkeeper_core::Config, strategy: Strategy, accounts: &[&str]) {
    config.pools.insert(
        "default".into(),
        PoolConfig {
            accounts: accounts.iter().map(|a| PoolMember::Name((*a).into())).collect(),
            strategy: Some(strategy),
            sticky_ttl: None,
        },
    );
}

async fn ok(p: &support::Proxy, stream: bool) -> Value {
    let r = p.messages(&hello(stream)).send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    if stream {
        Value::String(text)
    } else {
        serde_json::from_str(&text).unwrap()
    }
}

#[tokio::test]
async fn only_the_credential_changes_and_accounts_alternate() {
    let p = start(&["a", "b"], |_| {}).await;
    // A body with its own spacing and key order: it must arrive byte for byte.
    let body = "{ \"model\":\"claude-sonnet-4-5\",  \"max_tokens\": 16,\n \"messages\":[{\"role\":\"user\",\"content\":\"hi\"}], \"metadata\":{\"user_id\":\"u1\"} }";
    for _ in 0..4 {
        let r = reqwest::Client::new()
            .post(p.url("/v1/messages?beta=true"))
            .header("x-api-key", &p.key)
            .header("anthropic-version", "2023-06-01")
            .header("anthropic-beta", "fine-grained-tool-streaming-2025-05-14")
            .header("user-agent", "claude-cli/2.0.0 (external, cli)")
            .header("x-stainless-lang", "js")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["anthropic-ratelimit-unified-status"], "allowed", "upstream headers pass back");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["content"][0]["text"], "Hello from the mock.");
    }
    assert_eq!(p.seen(), ["a@example.com", "b@example.com", "a@example.com", "b@example.com"]);
    for r in p.env.mock.requests() {
        assert!(!r.contains(&p.key), "the proxy key never reaches upstream: {r:?}");
        assert_eq!(r.path, "/v1/messages?beta=true");
        assert_eq!(r.body, body.as_bytes());
        assert_eq!(r.header("user-agent"), ["claude-cli/2.0.0 (external, cli)"]);
        assert_eq!(r.header("x-stainless-lang"), ["js"]);
        assert_eq!(r.header("anthropic-version"), ["2023-06-01"]);
        assert_eq!(r.header("anthropic-beta"), ["fine-grained-tool-streaming-2025-05-14,oauth-2025-04-20"]);
        assert!(r.header("x-api-key").is_empty());
        assert_eq!(r.header("authorization").len(), 1);
    }
}

#[tokio::test]
async fn a_client_list_that_has_the_oauth_flag_is_left_alone_and_bearer_keys_work() {
    let p = start(&["a"], |_| {}).await;
    let r = reqwest::Client::new()
        .post(p.url("/v1/messages"))
        .bearer_auth(&p.key)
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "oauth-2025-04-20, prompt-caching-2024-07-31")
        .body(hello(false).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = &p.env.mock.requests()[0];
    assert_eq!(seen.header("anthropic-beta"), ["oauth-2025-04-20, prompt-caching-2024-07-31"]);
    assert!(!seen.contains(&p.key));
}

#[tokio::test]
async fn api_key_accounts_send_x_api_key_and_no_oauth_flag() {
    let p = start(&[], |_| {}).await;
    support::add_api_key_account(&p.env, "plain", "console-key").await;
    ok(&p, false).await;
    let seen = &p.env.mock.requests()[0];
    assert_eq!(seen.credential, Credential::ApiKey("console-key".into()));
    assert!(seen.header("authorization").is_empty());
    assert!(seen.header("anthropic-beta").is_empty(), "nothing added for an API key");
    assert!(!seen.contains(&p.key));
    assert_eq!(p.env.account("plain").await.provider, "anthropic-api-key");
}

/// Stores a login the mock's Messages API would accept, but as an account of `provider`: if
/// the proxy forwarded it, the mock would answer it.
async fn add_account_of(p: &support::Proxy, name: &str, provider: &str) {
    let t = p.env.mock.issue_login(&format!("{name}@example.com"));
    let parsed = tokenkeeper_core::formats::ParsedCredential {
        credential: tokenkeeper_keeper::testing::Env::credential(&t),
        format: tokenkeeper_core::formats::Format::ClaudeJson,
        email: None,
    };
    p.env
        .keeper
        .ingest(tokenkeeper_keeper::Ingest {
            account: Some(name.into()),
            parsed,
            mode: None,
            binding: None,
            change: tokenkeeper_core::store::CredentialChange::Imported,
            organization: None,
            provider: Some(provider.into()),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn accounts_whose_provider_is_not_the_messages_api_are_never_picked_and_status_says_why() {
    let p = start(&["a"], |c| {
        c.pools.insert(
            "openai".into(),
            PoolConfig { accounts: vec![PoolMember::Name("cx".into())], strategy: None, sticky_ttl: None },
        );
    })
    .await;
    add_account_of(&p, "cx", "codex").await;
    add_account_of(&p, "gm", "gemini").await;
    // The implicit default pool holds every account; only the Claude login is ever used.
    for _ in 0..4 {
        ok(&p, false).await;
    }
    assert_eq!(p.seen(), ["a@example.com"; 4]);
    let snap = p.state.pool_snapshot().await.unwrap();
    let default = snap.iter().find(|s| s.name == "default").unwrap();
    assert_eq!(default.members.iter().map(|m| m.account.as_str()).collect::<Vec<_>>(), ["a"]);
    let skipped: Vec<(&str, &str)> =
        default.skipped.iter().map(|s| (s.account.as_str(), s.provider.as_str())).collect();
    assert_eq!(skipped, [("cx", "codex"), ("gm", "gemini")]);
    assert!(default.skipped[0].reason.contains("Codex CLI") && default.skipped[0].reason.contains("ChatGPT Codex"));
    assert!(default.skipped[1].reason.contains("Google Code Assist"), "{}", default.skipped[1].reason);

    // A pool that lists only the Codex login has nobody to send to, and says so.
    let key = new_key(&p.env, "openai-agent", &["proxy", "pool:openai"]).await;
    let r = reqwest::Client::new()
        .post(p.url("/v1/messages"))
        .header("x-api-key", &key)
        .header("content-type", "application/json")
        .body(hello(false).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("pool `openai` has no account"));
    assert_eq!(p.seen().len(), 4, "the Codex login never reached the API");
    let unservable = p.state.unservable().await.unwrap();
    assert_eq!(unservable.len(), 1, "only the configured pool's listing is a warning: {unservable:?}");
    assert_eq!((unservable[0].pool.as_str(), unservable[0].account.as_str()), ("openai", "cx"));
}

#[tokio::test]
async fn a_429_with_reset_cools_the_account_down_until_the_reset_stored_and_self_ending() {
    let p = start(&["a", "b"], |_| {}).await;
    p.env.mock.push_account_fault("a@example.com", Fault::Messages429 { reset_secs: 600 });
    for _ in 0..4 {
        ok(&p, false).await;
    }
    // a answered 429 once, then b took every request.
    assert_eq!(p.seen(), ["a@example.com", "b@example.com", "b@example.com", "b@example.com", "b@example.com"]);
    let stored = p.env.keeper.store().get_state("cooldown/a").await.unwrap().expect("cooldown stored");
    let until = chrono::DateTime::parse_from_rfc3339(stored["until"].as_str().unwrap()).unwrap();
    assert_eq!(until.timestamp(), p.env.clock.now_utc().timestamp() + 600);
    let snap = p.state.pool_snapshot().await.unwrap();
    let a = snap[0].members.iter().find(|m| m.account == "a").unwrap();
    assert_eq!(a.state, MemberState::CoolingDown);
    let metrics = support::metrics_text(&p.state);
    assert!(metrics.contains("tokenkeeper_proxy_account_state{account=\"a\",state=\"cooling_down\"} 1"), "{metrics}");
    assert!(metrics.contains("tokenkeeper_proxy_requests_total{account=\"a\",result=\"rate_limited\"} 1"), "{metrics}");

    // A new proxy (a restart) reads the cooldown from the store.
    let restarted = tokenkeeper_proxy::ProxyState::new(p.env.keeper.clone(), &p.env.config).unwrap();
    let snap = restarted.pool_snapshot().await.unwrap();
    assert_eq!(snap[0].members[0].state, MemberState::CoolingDown);

    // After the reset the account takes requests again by itself, and the success clears it.
    p.env.clock.advance(chrono::Duration::seconds(601));
    p.env.mock.clear_requests();
    ok(&p, false).await;
    ok(&p, false).await;
    let seen = p.seen();
    assert!(seen.contains(&"a@example.com".to_owned()), "{seen:?}");
    assert!(p.env.keeper.store().get_state("cooldown/a").await.unwrap().is_none(), "cleared by the success");
}

#[tokio::test]
async fn when_every_account_cools_down_the_client_gets_429_with_the_earliest_reset() {
    let p = start(&["a", "b"], |_| {}).await;
    p.env.mock.push_account_fault("a@example.com", Fault::Messages429 { reset_secs: 1200 });
    p.env.mock.push_account_fault("b@example.com", Fault::Messages429 { reset_secs: 600 });
    let r = p.messages(&hello(false)).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(retry, 600);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    // Later requests do not reach upstream at all until a reset.
    p.env.mock.clear_requests();
    let r = p.messages(&hello(false)).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(p.env.mock.requests().is_empty());
}

#[tokio::test]
async fn a_429_without_headers_is_a_short_backoff_not_a_cooldown() {
    let p = start(&["a", "b"], |c| pool(c, Strategy::FillFirst, &["a", "b"])).await;
    p.env.mock.push_account_fault("a@example.com", Fault::Messages429Bare);
    ok(&p, false).await;
    ok(&p, false).await;
    assert_eq!(p.seen(), ["a@example.com", "b@example.com", "a@example.com"]);
    assert!(p.env.keeper.store().list_state("cooldown/").await.unwrap().is_empty());
    // The only account answering a bare 429 once: the request is retried on it after a backoff.
    let single = start(&["solo"], |_| {}).await;
    single.env.mock.push_account_fault("solo@example.com", Fault::Messages429Bare);
    ok(&single, false).await;
    assert_eq!(single.seen(), ["solo@example.com", "solo@example.com"]);
}

#[tokio::test]
async fn overloaded_and_server_errors_fail_over_without_cooldown() {
    let p = start(&["a", "b"], |c| pool(c, Strategy::FillFirst, &["a", "b"])).await;
    p.env.mock.set_account_fault("a@example.com", Some(Fault::Messages529));
    for _ in 0..3 {
        ok(&p, true).await;
    }
    assert!(p.env.mock.counts().messages_529 >= 3);
    assert!(p.env.keeper.store().list_state("cooldown/").await.unwrap().is_empty());
    p.env.mock.set_account_fault("a@example.com", Some(Fault::Messages500));
    ok(&p, false).await;
    // Both failing: the client sees the upstream's own last answer.
    p.env.mock.set_account_fault("b@example.com", Some(Fault::Messages529));
    let r = p.messages(&hello(false)).send().await.unwrap();
    assert!(r.status() == 529 || r.status() == 500, "{}", r.status());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
}

#[tokio::test]
async fn a_401_refreshes_once_and_retries_on_the_same_account() {
    let p = start(&["a", "b"], |c| pool(c, Strategy::FillFirst, &["a", "b"])).await;
    let before = p.env.account("a").await.credential.access_token;
    p.env.mock.push_account_fault("a@example.com", Fault::Messages401);
    ok(&p, false).await;
    assert_eq!(p.seen(), ["a@example.com", "a@example.com"]);
    assert_eq!(p.env.mock.counts().refresh_ok, 1);
    assert_ne!(p.env.account("a").await.credential.access_token, before);

    // A burst of 401s on one account: one refresh.
    let refreshes = p.env.mock.counts().refresh_ok;
    for _ in 0..5 {
        p.env.mock.push_account_fault("a@example.com", Fault::Messages401);
    }
    let burst: Vec<_> = (0..5).map(|_| p.messages(&hello(false)).send()).collect();
    for r in futures::future::join_all(burst).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    assert_eq!(p.env.mock.counts().refresh_ok, refreshes + 1, "one refresh for the burst");
}

#[tokio::test]
async fn a_rejected_refresh_marks_needs_login_and_fails_over() {
    let p = start(&["a", "b"], |c| pool(c, Strategy::FillFirst, &["a", "b"])).await;
    let refresh = p.env.account("a").await.credential.refresh_token.unwrap();
    p.env.mock.revoke(refresh.expose());
    p.env.mock.push_account_fault("a@example.com", Fault::Messages401);
    ok(&p, false).await;
    assert_eq!(p.seen(), ["a@example.com", "b@example.com"]);
    assert_eq!(p.env.account("a").await.state, tokenkeeper_core::AccountState::NeedsLogin);
    ok(&p, false).await;
    assert_eq!(p.seen().last().unwrap(), "b@example.com", "a is skipped while it needs a login");
    let snap = p.state.pool_snapshot().await.unwrap();
    assert_eq!(snap[0].members[0].state, MemberState::NeedsLogin);
}

/// A streamed answer's text as far as it came, and whether it broke (rather than ended).
async fn read_until_it_breaks(r: reqwest::Response) -> (String, bool) {
    let mut body = r.bytes_stream();
    let mut got = Vec::new();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => got.extend_from_slice(&c),
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), true),
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), false)
}

#[tokio::test]
async fn a_stream_cut_upstream_reaches_the_client_broken_never_as_a_clean_end() {
    let p = start(&["a"], |_| {}).await;
    p.env.mock.push_account_fault("a@example.com", Fault::StreamCut { after_events: 3 });
    let r = p.messages(&hello(true)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (got, broke) = read_until_it_breaks(r).await;
    assert!(broke, "the client must see an error, got a clean end after {} bytes", got.len());
    assert!(got.contains("message_start"));
    assert_eq!(p.env.mock.counts().streams_cut, 1);
}

/// Real time, because the mock serves on a runtime of its own (a paused clock here would not
/// pause its pauses); the margins are eightfold either way.
#[tokio::test]
async fn a_stream_that_stalls_longer_than_the_idle_timeout_reaches_the_client_broken() {
    let idle = Duration::from_millis(400);
    let p = start(&["a"], |c| c.proxy.idle_timeout = idle).await;
    // Ten events 50 ms apart take longer than the limit in all, but no pause reaches it.
    p.env.mock.push_account_fault("a@example.com", Fault::SlowStream { delay: Duration::from_millis(50) });
    let r = p.messages(&hello(true)).send().await.unwrap();
    assert!(r.text().await.unwrap().contains("message_stop"), "pauses under the idle timeout are fine");
    // A pause of 3.2 s does: the client's stream breaks after the limit, never ends cleanly.
    p.env.mock.push_account_fault("a@example.com", Fault::SlowStream { delay: idle * 8 });
    let r = p.messages(&hello(true)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let started = std::time::Instant::now();
    let (got, broke) = read_until_it_breaks(r).await;
    assert!(broke, "a stalled stream must break, got a clean end after {} bytes", got.len());
    assert!(got.contains("message_start"), "the first event passed");
    let waited = started.elapsed();
    assert!(waited < idle * 8, "broke after {waited:?}, at the mock's next event rather than the idle timeout");
}

#[tokio::test]
async fn a_body_that_breaks_before_its_first_byte_fails_over() {
    let p = start(&["a", "b"], |c| pool(c, Strategy::FillFirst, &["a", "b"])).await;
    p.env.mock.push_account_fault("a@example.com", Fault::StreamCut { after_events: 0 });
    let text = ok(&p, true).await;
    assert!(text.as_str().unwrap().contains("message_stop"));
    assert_eq!(p.seen(), ["a@example.com", "b@example.com"]);
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_the_upstream_stream() {
    let p = start(&["a"], |_| {}).await;
    p.env.mock.push_account_fault("a@example.com", Fault::SlowStream { delay: Duration::from_millis(20) });
    let r = p.messages(&hello(true)).send().await.unwrap();
    let mut body = r.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(body);
    assert!(p.env.mock.wait_streams_cancelled(1, Duration::from_secs(5)).await, "upstream saw the disconnect");
    assert_eq!(p.env.mock.counts().streams_completed, 0);
}

#[tokio::test]
async fn sticky_sessions_stay_and_rebind_when_their_account_cools_down() {
    let p = start(&["a", "b", "c"], |c| pool(c, Strategy::Sticky, &["a", "b", "c"])).await;
    let send = |session: &str| p.messages(&hello(false)).header("x-session-id", session).send();
    for _ in 0..3 {
        assert_eq!(send("s1").await.unwrap().status(), 200);
    }
    let seen = p.seen();
    assert!(seen.iter().all(|s| *s == seen[0]), "{seen:?}");
    let first = seen[0].clone();
    p.env.mock.push_account_fault(&first, Fault::Messages429 { reset_secs: 300 });
    p.env.mock.clear_requests();
    for _ in 0..3 {
        assert_eq!(send("s1").await.unwrap().status(), 200);
    }
    let seen = p.seen();
    assert_eq!(seen[0], first, "the 429 came from the bound account");
    assert!(seen[1..].iter().all(|s| *s == seen[1] && *s != first), "rebound and stays: {seen:?}");
    // metadata.user_id is a session key too.
    p.env.mock.clear_requests();
    for _ in 0..2 {
        let body = json!({"model": "m", "max_tokens": 1, "messages": [], "metadata": {"user_id": "user_x_session_9"}});
        assert_eq!(p.messages(&body).send().await.unwrap().status(), 200);
    }
    let seen = p.seen();
    assert_eq!(seen[0], seen[1]);
}

#[tokio::test]
async fn quota_aware_prefers_the_account_with_the_most_quota_left() {
    let p = start(&["a", "b"], |c| pool(c, Strategy::QuotaAware, &["a", "b"])).await;
    p.env.mock.set_utilization("a@example.com", 0.9, 0.9);
    p.env.mock.set_utilization("b@example.com", 0.1, 0.2);
    for _ in 0..6 {
        ok(&p, false).await;
    }
    let seen = p.seen();
    // Both are tried while unknown, then b (20 % used) takes the rest.
    assert!(seen[2..].iter().all(|s| s == "b@example.com"), "{seen:?}");
}

#[tokio::test]
async fn usage_is_read_from_the_answers_as_they_pass() {
    let p = start(&["a"], |_| {}).await;
    p.env.keeper.usage().take();
    ok(&p, true).await;
    ok(&p, false).await;
    let records = p.env.keeper.usage().take();
    let sum = |f: fn(&tokenkeeper_core::store::UsageRecord) -> u64| records.iter().map(f).sum::<u64>();
    assert_eq!(sum(|r| r.requests), 2);
    assert_eq!(sum(|r| r.input_tokens), 16);
    assert_eq!(sum(|r| r.output_tokens), 8);
    assert_eq!(sum(|r| r.cache_read_tokens), 4);
    assert!(records.iter().all(|r| r.model.as_deref() == Some("claude-sonnet-4-5") && r.key_id.is_some()));
    let metrics = support::metrics_text(&p.state);
    assert!(metrics.contains("tokenkeeper_proxy_tokens_total{account=\"a\",kind=\"output\"} 8"), "{metrics}");
}

#[tokio::test]
async fn keys_are_checked_and_errors_have_anthropic_shape() {
    let p = start(&["a"], |c| {
        c.proxy.max_body_bytes = 2048;
        c.proxy.key_limits.insert(
            "limited".into(),
            tokenkeeper_core::config::KeyLimits { requests_per_minute: 2, concurrent_requests: 0 },
        );
    })
    .await;
    let client = reqwest::Client::new();
    let send = |key: Option<&str>, body: String| {
        let mut r = client.post(p.url("/v1/messages")).header("anthropic-version", "2023-06-01").body(body);
        if let Some(k) = key {
            r = r.header("x-api-key", k);
        }
        r.send()
    };
    let check = |r: reqwest::Response, status: u16, kind: &'static str| async move {
        assert_eq!(r.status(), status);
        let v: Value = r.json().await.unwrap();
        assert_eq!((v["type"].as_str(), v["error"]["type"].as_str()), (Some("error"), Some(kind)), "{v}");
    };
    check(send(None, hello(false).to_string()).await.unwrap(), 401, "authentication_error").await;
    check(send(Some("tk_nope_nope"), hello(false).to_string()).await.unwrap(), 401, "authentication_error").await;
    let reader = new_key(&p.env, "reader", &["token:read"]).await;
    check(send(Some(&reader), hello(false).to_string()).await.unwrap(), 403, "permission_error").await;
    check(send(Some(&p.key), "x".repeat(4096)).await.unwrap(), 413, "request_too_large").await;
    let limited = new_key(&p.env, "limited", &["proxy"]).await;
    for _ in 0..2 {
        assert_eq!(send(Some(&limited), hello(false).to_string()).await.unwrap().status(), 200);
    }
    let r = send(Some(&limited), hello(false).to_string()).await.unwrap();
    assert!(r.headers().contains_key("retry-after"));
    check(r, 429, "rate_limit_error").await;
    assert!(p.env.mock.requests().iter().all(|r| !r.contains(&p.key) && !r.contains(&limited)));
}

#[tokio::test]
async fn a_key_tied_to_a_pool_uses_only_that_pool() {
    let p = start(&["a", "b", "c"], |c| {
        c.pools.insert(
            "team".into(),
            PoolConfig { accounts: vec![PoolMember::Name("c".into())], strategy: None, sticky_ttl: None },
        );
    })
    .await;
    let team = new_key(&p.env, "team-agent", &["proxy", "pool:team"]).await;
    for _ in 0..3 {
        let r = reqwest::Client::new()
            .post(p.url("/v1/messages"))
            .header("x-api-key", &team)
            .header("anthropic-version", "2023-06-01")
            .body(hello(false).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(p.seen(), ["c@example.com"; 3]);
    let err = tokenkeeper_server::auth::create_api_key(
        p.env.store.as_ref(),
        "bad",
        &["token:read".into(), "pool:team".into()],
        &[],
        p.env.clock.now_utc(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("--scope proxy"), "{err}");
}

#[tokio::test]
async fn other_v1_paths_pass_through() {
    let p = start(&["a"], |_| {}).await;
    let client = reqwest::Client::new();
    let r = client
        .get(p.url("/v1/models"))
        .header("x-api-key", &p.key)
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .post(p.url("/v1/messages/count_tokens"))
        .header("x-api-key", &p.key)
        .header("anthropic-version", "2023-06-01")
        .body(hello(false).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["input_tokens"], 8);
    let r = client
        .get(p.url("/v1/files"))
        .header("x-api-key", &p.key)
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "upstream's own 404 passes through");
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["type"], "not_found_error");
}
