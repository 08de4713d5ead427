//! Codex CLI's ChatGPT login: `$CODEX_HOME/auth.json` (default `~/.codex/auth.json`) and the
//! refresh grant at `https://auth.openai.com/oauth/token`.
//!
//! What Codex does, and where it says so (openai/codex):
//!
//! - `codex-rs/login/src/auth/storage.rs` (`AuthDotJson`): the file holds `OPENAI_API_KEY`
//!   (always written, `null` for a ChatGPT login), `tokens` (`TokenData`), `last_refresh`
//!   (RFC 3339), and optionally `auth_mode`, `agent_identity`, `personal_access_token`. Codex
//!   writes it with `to_string_pretty`, mode 0600, truncating in place.
//! - `codex-rs/login/src/token_data.rs` (`TokenData`): `tokens.id_token` (a JWT Codex parses
//!   on load: an auth.json whose `id_token` is not a JWT does not load at all),
//!   `access_token` (a JWT), `refresh_token`, `account_id`.
//! - `codex-rs/login/src/auth/manager.rs`: `get_token_data` serves tokens only when
//!   `last_refresh` is set; the refresh posts JSON `{client_id, grant_type, refresh_token}`
//!   (no `scope`) with client id `app_EMoamEEZ73f0CkXaXp7hrann`; the answer's `id_token`,
//!   `access_token`, `refresh_token` replace the old ones and `last_refresh` becomes now; a
//!   401, or the codes `refresh_token_expired`, `refresh_token_reused`,
//!   `refresh_token_invalidated` (read from `error.code`, `error` or `code`), are permanent;
//!   Codex refreshes when the access token's `exp` has passed (or, without `exp`, 8 days after
//!   `last_refresh`). It reads ChatGPT tokens only from the file: `CODEX_API_KEY`,
//!   `OPENAI_API_KEY` and `CODEX_ACCESS_TOKEN` are other logins (API key, agent identity).
//! - `codex-rs/utils/home-dir/src/lib.rs`: `CODEX_HOME` (must be an existing directory),
//!   else `~/.codex`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use tokenkeeper_core::config::{ProviderConfig, CODEX};
use tokenkeeper_core::{Credential, Secret};

use crate::client::{OAuthClient, TokenOutcome};
use crate::error::ProviderError;
use crate::jwt;
use crate::login::{FlowSpec, LoginFlow, Loopback, PkceFlow};
use crate::provider::{ApiAccess, ApiKind, CredentialHeader, NativeCredential, NativeFile, NativeFileError, Provider};
use crate::shared;

const FILE: &str = "Codex auth.json";

/// The header Codex sends its ChatGPT account id in, beside the bearer token
/// (`codex-rs/codex-api/src/auth.rs`, `add_auth_headers_to_header_map`).
pub const ACCOUNT_ID_HEADER: &str = "ChatGPT-Account-ID";

/// The JWT claim namespace where OpenAI puts the ChatGPT account (`chatgpt_account_id`).
const AUTH_CLAIMS: &str = "https://api.openai.com/auth";

/// How long Codex trusts tokens without an `exp` after `last_refresh`
/// (`TOKEN_REFRESH_INTERVAL` in `manager.rs`).
const STALE_AFTER: chrono::Duration = chrono::Duration::days(8);

/// Codex CLI (ChatGPT login): [`Provider`] and its [`NativeFile`], `auth.json`.
#[derive(Debug, Clone)]
pub struct Codex {
    id: String,
    cfg: ProviderConfig,
    client: OAuthClient,
    flow: Option<PkceFlow>,
}

impl Codex {
    /// The Codex provider with the endpoints and client of `cfg` (see
    /// [`ProviderConfig::builtin`]`("codex")` for the real ones).
    pub fn new(cfg: &ProviderConfig) -> Result<Codex, ProviderError> {
        Self::with_id(CODEX, cfg)
    }

    /// A Codex provider under another id (`[providers.codex-staging] kind = "codex"`).
    pub fn with_id(id: &str, cfg: &ProviderConfig) -> Result<Codex, ProviderError> {
        let client = shared::client(id, cfg)?;
        let flow = PkceFlow::new(&client, cfg, login_spec(cfg));
        Ok(Codex { id: id.to_owned(), cfg: cfg.clone(), client, flow })
    }
}

/// Codex CLI's login (`codex-rs/login/src/server.rs`, `build_authorize_url`): the extra
/// authorize parameters it sends, and its callback on `localhost`, on the registered port of
/// `redirect_uri` (1455; a port 0 there binds any free one, for tests).
fn login_spec(cfg: &ProviderConfig) -> FlowSpec {
    let port = url::Url::parse(&cfg.redirect_uri).ok().and_then(|u| u.port_or_known_default()).unwrap_or(1455);
    FlowSpec {
        cli: "Codex CLI",
        extra_params: vec![
            ("id_token_add_organizations", "true"),
            ("codex_cli_simplified_flow", "true"),
            ("originator", "codex_cli_rs"),
        ],
        loopback: Some(Loopback { host: "localhost".into(), port, path: "/auth/callback".into() }),
        hint: "the whole URL of the page the browser landed on after sign-in (http://localhost:1455/auth/callback?code=…; \
               the page itself may fail to load)",
        from_id_token: |id_token, data| {
            if let Some(account) = account_id_of(id_token) {
                data.insert("account_id".into(), Value::String(account));
            }
        },
    }
}

/// The account id in an `id_token`, where Codex reads it.
fn account_id_of(id_token: &str) -> Option<String> {
    jwt::nested_str(id_token, AUTH_CLAIMS, "chatgpt_account_id")
}

#[async_trait::async_trait]
impl Provider for Codex {
    fn id(&self) -> &str {
        &self.id
    }

    fn display_name(&self) -> &str {
        "Codex CLI"
    }

    async fn refresh(&self, credential: &Credential, now: DateTime<Utc>) -> TokenOutcome {
        shared::refresh(&self.client, &self.cfg, credential, now, "Codex CLI", &|id_token, data| {
            if let Some(account) = account_id_of(id_token) {
                data.entry("account_id").or_insert(Value::String(account));
            }
        })
        .await
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

    /// Nothing: Codex reads a ChatGPT login only from `auth.json` (its environment variables
    /// are for API keys and agent identities), so `exec` writes the file into a private
    /// `CODEX_HOME` instead.
    fn exec_env(&self, _credential: &Credential) -> Vec<(String, Secret)> {
        Vec::new()
    }

    fn api(&self) -> Option<ApiAccess> {
        (!self.cfg.api_base_url.is_empty()).then(|| {
            ApiAccess::new(self.cfg.api_base_url.clone(), CredentialHeader::Bearer, ApiKind::ChatGptCodex)
                .with_data_header(ACCOUNT_ID_HEADER, "account_id")
        })
    }
}

impl NativeFile for Codex {
    fn describe(&self) -> &str {
        FILE
    }

    fn default_path(&self, home: &Path, env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
        match env("CODEX_HOME").filter(|v| !v.is_empty()) {
            Some(dir) => PathBuf::from(dir).join("auth.json"),
            None => home.join(".codex").join("auth.json"),
        }
    }

    fn home_var(&self) -> Option<&str> {
        Some("CODEX_HOME")
    }

    fn detect(&self, doc: &serde_json::Value) -> bool {
        doc.get("tokens").and_then(|t| t.get("access_token")).is_some()
            && (doc.get("last_refresh").is_some() || doc.get("OPENAI_API_KEY").is_some())
    }

    fn parse(&self, text: &str, now: DateTime<Utc>) -> Result<NativeCredential, NativeFileError> {
        let doc = shared::object(FILE, text)?;
        let field = |field: &'static str| NativeFileError::Field { file: FILE.to_owned(), field };
        let tokens = match doc.get("tokens") {
            Some(Value::Object(t)) => t,
            _ => return Err(field("tokens")),
        };
        let access = shared::opt_str(FILE, tokens, "access_token", "tokens.access_token")?
            .ok_or(field("tokens.access_token"))?;
        let refresh = shared::opt_str(FILE, tokens, "refresh_token", "tokens.refresh_token")?;
        let id_token = shared::opt_str(FILE, tokens, "id_token", "tokens.id_token")?;
        let account_id = shared::opt_str(FILE, tokens, "account_id", "tokens.account_id")?;
        if access.trim().is_empty() {
            return Err(NativeFileError::Blank { file: FILE.to_owned() });
        }
        let last_refresh = shared::opt_str(FILE, &doc, "last_refresh", "last_refresh")?
            .map(|s| DateTime::parse_from_rfc3339(s).map(|d| d.with_timezone(&Utc)).map_err(|_| field("last_refresh")))
            .transpose()?;
        // Codex's own rule: the access token's `exp`; without one, 8 days after last_refresh.
        let expires_at =
            jwt::expiry(access).ok().flatten().or_else(|| last_refresh.map(|t| t + STALE_AFTER)).unwrap_or(now);
        let mut data = Map::new();
        if let Some(id) = id_token.filter(|s| !s.is_empty()) {
            data.insert("id_token".into(), Value::String(id.to_owned()));
        }
        if let Some(acc) = account_id.filter(|s| !s.is_empty()) {
            data.insert("account_id".into(), Value::String(acc.to_owned()));
        }
        let email = id_token.and_then(jwt::email);
        Ok(NativeCredential {
            credential: Credential {
                access_token: Secret::new(access),
                refresh_token: refresh.filter(|r| !r.trim().is_empty()).map(Secret::new),
                expires_at,
                scopes: Vec::new(),
                subscription_type: id_token.and_then(|t| jwt::nested_str(t, AUTH_CLAIMS, "chatgpt_plan_type")),
                rate_limit_tier: None,
                provider_data: shared::seal(data),
            },
            email,
        })
    }

    fn render(
        &self,
        existing: Option<&str>,
        credential: &Credential,
        now: DateTime<Utc>,
    ) -> Result<String, NativeFileError> {
        if credential.is_blank() {
            return Err(NativeFileError::Blank { file: FILE.to_owned() });
        }
        let mut doc = shared::existing_object(FILE, existing)?;
        let data = shared::provider_data(credential);
        // Copied and put back with `insert`, which keeps the key where it was.
        let mut tokens = doc.get("tokens").and_then(Value::as_object).cloned().unwrap_or_default();
        // Codex refuses a file whose id_token is not a JWT, so one must be there: ours, else
        // the file's own.
        match shared::data_str(&data, "id_token") {
            Some(id) => {
                tokens.insert("id_token".into(), Value::String(id));
            }
            None if tokens.get("id_token").and_then(Value::as_str).is_some_and(|s| !s.is_empty()) => {}
            None => return Err(NativeFileError::Field { file: FILE.to_owned(), field: "tokens.id_token" }),
        }
        tokens.insert("access_token".into(), Value::String(credential.access_token.expose().to_owned()));
        if let Some(r) = &credential.refresh_token {
            tokens.insert("refresh_token".into(), Value::String(r.expose().to_owned()));
        }
        if let Some(acc) = shared::data_str(&data, "account_id") {
            tokens.insert("account_id".into(), Value::String(acc));
        }
        if !doc.contains_key("OPENAI_API_KEY") {
            doc.insert("OPENAI_API_KEY".into(), Value::Null);
        }
        doc.insert("tokens".into(), Value::Object(tokens));
        doc.insert("last_refresh".into(), Value::String(now.to_rfc3339_opts(SecondsFormat::Micros, true)));
        Ok(shared::pretty(doc))
    }
}
