//! Log output: to stderr, `warn` for one-shot commands and `info` for `serve` by default;
//! `-v`/`-vv` or `RUST_LOG` change it. Log lines never carry tokens: every token-like value in
//! the code base is a `Secret`, which prints as a fingerprint.

use tracing_subscriber::EnvFilter;

/// Installs the subscriber.
pub fn init(verbose: u8, serving: bool) {
    let default = match (verbose, serving) {
        (0, false) => "warn",
        (0, true) | (1, _) => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}
