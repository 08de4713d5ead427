//! `tokenkeeper accounts [remove NAME]`.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Context, Result};

use crate::app::App;
use crate::cli::{AccountsAction, AccountsArgs};
use crate::exit;
use crate::output::account_status;

pub async fn run(app: &App, args: AccountsArgs) -> Result<i32> {
    match args.action {
        None => {
            let now = app.keeper.clock().now();
            let accounts = app.keeper.store().list_accounts().await?;
            if args.json {
                let recorded = crate::output::recorded_sinks(app.store.as_ref()).await;
                let rows: Vec<_> = accounts.iter().map(|a| account_status(&app.config, &recorded, a, now)).collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if accounts.is_empty() {
                eprintln!("No accounts yet: run `tokenkeeper login` or `tokenkeeper import`.");
            } else {
                for a in &accounts {
                    println!(
                        "{}\t{}\t{}\t{}",
                        a.name,
                        a.mode,
                        a.email.as_deref().unwrap_or("-"),
                        a.binding.as_ref().map(|b| b.path.display().to_string()).unwrap_or_else(|| "-".into())
                    );
                }
            }
            Ok(exit::OK)
        }
        Some(AccountsAction::Remove { name, yes }) => {
            if app.keeper.store().get_account(&name).await?.is_none() {
                bail!("no account named `{name}`; see `tokenkeeper accounts`");
            }
            if !yes {
                if !std::io::stdin().is_terminal() {
                    bail!(
                        "removing `{name}` deletes its stored credential; pass --yes to confirm when not at a terminal"
                    );
                }
                eprint!("Remove account `{name}` and its stored credential? [y/N] ");
                std::io::stderr().flush().ok();
                let mut answer = String::new();
                std::io::stdin().lock().read_line(&mut answer).context("cannot read the answer")?;
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    eprintln!("Kept `{name}`.");
                    return Ok(exit::FAILURE);
                }
            }
            app.keeper.remove(&name).await?;
            eprintln!("Removed `{name}`.");
            Ok(exit::OK)
        }
    }
}
