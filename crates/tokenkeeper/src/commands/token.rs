//! `tokenkeeper token`: only the access token on stdout, for `$(tokenkeeper token)`.

use anyhow::Result;
use tokenkeeper_keeper::LeaseRequest;

use crate::app::App;
use crate::cli::AccountArg;
use crate::exit;

pub async fn run(app: &App, args: AccountArg) -> Result<i32> {
    let lease = app.keeper.lease(LeaseRequest::account(args.account.as_deref())).await?;
    if let Some(w) = lease.warning() {
        eprintln!("warning: {w}; handing out the current token, still valid until {}", lease.expires_at().to_rfc3339());
    }
    println!("{}", lease.token().expose());
    if let Err(e) = app.keeper.flush_usage().await {
        tracing::debug!(error = %e, "cannot record usage");
    }
    Ok(exit::OK)
}
