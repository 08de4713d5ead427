//! Where a credential is read from on this machine, for `import` and `push`: Claude Code's
//! credentials file (the default, honouring `CLAUDE_CONFIG_DIR`), any file, stdin (`-`), or
//! the macOS Keychain (`keychain`).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use tokenkeeper_core::paths;

/// The Keychain item Claude Code keeps its credential in on macOS.
pub const KEYCHAIN_SERVICE: &str = "Claude Code-credentials";

/// A credential source named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Standard input.
    Stdin,
    /// The macOS Keychain.
    Keychain,
    /// A file (absolute where it could be made so).
    File(PathBuf),
}

impl Source {
    /// Interprets the SOURCE argument; `None` means Claude Code's own file.
    pub fn from_arg(arg: Option<&str>) -> Result<Source> {
        Ok(match arg {
            Some("-") => Source::Stdin,
            Some("keychain") => Source::Keychain,
            Some(p) => Source::File(absolute(&paths::expand_tilde(Path::new(p)))),
            None => Source::File(absolute(&paths::claude_credentials_file(
                &paths::claude_config_dir(&|n| std::env::var(n).ok())
                    .context("cannot find the home directory; name the credentials file")?,
            ))),
        })
    }

    /// Reads the source's text. Errors say what to check, never what was read.
    pub fn read(&self) -> Result<String> {
        match self {
            Source::Stdin => {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s).context("cannot read stdin")?;
                Ok(s)
            }
            Source::Keychain => read_keychain(),
            Source::File(path) => std::fs::read_to_string(path).with_context(|| {
                format!(
                    "cannot read {}; check the path and its permissions (Claude Code keeps it at ~/.claude/.credentials.json)",
                    path.display()
                )
            }),
        }
    }

    /// How to name it in messages.
    pub fn describe(&self) -> String {
        match self {
            Source::Stdin => "stdin".into(),
            Source::Keychain => "the macOS Keychain".into(),
            Source::File(p) => p.display().to_string(),
        }
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

fn read_keychain() -> Result<String> {
    if !cfg!(target_os = "macos") {
        bail!("`keychain` works only on macOS, where Claude Code keeps its login in the Keychain; on this system use ~/.claude/.credentials.json, or pipe the JSON in with `-`");
    }
    let out = std::process::Command::new("security")
        .args(["find-generic-password", "-s", KEYCHAIN_SERVICE, "-w"])
        .output()
        .context("cannot run `security` to read the Keychain")?;
    if !out.status.success() {
        bail!("the Keychain has no `{KEYCHAIN_SERVICE}` item (or access was denied); run `claude` once and log in, then retry");
    }
    String::from_utf8(out.stdout).context("the Keychain item is not text")
}
