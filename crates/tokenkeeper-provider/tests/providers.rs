//! Codex, Gemini CLI and a generic OAuth2 provider against the mock's endpoints of their
//! shapes: native files read and written back without losing a key, refresh with and without
//! rotation, dead logins rejected, the body encoding each provider must send (the mock refuses
//! the other), expiry from the JWT's `exp` or `expiry_date`, and no secret in what is printed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokenkeeper_core::config::{ExpirySource, ProviderConfig, Rotation, TokenBody, CODEX, GEMINI};
use tokenkeeper_core::{Config, Credential, Secret};
use tokenkeeper_mock::{Encoding, GenericShape, MockProvider, Shape, ShapeLogin, GEMINI_CLIENT_SECRET};
use tokenkeeper_provider::codex::Codex;
use tokenkeeper_provider::gemini::Gemini;
use tokenkeeper_provider::oauth2::GenericOAuth2;
use tokenkeeper_provider::{ApiKind, CredentialHeader, NativeFileError, Provider, Providers, TokenOutcome};

fn jwt(claims: &Value) -> String {
    let enc = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.c2lnbmF0dXJl", enc(&json!({"alg": "RS256", "typ": "JWT"})), enc(claims))
}

fn at(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(s, 0).unwrap()
}

fn codex_cfg(mock: &MockProvider) -> ProviderConfig {
    ProviderConfig { token_url: mock.shape_token_url(Shape::Codex), ..ProviderConfig::builtin(CODEX).unwrap() }
}

fn gemini_cfg(mock: &MockProvider) -> ProviderConfig {
    ProviderConfig { token_url: mock.shape_token_url(Shape::Google), ..ProviderConfig::builtin(GEMINI).unwrap() }
}

/// A stored credential for a login the mock issued, as an import would make it.
fn credential(login: &ShapeLogin) -> Credential {
    let mut data = serde_json::Map::new();
    if let Some(id) = &login.id_token {
        data.insert("id_token".into(), json!(id));
    }
    if let Some(a) = &login.account_id {
        data.insert("account_id".into(), json!(a));
    }
    Credential {
        access_token: Secret::new(login.access_token.as_str()),
        refresh_token: Some(Secret::new(login.refresh_token.as_str())),
        expires_at: DateTime::from_timestamp_millis(login.expires_at_ms).unwrap(),
        scopes: Vec::new(),
        subscription_type: None,
        rate_limit_tier: None,
        provider_data: (!data.is_empty()).then(|| Secret::new(Value::Object(data).to_string())),
    }
}

fn grant(outcome: TokenOutcome) -> tokenkeeper_provider::TokenGrant {
    match outcome {
        TokenOutcome::Success(g) => g,
        other => panic!("expected new tokens, got {other}"),
    }
}

fn rejected(outcome: TokenOutcome) -> String {
    match outcome {
        TokenOutcome::Rejected { reason } => reason,
        other => panic!("expected a rejection, got {other}"),
    }
}

/// The JSON values at every path, for comparing what must have survived.
fn at_path<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| &v[*k])
}

// ---------------------------------------------------------------------------------------------
// Codex

/// An auth.json shaped as Codex writes it (`AuthDotJson` with `to_string_pretty`), plus keys of
/// a future version at three levels.
fn codex_file(access: &str, refresh: &str, id_token: &str) -> String {
    serde_json::to_string_pretty(&json!({
        "auth_mode": "chatgpt",
        "OPENAI_API_KEY": null,
        "tokens": {
            "id_token": id_token,
            "access_token": access,
            "refresh_token": refresh,
            "account_id": "acct-0f3c",
            "x_future_token_field": {"nested": [1, {"deep": true}]}
        },
        "last_refresh": "2026-11-20T08:15:30.123456Z",
        "x_future_top": {"a": {"b": "c"}},
        "personal_access_token": null
    }))
    .unwrap()
}

#[test]
fn codex_auth_json_is_read_and_written_back_with_every_unknown_key() {
    let codex = Codex::new(&ProviderConfig::builtin(CODEX).unwrap()).unwrap();
    let file = codex.native_file().unwrap();
    let access =
        jwt(&json!({"exp": 1_800_000_000, "https://api.openai.com/auth": {"chatgpt_account_id": "acct-0f3c"}}));
    let id_token =
        jwt(&json!({"email": "dev@example.com", "https://api.openai.com/auth": {"chatgpt_plan_type": "pro"}}));
    let text = codex_file(&access, "rt-old-refresh-value", &id_token);
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert!(file.detect(&doc));

    let read = file.parse(&text, at(1_700_000_000)).unwrap();
    let c = &read.credential;
    assert_eq!(c.access_token.expose(), access);
    assert_eq!(c.refresh_token.as_ref().map(Secret::expose), Some("rt-old-refresh-value"));
    assert_eq!(c.expires_at, at(1_800_000_000), "expiry is the access token's exp");
    assert_eq!(read.email.as_deref(), Some("dev@example.com"));
    assert_eq!(c.subscription_type.as_deref(), Some("pro"));
    let data: Value = serde_json::from_str(c.provider_data.as_ref().unwrap().expose()).unwrap();
    assert_eq!(data, json!({"id_token": id_token, "account_id": "acct-0f3c"}));

    // Write back a refreshed credential with a new id_token.
    let new_access = jwt(&json!({"exp": 1_800_500_000}));
    let new_id = jwt(&json!({"email": "dev@example.com", "n": 2}));
    let refreshed = Credential {
        access_token: Secret::new(new_access.as_str()),
        refresh_token: Some(Secret::new("rt-new-refresh-value")),
        expires_at: at(1_800_500_000),
        provider_data: Some(Secret::new(json!({"id_token": new_id, "account_id": "acct-0f3c"}).to_string())),
        ..c.clone()
    };
    let now = at(1_800_000_100);
    let out = file.render(Some(&text), &refreshed, now).unwrap();
    let written: Value = serde_json::from_str(&out).unwrap();
    for path in [
        &["auth_mode"][..],
        &["OPENAI_API_KEY"],
        &["personal_access_token"],
        &["x_future_top"],
        &["x_future_top", "a", "b"],
        &["tokens", "x_future_token_field"],
        &["tokens", "x_future_token_field", "nested"],
        &["tokens", "account_id"],
    ] {
        assert_eq!(at_path(&written, path), at_path(&doc, path), "{path:?} changed");
    }
    assert_eq!(written["tokens"]["access_token"], json!(new_access));
    assert_eq!(written["tokens"]["refresh_token"], json!("rt-new-refresh-value"));
    assert_eq!(written["tokens"]["id_token"], json!(new_id));
    let last = DateTime::parse_from_rfc3339(written["last_refresh"].as_str().unwrap()).unwrap();
    assert_eq!(last, now, "last_refresh is set, or Codex ignores the tokens");
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&written), keys(&doc), "key order kept");
    assert_eq!(keys(&written["tokens"]), keys(&doc["tokens"]));
    // Read back, it is the refreshed credential.
    assert_eq!(file.parse(&out, now).unwrap().credential.access_token.expose(), new_access);
}

#[test]
fn codex_api_sends_the_chatgpt_account_id_codex_sends() {
    let codex = Codex::new(&ProviderConfig::builtin(CODEX).unwrap()).unwrap();
    let api = codex.api().unwrap();
    assert_eq!(api.kind, ApiKind::ChatGptCodex);
    assert_eq!(api.header, CredentialHeader::Bearer);
    let access = jwt(&json!({"exp": 1_800_000_000}));
    let id_token = jwt(&json!({"https://api.openai.com/auth": {"chatgpt_account_id": "acct-0f3c"}}));
    let read = codex.native_file().unwrap().parse(&codex_file(&access, "rt-x", &id_token), at(1_700_000_000)).unwrap();
    assert_eq!(api.extra_headers(&read.credential), [("ChatGPT-Account-ID", "acct-0f3c".to_owned())]);
    // Without an account id there is no header at all (never an empty one).
    let bare = Credential { provider_data: None, ..read.credential };
    assert!(api.extra_headers(&bare).is_empty());
}

#[test]
fn codex_refuses_what_would_break_the_cli() {
    let codex = Codex::new(&ProviderConfig::builtin(CODEX).unwrap()).unwrap();
    let file = codex.native_file().unwrap();
    let blank = codex_file("", "", "x.y.z");
    assert!(matches!(file.parse(&blank, at(0)), Err(NativeFileError::Blank { .. })));
    let e = file.parse("{\"tokens\": {\"access_token\": \"eyJsecret", at(0)).unwrap_err();
    assert!(matches!(e, NativeFileError::BadJson { .. }) && !e.to_string().contains("eyJsecret"), "{e}");
    assert!(matches!(file.parse(r#"{"tokens": 3}"#, at(0)), Err(NativeFileError::Field { field: "tokens", .. })));
    // Without an id_token anywhere the file would not load in Codex: refused, not half-written.
    let c = Credential {
        access_token: Secret::new("a"),
        refresh_token: Some(Secret::new("r")),
        expires_at: at(1_800_000_000),
        scopes: vec![],
        subscription_type: None,
        rate_limit_tier: None,
        provider_data: None,
    };
    let e = file.render(None, &c, at(1)).unwrap_err();
    assert!(matches!(e, NativeFileError::Field { field: "tokens.id_token", .. }), "{e}");
    assert!(matches!(file.render(Some("not json"), &c, at(1)), Err(NativeFileError::ExistingNotJson { .. })));
    // A new file has Codex's own top-level shape.
    let with_id = Credential { provider_data: Some(Secret::new(r#"{"id_token":"h.p.s"}"#)), ..c };
    let fresh: Value = serde_json::from_str(&file.render(None, &with_id, at(1)).unwrap()).unwrap();
    assert_eq!(fresh["OPENAI_API_KEY"], Value::Null);
    assert_eq!(fresh["tokens"]["id_token"], json!("h.p.s"));
    assert!(fresh["last_refresh"].is_string());
}

#[tokio::test]
async fn codex_refresh_rotates_once_and_a_spent_token_is_rejected() {
    let mock = MockProvider::start().await.unwrap();
    mock.set_shape_access_lifetime(Shape::Codex, Duration::from_secs(10 * 86_400));
    let codex = Codex::new(&codex_cfg(&mock)).unwrap();
    let login = mock.issue_shape_login(Shape::Codex, "dev@example.com");
    let old = credential(&login);

    let now = Utc::now();
    let g = grant(codex.refresh(&old, now).await);
    // The mock's answer has no expires_in: the lifetime is the JWT's exp (10 days), not the
    // one-hour fallback.
    let lifetime = g.expires_in.as_secs();
    assert!((10 * 86_400 - 5..=10 * 86_400).contains(&lifetime), "{lifetime}");
    let new_refresh = g.refresh_token.clone().unwrap();
    assert_ne!(new_refresh.expose(), login.refresh_token);
    let data: Value = serde_json::from_str(g.provider_data.as_ref().unwrap().expose()).unwrap();
    assert_ne!(data["id_token"], json!(login.id_token), "the new id_token is kept");
    assert_eq!(data["account_id"], json!(login.account_id));
    assert_eq!(g.email.as_deref(), Some("dev@example.com"));
    let req = mock.last_shape_request(Shape::Codex).unwrap();
    assert_eq!(req.content_type.as_deref(), Some("application/json"));
    let fields: Vec<&str> = req.fields.iter().map(String::as_str).collect();
    assert_eq!(fields, ["client_id", "grant_type", "refresh_token"], "what Codex sends: no scope");
    assert_eq!(req.client_id.as_deref(), Some("app_EMoamEEZ73f0CkXaXp7hrann"));

    // The spent token: 401 refresh_token_reused, a dead login.
    let reason = rejected(codex.refresh(&old, now).await);
    assert!(reason.contains("401") && reason.contains("refresh_token_reused"), "{reason}");
    assert!(!reason.contains(&login.refresh_token));
    let counts = mock.shape_counts(Shape::Codex);
    assert_eq!((counts.refresh_ok, counts.refresh_rejected, counts.wrong_encoding), (1, 1, 0));

    // The stored credential after the grant refreshes again (it rotated).
    let next = g.into_credential(now, Some(&old));
    grant(codex.refresh(&next, now).await);
    // A revoked one: refresh_token_invalidated.
    let other = mock.issue_shape_login(Shape::Codex, "b@example.com");
    mock.revoke_shape(Shape::Codex, &other.refresh_token);
    assert!(rejected(codex.refresh(&credential(&other), now).await).contains("refresh_token_invalidated"));
}

#[tokio::test]
async fn racing_codex_refreshes_spend_the_token_once() {
    let mock = MockProvider::start().await.unwrap();
    let codex = Arc::new(Codex::new(&codex_cfg(&mock)).unwrap());
    let c = credential(&mock.issue_shape_login(Shape::Codex, "race@example.com"));
    let (a, b) = tokio::join!(codex.refresh(&c, Utc::now()), codex.refresh(&c, Utc::now()));
    let kinds = [a.kind(), b.kind()];
    assert!(kinds.contains(&"success") && kinds.contains(&"rejected"), "{kinds:?}");
    assert_eq!(mock.shape_counts(Shape::Codex).refresh_ok, 1);
}

#[tokio::test]
async fn a_config_table_that_moves_codex_to_the_mock_keeps_its_client() {
    let mock = MockProvider::start().await.unwrap();
    let text = format!("[providers.codex]\ntoken_url = \"{}\"\n", mock.shape_token_url(Shape::Codex));
    let config = Config::from_toml(&text, Path::new("test.toml")).unwrap();
    let codex = Codex::new(&config.provider(CODEX)).unwrap();
    let c = credential(&mock.issue_shape_login(Shape::Codex, "cfg@example.com"));
    grant(codex.refresh(&c, Utc::now()).await);
    assert_eq!(mock.shape_counts(Shape::Codex).bad_client, 0);
}

#[test]
fn codex_is_delivered_by_its_file_under_codex_home() {
    let codex = Codex::new(&ProviderConfig::builtin(CODEX).unwrap()).unwrap();
    let file = codex.native_file().unwrap();
    assert_eq!(file.home_var(), Some("CODEX_HOME"));
    let env = |v: &str| (v == "CODEX_HOME").then(|| "/srv/codex".to_owned());
    assert_eq!(file.default_path(Path::new("/home/u"), &env), Path::new("/srv/codex/auth.json"));
    assert_eq!(file.default_path(Path::new("/home/u"), &|_| None), Path::new("/home/u/.codex/auth.json"));
    let c = credential(&ShapeLogin {
        access_token: "a".into(),
        refresh_token: "r".into(),
        id_token: None,
        account_id: None,
        expires_at_ms: 1,
    });
    assert!(codex.exec_env(&c).is_empty(), "Codex reads a ChatGPT login only from auth.json");
}

// ---------------------------------------------------------------------------------------------
// Gemini CLI

/// An oauth_creds.json as Gemini CLI writes it (google-auth-library's `Credentials`,
/// `JSON.stringify(…, null, 2)`), plus unknown keys at two levels.
fn gemini_file(access: &str, refresh: &str, id_token: &str, expiry_ms: i64) -> String {
    serde_json::to_string_pretty(&json!({
        "access_token": access,
        "refresh_token": refresh,
        "scope": "https://www.googleapis.com/auth/cloud-platform https://www.googleapis.com/auth/userinfo.profile openid https://www.googleapis.com/auth/userinfo.email",
        "token_type": "Bearer",
        "id_token": id_token,
        "expiry_date": expiry_ms,
        "x_future": {"deep": {"deeper": [1, 2]}}
    }))
    .unwrap()
}

#[test]
fn gemini_oauth_creds_are_read_and_written_back_with_every_unknown_key() {
    let gemini = Gemini::new(&ProviderConfig::builtin(GEMINI).unwrap()).unwrap();
    let file = gemini.native_file().unwrap();
    let id_token = jwt(&json!({"email": "g@example.com", "iss": "https://accounts.google.com"}));
    let text = gemini_file("ya29.a0-old-access", "1//0g-refresh-value", &id_token, 1_800_000_123_456);
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert!(file.detect(&doc));
    let read = file.parse(&text, at(0)).unwrap();
    assert_eq!(read.credential.expires_at.timestamp_millis(), 1_800_000_123_456, "expiry_date is in ms");
    assert_eq!(read.credential.scopes.len(), 4);
    assert_eq!(read.email.as_deref(), Some("g@example.com"));

    let refreshed = Credential {
        access_token: Secret::new("ya29.a0-new-access"),
        expires_at: DateTime::from_timestamp_millis(1_800_003_600_000).unwrap(),
        ..read.credential.clone()
    };
    let out = file.render(Some(&text), &refreshed, at(0)).unwrap();
    let written: Value = serde_json::from_str(&out).unwrap();
    for path in [&["x_future"][..], &["x_future", "deep", "deeper"], &["token_type"], &["id_token"], &["scope"]] {
        assert_eq!(at_path(&written, path), at_path(&doc, path), "{path:?} changed");
    }
    assert_eq!(written["access_token"], json!("ya29.a0-new-access"));
    assert_eq!(written["refresh_token"], json!("1//0g-refresh-value"), "the refresh token is kept");
    assert_eq!(written["expiry_date"], json!(1_800_003_600_000_i64));
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&written), keys(&doc));

    // Each provider claims only its own file.
    let codex = Codex::new(&ProviderConfig::builtin(CODEX).unwrap()).unwrap();
    assert!(!codex.native_file().unwrap().detect(&doc));
    let codex_doc: Value = serde_json::from_str(&codex_file("a", "r", "h.p.s")).unwrap();
    assert!(!file.detect(&codex_doc));
    let registry = Providers::new().with(Arc::new(codex)).with(Arc::new(gemini));
    assert_eq!(registry.detect_native(&doc).map(|p| p.id().to_owned()).as_deref(), Some(GEMINI));
    assert_eq!(registry.detect_native(&codex_doc).map(|p| p.id().to_owned()).as_deref(), Some(CODEX));
    assert!(registry.detect_native(&json!({"claudeAiOauth": {}})).is_none());
}

#[tokio::test]
async fn gemini_refresh_is_a_form_with_the_client_secret_and_keeps_the_refresh_token() {
    let mock = MockProvider::start().await.unwrap();
    let gemini = Gemini::new(&gemini_cfg(&mock)).unwrap();
    let login = mock.issue_shape_login(Shape::Google, "g@example.com");
    let old = credential(&login);
    let now = Utc::now();
    let g = grant(gemini.refresh(&old, now).await);
    assert_eq!(g.expires_in, Duration::from_secs(3599), "about an hour, from expires_in");
    assert_eq!(g.refresh_token, None, "Google does not rotate");
    assert!(g.id_token.is_some());
    let req = mock.last_shape_request(Shape::Google).unwrap();
    assert_eq!(req.content_type.as_deref(), Some("application/x-www-form-urlencoded"));
    let fields: Vec<&str> = req.fields.iter().map(String::as_str).collect();
    assert_eq!(fields, ["client_id", "client_secret", "grant_type", "refresh_token"]);
    let next = g.into_credential(now, Some(&old));
    assert_eq!(next.refresh_token.as_ref().map(Secret::expose), Some(login.refresh_token.as_str()));
    // The same refresh token works again.
    grant(gemini.refresh(&next, now).await);
    assert_eq!(mock.shape_counts(Shape::Google).refresh_ok, 2);

    mock.revoke_shape(Shape::Google, &login.refresh_token);
    let reason = rejected(gemini.refresh(&next, now).await);
    assert!(reason.contains("invalid_grant") && !reason.contains(&login.refresh_token), "{reason}");

    // Another client secret, from the environment variable the config names.
    let var = "TOKENKEEPER_TEST_GEMINI_SECRET_WRONG";
    std::env::set_var(var, "not-the-secret");
    let wrong =
        Gemini::new(&ProviderConfig { client_secret: None, client_secret_env: Some(var.into()), ..gemini_cfg(&mock) })
            .unwrap();
    let fresh = credential(&mock.issue_shape_login(Shape::Google, "h@example.com"));
    let reason = rejected(wrong.refresh(&fresh, now).await);
    assert!(reason.contains("invalid_client") && !reason.contains("not-the-secret"), "{reason}");
    assert_eq!(mock.shape_counts(Shape::Google).bad_client, 1);
}

#[test]
fn gemini_exec_gets_the_access_token_in_the_environment() {
    let gemini = Gemini::new(&ProviderConfig::builtin(GEMINI).unwrap()).unwrap();
    let c = credential(&ShapeLogin {
        access_token: "ya29.child".into(),
        refresh_token: "1//r".into(),
        id_token: None,
        account_id: None,
        expires_at_ms: 1,
    });
    let env: Vec<(String, String)> = gemini.exec_env(&c).into_iter().map(|(k, v)| (k, v.expose().to_owned())).collect();
    assert_eq!(
        env,
        [("GOOGLE_GENAI_USE_GCA".into(), "true".into()), ("GOOGLE_CLOUD_ACCESS_TOKEN".into(), "ya29.child".into())]
    );
    let file = gemini.native_file().unwrap();
    let env = |v: &str| (v == "GEMINI_CLI_HOME").then(|| "/srv/g".to_owned());
    assert_eq!(file.default_path(Path::new("/home/u"), &env), Path::new("/srv/g/.gemini/oauth_creds.json"));
    assert_eq!(file.default_path(Path::new("/home/u"), &|_| None), Path::new("/home/u/.gemini/oauth_creds.json"));
}

// ---------------------------------------------------------------------------------------------
// Generic OAuth2

fn generic_cfg(mock: &MockProvider, body: TokenBody, rotation: Rotation) -> ProviderConfig {
    ProviderConfig {
        token_url: mock.shape_token_url(Shape::Generic),
        client_id: "generic-client".into(),
        body,
        rotation,
        ..ProviderConfig::defaults_for("acme")
    }
}

#[tokio::test]
async fn generic_json_rotating_with_a_secret_and_jwt_expiry() {
    let mock = MockProvider::start().await.unwrap();
    mock.set_generic_shape(GenericShape {
        body: Encoding::Json,
        rotating: true,
        client_secret: Some("generic-secret-value".into()),
        jwt_access: true,
        ..GenericShape::default()
    });
    mock.set_shape_access_lifetime(Shape::Generic, Duration::from_secs(7200));
    let cfg = ProviderConfig {
        client_secret: Some(Secret::new("generic-secret-value")),
        expiry: ExpirySource::JwtExp,
        ..generic_cfg(&mock, TokenBody::Json, Rotation::SingleUse)
    };
    let acme = GenericOAuth2::new("acme", &cfg).unwrap();
    assert_eq!(acme.display_name(), "acme");
    assert!(acme.native_file().is_none() && acme.exec_env(&credential(&dummy())).is_empty());
    let login = mock.issue_shape_login(Shape::Generic, "x@example.com");
    let old = credential(&login);
    let g = grant(acme.refresh(&old, Utc::now()).await);
    assert!((7195..=7200).contains(&g.expires_in.as_secs()), "{:?}", g.expires_in);
    assert!(g.refresh_token.is_some());
    let req = mock.last_shape_request(Shape::Generic).unwrap();
    assert_eq!(req.content_type.as_deref(), Some("application/json"));
    assert!(req.fields.contains("client_secret"));
    assert!(rejected(acme.refresh(&old, Utc::now()).await).contains("invalid_grant"));
    let counts = mock.shape_counts(Shape::Generic);
    assert_eq!((counts.refresh_ok, counts.refresh_rejected), (1, 1));
}

fn dummy() -> ShapeLogin {
    ShapeLogin {
        access_token: "a".into(),
        refresh_token: "r".into(),
        id_token: None,
        account_id: None,
        expires_at_ms: 1,
    }
}

#[tokio::test]
async fn generic_form_reusable_and_the_mock_refuses_the_wrong_encoding() {
    let mock = MockProvider::start().await.unwrap();
    mock.set_generic_shape(GenericShape { body: Encoding::Form, rotating: false, ..GenericShape::default() });
    let acme = GenericOAuth2::new("acme", &generic_cfg(&mock, TokenBody::Form, Rotation::Reusable)).unwrap();
    let login = mock.issue_shape_login(Shape::Generic, "y@example.com");
    let old = credential(&login);
    let g = grant(acme.refresh(&old, Utc::now()).await);
    assert_eq!(g.expires_in, Duration::from_secs(3600));
    assert_eq!(g.refresh_token, None);
    grant(acme.refresh(&old, Utc::now()).await);
    assert_eq!(mock.shape_counts(Shape::Generic).refresh_ok, 2);
    assert!(!mock.last_shape_request(Shape::Generic).unwrap().fields.contains("client_secret"));

    // The same provider configured with JSON: the mock refuses it, and nothing is spent.
    let wrong = GenericOAuth2::new("acme", &generic_cfg(&mock, TokenBody::Json, Rotation::Reusable)).unwrap();
    match wrong.refresh(&old, Utc::now()).await {
        TokenOutcome::Transient { reason } => assert!(reason.contains("invalid_request"), "{reason}"),
        other => panic!("{other}"),
    }
    let counts = mock.shape_counts(Shape::Generic);
    assert_eq!((counts.wrong_encoding, counts.refresh_ok), (1, 2));
}

#[test]
fn generic_providers_say_what_is_missing() {
    let e = GenericOAuth2::new("acme", &ProviderConfig::defaults_for("acme")).unwrap_err().to_string();
    assert!(e.contains("[providers.acme]") && e.contains("token_url"), "{e}");
    let cfg = ProviderConfig { token_url: "http://127.0.0.1:9/t".into(), ..ProviderConfig::defaults_for("acme") };
    let e = GenericOAuth2::new("acme", &cfg).unwrap_err().to_string();
    assert!(e.contains("client_id"), "{e}");
    let cfg = ProviderConfig {
        client_id: "c".into(),
        client_secret_file: Some("/nonexistent/tokenkeeper-secret".into()),
        ..cfg
    };
    let e = tokenkeeper_core::error_chain(&GenericOAuth2::new("acme", &cfg).unwrap_err());
    assert!(e.contains("/nonexistent/tokenkeeper-secret"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Secrets

#[tokio::test]
async fn no_secret_shows_in_debug_or_reasons() {
    let mock = MockProvider::start().await.unwrap();
    let codex = Codex::new(&codex_cfg(&mock)).unwrap();
    let gemini = Gemini::new(&gemini_cfg(&mock)).unwrap();
    let cl = mock.issue_shape_login(Shape::Codex, "s@example.com");
    let gl = mock.issue_shape_login(Shape::Google, "s@example.com");
    let (cc, gc) = (credential(&cl), credential(&gl));
    let mut printed = vec![format!("{codex:?}"), format!("{gemini:?}"), format!("{cc:?}"), format!("{gc:?}")];
    for outcome in [
        codex.refresh(&cc, Utc::now()).await,
        codex.refresh(&cc, Utc::now()).await,
        gemini.refresh(&gc, Utc::now()).await,
    ] {
        printed.push(format!("{outcome}"));
        printed.push(format!("{outcome:?}"));
    }
    let file = codex.native_file().unwrap();
    let text = file.render(None, &cc, Utc::now()).unwrap();
    printed.push(format!("{:?}", file.parse(&text, Utc::now()).unwrap()));
    let all = printed.join("\n");
    let mut secrets =
        vec![cl.access_token, cl.refresh_token, gl.access_token, gl.refresh_token, GEMINI_CLIENT_SECRET.into()];
    secrets.extend(cl.id_token);
    secrets.extend(gl.id_token);
    for s in secrets {
        assert!(!all.contains(&s), "a secret is printed:\n{all}");
    }
}
