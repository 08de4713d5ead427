//! Every provider's login behind `Provider::login()`, against the mock: Codex's and Gemini
//! CLI's authorize URLs (their own parameters, a loopback redirect when asked), the code
//! exchange as a form checked against the PKCE challenge, the grant fitted as a refresh's is
//! (JWT expiry, `id_token` and Codex's account id in `provider_data`, the email); Anthropic's
//! flow is its client's; a generic provider and API keys have none.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::Utc;
use serde_json::Value;
use tokenkeeper_core::config::{ProviderConfig, ANTHROPIC, CODEX, GEMINI};
use tokenkeeper_core::Config;
use tokenkeeper_mock::{MockProvider, Shape};
use tokenkeeper_provider::codex::Codex;
use tokenkeeper_provider::gemini::Gemini;
use tokenkeeper_provider::{LoginError, PkceLogin, Provider, Providers, TokenOutcome};

fn cfg(mock: &MockProvider, id: &str, shape: Shape) -> ProviderConfig {
    ProviderConfig {
        token_url: mock.shape_token_url(shape),
        authorize_url: mock.shape_authorize_url(shape),
        ..ProviderConfig::builtin(id).unwrap()
    }
}

fn query(url: &str, key: &str) -> Option<String> {
    url::Url::parse(url).unwrap().query_pairs().find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
}

#[tokio::test]
async fn codex_login_exchanges_a_pasted_redirect_url_for_a_fitted_grant() {
    let mock = MockProvider::start().await.unwrap();
    let codex = Codex::new(&cfg(&mock, CODEX, Shape::Codex)).unwrap();
    let flow = codex.login().expect("Codex has a login flow");
    assert_eq!(flow.redirect_uri(), "http://localhost:1455/auth/callback");
    let loopback = flow.loopback().unwrap();
    assert_eq!((loopback.host.as_str(), loopback.port, loopback.path.as_str()), ("localhost", 1455, "/auth/callback"));

    let pkce = PkceLogin::new();
    let url = flow.authorize_url(&pkce, flow.redirect_uri());
    assert_eq!(query(&url, "state").as_deref(), Some(pkce.state.as_str()));
    assert_eq!(query(&url, "codex_cli_simplified_flow").as_deref(), Some("true"));
    assert!(query(&url, "scope").unwrap().contains("offline_access"));
    let landed = mock.authorize_shape(Shape::Codex, &url, "dev@example.com").unwrap();

    assert_eq!(flow.read_code(&landed, "another").unwrap_err(), LoginError::StateMismatch);
    let code = flow.read_code(&landed, &pkce.state).unwrap();
    let now = Utc::now();
    let TokenOutcome::Success(grant) = flow.exchange(&code, &pkce, flow.redirect_uri(), now).await else {
        panic!("the exchange failed")
    };
    assert_eq!(grant.email.as_deref(), Some("dev@example.com"));
    // Codex's answer has no expires_in: the expiry is the access token's `exp` (10 days).
    assert!(grant.expires_in.as_secs() > 9 * 86_400, "{:?}", grant.expires_in);
    let data: Value = serde_json::from_str(grant.provider_data.as_ref().unwrap().expose()).unwrap();
    assert_eq!(data["account_id"], "acct-dev");
    assert!(data["id_token"].as_str().is_some_and(|t| t.split('.').count() == 3));
    let req = mock.last_shape_request(Shape::Codex).unwrap();
    assert_eq!(req.content_type.as_deref(), Some("application/x-www-form-urlencoded"));
    assert_eq!(req.grant_type.as_deref(), Some("authorization_code"));
    assert!(!req.fields.contains("state"), "Codex sends no state in the exchange");

    // The same code again, or a wrong verifier: refused, with no secret in the reason.
    let outcome = flow.exchange(&code, &pkce, flow.redirect_uri(), now).await;
    let TokenOutcome::Rejected { reason } = outcome else { panic!("a spent code must be rejected: {outcome}") };
    assert!(!reason.contains(code.code.expose()) && !reason.contains(pkce.verifier.expose()), "{reason}");
}

#[tokio::test]
async fn gemini_login_takes_a_bare_code_or_a_loopback_redirect() {
    let mock = MockProvider::start().await.unwrap();
    let gemini = Gemini::new(&cfg(&mock, GEMINI, Shape::Google)).unwrap();
    let flow = gemini.login().expect("Gemini CLI has a login flow");
    assert_eq!(flow.redirect_uri(), "https://codeassist.google.com/authcode");
    let loopback = flow.loopback().unwrap();
    assert_eq!(loopback.port, 0, "Google allows any loopback port");

    for redirect in [flow.redirect_uri().to_owned(), loopback.redirect_uri(41234)] {
        let pkce = PkceLogin::new();
        let url = flow.authorize_url(&pkce, &redirect);
        assert_eq!(query(&url, "redirect_uri").as_deref(), Some(redirect.as_str()));
        assert_eq!(query(&url, "access_type").as_deref(), Some("offline"));
        let landed = mock.authorize_shape(Shape::Google, &url, "g@example.com").unwrap();
        let bare = query(&landed, "code").unwrap();
        let code = flow.read_code(&bare, &pkce.state).unwrap();
        let TokenOutcome::Success(grant) = flow.exchange(&code, &pkce, &redirect, Utc::now()).await else {
            panic!("the exchange failed")
        };
        assert_eq!(grant.expires_in.as_secs(), 3599);
        assert!(grant.refresh_token.is_some());
        assert_eq!(grant.email.as_deref(), Some("g@example.com"));
    }
    assert_eq!(mock.shape_counts(Shape::Google).codes_exchanged, 2);
}

#[test]
fn anthropic_has_its_flow_and_generic_providers_and_api_keys_have_none() {
    let text =
        "[providers.corp]\nkind = \"oauth2\"\ntoken_url = \"https://sso.example.com/token\"\nclient_id = \"tk\"\n";
    let providers = Providers::from_config(&Config::from_toml(text, std::path::Path::new("t.toml")).unwrap()).unwrap();
    let anthropic = providers.get(ANTHROPIC).unwrap();
    let flow = anthropic.login().unwrap();
    assert!(flow.loopback().is_none());
    let pkce = PkceLogin::new();
    let url = flow.authorize_url(&pkce, flow.redirect_uri());
    assert_eq!(query(&url, "code").as_deref(), Some("true"));
    assert_eq!(flow.read_code("abc#other", &pkce.state).unwrap_err(), LoginError::StateMismatch);
    assert!(providers.get("corp").unwrap().login().is_none());
    assert!(providers.get("anthropic-api-key").unwrap().login().is_none());
}
