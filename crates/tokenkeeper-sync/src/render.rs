//! What a file sink writes: [`render_sink`] turns a sink's config, an account and the file's
//! current content into the new content.
//!
//! | kind | content |
//! | --- | --- |
//! | `env_file` | the file with `key` set to the **access token only** ([`crate::dotenv::set_var`]) |
//! | `claude_credentials` | Claude Code's JSON, merged so unknown keys survive |
//! | `openclaw` | `oauth.json` (`layout = "oauth"`, default) or auth-profiles (`"auth_profiles"`) |
//! | `template` | a minijinja template (`template` or `template_file`) |
//! | `native` | a provider's CLI file, by its `NativeFile` ([`render_sink_with`]) |
//!
//! Template variables: `access_token`, `expires_at` (RFC 3339), `expires_at_ms`, `scopes` (a
//! list), `account` (its name), `email` (empty when unknown), and `refresh_token` only when
//! the template names it (empty for a long-lived token that has none). Undefined variables
//! are errors, so a typo never writes an empty token. A sink never writes a refresh token to
//! a file that did not ask for one: `env_file` writes only the access token, a template only
//! what it names. The trailing newline of a template is kept.

use std::collections::BTreeMap;
use std::path::PathBuf;

use minijinja::{Environment, UndefinedBehavior, Value};
use tokenkeeper_core::config::{SinkConfig, SinkTarget, TemplateSource};
use tokenkeeper_core::formats::{render_claude_credentials, render_openclaw};
use tokenkeeper_core::paths::expand_tilde;
use tokenkeeper_core::Account;
use tokenkeeper_provider::{NativeFile, Providers};

use crate::dotenv;
use crate::error::SyncError;

/// The new content of a file sink.
#[derive(Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The bytes to write (UTF-8). Holds a token: never log it.
    pub contents: String,
}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rendered({} bytes)", self.contents.len())
    }
}

/// Renders the content of a file sink from the account's credential and the file's current
/// content (`None` when it does not exist yet).
pub fn render_sink(cfg: &SinkConfig, account: &Account, existing: Option<&str>) -> Result<Rendered, SyncError> {
    let c = &account.credential;
    let contents = match &cfg.target {
        SinkTarget::EnvFile { key, .. } => dotenv::set_var(existing.unwrap_or(""), key, c.access_token.expose()),
        SinkTarget::ClaudeCredentials { file } => render_claude_credentials(existing, c).map_err(|source| {
            SyncError::Document { action: "merge the credential into", path: file.path.clone(), source }
        })?,
        SinkTarget::Openclaw { file, layout } => render_openclaw(existing, c, *layout).map_err(|source| {
            SyncError::Document { action: "merge the credential into", path: file.path.clone(), source }
        })?,
        SinkTarget::Template { source, .. } => render_template(cfg, source, account)?,
        SinkTarget::Native { .. } => {
            return Err(SyncError::Invalid {
                action: "render a file",
                path: PathBuf::from(cfg.display_name()),
                message: "a native sink is written in its provider's format: render it with render_sink_with".into(),
            })
        }
        SinkTarget::Infisical(_) | SinkTarget::Command { .. } => {
            return Err(SyncError::Invalid {
                action: "render a file",
                path: PathBuf::from(cfg.display_name()),
                message: "this sink kind writes no file".into(),
            })
        }
    };
    Ok(Rendered { contents })
}

/// As [`render_sink`], and a `native` sink in its provider's format, the provider taken from
/// `providers` (the sink's `provider`, else the account's).
pub fn render_sink_with(
    cfg: &SinkConfig,
    account: &Account,
    existing: Option<&str>,
    providers: &Providers,
) -> Result<Rendered, SyncError> {
    let SinkTarget::Native { file, .. } = &cfg.target else { return render_sink(cfg, account, existing) };
    let native = native_file_of(cfg, account, providers)?;
    let contents = native
        .render(existing, &account.credential, chrono::Utc::now())
        .map_err(|source| SyncError::Native { action: "merge the credential into", path: file.path.clone(), source })?;
    Ok(Rendered { contents })
}

/// The `NativeFile` a `native` sink writes: its `provider`'s, else the account's own
/// provider's. A sink naming another provider than the account's is refused: that provider's
/// CLI would be handed a credential it cannot use.
pub fn native_file_of<'p>(
    cfg: &SinkConfig,
    account: &Account,
    providers: &'p Providers,
) -> Result<&'p dyn NativeFile, SyncError> {
    let invalid = |message: String| SyncError::Invalid {
        action: "write the native file",
        path: PathBuf::from(cfg.display_name()),
        message,
    };
    let wanted = match &cfg.target {
        SinkTarget::Native { provider: Some(p), .. } => p.as_str(),
        _ => account.provider.as_str(),
    };
    if wanted != account.provider {
        return Err(invalid(format!(
            "the sink writes provider `{wanted}`'s file but account `{}` belongs to `{}`; point the sink at an account of `{wanted}`",
            account.name, account.provider
        )));
    }
    let provider = providers.get(wanted).ok_or_else(|| {
        invalid(format!(
            "provider `{wanted}` is not known here; add a `[providers.{wanted}]` table to the configuration"
        ))
    })?;
    provider.native_file().ok_or_else(|| {
        invalid(format!("provider `{wanted}` keeps no CLI file; use an env_file, template or command sink instead"))
    })
}

fn render_template(cfg: &SinkConfig, source: &TemplateSource, account: &Account) -> Result<String, SyncError> {
    let (source, origin) = match source {
        TemplateSource::Text(t) => (t.clone(), PathBuf::from(cfg.display_name())),
        TemplateSource::File(f) => {
            let f = expand_tilde(f);
            let text = std::fs::read_to_string(&f).map_err(|e| SyncError::io("read the template", &f, e))?;
            (text, f)
        }
    };
    let c = &account.credential;
    let secrets: Vec<&tokenkeeper_core::Secret> =
        [Some(&c.access_token), c.refresh_token.as_ref()].into_iter().flatten().collect();
    // Some messages quote the value a filter choked on; that value may be a token.
    let template_error = |action: &'static str, e: minijinja::Error| SyncError::Template {
        action,
        path: origin.clone(),
        message: tokenkeeper_core::redact(&e.to_string(), secrets.iter().copied()),
    };
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    // Debug info would copy the variables' values (the token) into errors.
    env.set_debug(false);
    let template = env.template_from_str(&source).map_err(|e| template_error("compile the template of", e))?;
    let mut vars: BTreeMap<&str, Value> = BTreeMap::new();
    vars.insert("access_token", Value::from(c.access_token.expose()));
    vars.insert("expires_at", Value::from(c.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
    vars.insert("expires_at_ms", Value::from(c.expires_at.timestamp_millis()));
    vars.insert("scopes", Value::from(c.scopes_for_writing()));
    vars.insert("account", Value::from(account.name.as_str()));
    vars.insert("email", Value::from(account.email.clone().unwrap_or_default()));
    if template.undeclared_variables(false).contains("refresh_token") {
        vars.insert("refresh_token", Value::from(c.refresh_token.as_ref().map(|r| r.expose()).unwrap_or("")));
    }
    template.render(Value::from(vars)).map_err(|e| template_error("render the template of", e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn account() -> Account {
        crate::testing::account("main", "sk-ant-oat01-ACCESS")
    }

    fn template_sink(t: &str) -> SinkConfig {
        let toml = format!("account = \"main\"\nkind = \"template\"\npath = \"/x\"\ntemplate = '''{t}'''\n");
        toml::from_str(&toml).unwrap()
    }

    #[test]
    fn undefined_variables_are_errors_without_values() {
        let e = render_sink(&template_sink("{{ acess_token }}"), &account(), None).unwrap_err();
        let msg = crate::error::error_chain(&e);
        assert!(msg.contains("undefined"), "{msg}");
        for shown in [msg, format!("{e:?}")] {
            assert!(!shown.contains("ACCESS") && !shown.contains("REFRESH"), "{shown}");
        }
    }

    #[test]
    fn filter_errors_never_quote_the_token() {
        let e = render_sink(&template_sink("{{ access_token | int }}"), &account(), None).unwrap_err();
        let shown = format!("{e} {e:?}");
        assert!(shown.contains("render the template"), "{shown}");
        assert!(!shown.contains("ACCESS"), "{shown}");
    }

    #[test]
    fn refresh_token_only_when_named() {
        let out = render_sink(&template_sink("{{ access_token }}"), &account(), None).unwrap();
        assert_eq!(out.contents, "sk-ant-oat01-ACCESS");
        let out = render_sink(&template_sink("{{ refresh_token }}"), &account(), None).unwrap();
        assert_eq!(out.contents, "sk-ant-ort01-REFRESH");
    }

    #[test]
    fn env_file_never_gets_the_refresh_token() {
        let cfg: SinkConfig = toml::from_str("account=\"main\"\nkind=\"env_file\"\npath=\"/x\"\nkey=\"K\"\n").unwrap();
        let out = render_sink(&cfg, &account(), Some("A=1\n")).unwrap();
        assert_eq!(out.contents, "A=1\nK=sk-ant-oat01-ACCESS\n");
        assert!(!format!("{out:?}").contains("ACCESS"));
    }
}
