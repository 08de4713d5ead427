//! A provider configured entirely in TOML (`[providers.<id>] kind = "oauth2"`): any OAuth 2.0
//! refresh-token grant (RFC 6749 §6), JSON or form body, with or without a client secret,
//! expiry from `expires_in` or the access token's `exp`. It has no native file: the generic
//! sinks (env file, template, command, Infisical) deliver its tokens.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokenkeeper_core::config::ProviderConfig;
use tokenkeeper_core::{Credential, Secret};

use crate::client::{OAuthClient, TokenOutcome};
use crate::error::ProviderError;
use crate::provider::{ApiAccess, ApiKind, CredentialHeader, Provider};
use crate::shared;

/// A generic OAuth2 provider: [`Provider`] without a native file.
#[derive(Debug, Clone)]
pub struct GenericOAuth2 {
    id: String,
    cfg: ProviderConfig,
    client: OAuthClient,
}

impl GenericOAuth2 {
    /// The provider `[providers.<id>]` describes. Fails, saying which key to set, when
    /// `token_url` or `client_id` is missing or the client secret cannot be read.
    pub fn new(id: &str, cfg: &ProviderConfig) -> Result<GenericOAuth2, ProviderError> {
        if cfg.token_url.trim().is_empty() {
            return Err(ProviderError::Missing { provider: id.to_owned(), key: "token_url" });
        }
        Ok(GenericOAuth2 { id: id.to_owned(), cfg: cfg.clone(), client: shared::client(id, cfg)? })
    }
}

#[async_trait::async_trait]
impl Provider for GenericOAuth2 {
    fn id(&self) -> &str {
        &self.id
    }

    /// The table's id: a generic provider has no other name.
    fn display_name(&self) -> &str {
        &self.id
    }

    async fn refresh(&self, credential: &Credential, now: DateTime<Utc>) -> TokenOutcome {
        shared::refresh(&self.client, &self.cfg, credential, now, &self.id, &|_, _| {}).await
    }

    async fn probe(&self) -> Result<Duration, ProviderError> {
        self.client.probe().await
    }

    /// Nothing: which variable a program reads is the sink's business (`env_file`, `exec`
    /// with a template).
    fn exec_env(&self, _credential: &Credential) -> Vec<(String, Secret)> {
        Vec::new()
    }

    fn api(&self) -> Option<ApiAccess> {
        (!self.cfg.api_base_url.is_empty())
            .then(|| ApiAccess::new(self.cfg.api_base_url.clone(), CredentialHeader::Bearer, ApiKind::Other))
    }
}
