//! `tokenkeeper token`: only the access token on stdout, for `$(tokenkeeper token)`.

use anyhow::Result;

use crate::app::App;
use crate::cli::AccountArg;
use crate::exit;

pub async fn run(app: &App, args: AccountArg) -> Result<i32> {
    let (account, warning) = app.keeper.fresh_token(args.account.as_deref()).await?;
    if let Some(w) = warning {
        eprintln!(
            "warning: {w}; handing out the current token, still valid until {}",
            account.credential.expires_at.to_rfc3339()
        );
    }
    println!("{}", account.credential.access_token.expose());
    if let Err(e) = app.keeper.store().record_usage(&account.name, app.keeper.clock().now()).await {
        tracing::debug!(error = %e, "cannot record usage");
    }
    Ok(exit::OK)
}
