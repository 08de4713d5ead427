//! `[providers.<id>]`: one OAuth provider's endpoints, client and quirks.
//!
//! The built-in ids `anthropic`, `codex` and `gemini` start from their own provider's values
//! ([`ProviderConfig::builtin`]); a table sets only what it changes, so
//! `[providers.codex] token_url = "http://127.0.0.1:…"` keeps Codex's client id. Any other id
//! is a provider of the user's own and says what it is with `kind`: `kind = "oauth2"` for a
//! generic refresh-token login (then `token_url` and `client_id` are required), or the kind of
//! a built-in (`kind = "codex"`) for a second copy of it with other endpoints.
//!
//! Where each default comes from is in `docs/PROVIDERS.md`, fact by fact.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::secret::Secret;

/// The id of Anthropic (Claude Code), the default provider.
pub const ANTHROPIC: &str = "anthropic";
/// The id of OpenAI's Codex CLI (ChatGPT login).
pub const CODEX: &str = "codex";
/// The id of Google's Gemini CLI (Google login).
pub const GEMINI: &str = "gemini";

/// Which implementation serves a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, strum::IntoStaticStr, strum::Display)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ProviderKind {
    /// Claude Code's OAuth login.
    Anthropic,
    /// Codex CLI's ChatGPT login (`~/.codex/auth.json`).
    Codex,
    /// Gemini CLI's Google login (`~/.gemini/oauth_creds.json`).
    Gemini,
    /// Any provider with a refresh-token grant, configured entirely here.
    Oauth2,
}

/// How the token request's body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, strum::IntoStaticStr, strum::Display)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum TokenBody {
    /// `Content-Type: application/json` (Anthropic, Codex).
    Json,
    /// `Content-Type: application/x-www-form-urlencoded` (RFC 6749; Google).
    Form,
}

/// Where the access token's expiry comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, strum::IntoStaticStr, strum::Display)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ExpirySource {
    /// The answer's `expires_in` (seconds), as RFC 6749 says.
    ExpiresIn,
    /// The `exp` claim of the access token, a JWT (Codex); `expires_in` when it has none.
    JwtExp,
}

/// Whether the provider rotates refresh tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, strum::IntoStaticStr, strum::Display)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Rotation {
    /// Each refresh returns a new refresh token and kills the old one (Anthropic, Codex): a
    /// success without one is suspicious and logged.
    SingleUse,
    /// The refresh token stays valid and answers usually leave it out (Google): the old one is
    /// kept.
    Reusable,
}

/// `[providers.<id>]`, every default filled in. Its `Debug` shows the client secret only as a
/// fingerprint ([`Secret`]).
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// Which implementation serves it.
    pub kind: ProviderKind,
    /// Token endpoint (refresh and code exchange).
    pub token_url: String,
    /// Authorize page for a new login; empty when the provider has no login flow here.
    pub authorize_url: String,
    /// Redirect URI registered for the login; empty when none.
    pub redirect_uri: String,
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret, when the client has one. Prefer `client_secret_file` or
    /// `client_secret_env` for a real secret; Gemini CLI's is public (an installed app's).
    pub client_secret: Option<Secret>,
    /// A file whose content (trimmed) is the client secret, read when the provider is built.
    pub client_secret_file: Option<PathBuf>,
    /// An environment variable holding the client secret, read when the provider is built.
    pub client_secret_env: Option<String>,
    /// Base URL of the provider's API (used by `doctor --probe` and the proxy); empty when none.
    pub api_base_url: String,
    /// Scopes asked for at login.
    pub scopes: Vec<String>,
    /// Whether a refresh sends `scope` (the credential's scopes, else `scopes`). Claude Code
    /// does; Codex and Gemini CLI do not.
    pub refresh_scope: bool,
    /// How the token request's body is encoded.
    pub body: TokenBody,
    /// Where the access token's expiry comes from.
    pub expiry: ExpirySource,
    /// Whether refresh tokens rotate.
    pub rotation: Rotation,
    /// OAuth `error` codes, beyond the standard ones (`invalid_grant`, …), that mean the login
    /// is dead and a new one is needed.
    pub rejection_codes: Vec<String>,
    /// Timeout of one token request.
    pub timeout: Duration,
    /// Warn when a refresh token is older than this.
    pub refresh_token_warn_age: Duration,
    /// Expected life of a refresh token.
    pub refresh_token_life: Duration,
}

impl Default for ProviderConfig {
    /// Anthropic's values, the provider of every account that names none.
    fn default() -> Self {
        Self::anthropic()
    }
}

const DAY: u64 = 86_400;

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

impl ProviderConfig {
    /// Claude Code's login.
    fn anthropic() -> Self {
        Self {
            kind: ProviderKind::Anthropic,
            token_url: "https://platform.claude.com/v1/oauth/token".into(),
            authorize_url: "https://claude.ai/oauth/authorize".into(),
            redirect_uri: "https://platform.claude.com/oauth/code/callback".into(),
            client_id: "9d1c250a-e61b-44d9-88ed-5944d1962f5e".into(),
            api_base_url: "https://api.anthropic.com".into(),
            scopes: strings(&["org:create_api_key", "user:profile", "user:inference"]),
            refresh_scope: true,
            body: TokenBody::Json,
            rotation: Rotation::SingleUse,
            ..Self::oauth2()
        }
    }

    /// Codex CLI's ChatGPT login (`codex-rs/login/src/auth/manager.rs`: `REFRESH_TOKEN_URL`,
    /// `CLIENT_ID`, a JSON body without `scope`; the access token is a JWT whose `exp` Codex
    /// itself reads).
    fn codex() -> Self {
        Self {
            kind: ProviderKind::Codex,
            token_url: "https://auth.openai.com/oauth/token".into(),
            authorize_url: "https://auth.openai.com/oauth/authorize".into(),
            redirect_uri: "http://localhost:1455/auth/callback".into(),
            client_id: "app_EMoamEEZ73f0CkXaXp7hrann".into(),
            api_base_url: "https://chatgpt.com/backend-api/codex".into(),
            // `build_authorize_url` in codex-rs/login/src/server.rs.
            scopes: strings(&[
                "openid",
                "profile",
                "email",
                "offline_access",
                "api.connectors.read",
                "api.connectors.invoke",
            ]),
            body: TokenBody::Json,
            expiry: ExpirySource::JwtExp,
            rotation: Rotation::SingleUse,
            rejection_codes: strings(&["refresh_token_reused", "refresh_token_expired", "refresh_token_invalidated"]),
            ..Self::oauth2()
        }
    }

    /// Gemini CLI's Google login (`packages/core/src/code_assist/oauth2.ts`: the installed-app
    /// client id and secret, the scopes; google-auth-library's token URL and form body).
    fn gemini() -> Self {
        Self {
            kind: ProviderKind::Gemini,
            token_url: "https://oauth2.googleapis.com/token".into(),
            authorize_url: "https://accounts.google.com/o/oauth2/v2/auth".into(),
            redirect_uri: "https://codeassist.google.com/authcode".into(),
            client_id: "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com".into(),
            // Public by design: Google's installed-app flow embeds it in the application, and
            // Gemini CLI ships it in its source. Kept as a Secret all the same.
            client_secret: Some(Secret::new("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")),
            api_base_url: "https://cloudcode-pa.googleapis.com".into(),
            scopes: strings(&[
                "https://www.googleapis.com/auth/cloud-platform",
                "https://www.googleapis.com/auth/userinfo.email",
                "https://www.googleapis.com/auth/userinfo.profile",
            ]),
            body: TokenBody::Form,
            rotation: Rotation::Reusable,
            // Google refresh tokens do not expire on a schedule; one unused for six months does.
            refresh_token_warn_age: Duration::from_secs(150 * DAY),
            refresh_token_life: Duration::from_secs(180 * DAY),
            ..Self::oauth2()
        }
    }

    /// A provider of the user's own: nothing but its kind is known. The other kinds start
    /// from it and set what differs.
    fn oauth2() -> Self {
        Self {
            kind: ProviderKind::Oauth2,
            token_url: String::new(),
            authorize_url: String::new(),
            redirect_uri: String::new(),
            client_id: String::new(),
            client_secret: None,
            client_secret_file: None,
            client_secret_env: None,
            api_base_url: String::new(),
            scopes: Vec::new(),
            refresh_scope: false,
            body: TokenBody::Form,
            expiry: ExpirySource::ExpiresIn,
            rotation: Rotation::Reusable,
            rejection_codes: Vec::new(),
            timeout: Duration::from_secs(30),
            refresh_token_warn_age: Duration::from_secs(25 * DAY),
            refresh_token_life: Duration::from_secs(30 * DAY),
        }
    }

    /// The defaults of a kind.
    pub fn for_kind(kind: ProviderKind) -> Self {
        match kind {
            ProviderKind::Anthropic => Self::anthropic(),
            ProviderKind::Codex => Self::codex(),
            ProviderKind::Gemini => Self::gemini(),
            ProviderKind::Oauth2 => Self::oauth2(),
        }
    }

    /// The kind a built-in id stands for (`anthropic`, `codex`, `gemini`); `None` for others.
    pub fn builtin_kind(id: &str) -> Option<ProviderKind> {
        match id {
            ANTHROPIC => Some(ProviderKind::Anthropic),
            CODEX => Some(ProviderKind::Codex),
            GEMINI => Some(ProviderKind::Gemini),
            _ => None,
        }
    }

    /// The defaults of a built-in id; `None` for other ids.
    pub fn builtin(id: &str) -> Option<Self> {
        Self::builtin_kind(id).map(Self::for_kind)
    }

    /// What `id` gets when no table names it: its built-in defaults, else a generic provider
    /// with nothing set (which cannot refresh until configured).
    pub fn defaults_for(id: &str) -> Self {
        Self::builtin(id).unwrap_or_else(Self::oauth2)
    }

    /// The client secret from whichever of `client_secret`, `client_secret_file` and
    /// `client_secret_env` is set; `None` when none is. `env` reads the environment.
    pub fn resolve_client_secret(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Secret>, ClientSecretError> {
        if let Some(path) = &self.client_secret_file {
            let text = std::fs::read_to_string(path)
                .map_err(|source| ClientSecretError::Read { path: path.clone(), source })?;
            let value = text.trim();
            if value.is_empty() {
                return Err(ClientSecretError::Empty { origin: path.display().to_string() });
            }
            return Ok(Some(Secret::new(value)));
        }
        if let Some(var) = &self.client_secret_env {
            let value = env(var).ok_or_else(|| ClientSecretError::EnvMissing { var: var.clone() })?;
            let value = value.trim();
            if value.is_empty() {
                return Err(ClientSecretError::Empty { origin: format!("${var}") });
            }
            return Ok(Some(Secret::new(value)));
        }
        Ok(self.client_secret.clone())
    }

    /// Fills in `table` over the defaults of `id` (or of its `kind`). The error says what to
    /// fix.
    fn from_table(id: &str, table: ProviderTable) -> Result<Self, ProviderTableError> {
        let kind = match (Self::builtin_kind(id), table.kind) {
            (Some(builtin), None) => builtin,
            (Some(builtin), Some(kind)) if kind == builtin => builtin,
            (Some(builtin), Some(kind)) => {
                return Err(ProviderTableError::BuiltinKind { id: id.to_owned(), builtin, kind })
            }
            (None, Some(kind)) => kind,
            (None, None) => return Err(ProviderTableError::KindRequired { id: id.to_owned() }),
        };
        let mut c = Self::for_kind(kind);
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = table.$field { c.$field = v; } )* };
        }
        set!(
            token_url,
            authorize_url,
            redirect_uri,
            client_id,
            api_base_url,
            scopes,
            refresh_scope,
            body,
            expiry,
            rotation,
            rejection_codes,
            timeout,
            refresh_token_warn_age,
            refresh_token_life
        );
        let secrets =
            [table.client_secret.is_some(), table.client_secret_file.is_some(), table.client_secret_env.is_some()];
        if secrets.iter().filter(|s| **s).count() > 1 {
            return Err(ProviderTableError::SecretSources { id: id.to_owned() });
        }
        if secrets.iter().any(|s| *s) {
            // One given replaces the kind's default secret (Gemini CLI's) whichever way it comes.
            c.client_secret = table.client_secret;
            c.client_secret_file = table.client_secret_file;
            c.client_secret_env = table.client_secret_env;
        }
        Ok(c)
    }
}

/// Why a `[providers.<id>]` table was refused. Each message names the table and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderTableError {
    /// A built-in id with another built-in's `kind`.
    #[error(
        "[providers.{id}] is the built-in {builtin} provider and cannot have kind = \"{kind}\"; remove `kind`, or \
         give the table another name"
    )]
    BuiltinKind {
        /// The table's id.
        id: String,
        /// The kind the id is.
        builtin: ProviderKind,
        /// The kind the table asked for.
        kind: ProviderKind,
    },
    /// An id that is not built in, without `kind`.
    #[error(
        "[providers.{id}] is not a built-in provider (anthropic, codex, gemini): add kind = \"oauth2\" with \
         token_url and client_id for a provider of your own, or kind = \"codex\" (or another built-in) for a copy \
         of a built-in with other endpoints"
    )]
    KindRequired {
        /// The table's id.
        id: String,
    },
    /// More than one of `client_secret`, `client_secret_file` and `client_secret_env`.
    #[error(
        "[providers.{id}] sets more than one of client_secret, client_secret_file and client_secret_env; keep one"
    )]
    SecretSources {
        /// The table's id.
        id: String,
    },
}

/// Why the client secret cannot be read. Never quotes the secret.
#[derive(Debug, thiserror::Error)]
pub enum ClientSecretError {
    /// `client_secret_file` cannot be read.
    #[error("cannot read client_secret_file {path}; check that it exists and this user may read it")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `client_secret_env` names a variable that is not set.
    #[error("client_secret_env names ${var}, which is not set; set it or remove client_secret_env")]
    EnvMissing {
        /// The variable.
        var: String,
    },
    /// The file or variable is empty.
    #[error("the client secret in {origin} is empty; put the secret there or remove the setting")]
    Empty {
        /// The file or `$VAR`.
        origin: String,
    },
}

/// A `[providers.<id>]` table as written: every key optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderTable {
    kind: Option<ProviderKind>,
    token_url: Option<String>,
    authorize_url: Option<String>,
    redirect_uri: Option<String>,
    client_id: Option<String>,
    client_secret: Option<Secret>,
    client_secret_file: Option<PathBuf>,
    client_secret_env: Option<String>,
    api_base_url: Option<String>,
    scopes: Option<Vec<String>>,
    refresh_scope: Option<bool>,
    body: Option<TokenBody>,
    expiry: Option<ExpirySource>,
    rotation: Option<Rotation>,
    rejection_codes: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde::option")]
    timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    refresh_token_warn_age: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    refresh_token_life: Option<Duration>,
}

/// Reads `[providers]`: each table over its own id's (or kind's) defaults.
pub(crate) fn deserialize_providers<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, ProviderConfig>, D::Error> {
    let tables = BTreeMap::<String, ProviderTable>::deserialize(deserializer)?;
    tables
        .into_iter()
        .map(|(id, table)| ProviderConfig::from_table(&id, table).map(|c| (id, c)).map_err(serde::de::Error::custom))
        .collect()
}

/// Checks what serde cannot: URLs and the keys a generic provider must set. `invalid` builds
/// the error from the key and the message.
pub(crate) fn validate<E>(
    providers: &BTreeMap<String, ProviderConfig>,
    invalid: &dyn Fn(String, String) -> E,
) -> Result<(), E> {
    for (id, p) in providers {
        let generic = p.kind == ProviderKind::Oauth2;
        for (key, value, required) in [
            ("token_url", &p.token_url, true),
            ("authorize_url", &p.authorize_url, !generic),
            ("redirect_uri", &p.redirect_uri, !generic),
            ("api_base_url", &p.api_base_url, !generic),
        ] {
            if value.is_empty() && !required {
                continue;
            }
            if value.is_empty() {
                return Err(invalid(
                    format!("providers.{id}.{key}"),
                    format!("is required for kind = \"{}\": the provider's token endpoint, an http(s) URL", p.kind),
                ));
            }
            match url::Url::parse(value) {
                Ok(u) if u.scheme() == "https" || u.scheme() == "http" => {}
                _ => {
                    return Err(invalid(
                        format!("providers.{id}.{key}"),
                        format!("is `{value}`; expected an http(s) URL"),
                    ))
                }
            }
        }
        if p.client_id.trim().is_empty() {
            return Err(invalid(
                format!("providers.{id}.client_id"),
                "is required: the OAuth client id the provider registered for the app whose logins are kept".into(),
            ));
        }
        if p.timeout.is_zero() {
            return Err(invalid(
                format!("providers.{id}.timeout"),
                "must be more than zero, for example \"30s\"".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn table(text: &str) -> Result<BTreeMap<String, ProviderConfig>, String> {
        #[derive(Deserialize)]
        struct Doc {
            #[serde(deserialize_with = "deserialize_providers")]
            providers: BTreeMap<String, ProviderConfig>,
        }
        toml::from_str::<Doc>(text).map(|d| d.providers).map_err(|e| e.to_string())
    }

    #[test]
    fn a_refused_table_is_a_typed_error_naming_the_table_and_the_fix() {
        let refused = |id: &str, text: &str| {
            ProviderConfig::from_table(id, toml::from_str::<ProviderTable>(text).unwrap()).unwrap_err()
        };
        let e = refused("codex", "kind = \"gemini\"");
        assert_eq!(
            e,
            ProviderTableError::BuiltinKind {
                id: "codex".into(),
                builtin: ProviderKind::Codex,
                kind: ProviderKind::Gemini
            }
        );
        assert_eq!(
            e.to_string(),
            "[providers.codex] is the built-in codex provider and cannot have kind = \"gemini\"; remove `kind`, or \
             give the table another name"
        );
        let e = refused("acme", "token_url = \"https://acme.example/token\"");
        assert_eq!(e, ProviderTableError::KindRequired { id: "acme".into() });
        assert!(e.to_string().starts_with("[providers.acme] is not a built-in provider"), "{e}");
        assert!(e.to_string().contains("add kind = \"oauth2\" with token_url and client_id"), "{e}");
        let e = refused("acme", "kind = \"oauth2\"\nclient_secret = \"s\"\nclient_secret_env = \"S\"");
        assert_eq!(e, ProviderTableError::SecretSources { id: "acme".into() });
        assert_eq!(
            e.to_string(),
            "[providers.acme] sets more than one of client_secret, client_secret_file and client_secret_env; keep one"
        );
    }

    #[test]
    fn builtins_keep_their_own_defaults_when_a_table_sets_some_keys() {
        let p = table(
            "[providers.codex]\ntoken_url = \"http://127.0.0.1:9/oauth/token\"\n\
             [providers.gemini]\ntimeout = \"5s\"\n[providers.anthropic]\nclient_id = \"x\"\n",
        )
        .unwrap();
        let codex = &p["codex"];
        assert_eq!(codex.token_url, "http://127.0.0.1:9/oauth/token");
        assert_eq!(codex.client_id, "app_EMoamEEZ73f0CkXaXp7hrann");
        assert_eq!(
            (codex.kind, codex.body, codex.expiry),
            (ProviderKind::Codex, TokenBody::Json, ExpirySource::JwtExp)
        );
        let gemini = &p["gemini"];
        assert_eq!(gemini.timeout, Duration::from_secs(5));
        assert_eq!(gemini.token_url, "https://oauth2.googleapis.com/token");
        assert_eq!(gemini.body, TokenBody::Form);
        assert!(gemini.client_secret.is_some());
        assert_eq!(p["anthropic"].token_url, "https://platform.claude.com/v1/oauth/token");
        assert_eq!(p["anthropic"].client_id, "x");
    }

    #[test]
    fn custom_tables_say_what_they_are() {
        let e = table("[providers.acme]\ntoken_url = \"https://acme.example/token\"\n").unwrap_err();
        assert!(e.contains("kind = \\\"oauth2\\\"") || e.contains("kind = \"oauth2\""), "{e}");
        let e = table("[providers.codex]\nkind = \"gemini\"\n").unwrap_err();
        assert!(e.contains("built-in codex provider"), "{e}");
        let e = table("[providers.acme]\nkind = \"oauth2\"\nclient_secret = \"a\"\nclient_secret_env = \"B\"\n")
            .unwrap_err();
        assert!(e.contains("keep one") && !e.contains("\"a\""), "{e}");
        let e = table("[providers.acme]\nkind = \"oauth2\"\nbody = \"xml\"\n").unwrap_err();
        assert!(e.contains("json") && e.contains("form"), "{e}");

        let p = table(
            "[providers.acme]\nkind = \"oauth2\"\ntoken_url = \"https://acme.example/token\"\nclient_id = \"c\"\n\
             body = \"json\"\nexpiry = \"jwt_exp\"\nrotation = \"single_use\"\nscopes = [\"a\", \"b\"]\n\
             refresh_scope = true\nrejection_codes = [\"session_gone\"]\n\
             [providers.codex-staging]\nkind = \"codex\"\ntoken_url = \"https://staging.example/oauth/token\"\n",
        )
        .unwrap();
        let acme = &p["acme"];
        assert_eq!(
            (acme.body, acme.expiry, acme.rotation),
            (TokenBody::Json, ExpirySource::JwtExp, Rotation::SingleUse)
        );
        assert_eq!(acme.rejection_codes, ["session_gone"]);
        assert!(acme.refresh_scope);
        assert_eq!(p["codex-staging"].client_id, "app_EMoamEEZ73f0CkXaXp7hrann");
    }

    #[test]
    fn generic_providers_need_a_token_url_and_a_client_id() {
        let check = |text: &str| {
            let p = table(text).unwrap();
            validate(&p, &|key, message| format!("{key} {message}")).err()
        };
        let e = check("[providers.acme]\nkind = \"oauth2\"\nclient_id = \"c\"\n").unwrap();
        assert!(e.starts_with("providers.acme.token_url is required"), "{e}");
        let e = check("[providers.acme]\nkind = \"oauth2\"\ntoken_url = \"https://a.example/t\"\n").unwrap();
        assert!(e.starts_with("providers.acme.client_id is required"), "{e}");
        let e = check("[providers.acme]\nkind = \"oauth2\"\ntoken_url = \"ftp://a\"\nclient_id = \"c\"\n").unwrap();
        assert!(e.contains("expected an http(s) URL"), "{e}");
        assert_eq!(
            check("[providers.acme]\nkind = \"oauth2\"\ntoken_url = \"https://a.example/t\"\nclient_id = \"c\"\n"),
            None
        );
    }

    #[test]
    fn the_client_secret_comes_from_one_place_and_never_shows() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "  from-the-file\n").unwrap();
        let p = table(&format!(
            "[providers.a]\nkind = \"oauth2\"\nclient_secret_file = {:?}\n\
             [providers.b]\nkind = \"oauth2\"\nclient_secret_env = \"ACME_SECRET\"\n\
             [providers.c]\nkind = \"oauth2\"\nclient_secret = \"inline-secret-value\"\n\
             [providers.gemini]\nclient_secret_env = \"MY_GEMINI_SECRET\"\n",
            file.display().to_string()
        ))
        .unwrap();
        let env = |v: &str| (v == "ACME_SECRET").then(|| "from-the-env".to_owned());
        let got = |id: &str| p[id].resolve_client_secret(&env).map(|s| s.map(|s| s.expose().to_owned()));
        assert_eq!(got("a").unwrap().as_deref(), Some("from-the-file"));
        assert_eq!(got("b").unwrap().as_deref(), Some("from-the-env"));
        assert_eq!(got("c").unwrap().as_deref(), Some("inline-secret-value"));
        // Naming a variable replaces Gemini CLI's default secret; unset, it is an error.
        let e = got("gemini").unwrap_err().to_string();
        assert!(e.contains("$MY_GEMINI_SECRET") && e.contains("not set"), "{e}");
        let shown = format!("{p:?}");
        for secret in ["inline-secret-value", "GOCSPX"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        let gemini = ProviderConfig::builtin(GEMINI).unwrap();
        assert!(!format!("{gemini:?}").contains("GOCSPX"));
    }
}
