//! `tokenkeeper push --server URL [SOURCE]` and `tokenkeeper login --push URL`: send a
//! credential from this machine to a tokenkeeper server's `POST /api/push`.
//!
//! The API key comes from a file (`--key-file` or `TOKENKEEPER_KEY_FILE`), never from the
//! command line or the URL, where other users and shell histories would see it. Neither
//! command opens the local store: a login made for a server is owned by that server alone,
//! since a refresh token used by two keepers logs one of them out.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use tokenkeeper_core::config::ANTHROPIC;
use tokenkeeper_core::formats::{parse_credential, render_claude_credentials};
use tokenkeeper_core::Secret;
use tokenkeeper_provider::{parse_pasted_code, OAuthClient, PkceLogin, TokenOutcome};

use crate::app;
use crate::cli::{GlobalArgs, LoginArgs, PushArgs};
use crate::exit;
use crate::source::Source;

/// The environment variable naming the key file.
const KEY_FILE_ENV: &str = "TOKENKEEPER_KEY_FILE";

fn read_key(key_file: Option<&Path>) -> Result<Secret> {
    let path = match key_file {
        Some(p) => p.to_owned(),
        None => match std::env::var_os(KEY_FILE_ENV).filter(|v| !v.is_empty()) {
            Some(p) => PathBuf::from(p),
            None => bail!(
                "no API key: pass --key-file FILE or set {KEY_FILE_ENV}=FILE, the file holding a key with the `push` scope (create one on the server with `tokenkeeper keys create --name laptop --scope push`)"
            ),
        },
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("cannot read the key file {}", path.display()))?;
    let key = text.trim();
    if key.is_empty() {
        bail!("the key file {} is empty", path.display());
    }
    Ok(Secret::new(key))
}

/// Sends `text` to the server; prints what it answered; returns the exit status.
async fn send(server: &str, account: Option<&str>, key: &Secret, text: String) -> Result<i32> {
    let base = reqwest::Url::parse(server.trim_end_matches('/'))
        .with_context(|| format!("--server {server} is not a URL (write it like https://host:8377)"))?;
    if !matches!(base.scheme(), "http" | "https") {
        bail!("--server {server}: use an http:// or https:// URL");
    }
    let loopback = matches!(base.host_str(), Some("localhost" | "127.0.0.1" | "[::1]" | "::1"));
    if base.scheme() == "http" && !loopback {
        eprintln!(
            "warning: {server} is plain HTTP: the credential and the key cross the network unencrypted; use https://"
        );
    }
    let url = format!("{}/api/push", base.as_str().trim_end_matches('/'));
    let client =
        reqwest::Client::builder().timeout(Duration::from_secs(30)).build().context("cannot build the HTTP client")?;
    let mut req = client.post(&url).bearer_auth(key.expose()).body(text.clone());
    if text.trim_start().starts_with('{') {
        req = req.header("content-type", "application/json");
    }
    if let Some(a) = account {
        req = req.query(&[("account", a)]);
    }
    let resp = req.send().await.with_context(|| format!("cannot reach {server}"))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if status.is_success() {
        let a = &body["account"];
        eprintln!(
            "Pushed to {server}: {} account `{}`; token {} valid for {}.",
            body["result"].as_str().unwrap_or("stored"),
            a["name"].as_str().unwrap_or("?"),
            a["token_fingerprint"].as_str().unwrap_or("?"),
            a["expires_in"].as_str().unwrap_or("?"),
        );
        return Ok(exit::OK);
    }
    let error = body["error"].as_str().unwrap_or("no explanation");
    let hint = body["hint"].as_str().map(|h| format!("\n  hint: {h}")).unwrap_or_default();
    eprintln!("error: {server} answered {status}: {error}{hint}");
    Ok(if status.as_u16() == 503 || status.as_u16() == 429 { exit::TRY_LATER } else { exit::FAILURE })
}

pub async fn run(_global: &GlobalArgs, args: PushArgs) -> Result<i32> {
    let key = read_key(args.key_file.as_deref())?;
    let text = Source::from_arg(args.source.as_deref())?.read()?;
    // Check it here first: a clear message beats sending something the server will refuse.
    let parsed = parse_credential(&text, chrono::Utc::now()).with_context(|| {
        format!("cannot push {}", args.source.as_deref().unwrap_or("the Claude Code credentials file"))
    })?;
    tracing::info!(format = parsed.format.describe(), token = %parsed.credential.access_token, "pushing");
    send(&args.server, args.account.as_deref(), &key, text).await
}

/// `login --push URL`: the PKCE login here, the credential to the server only.
pub async fn login_and_push(global: &GlobalArgs, args: LoginArgs) -> Result<i32> {
    let Some(server) = args.push.as_deref() else { bail!("--push URL is missing") };
    let key = read_key(args.key_file.as_deref())?;
    let config = app::load_config(global)?;
    let client = OAuthClient::new(&config.provider(ANTHROPIC))?;
    let login = PkceLogin::new();
    let url = client.authorize_url(&login);
    eprintln!("Open this link in a browser (on any machine) and sign in:\n\n  {url}\n");
    eprintln!("Then paste the code shown after sign-in (it looks like CODE#STATE) and press Enter:");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("cannot read the pasted code from stdin")?;
    let code = parse_pasted_code(line.trim(), &login.state)?;
    let grant = match client.exchange_code(&code, &login).await {
        TokenOutcome::Success(grant) => grant,
        TokenOutcome::Rejected { reason } => bail!(
            "the provider refused the code ({reason}). Codes are single-use and expire after about 10 minutes: run the command again and paste the new code promptly"
        ),
        TokenOutcome::RateLimited { reason, .. } | TokenOutcome::Transient { reason } => {
            eprintln!("error: the provider could not exchange the code now ({reason}); try again in a minute");
            return Ok(exit::TRY_LATER);
        }
    };
    let credential = grant.into_credential(chrono::Utc::now(), None);
    let text = render_claude_credentials(None, &credential).context("cannot render the new login as JSON")?;
    send(server, args.account.as_deref(), &key, text).await
}
