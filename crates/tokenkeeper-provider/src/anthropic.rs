//! The Anthropic providers: [`Anthropic`] (a Claude subscription login, refreshed through
//! [`OAuthClient`], written to Claude Code's `.credentials.json`) and [`ApiKey`] (a plain
//! `sk-ant-api…` key, never refreshed, sent as `x-api-key`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokenkeeper_core::config::{ProviderConfig, ANTHROPIC};
use tokenkeeper_core::formats::{parse_credential, render_claude_credentials, FormatError, API_KEY_PROVIDER};
use tokenkeeper_core::{Credential, Secret};

use crate::client::{OAuthClient, TokenOutcome};
use crate::error::{LoginError, ProviderError};
use crate::login::LoginFlow;
use crate::pkce::{parse_pasted_code, PastedCode, PkceLogin};
use crate::provider::{ApiAccess, ApiKind, CredentialHeader, NativeCredential, NativeFile, NativeFileError, Provider};

/// The variable Claude Code reads a token from; it wins over its credentials file.
pub const CLAUDE_CODE_OAUTH_TOKEN: &str = "CLAUDE_CODE_OAUTH_TOKEN";

/// The variable Claude Code (and the Anthropic SDKs) read a plain API key from.
pub const ANTHROPIC_API_KEY: &str = "ANTHROPIC_API_KEY";

/// The name of Claude Code's credentials file inside its config directory.
pub const CLAUDE_CREDENTIALS_FILE: &str = ".credentials.json";

/// The variable that moves Claude Code's config directory (default `~/.claude`).
const CLAUDE_CONFIG_DIR: &str = "CLAUDE_CONFIG_DIR";

/// A Claude subscription login (Claude Code's OAuth): refresh and probe through the token
/// endpoint of `[providers.anthropic]`; its CLI file is Claude Code's `.credentials.json`.
#[derive(Debug, Clone)]
pub struct Anthropic {
    id: String,
    client: OAuthClient,
    api_base_url: String,
    file: ClaudeCredentialsFile,
}

impl Anthropic {
    /// The provider for the endpoints in `cfg` (`[providers.anthropic]`).
    pub fn new(cfg: &ProviderConfig) -> Result<Self, ProviderError> {
        Self::with_id(ANTHROPIC, cfg)
    }

    /// An Anthropic provider under another id (`[providers.claude-staging] kind = "anthropic"`).
    pub fn with_id(id: &str, cfg: &ProviderConfig) -> Result<Self, ProviderError> {
        Ok(Self {
            id: id.to_owned(),
            client: OAuthClient::new(cfg)?,
            api_base_url: cfg.api_base_url.clone(),
            file: ClaudeCredentialsFile,
        })
    }

    /// The OAuth client, for what only Anthropic has here: the PKCE login.
    pub fn client(&self) -> &OAuthClient {
        &self.client
    }
}

#[async_trait::async_trait]
impl Provider for Anthropic {
    fn id(&self) -> &str {
        &self.id
    }

    fn display_name(&self) -> &str {
        "Claude Code"
    }

    fn login(&self) -> Option<&dyn LoginFlow> {
        Some(self)
    }

    async fn refresh(&self, credential: &Credential, _now: DateTime<Utc>) -> TokenOutcome {
        match &credential.refresh_token {
            Some(r) if !r.is_empty() => self.client.refresh(r, &credential.scopes).await,
            _ => TokenOutcome::Rejected {
                reason: "the credential has no refresh token (a long-lived setup token?); log in again".into(),
            },
        }
    }

    async fn probe(&self) -> Result<Duration, ProviderError> {
        self.client.probe().await
    }

    fn native_file(&self) -> Option<&dyn NativeFile> {
        Some(&self.file)
    }

    fn exec_env(&self, credential: &Credential) -> Vec<(String, Secret)> {
        vec![(CLAUDE_CODE_OAUTH_TOKEN.to_owned(), credential.access_token.clone())]
    }

    fn api(&self) -> Option<ApiAccess> {
        Some(ApiAccess::new(self.api_base_url.clone(), CredentialHeader::Bearer, ApiKind::AnthropicMessages))
    }
}

/// Claude Code's `.credentials.json` (`{"claudeAiOauth":{…}}`), read and written by
/// [`tokenkeeper_core::formats`] so every key tokenkeeper does not own survives a write.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClaudeCredentialsFile;

const CLAUDE_FILE: &str = "Claude Code .credentials.json";

fn claude_error(e: FormatError) -> NativeFileError {
    let file = CLAUDE_FILE.to_owned();
    match e {
        FormatError::BadJson(detail) => NativeFileError::BadJson { file, detail },
        FormatError::Field(field) => NativeFileError::Field { file, field },
        FormatError::Blank => NativeFileError::Blank { file },
        other => NativeFileError::Unreadable { file, reason: other.to_string() },
    }
}

impl NativeFile for ClaudeCredentialsFile {
    fn describe(&self) -> &str {
        CLAUDE_FILE
    }

    fn default_path(&self, home: &Path, env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
        let dir = env(CLAUDE_CONFIG_DIR).filter(|d| !d.is_empty()).map_or_else(|| home.join(".claude"), PathBuf::from);
        dir.join(CLAUDE_CREDENTIALS_FILE)
    }

    fn detect(&self, doc: &Value) -> bool {
        doc.get("claudeAiOauth").is_some_and(Value::is_object) || doc.get("accessToken").is_some_and(Value::is_string)
    }

    fn parse(&self, text: &str, now: DateTime<Utc>) -> Result<NativeCredential, NativeFileError> {
        if !text.trim_start().starts_with('{') {
            return Err(NativeFileError::BadJson {
                file: CLAUDE_FILE.into(),
                detail: "it is not a JSON object".into(),
            });
        }
        let p = parse_credential(text, now).map_err(claude_error)?;
        Ok(NativeCredential { credential: p.credential, email: p.email })
    }

    fn render(
        &self,
        existing: Option<&str>,
        credential: &Credential,
        _now: DateTime<Utc>,
    ) -> Result<String, NativeFileError> {
        render_claude_credentials(existing, credential)
            .map_err(|_| NativeFileError::ExistingNotJson { file: CLAUDE_FILE.into() })
    }
}

/// Claude Code's login: the authorize URL with `code=true`, so the callback page shows
/// `CODE#STATE` to paste; the exchange as [`OAuthClient::exchange_code`] sends it. Always to
/// the configured redirect URI (Anthropic has no loopback redirect here).
#[async_trait::async_trait]
impl LoginFlow for Anthropic {
    fn redirect_uri(&self) -> &str {
        self.client.redirect_uri()
    }

    fn paste_hint(&self) -> &str {
        "the code shown after sign-in (it looks like CODE#STATE)"
    }

    fn authorize_url(&self, login: &PkceLogin, _redirect_uri: &str) -> String {
        self.client.authorize_url(login)
    }

    fn read_code(&self, input: &str, expected_state: &str) -> Result<PastedCode, LoginError> {
        parse_pasted_code(input, expected_state)
    }

    async fn exchange(
        &self,
        code: &PastedCode,
        login: &PkceLogin,
        _redirect_uri: &str,
        _now: DateTime<Utc>,
    ) -> TokenOutcome {
        self.client.exchange_code(code, login).await
    }
}

/// Plain Anthropic API keys (`sk-ant-api…`, the provider id [`API_KEY_PROVIDER`]): stored
/// encrypted like any credential, never refreshed, sent as `x-api-key`.
#[derive(Debug, Clone)]
pub struct ApiKey {
    api_base_url: String,
}

impl ApiKey {
    /// The provider, sending requests to `cfg.api_base_url` (`[providers.anthropic]`'s).
    pub fn new(cfg: &ProviderConfig) -> Self {
        Self { api_base_url: cfg.api_base_url.clone() }
    }
}

#[async_trait::async_trait]
impl Provider for ApiKey {
    fn id(&self) -> &str {
        API_KEY_PROVIDER
    }

    fn display_name(&self) -> &str {
        "Anthropic API key"
    }

    fn refreshes(&self) -> bool {
        false
    }

    async fn refresh(&self, _credential: &Credential, _now: DateTime<Utc>) -> TokenOutcome {
        TokenOutcome::Rejected {
            reason: "an API key is never refreshed; import a new key if this one was revoked".into(),
        }
    }

    async fn probe(&self) -> Result<Duration, ProviderError> {
        // No token endpoint to reach.
        Ok(Duration::ZERO)
    }

    fn exec_env(&self, credential: &Credential) -> Vec<(String, Secret)> {
        vec![(ANTHROPIC_API_KEY.to_owned(), credential.access_token.clone())]
    }

    fn api(&self) -> Option<ApiAccess> {
        Some(ApiAccess::new(self.api_base_url.clone(), CredentialHeader::XApiKey, ApiKind::AnthropicMessages))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    #[test]
    fn claude_file_round_trips_and_keeps_unknown_keys() {
        let f = ClaudeCredentialsFile;
        let text = json!({
            "claudeAiOauth": {"accessToken": "sk-ant-oat01-a", "refreshToken": "sk-ant-ort01-r",
                "expiresAt": 1_900_000_000_000_i64, "scopes": ["user:inference"], "extra": 1},
            "mcpOAuth": {"keep": true}
        })
        .to_string();
        let doc: Value = serde_json::from_str(&text).unwrap();
        assert!(f.detect(&doc));
        assert!(!f.detect(&json!({"tokens": {}})));
        let read = f.parse(&text, now()).unwrap();
        assert_eq!(read.credential.access_token.expose(), "sk-ant-oat01-a");
        let mut c = read.credential;
        c.access_token = Secret::new("sk-ant-oat01-b");
        let out: Value = serde_json::from_str(&f.render(Some(&text), &c, now()).unwrap()).unwrap();
        assert_eq!(out["claudeAiOauth"]["accessToken"], "sk-ant-oat01-b");
        assert_eq!(out["claudeAiOauth"]["extra"], 1);
        assert_eq!(out["mcpOAuth"]["keep"], true);
        assert!(matches!(f.render(Some("[1]"), &c, now()), Err(NativeFileError::ExistingNotJson { .. })));
        assert!(matches!(f.parse("sk-ant-oat01-bare", now()), Err(NativeFileError::BadJson { .. })));
        let blank = json!({"claudeAiOauth": {"accessToken": "", "refreshToken": "", "expiresAt": 0}}).to_string();
        assert!(matches!(f.parse(&blank, now()), Err(NativeFileError::Blank { .. })));
    }

    #[test]
    fn claude_file_path_follows_claude_config_dir() {
        let f = ClaudeCredentialsFile;
        let home = Path::new("/home/u");
        assert_eq!(f.default_path(home, &|_| None), Path::new("/home/u/.claude/.credentials.json"));
        let env = |k: &str| (k == CLAUDE_CONFIG_DIR).then(|| "/etc/claude".to_owned());
        assert_eq!(f.default_path(home, &env), Path::new("/etc/claude/.credentials.json"));
    }

    #[test]
    fn exec_env_and_api_of_each_kind() {
        let cfg = ProviderConfig::default();
        let c = Credential {
            access_token: Secret::new("tok"),
            refresh_token: None,
            expires_at: now(),
            scopes: vec![],
            subscription_type: None,
            rate_limit_tier: None,
            provider_data: None,
        };
        let a = Anthropic::new(&cfg).unwrap();
        assert_eq!(a.exec_env(&c)[0].0, CLAUDE_CODE_OAUTH_TOKEN);
        assert_eq!(a.api().unwrap().header, CredentialHeader::Bearer);
        assert!(a.refreshes() && a.native_file().is_some());
        let k = ApiKey::new(&cfg);
        assert_eq!(k.exec_env(&c)[0].0, ANTHROPIC_API_KEY);
        assert_eq!(
            k.api().unwrap(),
            ApiAccess::new(cfg.api_base_url, CredentialHeader::XApiKey, ApiKind::AnthropicMessages)
        );
        assert_eq!(a.api().unwrap().kind, ApiKind::AnthropicMessages);
        assert!(k.api().unwrap().extra_headers(&c).is_empty());
        assert!(!k.refreshes() && k.native_file().is_none());
    }
}
