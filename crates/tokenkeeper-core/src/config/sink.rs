//! `[[sinks]]`: typed sink configuration.
//!
//! A sink is read in two steps. [`RawSink`] is the file's flat table with every key any kind
//! takes, under `deny_unknown_fields`, so a typo is refused by serde with the list of allowed
//! keys (as it always was; `deny_unknown_fields` cannot be combined with `flatten`, which a
//! tagged enum with shared fields would need). A `#[serde(tag = "kind")]` enum whose variant
//! structs repeat the shared keys under `deny_unknown_fields` would refuse the typo too, but
//! serde buffers such a table before it reads the variant, so toml places every error at the
//! `[[sinks]]` line instead of the misspelt key's, and a key of another kind becomes a bare
//! "unknown field" (tried with toml 0.8; the config tests pin the line and the message). It is
//! then turned into a [`SinkConfig`]: the
//! shared keys plus a [`SinkTarget`] per kind that holds only that kind's keys, required ones
//! not optional. Everything a sink needs is checked there, once: required keys, the file
//! mode, the OpenClaw layout, the Infisical value format, and keys that do not apply to the
//! kind (`key` on a `template` sink is refused rather than silently ignored).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::{parse_mode, ModeError, RunOn, SinkKind, WriteMode};
use crate::formats::OpenclawLayout;

/// The file mode of a file sink that names none.
pub const DEFAULT_FILE_MODE: u32 = 0o600;

/// `[[sinks]]`: one place a credential is delivered to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawSink")]
pub struct SinkConfig {
    /// Account whose credential goes here.
    pub account: String,
    /// The name given in the file, if any ([`SinkConfig::display_name`] is what status shows).
    pub name: Option<String>,
    /// Command run after each change of the sink (argv, no shell; never empty). Always `None`
    /// for a `command` sink, which is itself the command.
    pub on_change: Option<Vec<String>>,
    /// Timeout of `on_change` or of a `command` sink's command; the runner's default when
    /// `None`.
    pub timeout: Option<Duration>,
    /// Debounce of `on_change` or of a `command` sink's command; the runner's default when
    /// `None`.
    pub debounce: Option<Duration>,
    /// Which replicas deliver here, as configured; [`SinkConfig::runs_on`] applies the default.
    pub run_on: Option<RunOn>,
    /// What the sink is, with the keys of its kind.
    pub target: SinkTarget,
}

/// One sink kind and its own keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkTarget {
    /// A `.env` file: `key` set to the access token, every other line kept.
    EnvFile {
        /// The `.env` file: its `path` and how it is written (mode, owner, write mode).
        file: FileTarget,
        /// The variable (letters, digits and `_`; never empty).
        key: String,
    },
    /// Claude Code's credentials JSON.
    ClaudeCredentials {
        /// The credentials file (`path`, Claude Code's `.credentials.json`) and how it is written.
        file: FileTarget,
    },
    /// OpenClaw's `oauth.json` or auth-profiles file.
    Openclaw {
        /// The OpenClaw file (`path`) and how it is written.
        file: FileTarget,
        /// Which layout (`oauth` when the file names none).
        layout: OpenclawLayout,
    },
    /// A minijinja template rendered to a file.
    Template {
        /// The file the rendered template is written to (`path`) and how.
        file: FileTarget,
        /// Where the template text comes from.
        source: TemplateSource,
    },
    /// An Infisical secret, through its REST API.
    Infisical(InfisicalTarget),
    /// No file: a command run with the credential in its environment.
    Command {
        /// The argv (no shell; never empty).
        argv: Vec<String>,
    },
    /// A provider's own CLI file, written by that provider's `NativeFile` (unknown keys kept,
    /// never over a newer credential).
    Native {
        /// The CLI's file (`path`, such as `~/.codex/auth.json`) and how it is written.
        file: FileTarget,
        /// The provider whose format is written; `None`: the account's own provider.
        provider: Option<String>,
    },
}

/// The file a file sink writes and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileTarget {
    /// Target file as written in the config; `~` is expanded when it is written.
    pub path: PathBuf,
    /// Permission bits ([`DEFAULT_FILE_MODE`] when the config names none).
    pub mode: u32,
    /// Owner user (name or uid).
    pub owner: Option<String>,
    /// Owner group (name or gid).
    pub group: Option<String>,
    /// How the file is replaced.
    pub write: WriteMode,
}

/// The text of a `template` sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateSource {
    /// `template`: the text itself.
    Text(String),
    /// `template_file`: a file holding it, read at each render (`~` expanded).
    File(PathBuf),
}

/// An `infisical` sink's keys, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfisicalTarget {
    /// Base URL of the Infisical server.
    pub url: String,
    /// Project (workspace) id.
    pub project_id: String,
    /// Environment slug (`prod` when the config names none).
    pub environment: String,
    /// Secret path, the folder (`/` when the config names none).
    pub secret_path: String,
    /// The secret's name.
    pub secret_name: String,
    /// What goes into the secret.
    pub format: InfisicalFormat,
    /// How tokenkeeper authenticates.
    pub auth: InfisicalAuth,
}

/// What an `infisical` sink puts into the secret (`format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InfisicalFormat {
    /// `base64_json` (default): Claude Code's credentials JSON, base64-encoded.
    #[default]
    Base64Json,
    /// `json`: Claude Code's credentials JSON.
    Json,
    /// `access_token`: the access token alone.
    AccessToken,
}

/// How an `infisical` sink authenticates. The files are read at every push, so rotating them
/// needs no restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InfisicalAuth {
    /// `token_file`: a file holding an access token (wins when client files are named too).
    Token(PathBuf),
    /// `client_id_file` and `client_secret_file`: a machine identity's universal auth.
    Universal {
        /// File holding the client id.
        client_id_file: PathBuf,
        /// File holding the client secret.
        client_secret_file: PathBuf,
    },
}

impl SinkConfig {
    /// The kind of sink.
    pub fn kind(&self) -> SinkKind {
        match self.target {
            SinkTarget::EnvFile { .. } => SinkKind::EnvFile,
            SinkTarget::ClaudeCredentials { .. } => SinkKind::ClaudeCredentials,
            SinkTarget::Openclaw { .. } => SinkKind::Openclaw,
            SinkTarget::Template { .. } => SinkKind::Template,
            SinkTarget::Infisical(_) => SinkKind::Infisical,
            SinkTarget::Command { .. } => SinkKind::Command,
            SinkTarget::Native { .. } => SinkKind::Native,
        }
    }

    /// The file of a file sink; `None` for `infisical` and `command` sinks.
    pub fn file(&self) -> Option<&FileTarget> {
        match &self.target {
            SinkTarget::EnvFile { file, .. }
            | SinkTarget::ClaudeCredentials { file }
            | SinkTarget::Openclaw { file, .. }
            | SinkTarget::Template { file, .. }
            | SinkTarget::Native { file, .. } => Some(file),
            SinkTarget::Infisical(_) | SinkTarget::Command { .. } => None,
        }
    }

    /// The name shown in status, logs and metrics, and the key of the sink's health in the
    /// store: the configured `name`, else `kind:path` for a file sink, `kind:secret_name` for
    /// an Infisical sink, the kind alone for a command sink. Changing it orphans the health
    /// stored under the old name.
    pub fn display_name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        let kind = self.kind();
        match (&self.target, self.file()) {
            (_, Some(f)) => format!("{kind}:{}", f.path.display()),
            (SinkTarget::Infisical(i), None) => format!("{kind}:{}", i.secret_name),
            _ => kind.to_string(),
        }
    }

    /// Which replicas deliver here: `run_on` if set, else every replica for sinks that write a
    /// file or run a command on the host (each host has its own file and its own containers to
    /// restart), and the leader only for a secret manager (one shared destination, written once).
    pub fn runs_on(&self) -> RunOn {
        self.run_on.unwrap_or(match self.kind() {
            SinkKind::Infisical => RunOn::Leader,
            _ => RunOn::EveryReplica,
        })
    }

    /// The command run after a change: `on_change`, or a `command` sink's own command.
    pub fn command(&self) -> Option<&[String]> {
        match &self.target {
            SinkTarget::Command { argv } => Some(argv),
            _ => self.on_change.as_deref(),
        }
    }
}

/// Why a `[[sinks]]` entry was refused: the key it concerns and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}` {problem}")]
pub struct SinkConfigError {
    /// The key, such as `path`.
    pub key: &'static str,
    /// What is wrong and what is allowed.
    pub problem: SinkProblem,
}

/// What is wrong with one key of a `[[sinks]]` entry (shown after the key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkProblem {
    /// A file sink without `path`.
    #[error("is required for this sink kind")]
    PathRequired,
    /// An `env_file` sink without a usable `key`.
    #[error("is required for env_file: the variable name, such as \"CLAUDE_CODE_OAUTH_TOKEN\"")]
    EnvKey,
    /// A `template` sink with neither or both of `template` and `template_file`.
    #[error("set exactly one of `template` and `template_file`")]
    TemplateSource,
    /// A `command` sink without a command.
    #[error("is required for a command sink: an argv list")]
    CommandRequired,
    /// An `infisical` sink without `url`, `project_id` or `secret_name`.
    #[error("is required for an infisical sink")]
    InfisicalRequired,
    /// An `infisical` sink with no way to authenticate.
    #[error("an infisical sink needs `token_file`, or `client_id_file` and `client_secret_file`")]
    InfisicalAuth,
    /// An OpenClaw layout other than the two there are.
    #[error("is `{0}`; expected `oauth` or `auth_profiles`")]
    Layout(String),
    /// An Infisical value format other than the three there are.
    #[error("is `{0}`; expected `base64_json`, `json` or `access_token`")]
    Format(String),
    /// `on_change = []`.
    #[error("must not be an empty list")]
    EmptyOnChange,
    /// A file mode that is not one.
    #[error(transparent)]
    Mode(ModeError),
    /// A key of another kind (a likely mix-up; it would be ignored).
    #[error("does not apply to `kind = \"{kind}\"`; remove it (it belongs to {owners})")]
    NotForKind {
        /// The sink's kind.
        kind: SinkKind,
        /// The kinds the key belongs to.
        owners: &'static str,
    },
}

/// A `[[sinks]]` table as written: every key of every kind. Unknown keys are refused here,
/// by serde, with the list of keys there are.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    account: String,
    kind: SinkKind,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    write: Option<WriteMode>,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    template_file: Option<PathBuf>,
    #[serde(default)]
    layout: Option<String>,
    #[serde(default)]
    on_change: Option<Vec<String>>,
    #[serde(default)]
    command: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    debounce: Option<Duration>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    project_id: Option<String>,
    #[serde(default)]
    environment: Option<String>,
    #[serde(default)]
    secret_path: Option<String>,
    #[serde(default)]
    secret_name: Option<String>,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    client_id_file: Option<PathBuf>,
    #[serde(default)]
    client_secret_file: Option<PathBuf>,
    #[serde(default)]
    token_file: Option<PathBuf>,
    #[serde(default)]
    run_on: Option<RunOn>,
    #[serde(default)]
    provider: Option<String>,
}

/// Kinds that write a file (and so take `path`, `mode`, `owner`, `group`, `write`).
const FILE_KINDS: &str = "env_file, claude_credentials, openclaw, template and native";

impl RawSink {
    /// The first key this table sets that its kind does not take, with the kinds it belongs
    /// to.
    fn misplaced_key(&self) -> Option<(&'static str, &'static str)> {
        let kind = self.kind;
        let is_file = !matches!(kind, SinkKind::Infisical | SinkKind::Command);
        let infisical = kind == SinkKind::Infisical;
        [
            (self.path.is_some(), "path", FILE_KINDS, is_file),
            (self.mode.is_some(), "mode", FILE_KINDS, is_file),
            (self.owner.is_some(), "owner", FILE_KINDS, is_file),
            (self.group.is_some(), "group", FILE_KINDS, is_file),
            (self.write.is_some(), "write", FILE_KINDS, is_file),
            (self.key.is_some(), "key", "env_file", kind == SinkKind::EnvFile),
            (self.layout.is_some(), "layout", "openclaw", kind == SinkKind::Openclaw),
            (self.template.is_some(), "template", "template", kind == SinkKind::Template),
            (self.template_file.is_some(), "template_file", "template", kind == SinkKind::Template),
            (self.command.is_some(), "command", "command", kind == SinkKind::Command),
            (self.on_change.is_some(), "on_change", "every kind but command", kind != SinkKind::Command),
            (self.url.is_some(), "url", "infisical", infisical),
            (self.project_id.is_some(), "project_id", "infisical", infisical),
            (self.environment.is_some(), "environment", "infisical", infisical),
            (self.secret_path.is_some(), "secret_path", "infisical", infisical),
            (self.secret_name.is_some(), "secret_name", "infisical", infisical),
            (self.format.is_some(), "format", "infisical", infisical),
            (self.client_id_file.is_some(), "client_id_file", "infisical", infisical),
            (self.client_secret_file.is_some(), "client_secret_file", "infisical", infisical),
            (self.token_file.is_some(), "token_file", "infisical", infisical),
            (self.provider.is_some(), "provider", "native", kind == SinkKind::Native),
        ]
        .into_iter()
        .find(|(set, _, _, applies)| *set && !applies)
        .map(|(_, key, owners, _)| (key, owners))
    }

    fn file(&mut self) -> Result<FileTarget, SinkConfigError> {
        let path = self.path.take().ok_or(SinkConfigError { key: "path", problem: SinkProblem::PathRequired })?;
        let mode = match &self.mode {
            Some(m) => parse_mode(m).map_err(|e| SinkConfigError { key: "mode", problem: SinkProblem::Mode(e) })?,
            None => DEFAULT_FILE_MODE,
        };
        Ok(FileTarget {
            path,
            mode,
            owner: self.owner.take(),
            group: self.group.take(),
            write: self.write.unwrap_or_default(),
        })
    }
}

impl TryFrom<RawSink> for SinkConfig {
    type Error = SinkConfigError;

    fn try_from(mut raw: RawSink) -> Result<Self, SinkConfigError> {
        let kind = raw.kind;
        if let Some((key, owners)) = raw.misplaced_key() {
            return Err(SinkConfigError { key, problem: SinkProblem::NotForKind { kind, owners } });
        }
        if raw.on_change.as_ref().is_some_and(Vec::is_empty) {
            return Err(SinkConfigError { key: "on_change", problem: SinkProblem::EmptyOnChange });
        }
        let err = |key, problem| SinkConfigError { key, problem };
        let target = match kind {
            SinkKind::EnvFile => {
                let file = raw.file()?;
                let key = raw.key.take().unwrap_or_default();
                if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(err("key", SinkProblem::EnvKey));
                }
                SinkTarget::EnvFile { file, key }
            }
            SinkKind::ClaudeCredentials => SinkTarget::ClaudeCredentials { file: raw.file()? },
            SinkKind::Openclaw => {
                let file = raw.file()?;
                let layout = match raw.layout.take().as_deref() {
                    None | Some("oauth") => OpenclawLayout::Oauth,
                    Some("auth_profiles") => OpenclawLayout::AuthProfiles,
                    Some(other) => return Err(err("layout", SinkProblem::Layout(other.to_owned()))),
                };
                SinkTarget::Openclaw { file, layout }
            }
            SinkKind::Template => {
                let file = raw.file()?;
                let source = match (raw.template.take(), raw.template_file.take()) {
                    (Some(t), None) => TemplateSource::Text(t),
                    (None, Some(f)) => TemplateSource::File(f),
                    _ => return Err(err("template", SinkProblem::TemplateSource)),
                };
                SinkTarget::Template { file, source }
            }
            SinkKind::Infisical => SinkTarget::Infisical(infisical(&mut raw)?),
            SinkKind::Native => SinkTarget::Native { file: raw.file()?, provider: raw.provider.take() },
            SinkKind::Command => match raw.command.take() {
                Some(argv) if !argv.is_empty() => SinkTarget::Command { argv },
                _ => return Err(err("command", SinkProblem::CommandRequired)),
            },
        };
        Ok(SinkConfig {
            account: raw.account,
            name: raw.name,
            on_change: raw.on_change,
            timeout: raw.timeout,
            debounce: raw.debounce,
            run_on: raw.run_on,
            target,
        })
    }
}

fn infisical(raw: &mut RawSink) -> Result<InfisicalTarget, SinkConfigError> {
    let required = |v: Option<String>, key| v.ok_or(SinkConfigError { key, problem: SinkProblem::InfisicalRequired });
    let url = required(raw.url.take(), "url")?;
    let project_id = required(raw.project_id.take(), "project_id")?;
    let secret_name = required(raw.secret_name.take(), "secret_name")?;
    let auth = match (raw.token_file.take(), raw.client_id_file.take(), raw.client_secret_file.take()) {
        (Some(t), _, _) => InfisicalAuth::Token(t),
        (None, Some(client_id_file), Some(client_secret_file)) => {
            InfisicalAuth::Universal { client_id_file, client_secret_file }
        }
        _ => return Err(SinkConfigError { key: "token_file", problem: SinkProblem::InfisicalAuth }),
    };
    let format = match raw.format.take().as_deref() {
        None | Some("base64_json") => InfisicalFormat::Base64Json,
        Some("json") => InfisicalFormat::Json,
        Some("access_token") => InfisicalFormat::AccessToken,
        Some(other) => return Err(SinkConfigError { key: "format", problem: SinkProblem::Format(other.to_owned()) }),
    };
    Ok(InfisicalTarget {
        url,
        project_id,
        environment: raw.environment.take().unwrap_or_else(|| "prod".to_owned()),
        secret_path: raw.secret_path.take().unwrap_or_else(|| "/".to_owned()),
        secret_name,
        format,
        auth,
    })
}

/// A refused `[[sinks]]` entry: its index and why, shown as `` `sinks[2].path` … ``, as the
/// other checks of the config name their keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`sinks[{index}].{}` {}", error.key, error.problem)]
pub(super) struct SinkEntryError {
    /// Which entry, from 0.
    pub(super) index: usize,
    /// Why.
    pub(super) error: SinkConfigError,
}

fn convert(raw: Vec<RawSink>) -> Result<Vec<SinkConfig>, SinkEntryError> {
    raw.into_iter()
        .enumerate()
        .map(|(index, r)| SinkConfig::try_from(r).map_err(|error| SinkEntryError { index, error }))
        .collect()
}

/// Reads `sinks = [...]`, each entry checked as it is read. A refused entry is a toml error
/// (so it carries the entry's line, and the first error in the file is the one reported);
/// [`refused_entry`] recovers it typed.
pub(super) fn deserialize_sinks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SinkConfig>, D::Error> {
    convert(Vec::<RawSink>::deserialize(d)?).map_err(serde::de::Error::custom)
}

/// The first refused `[[sinks]]` entry of the config text, if its sinks are well-formed TOML
/// and one of them is refused. Only run on a config that failed to load, to say which.
pub(super) fn refused_entry(text: &str) -> Option<SinkEntryError> {
    /// The file's sinks alone (every other key is ignored here: the full read checks them).
    #[derive(Deserialize)]
    struct Sinks {
        #[serde(default)]
        sinks: Vec<RawSink>,
    }
    convert(toml::from_str::<Sinks>(text).ok()?.sinks).err()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn sink(toml_text: &str) -> Result<SinkConfig, String> {
        toml::from_str::<SinkConfig>(toml_text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_native_sink_names_its_file_and_optionally_its_provider() {
        let s = sink("account = \"work\"\nkind = \"native\"\nprovider = \"codex\"\npath = \"~/.codex/auth.json\"\n")
            .unwrap();
        assert_eq!(s.kind(), SinkKind::Native);
        let SinkTarget::Native { file, provider } = &s.target else { panic!("{s:?}") };
        assert_eq!(
            (file.path.to_str(), provider.as_deref(), file.mode),
            (Some("~/.codex/auth.json"), Some("codex"), 0o600)
        );
        assert_eq!(s.display_name(), "native:~/.codex/auth.json");
        let s = sink("account = \"work\"\nkind = \"native\"\npath = \"/x\"\n").unwrap();
        assert!(matches!(s.target, SinkTarget::Native { provider: None, .. }));
        let e = sink("account = \"work\"\nkind = \"native\"\n").unwrap_err();
        assert!(e.contains("`path` is required"), "{e}");
        let e = sink("account = \"work\"\nkind = \"env_file\"\nkey = \"K\"\npath = \"/x\"\nprovider = \"codex\"\n")
            .unwrap_err();
        assert!(e.contains("`provider` does not apply") && e.contains("native"), "{e}");
    }
}
