//! The provider seam: everything that differs between Anthropic, Codex, Gemini CLI and a
//! generic OAuth2 login lives behind [`Provider`] (and its [`NativeFile`], when its CLI keeps
//! a credential file). The keeper, the store and the sinks only ever hold a [`Providers`]
//! registry and an account's provider id, so adding a provider touches none of them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokenkeeper_core::{Credential, Secret};

use crate::client::TokenOutcome;
use crate::error::ProviderError;
use crate::login::LoginFlow;

/// One provider: how its logins are refreshed, probed, written to its CLI's file, handed to a
/// child process and sent to its API.
#[async_trait::async_trait]
pub trait Provider: Send + Sync + fmt::Debug {
    /// The id stored on every account of this provider (`anthropic`, `codex`, `gemini`, or the
    /// name of a `[providers.NAME]` table).
    fn id(&self) -> &str;

    /// A name for people (`Claude Code`, `Codex CLI`, …), used in status and errors.
    fn display_name(&self) -> &str;

    /// Whether credentials of this provider are refreshed at all. Plain API keys are not: the
    /// keeper never schedules them and never alerts on their expiry.
    fn refreshes(&self) -> bool {
        true
    }

    /// Spends the refresh token of `credential` once, answered at `now` as far as expiry
    /// arithmetic goes. The grant's `expires_in` is already this provider's notion of expiry
    /// (an `expires_in`, an `expiry_date`, a JWT's `exp`), so the keeper never parses tokens.
    async fn refresh(&self, credential: &Credential, now: DateTime<Utc>) -> TokenOutcome;

    /// Checks that the token endpoint answers without spending anything; the round-trip time.
    async fn probe(&self) -> Result<Duration, ProviderError>;

    /// The CLI's own credential file, when it has one (Claude Code's `.credentials.json`,
    /// Codex's `auth.json`, Gemini CLI's `oauth_creds.json`).
    fn native_file(&self) -> Option<&dyn NativeFile> {
        None
    }

    /// What `tokenkeeper exec` puts into a child's environment so the CLI uses `credential`
    /// (for example `CLAUDE_CODE_OAUTH_TOKEN`). Values are secrets: the runner passes them
    /// without logging. A provider whose CLI only reads its file returns nothing here and
    /// gets its file written (see [`NativeFile::home_var`]).
    fn exec_env(&self, credential: &Credential) -> Vec<(String, Secret)>;

    /// How a new login of this provider is made (`tokenkeeper login --provider ID`), when it
    /// has a flow here. A provider without one (a generic OAuth2 table, API keys) answers
    /// `None`: its credentials are imported.
    fn login(&self) -> Option<&dyn LoginFlow> {
        None
    }

    /// How the proxy sends a request of this provider's accounts, when it can.
    fn api(&self) -> Option<ApiAccess> {
        None
    }
}

/// How a credential goes into an API request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiAccess {
    /// Base URL of the API (`https://api.anthropic.com`).
    pub base_url: String,
    /// Which header carries the credential.
    pub header: CredentialHeader,
    /// Which API it is: the Anthropic proxy forwards only accounts whose API is
    /// [`ApiKind::AnthropicMessages`].
    pub kind: ApiKind,
    /// Headers sent beside the credential, each `(header name, provider-data key)`: the value
    /// is the credential's provider data under that key (Codex sends its account id as
    /// `ChatGPT-Account-ID`). A credential without the key sends no such header.
    pub data_headers: Vec<(&'static str, &'static str)>,
}

impl ApiAccess {
    /// An API reached with `header` alone, no extra headers.
    pub fn new(base_url: impl Into<String>, header: CredentialHeader, kind: ApiKind) -> Self {
        Self { base_url: base_url.into(), header, kind, data_headers: Vec::new() }
    }

    /// Adds a header whose value is the provider data's `key` (see [`ApiAccess::data_headers`]).
    pub fn with_data_header(mut self, header: &'static str, key: &'static str) -> Self {
        self.data_headers.push((header, key));
        self
    }

    /// The headers to send beside the credential for `credential`: each of
    /// [`ApiAccess::data_headers`] whose key the provider data holds as a non-empty string.
    /// Values are identifiers, not tokens, but callers still treat them as sensitive.
    pub fn extra_headers(&self, credential: &Credential) -> Vec<(&'static str, String)> {
        if self.data_headers.is_empty() {
            return Vec::new();
        }
        let data = crate::shared::provider_data(credential);
        self.data_headers
            .iter()
            .filter_map(|(header, key)| crate::shared::data_str(&data, key).map(|v| (*header, v)))
            .collect()
    }
}

/// Which API a provider's accounts are sent to. Its `Display` is a name for people (`ChatGPT Codex`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::Display)]
pub enum ApiKind {
    /// Anthropic's Messages API (`/v1/messages`): Claude logins and Anthropic API keys.
    #[strum(to_string = "Anthropic Messages")]
    AnthropicMessages,
    /// The ChatGPT backend Codex talks to (`chatgpt.com/backend-api/codex`, the Responses API).
    #[strum(to_string = "ChatGPT Codex")]
    ChatGptCodex,
    /// Google's Code Assist API Gemini CLI talks to (`cloudcode-pa.googleapis.com`).
    #[strum(to_string = "Google Code Assist")]
    GoogleCodeAssist,
    /// Any other API (a generic OAuth2 provider's `api_base_url`).
    #[strum(to_string = "provider's own")]
    Other,
}

/// Which header carries the credential upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialHeader {
    /// `Authorization: Bearer <access token>`.
    Bearer,
    /// `x-api-key: <key>`.
    XApiKey,
}

/// A CLI's credential file: read, recognised, and written back without losing what we do not
/// own.
pub trait NativeFile: Send + Sync + fmt::Debug {
    /// A name for people (`Codex auth.json`).
    fn describe(&self) -> &str;

    /// Where the CLI keeps the file for a user whose home is `home`, given the environment
    /// `env` (Codex honours `CODEX_HOME`).
    fn default_path(&self, home: &Path, env: &dyn Fn(&str) -> Option<String>) -> PathBuf;

    /// The environment variable that points the CLI at a directory holding the file
    /// (`CODEX_HOME`), when it has one; `exec` then writes the file into a private directory
    /// for the child.
    fn home_var(&self) -> Option<&str> {
        None
    }

    /// Whether a JSON document has this file's shape, for `import` without `--provider`.
    fn detect(&self, doc: &serde_json::Value) -> bool;

    /// Reads the file's text. `now` is for files that give no expiry.
    fn parse(&self, text: &str, now: DateTime<Utc>) -> Result<NativeCredential, NativeFileError>;

    /// The file's new text holding `credential`: `existing` is its current text (`None` when
    /// absent); every key this provider does not own survives.
    fn render(
        &self,
        existing: Option<&str>,
        credential: &Credential,
        now: DateTime<Utc>,
    ) -> Result<String, NativeFileError>;
}

/// A credential read from a native file.
#[derive(Debug, Clone)]
pub struct NativeCredential {
    /// The file's tokens and expiry as a [`Credential`]; what the provider needs again to write
    /// the file (an `id_token`, an account id) goes in its `provider_data`.
    pub credential: Credential,
    /// The account's email, when the file says (Codex and Gemini keep an `id_token`).
    pub email: Option<String>,
}

/// A native file that cannot be read or written. Messages say what to supply and never quote
/// the file (it holds tokens).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NativeFileError {
    /// Not JSON.
    #[error("{file} is not valid JSON ({detail}); was it cut off?")]
    BadJson {
        /// Which kind of file.
        file: String,
        /// Where the parser stopped (line and column, never content).
        detail: String,
    },
    /// A required field is missing or of the wrong type.
    #[error("{file}: `{field}` is missing or not of the right type")]
    Field {
        /// Which kind of file.
        file: String,
        /// The field's path.
        field: &'static str,
    },
    /// Empty tokens: a stub that would log the CLI out.
    #[error("{file} holds a blank credential (empty token); it was refused. Log in again with the CLI, or import a good copy")]
    Blank {
        /// Which kind of file.
        file: String,
    },
    /// The text is JSON of another shape, or otherwise not this file; `reason` says what to
    /// supply instead (never quoting the text).
    #[error("{file} cannot be read: {reason}")]
    Unreadable {
        /// Which kind of file.
        file: String,
        /// Why, without content.
        reason: String,
    },
    /// The existing file is not JSON, so it cannot be merged into.
    #[error("{file} exists but is not JSON; refusing to overwrite it. Move it away or fix it")]
    ExistingNotJson {
        /// Which kind of file.
        file: String,
    },
}

/// Every provider of an installation, by id. Built from the configuration (built-ins plus
/// `[providers.NAME]` tables); tests add their own with [`Providers::with`].
#[derive(Debug, Clone, Default)]
pub struct Providers {
    by_id: BTreeMap<String, Arc<dyn Provider>>,
}

impl Providers {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) `provider` under its id.
    pub fn with(mut self, provider: Arc<dyn Provider>) -> Self {
        self.by_id.insert(provider.id().to_owned(), provider);
        self
    }

    /// The provider with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<dyn Provider>> {
        self.by_id.get(id)
    }

    /// Every provider, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Provider>> {
        self.by_id.values()
    }

    /// The provider whose native file `doc` looks like, with the file read; `None` when no
    /// provider claims the shape. The caller then reads it with that provider's
    /// [`NativeFile::parse`].
    pub fn detect_native(&self, doc: &serde_json::Value) -> Option<&Arc<dyn Provider>> {
        self.by_id.values().find(|p| p.native_file().is_some_and(|f| f.detect(doc)))
    }
}
