//! Alerts of tokenkeeper: one message per state transition of an account, sent to every
//! configured channel (generic webhook, Keep, Slack, a command) at once.
//!
//! The daemon feeds [`AlertEngine::observe`] the [`Assessment`](tokenkeeper_core::status::Assessment) of every account (with its provider, [`WatchedAccount`]) after each
//! change and on a timer. The engine keeps one open incident per account ([`AlertState`]) and
//! emits:
//!
//! - a **firing** message when an account moves into a level with a severity
//!   ([`Level::severity`](tokenkeeper_core::status::Level::severity)),
//! - an **escalated** firing when the severity rises (warning → critical),
//! - a **reminder** when `[alerting] reminder` has passed since the last message and the
//!   problem lasts,
//! - a **resolved** message when the account is healthy or expiring again, or was removed,
//!
//! and nothing else. Delivery happens in one background task per channel, in order, each
//! message with bounded retries ([`RetryPolicy`]); `observe` only queues, so a slow or dead
//! channel never holds the caller or the other channels. Each channel's counters and last error
//! are in [`AlertEngine::channel_statuses`], for `status` and metrics.
//!
//! Payloads: [`webhook_payload`] (generic JSON), [`keep_payload`] (Keep's alert format, as
//! seed 001 sent it, with a per-account fingerprint and `X-API-KEY`), [`slack_payload`]
//! (`{"text": …}`), and for a command channel the webhook JSON on stdin plus
//! `TOKENKEEPER_ALERT_{NAME,STATUS,SEVERITY,ACCOUNT,DESCRIPTION,SINCE,EVENT}` in its environment
//! (argv run directly, no shell), through the project's one child-process runner
//! (`tokenkeeper-process`, purpose `Alert`): none of tokenkeeper's secrets and no inherited
//! variable that looks like a credential reach it; it runs in its own process group, killed
//! with it at the attempt timeout. Descriptions come from assessment messages, which hold no
//! tokens, and are passed through [`tokenkeeper_core::redact`] all the same.

mod channel;
pub mod error;
mod state;

use std::sync::{Arc, Mutex};

use tokenkeeper_core::config::{AlertConfig, AlertingConfig};
use tokenkeeper_core::SharedClock;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use channel::{keep_payload, slack_payload, webhook_payload, ChannelStatus, RetryPolicy};
pub use error::{AlertError, DeliveryError};
pub use state::{
    AlertEvent, AlertMessage, AlertState, AlertStatus, Incident, Severity, Watched, WatchedAccount, ALERT_NAME, SOURCE,
};

use channel::{kind_str, lock_status, Channel, Job, SharedStatus};

/// One channel's queue, worker and counters.
struct ChannelHandle {
    channel: Arc<Channel>,
    status: SharedStatus,
    jobs: mpsc::Sender<Job>,
    task: JoinHandle<()>,
}

/// Turns account assessments into deduplicated alerts and delivers them. See the crate docs.
pub struct AlertEngine {
    clock: SharedClock,
    reminder: Option<chrono::Duration>,
    state: Mutex<AlertState>,
    channels: Vec<ChannelHandle>,
    policy: RetryPolicy,
}

impl std::fmt::Debug for AlertEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.channels.iter().map(|c| c.channel.name.as_str()).collect();
        f.debug_struct("AlertEngine")
            .field("channels", &names)
            .field("reminder", &self.reminder)
            .finish_non_exhaustive()
    }
}

impl AlertEngine {
    /// Builds the engine and starts one delivery task per channel, with the default
    /// [`RetryPolicy`] (3 attempts, 1 s then 4 s apart). Reads every `url_file` and
    /// `api_key_file` now; an unreadable or empty file is an error naming it.
    ///
    /// Must be called inside a tokio runtime.
    pub fn new(channels: Vec<AlertConfig>, settings: AlertingConfig, clock: SharedClock) -> Result<Self, AlertError> {
        Self::with_policy(channels, settings, clock, RetryPolicy::default())
    }

    /// Like [`AlertEngine::new`] with an explicit retry policy.
    pub fn with_policy(
        channels: Vec<AlertConfig>,
        settings: AlertingConfig,
        clock: SharedClock,
        policy: RetryPolicy,
    ) -> Result<Self, AlertError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| AlertError::NoRuntime)?;
        let mut built: Vec<Channel> = Vec::with_capacity(channels.len());
        for config in &channels {
            let name = match &config.name {
                Some(n) => n.clone(),
                None => unique_name(kind_str(config.kind), &built),
            };
            built.push(Channel::from_config(config, name)?);
        }
        let client = reqwest::Client::builder()
            .timeout(policy.attempt_timeout)
            .connect_timeout(policy.attempt_timeout)
            // A redirect could carry the Keep key to another host.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tokenkeeper/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| AlertError::HttpClient { source })?;
        let handles = built
            .into_iter()
            .map(|channel| {
                let channel = Arc::new(channel);
                let status = Arc::new(Mutex::new(ChannelStatus {
                    name: channel.name.clone(),
                    kind: channel.kind,
                    ok: true,
                    last_error: None,
                    sent: 0,
                    failed: 0,
                    retries: 0,
                    last_success_at: None,
                    last_failure_at: None,
                }));
                let (jobs, rx) = mpsc::channel(policy.queue.max(1));
                let task = runtime.spawn(channel::run_worker(
                    channel.clone(),
                    client.clone(),
                    policy.clone(),
                    clock.clone(),
                    status.clone(),
                    rx,
                ));
                ChannelHandle { channel, status, jobs, task }
            })
            .collect();
        let reminder = chrono::Duration::from_std(settings.reminder).ok().filter(|d| *d > chrono::Duration::zero());
        Ok(Self { clock, reminder, state: Mutex::new(AlertState::default()), channels: handles, policy })
    }

    /// Feeds the current assessment of every account (called after each change and on a
    /// timer, e.g. every minute). Queues the resulting messages on every channel whose
    /// `min_severity` they meet and returns them; delivery goes on in the background.
    ///
    /// Emits a firing on a transition into a bad level, an escalated firing when the severity
    /// rises, a reminder when `reminder` has passed since the last message while still bad,
    /// and a resolved message when the account is healthy/expiring again or missing from
    /// `assessments`. Nothing while healthy.
    pub async fn observe<W: Watched + Sync>(&self, assessments: &[W]) -> Vec<AlertMessage> {
        let now = self.clock.now();
        let messages = self.lock_state().step(assessments, now, self.reminder);
        for message in &messages {
            tracing::info!(
                account = %message.account, status = %message.status, severity = %message.severity,
                event = %message.kind, "alert"
            );
            for ch in self.channels.iter().filter(|c| c.channel.accepts(message)) {
                // `try_send`: the caller never waits for a channel; a full queue means the
                // channel is far behind, and the drop is counted where status shows it.
                if ch.jobs.try_send(Job::Deliver(message.clone())).is_err() {
                    let error = DeliveryError::QueueFull { capacity: self.policy.queue };
                    tracing::warn!(channel = %ch.channel.name, error = %error, "alert dropped");
                    let mut s = lock_status(&ch.status);
                    s.ok = false;
                    s.failed += 1;
                    s.last_error = Some(error.chain());
                    s.last_failure_at = Some(now);
                }
            }
        }
        messages
    }

    /// Waits until every message queued so far has been delivered or given up on, on every
    /// channel. For tests, and for a daemon that wants its last alerts out before exiting.
    pub async fn flush(&self) {
        let mut waits = Vec::with_capacity(self.channels.len());
        for ch in &self.channels {
            let (tx, rx) = oneshot::channel();
            if ch.jobs.send(Job::Flush(tx)).await.is_ok() {
                waits.push(rx);
            }
        }
        for rx in waits {
            // An error only means the worker ended, which also means nothing is pending.
            let _ = rx.await;
        }
    }

    /// Each channel's name, kind, health, last error and counters.
    pub fn channel_statuses(&self) -> Vec<ChannelStatus> {
        self.channels.iter().map(|c| lock_status(&c.status).clone()).collect()
    }

    /// A copy of the open incidents, to persist.
    pub fn state(&self) -> AlertState {
        self.lock_state().clone()
    }

    /// Replaces the open incidents, e.g. with ones persisted before a restart, so the restart
    /// neither repeats their firing nor forgets to resolve them.
    pub fn restore_state(&self, state: AlertState) {
        *self.lock_state() = state;
    }

    /// Stops taking messages, lets each channel finish what is queued within the policy's
    /// `shutdown_grace`, then aborts what is left.
    pub async fn shutdown(self) {
        let deadline = tokio::time::Instant::now() + self.policy.shutdown_grace;
        let mut tasks = Vec::with_capacity(self.channels.len());
        for ch in self.channels {
            // Closing the queue is what tells the worker to finish.
            drop(ch.jobs);
            tasks.push((ch.channel, ch.task));
        }
        for (channel, mut task) in tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!(channel = %channel.name, "alert deliveries still pending at shutdown; abandoned");
                task.abort();
            }
        }
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, AlertState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `base`, or `base-2`, `base-3`… if channels already use it.
fn unique_name(base: &str, taken: &[Channel]) -> String {
    let used = |n: &str| taken.iter().any(|c| c.name == n);
    if !used(base) {
        return base.to_owned();
    }
    (2..).map(|i| format!("{base}-{i}")).find(|n| !used(n)).unwrap_or_else(|| base.to_owned())
}
