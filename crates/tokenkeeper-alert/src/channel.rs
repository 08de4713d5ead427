//! Alert channels: turning an [`AlertConfig`] into a ready target (secrets read from their
//! files once, at start), the payload each kind sends, one delivery attempt, and the retrying
//! worker that drains a channel's queue in order.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use tokenkeeper_core::config::{AlertConfig, AlertKind};
use tokenkeeper_core::{Secret, SharedClock};
use tokenkeeper_process::{ChildCommand, ProcessError, Purpose};
use tokio::sync::{mpsc, oneshot};

use crate::error::{AlertError, DeliveryError};
use crate::state::{AlertMessage, Severity, SOURCE};

/// How hard a channel tries to deliver one message.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per message, the first included (at least 1).
    pub attempts: u32,
    /// Wait after the n-th failed attempt (`backoff[n-1]`); the last entry repeats.
    pub backoff: Vec<Duration>,
    /// Time limit of one attempt (HTTP request or command run).
    pub attempt_timeout: Duration,
    /// Messages a channel may have waiting; beyond that new ones are dropped and counted as
    /// failed, so a dead channel never holds memory or the caller.
    pub queue: usize,
    /// How long [`crate::AlertEngine::shutdown`] waits for queued deliveries before aborting them.
    pub shutdown_grace: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 3,
            backoff: vec![Duration::from_secs(1), Duration::from_secs(4)],
            attempt_timeout: Duration::from_secs(10),
            queue: 256,
            shutdown_grace: Duration::from_secs(15),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based).
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let i = (attempt.max(1) - 1) as usize;
        self.backoff.get(i).or(self.backoff.last()).copied().unwrap_or_default()
    }
}

/// What happened to one message after all its attempts.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// Attempts made.
    pub attempts: u32,
    /// The last error, if it never succeeded.
    pub error: Option<DeliveryError>,
}

/// Runs `attempt` until it succeeds, fails permanently, or the policy's attempts are used up,
/// waiting (tokio time, so tests can pause it) between attempts.
pub(crate) async fn with_retries<F, Fut>(policy: &RetryPolicy, mut attempt: F) -> Outcome
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Result<(), DeliveryError>>,
{
    let max = policy.attempts.max(1);
    let mut n = 0;
    loop {
        n += 1;
        match attempt(n).await {
            Ok(()) => return Outcome { attempts: n, error: None },
            Err(e) if e.is_permanent() || n >= max => return Outcome { attempts: n, error: Some(e) },
            Err(e) => {
                tracing::debug!(attempt = n, error = %e.chain(), "alert delivery attempt failed; retrying");
                tokio::time::sleep(policy.delay_after(n)).await;
            }
        }
    }
}

/// A channel's delivery counters and last error, for status and metrics: the server exports
/// `sent` and `failed` as `tokenkeeper_alert_deliveries_total{channel=name, result="sent"|"failed"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelStatus {
    /// Channel name (from config, or its kind).
    pub name: String,
    /// Channel kind.
    pub kind: AlertKind,
    /// Whether the last delivery succeeded (true before any).
    pub ok: bool,
    /// The last delivery error, when the last delivery failed (never holds a URL or key).
    pub last_error: Option<String>,
    /// Messages delivered.
    pub sent: u64,
    /// Messages given up on (after all attempts, or dropped because the queue was full).
    pub failed: u64,
    /// Extra attempts made after a failure.
    pub retries: u64,
    /// When a message was last delivered.
    pub last_success_at: Option<DateTime<Utc>>,
    /// When a message was last given up on.
    pub last_failure_at: Option<DateTime<Utc>>,
}

/// Where a channel sends, with its secrets read.
enum Target {
    Webhook { url: Secret },
    Keep { url: Secret, api_key: Option<Secret> },
    Slack { url: Secret },
    Command { argv: Vec<String> },
}

/// A configured channel, ready to deliver.
pub(crate) struct Channel {
    pub name: String,
    pub kind: AlertKind,
    pub min_severity: Severity,
    target: Target,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Deliberately no target: URLs may be secrets.
        f.debug_struct("Channel").field("name", &self.name).field("kind", &self.kind).finish_non_exhaustive()
    }
}

/// The word for a kind, used for default names and errors.
pub(crate) fn kind_str(kind: AlertKind) -> &'static str {
    kind.into()
}

fn read_secret_file(channel: &str, setting: &'static str, path: &Path) -> Result<Secret, AlertError> {
    let text = std::fs::read_to_string(path).map_err(|source| AlertError::ReadFile {
        channel: channel.to_owned(),
        setting,
        path: path.to_owned(),
        source,
    })?;
    let value = Secret::new(text.trim());
    if value.is_empty() {
        return Err(AlertError::EmptyFile { channel: channel.to_owned(), setting, path: path.to_owned() });
    }
    Ok(value)
}

impl Channel {
    /// Builds a channel from its config, reading `url_file` and `api_key_file` now so a bad
    /// path shows at start, not at the first alert.
    pub fn from_config(config: &AlertConfig, name: String) -> Result<Self, AlertError> {
        let kind_word = kind_str(config.kind);
        let min_severity = config.min_severity.unwrap_or(Severity::Warning);
        let url = |name: &str| -> Result<Secret, AlertError> {
            let (url, origin) = match (&config.url_file, &config.url) {
                (Some(path), _) => {
                    (read_secret_file(name, "url_file", path)?, format!("url_file `{}`", path.display()))
                }
                (None, Some(url)) => (Secret::new(url.trim()), "url".to_owned()),
                (None, None) => {
                    return Err(AlertError::MissingSetting {
                        channel: name.to_owned(),
                        kind: kind_word,
                        setting: "url",
                    })
                }
            };
            let invalid =
                |reason: String| AlertError::InvalidUrl { channel: name.to_owned(), origin: origin.clone(), reason };
            let parsed = reqwest::Url::parse(url.expose()).map_err(|e| invalid(e.to_string()))?;
            if parsed.scheme() != "http" && parsed.scheme() != "https" {
                return Err(invalid(format!("scheme `{}` is not http or https", parsed.scheme())));
            }
            Ok(url)
        };
        let target = match config.kind {
            AlertKind::Webhook => Target::Webhook { url: url(&name)? },
            AlertKind::Slack => Target::Slack { url: url(&name)? },
            AlertKind::Keep => {
                let api_key =
                    config.api_key_file.as_deref().map(|p| read_secret_file(&name, "api_key_file", p)).transpose()?;
                Target::Keep { url: keep_endpoint(url(&name)?), api_key }
            }
            AlertKind::Command => match &config.command {
                Some(argv) if !argv.is_empty() => Target::Command { argv: argv.clone() },
                _ => {
                    return Err(AlertError::MissingSetting { channel: name, kind: kind_word, setting: "command" });
                }
            },
        };
        Ok(Self { name, kind: config.kind, min_severity, target })
    }

    /// Whether this channel takes `message` (its severity is at least the channel's minimum).
    pub fn accepts(&self, message: &AlertMessage) -> bool {
        message.severity >= self.min_severity
    }

    /// One delivery attempt.
    pub async fn deliver_once(
        &self,
        client: &reqwest::Client,
        message: &AlertMessage,
        timeout: Duration,
    ) -> Result<(), DeliveryError> {
        match &self.target {
            Target::Webhook { url } => post(client, url, &webhook_payload(message), None).await,
            Target::Keep { url, api_key } => post(client, url, &keep_payload(message), api_key.as_ref()).await,
            Target::Slack { url } => post(client, url, &slack_payload(message), None).await,
            Target::Command { argv } => run_command(argv, message, timeout).await,
        }
    }
}

/// Keep's endpoint: a bare Keep URL (no path) gets `/alerts/event` appended, any other path
/// is used as given.
fn keep_endpoint(url: Secret) -> Secret {
    match reqwest::Url::parse(url.expose()) {
        Ok(mut u) if u.path() == "/" || u.path().is_empty() => {
            u.set_path("/alerts/event");
            Secret::new(u.to_string())
        }
        _ => url,
    }
}

/// The generic JSON webhook body.
pub fn webhook_payload(m: &AlertMessage) -> Value {
    json!({
        "name": m.name,
        "status": m.status.as_str(),
        "severity": m.severity,
        "account": m.account,
        "provider": m.provider,
        "provider_name": m.provider_name,
        "description": m.description,
        "since": m.since.to_rfc3339(),
        "event": m.kind.as_str(),
        "at": m.at.to_rfc3339(),
        "source": SOURCE,
    })
}

/// Keep's alert format, as seed 001's monitor sent it (`name`, `status`, `severity`,
/// `description`, `source`), plus what lets Keep deduplicate and resolve: a fingerprint stable
/// across one account's incidents, labels, and the times. `source` is a list, as Keep's
/// `AlertDto` declares it.
pub fn keep_payload(m: &AlertMessage) -> Value {
    json!({
        "name": m.name,
        "status": m.status.as_str(),
        "severity": m.severity,
        "description": m.description,
        "message": m.description,
        "source": [SOURCE],
        "service": SOURCE,
        "fingerprint": format!("{SOURCE}:{}", m.account),
        "lastReceived": m.at.to_rfc3339(),
        "firingStartTime": m.since.to_rfc3339(),
        "labels": {
            "account": m.account,
            "provider": m.provider,
            "event": m.kind.as_str(),
            "source": SOURCE,
        },
    })
}

/// A Slack incoming-webhook body.
pub fn slack_payload(m: &AlertMessage) -> Value {
    let head = match m.status {
        crate::AlertStatus::Resolved => "RESOLVED".to_owned(),
        crate::AlertStatus::Firing => m.severity.as_str().to_ascii_uppercase(),
    };
    let what = match m.kind {
        crate::AlertEvent::New => "",
        crate::AlertEvent::Escalated => " (escalated)",
        crate::AlertEvent::Reminder => " (still going on)",
        crate::AlertEvent::Resolved => "",
    };
    let whose = match &m.provider_name {
        Some(p) => format!("{p} account "),
        None => String::new(),
    };
    json!({
        "text": format!(
            "[{head}] {}{what} for {whose}`{}`: {} (since {})",
            m.name,
            m.account,
            m.description,
            m.since.format("%Y-%m-%d %H:%M UTC")
        )
    })
}

/// Up to `max` characters of `text`, on one line.
fn snippet(text: &str, max: usize) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

async fn post(
    client: &reqwest::Client,
    url: &Secret,
    body: &Value,
    api_key: Option<&Secret>,
) -> Result<(), DeliveryError> {
    let mut req = client.post(url.expose()).json(body);
    if let Some(key) = api_key {
        req = req.header("X-API-KEY", key.expose());
    }
    // `without_url`: the URL may be a secret (Slack), and errors end up in status output.
    let resp = req.send().await.map_err(|e| DeliveryError::Request { source: e.without_url() })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body = resp.text().await.unwrap_or_default();
    Err(DeliveryError::Status { status: status.as_u16(), body: snippet(&body, 200) })
}

/// Runs an alert `command` channel through the project's one child-process runner
/// ([`Purpose::Alert`]): the alert as JSON on stdin and in `TOKENKEEPER_ALERT_*`, none of
/// tokenkeeper's secrets nor anything credential-looking in its environment, its own process
/// group killed at the timeout, its standard error redacted.
async fn run_command(argv: &[String], m: &AlertMessage, timeout: Duration) -> Result<(), DeliveryError> {
    let program = argv.first().cloned().unwrap_or_default();
    let input = serde_json::to_vec(&webhook_payload(m)).map_err(|source| DeliveryError::Encode { source })?;
    let command = ChildCommand::new(Purpose::Alert, argv)
        .map_err(|e| DeliveryError::Spawn { program: program.clone(), source: std::io::Error::other(e.to_string()) })?
        .env("TOKENKEEPER_ALERT_NAME", &m.name)
        .env("TOKENKEEPER_ALERT_STATUS", m.status.as_str())
        .env("TOKENKEEPER_ALERT_SEVERITY", m.severity.as_str())
        .env("TOKENKEEPER_ALERT_ACCOUNT", &m.account)
        .env("TOKENKEEPER_ALERT_PROVIDER", m.provider.as_deref().unwrap_or_default())
        .env("TOKENKEEPER_ALERT_DESCRIPTION", &m.description)
        .env("TOKENKEEPER_ALERT_SINCE", m.since.to_rfc3339())
        .env("TOKENKEEPER_ALERT_EVENT", m.kind.as_str())
        .stdin(input)
        .timeout(timeout);
    let output = match command.run().await {
        Ok(output) => output,
        Err(ProcessError::Timeout { after, .. }) => return Err(DeliveryError::Timeout { program, after }),
        Err(ProcessError::Wait { source, .. }) => return Err(DeliveryError::Wait { program, source }),
        Err(ProcessError::Spawn { source, .. }) => return Err(DeliveryError::Spawn { program, source }),
        Err(e @ ProcessError::Empty { .. }) => {
            return Err(DeliveryError::Spawn { program, source: std::io::Error::other(e.to_string()) })
        }
    };
    if output.success() {
        return Ok(());
    }
    Err(DeliveryError::Exit { program, status: output.describe_status(), stderr: snippet(&output.stderr, 200) })
}

/// Work for a channel's worker.
pub(crate) enum Job {
    /// Deliver this message.
    Deliver(AlertMessage),
    /// Answer once everything queued before has been handled.
    Flush(oneshot::Sender<()>),
}

/// Shared counters of one channel.
pub(crate) type SharedStatus = Arc<Mutex<ChannelStatus>>;

/// Locks a status, recovering from a panic elsewhere (counters stay usable).
pub(crate) fn lock_status(s: &SharedStatus) -> std::sync::MutexGuard<'_, ChannelStatus> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records the outcome of one message in the channel's status.
pub(crate) fn record(status: &SharedStatus, outcome: &Outcome, now: DateTime<Utc>) {
    let mut s = lock_status(status);
    s.retries += u64::from(outcome.attempts.saturating_sub(1));
    match &outcome.error {
        None => {
            s.ok = true;
            s.last_error = None;
            s.sent += 1;
            s.last_success_at = Some(now);
        }
        Some(e) => {
            s.ok = false;
            s.last_error = Some(e.chain());
            s.failed += 1;
            s.last_failure_at = Some(now);
        }
    }
}

/// Drains a channel's queue in order (so a `resolved` never overtakes its `firing`), each
/// message with its own bounded retries, until the queue is closed.
pub(crate) async fn run_worker(
    channel: Arc<Channel>,
    client: reqwest::Client,
    policy: RetryPolicy,
    clock: SharedClock,
    status: SharedStatus,
    mut jobs: mpsc::Receiver<Job>,
) {
    while let Some(job) = jobs.recv().await {
        match job {
            Job::Flush(done) => {
                let _ = done.send(());
            }
            Job::Deliver(message) => {
                let outcome =
                    with_retries(&policy, |_| channel.deliver_once(&client, &message, policy.attempt_timeout)).await;
                match &outcome.error {
                    None => tracing::info!(
                        channel = %channel.name, account = %message.account, status = %message.status,
                        severity = %message.severity, event = %message.kind, "alert delivered"
                    ),
                    Some(e) => tracing::warn!(
                        channel = %channel.name, account = %message.account, attempts = outcome.attempts,
                        error = %e.chain(), "alert delivery failed"
                    ),
                }
                record(&status, &outcome, clock.now());
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::state::{AlertEvent, AlertStatus};
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn backoff_schedule() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay_after(1), Duration::from_secs(1));
        assert_eq!(p.delay_after(2), Duration::from_secs(4));
        assert_eq!(p.delay_after(7), Duration::from_secs(4));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_bounded_and_back_off() {
        let calls = AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let outcome = with_retries(&RetryPolicy::default(), |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(DeliveryError::Status { status: 500, body: String::new() }) }
        })
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(outcome.attempts, 3);
        assert!(outcome.error.is_some());
        // 1 s after the first failure, 4 s after the second, none after the last.
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn success_after_a_failure_stops_retrying() {
        let calls = AtomicU32::new(0);
        let outcome = with_retries(&RetryPolicy::default(), |n| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 1 {
                    Err(DeliveryError::Status { status: 503, body: String::new() })
                } else {
                    Ok(())
                }
            }
        })
        .await;
        assert_eq!((outcome.attempts, calls.load(Ordering::SeqCst)), (2, 2));
        assert!(outcome.error.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failures_are_not_retried() {
        let calls = AtomicU32::new(0);
        let outcome = with_retries(&RetryPolicy::default(), |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(DeliveryError::Status { status: 400, body: "bad".into() }) }
        })
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(outcome.attempts, 1);
    }

    fn message() -> AlertMessage {
        let t = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        AlertMessage {
            name: "ClaudeOAuthTokenExpiry".into(),
            status: AlertStatus::Firing,
            severity: Severity::Critical,
            account: "main".into(),
            provider: None,
            provider_name: None,
            description: "the access token of `main` expired".into(),
            since: t,
            kind: AlertEvent::Escalated,
            at: t,
        }
    }

    #[test]
    fn slack_text_says_what_and_who() {
        let v = slack_payload(&message());
        let text = v["text"].as_str().unwrap();
        assert!(text.starts_with("[CRITICAL] ClaudeOAuthTokenExpiry (escalated) for `main`"), "{text}");
        let mut r = message();
        r.status = AlertStatus::Resolved;
        r.kind = AlertEvent::Resolved;
        assert!(slack_payload(&r)["text"].as_str().unwrap().starts_with("[RESOLVED]"));
        let codex =
            AlertMessage { provider: Some("codex".into()), provider_name: Some("Codex CLI".into()), ..message() };
        let text = slack_payload(&codex)["text"].as_str().unwrap().to_owned();
        assert!(text.contains("for Codex CLI account `main`"), "{text}");
        assert_eq!(webhook_payload(&codex)["provider"], "codex");
        assert_eq!(webhook_payload(&codex)["provider_name"], "Codex CLI");
        assert_eq!(keep_payload(&codex)["labels"]["provider"], "codex");
        assert!(webhook_payload(&message())["provider"].is_null(), "unknown stays null, the old fields stay");
        assert_eq!(webhook_payload(&message())["account"], "main");
    }

    #[test]
    fn keep_endpoint_defaults_the_path() {
        assert_eq!(keep_endpoint(Secret::new("http://keep:8080")).expose(), "http://keep:8080/alerts/event");
        assert_eq!(keep_endpoint(Secret::new("http://keep/api/x")).expose(), "http://keep/api/x");
    }

    #[test]
    fn channel_debug_hides_the_url() {
        let config = AlertConfig {
            kind: AlertKind::Slack,
            name: None,
            url: Some("https://hooks.slack.invalid/services/T0/B0/SECRETPART".into()),
            url_file: None,
            api_key_file: None,
            command: None,
            min_severity: None,
        };
        let ch = Channel::from_config(&config, "slack".into()).unwrap();
        assert!(!format!("{ch:?}").contains("SECRETPART"));
    }

    #[test]
    fn snippets_are_short_and_single_line() {
        assert_eq!(snippet("a\n b  c", 10), "a b c");
        assert_eq!(snippet(&"x".repeat(300), 5), "xxxxx…");
    }
}
