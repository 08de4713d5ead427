//! The `infisical` sink: pushes the credential into an Infisical secret through its REST API.
//!
//! 1. Authenticate: with a machine identity's universal auth
//!    (`POST {url}/api/v1/auth/universal-auth/login` with `clientId`/`clientSecret` read from
//!    `client_id_file`/`client_secret_file`, answering `accessToken`), or with an access token
//!    read from `token_file`. Files are read on every push, so rotating them needs no restart.
//!    Pushes are rare (one per refresh, every few hours), so each one logs in afresh rather
//!    than caching a token that may have expired.
//! 2. Upsert: `PATCH {url}/api/v3/secrets/raw/{secret_name}` with `workspaceId`
//!    (`project_id`), `environment` (default `prod`), `secretPath` (default `/`),
//!    `secretValue` and `type = "shared"`; when that answers 404 the secret does not exist
//!    yet and the same body is `POST`ed to the same path to create it.
//!
//! The value (`format`): `base64_json` (default: Claude Code's credentials JSON,
//! base64-encoded, as the seed setups stored it), `json`, or `access_token` alone.
//! Error messages carry the HTTP status and the server's message with any token replaced by
//! its fingerprint; no token ever goes into a URL.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokenkeeper_core::config::{InfisicalAuth, InfisicalFormat, SinkConfig, SinkTarget};
use tokenkeeper_core::formats::{claude_json_base64, render_claude_credentials};
use tokenkeeper_core::paths::expand_tilde;
use tokenkeeper_core::{Account, Secret};

use crate::error::SyncError;
use tokenkeeper_core::redact;

/// Timeout of one request to Infisical.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Most characters of a server message kept in an error.
const MESSAGE_CHARS: usize = 300;

/// A client that pushes to Infisical.
#[derive(Debug, Clone)]
pub struct InfisicalClient {
    http: reqwest::Client,
}

impl Default for InfisicalClient {
    fn default() -> Self {
        Self::new()
    }
}

impl InfisicalClient {
    /// A client with the default timeout.
    pub fn new() -> Self {
        let http = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot configure the HTTP client; using defaults");
            reqwest::Client::new()
        });
        Self { http }
    }

    /// Pushes `account`'s credential as the sink `cfg` says.
    pub async fn push(&self, cfg: &SinkConfig, account: &Account) -> Result<(), SyncError> {
        let name = PathBuf::from(cfg.display_name());
        let SinkTarget::Infisical(target) = &cfg.target else {
            return Err(SyncError::Invalid {
                action: "push to Infisical",
                path: name,
                message: "this is not an infisical sink".into(),
            });
        };
        let base = &target.url;
        let c = &account.credential;
        let value = Secret::new(match target.format {
            InfisicalFormat::Base64Json => claude_json_base64(c),
            InfisicalFormat::Json => render_claude_credentials(None, c).map_err(|source| SyncError::Document {
                action: "render the JSON for",
                path: name.clone(),
                source,
            })?,
            InfisicalFormat::AccessToken => c.access_token.expose().to_owned(),
        });
        let mut secrets = vec![c.access_token.clone(), value.clone()];
        secrets.extend(c.refresh_token.clone());

        let token = match &target.auth {
            InfisicalAuth::Token(f) => Secret::new(read_secret_file(f).await?),
            InfisicalAuth::Universal { client_id_file, client_secret_file } => {
                let id = read_secret_file(client_id_file).await?;
                let secret = Secret::new(read_secret_file(client_secret_file).await?);
                self.login(base, &id, &secret).await?
            }
        };
        secrets.push(token.clone());

        let url = endpoint(base, &["api", "v3", "secrets", "raw", &target.secret_name])?;
        let body = json!({
            "workspaceId": target.project_id,
            "environment": target.environment,
            "secretPath": target.secret_path,
            "secretValue": value.expose(),
            "type": "shared",
        });
        let send = |method: reqwest::Method| {
            self.http.request(method, url.clone()).bearer_auth(token.expose()).json(&body).send()
        };
        let path = PathBuf::from(url.path());
        let resp = send(reqwest::Method::PATCH).await.map_err(|e| SyncError::Http {
            action: "update the Infisical secret",
            path: path.clone(),
            source: e.without_url(),
        })?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            tracing::info!(sink = %name.display(), "the Infisical secret does not exist yet; creating it");
            let resp = send(reqwest::Method::POST).await.map_err(|e| SyncError::Http {
                action: "create the Infisical secret",
                path: path.clone(),
                source: e.without_url(),
            })?;
            return check(resp, "create the Infisical secret", &path, &secrets).await.map(drop);
        }
        check(resp, "update the Infisical secret", &path, &secrets).await.map(drop)
    }

    async fn login(&self, base: &str, client_id: &str, client_secret: &Secret) -> Result<Secret, SyncError> {
        let url = endpoint(base, &["api", "v1", "auth", "universal-auth", "login"])?;
        let path = PathBuf::from(url.path());
        let action = "log in to Infisical at";
        let resp = self
            .http
            .post(url)
            .json(&json!({ "clientId": client_id, "clientSecret": client_secret.expose() }))
            .send()
            .await
            .map_err(|e| SyncError::Http { action, path: path.clone(), source: e.without_url() })?;
        let body = check(resp, action, &path, std::slice::from_ref(client_secret)).await?;
        body.get("accessToken")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(Secret::new)
            .ok_or(SyncError::HttpStatus { action, path, status: 200, message: "the answer has no accessToken".into() })
    }
}

async fn read_secret_file(path: &Path) -> Result<String, SyncError> {
    let path = expand_tilde(path);
    let action = "read the Infisical credential file";
    crate::fs::unblock(action, &path.clone(), move || {
        std::fs::read_to_string(&path).map(|s| s.trim().to_owned()).map_err(|e| SyncError::io(action, &path, e))
    })
    .await
}

fn endpoint(base: &str, segments: &[&str]) -> Result<reqwest::Url, SyncError> {
    let invalid =
        |message: String| SyncError::Invalid { action: "build the Infisical URL", path: base.into(), message };
    let mut url = reqwest::Url::parse(base).map_err(|e| invalid(format!("`url` is not a URL: {e}")))?;
    url.path_segments_mut().map_err(|()| invalid("`url` cannot have a path".into()))?.pop_if_empty().extend(segments);
    Ok(url)
}

/// The JSON body of a successful answer, or an error with the status and the server's message.
async fn check(
    resp: reqwest::Response,
    action: &'static str,
    path: &Path,
    secrets: &[Secret],
) -> Result<Value, SyncError> {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if status.is_success() {
        return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
    }
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or(text);
    let message: String = redact(&message, secrets).chars().take(MESSAGE_CHARS).collect();
    Err(SyncError::HttpStatus { action, path: path.to_owned(), status: status.as_u16(), message })
}
