//! Commands: `on_change` after a sink's file changed, and the program of a `command` sink.
//!
//! Each run goes through the project's one child-process runner,
//! [`tokenkeeper_process::ChildCommand`] with [`Purpose::Sink`]:
//!
//! - **No shell, no token in argv.** The argv is run as given; the credential travels in the
//!   environment only: `TOKENKEEPER_ACCESS_TOKEN`, `CLAUDE_CODE_OAUTH_TOKEN` (so `claude`
//!   itself can be the command), `TOKENKEEPER_EXPIRES_AT` (RFC 3339),
//!   `TOKENKEEPER_EXPIRES_AT_MS`, `TOKENKEEPER_ACCOUNT`, `TOKENKEEPER_SINK`. The refresh
//!   token is never passed. Of tokenkeeper's own environment the command inherits everything
//!   but tokenkeeper's secrets (`TOKENKEEPER_KEY`, `TOKENKEEPER_ADMIN_TOKEN`, every other
//!   `TOKENKEEPER_*` but a few non-secret settings; see [`tokenkeeper_process::env`]), so
//!   `PATH`, `DOCKER_HOST` and the like still reach it.
//! - **Timeout** (default 60 s): the command's whole process group is killed when it expires.
//! - **Output** (stdout and stderr) is captured and logged line by line, every token value
//!   replaced by its fingerprint.
//! - **Debounced** ([`DebouncedCommand`], default 2 s): a burst of changes runs the command
//!   once, after the burst has been quiet for the debounce time (but no later than five
//!   debounce times after the first change, so a steady stream cannot starve it), with the
//!   latest credential.
//! - **Retried** with bounded exponential backoff (default 5 s doubling to 5 min, at most 6
//!   attempts per change). A newer change cancels the pending retries of the older one.
//!
//! Time is `tokio::time`, so tests drive debounce and backoff with `tokio::time::pause()`;
//! the process execution itself sits behind [`Executor`] so those tests need no processes.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use futures::future::BoxFuture;
use tokenkeeper_core::{redact, Account, Secret};
use tokenkeeper_process::{ChildCommand, ProcessError, Purpose};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, Instant};

use crate::error::{error_chain, SyncError};

/// A debounce keeps waiting for quiet at most this many debounce times after the first change.
const MAX_DEBOUNCE_FACTOR: u32 = 5;

/// Most characters of standard error kept in an error message.
const STDERR_TAIL_CHARS: usize = 400;

/// Most output lines logged per run and stream.
const LOGGED_LINES: usize = 50;

/// Timing of commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerOptions {
    /// Quiet time before a burst of changes runs the command.
    pub debounce: Duration,
    /// Longest a run may take before it is killed.
    pub timeout: Duration,
    /// First retry delay after a failure.
    pub backoff_min: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Attempts per change, the first included.
    pub max_attempts: u32,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            debounce: Duration::from_secs(2),
            timeout: Duration::from_secs(60),
            backoff_min: Duration::from_secs(5),
            backoff_max: Duration::from_secs(300),
            max_attempts: 6,
        }
    }
}

/// What a command gets in its environment. `Debug` shows only fingerprints.
#[derive(Debug, Clone)]
pub struct CommandEnv {
    /// The account's current access token, given to the command as `TOKENKEEPER_ACCESS_TOKEN` and
    /// `CLAUDE_CODE_OAUTH_TOKEN`, and redacted from its output.
    pub access_token: Secret,
    /// The refresh token, kept only to redact it from output; never passed to the command.
    pub refresh_token: Option<Secret>,
    /// When the access token expires.
    pub expires_at: DateTime<Utc>,
    /// The account's name.
    pub account: String,
    /// The sink's name.
    pub sink: String,
}

impl CommandEnv {
    /// The environment for `account`'s credential and the sink named `sink`.
    pub fn new(account: &Account, sink: &str) -> Self {
        Self {
            access_token: account.credential.access_token.clone(),
            refresh_token: account.credential.refresh_token.clone(),
            expires_at: account.credential.expires_at,
            account: account.name.clone(),
            sink: sink.to_owned(),
        }
    }

    /// The variables set for the command (values include the token: never log them).
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("TOKENKEEPER_ACCESS_TOKEN", self.access_token.expose().to_owned()),
            ("CLAUDE_CODE_OAUTH_TOKEN", self.access_token.expose().to_owned()),
            ("TOKENKEEPER_EXPIRES_AT", self.expires_at.to_rfc3339_opts(SecondsFormat::Secs, true)),
            ("TOKENKEEPER_EXPIRES_AT_MS", self.expires_at.timestamp_millis().to_string()),
            ("TOKENKEEPER_ACCOUNT", self.account.clone()),
            ("TOKENKEEPER_SINK", self.sink.clone()),
        ]
    }

    /// `text` with every token value replaced by its fingerprint.
    pub fn redact(&self, text: &str) -> String {
        redact(text, [Some(&self.access_token), self.refresh_token.as_ref()].into_iter().flatten())
    }
}

/// Runs a command once. The real one is [`ProcessExecutor`]; tests substitute their own.
pub trait Executor: Send + Sync + 'static {
    /// Runs `argv` with `env`, killing it after `timeout`.
    fn run<'a>(
        &'a self,
        argv: &'a [String],
        env: &'a CommandEnv,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), SyncError>>;
}

/// Runs commands as child processes.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessExecutor;

impl Executor for ProcessExecutor {
    fn run<'a>(
        &'a self,
        argv: &'a [String],
        env: &'a CommandEnv,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), SyncError>> {
        Box::pin(run_process(argv, env, timeout))
    }
}

/// Runs `argv` once as described in the [module docs](self).
pub async fn run_process(argv: &[String], env: &CommandEnv, timeout: Duration) -> Result<(), SyncError> {
    let action = "run the command of sink";
    let mut cmd = ChildCommand::new(Purpose::Sink, argv)
        .map_err(|_| SyncError::Missing { action, path: PathBuf::from(&env.sink), field: "command" })?
        .timeout(timeout);
    for (name, value) in env.vars() {
        cmd = cmd.env(name, value);
    }
    cmd = cmd.redact(&env.access_token);
    if let Some(refresh) = &env.refresh_token {
        cmd = cmd.redact(refresh);
    }
    let path = PathBuf::from(cmd.program());
    let output = match cmd.run().await {
        Ok(output) => output,
        Err(ProcessError::Spawn { source, .. }) => return Err(SyncError::io("start the command", &path, source)),
        Err(ProcessError::Wait { source, .. }) => return Err(SyncError::io("wait for the command", &path, source)),
        Err(ProcessError::Timeout { after, .. }) => return Err(SyncError::CommandTimeout { action, path, after }),
        Err(ProcessError::Empty { .. }) => {
            return Err(SyncError::Missing { action, path: PathBuf::from(&env.sink), field: "command" })
        }
    };
    for line in output.stdout.lines().take(LOGGED_LINES) {
        tracing::info!(sink = %env.sink, program = %path.display(), "stdout: {line}");
    }
    for line in output.stderr.lines().take(LOGGED_LINES) {
        tracing::info!(sink = %env.sink, program = %path.display(), "stderr: {line}");
    }
    if output.success() {
        return Ok(());
    }
    Err(SyncError::CommandFailed {
        action,
        path,
        status: output.describe_status(),
        stderr: output.stderr_tail(STDERR_TAIL_CHARS),
    })
}

/// What a [`DebouncedCommand`] has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandState {
    /// Runs started.
    pub runs: u64,
    /// Runs that failed.
    pub failures: u64,
    /// The error of the last run, if it failed.
    pub last_error: Option<String>,
    /// When a run last succeeded.
    pub last_ok_at: Option<DateTime<Utc>>,
}

/// A command run after changes, debounced and retried, in its own task.
#[derive(Debug)]
pub struct DebouncedCommand {
    tx: watch::Sender<Option<Arc<CommandEnv>>>,
    state: Arc<Mutex<CommandState>>,
    handle: JoinHandle<()>,
}

impl DebouncedCommand {
    /// Starts the task (needs a Tokio runtime). `name` is used in logs.
    pub fn spawn(name: String, argv: Vec<String>, opts: RunnerOptions, executor: Arc<dyn Executor>) -> Self {
        let (tx, rx) = watch::channel(None);
        let state = Arc::new(Mutex::new(CommandState::default()));
        let worker = Worker { name, argv, opts, executor, state: state.clone() };
        let handle = tokio::spawn(worker.run(rx));
        Self { tx, state, handle }
    }

    /// Schedules a run with this credential (replacing any not yet run).
    pub fn trigger(&self, env: CommandEnv) {
        self.tx.send_replace(Some(Arc::new(env)));
    }

    /// What it has done so far.
    pub fn state(&self) -> CommandState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops: a change still waiting for its debounce runs once now (no retries), then the
    /// task ends. After `grace` the task is aborted (killing a running command).
    pub async fn shutdown(self, grace: Duration) {
        drop(self.tx);
        let abort = self.handle.abort_handle();
        if tokio::time::timeout(grace, self.handle).await.is_err() {
            abort.abort();
        }
    }
}

struct Worker {
    name: String,
    argv: Vec<String>,
    opts: RunnerOptions,
    executor: Arc<dyn Executor>,
    state: Arc<Mutex<CommandState>>,
}

impl Worker {
    async fn run(self, mut rx: watch::Receiver<Option<Arc<CommandEnv>>>) {
        let mut pending = false;
        loop {
            if !pending && rx.changed().await.is_err() {
                return;
            }
            pending = false;
            let closed = self.debounce(&mut rx).await;
            let mut delay = self.opts.backoff_min;
            for attempt in 1..=self.opts.max_attempts.max(1) {
                let Some(env) = rx.borrow_and_update().clone() else { break };
                let ok = self.run_once(&env, attempt).await;
                if ok || closed || attempt >= self.opts.max_attempts {
                    break;
                }
                tokio::select! {
                    changed = rx.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        // A newer credential: its own debounce and attempts replace these.
                        pending = true;
                        break;
                    }
                    () = sleep(delay) => {}
                }
                delay = (delay * 2).min(self.opts.backoff_max);
            }
            if closed {
                return;
            }
        }
    }

    /// Waits until no change came for a debounce time. Returns whether the sender is gone.
    async fn debounce(&self, rx: &mut watch::Receiver<Option<Arc<CommandEnv>>>) -> bool {
        let latest = Instant::now() + self.opts.debounce * MAX_DEBOUNCE_FACTOR;
        loop {
            let quiet = (Instant::now() + self.opts.debounce).min(latest);
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return true;
                    }
                }
                () = sleep_until(quiet) => return false,
            }
        }
    }

    async fn run_once(&self, env: &CommandEnv, attempt: u32) -> bool {
        self.lock().runs += 1;
        let result = self.executor.run(&self.argv, env, self.opts.timeout).await;
        let mut state = self.lock();
        match result {
            Ok(()) => {
                state.last_error = None;
                state.last_ok_at = Some(Utc::now());
                tracing::info!(sink = %self.name, attempt, "command ran");
                true
            }
            Err(e) => {
                let message = error_chain(&e);
                state.failures += 1;
                tracing::warn!(sink = %self.name, attempt, max = self.opts.max_attempts, error = %message, "command failed");
                state.last_error = Some(message);
                false
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CommandState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn env(token: &str) -> CommandEnv {
        CommandEnv {
            access_token: Secret::new(token),
            refresh_token: Some(Secret::new("sk-ant-ort01-REFRESHSECRET")),
            expires_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            account: "main".into(),
            sink: "s".into(),
        }
    }

    /// Records runs (with the token each saw) and fails the first `fail` of them.
    #[derive(Default)]
    struct Fake {
        seen: Mutex<Vec<(Instant, String)>>,
        fail: AtomicU32,
    }

    impl Executor for Fake {
        fn run<'a>(
            &'a self,
            _: &'a [String],
            env: &'a CommandEnv,
            _: Duration,
        ) -> BoxFuture<'a, Result<(), SyncError>> {
            Box::pin(async move {
                self.seen.lock().unwrap().push((Instant::now(), env.access_token.expose().to_owned()));
                if self.fail.load(Ordering::SeqCst) > 0 {
                    self.fail.fetch_sub(1, Ordering::SeqCst);
                    return Err(SyncError::CommandFailed {
                        action: "run",
                        path: "fake".into(),
                        status: "exit code 1".into(),
                        stderr: String::new(),
                    });
                }
                Ok(())
            })
        }
    }

    async fn settle() {
        // Let the worker task observe what happened (no time passes: the clock is paused).
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_100_changes_in_one_second_runs_once_with_the_latest() {
        let fake = Arc::new(Fake::default());
        let cmd = DebouncedCommand::spawn("s".into(), vec!["x".into()], RunnerOptions::default(), fake.clone());
        for i in 0..100 {
            cmd.trigger(env(&format!("sk-ant-oat01-T{i}")));
            tokio::time::advance(Duration::from_millis(10)).await;
            settle().await;
        }
        tokio::time::advance(Duration::from_secs(3)).await;
        settle().await;
        let seen = fake.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "ran {} times", seen.len());
        assert_eq!(seen[0].1, "sk-ant-oat01-T99");
        assert_eq!(cmd.state().runs, 1);
        cmd.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_stream_still_runs_within_five_debounce_times() {
        let fake = Arc::new(Fake::default());
        let cmd = DebouncedCommand::spawn("s".into(), vec!["x".into()], RunnerOptions::default(), fake.clone());
        for i in 0..100 {
            cmd.trigger(env(&format!("sk-ant-oat01-T{i}")));
            tokio::time::advance(Duration::from_millis(500)).await;
            settle().await;
        }
        let runs = fake.seen.lock().unwrap().len();
        // 50 s of changes every 0.5 s: one run per 10 s window, not none and not 100.
        assert!((4..=6).contains(&runs), "{runs} runs");
        cmd.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn failures_retry_with_bounded_exponential_backoff() {
        let fake = Arc::new(Fake { fail: AtomicU32::new(100), ..Fake::default() });
        let opts = RunnerOptions { max_attempts: 5, ..RunnerOptions::default() };
        let cmd = DebouncedCommand::spawn("s".into(), vec!["x".into()], opts, fake.clone());
        let start = Instant::now();
        cmd.trigger(env("sk-ant-oat01-A"));
        for _ in 0..2000 {
            tokio::time::advance(Duration::from_millis(500)).await;
            settle().await;
        }
        let seen = fake.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 5, "at most max_attempts per change");
        let offsets: Vec<u64> = seen.iter().map(|(t, _)| (*t - start).as_millis() as u64).collect();
        let gaps: Vec<u64> = offsets.windows(2).map(|w| w[1] - w[0]).collect();
        assert!((2000..=2500).contains(&offsets[0]), "first run after the debounce: {offsets:?}");
        for (gap, want) in gaps.iter().zip([5_000u64, 10_000, 20_000, 40_000]) {
            assert!((want..=want + 500).contains(gap), "gaps {gaps:?}");
        }
        let st = cmd.state();
        assert_eq!(st.failures, 5);
        assert!(st.last_error.unwrap().contains("exit code 1"));
        cmd.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_is_capped_and_a_new_change_replaces_old_retries() {
        let fake = Arc::new(Fake { fail: AtomicU32::new(3), ..Fake::default() });
        let opts = RunnerOptions {
            backoff_min: Duration::from_secs(100),
            backoff_max: Duration::from_secs(150),
            max_attempts: 10,
            ..RunnerOptions::default()
        };
        let cmd = DebouncedCommand::spawn("s".into(), vec!["x".into()], opts, fake.clone());
        cmd.trigger(env("sk-ant-oat01-A"));
        for _ in 0..(600 * 2) {
            tokio::time::advance(Duration::from_millis(500)).await;
            settle().await;
        }
        let seen = fake.seen.lock().unwrap().clone();
        let gaps: Vec<u128> = seen.windows(2).map(|w| (w[1].0 - w[0].0).as_millis()).collect();
        assert_eq!(seen.len(), 4, "three failures then success: {gaps:?}");
        assert!((100_000..=100_500).contains(&gaps[0]) && (150_000..=150_500).contains(&gaps[1]), "{gaps:?}");
        assert_eq!(cmd.state().last_error, None);
        // Failing again, then a newer credential arrives during the backoff: it runs after
        // its debounce, not after the old backoff.
        fake.fail.store(1, Ordering::SeqCst);
        cmd.trigger(env("sk-ant-oat01-B"));
        settle().await;
        tokio::time::advance(Duration::from_millis(2500)).await;
        settle().await;
        cmd.trigger(env("sk-ant-oat01-C"));
        settle().await;
        tokio::time::advance(Duration::from_millis(2500)).await;
        settle().await;
        let seen = fake.seen.lock().unwrap().clone();
        assert_eq!(seen.iter().map(|s| s.1.as_str()).collect::<Vec<_>>()[4..], ["sk-ant-oat01-B", "sk-ant-oat01-C"]);
        cmd.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_runs_a_pending_change_once() {
        let fake = Arc::new(Fake::default());
        let cmd = DebouncedCommand::spawn("s".into(), vec!["x".into()], RunnerOptions::default(), fake.clone());
        cmd.trigger(env("sk-ant-oat01-A"));
        settle().await;
        cmd.shutdown(Duration::from_secs(1)).await;
        assert_eq!(fake.seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn real_process_gets_env_not_argv_and_output_is_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let script = format!(
            "printf '%s|%s|%s|%s|%s|%s|%s' \"$TOKENKEEPER_ACCESS_TOKEN\" \"$CLAUDE_CODE_OAUTH_TOKEN\" \"$TOKENKEEPER_EXPIRES_AT\" \"$TOKENKEEPER_EXPIRES_AT_MS\" \"$TOKENKEEPER_ACCOUNT\" \"$TOKENKEEPER_SINK\" \"${{TOKENKEEPER_REFRESH_TOKEN:-none}}\" > {}; echo \"leak $TOKENKEEPER_ACCESS_TOKEN\" >&2; exit 3",
            out.display()
        );
        let argv = vec!["sh".to_owned(), "-c".to_owned(), script];
        let e = run_process(&argv, &env("sk-ant-oat01-SECRETVALUE"), Duration::from_secs(10)).await.unwrap_err();
        let written = std::fs::read_to_string(&out).unwrap();
        assert_eq!(
            written,
            "sk-ant-oat01-SECRETVALUE|sk-ant-oat01-SECRETVALUE|2027-01-15T08:00:00Z|1800000000000|main|s|none"
        );
        let msg = e.to_string();
        assert!(msg.contains("exit code 3") && msg.contains("leak sk-ant-oat01-…"), "{msg}");
        assert!(!msg.contains("SECRETVALUE") && !format!("{e:?}").contains("SECRETVALUE"), "{msg}");
    }

    #[tokio::test]
    async fn timeout_kills_the_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let argv = vec!["sh".to_owned(), "-c".to_owned(), script];
        let started = std::time::Instant::now();
        let e = run_process(&argv, &env("sk-ant-oat01-A"), Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(e, SyncError::CommandTimeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        // The grandchild would sleep 30 s; it must be gone (or a zombie awaiting its reaper).
        let gone = || match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !gone() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(gone(), "a grandchild outlived the timeout");
    }

    #[tokio::test]
    async fn missing_program_names_it() {
        let argv = vec!["/nonexistent/tk-hook".to_owned()];
        let e = run_process(&argv, &env("sk-ant-oat01-A"), Duration::from_secs(1)).await.unwrap_err();
        assert!(e.to_string().contains("start the command /nonexistent/tk-hook"), "{e}");
    }
}
