//! Every endpoint through `Router::oneshot`: authentication, scopes, account limits, the
//! failure limit, bodies, the never-regress rule, the seeds' shapes, metrics and OpenAPI.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::http::Method;
use chrono::Duration;
use serde_json::json;

use support::{claude_json, env, Env, ADMIN};
use tokenkeeper_core::store::AccountPatch;
use tokenkeeper_core::{AccountState, Clock, Store};
use tokenkeeper_server::metrics::prometheus_client::metrics::{counter::Counter, family::Family};
use tokenkeeper_server::metrics::prometheus_client::registry::Registry;
use tokenkeeper_server::Scope;

#[tokio::test]
async fn health_needs_no_key_and_says_nothing_else() {
    let e = env().await;
    e.seed("main").await;
    let r = e.call(Method::GET, "/health", None, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"status": "ok"}));
}

#[tokio::test]
async fn missing_and_bad_keys_are_401_with_a_json_error() {
    let e = env().await;
    for path in ["/ready", "/api/status", "/api/token", "/metrics", "/oauth/status", "/api/openapi.json"] {
        let r = e.call(Method::GET, path, None, None).await;
        let v = r.expect_error(401);
        assert!(v["hint"].as_str().unwrap().contains("Authorization: Bearer"), "{v}");
        assert_eq!(r.headers["www-authenticate"], "Bearer");
    }
    for bad in ["nope", "tk_abc_def", &format!("{ADMIN}x"), "tka_"] {
        e.get("/api/status", bad).await.expect_error(401);
    }
    // A revoked key stops working.
    let key = e.key(&[Scope::StatusRead], &[]).await;
    assert_eq!(e.get("/api/status", &key).await.status, 200);
    let id = key.split('_').nth(1).unwrap();
    assert!(tokenkeeper_server::revoke_api_key(e.store.as_ref(), id, e.clock.now()).await.unwrap());
    e.get("/api/status", &key).await.expect_error(401);
}

#[tokio::test]
async fn repeated_failures_from_one_address_are_refused_for_a_minute() {
    let e = env().await;
    let a = Some("127.0.0.7:5000".parse().unwrap());
    let b = Some("127.0.0.8:5000".parse().unwrap());
    for _ in 0..10 {
        e.call_from(a, Method::GET, "/api/status", Some("tk_bad_guess"), None).await.expect_error(401);
    }
    // Now even the right key is refused from that address, with Retry-After.
    let r = e.call_from(a, Method::GET, "/api/status", Some(ADMIN), None).await;
    r.expect_error(429);
    let after: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&after), "{after}");
    // Another address is not affected.
    assert_eq!(e.call_from(b, Method::GET, "/api/status", Some(ADMIN), None).await.status, 200);
    // Missing keys are not guesses and do not count.
    e.clock.advance(Duration::seconds(61));
    assert_eq!(e.call_from(a, Method::GET, "/api/status", Some(ADMIN), None).await.status, 200);
    for _ in 0..20 {
        e.call_from(a, Method::GET, "/api/status", None, None).await.expect_error(401);
    }
    assert_eq!(e.call_from(a, Method::GET, "/api/status", Some(ADMIN), None).await.status, 200);
}

#[tokio::test]
async fn status_has_seed_001_fields_hours_and_every_account() {
    let e = env().await;
    let (main, _) = e.seed("main").await;
    e.seed("other").await;
    let v = e.get("/api/status", ADMIN).await.json();
    assert_eq!(v["account"], "main");
    assert_eq!(v["status"], "healthy");
    assert_eq!(v["is_expired"], false);
    assert_eq!(v["needs_refresh"], false);
    assert_eq!(v["days_remaining"], 0, "an 8-hour token has 0 whole days");
    let hours = v["hours_remaining"].as_f64().unwrap();
    let expected = (main.credential.expires_at - e.clock.now()).num_seconds() as f64 / 3600.0;
    assert!((hours - expected).abs() < 0.01, "{hours} vs {expected}");
    assert!(hours > 7.0);
    let expires = v["expires"].as_str().unwrap();
    assert!(chrono::NaiveDateTime::parse_from_str(expires, "%Y-%m-%dT%H:%M:%S").is_ok(), "{expires}");
    let accounts = v["accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), 2);
    assert_eq!(accounts[0]["name"], "main");
    assert!(accounts[0]["sinks"].is_array());
    assert!(accounts[0]["token_fingerprint"].as_str().unwrap().contains('…'));

    let v = e.get("/api/status?account=other", ADMIN).await.json();
    assert_eq!(v["account"], "other");
    e.get("/api/status?account=ghost", ADMIN).await.expect_error(404);
}

#[tokio::test]
async fn status_maps_levels_onto_the_seed_words() {
    let e = env().await;
    let (main, _) = e.seed("main").await;
    // Inside the lead time, an own refreshable account is still healthy: tokenkeeper refreshes it.
    e.clock.set(main.credential.expires_at - Duration::minutes(10));
    let v = e.get("/api/status", ADMIN).await.json();
    assert_eq!(
        (v["status"].as_str(), v["level"].as_str(), v["needs_refresh"].as_bool()),
        (Some("healthy"), Some("expiring"), Some(true))
    );
    // Past expiry.
    e.clock.set(main.credential.expires_at + Duration::minutes(1));
    let v = e.get("/api/status", ADMIN).await.json();
    assert_eq!((v["status"].as_str(), v["is_expired"].as_bool()), (Some("expired"), Some(true)));
    // The provider rejected the refresh token.
    e.store
        .patch_account(
            "main",
            &AccountPatch { state: Some(AccountState::NeedsLogin), ..Default::default() },
            e.clock.now(),
        )
        .await
        .unwrap();
    assert_eq!(e.get("/api/status", ADMIN).await.json()["status"], "needs_login");
    // A long-lived token nobody can refresh is a warning inside the lead time.
    let e = env().await;
    e.post("/api/push", ADMIN, "sk-ant-oat01-long-lived-token-for-status-test").await;
    let a = e.account("main").await.unwrap();
    e.clock.set(a.credential.expires_at - Duration::minutes(10));
    let v = e.get("/api/status", ADMIN).await.json();
    assert_eq!((v["status"].as_str(), v["level"].as_str()), (Some("warning"), Some("expiring")));
    // No account at all.
    let e = env().await;
    let v = e.get("/api/status", ADMIN).await.json();
    assert_eq!((v["status"].as_str(), v["accounts"].as_array().map(Vec::len)), (Some("needs_login"), Some(0)));
}

#[tokio::test]
async fn push_accepts_every_format_and_never_regresses() {
    let e = env().await;
    let first = e.mock.issue_login("me@example.com");
    // Raw Claude JSON, as seed 001's `curl -d @.credentials.json`.
    let r = e.post("/api/push", ADMIN, &claude_json(&first)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let v = r.json();
    assert_eq!((v["result"].as_str(), v["account"]["name"].as_str()), (Some("created"), Some("main")));
    // The same again changes nothing.
    assert_eq!(e.post("/api/push", ADMIN, &claude_json(&first)).await.json()["result"], "unchanged");
    // A newer one as {"credential": base64}.
    e.clock.advance(Duration::minutes(5));
    let newer = e.mock.issue_login("me@example.com");
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(claude_json(&newer))
    };
    let r = e.post("/api/push", ADMIN, &json!({"credential": b64}).to_string()).await;
    assert_eq!((r.status.as_u16(), r.json()["result"].as_str()), (200, Some("updated")));
    let stored = e.account("main").await.unwrap();
    assert_eq!(stored.credential.access_token.expose(), newer.access_token);
    // The older one is refused and nothing changes.
    let r = e.post("/api/push?account=main", ADMIN, &claude_json(&first)).await;
    let v = r.expect_error(409);
    assert!(v["error"].as_str().unwrap().contains("older"), "{v}");
    let after = e.account("main").await.unwrap();
    assert_eq!(after.version, stored.version);
    assert_eq!(after.credential.access_token.expose(), newer.access_token);
    // A blank stub is refused too.
    let blank = r#"{"claudeAiOauth":{"accessToken":"","refreshToken":"","expiresAt":0,"scopes":[]}}"#;
    assert!(matches!(e.post("/api/push", ADMIN, blank).await.status.as_u16(), 400 | 409));
    assert_eq!(e.account("main").await.unwrap().version, stored.version);
    // {"credential": {...}} with an object, to another account.
    let third = e.mock.issue_login("two@example.com");
    let inner: serde_json::Value = serde_json::from_str(&claude_json(&third)).unwrap();
    let r = e.post("/api/push?account=two", ADMIN, &json!({"credential": inner}).to_string()).await;
    assert_eq!(r.status, 201, "{}", r.text);
    // The answer never holds a token.
    for (_, body) in e.seen() {
        for t in [&first, &newer, &third] {
            assert!(!body.contains(&t.access_token) && !body.contains(&t.refresh_token), "token in {body}");
        }
    }
}

#[tokio::test]
async fn malformed_and_oversized_bodies_are_refused_in_json() {
    let e = env().await;
    let v = e.post("/api/push", ADMIN, "this is not a credential").await.expect_error(400);
    assert!(!v["error"].as_str().unwrap().contains("this is not"), "the input is never quoted: {v}");
    e.post("/api/push", ADMIN, "").await.expect_error(400);
    e.post("/api/push", ADMIN, r#"{"credential": 5}"#).await.expect_error(400);
    e.post("/api/push", ADMIN, r#"{"claudeAiOauth": {"accessToken": "sk-ant-oat01-x""#).await.expect_error(400);
    let big = format!("{{\"credential\": \"{}\"}}", "a".repeat(70 * 1024));
    let v = e.post("/api/push", ADMIN, &big).await.expect_error(413);
    assert!(v["error"].as_str().unwrap().contains("65536"), "{v}");
    e.post("/oauth/exchange-code", ADMIN, &big).await.expect_error(413);
    e.post("/oauth/exchange-code", ADMIN, "{not json").await.expect_error(400);
    e.post("/oauth/exchange-code", ADMIN, r#"{"account_email": "x@example.com"}"#).await.expect_error(400);
    assert!(e.account("main").await.is_none());
}

#[tokio::test]
async fn a_token_read_key_for_one_account_reads_only_that_token() {
    let e = env().await;
    let (_, ta) = e.seed("a").await;
    let (_, tb) = e.seed("b").await;
    let key = e.key(&[Scope::TokenRead], &["a"]).await;
    // Its own account, named or implied.
    for uri in ["/api/token?account=a", "/api/token"] {
        let r = e.get(uri, &key).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.headers["cache-control"], "no-store");
        let v = r.json();
        assert_eq!(v["access_token"], ta.access_token.as_str());
        assert_eq!(v["account"], "a");
        assert!(v["expires_in_seconds"].as_i64().unwrap() > 7 * 3600);
        assert!(v["expires_at"].as_str().is_some());
    }
    assert_eq!(e.account("a").await.unwrap().usage.requests, 0, "usage is counted in memory, not per request");
    assert_eq!(e.keeper.flush_usage().await.unwrap(), 2);
    assert_eq!(e.account("a").await.unwrap().usage.requests, 2, "usage is recorded by the flush");
    // Not another account's token, and nothing else.
    let v = e.get("/api/token?account=b", &key).await.expect_error(403);
    assert!(!v.to_string().contains(&tb.access_token));
    e.get("/api/status", &key).await.expect_error(403);
    e.post("/api/push?account=a", &key, &claude_json(&e.mock.issue_login("a@example.com"))).await.expect_error(403);
    e.delete("/oauth/tokens/a", &key).await.expect_error(403);
    e.delete("/oauth/tokens", &key).await.expect_error(403);
    e.post("/api/auto-refresh?account=a", &key, "").await.expect_error(403);
    e.post("/oauth/start", &key, "").await.expect_error(403);
    e.get("/metrics", &key).await.expect_error(403);
    assert!(e.account("a").await.is_some() && e.account("b").await.is_some());
}

#[tokio::test]
async fn account_limits_apply_to_every_scope() {
    let e = env().await;
    e.seed("a").await;
    e.seed("b").await;
    let all = [Scope::StatusRead, Scope::Push, Scope::Refresh, Scope::AccountsWrite, Scope::TokenRead];
    let key = e.key(&all, &["a"]).await;
    // Status shows only its account.
    let v = e.get("/api/status", &key).await.json();
    assert_eq!(v["accounts"].as_array().unwrap().len(), 1);
    assert_eq!(v["account"], "a");
    let v = e.get("/oauth/status", &key).await.json();
    assert_eq!(v["total_tokens"], 1);
    assert_eq!(v["tokens"][0]["provider"], "anthropic", "each token names its provider: {v}");
    e.get("/api/status?account=b", &key).await.expect_error(403);
    // Pushing and refreshing b, deleting b or everything: refused.
    e.post("/api/push?account=b", &key, &claude_json(&e.mock.issue_login("b@example.com"))).await.expect_error(403);
    e.post("/api/auto-refresh?account=b", &key, "").await.expect_error(403);
    e.delete("/oauth/tokens/b", &key).await.expect_error(403);
    e.delete("/oauth/tokens/b@example.com", &key).await.expect_error(403);
    e.delete("/oauth/tokens/ghost", &key).await.expect_error(403);
    e.delete("/oauth/tokens", &key).await.expect_error(403);
    assert!(e.account("b").await.is_some());
    // Its own account: allowed.
    assert_eq!(e.post("/api/auto-refresh", &key, "").await.json()["result"], "refreshed");
    assert_eq!(e.delete("/oauth/tokens/a", &key).await.status, 200);
    assert!(e.account("a").await.is_none());
    // A key with several accounts must name one.
    let two = e.key(&[Scope::TokenRead], &["a", "b"]).await;
    e.get("/api/token", &two).await.expect_error(403);
    assert_eq!(e.get("/api/token?account=b", &two).await.status, 200);
}

#[tokio::test]
async fn every_scope_opens_its_endpoints_and_only_those() {
    let e = env().await;
    e.seed("main").await;
    let cases: [(Scope, Method, &str); 9] = [
        (Scope::StatusRead, Method::GET, "/api/status"),
        (Scope::StatusRead, Method::GET, "/oauth/status"),
        (Scope::StatusRead, Method::GET, "/ready"),
        (Scope::TokenRead, Method::GET, "/api/token"),
        (Scope::Refresh, Method::POST, "/api/auto-refresh-if-needed"),
        (Scope::Login, Method::POST, "/oauth/start"),
        (Scope::MetricsRead, Method::GET, "/metrics"),
        (Scope::AccountsWrite, Method::DELETE, "/oauth/tokens/nobody"),
        (Scope::Push, Method::POST, "/api/push"),
    ];
    for (scope, method, path) in cases {
        let key = e.key(&[scope], &[]).await;
        let body = (method == Method::POST).then_some("");
        let r = e.call(method.clone(), path, Some(&key), body).await;
        assert_ne!(r.status.as_u16(), 403, "{scope} on {method} {path}: {}", r.text);
        assert_ne!(r.status.as_u16(), 401, "{scope} on {method} {path}: {}", r.text);
        for other in Scope::all().filter(|s| *s != scope && *s != Scope::Admin) {
            let k = e.key(&[other], &[]).await;
            let r = e.call(method.clone(), path, Some(&k), body).await;
            assert_eq!(r.status.as_u16(), 403, "{other} must not open {method} {path}: {}", r.text);
        }
        let admin_key = e.key(&[Scope::Admin], &[]).await;
        let r = e.call(method.clone(), path, Some(&admin_key), body).await;
        assert!(!matches!(r.status.as_u16(), 401 | 403), "admin on {path}: {}", r.text);
    }
}

#[tokio::test]
async fn refresh_endpoints_refresh_now_or_only_when_due() {
    let e = env().await;
    let (main, _) = e.seed("main").await;
    let before = e.mock.counts();
    let v = e.post("/api/auto-refresh-if-needed", ADMIN, "").await.json();
    assert_eq!(v["result"], "not_needed");
    let v = e.post("/api/auto-refresh?account=main", ADMIN, "").await.json();
    assert_eq!(v["result"], "refreshed");
    assert_ne!(e.account("main").await.unwrap().credential.access_token, main.credential.access_token);
    assert!(e.mock.counts() != before);
    let after_force = e.account("main").await.unwrap();
    e.clock.set(after_force.credential.expires_at - Duration::minutes(5));
    assert_eq!(e.post("/api/auto-refresh-if-needed", ADMIN, "").await.json()["result"], "refreshed");
    e.post("/api/auto-refresh?account=ghost", ADMIN, "").await.expect_error(404);
    // A dead refresh token: 409 with words about logging in.
    let a = e.account("main").await.unwrap();
    e.mock.revoke(a.credential.refresh_token.as_ref().unwrap().expose());
    e.clock.advance(Duration::minutes(1));
    let v = e.post("/api/auto-refresh", ADMIN, "").await.expect_error(409);
    assert!(v["error"].as_str().unwrap().contains("login"), "{v}");
}

#[tokio::test]
async fn token_is_refreshed_first_inside_the_lead_time() {
    let e = env().await;
    let (main, _) = e.seed("main").await;
    e.clock.set(main.credential.expires_at - Duration::minutes(10));
    let key = e.key(&[Scope::TokenRead], &[]).await;
    let v = e.get("/api/token", &key).await.json();
    assert_ne!(v["access_token"], main.credential.access_token.expose());
    assert!(e.mock.is_access_token_valid(v["access_token"].as_str().unwrap()));
    assert!(v["expires_in_seconds"].as_i64().unwrap() > 3600);
    let empty = env().await;
    empty.get("/api/token", ADMIN).await.expect_error(404);
}

#[tokio::test]
async fn oauth_login_flow_status_and_deletion_follow_seed_003() {
    let e = env().await;
    let key = e.key(&[Scope::Login, Scope::StatusRead, Scope::AccountsWrite], &[]).await;
    let start = e.post("/oauth/start", &key, "").await.json();
    let url = start["authorize_url"].as_str().unwrap();
    assert!(url.contains(start["state"].as_str().unwrap()));
    let pasted = e.mock.authorize(url, "user1@example.com").unwrap();
    let body = json!({"code": pasted, "account_email": "user1@example.com"}).to_string();
    let r = e.post("/oauth/exchange-code", &key, &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["result"], "created");
    assert_eq!(r.json()["account_email"], "user1@example.com");
    assert!(e.account("user1@example.com").await.is_some());
    // The same code again: the login is gone.
    e.post("/oauth/exchange-code", &key, &body).await.expect_error(400);
    // Seed 003's bare code works while exactly one login is pending.
    let start = e.post("/oauth/start", &key, "").await.json();
    let pasted = e.mock.authorize(start["authorize_url"].as_str().unwrap(), "user2@example.com").unwrap();
    let bare = pasted.split('#').next().unwrap();
    let r = e
        .post("/oauth/exchange-code", &key, &json!({"code": bare, "account_email": "user2@example.com"}).to_string())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // A login older than 10 minutes is forgotten.
    let start = e.post("/oauth/start", &key, "").await.json();
    let pasted = e.mock.authorize(start["authorize_url"].as_str().unwrap(), "user3@example.com").unwrap();
    e.clock.advance(Duration::minutes(11));
    let v = e.post("/oauth/exchange-code", &key, &json!({"code": pasted}).to_string()).await.expect_error(400);
    assert!(v["hint"].as_str().unwrap().contains("/oauth/start"));

    // Use one token so usage shows, then read the status in seed 003's exact shape.
    e.get("/api/token?account=user1@example.com", ADMIN).await;
    e.keeper.flush_usage().await.unwrap();
    e.clock.advance(Duration::minutes(5));
    let v = e.get("/oauth/status", &key).await.json();
    assert_eq!(v["total_tokens"], 2);
    let t = &v["tokens"][0];
    let fields: BTreeSet<&str> = t.as_object().unwrap().keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = [
        "account_email",
        "provider_email",
        "expires_in_minutes",
        "is_healthy",
        "usage_count",
        "last_used",
        "last_used_timestamp",
        "created_at",
        "scopes",
        // The proxy's pool (issue 14), beside seed 003's fields.
        "pool",
        "pools",
        "pool_state",
        "cooldown_until",
        // The account's provider (issue 16).
        "provider",
    ]
    .into();
    assert_eq!(fields, expected);
    assert_eq!(t["provider"], "anthropic");
    assert_eq!(
        (&t["pool"], &t["pool_state"], &t["cooldown_until"]),
        (&"default".into(), &"active".into(), &serde_json::Value::Null)
    );
    assert_eq!(t["account_email"], "user1@example.com");
    assert_eq!(t["usage_count"], 1);
    assert_eq!(t["last_used"], "5m ago");
    assert_eq!(t["last_used_timestamp"], (e.clock.now() - Duration::minutes(5)).timestamp());
    assert_eq!(t["is_healthy"], true);
    assert!(t["expires_in_minutes"].as_f64().unwrap() > 60.0);
    assert!(t["created_at"].as_i64().unwrap() > 1_700_000_000);
    assert!(t["scopes"].as_array().unwrap().iter().any(|s| s == "user:inference"));
    assert_eq!(v["tokens"][1]["last_used"], "never");

    // Deletion, by email then all.
    let r = e.delete("/oauth/tokens/user1@example.com", &key).await;
    assert_eq!(r.json()["deleted"], "user1@example.com");
    e.delete("/oauth/tokens/user1@example.com", &key).await.expect_error(404);
    let r = e.delete("/oauth/tokens", &key).await.json();
    assert_eq!(r["count"], 1);
    assert_eq!(e.get("/oauth/status", &key).await.json()["total_tokens"], 0);
}

#[tokio::test]
async fn ready_answers_when_the_store_does() {
    let e = env().await;
    assert_eq!(e.get("/ready", ADMIN).await.json(), json!({"status": "ready"}));
}

#[tokio::test]
async fn metrics_are_parseable_and_match_the_accounts() {
    let e = env().await;
    let (main, _) = e.seed("main").await;
    e.seed("spare").await;
    e.post("/api/auto-refresh?account=spare", ADMIN, "").await;
    e.clock.advance(Duration::minutes(30));
    let state = e.state.clone().with_metrics(Arc::new(|registry: &mut Registry| {
        let family = Family::<Vec<(String, String)>, Counter>::default();
        family.get_or_create(&vec![("channel".to_owned(), "ops".to_owned())]).inc_by(4);
        registry.register("tokenkeeper_component_things", "A component's counter, in the one registry", family);
    }));
    let e = Env { state, ..e };
    let key = e.key(&[Scope::MetricsRead], &[]).await;
    let r = e.get("/metrics", &key).await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"].to_str().unwrap().contains("openmetrics"));
    assert!(r.text.trim_end().ends_with("# EOF"), "{}", r.text);
    let lines = r.text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        scrape.samples.iter().find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))).map(
            |s| match s.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            },
        )
    };
    let left = (main.credential.expires_at - e.clock.now()).num_seconds() as f64;
    assert_eq!(value("tokenkeeper_access_token_expires_in_seconds", &[("account", "main")]), Some(left));
    assert_eq!(value("tokenkeeper_refresh_token_age_seconds", &[("account", "main")]), Some(1800.0));
    assert_eq!(value("tokenkeeper_account_status", &[("account", "main"), ("status", "healthy")]), Some(1.0));
    assert_eq!(value("tokenkeeper_account_status", &[("account", "main"), ("status", "expired")]), Some(0.0));
    let ones = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "tokenkeeper_account_status" && s.labels.get("account") == Some("main"));
    assert_eq!(ones.clone().count(), 6);
    assert_eq!(value("tokenkeeper_refresh_attempts_total", &[("account", "spare"), ("result", "success")]), Some(1.0));
    // A component's family goes through the same registry: one HELP/TYPE, `_total` added.
    assert_eq!(value("tokenkeeper_component_things_total", &[("channel", "ops")]), Some(4.0));
    assert!(r.text.contains("# TYPE tokenkeeper_component_things counter\n"), "{}", r.text);
    let a = e.account("main").await.unwrap();
    assert!(!r.text.contains(a.credential.access_token.expose()));
    assert!(!r.text.contains(a.credential.refresh_token.as_ref().unwrap().expose()));
}

#[tokio::test]
async fn the_openapi_document_describes_every_route_and_nothing_else() {
    let e = env().await;
    let key = e.key(&[Scope::StatusRead], &[]).await;
    let r = e.get("/api/openapi.json", &key).await;
    assert_eq!(r.status, 200);
    let doc: openapiv3::OpenAPI = serde_json::from_str(&r.text).unwrap();
    assert!(doc.openapi.starts_with("3."));
    let mut documented = BTreeSet::new();
    for (path, item) in &doc.paths.paths {
        let item = item.as_item().unwrap();
        for (method, op) in item.iter() {
            assert!(op.summary.is_some(), "{method} {path} has no summary");
            assert!(!op.responses.responses.is_empty(), "{method} {path} has no responses");
            documented.insert((method.to_owned(), path.clone()));
        }
    }
    let served: BTreeSet<(String, String)> =
        tokenkeeper_server::api_routes().into_iter().map(|(m, p)| (m.to_owned(), p.to_owned())).collect();
    assert_eq!(documented, served);
    // And each listed route really is served with that method.
    for (method, path) in &served {
        let uri = path.replace("{account_email}", "x@example.com");
        let m: Method = method.to_uppercase().parse().unwrap();
        let body = (m == Method::POST).then_some("");
        let r = e.call(m, &uri, Some(ADMIN), body).await;
        assert!(!matches!(r.status.as_u16(), 405), "{method} {path} is not routed: {}", r.status);
        if r.status.as_u16() == 404 {
            assert!(r.json()["error"].is_string(), "{method} {path} is not routed");
        }
    }
}

#[tokio::test]
async fn sinks_show_in_status_and_metrics() {
    let e = env().await;
    let (main, _) = e.seed("main").await;
    let blocker = e.dir.path().join("not-a-dir");
    std::fs::write(&blocker, "").unwrap();
    let configs: Vec<tokenkeeper_core::config::SinkConfig> = serde_json::from_value(json!([
        {"account": "main", "kind": "env_file", "name": "good", "path": e.dir.path().join("bot.env"), "key": "TOKEN"},
        {"account": "main", "kind": "env_file", "name": "bad", "path": blocker.join("bot.env"), "key": "TOKEN"}
    ]))
    .unwrap();
    let sinks = tokenkeeper_sync::sink::SinkSet::new(configs);
    let results = sinks.deliver_once(&main).await;
    assert_eq!(results.iter().filter(|(_, r)| r.is_ok()).count(), 1);
    let state = tokenkeeper_server::AppState::new(
        e.keeper.clone(),
        Some(Arc::new(sinks)),
        tokenkeeper_core::Secret::new(ADMIN),
    );
    let e = Env { state, ..e };

    let v = e.get("/api/status", ADMIN).await.json();
    assert_eq!(v["status"], "warning", "a failing sink is a warning: {v}");
    let account = &v["accounts"][0];
    assert_eq!(account["failing_sinks"], json!(["bad"]));
    let sinks = account["sinks"].as_array().unwrap();
    assert_eq!(sinks.len(), 2);
    let good = sinks.iter().find(|s| s["name"] == "good").unwrap();
    let bad = sinks.iter().find(|s| s["name"] == "bad").unwrap();
    assert_eq!(
        (good["ok"].as_bool(), good["writes"].as_u64(), good["kind"].as_str()),
        (Some(true), Some(1), Some("env_file"))
    );
    assert_eq!(bad["ok"], false);
    assert!(bad["last_error"].as_str().is_some_and(|s| !s.is_empty()));

    let text = e.get("/metrics", ADMIN).await.text;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let sample = |metric: &str, sink: &str| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == metric && s.labels.get("sink") == Some(sink) && s.labels.get("account") == Some("main")
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v)
                | prometheus_parse::Value::Gauge(v) => v,
                _ => f64::NAN,
            })
    };
    assert_eq!(sample("tokenkeeper_sink_writes_total", "good"), Some(1.0));
    assert_eq!(sample("tokenkeeper_sink_failures_total", "good"), Some(0.0));
    assert!(sample("tokenkeeper_sink_failures_total", "bad").is_some_and(|v| v >= 1.0), "{text}");
    assert!(text.contains("tokenkeeper_account_status{account=\"main\",status=\"warning\"} 1"), "{text}");
}

#[tokio::test]
async fn routes_the_binary_adds_are_served_by_the_same_router() {
    // The binary mounts the web page (and the proxy) this way; the server names neither.
    let mut e = env().await;
    let extra: tokenkeeper_server::ExtraRoutes = std::sync::Arc::new(|secure: bool| {
        axum::Router::new().route(
            "/login",
            axum::routing::get(move || async move {
                ([(axum::http::header::CONTENT_TYPE, "text/html")], format!("page secure={secure}"))
            }),
        )
    });
    e.state = e.state.clone().with_routes(extra);
    let r = e.call(Method::GET, "/login", None, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/html"));
    assert_eq!(r.text, "page secure=false");
    // The API's own routes are not shadowed by the added ones.
    assert_eq!(e.call(Method::GET, "/health", None, None).await.json(), json!({"status": "ok"}));
}

#[tokio::test]
async fn provider_trouble_is_503_with_retry_after_and_a_valid_token_is_still_served() {
    let e = env().await;
    let (main, _) = e.seed("main").await;
    e.mock.push_fault(tokenkeeper_mock::Fault::RateLimited { retry_after_secs: 120 });
    let r = e.post("/api/auto-refresh", ADMIN, "").await;
    let v = r.expect_error(503);
    assert_eq!(r.headers["retry-after"], "120", "{v}");
    // Inside the lead time with the provider failing: the still-valid token, with a warning.
    e.clock.set(main.credential.expires_at - Duration::minutes(10));
    e.mock.push_fault(tokenkeeper_mock::Fault::ServerError);
    let v = e.get("/api/token", ADMIN).await.json();
    assert_eq!(v["access_token"], main.credential.access_token.expose());
    assert!(v["warning"].as_str().is_some_and(|w| w.contains("try again later")), "{v}");
}

#[tokio::test]
async fn status_with_history_carries_the_last_days_events_and_hourly_usage_of_visible_accounts() {
    use tokenkeeper_core::store::{EventKind, NewEvent, UsageRecord};
    let e = env().await;
    e.seed("main").await;
    e.seed("other").await;
    e.clock.advance(Duration::hours(30));
    let now = e.clock.now();
    for (account, kind, hours_ago) in
        [("main", EventKind::Refreshed, 2), ("main", EventKind::RefreshFailed, 1), ("other", EventKind::Refreshed, 3)]
    {
        let at = now - Duration::hours(hours_ago);
        e.store.record_event(&NewEvent { account: account.into(), kind, at, detail: "d".into() }).await.unwrap();
    }
    let hour = UsageRecord::hour_of(now - Duration::hours(1));
    let use_ = |model: &str, requests| UsageRecord {
        account: "main".into(),
        model: Some(model.into()),
        hour,
        requests,
        output_tokens: 10 * requests,
        last_used_at: hour,
        ..UsageRecord::default()
    };
    e.store.record_usage(&[use_("opus", 3), use_("sonnet", 4)]).await.unwrap();

    assert!(e.get("/api/status", ADMIN).await.json().get("history").is_none(), "only when asked");
    let v = e.get("/api/status?history=true", ADMIN).await.json();
    let h = &v["history"];
    assert_eq!(h["until"], json!(now));
    assert_eq!(h["since"], json!(now - Duration::hours(24)));
    let main = &h["accounts"]["main"];
    // The logins 30 hours ago are outside the day.
    assert_eq!(
        main["events"].as_array().unwrap().iter().map(|e| e["kind"].clone()).collect::<Vec<_>>(),
        [json!("refreshed"), json!("refresh_failed")]
    );
    assert_eq!(
        main["usage"],
        json!([{"hour": hour, "requests": 7, "errors": 0, "input_tokens": 0, "output_tokens": 70,
        "cache_read_tokens": 0, "cache_creation_tokens": 0}])
    );
    assert_eq!(h["accounts"]["other"]["events"][0]["kind"], "refreshed");

    let key = e.key(&[Scope::StatusRead], &["other"]).await;
    let v = e.get("/api/status?history=true", &key).await.json();
    let names: Vec<_> = v["history"]["accounts"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(names, ["other"], "a key limited to one account sees only its history");
}

/// Replicas: `/oauth/start` on one process and `/oauth/exchange-code` on another of the same
/// installation. The pending login lives in the store with its verifier sealed (the mock
/// checks the verifier, so the exchange succeeding proves it was opened on the other side).
#[tokio::test]
async fn a_login_started_on_one_replica_is_finished_on_another() {
    use tokenkeeper_core::{Secret, Store};
    let mut e = env().await;
    let start = e.post("/oauth/start", ADMIN, "").await.json();
    let state = start["state"].as_str().unwrap().to_owned();
    let stored = e.store.get_state(&format!("logins/api/{state}")).await.unwrap().expect("parked in the store");
    let sealed = stored["verifier"].as_str().unwrap();
    assert!(sealed.starts_with("v1:"), "the verifier is not sealed: {stored}");
    let pasted = e.mock.authorize(start["authorize_url"].as_str().unwrap(), "b@example.com").unwrap();
    // Replica B: another process of the installation, serving its own API.
    let b = e.other_process().await;
    e.state = tokenkeeper_server::AppState::new(b, None, Secret::new(ADMIN));
    let body = json!({"code": pasted, "account_email": "b@example.com"}).to_string();
    let r = e.post("/oauth/exchange-code", ADMIN, &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["result"], "created");
    assert!(e.store.get_state(&format!("logins/api/{state}")).await.unwrap().is_none(), "a used login stays");
}
