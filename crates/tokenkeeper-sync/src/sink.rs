//! [`SinkSet`]: every configured sink, delivering an account's credential to all of its sinks.
//!
//! - [`SinkSet::deliver`] renders and writes every sink of the account concurrently and waits
//!   for these first attempts (so a caller such as the keeper's write-back knows the files are
//!   written when it returns). One failing sink never holds up or fails the others.
//! - A sink that changed runs its `on_change` command through a [`DebouncedCommand`]
//!   (debounced, timed out, retried); a `command` sink *is* such a command.
//! - A failed attempt (disk full, permission denied, directory missing, server down) is
//!   retried in the background with bounded exponential backoff (default 5 s doubling to
//!   5 min, at most 8 attempts). A newer delivery supersedes the retries of an older one.
//! - [`SinkSet::statuses`] reports each sink's health for `status` and metrics.
//! - [`SinkSet::deliver_once`] is the one-shot form for `tokenkeeper sync`: no background
//!   work, `on_change` and commands run directly.
//!
//! - With replicas, [`SinkSet::set_leading`] says whether this process leads: sinks whose
//!   [`SinkConfig::runs_on`] is [`RunOn::Leader`] are delivered only while it does (the first
//!   delivery after taking over catches them up); every other sink is delivered on every
//!   replica.
//!
//! Background tasks are started lazily on first need and all joined by
//! [`SinkSet::shutdown`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokenkeeper_core::config::{RunOn, SinkConfig, SinkKind, SinkTarget};
use tokenkeeper_core::paths::expand_tilde;
use tokenkeeper_core::{Account, Secret, SharedClock, SystemClock};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::sleep;

use crate::error::{error_chain, SyncError};
use crate::fs::{read_optional, unblock, write_file, WriteOptions, WriteOutcome};
use crate::infisical::{InfisicalClient, REQUEST_TIMEOUT};
use crate::render::{native_file_of, render_sink_with};
use crate::runner::{CommandEnv, DebouncedCommand, Executor, ProcessExecutor, RunnerOptions};
use tokenkeeper_provider::Providers;

/// Settings of a [`SinkSet`].
#[derive(Clone)]
pub struct SinkSetOptions {
    /// Debounce, timeout and retries of `on_change` and `command` (a sink's own `timeout` and
    /// `debounce` override these).
    pub runner: RunnerOptions,
    /// First retry delay of a failed write or push.
    pub retry_min: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Attempts of one delivery to one sink, the first included.
    pub retry_attempts: u32,
    /// How long [`SinkSet::shutdown`] waits for each task.
    pub shutdown_grace: Duration,
    /// Runs commands (tests substitute a fake).
    pub executor: Arc<dyn Executor>,
    /// Timestamps of status.
    pub clock: SharedClock,
    /// The providers `native` sinks write the files of (none by default: a `native` sink then
    /// fails with a message naming the missing provider).
    pub providers: Providers,
}

impl Default for SinkSetOptions {
    fn default() -> Self {
        Self {
            runner: RunnerOptions::default(),
            retry_min: Duration::from_secs(5),
            retry_max: Duration::from_secs(300),
            retry_attempts: 8,
            shutdown_grace: Duration::from_secs(10),
            executor: Arc::new(ProcessExecutor),
            clock: Arc::new(SystemClock),
            providers: Providers::new(),
        }
    }
}

impl std::fmt::Debug for SinkSetOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkSetOptions")
            .field("runner", &self.runner)
            .field("retry_min", &self.retry_min)
            .field("retry_max", &self.retry_max)
            .field("retry_attempts", &self.retry_attempts)
            .finish_non_exhaustive()
    }
}

/// The store state key the daemon saves every sink's health under ([`SinkStatus`] as JSON), so
/// `status`, `check` and the web page of any process can show it.
pub const SINK_HEALTH_KEY: &str = "sinks/health";

/// One sink's health, for `status` and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SinkStatus {
    /// The sink's name ([`SinkConfig::display_name`]).
    pub name: String,
    /// Its account.
    pub account: String,
    /// Its kind.
    pub kind: SinkKind,
    /// Whether the last delivery (and its `on_change`) succeeded.
    pub ok: bool,
    /// The last error, in words, without secrets.
    pub last_error: Option<String>,
    /// When it last wrote (or pushed, or ran) successfully.
    pub last_written_at: Option<DateTime<Utc>>,
    /// Successful writes (or pushes, or runs).
    pub writes: u64,
    /// Failed attempts (retries included) of the delivery and of `on_change`.
    pub failures: u64,
}

#[derive(Debug, Default)]
struct Counters {
    last_error: Option<String>,
    last_written_at: Option<DateTime<Utc>>,
    writes: u64,
    failures: u64,
}

type RetryJob = Option<(u64, Arc<Account>)>;

struct Worker {
    tx: watch::Sender<RetryJob>,
    handle: JoinHandle<()>,
}

struct Sink {
    cfg: SinkConfig,
    name: String,
    counters: Mutex<Counters>,
    /// Serialises the attempts of this sink (first attempts and retries).
    write_lock: tokio::sync::Mutex<()>,
    /// Bumped by every delivery; an attempt of an older one is skipped.
    generation: AtomicU64,
    /// For sinks without a file to compare: the access token last delivered.
    last_delivered: Mutex<Option<Secret>>,
    /// `on_change`, or the program of a `command` sink; started on first use.
    command: Mutex<Option<DebouncedCommand>>,
    retry: Mutex<Option<Worker>>,
}

impl Sink {
    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn argv(&self) -> Option<&[String]> {
        self.cfg.command()
    }

    fn is_command(&self) -> bool {
        matches!(self.cfg.target, SinkTarget::Command { .. })
    }
}

struct Shared {
    opts: SinkSetOptions,
    infisical: InfisicalClient,
}

/// Every configured sink.
pub struct SinkSet {
    sinks: Vec<Arc<Sink>>,
    shared: Arc<Shared>,
    /// Whether this process leads (true until told otherwise: one process alone always leads).
    leading: AtomicBool,
}

impl std::fmt::Debug for SinkSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkSet").field("sinks", &self.sinks.iter().map(|s| &s.name).collect::<Vec<_>>()).finish()
    }
}

impl SinkSet {
    /// The sinks of `configs`, with default options.
    pub fn new(configs: Vec<SinkConfig>) -> Self {
        Self::with_options(configs, SinkSetOptions::default())
    }

    /// The sinks of `configs`, with default options and `providers` for `native` sinks.
    pub fn with_providers(configs: Vec<SinkConfig>, providers: Providers) -> Self {
        Self::with_options(configs, SinkSetOptions { providers, ..SinkSetOptions::default() })
    }

    /// The sinks of `configs`, with `opts`.
    pub fn with_options(configs: Vec<SinkConfig>, opts: SinkSetOptions) -> Self {
        let sinks = configs
            .into_iter()
            .map(|cfg| {
                Arc::new(Sink {
                    name: cfg.display_name(),
                    cfg,
                    counters: Mutex::default(),
                    write_lock: tokio::sync::Mutex::new(()),
                    generation: AtomicU64::new(0),
                    last_delivered: Mutex::new(None),
                    command: Mutex::new(None),
                    retry: Mutex::new(None),
                })
            })
            .collect();
        Self {
            sinks,
            shared: Arc::new(Shared { opts, infisical: InfisicalClient::new() }),
            leading: AtomicBool::new(true),
        }
    }

    /// Tells the set whether this process leads the installation: leader-only sinks
    /// (`run_on = "leader"`) are skipped by [`SinkSet::deliver`] while it does not.
    pub fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::SeqCst);
    }

    /// Whether `s` is delivered to by this process now.
    fn runs_here(&self, s: &Sink) -> bool {
        s.cfg.runs_on() == RunOn::EveryReplica || self.leading.load(Ordering::SeqCst)
    }

    /// Delivers `account`'s credential to each of its sinks, concurrently; failures are
    /// recorded in status and retried in the background.
    pub async fn deliver(&self, account: &Account) {
        let account = Arc::new(account.clone());
        let jobs = self.sinks.iter().filter(|s| s.cfg.account == account.name && self.runs_here(s)).map(|s| {
            let account = account.clone();
            async move {
                let generation = s.generation.fetch_add(1, Ordering::SeqCst) + 1;
                if attempt(&self.shared, s, &account, generation, true).await.is_err() {
                    self.schedule_retry(s, generation, account);
                } else if let Some(w) = s.retry.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                    w.tx.send_replace(None);
                }
            }
        });
        futures::future::join_all(jobs).await;
    }

    /// Delivers once, without background retries or debouncing (`tokenkeeper sync`): writes
    /// every sink of the account, runs the `on_change` of those that changed and the
    /// commands, and says what happened to each.
    pub async fn deliver_once(&self, account: &Account) -> Vec<(String, Result<WriteOutcome, SyncError>)> {
        let jobs = self.sinks.iter().filter(|s| s.cfg.account == account.name).map(|s| async move {
            let generation = s.generation.fetch_add(1, Ordering::SeqCst) + 1;
            (s.name.clone(), attempt(&self.shared, s, account, generation, false).await)
        });
        futures::future::join_all(jobs).await
    }

    /// Every sink's health.
    pub fn statuses(&self) -> Vec<SinkStatus> {
        self.sinks
            .iter()
            .map(|s| {
                let c = s.counters();
                let cmd = s.command.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(DebouncedCommand::state);
                let mut st = SinkStatus {
                    name: s.name.clone(),
                    account: s.cfg.account.clone(),
                    kind: s.cfg.kind(),
                    ok: c.last_error.is_none(),
                    last_error: c.last_error.clone(),
                    last_written_at: c.last_written_at,
                    writes: c.writes,
                    failures: c.failures,
                };
                if let Some(cmd) = cmd {
                    st.failures += cmd.failures;
                    if s.is_command() {
                        st.writes = cmd.runs - cmd.failures;
                        st.last_written_at = cmd.last_ok_at;
                    }
                    if st.last_error.is_none() {
                        if let Some(e) = cmd.last_error {
                            st.ok = false;
                            st.last_error = Some(if s.is_command() { e } else { format!("on_change: {e}") });
                        }
                    }
                }
                st
            })
            .collect()
    }

    /// Stops every background task: commands waiting for their debounce run once now, retries
    /// are dropped; each task gets `shutdown_grace`, then is aborted.
    pub async fn shutdown(self) {
        let grace = self.shared.opts.shutdown_grace;
        for s in &self.sinks {
            let cmd = s.command.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(cmd) = cmd {
                cmd.shutdown(grace).await;
            }
            let retry = s.retry.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(Worker { tx, handle }) = retry {
                drop(tx);
                let abort = handle.abort_handle();
                if tokio::time::timeout(grace, handle).await.is_err() {
                    abort.abort();
                }
            }
        }
    }

    fn schedule_retry(&self, s: &Arc<Sink>, generation: u64, account: Arc<Account>) {
        let mut slot = s.retry.lock().unwrap_or_else(|p| p.into_inner());
        let worker = slot.get_or_insert_with(|| {
            let (tx, rx) = watch::channel(None);
            let handle = tokio::spawn(retry_loop(self.shared.clone(), s.clone(), rx));
            Worker { tx, handle }
        });
        worker.tx.send_replace(Some((generation, account)));
    }
}

async fn retry_loop(shared: Arc<Shared>, s: Arc<Sink>, mut rx: watch::Receiver<RetryJob>) {
    let opts = &shared.opts;
    let mut pending = false;
    loop {
        if !pending && rx.changed().await.is_err() {
            return;
        }
        pending = false;
        let mut delay = opts.retry_min;
        // The first attempt was made by `deliver`; these are the retries.
        for retry in 1..opts.retry_attempts.max(1) {
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    pending = true;
                    break;
                }
                () = sleep(delay) => {}
            }
            let job = rx.borrow_and_update().clone();
            let Some((generation, account)) = job else { break };
            tracing::info!(sink = %s.name, retry, "retrying the sink");
            match attempt(&shared, &s, &account, generation, true).await {
                Ok(_) => break,
                Err(_) if retry + 1 >= opts.retry_attempts => {
                    tracing::error!(sink = %s.name, attempts = opts.retry_attempts, "giving up on this delivery until the next change");
                }
                Err(_) => {}
            }
            delay = (delay * 2).min(opts.retry_max);
        }
    }
}

/// One attempt at one sink, under its lock, recorded in its counters. `background` chooses
/// debounced commands (deliver) or direct runs (deliver_once).
async fn attempt(
    shared: &Shared,
    s: &Arc<Sink>,
    account: &Account,
    generation: u64,
    background: bool,
) -> Result<WriteOutcome, SyncError> {
    let _guard = s.write_lock.lock().await;
    if s.generation.load(Ordering::SeqCst) != generation {
        // A newer delivery is on its way; this one is stale.
        return Ok(WriteOutcome::Unchanged);
    }
    let result = write_sink(shared, s, account, background).await;
    let mut c = s.counters();
    match &result {
        Ok(outcome) => {
            c.last_error = None;
            if *outcome == WriteOutcome::Written {
                c.writes += 1;
                c.last_written_at = Some(shared.opts.clock.now());
                tracing::info!(sink = %s.name, account = %account.name, token = %account.credential.access_token, "sink updated");
            }
        }
        Err(e) => {
            let message = error_chain(e);
            tracing::warn!(sink = %s.name, account = %account.name, error = %message, "sink failed");
            c.failures += 1;
            c.last_error = Some(message);
        }
    }
    result
}

async fn write_sink(
    shared: &Shared,
    s: &Arc<Sink>,
    account: &Account,
    background: bool,
) -> Result<WriteOutcome, SyncError> {
    let outcome = match &s.cfg.target {
        SinkTarget::Command { .. } => {
            if unchanged_since_last(s, account) {
                return Ok(WriteOutcome::Unchanged);
            }
            if background {
                trigger_command(shared, s, account);
            } else {
                run_now(shared, s, account).await?;
            }
            remember(s, account);
            return Ok(WriteOutcome::Written);
        }
        SinkTarget::Infisical(_) => {
            if unchanged_since_last(s, account) {
                return Ok(WriteOutcome::Unchanged);
            }
            let push = shared.infisical.push(&s.cfg, account);
            tokio::time::timeout(REQUEST_TIMEOUT * 3, push).await.map_err(|_| SyncError::HttpStatus {
                action: "push to Infisical",
                path: PathBuf::from(&s.name),
                status: 0,
                message: "no answer in time".into(),
            })??;
            remember(s, account);
            WriteOutcome::Written
        }
        SinkTarget::EnvFile { .. }
        | SinkTarget::ClaudeCredentials { .. }
        | SinkTarget::Openclaw { .. }
        | SinkTarget::Template { .. }
        | SinkTarget::Native { .. } => {
            let cfg = s.cfg.clone();
            let account = account.clone();
            let providers = shared.opts.providers.clone();
            unblock("finish writing", Path::new(&s.name), move || write_file_sink_with(&cfg, &account, &providers))
                .await?
        }
    };
    if outcome == WriteOutcome::Written && s.cfg.on_change.is_some() {
        if background {
            trigger_command(shared, s, account);
        } else {
            run_now(shared, s, account).await?;
        }
    }
    Ok(outcome)
}

/// Renders and writes a file sink (blocking I/O); a `native` sink needs
/// [`write_file_sink_with`].
pub fn write_file_sink(cfg: &SinkConfig, account: &Account) -> Result<WriteOutcome, SyncError> {
    write_file_sink_with(cfg, account, &Providers::new())
}

/// Renders and writes a file sink (blocking I/O), a `native` one in the format of its provider
/// in `providers`.
pub fn write_file_sink_with(
    cfg: &SinkConfig,
    account: &Account,
    providers: &Providers,
) -> Result<WriteOutcome, SyncError> {
    let file = cfg.file().ok_or_else(|| SyncError::Invalid {
        action: "write the sink",
        path: PathBuf::from(cfg.display_name()),
        message: "this sink kind writes no file".into(),
    })?;
    let path = expand_tilde(&file.path);
    let existing = read_optional(&path)?;
    // Files that carry a whole credential (refresh token included) can be refreshed from by
    // whoever reads them; never replace a newer credential found there with an older one.
    if matches!(cfg.target, SinkTarget::ClaudeCredentials { .. } | SinkTarget::Openclaw { .. }) {
        if let Some(text) = &existing {
            if let Ok(on_disk) = tokenkeeper_core::formats::parse_credential(text, account.credential.expires_at) {
                if on_disk.credential.compare_to(&account.credential) == tokenkeeper_core::Freshness::Newer {
                    return Err(SyncError::NewerOnDisk { path });
                }
            }
        }
    }
    if matches!(cfg.target, SinkTarget::Native { .. }) {
        let native = native_file_of(cfg, account, providers)?;
        if let Some(on_disk) = existing.as_deref().and_then(|t| native.parse(t, account.credential.expires_at).ok()) {
            match on_disk.credential.compare_to(&account.credential) {
                tokenkeeper_core::Freshness::Newer => return Err(SyncError::NewerOnDisk { path }),
                // Rewriting the same tokens would only wake the CLI's watchers.
                tokenkeeper_core::Freshness::Same => return Ok(WriteOutcome::Unchanged),
                _ => {}
            }
        }
    }
    // A half-written or stub file of a native sink is replaced rather than merged.
    let base = match cfg.target {
        SinkTarget::Native { .. } => existing
            .as_deref()
            .filter(|t| matches!(serde_json::from_str::<serde_json::Value>(t), Ok(serde_json::Value::Object(_)))),
        _ => existing.as_deref(),
    };
    let rendered = render_sink_with(cfg, account, base, providers)?;
    write_file(&path, rendered.contents.as_bytes(), &WriteOptions::from_sink(file))
}

fn unchanged_since_last(s: &Sink, account: &Account) -> bool {
    s.last_delivered.lock().unwrap_or_else(|p| p.into_inner()).as_ref() == Some(&account.credential.access_token)
}

fn remember(s: &Sink, account: &Account) {
    *s.last_delivered.lock().unwrap_or_else(|p| p.into_inner()) = Some(account.credential.access_token.clone());
}

fn runner_options(shared: &Shared, cfg: &SinkConfig) -> RunnerOptions {
    let mut o = shared.opts.runner.clone();
    if let Some(t) = cfg.timeout {
        o.timeout = t;
    }
    if let Some(d) = cfg.debounce {
        o.debounce = d;
    }
    o
}

fn trigger_command(shared: &Shared, s: &Sink, account: &Account) {
    let Some(argv) = s.argv() else { return };
    let mut slot = s.command.lock().unwrap_or_else(|p| p.into_inner());
    let cmd = slot.get_or_insert_with(|| {
        DebouncedCommand::spawn(
            s.name.clone(),
            argv.to_vec(),
            runner_options(shared, &s.cfg),
            shared.opts.executor.clone(),
        )
    });
    cmd.trigger(CommandEnv::new(account, &s.name));
}

async fn run_now(shared: &Shared, s: &Sink, account: &Account) -> Result<(), SyncError> {
    let Some(argv) = s.argv() else { return Ok(()) };
    let opts = runner_options(shared, &s.cfg);
    shared.opts.executor.run(argv, &CommandEnv::new(account, &s.name), opts.timeout).await
}
