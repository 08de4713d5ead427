//! The long-running keeper: sleeps until the next deadline, refreshes, and reacts to changes
//! (a credential changed in this process, another process wrote the store, a bound file was
//! rewritten by Claude Code), delivering every change to the sinks.
//!
//! With replicas, only the leader ([`leader::Campaign`], handed in with
//! [`Daemon::with_leadership`]) runs the scheduler's proactive refreshes, the alert passes and
//! the sinks marked `run_on = "leader"`; every replica follows the change feed, delivers its
//! host's sinks and watches its bound files. A daemon given no leadership leads alone.
//! Losing leadership stops leader work at once: no new scheduled refresh or alert pass starts
//! (one in flight finishes: it holds the account's lock, and cutting it short between the
//! provider's answer and the commit would lose the rotation).

pub mod leader;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use tokenkeeper_alert::AlertEngine;
use tokenkeeper_core::ChangeKind;
use tokenkeeper_sync::fs::{read_optional, unblock};
use tokenkeeper_sync::sink::SinkSet;
use tokenkeeper_sync::watch::{FileWatcher, DEFAULT_FALLBACK};

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

/// Installation state (in the store): the alert engine's memory of what it sent, so an
/// incident alerts once for the installation, across restarts.
pub const ALERT_STATE_KEY: &str = "alerts/state";

/// Installation state: the alert channels' last known health, shown by `tokenkeeper status`.
pub const ALERT_CHANNELS_KEY: &str = "alerts/channels";

/// Installation state: the sinks' last known health, shown by `status`, `check` and the API.
pub use tokenkeeper_sync::sink::SINK_HEALTH_KEY;

/// The file the alert state lived in before 0.2; read once if the store has none yet.
const LEGACY_ALERT_STATE_FILE: &str = "alert-state.json";

/// Resolves when `leading` changes; never without a campaign (or once it ended).
async fn leader_changed(leading: &mut Option<watch::Receiver<bool>>) {
    match leading {
        Some(rx) => {
            if rx.changed().await.is_err() {
                // The campaign stopped: whatever it last said stands.
                *leading = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// What the daemon needs.
pub struct Daemon {
    keeper: Arc<Keeper>,
    sinks: Option<Arc<SinkSet>>,
    watch_fallback: Duration,
    alerts: Option<Arc<AlertEngine>>,
    /// What was last saved under each state key, so an unchanged value is not written again.
    saved: std::sync::Mutex<HashMap<&'static str, serde_json::Value>>,
    /// Whether this process leads; `None`: it leads alone.
    leading: Option<watch::Receiver<bool>>,
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
        Self { keeper, sinks, watch_fallback: DEFAULT_FALLBACK, alerts: None, saved: Default::default(), leading: None }
    }

    /// Runs leader work only while `leading` says this process leads (see
    /// [`leader::Campaign::watch`]).
    pub fn with_leadership(mut self, leading: watch::Receiver<bool>) -> Self {
        self.leading = Some(leading);
        self
    }

    /// Whether this process leads now.
    fn leads(&self) -> bool {
        self.leading.as_ref().is_none_or(|l| *l.borrow())
    }

    /// Leader work starts: the alert state is re-read (the previous leader may have sent alerts
    /// since this process last led), cached saves are forgotten, leader-only sinks catch up.
    async fn take_over(&self) {
        tracing::info!("leading: running the scheduler, alerts and leader-only sinks");
        self.saved.lock().unwrap_or_else(|p| p.into_inner()).clear();
        if let Some(sinks) = &self.sinks {
            sinks.set_leading(true);
        }
        self.restore_alert_state().await;
        self.deliver_all().await;
    }

    /// Leader work stops at once: no scheduled refresh, alert pass or leader-only delivery starts.
    fn step_down(&self) {
        tracing::info!("following: the scheduler, alerts and leader-only sinks run on the leader");
        if let Some(sinks) = &self.sinks {
            sinks.set_leading(false);
        }
    }

    /// Also feeds every account's level to `alerts` after each change and every minute; the
    /// alert state survives restarts in the store ([`ALERT_STATE_KEY`]).
    pub fn with_alerts(mut self, alerts: Arc<AlertEngine>) -> Self {
        self.alerts = Some(alerts);
        self
    }

    /// Saves `value` as installation state under `key`, unless it is what was saved last.
    async fn save_state(&self, key: &'static str, value: serde_json::Value) {
        {
            let saved = self.saved.lock().unwrap_or_else(|p| p.into_inner());
            if saved.get(key) == Some(&value) {
                return;
            }
        }
        let now = self.keeper.clock().now();
        match self.keeper.store().put_state(key, &value, now).await {
            Ok(()) => {
                self.saved.lock().unwrap_or_else(|p| p.into_inner()).insert(key, value);
            }
            Err(e) => tracing::warn!(key, error = %e, "cannot save installation state"),
        }
    }

    /// Restores the alert engine's state from the store, or once from the file a previous
    /// release kept it in.
    async fn restore_alert_state(&self) {
        let Some(alerts) = &self.alerts else { return };
        let stored = match self.keeper.store().get_state(ALERT_STATE_KEY).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the alert state");
                return;
            }
        };
        let value = match stored {
            Some(v) => v,
            None => {
                let legacy = self.keeper.data_dir().join(LEGACY_ALERT_STATE_FILE);
                let read = unblock("read", &legacy.clone(), move || read_optional(&legacy)).await;
                match read {
                    Ok(Some(text)) => match serde_json::from_str(&text) {
                        Ok(v) => v,
                        Err(e) => {
                            tracing::warn!(error = %e, "ignoring an unreadable alert state file");
                            return;
                        }
                    },
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the alert state file");
                        return;
                    }
                }
            }
        };
        match serde_json::from_value(value) {
            Ok(state) => alerts.restore_state(state),
            Err(e) => tracing::warn!(error = %e, "ignoring an unreadable alert state"),
        }
    }

    /// Leaves the sinks' health where one-shot commands (`status`, `check`) can read it; the
    /// write is skipped when nothing changed.
    async fn publish_sink_health(&self) {
        let Some(sinks) = &self.sinks else { return };
        match serde_json::to_value(sinks.statuses()) {
            Ok(v) => self.save_state(SINK_HEALTH_KEY, v).await,
            Err(e) => tracing::debug!(error = %e, "cannot serialise sink health"),
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
                // Every alert names the provider: a fleet sees "Codex CLI account `x`".
                let provider_name = self
                    .keeper
                    .providers()
                    .get(&a.provider)
                    .map_or_else(|| a.provider.clone(), |p| p.display_name().to_owned());
                tokenkeeper_alert::WatchedAccount {
                    account: a.name.clone(),
                    provider: a.provider.clone(),
                    provider_name,
                    assessment: tokenkeeper_core::status::Assessment { level: v.level, message: v.message },
                }
            })
            .collect();
        let sent = alerts.observe(&assessments).await;
        // Channel health changes after deliveries, which run in the background; saving it on
        // every pass keeps `status` at most one pass behind. Written only when it changed.
        match serde_json::to_value(alerts.channel_statuses()) {
            Ok(v) => self.save_state(ALERT_CHANNELS_KEY, v).await,
            Err(e) => tracing::debug!(error = %e, "cannot serialise alert channel health"),
        }
        if !sent.is_empty() {
            for m in &sent {
                tracing::info!(account = %m.account, status = ?m.status, severity = %m.severity, "alert queued");
            }
            match serde_json::to_value(alerts.state()) {
                Ok(v) => self.save_state(ALERT_STATE_KEY, v).await,
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
                    if b.kind.is_file() {
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
        let (mut watcher, mut changes) = FileWatcher::new(self.watch_fallback).map_err(KeeperError::Watcher)?;
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
        let mut leading = self.leading.clone();
        let mut was_leading = self.leads();
        if let Some(sinks) = &self.sinks {
            sinks.set_leading(was_leading);
        }
        self.deliver_all().await;
        if was_leading {
            self.restore_alert_state().await;
        }
        // Deliveries run in the background; for a while after alerts are queued, health is
        // re-saved every second so `status` shows their outcome promptly.
        let mut health_until = None;
        if was_leading && self.observe_alerts().await > 0 {
            health_until = Some(tokio::time::Instant::now() + HEALTH_FOLLOW_UP);
        }
        if was_leading {
            self.publish_sink_health().await;
        }
        ready();
        tracing::info!("keeper running");
        loop {
            let clock = self.keeper.clock().clone();
            let leads = self.leads();
            let sleep = match scheduler.next_deadline().await {
                // A follower has no deadline of its own: it wakes for events and a takeover.
                _ if !leads => MAX_SLEEP,
                Ok(Some(t)) => (t - clock.now()).to_std().unwrap_or(Duration::ZERO).min(MAX_SLEEP),
                Ok(None) => MAX_SLEEP,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read accounts; retrying");
                    Duration::from_secs(5)
                }
            };
            let sleep = if self.alerts.is_some() && leads { sleep.min(ALERT_EVERY) } else { sleep };
            let sleep = match health_until {
                Some(until) if tokio::time::Instant::now() < until => sleep.min(Duration::from_secs(1)),
                _ => sleep,
            };
            tokio::select! {
                _ = &mut shutdown => break,
                _ = leader_changed(&mut leading) => {}
                _ = tokio::time::sleep(sleep), if self.leads() => {
                    match scheduler.tick().await {
                        Ok(results) => for (name, r) in results {
                            if let Err(e) = r {
                                tracing::warn!(account = %name, error = %e, failures = scheduler.failures(&name), "scheduled refresh did not succeed");
                            }
                        },
                        Err(e) => tracing::warn!(error = %e, "scheduler tick failed"),
                    }
                }
                _ = tokio::time::sleep(sleep), if !self.leads() => {}
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
            match (was_leading, self.leads()) {
                (false, true) => self.take_over().await,
                (true, false) => self.step_down(),
                _ => {}
            }
            was_leading = self.leads();
            if !was_leading {
                continue;
            }
            if self.observe_alerts().await > 0 {
                health_until = Some(tokio::time::Instant::now() + HEALTH_FOLLOW_UP);
            }
            self.publish_sink_health().await;
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
