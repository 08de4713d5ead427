//! The long-running keeper: sleeps until the next deadline, refreshes, and reacts to changes
//! (a credential changed in this process, another process wrote the store, a bound file was
//! rewritten by Claude Code), delivering every change to the sinks.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;

use tokenkeeper_alert::AlertEngine;
use tokenkeeper_core::{BindingKind, ChangeKind};
use tokenkeeper_sync::fs::{read_optional, write_file, WriteOptions};
use tokenkeeper_sync::sink::SinkSet;
use tokenkeeper_sync::watch::FileWatcher;

use tokenkeeper_keeper::schedule::Scheduler;
use tokenkeeper_keeper::{Keeper, KeeperError, KeeperEvent};

/// The longest the daemon sleeps without looking at the clock again. Timers run on a
/// monotonic clock that stands still while a machine is suspended; waking now and then
/// recomputes deadlines against the wall clock. This is not a poll of the store.
const MAX_SLEEP: Duration = Duration::from_secs(300);

/// How often account levels are re-assessed for alerts when nothing else happens: levels also
/// change with time alone (expiring → expired, reminders due).
const ALERT_EVERY: Duration = Duration::from_secs(60);

/// How long after queueing alerts the daemon keeps re-saving channel health every second.
const HEALTH_FOLLOW_UP: Duration = Duration::from_secs(30);

/// File in the data directory holding the alert channels' last known health (JSON), written
/// by the daemon and shown by `tokenkeeper status`.
pub const ALERT_CHANNELS_FILE: &str = "alert-channels.json";

/// File in the data directory holding the sinks' last known health (JSON), written by the
/// daemon and shown by `tokenkeeper status`.
pub const SINKS_FILE: &str = "sinks-status.json";

/// What the daemon needs.
pub struct Daemon {
    keeper: Arc<Keeper>,
    sinks: Option<Arc<SinkSet>>,
    watch_debounce: Duration,
    alerts: Option<Arc<AlertEngine>>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon").finish_non_exhaustive()
    }
}

impl Daemon {
    /// A daemon over `keeper`, delivering to `sinks`. Writes by other processes reach it
    /// through the keeper's change feed ([`Keeper::follow_changes`], started by [`Daemon::run`]).
    pub fn new(keeper: Arc<Keeper>, sinks: Option<Arc<SinkSet>>) -> Self {
        Self { keeper, sinks, watch_debounce: Duration::from_millis(20), alerts: None }
    }

    /// Also feeds every account's level to `alerts` after each change and every minute; the
    /// alert state survives restarts in `<data_dir>/alert-state.json`.
    pub fn with_alerts(mut self, alerts: Arc<AlertEngine>) -> Self {
        self.alerts = Some(alerts);
        self
    }

    fn alert_state_path(&self) -> PathBuf {
        self.keeper.data_dir().join("alert-state.json")
    }

    /// Where the daemon leaves its alert channels' health for `tokenkeeper status`.
    pub fn alert_channels_path(data_dir: &std::path::Path) -> PathBuf {
        data_dir.join(ALERT_CHANNELS_FILE)
    }

    fn restore_alert_state(&self) {
        let Some(alerts) = &self.alerts else { return };
        match read_optional(&self.alert_state_path()) {
            Ok(Some(text)) => match serde_json::from_str(&text) {
                Ok(state) => alerts.restore_state(state),
                Err(e) => tracing::warn!(error = %e, "ignoring an unreadable alert state file"),
            },
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the alert state"),
        }
    }

    /// Where the daemon leaves its sinks' health for `tokenkeeper status`.
    pub fn sinks_status_path(data_dir: &std::path::Path) -> PathBuf {
        data_dir.join(SINKS_FILE)
    }

    /// Leaves the sinks' health where one-shot commands (`status`, `check`) can read it; the
    /// write is skipped when nothing changed.
    fn publish_sink_health(&self) {
        let Some(sinks) = &self.sinks else { return };
        if let Ok(bytes) = serde_json::to_vec_pretty(&sinks.statuses()) {
            let path = Self::sinks_status_path(self.keeper.data_dir());
            if let Err(e) = write_file(&path, &bytes, &WriteOptions::default()) {
                tracing::debug!(error = %e, "cannot save sink health");
            }
        }
    }

    /// Assesses every account and lets the alert engine decide what to send.
    /// Returns how many alerts were queued.
    async fn observe_alerts(&self) -> usize {
        let Some(alerts) = &self.alerts else { return 0 };
        let accounts = match self.keeper.accounts().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list accounts for alerting");
                return 0;
            }
        };
        let statuses = self.sinks.as_ref().map(|s| s.statuses()).unwrap_or_default();
        let now = self.keeper.clock().now();
        let assessments: Vec<_> = accounts
            .iter()
            .map(|a| {
                let failing =
                    statuses.iter().filter(|s| s.account == a.name && !s.ok).map(|s| s.name.clone()).collect();
                let v = tokenkeeper_keeper::view::account_view(self.keeper.config(), a, now, failing);
                (a.name.clone(), tokenkeeper_core::status::Assessment { level: v.level, message: v.message })
            })
            .collect();
        let sent = alerts.observe(&assessments).await;
        // Channel health changes after deliveries, which run in the background; saving it on
        // every pass keeps `status` at most one pass behind. Written only when it changed.
        if let Ok(bytes) = serde_json::to_vec_pretty(&alerts.channel_statuses()) {
            let path = Self::alert_channels_path(self.keeper.data_dir());
            if let Err(e) = write_file(&path, &bytes, &WriteOptions::default()) {
                tracing::debug!(error = %e, "cannot save alert channel health");
            }
        }
        if !sent.is_empty() {
            for m in &sent {
                tracing::info!(account = %m.account, status = ?m.status, severity = %m.severity, "alert queued");
            }
            match serde_json::to_vec(&alerts.state()) {
                Ok(bytes) => {
                    if let Err(e) = write_file(&self.alert_state_path(), &bytes, &WriteOptions::default()) {
                        tracing::warn!(error = %e, "cannot save the alert state");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot serialise the alert state"),
            }
        }
        sent.len()
    }

    /// Delivers every account to the sinks once.
    async fn deliver_all(&self) {
        let Some(sinks) = &self.sinks else { return };
        match self.keeper.accounts().await {
            Ok(accounts) => {
                for a in &accounts {
                    sinks.deliver(a).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list accounts for delivery"),
        }
    }

    async fn deliver_one(&self, name: &str) {
        let Some(sinks) = &self.sinks else { return };
        match self.keeper.store().get_account(name).await {
            Ok(Some(a)) => sinks.deliver(&a).await,
            Ok(None) => {}
            Err(e) => tracing::warn!(account = %name, error = %e, "cannot read account for delivery"),
        }
    }

    /// Bound files to watch, by path, with their accounts.
    async fn bound_files(&self) -> HashMap<PathBuf, Vec<String>> {
        let mut map: HashMap<PathBuf, Vec<String>> = HashMap::new();
        if let Ok(accounts) = self.keeper.accounts().await {
            for a in accounts {
                if let Some(b) = &a.binding {
                    if b.kind == BindingKind::ClaudeCredentials {
                        map.entry(b.path.clone()).or_default().push(a.name.clone());
                    }
                }
            }
        }
        map
    }

    /// Runs until `shutdown` resolves; `ready` is called once everything is started.
    pub async fn run(self, shutdown: impl Future<Output = ()>, ready: impl FnOnce()) -> Result<(), KeeperError> {
        tokio::pin!(shutdown);
        let mut events = self.keeper.subscribe();
        let follower = self.keeper.follow_changes().await?;
        let flusher = self.keeper.spawn_usage_flusher(self.keeper.config().keeper.usage_flush);
        let mut scheduler = Scheduler::new(self.keeper.clone());
        let (mut watcher, mut changes) = FileWatcher::new(self.watch_debounce)
            .map_err(|e| KeeperError::Invalid(format!("cannot start the file watcher: {e}")))?;
        let mut bound = self.bound_files().await;
        for p in bound.keys() {
            if let Err(e) = watcher.watch(p) {
                tracing::warn!(file = %p.display(), error = %e, "cannot watch bound file");
            }
        }
        // Reconcile bound files once at start: Claude Code may have refreshed while we were down.
        for names in bound.values() {
            for n in names {
                if let Err(e) = self.keeper.sync_bound(n).await {
                    tracing::warn!(account = %n, error = %e, "cannot reconcile the bound file");
                }
            }
        }
        self.deliver_all().await;
        self.restore_alert_state();
        // Deliveries run in the background; for a while after alerts are queued, health is
        // re-saved every second so `status` shows their outcome promptly.
        let mut health_until = None;
        if self.observe_alerts().await > 0 {
            health_until = Some(tokio::time::Instant::now() + HEALTH_FOLLOW_UP);
        }
        self.publish_sink_health();
        ready();
        tracing::info!("keeper running");
        loop {
            let clock = self.keeper.clock().clone();
            let sleep = match scheduler.next_deadline().await {
                Ok(Some(t)) => (t - clock.now()).to_std().unwrap_or(Duration::ZERO).min(MAX_SLEEP),
                Ok(None) => MAX_SLEEP,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read accounts; retrying");
                    Duration::from_secs(5)
                }
            };
            let sleep = if self.alerts.is_some() { sleep.min(ALERT_EVERY) } else { sleep };
            let sleep = match health_until {
                Some(until) if tokio::time::Instant::now() < until => sleep.min(Duration::from_secs(1)),
                _ => sleep,
            };
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(sleep) => {
                    match scheduler.tick().await {
                        Ok(results) => for (name, r) in results {
                            if let Err(e) = r {
                                tracing::warn!(account = %name, error = %e, failures = scheduler.failures(&name), "scheduled refresh did not succeed");
                            }
                        },
                        Err(e) => tracing::warn!(error = %e, "scheduler tick failed"),
                    }
                }
                ev = events.recv() => {
                    let (deliver, rewatch) = match ev {
                        Ok(KeeperEvent::Changed { account, .. }) => (Some(Some(account)), false),
                        Ok(KeeperEvent::StoreChanged { account: Some(account), kind: ChangeKind::Credential }) => {
                            // A new account may be bound to a file, too.
                            (Some(Some(account)), true)
                        }
                        Ok(KeeperEvent::StoreChanged { kind: ChangeKind::Metadata | ChangeKind::Removed, .. }) => {
                            (None, true)
                        }
                        Ok(KeeperEvent::Resync) | Err(RecvError::Lagged(_)) => (Some(None), true),
                        Ok(_) => (None, false),
                        Err(RecvError::Closed) => break,
                    };
                    if rewatch {
                        let now_bound = self.bound_files().await;
                        for p in now_bound.keys().filter(|p| !bound.contains_key(*p)) {
                            if let Err(e) = watcher.watch(p) {
                                tracing::warn!(file = %p.display(), error = %e, "cannot watch bound file");
                            }
                        }
                        bound = now_bound;
                    }
                    match deliver {
                        Some(Some(account)) => self.deliver_one(&account).await,
                        Some(None) => self.deliver_all().await,
                        None => {}
                    }
                }
                Some(path) = changes.recv() => {
                    if let Some(names) = bound.get(&path) {
                        for n in names {
                            if let Err(e) = self.keeper.sync_bound(n).await {
                                tracing::warn!(account = %n, error = %e, "cannot ingest the changed bound file");
                            }
                        }
                    }
                }
            }
            if self.observe_alerts().await > 0 {
                health_until = Some(tokio::time::Instant::now() + HEALTH_FOLLOW_UP);
            }
            self.publish_sink_health();
        }
        follower.abort();
        flusher.abort();
        if let Err(e) = self.keeper.flush_usage().await {
            tracing::warn!(error = %e, "cannot save the last usage counters");
        }
        tracing::info!("keeper stopped");
        Ok(())
    }
}
