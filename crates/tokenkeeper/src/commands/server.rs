//! `tokenkeeper server token`: prints the admin token of the HTTP API (the web page's sign-in,
//! and a key with every scope), creating it on first use as `serve` does.

use anyhow::Result;

use tokenkeeper_server::{load_or_create_admin_token, ADMIN_TOKEN_ENV};

use crate::app;
use crate::cli::{GlobalArgs, ServerAction, ServerArgs};
use crate::exit;

pub async fn run(global: &GlobalArgs, args: ServerArgs) -> Result<i32> {
    match args.action {
        ServerAction::Token => {
            let data_dir = app::data_dir(global)?;
            let from_env = std::env::var(ADMIN_TOKEN_ENV).ok();
            let token = load_or_create_admin_token(&data_dir, from_env.as_deref())?;
            println!("{}", token.expose());
            Ok(exit::OK)
        }
    }
}
