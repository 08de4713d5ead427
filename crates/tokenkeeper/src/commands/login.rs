//! `tokenkeeper login`: the PKCE browser login, with the code pasted back.

use std::io::BufRead;

use anyhow::{Context, Result};

use tokenkeeper_keeper::IngestOutcome;

use crate::app::App;
use crate::cli::LoginArgs;
use crate::exit;

pub async fn run(app: &App, args: LoginArgs) -> Result<i32> {
    let (login, url) = app.keeper.start_login();
    eprintln!("Open this link in a browser (on any machine) and sign in:\n\n  {url}\n");
    eprintln!("Then paste the code shown after sign-in (it looks like CODE#STATE) and press Enter:");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("cannot read the pasted code from stdin")?;
    if line.trim().is_empty() {
        anyhow::bail!("no code was pasted; run `tokenkeeper login` again and paste the whole CODE#STATE string");
    }
    let outcome = app.keeper.finish_login(args.account.as_deref(), line.trim(), &login).await?;
    let a = outcome.account();
    let what = match outcome {
        IngestOutcome::Created(_) => "created",
        IngestOutcome::Updated(_) => "updated",
        IngestOutcome::Unchanged(_) => "unchanged",
    };
    eprintln!(
        "Logged in: account `{}` {what}{}; token valid until {}.",
        a.name,
        a.email.as_deref().map(|e| format!(" ({e})")).unwrap_or_default(),
        a.credential.expires_at.to_rfc3339()
    );
    Ok(exit::OK)
}
