//! The one error type of this crate. Every variant says what was being done (`action`) and
//! where (`path`: a file, a program, or the path part of a URL), and never holds a token.

use std::path::PathBuf;
use std::time::Duration;

/// Errors of sinks, file writes, watching and commands.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A file-system operation failed.
    #[error("cannot {action} {path}")]
    Io {
        /// What was being done, such as `rename the temporary file over`.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// An `owner` or `group` name that this system does not know.
    #[error("cannot {action} for {path}: no such user or group `{name}`")]
    UnknownIdentity {
        /// `resolve owner` or `resolve group`.
        action: &'static str,
        /// The file it was meant for.
        path: PathBuf,
        /// The name as configured.
        name: String,
    },
    /// The file holds a newer credential than the one being delivered: some other program
    /// refreshes this login too. Overwriting it would hand that program a spent refresh token.
    #[error("{path} holds a newer credential than tokenkeeper's, so it was not overwritten: another program (Claude Code in a container?) refreshes this login too. Let tokenkeeper be the only refresher, or import that file with `tokenkeeper import FILE --mode follow`")]
    NewerOnDisk {
        /// The file.
        path: PathBuf,
    },
    /// A sink's configuration lacks something its kind needs (config validation normally
    /// catches this first).
    #[error("cannot {action} for sink {path}: `{field}` is not set")]
    Missing {
        /// What was being done.
        action: &'static str,
        /// The sink's display name.
        path: PathBuf,
        /// The missing key.
        field: &'static str,
    },
    /// A config value this crate cannot use.
    #[error("cannot {action} for sink {path}: {message}")]
    Invalid {
        /// What was being done.
        action: &'static str,
        /// The sink's display name.
        path: PathBuf,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// A template failed to compile or render (undefined variables are errors).
    #[error("cannot {action} {path}: {message}")]
    Template {
        /// `compile the template of` or `render the template of`.
        action: &'static str,
        /// The template file, or the sink's name for an inline template.
        path: PathBuf,
        /// minijinja's message with the line and the undefined name. The error itself is not
        /// kept: its `Debug` can list the values of the variables, that is, the token.
        message: String,
    },
    /// A provider's CLI file cannot be written in its format (its existing content is not
    /// JSON, …).
    #[error("cannot {action} {path}")]
    Native {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why, from the provider's `NativeFile`.
        #[source]
        source: tokenkeeper_provider::NativeFileError,
    },
    /// An existing JSON document cannot be merged into.
    #[error("cannot {action} {path}")]
    Document {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: tokenkeeper_core::formats::RenderError,
    },
    /// An HTTP request could not be made or got no answer.
    #[error("cannot {action} {path}")]
    Http {
        /// What was being done, such as `log in to Infisical at`.
        action: &'static str,
        /// The URL's path (no query, no credentials).
        path: PathBuf,
        /// reqwest's error, stripped of its URL.
        #[source]
        source: reqwest::Error,
    },
    /// An HTTP server answered with an error status.
    #[error("cannot {action} {path}: HTTP {status}: {message}")]
    HttpStatus {
        /// What was being done.
        action: &'static str,
        /// The URL's path.
        path: PathBuf,
        /// The status code.
        status: u16,
        /// The server's message, shortened, with any token replaced by its fingerprint.
        message: String,
    },
    /// A command exited unsuccessfully.
    #[error("cannot {action} {path}: {status}; stderr: {stderr}")]
    CommandFailed {
        /// `run on_change` or `run the command of`.
        action: &'static str,
        /// The program (argv\[0\]).
        path: PathBuf,
        /// Exit code or signal, in words.
        status: String,
        /// The end of its standard error, with tokens replaced by fingerprints.
        stderr: String,
    },
    /// A command ran past its timeout and was killed.
    #[error("cannot {action} {path}: still running after {after:?}, killed")]
    CommandTimeout {
        /// What was being done.
        action: &'static str,
        /// The program.
        path: PathBuf,
        /// The timeout.
        after: Duration,
    },
    /// The file watcher failed.
    #[error("cannot {action} {path}")]
    Watch {
        /// What was being done, such as `watch the directory`.
        action: &'static str,
        /// The directory or file.
        path: PathBuf,
        /// notify's error.
        #[source]
        source: notify::Error,
    },
}

impl SyncError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SyncError::Io { action, path: path.into(), source }
    }
}

/// The full chain of an error in one line (`a: b: c`), for status and logs (core's one).
pub use tokenkeeper_core::error_chain;
