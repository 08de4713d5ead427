//! `tokenkeeper check`: one line per account and a monitoring exit status, for cron, a
//! Kubernetes CronJob or Nagios/Icinga as they are.
//!
//! The exit statuses are Nagios's: 0 OK (healthy or expiring), 1 WARNING, 2 CRITICAL
//! (critical, needs-login, expired), 3 UNKNOWN (no store, no accounts, no such account, a
//! store that cannot be read). Levels come only from `tokenkeeper_keeper::view`, so `check`
//! never disagrees with `status`, the API or the alerts. `check` reads and never refreshes.
//!
//! A configuration the keeper has to work around is a WARNING too: a `[keeper] lead` not
//! shorter than an account's token lifetime (the keeper then refreshes at half the lifetime),
//! one line per account after the account lines.

use anyhow::Result;
use serde::Serialize;

use tokenkeeper_keeper::view::{lead_too_long, AccountView, LeadTooLong};
use tokenkeeper_store::sqlite::DATABASE_FILE_NAME;

use crate::app::{self, App};
use crate::cli::{CheckArgs, GlobalArgs};

/// Everything is fine (healthy or expiring accounts).
pub const OK: i32 = 0;
/// Something needs attention soon.
pub const WARNING: i32 = 1;
/// Something needs attention now.
pub const CRITICAL: i32 = 2;
/// The state cannot be determined.
pub const UNKNOWN: i32 = 3;

/// The monitoring word of an exit status, as Nagios prints it.
pub fn label(code: i32) -> &'static str {
    match code {
        OK => "OK",
        WARNING => "WARNING",
        CRITICAL => "CRITICAL",
        _ => "UNKNOWN",
    }
}

/// What `check --json` prints.
#[derive(Debug, Serialize)]
struct Report {
    /// `ok`, `warning`, `critical` or `unknown`.
    status: &'static str,
    /// The exit status.
    exit_code: i32,
    /// Why the state is unknown, when it is.
    error: Option<String>,
    /// Each account's view, worst first.
    accounts: Vec<AccountView>,
    /// Configuration the keeper works around (each a WARNING): a lead not shorter than an
    /// account's token lifetime.
    lead_too_long: Vec<LeadTooLong>,
}

/// What `gather` found: each account's view, and the accounts whose lead is too long.
type Gathered = (Vec<AccountView>, Vec<LeadTooLong>);

impl Report {
    fn new(result: Result<Gathered, String>) -> Report {
        match result {
            Ok((mut accounts, lead_too_long)) => {
                // Worst first: Nagios shows the first line as the service's summary.
                accounts.sort_by(|a, b| b.level.exit_code().cmp(&a.level.exit_code()).then(a.name.cmp(&b.name)));
                let mut exit_code = accounts.iter().map(|v| v.level.exit_code()).max().unwrap_or(UNKNOWN);
                if !lead_too_long.is_empty() {
                    exit_code = exit_code.max(WARNING);
                }
                Report { status: word(exit_code), exit_code, error: None, accounts, lead_too_long }
            }
            Err(error) => Report {
                status: word(UNKNOWN),
                exit_code: UNKNOWN,
                error: Some(error),
                accounts: Vec::new(),
                lead_too_long: Vec::new(),
            },
        }
    }

    fn text(&self) -> String {
        if let Some(e) = &self.error {
            return format!("UNKNOWN: {}\n", super::doctor::one_line(e));
        }
        // The provider is named unless it is the default one (`anthropic`), so monitoring
        // patterns written for `OK main: …` keep matching.
        let accounts = self.accounts.iter().map(|v| {
            let provider = if v.provider == tokenkeeper_core::config::ANTHROPIC {
                String::new()
            } else {
                format!(" [{}]", v.provider)
            };
            format!("{} {}{provider}: {}\n", label(v.level.exit_code()), v.name, v.message)
        });
        let leads = self
            .lead_too_long
            .iter()
            .map(|l| format!("{} {}: {}; fix: {}\n", label(WARNING), l.account, l.problem(), l.fix()));
        accounts.chain(leads).collect()
    }
}

fn word(code: i32) -> &'static str {
    match code {
        OK => "ok",
        WARNING => "warning",
        CRITICAL => "critical",
        _ => "unknown",
    }
}

/// The views to judge and the accounts whose lead is too long, or why there are none.
async fn gather(global: &GlobalArgs, account: Option<&str>) -> Result<Gathered, String> {
    let data_dir = app::data_dir(global).map_err(|e| format!("{e:#}"))?;
    // Opening the store would create an empty one; a check must not set anything up.
    if !data_dir.join(DATABASE_FILE_NAME).exists() {
        return Err(format!(
            "no store in {}: run `tokenkeeper login` or `tokenkeeper import` first, or point --data-dir at the right directory",
            data_dir.display()
        ));
    }
    let app = App::open(global).await.map_err(|e| format!("cannot read the store: {e:#}"))?;
    let read = |e: tokenkeeper_core::StoreError| format!("cannot read the store in {}: {e}", data_dir.display());
    let accounts = match account {
        Some(name) => match app.store.get_account(name).await.map_err(read)? {
            Some(a) => vec![a],
            None => return Err(format!("no account named `{name}`; `tokenkeeper accounts` lists them")),
        },
        None => app.store.list_accounts().await.map_err(read)?,
    };
    if accounts.is_empty() {
        return Err("no accounts yet: run `tokenkeeper login` or `tokenkeeper import`".into());
    }
    let now = app.keeper.clock().now();
    // A one-shot process runs no sinks; it sees the failing ones the running daemon recorded,
    // so `check`, `status` and the alerts agree.
    let recorded = crate::output::recorded_sinks(app.store.as_ref()).await;
    let views = accounts.iter().map(|a| crate::output::account_status(&app.config, &recorded, a, now)).collect();
    let leads = accounts.iter().filter_map(|a| lead_too_long(&app.config, a)).collect();
    Ok((views, leads))
}

/// Runs `check`; returns the monitoring exit status.
pub async fn run(global: &GlobalArgs, args: CheckArgs) -> Result<i32> {
    let report = Report::new(gather(global, args.account.as_deref()).await);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    Ok(report.exit_code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenkeeper_core::status::Level;

    #[test]
    fn labels_follow_nagios() {
        assert_eq!(label(Level::Healthy.exit_code()), "OK");
        assert_eq!(label(Level::Expiring.exit_code()), "OK");
        assert_eq!(label(Level::Warning.exit_code()), "WARNING");
        for l in [Level::Critical, Level::NeedsLogin, Level::Expired] {
            assert_eq!(label(l.exit_code()), "CRITICAL");
        }
        assert_eq!(label(UNKNOWN), "UNKNOWN");
    }

    #[test]
    fn unknown_report_says_why() {
        let r = Report::new(Err("no accounts yet".into()));
        assert_eq!(r.exit_code, UNKNOWN);
        assert_eq!(r.text(), "UNKNOWN: no accounts yet\n");
    }
}
