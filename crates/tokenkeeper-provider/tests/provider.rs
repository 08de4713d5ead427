//! The OAuth client against the mock provider on loopback: grants, classification of every
//! kind of answer, the full PKCE login, and that no token ever shows in what gets printed.

// Test helpers outside #[test] functions panic on purpose when something is off.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokenkeeper_core::config::ProviderConfig;
use tokenkeeper_core::{Credential, Secret};
use tokenkeeper_mock::{Fault, MockProvider};
use tokenkeeper_provider::{
    parse_pasted_code, LoginError, OAuthClient, PastedCode, PkceLogin, ProviderError, TokenOutcome,
};

fn config(mock: &MockProvider) -> ProviderConfig {
    ProviderConfig {
        token_url: mock.token_url(),
        authorize_url: mock.authorize_url(),
        redirect_uri: mock.redirect_uri(),
        client_id: mock.client_id().to_owned(),
        api_base_url: mock.api_base_url(),
        timeout: Duration::from_secs(10),
        ..ProviderConfig::default()
    }
}

fn scopes() -> Vec<String> {
    ProviderConfig::default().scopes
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

async fn setup() -> (MockProvider, OAuthClient) {
    let mock = MockProvider::start().await.unwrap();
    let client = OAuthClient::new(&config(&mock)).unwrap();
    (mock, client)
}

/// A port on loopback that nothing listens on.
async fn closed_port_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/v1/oauth/token")
}

fn transient_reason(outcome: TokenOutcome) -> String {
    match outcome {
        TokenOutcome::Transient { reason } => reason,
        other => panic!("expected Transient, got {other:?}"),
    }
}

#[tokio::test]
async fn refresh_rotates_and_the_spent_token_is_then_rejected() {
    let (mock, client) = setup().await;
    let login = mock.issue_login("a@example.com");
    let old = Secret::new(login.refresh_token.as_str());

    let TokenOutcome::Success(grant) = client.refresh(&old, &scopes()).await else { panic!("refresh failed") };
    let new_refresh = grant.refresh_token.clone().unwrap();
    assert_ne!(new_refresh, old);
    assert!(mock.is_access_token_valid(grant.access_token.expose()));
    assert_eq!(grant.expires_in, Duration::from_secs(28_800));
    assert_eq!(grant.scopes, scopes());
    assert_eq!(grant.email.as_deref(), Some("a@example.com"));
    assert_eq!(grant.organization.as_deref(), Some("a@example.com's Organization"));
    assert!(grant.account_uuid.is_some());
    let sent = mock.last_token_request().unwrap();
    assert_eq!(sent.grant_type.as_deref(), Some("refresh_token"));
    assert_eq!(sent.scope.as_deref(), Some("org:create_api_key user:profile user:inference"));
    assert_eq!(sent.client_id.as_deref(), Some(mock.client_id()));

    match client.refresh(&old, &scopes()).await {
        TokenOutcome::Rejected { reason } => {
            assert_eq!(reason, "HTTP 400 Bad Request: invalid_grant (Refresh token not found or invalid)")
        }
        other => panic!("reuse of a spent token: {other:?}"),
    }
    assert!(matches!(client.refresh(&new_refresh, &scopes()).await, TokenOutcome::Success(_)));
    let c = mock.counts();
    assert_eq!((c.refresh_ok, c.refresh_invalid_grant), (2, 1));
}

#[tokio::test]
async fn scope_is_left_out_when_there_are_none() {
    let (mock, client) = setup().await;
    let login = mock.issue_login("a@example.com");
    let outcome = client.refresh(&Secret::new(login.refresh_token.as_str()), &[]).await;
    let TokenOutcome::Success(grant) = outcome else { panic!("refresh failed") };
    assert_eq!(mock.last_token_request().unwrap().scope, None);
    // The mock then keeps the login's scopes.
    assert_eq!(grant.scopes, scopes());
}

#[tokio::test]
async fn an_answer_without_refresh_token_keeps_the_old_one() {
    let (mock, client) = setup().await;
    let login = mock.issue_login("a@example.com");
    let previous = Credential {
        access_token: Secret::new(login.access_token.as_str()),
        refresh_token: Some(Secret::new(login.refresh_token.as_str())),
        expires_at: now(),
        scopes: vec!["user:inference".into()],
        subscription_type: Some("max".into()),
        rate_limit_tier: Some("tier".into()),
        provider_data: None,
    };
    mock.push_fault(Fault::OmitRefreshToken);
    let TokenOutcome::Success(grant) = client.refresh(previous.refresh_token.as_ref().unwrap(), &scopes()).await else {
        panic!("refresh failed")
    };
    assert_eq!(grant.refresh_token, None);
    let access = grant.access_token.clone();
    let next = grant.into_credential(now(), Some(&previous));
    assert_eq!(next.access_token, access);
    assert_eq!(next.refresh_token, previous.refresh_token);
    assert_eq!(next.expires_at, now() + chrono::Duration::hours(8));
    assert_eq!(next.subscription_type.as_deref(), Some("max"));
    assert_eq!(next.rate_limit_tier.as_deref(), Some("tier"));
    // And the kept refresh token really is still live.
    assert!(matches!(client.refresh(next.refresh_token.as_ref().unwrap(), &scopes()).await, TokenOutcome::Success(_)));
}

#[tokio::test]
async fn each_kind_of_failure_is_classified_and_spends_nothing() {
    let (mock, client) = setup().await;
    let login = mock.issue_login("a@example.com");
    let rt = Secret::new(login.refresh_token.as_str());

    mock.push_fault(Fault::InvalidGrant);
    assert!(
        matches!(client.refresh(&rt, &scopes()).await, TokenOutcome::Rejected { reason } if reason.contains("invalid_grant"))
    );

    mock.push_fault(Fault::RateLimited { retry_after_secs: 42 });
    match client.refresh(&rt, &scopes()).await {
        TokenOutcome::RateLimited { retry_after, reason } => {
            assert_eq!(retry_after, Some(Duration::from_secs(42)));
            assert!(reason.contains("429") && reason.contains("rate_limit_error"), "{reason}");
        }
        other => panic!("{other:?}"),
    }

    mock.push_fault(Fault::ServerError);
    let reason = transient_reason(client.refresh(&rt, &scopes()).await);
    assert_eq!(reason, "HTTP 500 Internal Server Error: server_error (Internal server error)");

    mock.push_fault(Fault::BadGateway);
    let reason = transient_reason(client.refresh(&rt, &scopes()).await);
    assert_eq!(reason, "HTTP 502 Bad Gateway with an HTML page (Cloudflare?)");

    mock.push_fault(Fault::Html);
    let reason = transient_reason(client.refresh(&rt, &scopes()).await);
    assert_eq!(reason, "HTTP 200 OK with an HTML page (Cloudflare?)");

    assert_eq!(mock.counts().faults_served, 5);
    assert!(matches!(client.refresh(&rt, &scopes()).await, TokenOutcome::Success(_)));
}

#[tokio::test]
async fn an_answer_slower_than_the_timeout_is_transient() {
    let mock = MockProvider::start().await.unwrap();
    let client = OAuthClient::new(&ProviderConfig { timeout: Duration::from_millis(30), ..config(&mock) }).unwrap();
    let login = mock.issue_login("a@example.com");
    mock.push_fault(Fault::Slow(Duration::from_secs(5)));
    let reason = transient_reason(client.refresh(&Secret::new(login.refresh_token.as_str()), &scopes()).await);
    assert!(reason.contains("timed out after 0.03s"), "{reason}");
}

#[tokio::test]
async fn a_wrong_endpoint_says_so() {
    let mock = MockProvider::start().await.unwrap();
    let cfg = ProviderConfig { token_url: format!("{}/oauth/token", mock.base_url()), ..config(&mock) };
    let client = OAuthClient::new(&cfg).unwrap();
    let reason = transient_reason(client.refresh(&Secret::new("sk-ant-ort01-x"), &scopes()).await);
    assert!(reason.starts_with("the token endpoint answered 404: is token_url right?"), "{reason}");
}

#[tokio::test]
async fn no_listener_is_transient_and_probe_reports_it() {
    let url = closed_port_url().await;
    let client = OAuthClient::new(&ProviderConfig { token_url: url.clone(), ..ProviderConfig::default() }).unwrap();
    let reason = transient_reason(client.refresh(&Secret::new("sk-ant-ort01-x"), &scopes()).await);
    assert!(reason.starts_with("no answer from the token endpoint"), "{reason}");
    let err = client.probe().await.unwrap_err();
    assert!(matches!(err, ProviderError::Unreachable { .. }));
    assert_eq!(err.to_string(), format!("the token endpoint {url} is unreachable"));
}

#[tokio::test]
async fn probe_reaches_the_endpoint_without_spending_anything() {
    let (mock, client) = setup().await;
    let login = mock.issue_login("a@example.com");
    let rtt = client.probe().await.unwrap();
    assert!(rtt < Duration::from_secs(10));
    let c = mock.counts();
    assert_eq!((c.token_requests, c.refresh_ok, c.refresh_invalid_grant), (1, 0, 0));
    assert!(matches!(
        client.refresh(&Secret::new(login.refresh_token.as_str()), &scopes()).await,
        TokenOutcome::Success(_)
    ));
}

#[tokio::test]
async fn a_redirect_to_another_origin_is_not_followed() {
    let mock = MockProvider::start().await.unwrap();
    let target = mock.token_url();
    let app = axum::Router::new().route(
        "/v1/oauth/token",
        axum::routing::post(move || {
            let target = target.clone();
            async move { axum::response::Redirect::temporary(&target) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let cfg = ProviderConfig { token_url: format!("http://{addr}/v1/oauth/token"), ..config(&mock) };
    let client = OAuthClient::new(&cfg).unwrap();
    let login = mock.issue_login("a@example.com");
    let reason = transient_reason(client.refresh(&Secret::new(login.refresh_token.as_str()), &scopes()).await);
    assert!(reason.contains("307") && reason.contains("not followed") && reason.contains(&mock.base_url()), "{reason}");
    assert_eq!(mock.counts().token_requests, 0, "the refresh token reached the other host");
    server.abort();
}

#[tokio::test]
async fn full_login_through_the_mock() {
    let (mock, client) = setup().await;
    let login = PkceLogin::new();
    let url = client.authorize_url(&login);
    let query: std::collections::HashMap<String, String> =
        url::Url::parse(&url).unwrap().query_pairs().into_owned().collect();
    assert_eq!(query["code"], "true");
    assert_eq!(query["scope"], "org:create_api_key user:profile user:inference");
    assert_eq!(query["code_challenge"], login.challenge);
    assert_eq!(query["state"], login.state);
    assert!(url.starts_with(&format!("{}?code=true&client_id=", mock.authorize_url())), "{url}");

    let shown = mock.authorize(&url, "new@example.com").unwrap();
    let pasted = parse_pasted_code(&format!("  {shown}\n"), &login.state).unwrap();
    let TokenOutcome::Success(grant) = client.exchange_code(&pasted, &login).await else { panic!("exchange failed") };
    assert_eq!(grant.email.as_deref(), Some("new@example.com"));
    let sent = mock.last_token_request().unwrap();
    assert_eq!(sent.redirect_uri.as_deref(), Some(mock.redirect_uri().as_str()));
    let cred = grant.into_credential(now(), None);
    assert!(cred.is_refreshable() && cred.has_inference_scope());
    assert!(matches!(
        client.refresh(cred.refresh_token.as_ref().unwrap(), &cred.scopes).await,
        TokenOutcome::Success(_)
    ));
    assert_eq!(mock.counts().exchange_ok, 1);
}

#[tokio::test]
async fn wrong_verifier_or_state_is_rejected() {
    let (mock, client) = setup().await;
    let login = PkceLogin::new();
    let shown = mock.authorize(&client.authorize_url(&login), "new@example.com").unwrap();
    let pasted = parse_pasted_code(&shown, &login.state).unwrap();

    let other = PkceLogin::new();
    assert_eq!(parse_pasted_code(&shown, &other.state).unwrap_err(), LoginError::StateMismatch);
    let wrong_verifier = PkceLogin { verifier: other.verifier.clone(), ..login.clone() };
    match client.exchange_code(&pasted, &wrong_verifier).await {
        TokenOutcome::Rejected { reason } => assert!(reason.contains("code_verifier does not match"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let wrong_state = PastedCode { code: pasted.code.clone(), state: other.state.clone() };
    match client.exchange_code(&wrong_state, &login).await {
        TokenOutcome::Rejected { reason } => assert!(reason.contains("state does not match"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(mock.counts().exchange_rejected, 2);
    // The right pair still works: rejections did not burn the code.
    assert!(matches!(client.exchange_code(&pasted, &login).await, TokenOutcome::Success(_)));
}

#[tokio::test]
async fn nothing_printed_ever_contains_a_token() {
    let (mock, client) = setup().await;
    let login = mock.issue_login("a@example.com");
    let mut secrets = vec![login.access_token.clone(), login.refresh_token.clone()];
    let rt = Secret::new(login.refresh_token.as_str());
    let mut printed: Vec<String> = Vec::new();
    let mut show = |debug: String, display: String| {
        printed.push(debug);
        printed.push(display);
    };

    let mut outcomes = Vec::new();
    for fault in [
        Some(Fault::InvalidGrant),
        Some(Fault::RateLimited { retry_after_secs: 3 }),
        Some(Fault::ServerError),
        Some(Fault::BadGateway),
        Some(Fault::Html),
        Some(Fault::OmitRefreshToken),
        None,
    ] {
        if let Some(f) = fault {
            mock.push_fault(f);
        }
        outcomes.push(client.refresh(&rt, &scopes()).await);
    }
    // Spent now: a real rejection.
    outcomes.push(client.refresh(&rt, &scopes()).await);

    let pkce = PkceLogin::new();
    secrets.push(pkce.verifier.expose().to_owned());
    let shown = mock.authorize(&client.authorize_url(&pkce), "b@example.com").unwrap();
    let pasted = parse_pasted_code(&shown, &pkce.state).unwrap();
    secrets.push(pasted.code.expose().to_owned());
    outcomes.push(client.exchange_code(&pasted, &PkceLogin { verifier: Secret::new("wrong"), ..pkce.clone() }).await);
    outcomes.push(client.exchange_code(&pasted, &pkce).await);
    assert_eq!(
        outcomes.iter().map(TokenOutcome::kind).collect::<Vec<_>>(),
        [
            "rejected",
            "rate_limited",
            "transient",
            "transient",
            "transient",
            "success",
            "success",
            "rejected",
            "rejected",
            "success"
        ]
    );

    for outcome in &outcomes {
        if let TokenOutcome::Success(grant) = outcome {
            secrets.push(grant.access_token.expose().to_owned());
            if let Some(r) = &grant.refresh_token {
                secrets.push(r.expose().to_owned());
            }
            let cred = grant.clone().into_credential(now(), None);
            show(format!("{cred:?}"), format!("{cred:#?}"));
            show(format!("{grant:#?}"), format!("{:?}", grant.access_token));
        }
        show(format!("{outcome:?}"), format!("{outcome}"));
    }
    show(format!("{pkce:?}"), format!("{pasted:?}"));
    let unreachable = OAuthClient::new(&ProviderConfig { token_url: closed_port_url().await, ..config(&mock) })
        .unwrap()
        .probe()
        .await
        .unwrap_err();
    show(format!("{unreachable:?}"), format!("{unreachable}"));
    for err in [
        parse_pasted_code(&shown, "other").unwrap_err(),
        parse_pasted_code(shown.split('#').next().unwrap(), &pkce.state).unwrap_err(),
    ] {
        show(format!("{err:?}"), format!("{err}"));
    }
    show(format!("{client:?}"), client.authorize_url(&pkce));

    assert!(secrets.len() >= 8);
    for text in &printed {
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "a token leaked into: {text}");
        }
    }
}
