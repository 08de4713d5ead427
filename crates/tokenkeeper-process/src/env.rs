//! What a child process inherits from tokenkeeper's environment.
//!
//! The rule, the same for every kind of child:
//!
//! 1. Every variable whose name starts with `TOKENKEEPER_` is **withheld**, except the
//!    non-secret settings in [`PASSED_TOKENKEEPER_VARS`] (so a child that runs `tokenkeeper`
//!    itself finds the same installation). This covers the store key (`TOKENKEEPER_KEY`), the
//!    server's admin token (`TOKENKEEPER_ADMIN_TOKEN`), key files (`TOKENKEEPER_KEY_FILE`, any
//!    `*_FILE` variant) and any secret variable added later, without a list to keep up to
//!    date. It also withholds inherited copies of the variables tokenkeeper *sets* for its
//!    children (`TOKENKEEPER_ACCESS_TOKEN`, `TOKENKEEPER_ALERT_*`, …): a child gets the ones
//!    its own run sets, never a stale one from whoever started tokenkeeper.
//! 2. Inherited credential variables that tokenkeeper itself hands out
//!    ([`HANDED_OUT_VARS`]: `CLAUDE_CODE_OAUTH_TOKEN`, `CLAUDE_CODE_OAUTH_TOKEN_FILE_DESCRIPTOR`)
//!    are withheld: a child that should have a token gets tokenkeeper's fresh one, and one
//!    that should not (an alert hook, a nudge that must make Claude Code refresh its own file)
//!    gets none.
//! 3. An alert command ([`Purpose::Alert`]) is a notifier: it also loses every variable whose
//!    name looks like a credential (`ANTHROPIC_*`, names containing `TOKEN`, `SECRET`,
//!    `PASSWORD`, `API_KEY`, `APIKEY`).
//! 4. Everything else is inherited (`PATH`, `HOME`, `DOCKER_HOST`, proxies, …), and then the
//!    purpose's documented variables are set (see `docs/OPERATIONS.md`).

use std::ffi::{OsStr, OsString};

/// What a child is for; decides the extra rules and, for the callers, which variables they set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A sink's `on_change` command, or the program of a `command` sink. Gets
    /// `TOKENKEEPER_ACCESS_TOKEN`, `CLAUDE_CODE_OAUTH_TOKEN`, `TOKENKEEPER_EXPIRES_AT`,
    /// `TOKENKEEPER_EXPIRES_AT_MS`, `TOKENKEEPER_ACCOUNT`, `TOKENKEEPER_SINK`.
    Sink,
    /// An alert `command` channel. Gets `TOKENKEEPER_ALERT_*` and the alert as JSON on stdin.
    Alert,
    /// A follow-mode account's `nudge`. Gets `TOKENKEEPER_ACCOUNT`.
    Nudge,
    /// `tokenkeeper exec`. Gets `CLAUDE_CODE_OAUTH_TOKEN` and each `--env NAME`.
    Exec,
}

impl Purpose {
    /// The word used in logs and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Sink => "sink command",
            Purpose::Alert => "alert command",
            Purpose::Nudge => "nudge command",
            Purpose::Exec => "exec",
        }
    }
}

/// The `TOKENKEEPER_*` variables a child inherits: settings that are not secret and that let a
/// `tokenkeeper` run by the child find the same installation and provider.
pub const PASSED_TOKENKEEPER_VARS: &[&str] = &[
    "TOKENKEEPER_CONFIG",
    "TOKENKEEPER_DATA_DIR",
    "TOKENKEEPER_LISTEN",
    "TOKENKEEPER_LEAD",
    "TOKENKEEPER_ANTHROPIC_TOKEN_URL",
    "TOKENKEEPER_ANTHROPIC_AUTHORIZE_URL",
    "TOKENKEEPER_ANTHROPIC_REDIRECT_URI",
    "TOKENKEEPER_ANTHROPIC_API_BASE_URL",
];

/// tokenkeeper's own secret variables (read by `tokenkeeper-core`'s config, the store and the
/// server), with their `*_FILE` forms. Withheld by the `TOKENKEEPER_*` rule anyway; listed so
/// the documentation and the tests name them.
pub const SECRET_VARS: &[&str] = &[
    "TOKENKEEPER_KEY",
    "TOKENKEEPER_KEY_FILE",
    "TOKENKEEPER_ADMIN_TOKEN",
    "TOKENKEEPER_ADMIN_TOKEN_FILE",
    "TOKENKEEPER_API_KEY",
    "TOKENKEEPER_API_KEY_FILE",
];

/// Credential variables tokenkeeper sets for the children that should have a token; an
/// inherited copy is never passed on.
pub const HANDED_OUT_VARS: &[&str] = &["CLAUDE_CODE_OAUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN_FILE_DESCRIPTOR"];

/// Whether a variable named `name` is withheld from a child of `purpose` (see the
/// [module docs](self)). Names that are not UTF-8 are withheld: none of ours is, and such a
/// name cannot be checked against the rules.
pub fn is_withheld(name: &OsStr, purpose: Purpose) -> bool {
    let Some(name) = name.to_str() else { return true };
    let upper = name.to_ascii_uppercase();
    if upper.starts_with("TOKENKEEPER_") {
        return !PASSED_TOKENKEEPER_VARS.contains(&upper.as_str());
    }
    if HANDED_OUT_VARS.contains(&upper.as_str()) {
        return true;
    }
    purpose == Purpose::Alert && looks_like_a_credential(&upper)
}

/// Whether an upper-cased variable name suggests it holds a credential.
fn looks_like_a_credential(upper: &str) -> bool {
    upper.starts_with("ANTHROPIC_")
        || ["TOKEN", "SECRET", "PASSWORD", "API_KEY", "APIKEY"].iter().any(|w| upper.contains(w))
}

/// The inherited part of a child's environment: `parent` without what [`is_withheld`] takes
/// out. The caller then adds the purpose's own variables.
pub fn inherited(
    parent: impl IntoIterator<Item = (OsString, OsString)>,
    purpose: Purpose,
) -> Vec<(OsString, OsString)> {
    parent.into_iter().filter(|(name, _)| !is_withheld(name, purpose)).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const ALL: [Purpose; 4] = [Purpose::Sink, Purpose::Alert, Purpose::Nudge, Purpose::Exec];

    #[test]
    fn tokenkeeper_secrets_are_withheld_from_every_child() {
        let extra =
            ["TOKENKEEPER_SOMETHING_NEW", "tokenkeeper_key", "TOKENKEEPER_ACCESS_TOKEN", "TOKENKEEPER_ALERT_NAME"];
        for purpose in ALL {
            for name in SECRET_VARS.iter().chain(HANDED_OUT_VARS).chain(&extra) {
                assert!(is_withheld(OsStr::new(name), purpose), "{name} reaches a {purpose:?} child");
            }
            for name in PASSED_TOKENKEEPER_VARS.iter().chain(&["PATH", "HOME", "DOCKER_HOST", "HTTPS_PROXY"]) {
                assert!(!is_withheld(OsStr::new(name), purpose), "{name} is withheld from a {purpose:?} child");
            }
        }
    }

    #[test]
    fn alert_commands_also_lose_credential_looking_names() {
        for name in ["ANTHROPIC_API_KEY", "GITHUB_TOKEN", "DB_PASSWORD", "aws_secret_access_key", "X_APIKEY"] {
            assert!(is_withheld(OsStr::new(name), Purpose::Alert), "{name}");
            assert!(!is_withheld(OsStr::new(name), Purpose::Sink), "{name}: a sink command may need it");
        }
    }

    #[test]
    fn inherited_filters_a_whole_environment() {
        let parent = [("PATH", "/bin"), ("TOKENKEEPER_KEY", "k"), ("TOKENKEEPER_DATA_DIR", "/d")]
            .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let kept: Vec<String> =
            inherited(parent, Purpose::Exec).into_iter().map(|(k, _)| k.into_string().unwrap()).collect();
        assert_eq!(kept, ["PATH", "TOKENKEEPER_DATA_DIR"]);
    }
}
