//! One module per subcommand; each maps its arguments to calls into the library.

mod accounts;
mod check;
mod doctor;
mod exec;
mod import;
mod keys;
mod login;
mod migrate;
mod pool;
mod push;
mod refresh;
mod serve;
mod server;
mod status;
mod store_copy;
mod sync;
mod token;

use anyhow::Result;
use clap::CommandFactory;

use crate::app::App;
use crate::cli::{Cli, Command};
use crate::exit;

/// Runs the command; returns the exit status.
pub async fn run(cli: Cli) -> Result<i32> {
    let global = cli.global;
    match cli.command {
        Command::Completions(args) => {
            clap_complete::generate(args.shell, &mut Cli::command(), "tokenkeeper", &mut std::io::stdout());
            Ok(exit::OK)
        }
        // Logging in for a remote server stores nothing here: one refresh token, one owner.
        Command::Login(args) if args.push.is_some() => push::login_and_push(&global, args).await,
        Command::Login(args) => login::run(&App::open(&global).await?, args).await,
        Command::Import(args) => import::run(&App::open(&global).await?, args).await,
        Command::Accounts(args) => accounts::run(&App::open(&global).await?, args).await,
        Command::Status(args) => status::run(&App::open(&global).await?, args).await,
        Command::Token(args) => token::run(&App::open(&global).await?, args).await,
        Command::Refresh(args) => refresh::run(&App::open(&global).await?, args).await,
        Command::Exec(args) => exec::run(&App::open(&global).await?, args).await,
        Command::Serve(args) => serve::run(App::open(&global).await?, args).await,
        Command::Sync(args) => sync::run(&App::open(&global).await?, args).await,
        Command::Keys(args) => keys::run(&App::open(&global).await?, args).await,
        Command::Pool(args) => pool::run(&App::open(&global).await?, args).await,
        Command::Server(args) => server::run(&global, args).await,
        Command::Push(args) => push::run(&global, args).await,
        Command::Check(args) => check::run(&global, args).await,
        Command::Doctor(args) => doctor::run(&global, args).await,
        Command::Migrate => migrate::run(&global).await,
        Command::Store(args) => match args.action {
            crate::cli::StoreAction::Copy(copy) => store_copy::run(&global, copy).await,
        },
    }
}
