//! Configuration: embedded defaults, then an optional TOML file, then `TOKENKEEPER_…`
//! environment variables, into one typed, validated [`Config`]. Loading never writes files.
//!
//! Every key is optional; `tokenkeeper` runs with no file at all. A wrong key or value is an
//! error naming the file, the key and what is allowed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod provider;
mod sink;

pub use provider::{
    ClientSecretError, ExpirySource, ProviderConfig, ProviderKind, ProviderTableError, Rotation, TokenBody, ANTHROPIC,
    CODEX, GEMINI,
};
pub use sink::{
    FileTarget, InfisicalAuth, InfisicalFormat, InfisicalTarget, SinkConfig, SinkConfigError, SinkProblem, SinkTarget,
    TemplateSource, DEFAULT_FILE_MODE,
};

/// Errors loading or validating configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// Which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a value has the wrong type or form (a sink's values
    /// included: the message names the entry, such as `sinks[2].path`).
    #[error("config file {path}: {message}")]
    Parse {
        /// Which file.
        path: PathBuf,
        /// Where in the file, when toml knows.
        at: Option<Position>,
        /// toml's message, which names the key, the line and what is allowed.
        message: String,
    },
    /// A key the table does not have, most often a typo.
    #[error("config file {path}: {message}")]
    UnknownKey {
        /// Which file.
        path: PathBuf,
        /// Where in the file, when toml knows.
        at: Option<Position>,
        /// The key as written.
        key: String,
        /// toml's message: the line, the key and the keys the table has.
        message: String,
    },
    /// A `[[sinks]]` entry was refused: a required key missing, a bad value, or a key of
    /// another kind.
    #[error("config file {path}: {message}")]
    Sink {
        /// Which file.
        path: PathBuf,
        /// Where in the file, when toml knows: the first `[[sinks]]` table (`index` says which).
        at: Option<Position>,
        /// Which entry of `sinks`, from 0.
        index: usize,
        /// The key and what is wrong with it.
        error: Box<SinkConfigError>,
        /// toml's message: the line, the entry, the key, what is wrong and what is allowed.
        message: String,
    },
    /// A key the table must have is missing.
    #[error("config file {path}: {message}")]
    MissingKey {
        /// Which file.
        path: PathBuf,
        /// Where in the file (the table that lacks it), when toml knows.
        at: Option<Position>,
        /// The missing key.
        key: String,
        /// toml's message: the table and the key.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("{origin}: `{key}` {message}")]
    Invalid {
        /// The file, or the environment variable.
        origin: String,
        /// The key, such as `sinks[2].path`.
        key: String,
        /// What is wrong and what is allowed.
        message: String,
    },
}

impl ConfigError {
    /// A toml error of the file at `path` whose text is `text`, sorted into the variant it is.
    fn from_toml_error(e: &toml::de::Error, text: &str, path: &Path) -> Self {
        let path = path.to_owned();
        let at = e.span().and_then(|span| Position::of(text, span.start));
        let message = e.to_string().trim_end().replace('\n', "\n  ");
        // serde's own words for these two (`de::Error::unknown_field` and `missing_field`).
        let quoted = |prefix: &str| {
            let rest = e.message().strip_prefix(prefix)?;
            rest.find('`').map(|end| rest[..end].to_owned())
        };
        // A refused sink reaches here as toml's text; read the sinks again to have it typed,
        // and only take it if it is the very error toml reported.
        if let Some(entry) = sink::refused_entry(text).filter(|entry| e.message() == entry.to_string()) {
            return ConfigError::Sink { path, at, index: entry.index, error: Box::new(entry.error), message };
        }
        if let Some(key) = quoted("unknown field `") {
            ConfigError::UnknownKey { path, at, key, message }
        } else if let Some(key) = quoted("missing field `") {
            ConfigError::MissingKey { path, at, key, message }
        } else {
            ConfigError::Parse { path, at, message }
        }
    }
}

/// A place in a config file: 1-based line and column (in characters), as toml reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

impl Position {
    /// The position of byte `offset` of `text`; `None` if it is not inside it.
    fn of(text: &str, offset: usize) -> Option<Self> {
        let before = text.get(..offset)?;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Some(Self { line: before.matches('\n').count() + 1, column: before[line_start..].chars().count() + 1 })
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The refresh engine.
    pub keeper: KeeperConfig,
    /// The HTTP server.
    pub server: ServerConfig,
    /// OAuth providers by id; `anthropic` always exists. Each table is read over its own id's
    /// defaults (see [`ProviderConfig`]).
    #[serde(deserialize_with = "provider::deserialize_providers")]
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Per-account settings by account name.
    pub accounts: BTreeMap<String, AccountConfig>,
    /// Where credentials are delivered; each entry is checked as it is read.
    #[serde(deserialize_with = "sink::deserialize_sinks")]
    pub sinks: Vec<SinkConfig>,
    /// Where alerts go.
    pub alerts: Vec<AlertConfig>,
    /// How alerts repeat.
    pub alerting: AlertingConfig,
    /// The Anthropic API proxy (`/v1/*`): limits, timeouts, default strategy.
    pub proxy: ProxyConfig,
    /// Account pools of the proxy, by name (`default` is used by keys without a pool).
    pub pools: BTreeMap<String, PoolConfig>,
    /// Which store: the embedded SQLite (default) or a PostgreSQL database shared by replicas.
    pub store: StoreConfig,
    /// This process as one replica of several: its name and how it campaigns for leadership.
    pub replica: ReplicaConfig,
}

impl Default for Config {
    fn default() -> Self {
        let mut providers = BTreeMap::new();
        providers.insert(ANTHROPIC.to_owned(), ProviderConfig::default());
        Self {
            keeper: KeeperConfig::default(),
            server: ServerConfig::default(),
            providers,
            accounts: BTreeMap::new(),
            sinks: Vec::new(),
            alerts: Vec::new(),
            alerting: AlertingConfig::default(),
            proxy: ProxyConfig::default(),
            pools: BTreeMap::new(),
            store: StoreConfig::default(),
            replica: ReplicaConfig::default(),
        }
    }
}

/// `[store]`: where the installation's state lives. Nothing set: SQLite in the data directory.
///
/// The URL may hold a password, so it never belongs in this file: `url` is refused when it
/// carries one. Give the password through `PGPASSWORD` or `~/.pgpass`, or keep the whole URL
/// in a 0600 file named by `url_file` (a mounted secret), or in `TOKENKEEPER_STORE_URL`, which
/// wins over both keys.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `postgres://user@host:port/database?sslmode=…`, without a password.
    pub url: Option<String>,
    /// A file whose content (trimmed) is the URL, password included; instead of `url`.
    pub url_file: Option<PathBuf>,
}

/// `[replica]`: this process among the replicas sharing one PostgreSQL store.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicaConfig {
    /// The name shown by `status`, `/api/status` and `/metrics` (default: `<hostname>:<pid>`).
    pub id: Option<String>,
    /// How long a follower waits for the leader lock in one go before it checks its own
    /// connection and waits again. A follower is woken the moment the leader's session ends, so
    /// this does not bound takeover; it bounds how long a follower's dead connection goes
    /// unnoticed.
    #[serde(with = "humantime_serde")]
    pub leader_retry: Duration,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        Self { id: None, leader_retry: Duration::from_secs(5) }
    }
}

/// `[keeper]`: when and how hard to refresh.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeeperConfig {
    /// Refresh this long before expiry.
    #[serde(with = "humantime_serde")]
    pub lead: Duration,
    /// Spread refreshes of many accounts by up to this much (earlier, never later).
    #[serde(with = "humantime_serde")]
    pub jitter: Duration,
    /// First retry delay after a transient failure; doubles each time.
    #[serde(with = "humantime_serde")]
    pub backoff_min: Duration,
    /// Longest retry delay.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// At most this many refresh attempts per account per hour, whatever the provider answers
    /// (counted in the store, across every process of the installation).
    pub max_attempts_per_hour: u32,
    /// At most this many refreshes in flight at once when many accounts are due together.
    pub max_concurrent_refreshes: usize,
    /// How often `serve` writes the usage counted in memory to the store (and once more when
    /// it stops); a SIGKILL loses at most this much usage.
    #[serde(with = "humantime_serde")]
    pub usage_flush: Duration,
}

impl Default for KeeperConfig {
    fn default() -> Self {
        Self {
            lead: Duration::from_secs(30 * 60),
            jitter: Duration::from_secs(2 * 60),
            backoff_min: Duration::from_secs(30),
            backoff_max: Duration::from_secs(10 * 60),
            max_attempts_per_hour: 12,
            max_concurrent_refreshes: 8,
            usage_flush: Duration::from_secs(5),
        }
    }
}

/// `[server]`: the HTTP API and web page.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Whether `serve` starts the HTTP server at all.
    pub enabled: bool,
    /// TLS certificate chain (PEM).
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Also listen on this Unix socket.
    pub unix_socket: Option<PathBuf>,
    /// Longest a client may take to send a request's headers. Also how long a connection may
    /// sit idle, before its first request or between two requests on a kept-alive connection:
    /// the clock starts as soon as the server waits for a request head. Slow-header
    /// ("slowloris") and idle connections are closed after it.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Longest wait for the next bytes of a request body, once the headers are in.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Longest one request may take in all, reading its body and answering it included (a
    /// body trickled in a byte at a time is cut off here). It must leave room for a refresh,
    /// which may wait for a lock and for the provider.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Most connections served at once (TCP and Unix socket each); further ones are closed at
    /// once until one ends.
    pub max_connections: usize,
    /// Largest request head (request line and headers) in bytes; larger ones are refused (HTTP/1:
    /// 431 and the connection closed). At least 8192.
    pub max_header_bytes: usize,
}

/// The smallest `[server] max_header_bytes` the HTTP library accepts.
pub const MIN_HEADER_BYTES: usize = 8192;

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8377)),
            enabled: true,
            tls_cert: None,
            tls_key: None,
            unix_socket: None,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(120),
            max_connections: 512,
            max_header_bytes: 16 * 1024,
        }
    }
}

impl ServerConfig {
    /// Checks the limits: `invalid(key, message)` builds the error.
    fn validate(&self, invalid: impl Fn(String, String) -> ConfigError) -> Result<(), ConfigError> {
        for (key, value) in [
            ("header_read_timeout", self.header_read_timeout),
            ("body_read_timeout", self.body_read_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(format!("server.{key}"), "must be more than zero, for example \"10s\"".into()));
            }
        }
        if self.max_connections == 0 {
            return Err(invalid("server.max_connections".into(), "must be at least 1, for example 512".into()));
        }
        if !(MIN_HEADER_BYTES..=1024 * 1024).contains(&self.max_header_bytes) {
            return Err(invalid(
                "server.max_header_bytes".into(),
                format!(
                    "is {}; must be between {MIN_HEADER_BYTES} and 1048576, for example 16384",
                    self.max_header_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// `[accounts.<name>]`: per-account settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccountConfig {
    /// For `follow` accounts: a command that makes the real owner refresh (for example
    /// `["claude", "-p", "ok", "--no-session-persistence"]`), run when the token is inside the
    /// lead time and nobody refreshed it.
    pub nudge: Option<Vec<String>>,
}

/// Kinds of sinks. The config word and the name shown in status are the same snake_case word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::Display)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum SinkKind {
    /// A `.env` file: `KEY=value` set in place.
    EnvFile,
    /// Claude Code's credentials JSON.
    ClaudeCredentials,
    /// OpenClaw's `oauth.json` (or auth-profiles layout).
    Openclaw,
    /// A minijinja template rendered to a file.
    Template,
    /// Infisical secret, through its REST API.
    Infisical,
    /// No file: run a command with the credential in its environment.
    Command,
    /// A provider's own CLI file (Codex's `auth.json`, …), in that provider's format.
    Native,
}

/// Which replicas deliver to a sink (`run_on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOn {
    /// Every replica delivers: a file on each host (the default of file and command sinks).
    EveryReplica,
    /// Only the leader delivers: one shared destination (the default of `infisical`).
    Leader,
}

/// How a file sink replaces its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    /// Temp file in the same directory, fsync, rename, fsync the directory.
    #[default]
    Atomic,
    /// Rewrite the same inode (for files bind-mounted into a container one by one).
    InPlace,
}

/// Kinds of alert channels. The config word and the default channel name are the same
/// snake_case word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::Display)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum AlertKind {
    /// Generic JSON webhook.
    Webhook,
    /// Keep's alert endpoint.
    Keep,
    /// Slack incoming webhook.
    Slack,
    /// Run a command.
    Command,
}

/// `[[alerts]]`: one alert channel. Its `Debug` leaves the URL out: webhook URLs such as
/// Slack's are secrets.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// Channel kind.
    pub kind: AlertKind,
    /// Optional name for status.
    #[serde(default)]
    pub name: Option<String>,
    /// Target URL.
    #[serde(default)]
    pub url: Option<String>,
    /// File holding the target URL (for URLs that are secrets, like Slack's).
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// File holding an API key (Keep).
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// Command (argv).
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Only alerts at or above this severity (`warning` default); an unknown word fails the
    /// config load with the known ones.
    #[serde(default)]
    pub min_severity: Option<crate::status::Severity>,
}

impl std::fmt::Debug for AlertConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertConfig")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("url", &self.url.as_ref().map(|_| "<redacted>"))
            .field("url_file", &self.url_file)
            .field("api_key_file", &self.api_key_file)
            .field("command", &self.command)
            .field("min_severity", &self.min_severity)
            .finish()
    }
}

/// `[alerting]`: repetition of alerts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertingConfig {
    /// Send a reminder this often while a problem lasts.
    #[serde(with = "humantime_serde")]
    pub reminder: Duration,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        Self { reminder: Duration::from_secs(6 * 3600) }
    }
}

/// Why [`parse_mode`] refused a file mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModeError {
    /// Not octal digits.
    #[error("`{0}` is not an octal mode: write it as a string such as \"0600\"")]
    NotOctal(String),
    /// More than the permission, setuid, setgid and sticky bits.
    #[error("`{0}` is larger than 07777")]
    TooLarge(String),
}

/// Parses an octal file mode written as a string (`"0600"`, `"600"`, `"0o640"`).
pub fn parse_mode(s: &str) -> Result<u32, ModeError> {
    let digits = s.trim().trim_start_matches("0o");
    let mode = u32::from_str_radix(digits, 8).map_err(|_| ModeError::NotOctal(s.to_owned()))?;
    if mode > 0o7777 {
        return Err(ModeError::TooLarge(s.to_owned()));
    }
    Ok(mode)
}

impl Config {
    /// The provider config for `id`: its table, else its built-in defaults
    /// ([`ProviderConfig::defaults_for`]).
    pub fn provider(&self, id: &str) -> ProviderConfig {
        self.providers.get(id).cloned().unwrap_or_else(|| ProviderConfig::defaults_for(id))
    }

    /// Parses TOML text; `origin` names the file in errors.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::from_toml_error(&e, text, origin))?;
        // A `[providers.anthropic]` table that sets only some keys got defaults for the rest;
        // make sure the provider exists even when the file names none.
        config.providers.entry(ANTHROPIC.to_owned()).or_default();
        config.validate(&origin.display().to_string())?;
        Ok(config)
    }

    /// Loads the config: `path` if given (it must exist), else the default path if it exists,
    /// else the defaults; then applies environment overrides from `env`.
    pub fn load(
        path: Option<&Path>,
        default_path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut config = match (path, default_path) {
            (Some(p), _) => {
                let text =
                    std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.to_owned(), source })?;
                Self::from_toml(&text, p)?
            }
            (None, Some(p)) if p.exists() => {
                let text =
                    std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.to_owned(), source })?;
                Self::from_toml(&text, p)?
            }
            _ => Config::default(),
        };
        config.apply_env(env)?;
        Ok(config)
    }

    /// Applies `TOKENKEEPER_…` overrides.
    pub fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let invalid = |var: &str, message: String| ConfigError::Invalid {
            origin: "environment".into(),
            key: var.to_owned(),
            message,
        };
        if let Some(v) = env("TOKENKEEPER_LISTEN") {
            self.server.listen = v.parse().map_err(|_| {
                invalid("TOKENKEEPER_LISTEN", format!("is `{v}`; expected an address such as 127.0.0.1:8377"))
            })?;
        }
        if let Some(v) = env("TOKENKEEPER_LEAD") {
            self.keeper.lead = humantime::parse_duration(&v)
                .map_err(|e| invalid("TOKENKEEPER_LEAD", format!("is `{v}`: {e}; expected a duration such as 30m")))?;
        }
        let anthropic = self.providers.entry(ANTHROPIC.to_owned()).or_default();
        for (var, field) in [
            ("TOKENKEEPER_ANTHROPIC_TOKEN_URL", &mut anthropic.token_url),
            ("TOKENKEEPER_ANTHROPIC_AUTHORIZE_URL", &mut anthropic.authorize_url),
            ("TOKENKEEPER_ANTHROPIC_REDIRECT_URI", &mut anthropic.redirect_uri),
            ("TOKENKEEPER_ANTHROPIC_API_BASE_URL", &mut anthropic.api_base_url),
        ] {
            if let Some(v) = env(var) {
                *field = v;
            }
        }
        // Codex and Gemini CLI get a table only when a variable of theirs is set, so an
        // installation that never names them does not grow one.
        for (id, var) in [(CODEX, "TOKENKEEPER_CODEX_TOKEN_URL"), (GEMINI, "TOKENKEEPER_GEMINI_TOKEN_URL")] {
            if let Some(v) = env(var) {
                self.providers.entry(id.to_owned()).or_insert_with(|| ProviderConfig::defaults_for(id)).token_url = v;
            }
        }
        self.validate("environment")
    }

    /// Checks values serde cannot: URLs, limits, alert targets. (Sinks are checked as they are
    /// read: a [`SinkConfig`] is valid by construction.)
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid { origin: origin.to_owned(), key, message };
        self.server.validate(invalid)?;
        validate_proxy(self, &invalid)?;
        validate_store(self, &invalid)?;
        if self.keeper.lead.is_zero() {
            return Err(invalid("keeper.lead".into(), "must be more than zero, for example \"30m\"".into()));
        }
        if self.keeper.max_attempts_per_hour == 0 {
            return Err(invalid("keeper.max_attempts_per_hour".into(), "must be at least 1".into()));
        }
        if self.keeper.backoff_min > self.keeper.backoff_max {
            return Err(invalid("keeper.backoff_min".into(), "must not be larger than keeper.backoff_max".into()));
        }
        provider::validate(&self.providers, &invalid)?;
        for (i, a) in self.alerts.iter().enumerate() {
            let key = |k: &str| format!("alerts[{i}].{k}");
            match a.kind {
                AlertKind::Command => {
                    if a.command.as_ref().is_none_or(|c| c.is_empty()) {
                        return Err(invalid(key("command"), "is required for a command alert".into()));
                    }
                }
                _ => {
                    if a.url.is_none() && a.url_file.is_none() {
                        return Err(invalid(key("url"), "set `url` or `url_file`".into()));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The configuration holds alert URLs with tokens in them (which `Debug` redacts); nothing
    // serialises it, and keeping it so means no code path can print them by accident.
    static_assertions::assert_not_impl_any!(Config: serde::Serialize);
    static_assertions::assert_not_impl_any!(SinkConfig: serde::Serialize);
    static_assertions::assert_not_impl_any!(AlertConfig: serde::Serialize);

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("/etc/tokenkeeper/config.toml"))
    }

    #[test]
    fn store_urls_keep_passwords_out_of_the_file() {
        let ok = parse("[store]\nurl = \"postgres://keeper@db.example/tk\"\n").unwrap();
        assert_eq!(ok.store.url.as_deref(), Some("postgres://keeper@db.example/tk"));
        let e = parse("[store]\nurl = \"postgres://keeper:hunter2@db.example/tk\"\n").unwrap_err().to_string();
        assert!(e.contains("password") && e.contains("url_file") && !e.contains("hunter2"), "{e}");
        let e = parse("[store]\nurl = \"mysql://keeper:hunter2@db/tk\"\n").unwrap_err().to_string();
        assert!(e.contains("postgres://") && !e.contains("hunter2"), "{e}");
        let e =
            parse("[store]\nurl = \"postgres://k@db/tk\"\nurl_file = \"/run/secrets/url\"\n").unwrap_err().to_string();
        assert!(e.contains("keep one"), "{e}");
        let e = parse("[replica]\nleader_retry = \"0s\"\n").unwrap_err().to_string();
        assert!(e.contains("replica.leader_retry"), "{e}");
    }

    #[test]
    fn sinks_run_on_every_replica_but_secret_managers_on_the_leader() {
        let c = parse(
            "[[sinks]]\naccount = \"main\"\nkind = \"env_file\"\npath = \"/srv/.env\"\nkey = \"K\"\n\
             [[sinks]]\naccount = \"main\"\nkind = \"infisical\"\nurl = \"https://infisical.example\"\nproject_id = \"p\"\nenvironment = \"prod\"\n\
             secret_name = \"S\"\ntoken_file = \"/run/t\"\n\
             [[sinks]]\naccount = \"main\"\nkind = \"env_file\"\npath = \"/srv/b.env\"\nkey = \"K\"\nrun_on = \"leader\"\n",
        )
        .unwrap();
        let on: Vec<RunOn> = c.sinks.iter().map(SinkConfig::runs_on).collect();
        assert_eq!(on, [RunOn::EveryReplica, RunOn::Leader, RunOn::Leader]);
    }

    #[test]
    fn codex_and_gemini_token_urls_from_the_environment_keep_their_clients() {
        let mut c = parse("").unwrap();
        c.apply_env(&|_| None).unwrap();
        assert!(!c.providers.contains_key(CODEX) && !c.providers.contains_key(GEMINI));
        c.apply_env(&|v| (v == "TOKENKEEPER_CODEX_TOKEN_URL").then(|| "http://127.0.0.1:7/codex".to_owned())).unwrap();
        assert_eq!(c.provider(CODEX).token_url, "http://127.0.0.1:7/codex");
        assert_eq!(c.provider(CODEX).client_id, "app_EMoamEEZ73f0CkXaXp7hrann");
        assert_eq!(c.provider(GEMINI).token_url, "https://oauth2.googleapis.com/token");
        let e =
            c.apply_env(&|v| (v == "TOKENKEEPER_GEMINI_TOKEN_URL").then(|| "nope".to_owned())).unwrap_err().to_string();
        assert!(e.contains("providers.gemini.token_url"), "{e}");
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.keeper.lead, Duration::from_secs(1800));
        assert_eq!(c.provider(ANTHROPIC).client_id, "9d1c250a-e61b-44d9-88ed-5944d1962f5e");
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8377");
    }

    #[test]
    fn design_sketch_parses() {
        let c = parse(
            r#"
[keeper]
lead = "45m"
[server]
listen = "0.0.0.0:9000"
[providers.anthropic]
token_url = "http://127.0.0.1:1/v1/oauth/token"
[[sinks]]
account = "main"
kind = "env_file"
path = "/srv/bot/.env"
key = "CLAUDE_CODE_OAUTH_TOKEN"
mode = "0640"
on_change = ["docker", "compose", "up", "-d"]
[[alerts]]
kind = "webhook"
url = "https://hooks.example/tokenkeeper"
"#,
        )
        .unwrap();
        assert_eq!(c.keeper.lead, Duration::from_secs(45 * 60));
        assert_eq!(c.provider(ANTHROPIC).token_url, "http://127.0.0.1:1/v1/oauth/token");
        // Keys not named keep their defaults.
        assert_eq!(c.provider(ANTHROPIC).authorize_url, "https://claude.ai/oauth/authorize");
        assert_eq!(c.sinks[0].file().map(|f| f.mode), Some(0o640));
    }

    #[test]
    fn server_limits_have_defaults_parse_and_are_validated() {
        let d = parse("").unwrap().server;
        assert_eq!(
            (d.header_read_timeout, d.body_read_timeout, d.request_timeout, d.max_connections, d.max_header_bytes),
            (Duration::from_secs(10), Duration::from_secs(10), Duration::from_secs(120), 512, 16384)
        );
        let c = parse(
            "[server]\nheader_read_timeout = \"2s\"\nbody_read_timeout = \"3s\"\nrequest_timeout = \"1m\"\nmax_connections = 64\nmax_header_bytes = 8192\n",
        )
        .unwrap()
        .server;
        assert_eq!(
            (c.header_read_timeout, c.body_read_timeout, c.request_timeout, c.max_connections, c.max_header_bytes),
            (Duration::from_secs(2), Duration::from_secs(3), Duration::from_secs(60), 64, 8192)
        );
        for (text, key) in [
            ("header_read_timeout = \"0s\"", "server.header_read_timeout"),
            ("request_timeout = \"0s\"", "server.request_timeout"),
            ("max_connections = 0", "server.max_connections"),
            ("max_header_bytes = 100", "server.max_header_bytes"),
        ] {
            let e = parse(&format!("[server]\n{text}\n")).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn unknown_key_names_file_key_and_allowed() {
        let e = parse("[keeper]\nleed = \"30m\"\n").unwrap_err().to_string();
        assert!(e.contains("/etc/tokenkeeper/config.toml"), "{e}");
        assert!(e.contains("leed"), "{e}");
        assert!(e.contains("lead"), "{e}");
        let e = parse("[keeper]\nleed = \"30m\"\n").unwrap_err();
        let ConfigError::UnknownKey { path, at, key, .. } = &e else { panic!("{e:?}") };
        assert_eq!(
            (path.to_str(), at, key.as_str()),
            (Some("/etc/tokenkeeper/config.toml"), &Some(Position { line: 2, column: 1 }), "leed")
        );
    }

    #[test]
    fn a_missing_key_is_its_own_error_naming_the_key() {
        for (text, missing) in [
            ("[[sinks]]\nkind = \"env_file\"\npath = \"/x\"\nkey = \"K\"\n", "account"),
            ("[[sinks]]\naccount = \"a\"\npath = \"/x\"\n", "kind"),
            ("[[alerts]]\nurl = \"https://hooks.example/x\"\n", "kind"),
        ] {
            let e = parse(text).unwrap_err();
            let shown = e.to_string();
            let ConfigError::MissingKey { key, at, .. } = &e else { panic!("{text}: {e:?}") };
            assert_eq!(key, missing, "{text}");
            assert_eq!(at.map(|p| p.line), Some(1), "{text}: {e:?}");
            assert!(shown.contains(&format!("missing field `{missing}`")), "{shown}");
            assert!(shown.starts_with("config file /etc/tokenkeeper/config.toml: "), "{shown}");
        }
    }

    #[test]
    fn bad_values_are_explained() {
        let e = parse("[keeper]\nlead = \"soon\"\n").unwrap_err().to_string();
        // What a user reads: the file, the line and column of the value, and what was expected.
        assert!(e.contains("/etc/tokenkeeper/config.toml"), "{e}");
        assert!(e.contains("line 2, column 8"), "{e}");
        assert!(e.contains(r#"lead = "soon""#), "{e}");
        assert!(e.contains(r#"invalid value: string "soon", expected a duration"#), "{e}");
        let e = parse("[keeper]\nlead = \"soon\"\n").unwrap_err();
        assert!(
            matches!(e, ConfigError::Parse { at: Some(Position { line: 2, column: 8 }), .. }),
            "the position is the one the message names: {e:?}"
        );
        let e = parse("[keeper\n").unwrap_err();
        assert!(matches!(e, ConfigError::Parse { at: Some(Position { line: 1, .. }), .. }), "{e:?}");
        let e = parse("[[sinks]]\naccount=\"a\"\nkind=\"env_file\"\npath=\"/x\"\n").unwrap_err().to_string();
        assert!(e.contains("sinks[0].key"), "{e}");
        let e = parse("[[sinks]]\naccount=\"a\"\nkind=\"env_file\"\npath=\"/x\"\nkey=\"K\"\nmode=\"rw\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sinks[0].mode") && e.contains("octal"), "{e}");
        let e = parse("[[sinks]]\naccount=\"a\"\nkind=\"ftp\"\n").unwrap_err().to_string();
        assert!(e.contains("env_file"), "{e}");
        let e = parse("[providers.anthropic]\ntoken_url = \"not a url\"\n").unwrap_err().to_string();
        assert!(e.contains("providers.anthropic.token_url"), "{e}");
    }

    #[test]
    fn env_overrides_apply_and_are_validated() {
        let env = |k: &str| match k {
            "TOKENKEEPER_LEAD" => Some("10m".to_owned()),
            "TOKENKEEPER_ANTHROPIC_TOKEN_URL" => Some("http://127.0.0.1:9/t".to_owned()),
            _ => None,
        };
        let c = Config::load(None, None, &env).unwrap();
        assert_eq!(c.keeper.lead, Duration::from_secs(600));
        assert_eq!(c.provider(ANTHROPIC).token_url, "http://127.0.0.1:9/t");
        let bad = |k: &str| (k == "TOKENKEEPER_LISTEN").then(|| "nowhere".to_owned());
        let e = Config::load(None, None, &bad).unwrap_err().to_string();
        assert!(e.contains("TOKENKEEPER_LISTEN"), "{e}");
    }

    #[test]
    fn missing_explicit_file_is_an_error_but_missing_default_is_not() {
        let env = |_: &str| None;
        assert!(Config::load(Some(Path::new("/nonexistent/tk.toml")), None, &env).is_err());
        assert!(Config::load(None, Some(Path::new("/nonexistent/tk.toml")), &env).is_ok());
    }

    #[test]
    fn alert_kind_words_are_the_config_words() {
        for (kind, word) in [
            (AlertKind::Webhook, "webhook"),
            (AlertKind::Keep, "keep"),
            (AlertKind::Slack, "slack"),
            (AlertKind::Command, "command"),
        ] {
            assert_eq!(<&str>::from(kind), word);
            assert_eq!(kind.to_string(), word);
            assert_eq!(serde_json::to_value(kind).unwrap(), serde_json::Value::String(word.into()));
        }
    }

    #[test]
    fn alert_min_severity_is_a_severity_and_a_typo_names_the_known_ones() {
        let c =
            parse("[[alerts]]\nkind = \"slack\"\nurl = \"https://hooks.slack.com/x\"\nmin_severity = \"Critical\"\n")
                .unwrap();
        assert_eq!(c.alerts[0].min_severity, Some(crate::status::Severity::Critical));
        let e = parse("[[alerts]]\nkind = \"slack\"\nurl = \"https://hooks.slack.com/x\"\nmin_severity = \"loud\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("min_severity") && e.contains("`loud`") && e.contains("`warning` or `critical`"), "{e}");
    }

    #[test]
    fn alert_urls_stay_out_of_debug() {
        let c = parse("[[alerts]]\nkind = \"slack\"\nurl = \"https://hooks.slack.com/services/T0/B0/SECRETPART\"\n")
            .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("SECRETPART"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0600").unwrap(), 0o600);
        assert_eq!(parse_mode("640").unwrap(), 0o640);
        assert_eq!(parse_mode("0o750").unwrap(), 0o750);
        assert_eq!(parse_mode("0900"), Err(ModeError::NotOctal("0900".into())));
        assert_eq!(parse_mode("17777"), Err(ModeError::TooLarge("17777".into())));
    }
}

/// `[proxy]`: the Anthropic API proxy served at `/v1/*` (see `docs/PROXY.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Whether `serve` serves the proxy at all.
    pub enabled: bool,
    /// A separate address for the proxy; when absent it is served on `[server] listen`.
    pub listen: Option<SocketAddr>,
    /// Where requests go; when absent, `providers.anthropic.api_base_url`.
    pub upstream: Option<String>,
    /// The strategy of pools that name none, and of the implicit pool of every account.
    pub strategy: Strategy,
    /// How long a sticky session stays bound to its account without a request.
    #[serde(with = "humantime_serde")]
    pub sticky_ttl: Duration,
    /// Largest request body accepted, in bytes (the proxy keeps the body to retry it on
    /// another account).
    pub max_body_bytes: usize,
    /// Upstream TCP (and TLS) connect timeout.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait for upstream's response headers (non-streaming answers arrive whole, so
    /// this is generous).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Longest pause between two chunks of a response body (streams send pings meanwhile).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Longest whole exchange of a non-streaming request.
    #[serde(with = "humantime_serde")]
    pub total_timeout: Duration,
    /// Longest cooldown a 429's headers can impose (a cap against absurd resets).
    #[serde(with = "humantime_serde")]
    pub max_cooldown: Duration,
    /// Requests per minute per proxy key (0: unlimited); `key_limits` overrides it per key.
    pub requests_per_minute: u32,
    /// Requests in flight per proxy key (0: unlimited); `key_limits` overrides it per key.
    pub concurrent_requests: u32,
    /// Per-key limits, by key name.
    pub key_limits: BTreeMap<String, KeyLimits>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
            upstream: None,
            strategy: Strategy::RoundRobin,
            sticky_ttl: Duration::from_secs(3600),
            max_body_bytes: 32 * 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(300),
            total_timeout: Duration::from_secs(900),
            max_cooldown: Duration::from_secs(8 * 86_400),
            requests_per_minute: 0,
            concurrent_requests: 0,
            key_limits: BTreeMap::new(),
        }
    }
}

/// `[proxy.key_limits.<key name>]`: limits of one proxy key (0: unlimited).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyLimits {
    /// Requests per minute through this key (0: unlimited); replaces `[proxy] requests_per_minute`.
    pub requests_per_minute: u32,
    /// Requests in flight.
    pub concurrent_requests: u32,
}

/// How a pool picks the account for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// In turn, each account `weight` times per round (smooth weighted round robin).
    #[default]
    RoundRobin,
    /// The account with the fewest requests (divided by its weight) since the proxy started.
    LeastUsed,
    /// The available account with the lowest `priority`; the next only while it is unavailable.
    FillFirst,
    /// One account per client session (Claude Code's session header, `x-session-id`, or the
    /// body's `metadata.user_id`) for `sticky_ttl`; rebound when that account is unavailable.
    Sticky,
    /// The account with the most remaining quota by the `anthropic-ratelimit-unified-*`
    /// headers seen last.
    QuotaAware,
}

/// `[pools.<name>]`: a named set of accounts the proxy chooses from.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// The accounts: names, or tables `{ account = "a", priority = 1, weight = 2 }`.
    pub accounts: Vec<PoolMember>,
    /// How to pick; `[proxy] strategy` when absent.
    pub strategy: Option<Strategy>,
    /// Sticky session lifetime; `[proxy] sticky_ttl` when absent.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub sticky_ttl: Option<Duration>,
}

/// An account of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum PoolMember {
    /// Just the account name (priority 0, weight 1).
    Name(String),
    /// The account with its priority and weight.
    Full {
        /// Account name.
        account: String,
        /// Lower is used first by `fill_first` (default 0).
        #[serde(default)]
        priority: i32,
        /// Share of requests under `round_robin` and `least_used` (default 1).
        #[serde(default = "default_weight")]
        weight: u32,
    },
}

fn default_weight() -> u32 {
    1
}

impl PoolMember {
    /// The account name.
    pub fn account(&self) -> &str {
        match self {
            PoolMember::Name(n) => n,
            PoolMember::Full { account, .. } => account,
        }
    }

    /// The priority (lower first).
    pub fn priority(&self) -> i32 {
        match self {
            PoolMember::Name(_) => 0,
            PoolMember::Full { priority, .. } => *priority,
        }
    }

    /// The weight (at least 1).
    pub fn weight(&self) -> u32 {
        match self {
            PoolMember::Name(_) => 1,
            PoolMember::Full { weight, .. } => (*weight).max(1),
        }
    }
}

/// Checks `[proxy]` and `[pools.*]`.
/// `[store]` and `[replica]`: one way to name the URL, no password in the file.
fn validate_store(config: &Config, invalid: &impl Fn(String, String) -> ConfigError) -> Result<(), ConfigError> {
    let store = &config.store;
    if store.url.is_some() && store.url_file.is_some() {
        return Err(invalid("store.url".into(), "and store.url_file are both set; keep one".into()));
    }
    if let Some(u) = &store.url {
        // Never echo the value: it may hold a password.
        let parsed = url::Url::parse(u).ok().filter(|p| matches!(p.scheme(), "postgres" | "postgresql"));
        let Some(parsed) = parsed else {
            return Err(invalid(
                "store.url".into(),
                "must be a postgres:// or postgresql:// URL (the value is not shown); remove it to use the embedded \
                 store"
                    .into(),
            ));
        };
        if parsed.password().is_some() {
            return Err(invalid(
                "store.url".into(),
                "holds a password, which must not live in the config file: remove it and use PGPASSWORD, \
                 ~/.pgpass, store.url_file (a 0600 file with the whole URL) or TOKENKEEPER_STORE_URL"
                    .into(),
            ));
        }
    }
    if config.replica.leader_retry.is_zero() {
        return Err(invalid("replica.leader_retry".into(), "must be more than zero, for example \"5s\"".into()));
    }
    if config.replica.id.as_deref().is_some_and(|id| id.trim().is_empty()) {
        return Err(invalid("replica.id".into(), "is empty; remove it for <hostname>:<pid>".into()));
    }
    Ok(())
}

fn validate_proxy(config: &Config, invalid: &impl Fn(String, String) -> ConfigError) -> Result<(), ConfigError> {
    let p = &config.proxy;
    if let Some(u) = &p.upstream {
        match url::Url::parse(u) {
            Ok(url) if url.scheme() == "https" || url.scheme() == "http" => {}
            _ => return Err(invalid("proxy.upstream".into(), format!("is `{u}`; expected an http(s) URL"))),
        }
    }
    for (key, value) in [
        ("connect_timeout", p.connect_timeout),
        ("header_timeout", p.header_timeout),
        ("idle_timeout", p.idle_timeout),
        ("total_timeout", p.total_timeout),
        ("sticky_ttl", p.sticky_ttl),
    ] {
        if value.is_zero() {
            return Err(invalid(format!("proxy.{key}"), "must be more than zero, for example \"30s\"".into()));
        }
    }
    if p.max_body_bytes < 1024 {
        return Err(invalid("proxy.max_body_bytes".into(), "must be at least 1024 (bytes)".into()));
    }
    if p.listen.is_some_and(|l| l == config.server.listen) {
        return Err(invalid(
            "proxy.listen".into(),
            "is the same address as server.listen; leave it out to serve the proxy on the main listener".into(),
        ));
    }
    for (name, pool) in &config.pools {
        let key = |k: &str| format!("pools.{name}.{k}");
        if pool.accounts.is_empty() {
            return Err(invalid(key("accounts"), "must name at least one account".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, m) in pool.accounts.iter().enumerate() {
            crate::account::validate_account_name(m.account())
                .map_err(|e| invalid(format!("pools.{name}.accounts[{i}]"), e.to_string()))?;
            if !seen.insert(m.account()) {
                return Err(invalid(format!("pools.{name}.accounts[{i}]"), format!("names `{}` twice", m.account())));
            }
            if let PoolMember::Full { weight: 0, .. } = m {
                return Err(invalid(format!("pools.{name}.accounts[{i}].weight"), "must be at least 1".into()));
            }
        }
        if pool.sticky_ttl.is_some_and(|t| t.is_zero()) {
            return Err(invalid(key("sticky_ttl"), "must be more than zero, for example \"1h\"".into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod proxy_tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("/etc/tokenkeeper/config.toml"))
    }

    #[test]
    fn pools_take_names_and_tables() {
        let c = parse(
            r#"
            [proxy]
            strategy = "least_used"
            listen = "127.0.0.1:8378"
            [pools.team]
            strategy = "fill_first"
            sticky_ttl = "10m"
            accounts = ["a", { account = "b", priority = 2, weight = 3 }]
            "#,
        )
        .unwrap();
        assert_eq!(c.proxy.strategy, Strategy::LeastUsed);
        let team = &c.pools["team"];
        assert_eq!(team.strategy, Some(Strategy::FillFirst));
        assert_eq!(team.sticky_ttl, Some(Duration::from_secs(600)));
        assert_eq!(team.accounts[0].account(), "a");
        assert_eq!((team.accounts[1].priority(), team.accounts[1].weight()), (2, 3));
        assert_eq!(team.accounts[0].weight(), 1);
    }

    #[test]
    fn bad_pools_and_limits_are_refused_with_the_key() {
        for (text, key) in [
            ("[pools.x]\naccounts = []", "pools.x.accounts"),
            ("[pools.x]\naccounts = [\"a\", \"a\"]", "pools.x.accounts[1]"),
            ("[pools.x]\naccounts = [\"../a\"]", "pools.x.accounts[0]"),
            ("[pools.x]\naccounts = [{ account = \"a\", weight = 0 }]", "pools.x.accounts[0].weight"),
            ("[pools.x]\naccounts = [\"a\"]\nstrategy = \"random\"", "strategy"),
            ("[proxy]\nidle_timeout = \"0s\"", "proxy.idle_timeout"),
            ("[proxy]\nupstream = \"ftp://x\"", "proxy.upstream"),
            ("[proxy]\nlisten = \"127.0.0.1:8377\"", "proxy.listen"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}

#[cfg(test)]
mod sink_tests {
    use super::*;
    use crate::formats::OpenclawLayout;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("/etc/tokenkeeper/config.toml"))
    }

    /// The error of a config with one sink: `account = "a"`, then `body`.
    fn refused(body: &str) -> String {
        parse(&format!("[[sinks]]\naccount = \"a\"\n{body}\n")).unwrap_err().to_string()
    }

    /// The typed error of a config with one sink, `body` after `account = "a"`: its index, key
    /// and problem.
    fn refused_typed(body: &str) -> (usize, &'static str, SinkProblem) {
        match parse(&format!("[[sinks]]\naccount = \"a\"\n{body}\n")).unwrap_err() {
            ConfigError::Sink { index, error, at, path, .. } => {
                assert_eq!((at.map(|p| p.line), path.to_str()), (Some(1), Some("/etc/tokenkeeper/config.toml")));
                let SinkConfigError { key, problem } = *error;
                (index, key, problem)
            }
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn a_refused_sink_is_a_typed_error_with_its_entry_key_and_problem() {
        for (body, key, problem) in [
            ("kind = \"claude_credentials\"", "path", SinkProblem::PathRequired),
            ("kind = \"env_file\"\npath = \"/x\"", "key", SinkProblem::EnvKey),
            ("kind = \"template\"\npath = \"/x\"", "template", SinkProblem::TemplateSource),
            ("kind = \"command\"\ncommand = []", "command", SinkProblem::CommandRequired),
            (
                "kind = \"infisical\"\nurl = \"https://i\"\nproject_id = \"p\"\ntoken_file = \"/t\"",
                "secret_name",
                SinkProblem::InfisicalRequired,
            ),
            (
                "kind = \"infisical\"\nurl = \"https://i\"\nproject_id = \"p\"\nsecret_name = \"S\"",
                "token_file",
                SinkProblem::InfisicalAuth,
            ),
            ("kind = \"openclaw\"\npath = \"/x\"\nlayout = \"v2\"", "layout", SinkProblem::Layout("v2".into())),
            (
                "kind = \"native\"\npath = \"/x\"\nmode = \"rw\"",
                "mode",
                SinkProblem::Mode(ModeError::NotOctal("rw".into())),
            ),
            ("kind = \"native\"\npath = \"/x\"\non_change = []", "on_change", SinkProblem::EmptyOnChange),
            (
                "kind = \"command\"\ncommand = [\"/bin/x\"]\nprovider = \"codex\"",
                "provider",
                SinkProblem::NotForKind { kind: SinkKind::Command, owners: "native" },
            ),
        ] {
            assert_eq!(refused_typed(body), (0, key, problem), "{body}");
        }
        // The second entry; toml places the error at the start of the `[[sinks]]` array.
        let e = parse(
            "[[sinks]]\naccount = \"a\"\nkind = \"claude_credentials\"\npath = \"/x\"\n\
             [[sinks]]\naccount = \"a\"\nkind = \"openclaw\"\n",
        )
        .unwrap_err();
        let ConfigError::Sink { index, error, at, .. } = &e else { panic!("{e:?}") };
        assert_eq!(
            (*index, &**error, at.map(|p| p.line)),
            (1, &SinkConfigError { key: "path", problem: SinkProblem::PathRequired }, Some(1))
        );
        assert!(e.to_string().contains("`sinks[1].path` is required for this sink kind"), "{e}");
        // An error before the sinks is still the one reported, as it always was.
        let e = parse("[keeper]\nlead = \"soon\"\n[[sinks]]\naccount = \"a\"\nkind = \"openclaw\"\n").unwrap_err();
        assert!(matches!(e, ConfigError::Parse { at: Some(Position { line: 2, .. }), .. }), "{e:?}");
    }

    #[test]
    fn each_kind_reads_into_its_own_variant_with_defaults() {
        let c = parse(
            r#"
[[sinks]]
account = "a"
kind = "openclaw"
path = "/o.json"
[[sinks]]
account = "a"
kind = "infisical"
url = "https://i.example"
project_id = "p"
secret_name = "S"
client_id_file = "/id"
client_secret_file = "/secret"
[[sinks]]
account = "a"
kind = "command"
command = ["/bin/hook"]
"#,
        )
        .unwrap();
        let file =
            FileTarget { path: "/o.json".into(), mode: 0o600, owner: None, group: None, write: WriteMode::Atomic };
        assert_eq!(c.sinks[0].target, SinkTarget::Openclaw { file, layout: OpenclawLayout::Oauth });
        assert_eq!(
            c.sinks[1].target,
            SinkTarget::Infisical(InfisicalTarget {
                url: "https://i.example".into(),
                project_id: "p".into(),
                environment: "prod".into(),
                secret_path: "/".into(),
                secret_name: "S".into(),
                format: InfisicalFormat::Base64Json,
                auth: InfisicalAuth::Universal { client_id_file: "/id".into(), client_secret_file: "/secret".into() },
            })
        );
        assert_eq!(c.sinks[2].command(), Some(&["/bin/hook".to_owned()][..]));
        let names: Vec<String> = c.sinks.iter().map(SinkConfig::display_name).collect();
        assert_eq!(names, ["openclaw:/o.json", "infisical:S", "command"]);
    }

    #[test]
    fn a_typo_in_a_sink_is_refused_with_the_keys_there_are() {
        let e = refused("kind = \"env_file\"\npath = \"/x\"\nkey = \"K\"\npth = \"/y\"");
        assert!(e.contains("/etc/tokenkeeper/config.toml"), "{e}");
        assert!(e.contains("line 6"), "{e}");
        assert!(e.contains("unknown field `pth`, expected one of `account`, `kind`, `name`, `path`"), "{e}");
    }

    #[test]
    fn every_sink_kind_refuses_a_misspelt_key_naming_it_and_its_line() {
        for body in [
            "kind = \"env_file\"\npath = \"/x\"\nkey = \"K\"",
            "kind = \"claude_credentials\"\npath = \"/x\"",
            "kind = \"openclaw\"\npath = \"/x\"\nlayout = \"oauth\"",
            "kind = \"template\"\npath = \"/x\"\ntemplate = \"t\"",
            "kind = \"native\"\npath = \"/x\"\nprovider = \"codex\"",
            "kind = \"command\"\ncommand = [\"/bin/x\"]",
            "kind = \"infisical\"\nurl = \"https://i\"\nproject_id = \"p\"\nsecret_name = \"S\"\ntoken_file = \"/t\"",
        ] {
            // Line 1 `[[sinks]]`, line 2 `account`, then the body, then the typo.
            let typo_line = 3 + body.lines().count();
            let e = parse(&format!("[[sinks]]\naccount = \"a\"\n{body}\non_chnage = [\"/bin/y\"]\n")).unwrap_err();
            let shown = e.to_string();
            let ConfigError::UnknownKey { key, at, .. } = &e else { panic!("{body}: {e:?}") };
            assert_eq!((key.as_str(), at.map(|p| p.line)), ("on_chnage", Some(typo_line)), "{body}: {shown}");
            assert!(shown.contains(&format!("line {typo_line}")), "{body}: {shown}");
            assert!(shown.contains("unknown field `on_chnage`, expected one of `account`, `kind`"), "{body}: {shown}");
            assert!(shown.contains("`on_change`"), "the list names the key meant: {shown}");
        }
    }

    #[test]
    fn a_key_of_another_kind_is_refused_not_ignored() {
        for (body, message) in [
            (
                "kind = \"template\"\npath = \"/x\"\ntemplate = \"t\"\nkey = \"K\"",
                "`sinks[0].key` does not apply to `kind = \"template\"`; remove it (it belongs to env_file)",
            ),
            (
                "kind = \"command\"\ncommand = [\"/bin/x\"]\npath = \"/x\"",
                "`sinks[0].path` does not apply to `kind = \"command\"`; remove it (it belongs to env_file, \
                 claude_credentials, openclaw, template and native)",
            ),
            (
                "kind = \"command\"\ncommand = [\"/bin/x\"]\non_change = [\"/bin/y\"]",
                "`sinks[0].on_change` does not apply to `kind = \"command\"`; remove it (it belongs to every kind but \
                 command)",
            ),
            (
                "kind = \"env_file\"\npath = \"/x\"\nkey = \"K\"\nsecret_name = \"S\"",
                "`sinks[0].secret_name` does not apply to `kind = \"env_file\"`; remove it (it belongs to infisical)",
            ),
            (
                "kind = \"claude_credentials\"\npath = \"/x\"\nlayout = \"oauth\"",
                "`sinks[0].layout` does not apply to `kind = \"claude_credentials\"`; remove it (it belongs to openclaw)",
            ),
        ] {
            let e = refused(body);
            assert!(e.contains(message), "{body}: {e}");
        }
    }

    #[test]
    fn missing_and_bad_values_name_the_key_and_what_is_allowed() {
        for (body, message) in [
            ("kind = \"claude_credentials\"", "`sinks[0].path` is required for this sink kind"),
            ("kind = \"env_file\"\npath = \"/x\"\nkey = \"A B\"", "`sinks[0].key` is required for env_file"),
            (
                "kind = \"template\"\npath = \"/x\"",
                "`sinks[0].template` set exactly one of `template` and `template_file`",
            ),
            (
                "kind = \"template\"\npath = \"/x\"\ntemplate = \"t\"\ntemplate_file = \"/t\"",
                "`sinks[0].template` set exactly one of `template` and `template_file`",
            ),
            ("kind = \"command\"\ncommand = []", "`sinks[0].command` is required for a command sink: an argv list"),
            ("kind = \"infisical\"\nurl = \"https://i\"\nsecret_name = \"S\"\ntoken_file = \"/t\"", "`sinks[0].project_id` is required for an infisical sink"),
            (
                "kind = \"infisical\"\nurl = \"https://i\"\nproject_id = \"p\"\nsecret_name = \"S\"\nclient_id_file = \"/i\"",
                "`sinks[0].token_file` an infisical sink needs `token_file`, or `client_id_file` and `client_secret_file`",
            ),
            (
                "kind = \"infisical\"\nurl = \"https://i\"\nproject_id = \"p\"\nsecret_name = \"S\"\ntoken_file = \"/t\"\nformat = \"yaml\"",
                "`sinks[0].format` is `yaml`; expected `base64_json`, `json` or `access_token`",
            ),
            (
                "kind = \"openclaw\"\npath = \"/x\"\nlayout = \"profiles\"",
                "`sinks[0].layout` is `profiles`; expected `oauth` or `auth_profiles`",
            ),
            (
                "kind = \"openclaw\"\npath = \"/x\"\nmode = \"99999\"",
                "`sinks[0].mode` `99999` is not an octal mode",
            ),
            ("kind = \"openclaw\"\npath = \"/x\"\non_change = []", "`sinks[0].on_change` must not be an empty list"),
        ] {
            let e = refused(body);
            assert!(e.contains(message), "{body}: {e}");
        }
    }

    #[test]
    fn the_index_names_the_entry_that_is_wrong() {
        let e = parse(
            "[[sinks]]\naccount = \"a\"\nkind = \"claude_credentials\"\npath = \"/x\"\n\
             [[sinks]]\naccount = \"a\"\nkind = \"env_file\"\npath = \"/y\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`sinks[1].key` is required for env_file"), "{e}");
    }

    #[test]
    fn a_token_file_wins_over_client_files_as_before() {
        let c = parse(
            "[[sinks]]\naccount = \"a\"\nkind = \"infisical\"\nurl = \"https://i\"\nproject_id = \"p\"\n\
             secret_name = \"S\"\ntoken_file = \"/t\"\nclient_id_file = \"/i\"\nclient_secret_file = \"/s\"\n",
        )
        .unwrap();
        let SinkTarget::Infisical(i) = &c.sinks[0].target else { panic!("{:?}", c.sinks[0]) };
        assert_eq!(i.auth, InfisicalAuth::Token("/t".into()));
    }
}
