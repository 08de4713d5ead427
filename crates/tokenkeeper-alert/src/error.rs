//! Errors of the alert engine: [`AlertError`] for setting it up, [`DeliveryError`] for one
//! failed delivery attempt (recorded in the channel's status, never returned to the caller of
//! `observe`).
//!
//! No variant carries a URL or an API key: Slack webhook URLs and Keep keys are secrets, so
//! errors name the channel and the file instead.

use std::path::PathBuf;
use std::time::Duration;

/// Why the alert engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// A `url_file` or `api_key_file` could not be read.
    #[error("alert channel `{channel}`: cannot read {setting} `{}`", path.display())]
    ReadFile {
        /// Channel name.
        channel: String,
        /// Which setting named the file (`url_file`, `api_key_file`).
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A `url_file` or `api_key_file` is empty.
    #[error("alert channel `{channel}`: {setting} `{}` is empty", path.display())]
    EmptyFile {
        /// Channel name.
        channel: String,
        /// Which setting named the file.
        setting: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A required setting is missing for this kind of channel.
    #[error("alert channel `{channel}`: `{setting}` is required for a {kind} channel")]
    MissingSetting {
        /// Channel name.
        channel: String,
        /// Channel kind, in words.
        kind: &'static str,
        /// The missing setting.
        setting: &'static str,
    },
    /// The target URL does not parse or is not http(s). The URL itself is not repeated, since
    /// it may be a secret.
    #[error("alert channel `{channel}`: the URL (from {origin}) is not a valid http(s) URL: {reason}")]
    InvalidUrl {
        /// Channel name.
        channel: String,
        /// Where the URL came from (`url`, or `url_file <path>`).
        origin: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client for alert delivery")]
    HttpClient {
        /// The reqwest error.
        #[source]
        source: reqwest::Error,
    },
    /// `AlertEngine::new` was called outside a tokio runtime, so its delivery tasks cannot start.
    #[error("the alert engine must be created inside a tokio runtime (it starts one delivery task per channel)")]
    NoRuntime,
}

/// Why one delivery attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The request could not be sent or its answer not read (the URL is stripped from the error).
    #[error("request failed")]
    Request {
        /// The reqwest error, without its URL.
        #[source]
        source: reqwest::Error,
    },
    /// The receiver answered with a non-success status.
    #[error("receiver answered HTTP {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Status {
        /// HTTP status code.
        status: u16,
        /// The start of the answer's body, for diagnosis.
        body: String,
    },
    /// The alert could not be encoded as JSON.
    #[error("cannot encode the alert as JSON")]
    Encode {
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// The command could not be started.
    #[error("cannot run `{program}`")]
    Spawn {
        /// argv\[0\].
        program: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for the command failed.
    #[error("waiting for `{program}` failed")]
    Wait {
        /// argv\[0\].
        program: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The command exited unsuccessfully.
    #[error("`{program}` exited with {status}{}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    Exit {
        /// argv\[0\].
        program: String,
        /// Exit status, in words.
        status: String,
        /// The start of its standard error.
        stderr: String,
    },
    /// The command did not finish in time (it is killed).
    #[error("`{program}` did not finish within {after:?} and was killed")]
    Timeout {
        /// argv\[0\].
        program: String,
        /// The time limit.
        after: Duration,
    },
    /// The delivery queue of the channel was full, so the alert was dropped.
    #[error("delivery queue full ({capacity} alerts waiting); alert dropped")]
    QueueFull {
        /// Queue capacity.
        capacity: usize,
    },
}

impl DeliveryError {
    /// Whether retrying cannot help: the receiver refused the alert itself (4xx other than
    /// 408 and 429), the alert cannot be encoded, the program does not exist.
    pub fn is_permanent(&self) -> bool {
        match self {
            DeliveryError::Status { status, .. } => (400..500).contains(status) && *status != 408 && *status != 429,
            DeliveryError::Encode { .. } | DeliveryError::Spawn { .. } | DeliveryError::QueueFull { .. } => true,
            _ => false,
        }
    }

    /// The error with its chain of causes, on one line, for status output.
    pub fn chain(&self) -> String {
        tokenkeeper_core::error_chain(self)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_are_permanent() {
        let status = |s| DeliveryError::Status { status: s, body: String::new() };
        assert!(status(400).is_permanent());
        assert!(status(404).is_permanent());
        assert!(!status(429).is_permanent());
        assert!(!status(408).is_permanent());
        assert!(!status(500).is_permanent());
        assert!(!status(503).is_permanent());
        let t = DeliveryError::Timeout { program: "x".into(), after: Duration::from_secs(1) };
        assert!(!t.is_permanent());
    }

    #[test]
    fn chain_includes_causes() {
        let e = DeliveryError::Spawn {
            program: "notify".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        };
        assert_eq!(e.chain(), "cannot run `notify`: no such file");
    }
}
