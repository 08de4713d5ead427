//! `tokenkeeper-mock [--listen 127.0.0.1:0]`: runs the mock provider for manual runs and browser
//! tests. Prints one JSON line with its URLs, then serves until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::process::ExitCode;

use tokenkeeper_mock::MockProvider;

const USAGE: &str = "usage: tokenkeeper-mock [--listen ADDR]   (default 127.0.0.1:0)";

/// One optional flag: parsing it by hand keeps clap out of a test-support crate's build.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<SocketAddr, String> {
    let mut listen = SocketAddr::from(([127, 0, 0, 1], 0));
    while let Some(arg) = args.next() {
        let value = match arg.as_str() {
            "--listen" => args.next().ok_or("--listen needs an address such as 127.0.0.1:8080")?,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => match other.strip_prefix("--listen=") {
                Some(v) => v.to_owned(),
                None => return Err(format!("unknown argument {other:?}\n{USAGE}")),
            },
        };
        listen = value.parse().map_err(|e| format!("--listen {value:?}: {e}"))?;
    }
    Ok(listen)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let listen = match parse_args(std::env::args().skip(1)) {
        Ok(addr) => addr,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let mock = match MockProvider::start_on(listen).await {
        Ok(mock) => mock,
        Err(e) => {
            eprintln!("tokenkeeper-mock: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let line = serde_json::json!({
        "base_url": mock.base_url(),
        "token_url": mock.token_url(),
        "authorize_url": mock.authorize_url(),
        "redirect_uri": mock.redirect_uri(),
        "api_base_url": mock.api_base_url(),
        "client_id": mock.client_id(),
        "codex_token_url": mock.shape_token_url(tokenkeeper_mock::Shape::Codex),
        "google_token_url": mock.shape_token_url(tokenkeeper_mock::Shape::Google),
        "generic_token_url": mock.shape_token_url(tokenkeeper_mock::Shape::Generic),
    });
    println!("{line}");
    shutdown_signal().await;
    mock.stop().await;
    ExitCode::SUCCESS
}
