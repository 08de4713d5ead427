//! Gemini CLI's Google login: `~/.gemini/oauth_creds.json` and Google's token endpoint.
//!
//! What Gemini CLI does, and where it says so (google-gemini/gemini-cli):
//!
//! - `packages/core/src/config/storage.ts`: `OAUTH_FILE = 'oauth_creds.json'` in
//!   `getGlobalGeminiDir()`, which is `<home>/.gemini`; `packages/core/src/utils/paths.ts`:
//!   `homedir()` is `GEMINI_CLI_HOME` when set, else the user's home.
//! - `packages/core/src/code_assist/oauth2.ts`: the installed-app `OAUTH_CLIENT_ID` and
//!   `OAUTH_CLIENT_SECRET` (public by design, as Google's installed-app flow says), the
//!   scopes; `cacheCredentials` writes google-auth-library's `Credentials` object with
//!   `JSON.stringify(credentials, null, 2)`, mode 0600, on every `tokens` event; with
//!   `GOOGLE_GENAI_USE_GCA` and `GOOGLE_CLOUD_ACCESS_TOKEN` set, that access token is used
//!   and the file is not read.
//! - google-auth-library (googleapis/google-auth-library-nodejs, `src/auth/oauth2client.ts`,
//!   `refreshTokenNoCache`): POST `https://oauth2.googleapis.com/token`, form-encoded
//!   `refresh_token, client_id, client_secret, grant_type=refresh_token`; the answer's
//!   `expires_in` becomes `expiry_date = now + expires_in * 1000` (milliseconds). Google
//!   leaves `refresh_token` out of a refresh answer; the old one stays valid. A dead one
//!   answers `400 invalid_grant`. Access tokens live about an hour (`expires_in` 3599).

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokenkeeper_core::config::{ProviderConfig, GEMINI};
use tokenkeeper_core::{Credential, Secret};

use crate::client::{OAuthClient, TokenOutcome};
use crate::error::ProviderError;
use crate::jwt;
use crate::login::{FlowSpec, LoginFlow, Loopback, PkceFlow};
use crate::provider::{ApiAccess, ApiKind, CredentialHeader, NativeCredential, NativeFile, NativeFileError, Provider};
use crate::shared;

const FILE: &str = "Gemini CLI oauth_creds.json";

/// Gemini CLI (Google login): [`Provider`] and its [`NativeFile`], `oauth_creds.json`.
#[derive(Debug, Clone)]
pub struct Gemini {
    id: String,
    cfg: ProviderConfig,
    client: OAuthClient,
    flow: Option<PkceFlow>,
}

impl Gemini {
    /// The Gemini CLI provider with the endpoints and client of `cfg` (see
    /// [`ProviderConfig::builtin`]`("gemini")` for the real ones; the client secret may come
    /// from a file or the environment instead).
    pub fn new(cfg: &ProviderConfig) -> Result<Gemini, ProviderError> {
        Self::with_id(GEMINI, cfg)
    }

    /// A Gemini CLI provider under another id (`kind = "gemini"`).
    pub fn with_id(id: &str, cfg: &ProviderConfig) -> Result<Gemini, ProviderError> {
        let client = shared::client(id, cfg)?;
        let flow = PkceFlow::new(&client, cfg, login_spec());
        Ok(Gemini { id: id.to_owned(), cfg: cfg.clone(), client, flow })
    }
}

/// Gemini CLI's login (`packages/core/src/code_assist/oauth2.ts`): `access_type=offline` (so
/// Google grants a refresh token); pasted, the redirect is `redirect_uri`
/// (`https://codeassist.google.com/authcode`, whose page shows the code), or a loopback
/// `http://127.0.0.1:PORT/oauth2callback` on any free port.
fn login_spec() -> FlowSpec {
    FlowSpec {
        cli: "Gemini CLI",
        extra_params: vec![("access_type", "offline")],
        loopback: Some(Loopback { host: "127.0.0.1".into(), port: 0, path: "/oauth2callback".into() }),
        hint: "the authorization code shown after sign-in (or the whole URL of that page)",
        from_id_token: |_, _| {},
    }
}

#[async_trait::async_trait]
impl Provider for Gemini {
    fn id(&self) -> &str {
        &self.id
    }

    fn display_name(&self) -> &str {
        "Gemini CLI"
    }

    async fn refresh(&self, credential: &Credential, now: DateTime<Utc>) -> TokenOutcome {
        shared::refresh(&self.client, &self.cfg, credential, now, "Gemini CLI", &|_, _| {}).await
    }

    async fn probe(&self) -> Result<Duration, ProviderError> {
        self.client.probe().await
    }

    fn native_file(&self) -> Option<&dyn NativeFile> {
        Some(self)
    }

    fn login(&self) -> Option<&dyn LoginFlow> {
        self.flow.as_ref().map(|f| f as &dyn LoginFlow)
    }

    /// `GOOGLE_GENAI_USE_GCA=true` and `GOOGLE_CLOUD_ACCESS_TOKEN`: Gemini CLI then logs in
    /// with Google using that access token and reads no file. It cannot refresh it itself, so
    /// a child that runs longer than the token's hour needs the file instead.
    fn exec_env(&self, credential: &Credential) -> Vec<(String, Secret)> {
        vec![
            ("GOOGLE_GENAI_USE_GCA".into(), Secret::new("true")),
            ("GOOGLE_CLOUD_ACCESS_TOKEN".into(), credential.access_token.clone()),
        ]
    }

    fn api(&self) -> Option<ApiAccess> {
        (!self.cfg.api_base_url.is_empty())
            .then(|| ApiAccess::new(self.cfg.api_base_url.clone(), CredentialHeader::Bearer, ApiKind::GoogleCodeAssist))
    }
}

impl NativeFile for Gemini {
    fn describe(&self) -> &str {
        FILE
    }

    fn default_path(&self, home: &Path, env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
        let home =
            env("GEMINI_CLI_HOME").filter(|v| !v.is_empty()).map(PathBuf::from).unwrap_or_else(|| home.to_owned());
        home.join(".gemini").join("oauth_creds.json")
    }

    // No `home_var`: `GEMINI_CLI_HOME` replaces the whole home (settings, history and the
    // file under `.gemini/`), not a directory holding the file; `exec` uses `exec_env`.

    fn detect(&self, doc: &serde_json::Value) -> bool {
        doc.get("access_token").is_some_and(Value::is_string)
            && doc.get("expiry_date").is_some_and(Value::is_number)
            && doc.get("tokens").is_none()
    }

    fn parse(&self, text: &str, now: DateTime<Utc>) -> Result<NativeCredential, NativeFileError> {
        let doc = shared::object(FILE, text)?;
        let field = |field: &'static str| NativeFileError::Field { file: FILE.to_owned(), field };
        let access = shared::opt_str(FILE, &doc, "access_token", "access_token")?.ok_or(field("access_token"))?;
        if access.trim().is_empty() {
            return Err(NativeFileError::Blank { file: FILE.to_owned() });
        }
        let refresh = shared::opt_str(FILE, &doc, "refresh_token", "refresh_token")?;
        let id_token = shared::opt_str(FILE, &doc, "id_token", "id_token")?;
        let scope = shared::opt_str(FILE, &doc, "scope", "scope")?;
        let expires_at = match doc.get("expiry_date") {
            Some(Value::Number(n)) => {
                let ms = n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)).ok_or(field("expiry_date"))?;
                DateTime::from_timestamp_millis(ms).ok_or(field("expiry_date"))?
            }
            None | Some(Value::Null) => now,
            Some(_) => return Err(field("expiry_date")),
        };
        let mut data = Map::new();
        if let Some(id) = id_token.filter(|s| !s.is_empty()) {
            data.insert("id_token".into(), Value::String(id.to_owned()));
        }
        Ok(NativeCredential {
            credential: Credential {
                access_token: Secret::new(access),
                refresh_token: refresh.filter(|r| !r.trim().is_empty()).map(Secret::new),
                expires_at,
                scopes: scope.map(|s| s.split_whitespace().map(str::to_owned).collect()).unwrap_or_default(),
                subscription_type: None,
                rate_limit_tier: None,
                provider_data: shared::seal(data),
            },
            email: id_token.and_then(jwt::email),
        })
    }

    fn render(
        &self,
        existing: Option<&str>,
        credential: &Credential,
        _now: DateTime<Utc>,
    ) -> Result<String, NativeFileError> {
        if credential.is_blank() {
            return Err(NativeFileError::Blank { file: FILE.to_owned() });
        }
        let mut doc = shared::existing_object(FILE, existing)?;
        let data = shared::provider_data(credential);
        doc.insert("access_token".into(), Value::String(credential.access_token.expose().to_owned()));
        if let Some(r) = &credential.refresh_token {
            doc.insert("refresh_token".into(), Value::String(r.expose().to_owned()));
        }
        if !credential.scopes.is_empty() {
            doc.insert("scope".into(), Value::String(credential.scopes.join(" ")));
        }
        if !doc.contains_key("token_type") {
            doc.insert("token_type".into(), Value::String("Bearer".into()));
        }
        if let Some(id) = shared::data_str(&data, "id_token") {
            doc.insert("id_token".into(), Value::String(id));
        }
        doc.insert("expiry_date".into(), Value::from(credential.expires_at.timestamp_millis()));
        Ok(shared::pretty(doc))
    }
}
