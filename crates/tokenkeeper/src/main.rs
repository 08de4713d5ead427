//! The `tokenkeeper` binary: parses arguments and dispatches to one command each.

mod app;
mod cli;
mod commands;
mod exit;
mod logging;
mod output;
mod source;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let serving = matches!(cli.command, cli::Command::Serve(_));
    logging::init(cli.global.verbose, serving);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(exit::FAILURE);
        }
    };
    let code = runtime.block_on(async {
        match commands::run(cli).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                exit::for_error(&e)
            }
        }
    });
    // Dropping the runtime waits for blocking tasks; a hung watcher must not hold up exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    std::process::exit(code);
}
