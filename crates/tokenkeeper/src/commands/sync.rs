//! `tokenkeeper sync`: render every sink once.

use anyhow::Result;

use tokenkeeper_core::Account;
use tokenkeeper_sync::sink::SinkSet;

use crate::app::App;
use crate::cli::AccountArg;
use crate::exit;

/// Delivers one account to its sinks once; returns how many failed.
pub async fn deliver(app: &App, account: &Account) -> Result<usize> {
    let sinks = SinkSet::with_providers(app.config.sinks.clone(), app.keeper.providers().clone());
    let results = sinks.deliver_once(account).await;
    let mut failed = 0;
    for (name, r) in results {
        match r {
            Ok(outcome) => eprintln!("{name}: {outcome:?}"),
            Err(e) => {
                failed += 1;
                eprintln!("{name}: failed: {e}");
            }
        }
    }
    sinks.shutdown().await;
    Ok(failed)
}

pub async fn run(app: &App, args: AccountArg) -> Result<i32> {
    let accounts = match &args.account {
        Some(n) => vec![app.keeper.resolve_account(Some(n)).await?],
        None => app.keeper.store().list_accounts().await?,
    };
    if app.config.sinks.is_empty() {
        eprintln!("No sinks are configured; see docs/CONFIG.md for [[sinks]].");
    }
    let mut failed = 0;
    for a in &accounts {
        failed += deliver(app, a).await?;
    }
    Ok(if failed == 0 { exit::OK } else { exit::FAILURE })
}
