//! [`Providers::from_config`]: the providers of an installation, built from its configuration.

use std::sync::Arc;

use tokenkeeper_core::config::ANTHROPIC;
use tokenkeeper_core::Config;

use crate::anthropic::{Anthropic, ApiKey};
use crate::error::ProviderError;
use crate::provider::Providers;

impl Providers {
    /// Every provider `config` knows: `anthropic` and `anthropic-api-key` always (the latter
    /// sends to `[providers.anthropic]`'s API base).
    pub fn from_config(config: &Config) -> Result<Providers, ProviderError> {
        let anthropic = config.provider(ANTHROPIC);
        Ok(Providers::new().with(Arc::new(Anthropic::new(&anthropic)?)).with(Arc::new(ApiKey::new(&anthropic))))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use tokenkeeper_core::formats::API_KEY_PROVIDER;

    use super::*;

    #[test]
    fn the_default_configuration_has_both_anthropic_providers() {
        let p = Providers::from_config(&Config::default()).unwrap();
        assert!(p.get(ANTHROPIC).is_some_and(|p| p.refreshes()));
        assert!(p.get(API_KEY_PROVIDER).is_some_and(|p| !p.refreshes()));
        assert!(p.get("nobody").is_none());
    }
}
