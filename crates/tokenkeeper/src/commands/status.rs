//! `tokenkeeper status`.

use anyhow::Result;

use crate::app::App;
use crate::cli::StatusArgs;
use crate::exit;
use crate::output::{account_status, status_table};

pub async fn run(app: &App, args: StatusArgs) -> Result<i32> {
    let now = app.keeper.clock().now();
    let accounts = match &args.account {
        Some(n) => vec![app.keeper.resolve_account(Some(n)).await?],
        None => app.keeper.store().list_accounts().await?,
    };
    let rows: Vec<_> = accounts.iter().map(|a| account_status(&app.config, a, now)).collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if rows.is_empty() {
        println!("No accounts yet: run `tokenkeeper login` or `tokenkeeper import`.");
    } else {
        print!("{}", status_table(&rows, now));
    }
    Ok(exit::OK)
}
