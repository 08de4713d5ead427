//! Test support (feature `testing`): takes the [`PgAccountLock`] of an account and holds it
//! until killed, so a test can kill a holder process and see the lock taken over.
//!
//! Usage: `tokenkeeper-pg-lock-holder <store-url> <account>`; prints `held` once it holds the
//! lock, then waits for its stdin to close (or a signal).

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use tokenkeeper_core::backend::AccountLock;
use tokenkeeper_store_postgres::{ConnectOptions, PgAccountLock};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, account] = args.as_slice() else {
        eprintln!("usage: tokenkeeper-pg-lock-holder <store-url> <account>");
        return ExitCode::from(2);
    };
    let options = match ConnectOptions::from_str(url) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("tokenkeeper-pg-lock-holder: bad store URL: {e}");
            return ExitCode::from(2);
        }
    };
    let guard = match PgAccountLock::new(options).acquire(account, Duration::from_secs(30)).await {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("tokenkeeper-pg-lock-holder: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("held");
    let _ = std::io::stdout().flush();
    // Held until stdin closes; the test kills the process long before.
    let _ = std::io::stdin().lock().lines().count();
    drop(guard);
    ExitCode::SUCCESS
}
