//! Behaviour of the mock provider over real HTTP on loopback.

// Test helpers outside #[test] functions panic on purpose when the mock misbehaves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokenkeeper_core::ManualClock;
use tokenkeeper_mock::{Counts, Fault, MockProvider, CLIENT_ID};

fn http() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

async fn post_token(mock: &MockProvider, body: Value) -> (u16, Value) {
    let resp = http().post(mock.token_url()).json(&body).send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn refresh(mock: &MockProvider, token: &str) -> (u16, Value) {
    post_token(mock, json!({"grant_type": "refresh_token", "refresh_token": token, "client_id": CLIENT_ID})).await
}

fn manual_clock(mock: &MockProvider) -> ManualClock {
    let clock = ManualClock::new(DateTime::from_timestamp(1_800_000_000, 0).unwrap());
    mock.set_clock(Arc::new(clock.clone()));
    clock
}

struct Pkce {
    verifier: String,
    challenge: String,
    state: String,
}

fn pkce() -> Pkce {
    let verifier = URL_SAFE_NO_PAD.encode(rand_bytes());
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    Pkce { verifier, challenge, state: URL_SAFE_NO_PAD.encode(rand_bytes()) }
}

fn rand_bytes() -> [u8; 32] {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    b
}

fn authorize_url(mock: &MockProvider, p: &Pkce) -> String {
    url::Url::parse_with_params(
        &mock.authorize_url(),
        [
            ("code", "true"),
            ("client_id", CLIENT_ID),
            ("response_type", "code"),
            ("redirect_uri", &mock.redirect_uri()),
            ("scope", "org:create_api_key user:profile user:inference"),
            ("code_challenge", &p.challenge),
            ("code_challenge_method", "S256"),
            ("state", &p.state),
        ],
    )
    .unwrap()
    .to_string()
}

fn exchange_body(mock: &MockProvider, code: &str, state: &str, verifier: &str) -> Value {
    json!({
        "grant_type": "authorization_code", "code": code, "state": state, "client_id": CLIENT_ID,
        "redirect_uri": mock.redirect_uri(), "code_verifier": verifier,
    })
}

#[tokio::test]
async fn refresh_rotates_and_a_spent_token_answers_invalid_grant() {
    let mock = MockProvider::start().await.unwrap();
    let login = mock.issue_login("a@example.com");
    assert!(login.access_token.starts_with("sk-ant-oat01-"));
    assert!(login.refresh_token.starts_with("sk-ant-ort01-"));
    assert_eq!(login.expires_in, 28_800);

    let (status, body) = refresh(&mock, &login.refresh_token).await;
    assert_eq!(status, 200, "{body}");
    let new_refresh = body["refresh_token"].as_str().unwrap();
    let new_access = body["access_token"].as_str().unwrap();
    assert_ne!(new_refresh, login.refresh_token);
    assert!(new_access.starts_with("sk-ant-oat01-"));
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 28_800);
    assert_eq!(body["scope"], "org:create_api_key user:profile user:inference");
    assert_eq!(body["account"]["email_address"], "a@example.com");
    assert!(body["organization"]["uuid"].is_string());
    // The old access token lives on until its own expiry, as at the real provider.
    assert!(mock.is_access_token_valid(&login.access_token));
    assert!(mock.is_access_token_valid(new_access));

    let (status, body) = refresh(&mock, &login.refresh_token).await;
    assert_eq!(status, 400);
    assert_eq!(body, json!({"error": "invalid_grant", "error_description": "Refresh token not found or invalid"}));

    let (status, _) = refresh(&mock, new_refresh).await;
    assert_eq!(status, 200);
    let c = mock.counts();
    assert_eq!((c.refresh_ok, c.refresh_invalid_grant, c.token_requests), (2, 1, 3));
}

#[tokio::test]
async fn refresh_honours_asked_scopes_and_records_the_request() {
    let mock = MockProvider::start().await.unwrap();
    let login = mock.issue_login("a@example.com");
    let (status, body) = post_token(
        &mock,
        json!({"grant_type": "refresh_token", "refresh_token": login.refresh_token, "client_id": CLIENT_ID,
               "scope": "user:inference user:profile"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["scope"], "user:inference user:profile");
    let last = mock.last_token_request().unwrap();
    assert_eq!(last.grant_type.as_deref(), Some("refresh_token"));
    assert_eq!(last.scope.as_deref(), Some("user:inference user:profile"));
    assert_eq!(last.client_id.as_deref(), Some(CLIENT_ID));
}

#[tokio::test]
async fn revoked_unknown_and_wrong_client_are_refused() {
    let mock = MockProvider::start().await.unwrap();
    let login = mock.issue_login("a@example.com");
    mock.revoke(&login.refresh_token);
    assert_eq!(refresh(&mock, &login.refresh_token).await.1["error"], "invalid_grant");
    assert_eq!(refresh(&mock, "sk-ant-ort01-unknown").await.1["error"], "invalid_grant");
    let other = mock.issue_login("b@example.com");
    let (status, body) = post_token(
        &mock,
        json!({"grant_type": "refresh_token", "refresh_token": other.refresh_token, "client_id": "someone-else"}),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_client")));
    // A wrong client does not spend the token.
    assert_eq!(refresh(&mock, &other.refresh_token).await.0, 200);
    assert_eq!(mock.counts().refresh_invalid_grant, 2);
}

#[tokio::test]
async fn concurrent_refreshes_of_one_token_give_exactly_one_success() {
    let mock = MockProvider::start().await.unwrap();
    let login = mock.issue_login("a@example.com");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (mock, token) = (mock.clone(), login.refresh_token.clone());
            tokio::spawn(async move { refresh(&mock, &token).await.0 })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, vec![200, 400, 400, 400, 400, 400, 400, 400]);
    let c = mock.counts();
    assert_eq!((c.refresh_ok, c.refresh_invalid_grant), (1, 7));
}

#[tokio::test]
async fn form_bodies_and_missing_fields_are_invalid_requests() {
    let mock = MockProvider::start().await.unwrap();
    let login = mock.issue_login("a@example.com");
    let resp = http()
        .post(mock.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("grant_type=refresh_token&refresh_token={}&client_id={CLIENT_ID}", login.refresh_token))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"], "invalid_request");
    let (status, body) = post_token(&mock, json!({})).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")));
    // The form request spent nothing.
    assert_eq!(refresh(&mock, &login.refresh_token).await.0, 200);
}

#[tokio::test]
async fn code_exchange_happy_path_then_the_code_is_used_up() {
    let mock = MockProvider::start().await.unwrap();
    let p = pkce();
    let pasted = mock.authorize(&authorize_url(&mock, &p), "new@example.com").unwrap();
    let (code, state) = pasted.split_once('#').unwrap();
    assert_eq!(state, p.state);

    let (status, body) = post_token(&mock, exchange_body(&mock, code, state, &p.verifier)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["account"]["email_address"], "new@example.com");
    assert_eq!(body["scope"], "org:create_api_key user:profile user:inference");
    assert!(mock.is_access_token_valid(body["access_token"].as_str().unwrap()));
    // The refresh token it issued is live.
    assert_eq!(refresh(&mock, body["refresh_token"].as_str().unwrap()).await.0, 200);

    let (status, body) = post_token(&mock, exchange_body(&mock, code, state, &p.verifier)).await;
    assert_eq!(status, 400);
    assert_eq!(body["error_description"], "Authorization code already used");
    let c = mock.counts();
    assert_eq!((c.exchange_ok, c.exchange_rejected), (1, 1));
}

#[tokio::test]
async fn code_exchange_rejections_say_what_is_wrong() {
    let mock = MockProvider::start().await.unwrap();
    let clock = manual_clock(&mock);
    let p = pkce();
    let pasted = mock.authorize(&authorize_url(&mock, &p), "new@example.com").unwrap();
    let (code, state) = pasted.split_once('#').unwrap();

    let cases = [
        (exchange_body(&mock, "nope", state, &p.verifier), "Invalid authorization code"),
        (exchange_body(&mock, code, "other-state", &p.verifier), "state does not match the authorize request"),
        (exchange_body(&mock, code, state, &pkce().verifier), "code_verifier does not match code_challenge"),
        (
            {
                let mut b = exchange_body(&mock, code, state, &p.verifier);
                b["redirect_uri"] = json!("http://127.0.0.1:1/elsewhere");
                b
            },
            "redirect_uri does not match the authorize request",
        ),
    ];
    for (body, want) in cases {
        let (status, answer) = post_token(&mock, body).await;
        assert_eq!(status, 400);
        assert_eq!(answer["error"], "invalid_grant");
        assert_eq!(answer["error_description"], want);
    }
    let mut wrong_client = exchange_body(&mock, code, state, &p.verifier);
    wrong_client["client_id"] = json!("x");
    assert_eq!(post_token(&mock, wrong_client).await.1["error"], "invalid_client");

    clock.advance(chrono::Duration::minutes(11));
    let (status, answer) = post_token(&mock, exchange_body(&mock, code, state, &p.verifier)).await;
    assert_eq!((status, answer["error_description"].as_str()), (400, Some("Authorization code expired")));
    assert_eq!(mock.counts().exchange_rejected, 6);
    assert_eq!(mock.counts().exchange_ok, 0);
}

#[tokio::test]
async fn a_code_younger_than_ten_minutes_is_accepted() {
    let mock = MockProvider::start().await.unwrap();
    let clock = manual_clock(&mock);
    let p = pkce();
    let pasted = mock.authorize(&authorize_url(&mock, &p), "new@example.com").unwrap();
    let (code, state) = pasted.split_once('#').unwrap();
    clock.advance(chrono::Duration::minutes(9));
    assert_eq!(post_token(&mock, exchange_body(&mock, code, state, &p.verifier)).await.0, 200);
}

#[tokio::test]
async fn authorize_checks_the_url() {
    let mock = MockProvider::start().await.unwrap();
    let p = pkce();
    let good = authorize_url(&mock, &p);
    assert!(mock.authorize(&good, "x@example.com").is_ok());
    let cases = [
        (good.replace("code_challenge_method=S256", "code_challenge_method=plain"), "code_challenge_method"),
        (good.replace("response_type=code", "response_type=token"), "response_type"),
        (good.replace(CLIENT_ID, "other"), "client_id"),
        (good.replace("code=true&", ""), "`code`"),
        (good.replace(&format!("&state={}", p.state), ""), "state"),
        (good.replace(&mock.base_url(), "http://127.0.0.1:9"), "points at"),
        (good.replace("oauth%2Fcode%2Fcallback", "elsewhere"), "redirect_uri"),
    ];
    for (url, want) in cases {
        let err = mock.authorize(&url, "x@example.com").unwrap_err();
        assert!(err.contains(want), "{url}: {err}");
    }
}

#[tokio::test]
async fn browser_flow_approve_redirects_to_the_callback_that_shows_code_and_state() {
    let mock = MockProvider::start().await.unwrap();
    let p = pkce();
    let page = http().get(authorize_url(&mock, &p)).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("id=\"approve\"") && html.contains("/oauth/authorize/approve"), "{html}");

    let approve =
        authorize_url(&mock, &p).replace("/oauth/authorize?", "/oauth/authorize/approve?") + "&email=web%40example.com";
    let resp = http().get(approve).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&mock.redirect_uri()), "{location}");

    let callback = http().get(&location).send().await.unwrap().text().await.unwrap();
    let start = callback.find("<code id=\"code\">").unwrap() + "<code id=\"code\">".len();
    let shown = &callback[start..start + callback[start..].find("</code>").unwrap()];
    let (code, state) = shown.split_once('#').unwrap();
    assert_eq!(state, p.state);
    let (status, body) = post_token(&mock, exchange_body(&mock, code, state, &p.verifier)).await;
    assert_eq!(status, 200);
    assert_eq!(body["account"]["email_address"], "web@example.com");

    let bad = http().get(format!("{}?response_type=code", mock.authorize_url())).send().await.unwrap();
    assert_eq!(bad.status().as_u16(), 400);
}

#[tokio::test]
async fn each_token_fault_answers_as_announced_and_is_counted() {
    let mock = MockProvider::start().await.unwrap();
    let login = mock.issue_login("a@example.com");
    let send = || {
        http()
            .post(mock.token_url())
            .json(&json!({"grant_type": "refresh_token",
        "refresh_token": login.refresh_token, "client_id": CLIENT_ID}))
            .send()
    };

    mock.push_fault(Fault::ServerError);
    mock.push_fault(Fault::BadGateway);
    mock.push_fault(Fault::RateLimited { retry_after_secs: 42 });
    mock.push_fault(Fault::Html);
    mock.push_fault(Fault::InvalidGrant);

    let r = send().await.unwrap();
    assert_eq!(r.status().as_u16(), 500);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "server_error");

    let r = send().await.unwrap();
    assert_eq!(r.status().as_u16(), 502);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(r.text().await.unwrap().contains("Cloudflare"));

    let r = send().await.unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(r.headers()["retry-after"], "42");

    let r = send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));

    let r = send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");

    // None of the faults spent the token.
    assert_eq!(send().await.unwrap().status().as_u16(), 200);
    let c = mock.counts();
    assert_eq!(
        c,
        Counts { refresh_ok: 1, token_requests: 6, faults_served: 5, ..Counts::default() },
        "a fault is not an invalid_grant of a spent token"
    );
}

#[tokio::test]
async fn slow_fault_delays_then_answers_normally() {
    let mock = MockProvider::start().await.unwrap();
    let login = mock.issue_login("a@example.com");
    mock.push_fault(Fault::Slow(Duration::from_millis(40)));
    let started = Instant::now();
    let (status, _) = refresh(&mock, &login.refresh_token).await;
    assert!(started.elapsed() >= Duration::from_millis(40));
    assert_eq!(status, 200);
    assert_eq!(mock.counts().faults_served, 1);
}

#[tokio::test]
async fn omit_refresh_token_fault_leaves_the_old_refresh_token_live() {
    let mock = MockProvider::start().await.unwrap();
    let login = mock.issue_login("a@example.com");
    mock.push_fault(Fault::OmitRefreshToken);
    let (status, body) = refresh(&mock, &login.refresh_token).await;
    assert_eq!(status, 200);
    assert!(body.get("refresh_token").is_none(), "{body}");
    assert!(mock.is_access_token_valid(body["access_token"].as_str().unwrap()));
    assert_eq!(refresh(&mock, &login.refresh_token).await.0, 200);
}

#[tokio::test]
async fn persistent_fault_applies_until_cleared_after_queued_ones() {
    let mock = MockProvider::start().await.unwrap();
    let login = mock.issue_login("a@example.com");
    mock.set_persistent_fault(Some(Fault::ServerError));
    mock.push_fault(Fault::RateLimited { retry_after_secs: 1 });
    // A Messages fault is not taken by a token request.
    mock.push_fault(Fault::Messages401);
    assert_eq!(refresh(&mock, &login.refresh_token).await.0, 429);
    assert_eq!(refresh(&mock, &login.refresh_token).await.0, 500);
    assert_eq!(refresh(&mock, &login.refresh_token).await.0, 500);
    mock.set_persistent_fault(None);
    assert_eq!(refresh(&mock, &login.refresh_token).await.0, 200);
    assert_eq!(mock.counts().faults_served, 3);
    // The queued Messages401 is still waiting for a Messages request.
    let r = messages(&mock, &login.access_token, json!({"model": "m", "max_tokens": 5})).await;
    assert_eq!(r.status().as_u16(), 401);
    assert!(Fault::Messages401.is_messages_fault() && !Fault::Html.is_messages_fault());
}

async fn messages(mock: &MockProvider, token: &str, body: Value) -> reqwest::Response {
    http()
        .post(format!("{}/v1/messages", mock.api_base_url()))
        .bearer_auth(token)
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "claude-code-20250219,oauth-2025-04-20")
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn messages_accepts_a_live_token_and_401s_once_it_expires_by_the_clock() {
    let mock = MockProvider::start().await.unwrap();
    let clock = manual_clock(&mock);
    let login = mock.issue_login("a@example.com");
    let r = messages(&mock, &login.access_token, json!({"model": "claude-x", "max_tokens": 5})).await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["anthropic-ratelimit-unified-status"], "allowed");
    assert!(r.headers().contains_key("anthropic-ratelimit-unified-5h-utilization"));
    assert!(r.headers().contains_key("anthropic-ratelimit-unified-7d-utilization"));
    let body: Value = r.json().await.unwrap();
    assert_eq!((body["type"].as_str(), body["model"].as_str()), (Some("message"), Some("claude-x")));
    assert_eq!(body["content"][0]["text"], "Hello from the mock.");
    let seen = mock.last_messages_request().unwrap();
    assert_eq!(seen.email.as_deref(), Some("a@example.com"));
    assert_eq!(seen.anthropic_version.as_deref(), Some("2023-06-01"));
    assert_eq!(seen.anthropic_beta.as_deref(), Some("claude-code-20250219,oauth-2025-04-20"));
    assert_eq!(seen.body, json!({"model": "claude-x", "max_tokens": 5}));

    clock.advance(chrono::Duration::hours(8) - chrono::Duration::seconds(1));
    assert!(mock.is_access_token_valid(&login.access_token));
    clock.advance(chrono::Duration::seconds(1));
    assert!(!mock.is_access_token_valid(&login.access_token));
    let r = messages(&mock, &login.access_token, json!({"model": "claude-x", "max_tokens": 5})).await;
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"type": "error", "error": {"type": "authentication_error", "message": "OAuth token has expired."}})
    );
    let r = messages(&mock, "sk-ant-oat01-unknown", json!({"model": "m"})).await;
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(mock.last_messages_request().unwrap().email, None);
    let c = mock.counts();
    assert_eq!((c.messages_ok, c.messages_401), (1, 2));
}

#[tokio::test]
async fn access_lifetime_is_configurable() {
    let mock = MockProvider::start().await.unwrap();
    let clock = manual_clock(&mock);
    mock.set_access_lifetime(Duration::from_secs(60));
    let login = mock.issue_login("a@example.com");
    assert_eq!(login.expires_in, 60);
    assert_eq!(login.expires_at_ms, (clock_now(&clock) + chrono::Duration::seconds(60)).timestamp_millis());
    clock.advance(chrono::Duration::seconds(61));
    assert!(!mock.is_access_token_valid(&login.access_token));
}

fn clock_now(clock: &ManualClock) -> DateTime<Utc> {
    use tokenkeeper_core::Clock;
    clock.now()
}

#[tokio::test]
async fn messages_requires_version_and_oauth_beta_headers() {
    let mock = MockProvider::start().await.unwrap();
    let login = mock.issue_login("a@example.com");
    let url = format!("{}/v1/messages", mock.api_base_url());
    let body = json!({"model": "m", "max_tokens": 5});
    let no_beta = http()
        .post(&url)
        .bearer_auth(&login.access_token)
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(no_beta.status().as_u16(), 400);
    let no_version = http()
        .post(&url)
        .bearer_auth(&login.access_token)
        .header("anthropic-beta", "oauth-2025-04-20")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(no_version.status().as_u16(), 400);
}

#[tokio::test]
async fn messages_faults_401_and_429_with_reset_headers() {
    let mock = MockProvider::start().await.unwrap();
    let clock = manual_clock(&mock);
    let login = mock.issue_login("a@example.com");
    mock.push_fault(Fault::Messages429 { reset_secs: 600 });
    mock.push_fault(Fault::Messages401);
    let body = json!({"model": "m", "max_tokens": 5});
    let r = messages(&mock, &login.access_token, body.clone()).await;
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(r.headers()["anthropic-ratelimit-unified-status"], "rejected");
    let reset = clock_now(&clock).timestamp() + 600;
    assert_eq!(r.headers()["anthropic-ratelimit-unified-reset"], reset.to_string().as_str());
    assert_eq!(r.headers()["retry-after"], "600");
    assert_eq!(messages(&mock, &login.access_token, body.clone()).await.status().as_u16(), 401);
    assert_eq!(messages(&mock, &login.access_token, body).await.status().as_u16(), 200);
    let c = mock.counts();
    assert_eq!((c.messages_429, c.messages_401, c.messages_ok, c.faults_served), (1, 1, 1, 2));
}

#[tokio::test]
async fn streaming_messages_send_the_standard_event_sequence() {
    let mock = MockProvider::start().await.unwrap();
    let login = mock.issue_login("a@example.com");
    let r = messages(&mock, &login.access_token, json!({"model": "m", "max_tokens": 5, "stream": true})).await;
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    assert_eq!(r.headers()["anthropic-ratelimit-unified-status"], "allowed");
    let text = r.text().await.unwrap();
    let mut names = Vec::new();
    let mut reply = String::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let name = block.lines().find_map(|l| l.strip_prefix("event: ")).unwrap();
        let data: Value = serde_json::from_str(block.lines().find_map(|l| l.strip_prefix("data: ")).unwrap()).unwrap();
        assert_eq!(data["type"], name, "event name and data type agree");
        if name == "content_block_delta" {
            reply.push_str(data["delta"]["text"].as_str().unwrap());
        }
        names.push(name.to_owned());
    }
    let mut want = vec!["message_start", "content_block_start", "ping"];
    want.extend(std::iter::repeat_n("content_block_delta", 4));
    want.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, want);
    assert_eq!(reply, "Hello from the mock.");
}

#[tokio::test]
async fn usage_needs_a_live_token() {
    let mock = MockProvider::start().await.unwrap();
    let login = mock.issue_login("a@example.com");
    let url = format!("{}/api/oauth/usage", mock.api_base_url());
    let ok = http().get(&url).bearer_auth(&login.access_token).send().await.unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    let body: Value = ok.json().await.unwrap();
    assert!(body["five_hour"]["utilization"].is_number() && body["seven_day"]["resets_at"].is_string());
    let bad = http().get(&url).bearer_auth("sk-ant-oat01-nope").send().await.unwrap();
    assert_eq!(bad.status().as_u16(), 401);
    assert_eq!(mock.counts().usage_requests, 2);
}

#[tokio::test]
async fn urls_and_debug_output() {
    let mock = MockProvider::start().await.unwrap();
    let base = mock.base_url();
    assert!(base.starts_with("http://127.0.0.1:") && !base.ends_with(":0"));
    assert_eq!(mock.token_url(), format!("{base}/v1/oauth/token"));
    assert_eq!(mock.authorize_url(), format!("{base}/oauth/authorize"));
    assert_eq!(mock.redirect_uri(), format!("{base}/oauth/code/callback"));
    assert_eq!(mock.api_base_url(), base);
    assert_eq!(mock.client_id(), "9d1c250a-e61b-44d9-88ed-5944d1962f5e");
    let login = mock.issue_login("a@example.com");
    let shown = format!("{login:?}");
    assert!(!shown.contains(&login.access_token[13..]) && !shown.contains(&login.refresh_token[13..]), "{shown}");
}

#[tokio::test]
async fn stop_closes_the_listener() {
    let mock = MockProvider::start().await.unwrap();
    let url = mock.token_url();
    mock.stop().await;
    let err = reqwest::Client::new().post(&url).json(&json!({})).send().await;
    assert!(err.is_err(), "still answering after stop");
}

#[test]
fn the_binary_prints_its_urls_and_stops_on_sigterm() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tokenkeeper-mock"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let info: Value = serde_json::from_str(&line).unwrap();
    let base = info["base_url"].as_str().unwrap();
    assert!(base.starts_with("http://127.0.0.1:"));
    assert_eq!(info["token_url"], format!("{base}/v1/oauth/token"));
    assert_eq!(info["authorize_url"], format!("{base}/oauth/authorize"));
    assert_eq!(info["redirect_uri"], format!("{base}/oauth/code/callback"));
    // It answers on the announced address.
    let addr: std::net::SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    assert!(std::net::TcpStream::connect(addr).is_ok());

    let killed = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "mock binary did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn the_binary_refuses_unknown_arguments() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokenkeeper-mock")).arg("--nope").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown argument"));
}

#[tokio::test]
async fn a_cut_stream_breaks_the_connection_and_per_account_faults_apply_to_that_account() {
    let mock = MockProvider::start().await.unwrap();
    let a = mock.issue_login("a@example.com");
    let b = mock.issue_login("b@example.com");
    mock.push_account_fault("a@example.com", Fault::StreamCut { after_events: 3 });
    let r = messages(&mock, &b.access_token, json!({"model": "m", "max_tokens": 5, "stream": true})).await;
    assert!(r.text().await.unwrap().contains("message_stop"), "b is not affected");
    let r = messages(&mock, &a.access_token, json!({"model": "m", "max_tokens": 5, "stream": true})).await;
    assert_eq!(r.status().as_u16(), 200);
    let err = r.bytes().await;
    assert!(err.is_err(), "a cut stream is an error for the client, got {:?}", err.map(|b| b.len()));
    assert_eq!(mock.counts().streams_cut, 1);
    let recorded = mock.requests();
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[1].credential, tokenkeeper_mock::Credential::OAuth("a@example.com".into()));
    assert!(!format!("{:?}", recorded[1]).contains(&a.access_token), "Debug hides the token");
}

fn shape_authorize_url(mock: &MockProvider, shape: tokenkeeper_mock::Shape, p: &Pkce, redirect: &str) -> String {
    use tokenkeeper_mock::{Shape, CODEX_CLIENT_ID, GEMINI_CLIENT_ID};
    let (client, scope, extra): (&str, &str, Vec<(&str, &str)>) = match shape {
        Shape::Codex => (
            CODEX_CLIENT_ID,
            "openid profile email offline_access",
            vec![("id_token_add_organizations", "true"), ("codex_cli_simplified_flow", "true")],
        ),
        _ => (GEMINI_CLIENT_ID, "https://www.googleapis.com/auth/cloud-platform", vec![("access_type", "offline")]),
    };
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", client),
        ("redirect_uri", redirect),
        ("scope", scope),
        ("code_challenge", p.challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("state", p.state.as_str()),
    ];
    params.extend(extra);
    url::Url::parse_with_params(&mock.shape_authorize_url(shape), params).unwrap().to_string()
}

fn code_of(redirected: &str) -> String {
    url::Url::parse(redirected).unwrap().query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned()
}

async fn post_form(mock: &MockProvider, shape: tokenkeeper_mock::Shape, fields: &[(&str, &str)]) -> (u16, Value) {
    let resp = http().post(mock.shape_token_url(shape)).form(fields).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn codex_code_exchange_is_a_form_checked_against_pkce_and_answers_jwts() {
    use tokenkeeper_mock::{Shape, CODEX_CLIENT_ID};
    let mock = MockProvider::start().await.unwrap();
    let p = pkce();
    let redirect = "http://localhost:1455/auth/callback";
    // Extra Codex parameters are required.
    let bare = shape_authorize_url(&mock, Shape::Google, &p, redirect).replace("access_type=offline", "");
    assert!(mock.authorize_shape(Shape::Codex, &bare, "dev@example.com").is_err());
    let landed = mock
        .authorize_shape(Shape::Codex, &shape_authorize_url(&mock, Shape::Codex, &p, redirect), "dev@example.com")
        .unwrap();
    assert!(landed.starts_with(redirect) && landed.contains(&format!("state={}", p.state)), "{landed}");
    let code = code_of(&landed);
    let good = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", redirect),
        ("client_id", CODEX_CLIENT_ID),
        ("code_verifier", p.verifier.as_str()),
    ];
    // JSON is refused for the code exchange (Codex posts a form).
    let json_body: serde_json::Map<String, Value> = good.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
    let resp = http().post(mock.shape_token_url(Shape::Codex)).json(&json_body).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    // A wrong verifier is refused, and spends the code.
    let mut wrong = good;
    wrong[4] = ("code_verifier", "not-the-verifier");
    assert_eq!(post_form(&mock, Shape::Codex, &wrong).await.0, 400);
    assert_eq!(post_form(&mock, Shape::Codex, &good).await.0, 400, "the code is single-use");

    let p = pkce();
    let code = code_of(
        &mock
            .authorize_shape(Shape::Codex, &shape_authorize_url(&mock, Shape::Codex, &p, redirect), "dev@example.com")
            .unwrap(),
    );
    let mut ok = good;
    ok[1] = ("code", code.as_str());
    ok[4] = ("code_verifier", p.verifier.as_str());
    let (status, body) = post_form(&mock, Shape::Codex, &ok).await;
    assert_eq!(status, 200, "{body}");
    let claims = |jwt: &str| -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(jwt.split('.').nth(1).unwrap()).unwrap()).unwrap()
    };
    let id = claims(body["id_token"].as_str().unwrap());
    assert_eq!(id["https://api.openai.com/auth"]["chatgpt_account_id"], "acct-dev");
    assert!(claims(body["access_token"].as_str().unwrap())["exp"].is_i64());
    assert!(body["refresh_token"].as_str().is_some_and(|r| !r.is_empty()));
    let counts = mock.shape_counts(Shape::Codex);
    assert_eq!((counts.codes_exchanged, counts.codes_rejected), (1, 2));
}

#[tokio::test]
async fn google_code_exchange_needs_the_secret_and_answers_googles_shape() {
    use tokenkeeper_mock::{Shape, GEMINI_CLIENT_ID, GEMINI_CLIENT_SECRET};
    let mock = MockProvider::start().await.unwrap();
    let p = pkce();
    let redirect = "https://codeassist.google.com/authcode";
    let landed = mock
        .authorize_shape(Shape::Google, &shape_authorize_url(&mock, Shape::Google, &p, redirect), "g@example.com")
        .unwrap();
    let code = code_of(&landed);
    let mut fields = vec![
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", redirect),
        ("client_id", GEMINI_CLIENT_ID),
        ("code_verifier", p.verifier.as_str()),
    ];
    assert_eq!(post_form(&mock, Shape::Google, &fields).await.0, 401, "no client secret");
    fields.push(("client_secret", GEMINI_CLIENT_SECRET));
    let (status, body) = post_form(&mock, Shape::Google, &fields).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["access_token"].as_str().unwrap().starts_with("ya29."));
    assert!(body["refresh_token"].as_str().unwrap().starts_with("1//"));
    assert!(body["id_token"].is_string() && body["scope"].is_string());
    assert_eq!(mock.shape_counts(Shape::Google).codes_exchanged, 1);
}
