//! Where things live by default: the data directory, the config file, Claude Code's
//! credentials file.

use std::path::PathBuf;

/// The default data directory (`$XDG_DATA_HOME/tokenkeeper`, `~/.local/share/tokenkeeper`).
pub fn default_data_dir() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "tokenkeeper").map(|d| d.data_dir().to_owned())
}

/// The default config file (`$XDG_CONFIG_HOME/tokenkeeper/config.toml`).
pub fn default_config_path() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "tokenkeeper").map(|d| d.config_dir().join("config.toml"))
}

/// The user's home directory.
pub fn home_dir() -> Option<PathBuf> {
    directories::BaseDirs::new().map(|d| d.home_dir().to_owned())
}

/// Claude Code's config directory: `$CLAUDE_CONFIG_DIR`, else `~/.claude`.
pub fn claude_config_dir(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    match env("CLAUDE_CONFIG_DIR") {
        Some(d) if !d.is_empty() => Some(PathBuf::from(d)),
        _ => home_dir().map(|h| h.join(".claude")),
    }
}

/// Claude Code's credentials file in `config_dir`.
pub fn claude_credentials_file(config_dir: &std::path::Path) -> PathBuf {
    config_dir.join(".credentials.json")
}

/// Expands a leading `~/` to the home directory.
pub fn expand_tilde(path: &std::path::Path) -> PathBuf {
    match path.strip_prefix("~") {
        Ok(rest) => home_dir().map(|h| h.join(rest)).unwrap_or_else(|| path.to_owned()),
        Err(_) => path.to_owned(),
    }
}
