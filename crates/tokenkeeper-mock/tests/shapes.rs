//! The Codex-, Google- and generic-shaped token endpoints over real HTTP: the exact answers a
//! client must cope with.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::DateTime;
use serde_json::{json, Value};
use tokenkeeper_core::ManualClock;
use tokenkeeper_mock::{
    Encoding, Fault, GenericShape, MockProvider, Shape, CODEX_CLIENT_ID, GEMINI_CLIENT_ID, GEMINI_CLIENT_SECRET,
};

async fn answer(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn payload(jwt: &str) -> Value {
    let middle = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(middle).unwrap()).unwrap()
}

#[tokio::test]
async fn codex_shape_rotates_jwts_and_answers_a_reused_token_as_openai_does() {
    let mock = MockProvider::start().await.unwrap();
    let clock = Arc::new(ManualClock::new(DateTime::from_timestamp(1_800_000_000, 0).unwrap()));
    mock.set_clock(clock.clone());
    let login = mock.issue_shape_login(Shape::Codex, "c@example.com");
    assert_eq!(payload(&login.access_token)["exp"], json!(1_800_000_000 + 10 * 86_400));
    let body =
        json!({"client_id": CODEX_CLIENT_ID, "grant_type": "refresh_token", "refresh_token": login.refresh_token});
    let http = reqwest::Client::new();
    let url = mock.shape_token_url(Shape::Codex);
    let (status, ok) = answer(http.post(&url).json(&body).send().await.unwrap()).await;
    assert_eq!(status, 200, "{ok}");
    assert!(ok.get("expires_in").is_none(), "the expiry is only in the JWT");
    assert_ne!(ok["refresh_token"], json!(login.refresh_token));
    assert_eq!(payload(ok["id_token"].as_str().unwrap())["email"], json!("c@example.com"));

    let (status, reused) = answer(http.post(&url).json(&body).send().await.unwrap()).await;
    assert_eq!(status, 401);
    assert_eq!(reused["error"]["code"], json!("refresh_token_reused"));
    assert_eq!(reused["error"]["type"], json!("invalid_request_error"));

    // A form body is refused and spends nothing.
    let fresh = mock.issue_shape_login(Shape::Codex, "d@example.com");
    let form =
        [("client_id", CODEX_CLIENT_ID), ("grant_type", "refresh_token"), ("refresh_token", &fresh.refresh_token)];
    let (status, _) = answer(http.post(&url).form(&form).send().await.unwrap()).await;
    assert_eq!(status, 400);
    let counts = mock.shape_counts(Shape::Codex);
    assert_eq!((counts.requests, counts.refresh_ok, counts.refresh_rejected, counts.wrong_encoding), (3, 1, 1, 1));
    // Token faults apply here too.
    mock.push_fault(Fault::ServerError);
    let (status, _) = answer(http.post(&url).json(&body).send().await.unwrap()).await;
    assert_eq!(status, 500);
}

#[tokio::test]
async fn google_shape_wants_a_form_with_the_secret_and_does_not_rotate() {
    let mock = MockProvider::start().await.unwrap();
    let login = mock.issue_shape_login(Shape::Google, "g@example.com");
    let http = reqwest::Client::new();
    let url = mock.shape_token_url(Shape::Google);
    let form = |secret: &'static str| {
        vec![
            ("client_id", GEMINI_CLIENT_ID.to_owned()),
            ("client_secret", secret.to_owned()),
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", login.refresh_token.clone()),
        ]
    };
    for _ in 0..2 {
        let (status, ok) = answer(http.post(&url).form(&form(GEMINI_CLIENT_SECRET)).send().await.unwrap()).await;
        assert_eq!(status, 200, "{ok}");
        assert_eq!(ok["expires_in"], json!(3599));
        assert!(ok.get("refresh_token").is_none());
        assert!(ok["access_token"].as_str().unwrap().starts_with("ya29."));
    }
    let (status, bad) = answer(http.post(&url).form(&form("wrong")).send().await.unwrap()).await;
    assert_eq!((status, bad["error"].clone()), (401, json!("invalid_client")));
    let (status, _) = answer(http.post(&url).json(&json!({"grant_type": "refresh_token"})).send().await.unwrap()).await;
    assert_eq!(status, 400);
    mock.revoke_shape(Shape::Google, &login.refresh_token);
    let (status, dead) = answer(http.post(&url).form(&form(GEMINI_CLIENT_SECRET)).send().await.unwrap()).await;
    assert_eq!((status, dead["error"].clone()), (400, json!("invalid_grant")));
    let c = mock.shape_counts(Shape::Google);
    assert_eq!((c.refresh_ok, c.refresh_rejected, c.bad_client, c.wrong_encoding), (2, 1, 1, 1));
    let last = mock.last_shape_request(Shape::Google).unwrap();
    assert_eq!(last.content_type.as_deref(), Some("application/x-www-form-urlencoded"));
}

#[tokio::test]
async fn generic_shape_follows_its_settings() {
    let mock = MockProvider::start().await.unwrap();
    mock.set_generic_shape(GenericShape { body: Encoding::Json, rotating: false, ..GenericShape::default() });
    let login = mock.issue_shape_login(Shape::Generic, "x@example.com");
    let body =
        json!({"client_id": "generic-client", "grant_type": "refresh_token", "refresh_token": login.refresh_token});
    let http = reqwest::Client::new();
    let url = mock.shape_token_url(Shape::Generic);
    for _ in 0..2 {
        let (status, ok) = answer(http.post(&url).json(&body).send().await.unwrap()).await;
        assert_eq!(status, 200, "{ok}");
        assert!(ok.get("refresh_token").is_none());
    }
    mock.set_generic_shape(GenericShape { body: Encoding::Json, rotating: true, ..GenericShape::default() });
    let (status, ok) = answer(http.post(&url).json(&body).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert!(ok["refresh_token"].is_string());
    let (status, dead) = answer(http.post(&url).json(&body).send().await.unwrap()).await;
    assert_eq!((status, dead["error"].clone()), (400, json!("invalid_grant")));
    assert_eq!(mock.shape_counts(Shape::Generic).refresh_ok, 3);
}
