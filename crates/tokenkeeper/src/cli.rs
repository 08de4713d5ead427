//! Command-line arguments (clap derive). Each subcommand maps to one module in `commands`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Keeps OAuth subscription credentials (Claude Code first) fresh, and delivers them.
///
/// tokenkeeper refreshes each account's access token ahead of expiry, exactly once per
/// rotation whoever else is running, and hands it to scripts, files and services.
#[derive(Debug, Parser)]
#[command(name = "tokenkeeper", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// Options for every command.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// Data directory (store, key, locks) [default: ~/.local/share/tokenkeeper]
    #[arg(long, global = true, env = "TOKENKEEPER_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Config file [default: ~/.config/tokenkeeper/config.toml, if it exists]
    #[arg(long, global = true, env = "TOKENKEEPER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// More log output (-v info, -vv debug); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Log in with a browser (on any machine) and store the account
    Login(LoginArgs),
    /// Import a credential: Claude Code's file, stdin (JSON, base64, OpenClaw, bare token) or the macOS Keychain
    Import(ImportArgs),
    /// List accounts, or remove one
    Accounts(AccountsArgs),
    /// Show each account's status: time left, refresh-token age, last refresh, last error
    Status(StatusArgs),
    /// Print a fresh access token (refreshing first if it is due), for $(tokenkeeper token)
    Token(AccountArg),
    /// Refresh now, or only if due (for cron and systemd timers)
    #[command(
        after_help = "Exit status: 0 refreshed (or another process just did), 3 not needed (--if-needed), 4 needs a new login, 5 try later (rate limited, provider or network error, lock busy), 1 any other failure (also when --sync could not write a sink)."
    )]
    Refresh(RefreshArgs),
    /// Run a command with a fresh token in its environment (CLAUDE_CODE_OAUTH_TOKEN)
    Exec(ExecArgs),
    /// Run the keeper (refresh ahead of expiry, watch sources, deliver to sinks) and the HTTP API and web page
    Serve(ServeArgs),
    /// Deliver every account to its sinks once and exit
    Sync(AccountArg),
    /// Monitoring check: one line per account; exit 0 ok, 1 warning, 2 critical, 3 unknown (Nagios)
    Check(CheckArgs),
    /// Check the set-up (config, file modes, tokens, endpoint, bound files, sinks, locks) and say how to fix it
    Doctor(DoctorArgs),
    /// Create, list and revoke API keys for the HTTP API
    Keys(KeysArgs),
    /// The API proxy's pools: accounts, state, cooldown end, usage in the last 24 h
    Pool(PoolArgs),
    /// The HTTP server's own settings (print the admin token)
    Server(ServerArgs),
    /// Send a local credential (Claude Code's file, the Keychain, stdin) to a remote tokenkeeper server
    Push(PushArgs),
    /// Apply the store's pending schema migrations and print the schema version
    #[command(
        after_help = "Exit status: 0 the schema is current (printed), 1 it could not be migrated (unreachable database, missing privilege, a schema newer than this binary)."
    )]
    Migrate,
    /// Move the installation between stores: `store copy` copies the SQLite store into an empty PostgreSQL database
    Store(StoreArgs),
    /// Print a shell completion script
    Completions(CompletionsArgs),
}

/// `--account NAME`.
#[derive(Debug, Args, Clone)]
pub struct AccountArg {
    /// Account name (may be left out when there is only one)
    #[arg(long, short = 'a', value_name = "NAME")]
    pub account: Option<String>,
}

/// `login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Name of the account to create or update [default: the only account, or `main`]
    #[arg(long, short = 'a', value_name = "NAME")]
    pub account: Option<String>,
    /// Send the new login to this tokenkeeper server instead of storing it here (https://host:8377)
    #[arg(long, value_name = "URL")]
    pub push: Option<String>,
    /// With --push: file holding the API key (scope `push`) [env: TOKENKEEPER_KEY_FILE]
    #[arg(long, value_name = "FILE", requires = "push")]
    pub key_file: Option<PathBuf>,
    /// Which provider to log in with: anthropic (Claude Code), codex (ChatGPT login of Codex
    /// CLI), gemini (Google login of Gemini CLI), or a `[providers.ID]` of one of those kinds
    #[arg(long, short = 'p', value_name = "ID", default_value = "anthropic", conflicts_with = "push")]
    pub provider: String,
    /// Catch the browser's redirect on a loopback listener (127.0.0.1) instead of reading a
    /// pasted code; only when the browser runs on this machine (codex: port 1455; gemini: any
    /// free port)
    #[arg(long, conflicts_with = "push")]
    pub listen: bool,
    /// With --listen: how long to wait for the redirect, in seconds
    #[arg(long, value_name = "SECONDS", default_value_t = 300, requires = "listen")]
    pub timeout: u64,
}

/// Who refreshes an imported account.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    /// tokenkeeper refreshes it (and writes the result back to the source file)
    Own,
    /// Claude Code refreshes it; tokenkeeper only reads and propagates
    Follow,
}

/// `import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// A credentials file, `-` for stdin, or `keychain` [default: ~/.claude/.credentials.json, honouring CLAUDE_CONFIG_DIR]
    #[arg(value_name = "SOURCE")]
    pub source: Option<String>,
    /// Account name [default: the only account, or `main`]
    #[arg(long, short = 'a', value_name = "NAME")]
    pub account: Option<String>,
    /// Who refreshes it [default: own]
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// Do not bind the account to a Claude Code source file (no write-back, no watching)
    #[arg(long)]
    pub no_bind: bool,
    /// The provider the credential belongs to (`anthropic`, `codex`, `gemini`, a
    /// `[providers.NAME]`) [default: detected from the input's shape, Claude Code's first]
    #[arg(long, value_name = "ID")]
    pub provider: Option<String>,
}

/// `accounts`.
#[derive(Debug, Args)]
pub struct AccountsArgs {
    /// Remove an account
    #[command(subcommand)]
    pub action: Option<AccountsAction>,
    /// Output JSON
    #[arg(long)]
    pub json: bool,
}

/// `accounts …`.
#[derive(Debug, Subcommand)]
pub enum AccountsAction {
    /// Remove an account and its stored credential
    Remove {
        /// The account
        name: String,
        /// Do not ask for confirmation
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

/// `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this account
    #[arg(long, short = 'a', value_name = "NAME")]
    pub account: Option<String>,
    /// Output JSON
    #[arg(long)]
    pub json: bool,
}

/// `pool`.
#[derive(Debug, Args)]
pub struct PoolArgs {
    /// Only this pool
    #[arg(value_name = "POOL")]
    pub pool: Option<String>,
    /// Output JSON
    #[arg(long)]
    pub json: bool,
}

/// `refresh`.
#[derive(Debug, Args)]
pub struct RefreshArgs {
    /// Account name (may be left out when there is only one)
    #[arg(long, short = 'a', value_name = "NAME")]
    pub account: Option<String>,
    /// Refresh even outside the lead time (a refresh by another process in the last 30 s counts)
    #[arg(long, conflicts_with = "if_needed")]
    pub force: bool,
    /// Refresh only inside the lead time (the default)
    #[arg(long)]
    pub if_needed: bool,
    /// Also deliver the result to the account's sinks
    #[arg(long)]
    pub sync: bool,
}

/// `exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Account name (may be left out when there is only one)
    #[arg(long, short = 'a', value_name = "NAME")]
    pub account: Option<String>,
    /// Also put the token in this variable (repeatable); CLAUDE_CODE_OAUTH_TOKEN is always set
    #[arg(long = "env", value_name = "VAR")]
    pub env: Vec<String>,
    /// The command and its arguments
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Do not start the HTTP server
    #[arg(long)]
    pub no_http: bool,
}

/// `check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Only this account
    #[arg(long, short = 'a', value_name = "NAME")]
    pub account: Option<String>,
    /// Output JSON (the account views and `exit_code`)
    #[arg(long)]
    pub json: bool,
}

/// `doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Also make a real one-token API call with each account's token (like `claude --print 'say OK'`)
    #[arg(long)]
    pub probe: bool,
    /// Model of the `--probe` call
    #[arg(long, value_name = "MODEL", default_value = "claude-haiku-4-5", requires = "probe")]
    pub model: String,
}

/// `completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `keys`.
#[derive(Debug, Args)]
pub struct KeysArgs {
    /// What to do
    #[command(subcommand)]
    pub action: KeysAction,
}

/// `keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Create a key and print it once (only its hash is stored)
    Create {
        /// A name to recognise it by (unique among active keys)
        #[arg(long, value_name = "NAME")]
        name: String,
        /// What it may do (repeatable): token:read, status:read, push, refresh, login, accounts:write, metrics:read, proxy, admin
        #[arg(long = "scope", value_name = "SCOPE", required = true)]
        scopes: Vec<String>,
        /// Limit it to this account (repeatable) [default: every account]
        #[arg(long = "account", short = 'a', value_name = "NAME")]
        accounts: Vec<String>,
        /// With --scope proxy: the pool ([pools.NAME]) its requests use [default: the default pool]
        #[arg(long, value_name = "NAME")]
        pool: Option<String>,
    },
    /// List keys (ids, names, scopes; never the keys)
    List {
        /// Output JSON
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id or name
    Revoke {
        /// The key's id or name
        #[arg(value_name = "ID|NAME")]
        key: String,
    },
}

/// `store`.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// What to do
    #[command(subcommand)]
    pub action: StoreAction,
}

/// `store …`.
#[derive(Debug, Subcommand)]
pub enum StoreAction {
    /// Copy the SQLite store of the data directory into an empty PostgreSQL database, then verify it
    #[command(
        after_help = "The target is --to, else --to-file, else the configured store (TOKENKEEPER_STORE_URL, [store] url_file, [store] url). A password never goes in --to: put the whole URL in a 0600 file (--to-file) or the environment, or the password in PGPASSWORD or ~/.pgpass. Stop every process using the SQLite store first. The SQLite store is left as it was.\n\nExit status: 0 copied and verified, 1 nothing copied (target not empty, wrong key, unreachable) or the copy did not verify."
    )]
    Copy(StoreCopyArgs),
}

/// `store copy`.
#[derive(Debug, Args)]
pub struct StoreCopyArgs {
    /// The target database, postgres://user@host:port/database (without a password)
    #[arg(long, value_name = "URL", conflicts_with = "to_file")]
    pub to: Option<String>,
    /// A file (mode 0600) whose content is the target URL, password included
    #[arg(long, value_name = "FILE")]
    pub to_file: Option<PathBuf>,
}

/// `server`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// What to do
    #[command(subcommand)]
    pub action: ServerAction,
}

/// `server …`.
#[derive(Debug, Subcommand)]
pub enum ServerAction {
    /// Print the admin token (generated on first use; TOKENKEEPER_ADMIN_TOKEN overrides)
    Token,
}

/// `push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The tokenkeeper server (https://host:8377)
    #[arg(long, value_name = "URL")]
    pub server: String,
    /// A credentials file, `-` for stdin, or `keychain` [default: ~/.claude/.credentials.json, honouring CLAUDE_CONFIG_DIR]
    #[arg(value_name = "SOURCE")]
    pub source: Option<String>,
    /// Account on the server [default: the key's only account, or the server's choice]
    #[arg(long, short = 'a', value_name = "NAME")]
    pub account: Option<String>,
    /// File holding the API key (scope `push`); the key is never taken from the command line [env: TOKENKEEPER_KEY_FILE]
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}
