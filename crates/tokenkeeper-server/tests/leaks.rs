//! No token in any answer (except `/api/token`'s own field) and none in the logs, over a
//! flow that touches every endpoint. Alone in its test binary: tracing's per-callsite interest
//! cache is shared by threads, so a capture beside other tests could miss events.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use chrono::Duration;
use serde_json::json;

use support::{claude_json, env, LogCapture, ADMIN};
use tokenkeeper_core::Store;

#[tokio::test]
async fn no_token_in_any_answer_but_api_token_and_none_in_logs() {
    let logs = LogCapture::start();
    let e = env().await;
    let (_, t) = e.seed("main").await;
    let pushed = e.mock.issue_login("main@example.com");
    e.clock.advance(Duration::minutes(1));
    e.post("/api/push", ADMIN, &claude_json(&pushed)).await;
    e.post("/api/push", ADMIN, &claude_json(&t)).await; // refused
    e.post("/api/auto-refresh", ADMIN, "").await;
    e.get("/api/status", ADMIN).await;
    e.get("/oauth/status", ADMIN).await;
    e.get("/metrics", ADMIN).await;
    e.get("/ready", ADMIN).await;
    e.get("/api/status", "tk_wrong_key").await;
    let start = e.post("/oauth/start", ADMIN, "").await.json();
    let pasted = e.mock.authorize(start["authorize_url"].as_str().unwrap(), "new@example.com").unwrap();
    e.post("/oauth/exchange-code", ADMIN, &json!({"code": pasted, "account_email": "new@example.com"}).to_string())
        .await;
    let token_reply = e.get("/api/token?account=main", ADMIN).await.json();
    let served = token_reply["access_token"].as_str().unwrap().to_owned();

    let mut secrets: Vec<String> = vec![
        ADMIN.into(),
        t.access_token.clone(),
        t.refresh_token.clone(),
        pushed.access_token.clone(),
        pushed.refresh_token.clone(),
    ];
    for a in e.store.list_accounts().await.unwrap() {
        secrets.push(a.credential.access_token.expose().to_owned());
        if let Some(r) = &a.credential.refresh_token {
            secrets.push(r.expose().to_owned());
        }
    }
    let code = pasted.split('#').next().unwrap().to_owned();
    secrets.push(code);
    for (uri, body) in e.seen() {
        for s in &secrets {
            if uri.starts_with("/api/token") && *s == served {
                continue;
            }
            assert!(!body.contains(s.as_str()), "a secret in the answer of {uri}: {body}");
        }
    }
    let text = logs.text();
    assert!(text.contains("access token handed out"), "logs were captured: {text}");
    for s in &secrets {
        assert!(!text.contains(s.as_str()), "a secret in the logs");
    }
}
