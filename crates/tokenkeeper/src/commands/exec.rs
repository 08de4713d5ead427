//! `tokenkeeper exec -- CMD`: a fresh token in the environment, then `exec` (the process is
//! replaced, so signals and the exit status belong to CMD).

use std::os::unix::process::CommandExt;

use anyhow::{Context, Result};

use crate::app::App;
use crate::cli::ExecArgs;

pub async fn run(app: &App, args: ExecArgs) -> Result<i32> {
    let (account, warning) = app.keeper.fresh_token(args.account.as_deref()).await?;
    if let Some(w) = warning {
        eprintln!(
            "warning: {w}; running with the current token, valid until {}",
            account.credential.expires_at.to_rfc3339()
        );
    }
    if let Err(e) = app.keeper.store().record_usage(&account.name, app.keeper.clock().now()).await {
        tracing::debug!(error = %e, "cannot record usage");
    }
    let token = account.credential.access_token.expose();
    let mut cmd = std::process::Command::new(&args.command[0]);
    cmd.args(&args.command[1..]).env("CLAUDE_CODE_OAUTH_TOKEN", token);
    for var in &args.env {
        cmd.env(var, token);
    }
    // exec only returns on failure.
    let err = cmd.exec();
    Err(err).with_context(|| format!("cannot run `{}`", args.command[0]))
}
