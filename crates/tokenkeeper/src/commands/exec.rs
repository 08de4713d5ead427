//! `tokenkeeper exec -- CMD`: a fresh token in the environment, then `exec` (the process is
//! replaced, so signals and the exit status belong to CMD).

use std::os::unix::process::CommandExt;

use anyhow::{Context, Result};
use tokenkeeper_keeper::LeaseRequest;

use crate::app::App;
use crate::cli::ExecArgs;

pub async fn run(app: &App, args: ExecArgs) -> Result<i32> {
    let lease = app.keeper.lease(LeaseRequest::account(args.account.as_deref())).await?;
    if let Some(w) = lease.warning() {
        eprintln!("warning: {w}; running with the current token, valid until {}", lease.expires_at().to_rfc3339());
    }
    // exec never returns on success: the use is saved first.
    if let Err(e) = app.keeper.flush_usage().await {
        tracing::debug!(error = %e, "cannot record usage");
    }
    let token = lease.token().expose();
    let mut cmd = std::process::Command::new(&args.command[0]);
    cmd.args(&args.command[1..]).env("CLAUDE_CODE_OAUTH_TOKEN", token);
    for var in &args.env {
        cmd.env(var, token);
    }
    // exec only returns on failure.
    let err = cmd.exec();
    Err(err).with_context(|| format!("cannot run `{}`", args.command[0]))
}
