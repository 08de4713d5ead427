//! The Infisical sink against a stand-in server that checks every request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::{patch, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Value};
use tokenkeeper_core::config::SinkConfig;
use tokenkeeper_core::{Account, Secret};
use tokenkeeper_sync::infisical::InfisicalClient;

const ACCESS: &str = "sk-ant-oat01-INFACCESS";
const REFRESH: &str = "sk-ant-ort01-INFREFRESH";
const MACHINE_TOKEN: &str = "machine-identity-token-1";

#[derive(Default)]
struct Stand {
    /// (method, path, authorization, body) of every request.
    log: Vec<(String, String, Option<String>, Value)>,
    secrets: HashMap<String, String>,
    forbid: bool,
}

type Shared = Arc<Mutex<Stand>>;

fn auth(h: &HeaderMap) -> Option<String> {
    h.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned)
}

async fn login(State(s): State<Shared>, h: HeaderMap, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    s.lock().unwrap().log.push(("POST".into(), "login".into(), auth(&h), body.clone()));
    if body["clientId"] == "cid" && body["clientSecret"] == "csecret" {
        (StatusCode::OK, Json(json!({"accessToken": MACHINE_TOKEN, "expiresIn": 7200, "tokenType": "Bearer"})))
    } else {
        (StatusCode::UNAUTHORIZED, Json(json!({"message": "bad client"})))
    }
}

async fn secret(
    State(s): State<Shared>,
    method: Method,
    Path(name): Path<String>,
    h: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let mut st = s.lock().unwrap();
    st.log.push((method.to_string(), name.clone(), auth(&h), body.clone()));
    if auth(&h).as_deref() != Some(&format!("Bearer {MACHINE_TOKEN}")) {
        return (StatusCode::UNAUTHORIZED, Json(json!({"message": "no token"})));
    }
    if st.forbid {
        let echoed = body["secretValue"].as_str().unwrap_or("").to_owned();
        return (StatusCode::FORBIDDEN, Json(json!({"message": format!("not allowed to write {echoed}")})));
    }
    for field in ["workspaceId", "environment", "secretPath", "secretValue", "type"] {
        if !body[field].is_string() {
            return (StatusCode::BAD_REQUEST, Json(json!({"message": format!("{field} missing")})));
        }
    }
    let value = body["secretValue"].as_str().unwrap().to_owned();
    let exists = st.secrets.contains_key(&name);
    match (method.as_str(), exists) {
        ("PATCH", false) => (StatusCode::NOT_FOUND, Json(json!({"message": "Secret not found"}))),
        ("POST", true) => (StatusCode::BAD_REQUEST, Json(json!({"message": "Secret already exists"}))),
        _ => {
            st.secrets.insert(name, value);
            (StatusCode::OK, Json(json!({"secret": {}})))
        }
    }
}

async fn serve() -> (String, Shared) {
    let state: Shared = Arc::default();
    let app = Router::new()
        .route("/api/v1/auth/universal-auth/login", post(login))
        .route("/api/v3/secrets/raw/{name}", patch(secret).post(secret))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), state)
}

fn account() -> Account {
    let mut a = tokenkeeper_sync::testing::account("main", ACCESS);
    a.credential.refresh_token = Some(Secret::new(REFRESH));
    a
}

fn sink(extra: &str) -> SinkConfig {
    toml::from_str(&format!(
        "account=\"main\"\nkind=\"infisical\"\nproject_id=\"proj-1\"\nenvironment=\"dev\"\nsecret_path=\"/claude\"\nsecret_name=\"CLAUDE_CREDS\"\n{extra}"
    ))
    .unwrap()
}

#[tokio::test]
async fn universal_auth_creates_then_updates_base64_json() {
    let (url, state) = serve().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("id"), "cid\n").unwrap();
    std::fs::write(dir.path().join("secret"), "csecret\n").unwrap();
    let cfg = sink(&format!(
        "url=\"{url}/\"\nclient_id_file=\"{}\"\nclient_secret_file=\"{}\"",
        dir.path().join("id").display(),
        dir.path().join("secret").display()
    ));
    let client = InfisicalClient::new();
    client.push(&cfg, &account()).await.unwrap();
    client.push(&cfg, &account()).await.unwrap();

    let st = state.lock().unwrap();
    let calls: Vec<(&str, &str)> = st.log.iter().map(|(m, p, _, _)| (m.as_str(), p.as_str())).collect();
    assert_eq!(
        calls,
        [
            ("POST", "login"),
            ("PATCH", "CLAUDE_CREDS"),
            ("POST", "CLAUDE_CREDS"),
            ("POST", "login"),
            ("PATCH", "CLAUDE_CREDS")
        ]
    );
    assert_eq!(st.log[0].3, json!({"clientId": "cid", "clientSecret": "csecret"}));
    assert_eq!(st.log[0].2, None, "login carries no bearer token");
    for (_, _, auth, body) in &st.log[1..] {
        if body.get("clientId").is_some() {
            continue;
        }
        assert_eq!(auth.as_deref(), Some(format!("Bearer {MACHINE_TOKEN}").as_str()));
        assert_eq!(body["workspaceId"], "proj-1");
        assert_eq!(body["environment"], "dev");
        assert_eq!(body["secretPath"], "/claude");
        assert_eq!(body["type"], "shared");
    }
    let stored = &st.secrets["CLAUDE_CREDS"];
    let decoded = base64::engine::general_purpose::STANDARD.decode(stored).unwrap();
    let v: Value = serde_json::from_slice(&decoded).unwrap();
    assert_eq!(v["claudeAiOauth"]["accessToken"], ACCESS);
    assert_eq!(v["claudeAiOauth"]["refreshToken"], REFRESH);
    assert_eq!(v["claudeAiOauth"]["expiresAt"], 1_800_000_000_000i64);
}

#[tokio::test]
async fn token_file_and_access_token_format_skip_login() {
    let (url, state) = serve().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tok"), format!("{MACHINE_TOKEN}\n")).unwrap();
    state.lock().unwrap().secrets.insert("CLAUDE_CREDS".into(), "old".into());
    let cfg =
        sink(&format!("url=\"{url}\"\ntoken_file=\"{}\"\nformat=\"access_token\"", dir.path().join("tok").display()));
    InfisicalClient::new().push(&cfg, &account()).await.unwrap();
    {
        let st = state.lock().unwrap();
        assert_eq!(st.log.len(), 1, "no login with a token file");
        assert_eq!(st.log[0].0, "PATCH");
        assert_eq!(st.secrets["CLAUDE_CREDS"], ACCESS);
    }
    let cfg = sink(&format!("url=\"{url}\"\ntoken_file=\"{}\"\nformat=\"json\"", dir.path().join("tok").display()));
    InfisicalClient::new().push(&cfg, &account()).await.unwrap();
    let v: Value = serde_json::from_str(&state.lock().unwrap().secrets["CLAUDE_CREDS"]).unwrap();
    assert_eq!(v["claudeAiOauth"]["accessToken"], ACCESS);
}

#[tokio::test]
async fn errors_carry_status_and_message_but_no_token() {
    let (url, state) = serve().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tok"), MACHINE_TOKEN).unwrap();
    state.lock().unwrap().forbid = true;
    let cfg =
        sink(&format!("url=\"{url}\"\ntoken_file=\"{}\"\nformat=\"access_token\"", dir.path().join("tok").display()));
    let e = InfisicalClient::new().push(&cfg, &account()).await.unwrap_err();
    let msg = tokenkeeper_sync::error::error_chain(&e);
    assert!(msg.contains("HTTP 403") && msg.contains("not allowed to write sk-ant-oat01-…"), "{msg}");
    assert!(msg.contains("/api/v3/secrets/raw/CLAUDE_CREDS"), "{msg}");
    assert!(!msg.contains("INFACCESS") && !format!("{e:?}").contains("INFACCESS"), "{msg}");

    // Wrong client secret: the login fails with its status.
    std::fs::write(dir.path().join("id"), "cid").unwrap();
    std::fs::write(dir.path().join("secret"), "wrong").unwrap();
    let cfg = sink(&format!(
        "url=\"{url}\"\nclient_id_file=\"{}\"\nclient_secret_file=\"{}\"",
        dir.path().join("id").display(),
        dir.path().join("secret").display()
    ));
    let e = InfisicalClient::new().push(&cfg, &account()).await.unwrap_err().to_string();
    assert!(e.contains("log in to Infisical") && e.contains("HTTP 401"), "{e}");

    // Nobody listening: a transport error naming the action.
    let cfg = sink(&format!("url=\"http://127.0.0.1:9\"\ntoken_file=\"{}\"", dir.path().join("tok").display()));
    let e = InfisicalClient::new().push(&cfg, &account()).await.unwrap_err().to_string();
    assert!(e.contains("update the Infisical secret"), "{e}");
}
