//! `tokenkeeper exec -- CMD`: a fresh token in the environment, then `exec` (the process is
//! replaced, so signals and the exit status belong to CMD).
//!
//! CMD gets tokenkeeper's environment through the one child-process policy
//! ([`tokenkeeper_process::env`], purpose `Exec`): `TOKENKEEPER_KEY`, `TOKENKEEPER_ADMIN_TOKEN`
//! and every other `TOKENKEEPER_*` but a few non-secret settings are withheld, so neither
//! Claude Code nor any tool it runs sees the key to the store. It gets
//! `CLAUDE_CODE_OAUTH_TOKEN` and each `--env NAME`, set to the access token.

use anyhow::Result;
use tokenkeeper_keeper::LeaseRequest;
use tokenkeeper_process::{ChildCommand, Purpose};

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
    let token = lease.token();
    let mut cmd = ChildCommand::new(Purpose::Exec, &args.command)?.secret_env("CLAUDE_CODE_OAUTH_TOKEN", token);
    for var in &args.env {
        cmd = cmd.secret_env(var, token);
    }
    // exec only returns on failure.
    Err(cmd.exec().into())
}
