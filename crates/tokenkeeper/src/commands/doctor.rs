//! `tokenkeeper doctor`: what a person would check by hand (seed 000's diagnostics section),
//! each finding with the exact command or action that fixes it.
//!
//! Checks, in order: the config loads; the data directory and its secret files have private
//! modes; on PostgreSQL, the connection, the schema version, the key and the leader
//! ([`postgres`]); each account's token, time left, refresh-token age and state, and whether
//! `[keeper] lead` is shorter than its token's lifetime; the provider's token
//! endpoint answers (a harmless request that spends nothing); with `--probe`, a real one-token
//! API call with each account's token; bound Claude Code files and file sinks are writable and
//! in step with the store; Claude Code's lock directories are not stale.
//!
//! Exit status: 0 when every finding is `ok`, 1 with warnings, 2 with failures. Nothing here
//! prints a token: accounts are shown by fingerprint, HTTP answers by status and error type.

mod files;
mod net;
mod postgres;

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::Result;
use chrono::{DateTime, Utc};

use tokenkeeper_core::status::{human_duration, Level};
use tokenkeeper_core::{paths, Account, Config, Mode};
use tokenkeeper_keeper::view::{account_view, lead_too_long};
use tokenkeeper_store::sqlite::DATABASE_FILE_NAME;

use crate::app::{self, App};
use crate::cli::{DoctorArgs, GlobalArgs};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Nothing to do.
    Ok,
    /// Works now, needs attention.
    Warn,
    /// Broken, or unsafe.
    Fail,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Ok => "ok",
            Severity::Warn => "warn",
            Severity::Fail => "fail",
        }
    }
}

/// One thing checked, and how to fix it when it is not ok.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How bad.
    pub severity: Severity,
    /// What was checked and found.
    pub what: String,
    /// The command or action that fixes it.
    pub fix: Option<String>,
}

impl Finding {
    /// A good finding.
    pub fn ok(what: impl Into<String>) -> Finding {
        Finding { severity: Severity::Ok, what: what.into(), fix: None }
    }

    /// A warning and its fix.
    pub fn warn(what: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding { severity: Severity::Warn, what: what.into(), fix: Some(fix.into()) }
    }

    /// A failure and its fix.
    pub fn fail(what: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding { severity: Severity::Fail, what: what.into(), fix: Some(fix.into()) }
    }

    /// The line `doctor` prints: one line per finding, whatever an error message spans.
    pub fn line(&self) -> String {
        let what = one_line(&self.what);
        match &self.fix {
            Some(fix) => format!("{:<4}  {what}  — fix: {}", self.severity.as_str(), one_line(fix)),
            None => format!("{:<4}  {what}", self.severity.as_str()),
        }
    }
}

/// Joins the lines of a multi-line message (toml's errors draw a caret under the key).
pub fn one_line(text: &str) -> String {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

/// The exit status for a set of findings: 0 all ok, 1 warnings, 2 failures.
pub fn exit_code(findings: &[Finding]) -> i32 {
    match findings.iter().map(|f| f.severity).max() {
        Some(Severity::Fail) => 2,
        Some(Severity::Warn) => 1,
        _ => 0,
    }
}

/// Quotes a path for a shell command line, only when it needs it.
pub fn shell_quote(path: &std::path::Path) -> String {
    let s = path.display().to_string();
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+=:@%,".contains(c)) {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Environment variables that override the config file.
const CONFIG_ENV: [&str; 6] = [
    "TOKENKEEPER_LISTEN",
    "TOKENKEEPER_LEAD",
    "TOKENKEEPER_ANTHROPIC_TOKEN_URL",
    "TOKENKEEPER_ANTHROPIC_AUTHORIZE_URL",
    "TOKENKEEPER_ANTHROPIC_REDIRECT_URI",
    "TOKENKEEPER_ANTHROPIC_API_BASE_URL",
];

/// Loads the config and says which file it came from.
fn check_config(global: &GlobalArgs) -> (Option<Config>, Finding) {
    let file = global.config.clone().or_else(|| paths::default_config_path().filter(|p| p.exists()));
    match app::load_config(global) {
        Ok(config) => {
            let overrides: Vec<&str> = CONFIG_ENV.iter().copied().filter(|v| env(v).is_some()).collect();
            let mut what = match &file {
                Some(p) => format!("config {} parses", p.display()),
                None => "no config file: using the defaults".to_owned(),
            };
            if !overrides.is_empty() {
                what.push_str(&format!(" (overridden by {})", overrides.join(", ")));
            }
            (Some(config), Finding::ok(what))
        }
        Err(e) => (
            None,
            Finding::fail(
                format!("config does not load: {e:#}"),
                "correct the key named above (docs/CONFIG.md lists every setting), then run `tokenkeeper doctor` again",
            ),
        ),
    }
}

/// The fix for an account that is not ok.
fn account_fix(account: &Account, level: Level) -> String {
    let name = &account.name;
    let login = format!("tokenkeeper login --account {name}");
    let refresh = format!("tokenkeeper refresh --account {name}");
    match level {
        Level::NeedsLogin => login,
        Level::Expired if account.mode == Mode::Follow => {
            format!("start Claude Code once so it refreshes its own token, or `{login}`")
        }
        Level::Expired if account.credential.is_refreshable() => format!("`{refresh}`; if that is refused, `{login}`"),
        _ if account.last_error.is_some() => {
            format!("`{refresh}` and read its error; `tokenkeeper doctor` checks the endpoint below")
        }
        _ => login,
    }
}

/// One account's token, time left, refresh-token age and state.
fn check_account(config: &Config, account: &Account, now: DateTime<Utc>) -> Finding {
    let v = account_view(config, account, now, Vec::new());
    let left = if v.expires_in_seconds > 0 {
        format!("access token valid for {}", v.expires_in)
    } else {
        format!("access token expired {} ago", human_duration(chrono::Duration::seconds(-v.expires_in_seconds)))
    };
    let rt = match (v.refreshable, v.refresh_token_age_seconds) {
        (false, _) => "no refresh token (long-lived token)".to_owned(),
        (true, Some(s)) => format!("refresh token {} old", human_duration(chrono::Duration::seconds(s))),
        (true, None) => "refresh token of unknown age".to_owned(),
    };
    let what = format!("account `{}` ({}, {}): {left}, {rt}, token {}", v.name, v.mode, v.status, v.token_fingerprint);
    match v.level {
        Level::Healthy | Level::Expiring => Finding::ok(what),
        Level::Warning => Finding::warn(format!("{what}: {}", v.message), account_fix(account, v.level)),
        Level::Critical | Level::NeedsLogin | Level::Expired => {
            Finding::fail(format!("{what}: {}", v.message), account_fix(account, v.level))
        }
    }
}

/// Runs every check; returns the findings in the order they were made.
async fn examine(global: &GlobalArgs, args: &DoctorArgs) -> Vec<Finding> {
    let mut findings = Vec::new();
    let (config, config_finding) = check_config(global);
    findings.push(config_finding);

    let data_dir = match app::data_dir(global) {
        Ok(d) => Some(d),
        Err(e) => {
            findings.push(Finding::fail(format!("{e:#}"), "pass --data-dir or set TOKENKEEPER_DATA_DIR"));
            None
        }
    };
    if let Some(dir) = &data_dir {
        findings.extend(files::data_dir(dir, env("TOKENKEEPER_KEY").is_some()));
    }

    // Without a config the rest would check against settings that are not the user's.
    let Some(config) = config else { return findings };
    let store_url = match app::store_url(&config) {
        Ok(u) => u,
        Err(e) => {
            findings.push(Finding::fail(format!("{e:#}"), "correct [store] url_file, or unset it to use [store] url"));
            return findings;
        }
    };
    let accounts = match (&store_url, &data_dir) {
        (Some((url, origin)), _) if tokenkeeper_store_postgres::is_postgres_url(url) => {
            let (f, accounts) = postgres::checks(url, origin, data_dir.as_deref()).await;
            findings.extend(f);
            accounts
        }
        (Some((_, origin)), _) => {
            findings.push(Finding::fail(
                format!("{origin} is not a postgres:// or postgresql:// URL (not shown: it may hold a password)"),
                "correct it, or remove it to use the embedded store in the data directory",
            ));
            Vec::new()
        }
        (None, Some(dir)) if dir.join(DATABASE_FILE_NAME).exists() => match open_accounts(global).await {
            Ok(a) => a,
            Err(f) => {
                findings.push(f);
                Vec::new()
            }
        },
        _ => Vec::new(),
    };
    let now = Utc::now();
    if accounts.is_empty() {
        findings.push(Finding::warn(
            "no accounts yet",
            "`tokenkeeper login` (a browser on any machine) or `tokenkeeper import` (Claude Code's file)",
        ));
    }
    for a in &accounts {
        findings.push(check_account(&config, a, now));
        if let Some(l) = lead_too_long(&config, a) {
            findings.push(Finding::warn(l.problem(), l.fix()));
        }
    }

    // Each provider the accounts use, or the default one when there are none yet; through the
    // same registry the keeper refreshes with.
    let ids: BTreeSet<String> = if accounts.is_empty() {
        [tokenkeeper_core::config::ANTHROPIC.to_owned()].into()
    } else {
        accounts.iter().map(|a| a.provider.clone()).collect()
    };
    let registry = tokenkeeper_provider::Providers::from_config(&config);
    match &registry {
        Err(e) => findings.push(Finding::fail(
            format!("the providers of the configuration cannot be set up: {}", tokenkeeper_core::error_chain(e)),
            "correct the `[providers.*]` table the message names (see docs/CONFIG.md)",
        )),
        Ok(providers) => {
            for id in &ids {
                match providers.get(id) {
                    // Plain API keys: nothing is ever refreshed, there is no token endpoint.
                    Some(p) if !p.refreshes() => {}
                    Some(p) => findings.push(net::token_endpoint(p.as_ref(), &config.provider(id)).await),
                    None => findings.push(Finding::fail(
                        format!("accounts use provider `{id}`, which this configuration does not know"),
                        format!("add a `[providers.{id}]` table (see docs/CONFIG.md), or remove those accounts"),
                    )),
                }
            }
            if args.probe {
                for a in &accounts {
                    let Some(access) = providers.get(&a.provider).and_then(|p| p.api()) else { continue };
                    if let Some(f) = net::api_probe(&access, &config.provider(&a.provider), a, &args.model, now).await {
                        findings.push(f);
                    }
                }
            }
        }
    }

    for a in &accounts {
        findings.extend(files::bound_file(a, now, registry.as_ref().ok()));
    }
    findings.extend(files::sinks(&config, &accounts));

    // Claude Code's config directory, and the directory of every bound file.
    let mut claude_dirs: BTreeSet<PathBuf> = paths::claude_config_dir(&env).into_iter().collect();
    for a in &accounts {
        if let Some(dir) = a.binding.as_ref().and_then(|b| b.path.parent()) {
            if a.binding.as_ref().is_some_and(|b| b.kind == tokenkeeper_core::BindingKind::ClaudeCredentials) {
                claude_dirs.insert(dir.to_owned());
            }
        }
    }
    findings.extend(files::claude_locks(&claude_dirs));
    findings
}

/// Opens the store and lists the accounts, or says why it cannot.
async fn open_accounts(global: &GlobalArgs) -> Result<Vec<Account>, Finding> {
    let app = App::open(global).await.map_err(|e| {
        Finding::fail(
            format!("the store cannot be opened: {e:#}"),
            "check TOKENKEEPER_KEY (or the key file) is the one the store was made with, and the fixes above",
        )
    })?;
    let accounts = app.store.list_accounts().await.map_err(|e| {
        Finding::fail(
            format!("the store cannot be read: {e}"),
            "check TOKENKEEPER_KEY (or the key file) is the one the store was made with",
        )
    })?;
    Ok(accounts)
}

/// Runs `doctor`; returns 0 when all is well, 1 with warnings, 2 with failures.
pub async fn run(global: &GlobalArgs, args: DoctorArgs) -> Result<i32> {
    let findings = examine(global, &args).await;
    for f in &findings {
        println!("{}", f.line());
    }
    let count = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
    println!(
        "\n{} ok, {} warning(s), {} failure(s)",
        count(Severity::Ok),
        count(Severity::Warn),
        count(Severity::Fail)
    );
    Ok(exit_code(&findings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_exit_codes() {
        let ok = Finding::ok("config defaults");
        assert_eq!(ok.line(), "ok    config defaults");
        let warn = Finding::warn("x", "do y");
        assert_eq!(warn.line(), "warn  x  — fix: do y");
        assert_eq!(exit_code(std::slice::from_ref(&ok)), 0);
        assert_eq!(exit_code(&[ok.clone(), warn.clone()]), 1);
        assert_eq!(exit_code(&[warn, Finding::fail("z", "w"), ok]), 2);
        assert_eq!(exit_code(&[]), 0);
    }

    #[test]
    fn paths_are_quoted_only_when_needed() {
        assert_eq!(shell_quote(std::path::Path::new("/srv/bot/.env")), "/srv/bot/.env");
        assert_eq!(shell_quote(std::path::Path::new("/a b/it's")), r"'/a b/it'\''s'");
    }
}
