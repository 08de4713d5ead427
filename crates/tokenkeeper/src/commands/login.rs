//! `tokenkeeper login [--provider ID] [--listen]`: the provider's PKCE browser login, with the
//! code (or the whole redirect URL) pasted back, or the redirect caught on a loopback listener.

use std::io::BufRead;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use tokenkeeper_keeper::IngestOutcome;
use tokenkeeper_provider::Loopback;

use crate::app::App;
use crate::cli::LoginArgs;
use crate::exit;

pub async fn run(app: &App, args: LoginArgs) -> Result<i32> {
    let provider = args.provider.as_str();
    if app.keeper.providers().get(provider).is_none() {
        let with_flow: Vec<&str> =
            app.keeper.providers().iter().filter(|p| p.login().is_some()).map(|p| p.id()).collect();
        anyhow::bail!(
            "unknown provider `{provider}`; the providers with a login flow here are: {} (add a `[providers.{provider}]` table of one of their kinds to log in with another; see docs/CONFIG.md)",
            with_flow.join(", ")
        );
    }
    let outcome = if args.listen {
        listen(app, &args).await?
    } else {
        let started = app.keeper.start_provider_login(provider, None)?;
        let hint = app.keeper.login_paste_hint(provider)?;
        eprintln!("Open this link in a browser (on any machine) and sign in:\n\n  {}\n", started.url);
        eprintln!("Then paste {hint} and press Enter:");
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("cannot read the pasted code from stdin")?;
        if line.trim().is_empty() {
            if provider == tokenkeeper_core::config::ANTHROPIC {
                anyhow::bail!(
                    "no code was pasted; run `tokenkeeper login` again and paste the whole CODE#STATE string"
                );
            }
            anyhow::bail!("nothing was pasted; run `tokenkeeper login --provider {provider}` again and paste {hint}");
        }
        app.keeper.finish_provider_login(args.account.as_deref(), line.trim(), &started).await?
    };
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

/// `--listen`: binds the provider's loopback redirect, prints the URL, waits for the browser to
/// come back (up to `--timeout`) and finishes the login with the URL it came back to.
async fn listen(app: &App, args: &LoginArgs) -> Result<IngestOutcome> {
    let provider = args.provider.as_str();
    let loopback = app
        .keeper
        .providers()
        .get(provider)
        .and_then(|p| p.login())
        .and_then(|f| f.loopback())
        .ok_or_else(|| {
            anyhow!("provider {provider} has no loopback redirect here; run `tokenkeeper login --provider {provider}` without --listen and paste the code")
        })?;
    let listener = TcpListener::bind(("127.0.0.1", loopback.port)).await.with_context(|| {
        format!(
            "cannot listen on 127.0.0.1:{} for the login redirect (is another login, or the CLI's own, running?); run without --listen and paste the redirect URL instead",
            loopback.port
        )
    })?;
    let port = listener.local_addr().context("cannot read the listener's port")?.port();
    let redirect = loopback.redirect_uri(port);
    let started = app.keeper.start_provider_login(provider, Some(&redirect))?;
    eprintln!("Open this link in a browser on this machine and sign in:\n\n  {}\n", started.url);
    eprintln!("Waiting up to {} s for the browser to come back to {redirect} …", args.timeout);
    let target = tokio::time::timeout(Duration::from_secs(args.timeout), wait_for_redirect(&listener, &loopback))
        .await
        .map_err(|_| {
            anyhow!(
                "no login redirect arrived within {} s; run `tokenkeeper login --provider {provider}` again (without --listen to paste the redirect URL from another machine's browser)",
                args.timeout
            )
        })??;
    Ok(app.keeper.finish_provider_login(args.account.as_deref(), &target, &started).await?)
}

/// The request target (`/path?code=…&state=…`) of the first request to the redirect's path;
/// other requests (a browser's `/favicon.ico`) are answered 404. The target holds the code: it
/// is never logged.
async fn wait_for_redirect(listener: &TcpListener, loopback: &Loopback) -> Result<String> {
    loop {
        let (mut stream, _) = listener.accept().await.context("the login listener failed")?;
        let mut buf = Vec::with_capacity(2048);
        let mut chunk = [0u8; 1024];
        // The request line is all we need; stop at the end of the headers or 16 KiB.
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let text = String::from_utf8_lossy(&buf);
        let target = text.lines().next().and_then(|l| l.split_whitespace().nth(1)).unwrap_or_default().to_owned();
        let path = target.split('?').next().unwrap_or_default();
        if path != loopback.path {
            let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
            continue;
        }
        let body = "<!doctype html><title>tokenkeeper</title><p>Login received. You can close this tab and return to the terminal.</p>";
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(body.as_bytes()).await;
        let _ = stream.shutdown().await;
        return Ok(target);
    }
}
