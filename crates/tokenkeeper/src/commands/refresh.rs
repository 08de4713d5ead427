//! `tokenkeeper refresh [--force | --if-needed]`.

use anyhow::Result;

use tokenkeeper_keeper::{RefreshPolicy, RefreshResult};

use crate::app::App;
use crate::cli::RefreshArgs;
use crate::exit;

pub async fn run(app: &App, args: RefreshArgs) -> Result<i32> {
    let account = app.keeper.resolve_account(args.account.as_deref()).await?;
    let policy = if args.force { RefreshPolicy::Force } else { RefreshPolicy::IfWithin(app.keeper.lead()) };
    let result = match app.keeper.refresh(&account.name, policy).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(exit::for_keeper_error(&e));
        }
    };
    let a = result.account();
    let code = match &result {
        RefreshResult::Refreshed(_) => {
            eprintln!(
                "Refreshed `{}`: {} valid until {}.",
                a.name,
                a.credential.access_token.fingerprint(),
                a.credential.expires_at.to_rfc3339()
            );
            exit::OK
        }
        RefreshResult::Adopted(_) => {
            eprintln!(
                "`{}` was just refreshed by another process; using that token, valid until {}.",
                a.name,
                a.credential.expires_at.to_rfc3339()
            );
            exit::OK
        }
        RefreshResult::NotNeeded(_) => {
            eprintln!(
                "`{}` does not need a refresh: valid for {} (refreshes inside the last {}).",
                a.name,
                tokenkeeper_core::status::human_duration(a.credential.time_left(app.keeper.clock().now())),
                humantime::format_duration(app.keeper.lead())
            );
            exit::NOT_NEEDED
        }
    };
    if args.sync && super::sync::deliver(app, a).await? > 0 {
        // A refresh that could not be delivered is not done: cron and timers should see it.
        return Ok(exit::FAILURE);
    }
    Ok(code)
}
