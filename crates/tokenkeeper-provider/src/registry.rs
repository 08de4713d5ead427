//! [`Providers::from_config`]: the providers of an installation, built from its configuration.

use std::sync::Arc;

use tokenkeeper_core::config::{ProviderKind, ANTHROPIC, CODEX, GEMINI};
use tokenkeeper_core::formats::API_KEY_PROVIDER;
use tokenkeeper_core::Config;

use crate::anthropic::{Anthropic, ApiKey};
use crate::codex::Codex;
use crate::error::ProviderError;
use crate::gemini::Gemini;
use crate::oauth2::GenericOAuth2;
use crate::provider::{Provider, Providers};

impl Providers {
    /// Every provider `config` knows: the built-ins `anthropic`, `anthropic-api-key` (plain
    /// API keys, sent to `[providers.anthropic]`'s API base), `codex` and `gemini`, each with
    /// its `[providers.ID]` table over its defaults; and each other `[providers.NAME]` table as
    /// the implementation its `kind` names (`oauth2` for a generic refresh-token grant, or a
    /// built-in kind under another id). A table that cannot be used is an error naming it.
    pub fn from_config(config: &Config) -> Result<Providers, ProviderError> {
        let anthropic = config.provider(ANTHROPIC);
        let mut providers = Providers::new()
            .with(Arc::new(Anthropic::new(&anthropic)?))
            .with(Arc::new(ApiKey::new(&anthropic)))
            .with(Arc::new(Codex::new(&config.provider(CODEX))?))
            .with(Arc::new(Gemini::new(&config.provider(GEMINI))?));
        for (id, cfg) in &config.providers {
            if [ANTHROPIC, CODEX, GEMINI, API_KEY_PROVIDER].contains(&id.as_str()) {
                continue;
            }
            let provider: Arc<dyn Provider> = match cfg.kind {
                ProviderKind::Anthropic => Arc::new(Anthropic::with_id(id, cfg)?),
                ProviderKind::Codex => Arc::new(Codex::with_id(id, cfg)?),
                ProviderKind::Gemini => Arc::new(Gemini::with_id(id, cfg)?),
                ProviderKind::Oauth2 => Arc::new(GenericOAuth2::new(id, cfg)?),
            };
            providers = providers.with(provider);
        }
        Ok(providers)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_default_configuration_has_every_built_in() {
        let p = Providers::from_config(&Config::default()).unwrap();
        assert!(p.get(ANTHROPIC).is_some_and(|p| p.refreshes()));
        assert!(p.get(API_KEY_PROVIDER).is_some_and(|p| !p.refreshes()));
        for id in [CODEX, GEMINI] {
            let provider = p.get(id).unwrap_or_else(|| panic!("{id} is missing"));
            assert_eq!(provider.id(), id);
            assert!(provider.native_file().is_some(), "{id} has a CLI file");
        }
        assert!(p.get("nobody").is_none());
    }

    #[test]
    fn custom_tables_become_providers_of_their_kind_under_their_name() {
        let text = r#"
[providers.corp]
kind = "oauth2"
token_url = "https://sso.example.com/oauth/token"
client_id = "tk"

[providers.codex-staging]
kind = "codex"
token_url = "https://auth.staging.example.com/oauth/token"
"#;
        let config = Config::from_toml(text, std::path::Path::new("test.toml")).unwrap();
        let p = Providers::from_config(&config).unwrap();
        let corp = p.get("corp").expect("the generic provider");
        assert!(corp.refreshes() && corp.native_file().is_none());
        let staging = p.get("codex-staging").expect("a Codex provider under another id");
        assert_eq!(staging.id(), "codex-staging");
        assert!(staging.native_file().is_some());
        assert!(p.get(CODEX).is_some(), "the built-in stays");
    }
}
