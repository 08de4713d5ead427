//! Where each provider's accounts go: resolved once, when the proxy is built, from each
//! provider's [`Provider::api`](tokenkeeper_provider::Provider::api). The request path only
//! looks an account's provider id up here (no registry call, no clone of its `ApiAccess`).
//!
//! The proxy speaks Anthropic's Messages API, so only providers whose API is
//! [`ApiKind::AnthropicMessages`] get a route; an account of any other provider (Codex,
//! Gemini CLI, a provider with no API) is never picked, and status says why
//! ([`Routes::refusal`]).

use std::collections::HashMap;

use tokenkeeper_core::config::Config;
use tokenkeeper_provider::{ApiAccess, ApiKind, CredentialHeader, Providers};

use crate::{parse_upstream, ProxyError, Upstream};

/// How one provider's requests are sent.
#[derive(Debug)]
pub(crate) struct Route {
    /// Scheme, authority and path prefix of its API (or of `[proxy] upstream`).
    pub upstream: Upstream,
    /// Which header carries the credential.
    pub header: CredentialHeader,
    /// The provider's API access, for headers derived from the credential.
    pub access: ApiAccess,
}

/// Every provider's route, by provider id, and why the others have none.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    by_provider: HashMap<String, Route>,
    refused: HashMap<String, String>,
}

impl Routes {
    /// The routes of `providers`. `[proxy] upstream`, when set, replaces every route's base URL
    /// (one Anthropic-compatible upstream for all); otherwise each provider's own `base_url`.
    pub fn new(providers: &Providers, config: &Config) -> Result<Routes, ProxyError> {
        let mut routes = Routes::default();
        for p in providers.iter() {
            let Some(access) = p.api() else {
                routes.refused.insert(
                    p.id().to_owned(),
                    format!("{} ({}) has no API the proxy can send requests to", p.display_name(), p.id()),
                );
                continue;
            };
            if access.kind != ApiKind::AnthropicMessages {
                routes.refused.insert(
                    p.id().to_owned(),
                    format!(
                        "{} ({}) speaks the {} API, not Anthropic's Messages API; the proxy never sends its tokens",
                        p.display_name(),
                        p.id(),
                        access.kind
                    ),
                );
                continue;
            }
            let url = config.proxy.upstream.as_deref().unwrap_or(&access.base_url);
            let upstream = parse_upstream(url)?;
            routes.by_provider.insert(p.id().to_owned(), Route { upstream, header: access.header, access });
        }
        Ok(routes)
    }

    /// The route of `provider`, if the proxy may send its accounts' requests.
    pub fn get(&self, provider: &str) -> Option<&Route> {
        self.by_provider.get(provider)
    }

    /// Why accounts of `provider` are never picked; `None` when they are served.
    pub fn refusal(&self, provider: &str) -> Option<String> {
        if self.by_provider.contains_key(provider) {
            return None;
        }
        Some(self.refused.get(provider).cloned().unwrap_or_else(|| {
            format!("provider `{provider}` is not configured here; add a [providers.{provider}] table")
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn routes(toml: &str) -> Routes {
        let config = Config::from_toml(toml, std::path::Path::new("test.toml")).unwrap();
        Routes::new(&Providers::from_config(&config).unwrap(), &config).unwrap()
    }

    #[test]
    fn only_messages_api_providers_get_a_route_each_to_its_own_api_unless_upstream_is_set() {
        let toml = "[providers.claude-eu]\nkind = \"anthropic\"\napi_base_url = \"https://eu.example.com/anthropic\"\n";
        let r = routes(toml);
        let anthropic = r.get("anthropic").unwrap();
        assert_eq!(
            (anthropic.header, &*anthropic.upstream.key, anthropic.upstream.host.to_str().unwrap()),
            (CredentialHeader::Bearer, "https://api.anthropic.com", "api.anthropic.com")
        );
        assert_eq!(r.get("anthropic-api-key").unwrap().header, CredentialHeader::XApiKey);
        let eu = r.get("claude-eu").unwrap();
        assert_eq!((&*eu.upstream.key, eu.upstream.prefix.as_str()), ("https://eu.example.com", "/anthropic"));
        for id in ["codex", "gemini", "nobody"] {
            assert!(r.get(id).is_none(), "{id} must never be sent to an Anthropic upstream");
        }
        assert!(r.refusal("codex").unwrap().contains("ChatGPT Codex"));
        assert!(r.refusal("nobody").unwrap().contains("[providers.nobody]"));
        assert_eq!(r.refusal("anthropic"), None);

        let r = routes(&format!("[proxy]\nupstream = \"http://127.0.0.1:9/v\"\n{toml}"));
        for id in ["anthropic", "anthropic-api-key", "claude-eu"] {
            let upstream = &r.get(id).unwrap().upstream;
            assert_eq!(
                (&*upstream.key, upstream.host.to_str().unwrap()),
                ("http://127.0.0.1:9", "127.0.0.1:9"),
                "{id}"
            );
        }
        assert!(r.get("codex").is_none(), "the override does not make Codex an Anthropic account");
    }
}
