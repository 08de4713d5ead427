//! `POST /oauth/start?provider=codex` and `/oauth/exchange-code` log a Codex account in
//! through the same provider flow as the CLI (parked in the store with its provider and
//! redirect URI, so any replica can finish it); a provider without a flow is a 400 that says to
//! push instead; no token or code comes back in any answer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use serde_json::json;
use support::{env_with, ADMIN};
use tokenkeeper_core::config::{ProviderConfig, CODEX};
use tokenkeeper_mock::{MockProvider, Shape};

#[tokio::test]
async fn codex_logs_in_through_the_api_with_the_pasted_redirect_url() {
    let openai = MockProvider::start().await.unwrap();
    let (token_url, authorize_url) = (openai.shape_token_url(Shape::Codex), openai.shape_authorize_url(Shape::Codex));
    let e = env_with(move |config| {
        let codex = ProviderConfig { token_url, authorize_url, ..ProviderConfig::builtin(CODEX).unwrap() };
        config.providers.insert(CODEX.to_owned(), codex);
        let corp = ProviderConfig {
            kind: tokenkeeper_core::config::ProviderKind::Oauth2,
            token_url: "http://127.0.0.1:9/token".into(),
            client_id: "tk".into(),
            authorize_url: String::new(),
            redirect_uri: String::new(),
            ..ProviderConfig::default()
        };
        config.providers.insert("corp".to_owned(), corp);
    })
    .await;
    openai.set_clock(Arc::new(e.clock.clone()));

    let started = e.post("/oauth/start?provider=codex", ADMIN, "").await.json();
    let url = started["authorize_url"].as_str().unwrap();
    assert!(url.starts_with(&openai.shape_authorize_url(Shape::Codex)), "{url}");
    let landed = openai.authorize_shape(Shape::Codex, url, "dev@example.com").unwrap();

    // Another attempt's state: no pending login matches it.
    let state = started["state"].as_str().unwrap();
    let wrong = landed.replace(&format!("state={state}"), "state=someone-elses");
    let body = json!({"code": wrong, "account_email": "dev"}).to_string();
    assert!(e.post("/oauth/exchange-code", ADMIN, &body).await.status.is_client_error());

    let body = json!({"code": landed, "account_email": "dev"}).to_string();
    let answer = e.post("/oauth/exchange-code", ADMIN, &body).await;
    assert_eq!(answer.status.as_u16(), 200, "{}", answer.text);
    let v = answer.json();
    assert_eq!((v["result"].as_str(), v["provider_email"].as_str()), (Some("created"), Some("dev@example.com")));
    let account = e.account("dev").await.unwrap();
    assert_eq!(account.provider, "codex");
    let data: serde_json::Value =
        serde_json::from_str(account.credential.provider_data.as_ref().unwrap().expose()).unwrap();
    assert_eq!(data["account_id"], "acct-dev");
    assert_eq!(openai.shape_counts(Shape::Codex).codes_exchanged, 1);
    for (_, text) in e.seen() {
        assert!(!text.contains(account.credential.access_token.expose()));
        assert!(!text.contains(account.credential.refresh_token.as_ref().unwrap().expose()));
    }

    let refused = e.post("/oauth/start?provider=corp", ADMIN, "").await.expect_error(400);
    assert!(refused["error"].as_str().unwrap().contains("provider corp has no login flow"), "{refused}");
}
