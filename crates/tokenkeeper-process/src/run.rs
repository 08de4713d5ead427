//! [`ChildCommand`]: build a child's argv, environment, input and timeout, then [`run`] it
//! (captured, redacted output) or [`exec`] into it.
//!
//! [`run`]: ChildCommand::run
//! [`exec`]: ChildCommand::exec

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokenkeeper_core::{redact, Secret};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::env::{inherited, Purpose};

/// Most bytes of each output stream kept; the rest is read and dropped, so a chatty command
/// neither blocks on a full pipe nor fills memory.
pub const OUTPUT_LIMIT: usize = 64 * 1024;

/// Why a child could not be run to its end. Never holds a secret: argv is never shown beyond
/// the program, and the environment not at all.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The configured argv is empty.
    #[error("the {purpose} is empty: give the program to run and its arguments as a list, such as [\"docker\", \"restart\", \"bot\"]")]
    Empty {
        /// What the command was for.
        purpose: &'static str,
    },
    /// The program could not be started (not found, not executable).
    #[error("cannot start the {purpose} `{program}`: check that it exists, is executable and is on PATH")]
    Spawn {
        /// What the command was for.
        purpose: &'static str,
        /// The program (argv\[0\]).
        program: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for it, or reading its output, failed.
    #[error("cannot wait for the {purpose} `{program}`")]
    Wait {
        /// What the command was for.
        purpose: &'static str,
        /// The program (argv\[0\]).
        program: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// It ran longer than its timeout; its whole process group was killed.
    #[error("the {purpose} `{program}` did not finish within {after:?} and was killed with its process group; make it faster or raise its timeout")]
    Timeout {
        /// What the command was for.
        purpose: &'static str,
        /// The program (argv\[0\]).
        program: String,
        /// The timeout.
        after: Duration,
    },
}

/// What a finished child left: its exit status and its output, already redacted.
#[derive(Debug, Clone)]
pub struct ChildOutput {
    /// How it ended.
    pub status: ExitStatus,
    /// Standard output, redacted, at most [`OUTPUT_LIMIT`] bytes of it.
    pub stdout: String,
    /// Standard error, redacted, at most [`OUTPUT_LIMIT`] bytes of it.
    pub stderr: String,
}

impl ChildOutput {
    /// Whether it exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// How it ended, in words: `exit code 3`, `killed by signal 9`.
    pub fn describe_status(&self) -> String {
        match (self.status.code(), self.status.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            (None, None) => "failed".to_owned(),
        }
    }

    /// The last `max` characters of standard error, trimmed, for an error message.
    pub fn stderr_tail(&self, max: usize) -> String {
        let trimmed = self.stderr.trim_end();
        let skip = trimmed.chars().count().saturating_sub(max);
        trimmed.chars().skip(skip).collect()
    }
}

/// A child process to run. `Debug` shows the program and the *names* of the variables set,
/// never their values or the arguments.
#[derive(Clone)]
pub struct ChildCommand {
    purpose: Purpose,
    program: String,
    args: Vec<String>,
    vars: Vec<(String, String)>,
    secrets: Vec<Secret>,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
}

impl std::fmt::Debug for ChildCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildCommand")
            .field("purpose", &self.purpose)
            .field("program", &self.program)
            .field("vars", &self.vars.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The timeout of a [`ChildCommand`] nobody set one for.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

impl ChildCommand {
    /// A child running `argv` (program first) for `purpose`, with the inherited environment of
    /// [`crate::env`] and a 60 s timeout.
    pub fn new(purpose: Purpose, argv: &[String]) -> Result<Self, ProcessError> {
        let Some((program, args)) = argv.split_first() else {
            return Err(ProcessError::Empty { purpose: purpose.as_str() });
        };
        Ok(Self {
            purpose,
            program: program.clone(),
            args: args.to_vec(),
            vars: Vec::new(),
            secrets: Vec::new(),
            stdin: None,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// The program (argv\[0\]).
    pub fn program(&self) -> &str {
        &self.program
    }

    /// Sets a documented variable of this purpose (after the inherited environment, so it
    /// wins).
    pub fn env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.vars.push((name.to_owned(), value.into()));
        self
    }

    /// Sets a variable to a secret's value, and redacts that value from the output.
    pub fn secret_env(mut self, name: &str, value: &Secret) -> Self {
        self.vars.push((name.to_owned(), value.expose().to_owned()));
        self.redact(value)
    }

    /// Redacts `secret` from the output (for secrets the child may print but is not given,
    /// such as the refresh token).
    pub fn redact(mut self, secret: &Secret) -> Self {
        if !secret.is_empty() && !self.secrets.contains(secret) {
            self.secrets.push(secret.clone());
        }
        self
    }

    /// Bytes written to the child's standard input (closed after them); without, stdin is
    /// `/dev/null`.
    pub fn stdin(mut self, input: Vec<u8>) -> Self {
        self.stdin = Some(input);
        self
    }

    /// How long [`ChildCommand::run`] lets it run before killing its process group.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The complete environment the child gets: tokenkeeper's own, filtered, then the
    /// purpose's variables.
    fn environment(&self) -> Vec<(OsString, OsString)> {
        let mut env = inherited(std::env::vars_os(), self.purpose);
        let set: Vec<&str> = self.vars.iter().map(|(k, _)| k.as_str()).collect();
        env.retain(|(k, _)| k.to_str().is_none_or(|k| !set.contains(&k)));
        env.extend(self.vars.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))));
        env
    }

    /// `text` with this command's secrets and anything token-shaped replaced by fingerprints.
    pub fn redact_text(&self, text: &str) -> String {
        redact(text, &self.secrets)
    }

    /// Runs the child to its end (or its timeout) in its own process group and returns its
    /// redacted output. A non-zero exit is an [`ChildOutput`], not an error: the caller
    /// decides what it means. If the returned future is dropped before the child ended (a
    /// caller's own timeout, a shutdown), the whole group is killed.
    pub async fn run(&self) -> Result<ChildOutput, ProcessError> {
        let purpose = self.purpose.as_str();
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args)
            .env_clear()
            .envs(self.environment())
            .stdin(if self.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group, so a timeout kills what it started too.
            .process_group(0);
        let mut child =
            cmd.spawn().map_err(|source| ProcessError::Spawn { purpose, program: self.program.clone(), source })?;
        let mut group = GroupGuard(child.id().and_then(|p| i32::try_from(p).ok()));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let input = self.stdin.clone().unwrap_or_default();
        let write_input = async move {
            if let Some(mut pipe) = stdin {
                // A command that ignores its input closes the pipe early; that is its right.
                if let Err(e) = pipe.write_all(&input).await {
                    if e.kind() != std::io::ErrorKind::BrokenPipe {
                        tracing::debug!(error = %e, "writing to the command's stdin failed");
                    }
                }
            }
        };
        let work = async {
            let ((), out, err, status) =
                tokio::join!(write_input, read_capped(stdout), read_capped(stderr), child.wait());
            Ok::<_, std::io::Error>((out?, err?, status?))
        };
        let (out, err, status) = match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(done)) => done,
            Ok(Err(source)) => return Err(ProcessError::Wait { purpose, program: self.program.clone(), source }),
            Err(_) => {
                group.kill();
                return Err(ProcessError::Timeout { purpose, program: self.program.clone(), after: self.timeout });
            }
        };
        // It ended by itself: what it left running on purpose (a daemon it started) stays.
        group.0 = None;
        Ok(ChildOutput {
            status,
            stdout: self.redact_text(&String::from_utf8_lossy(&out)),
            stderr: self.redact_text(&String::from_utf8_lossy(&err)),
        })
    }

    /// Runs the child in the foreground and waits for it: for `tokenkeeper exec` when
    /// something must happen after the child ends (removing a private file written for it),
    /// which [`ChildCommand::exec`] cannot do. It behaves as close to `exec` as a parent can:
    ///
    /// - the same environment policy, stdin, stdout and stderr (inherited), no timeout, no
    ///   capture;
    /// - the child stays in tokenkeeper's process group, so a terminal's Ctrl-C, Ctrl-\ and
    ///   job control reach it directly, as after `exec`; tokenkeeper itself survives them;
    /// - `SIGTERM`, `SIGHUP`, `SIGUSR1` and `SIGUSR2` sent to tokenkeeper are passed on to the
    ///   child (so `docker stop` or systemd stop it), and so are `SIGINT` and `SIGQUIT` when they
    ///   cannot have come from a terminal (tokenkeeper's group is not the foreground group of a
    ///   terminal on stdin: a `kill -INT`, a container without a TTY);
    /// - it returns the child's exit status; what that status means for tokenkeeper's own exit
    ///   is the caller's (see [`exit_code_of`]).
    pub async fn run_attached(&self) -> Result<ExitStatus, ProcessError> {
        use tokio::signal::unix::{signal, SignalKind};
        let purpose = self.purpose.as_str();
        let wait_error = |source| ProcessError::Wait { purpose, program: self.program.clone(), source };
        // Handlers first: a signal that arrives while the child starts is passed on, not fatal.
        let kinds = [
            (SignalKind::terminate(), Signal::SIGTERM),
            (SignalKind::hangup(), Signal::SIGHUP),
            (SignalKind::interrupt(), Signal::SIGINT),
            (SignalKind::quit(), Signal::SIGQUIT),
            (SignalKind::user_defined1(), Signal::SIGUSR1),
            (SignalKind::user_defined2(), Signal::SIGUSR2),
        ];
        let mut streams = Vec::with_capacity(kinds.len());
        for (kind, sig) in kinds {
            streams.push((signal(kind).map_err(wait_error)?, sig));
        }
        let mut child = tokio::process::Command::new(&self.program)
            .args(&self.args)
            .env_clear()
            .envs(self.environment())
            .spawn()
            .map_err(|source| ProcessError::Spawn { purpose, program: self.program.clone(), source })?;
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).map(Pid::from_raw);
        loop {
            let next = futures_select(&mut streams);
            tokio::select! {
                status = child.wait() => return status.map_err(wait_error),
                sig = next => {
                    let from_terminal = matches!(sig, Signal::SIGINT | Signal::SIGQUIT) && in_terminal_foreground();
                    if let (Some(pid), false) = (pid, from_terminal) {
                        let _ = nix::sys::signal::kill(pid, sig);
                    }
                }
            }
        }
    }

    /// Replaces this process with the child (`execvp`), with the same environment policy and
    /// no timeout: signals and the exit status belong to the program from then on. Only
    /// returns on failure.
    pub fn exec(&self) -> ProcessError {
        let source =
            std::process::Command::new(&self.program).args(&self.args).env_clear().envs(self.environment()).exec();
        ProcessError::Spawn { purpose: self.purpose.as_str(), program: self.program.clone(), source }
    }
}

/// The first of `streams` to deliver a signal, as that signal.
async fn futures_select(streams: &mut [(tokio::signal::unix::Signal, Signal)]) -> Signal {
    std::future::poll_fn(|cx| {
        for (stream, sig) in streams.iter_mut() {
            if stream.poll_recv(cx).is_ready() {
                return std::task::Poll::Ready(*sig);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Whether this process's group is the foreground group of the terminal on stdin: then the
/// terminal sends Ctrl-C and Ctrl-\ to the whole group, the child included.
fn in_terminal_foreground() -> bool {
    nix::unistd::tcgetpgrp(std::io::stdin()).is_ok_and(|fg| fg == nix::unistd::getpgrp())
}

/// The exit code a parent reports for a child that ended with `status`, as a shell does: its
/// exit code, or 128 + the signal that killed it.
pub fn exit_code_of(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    }
}

/// The signals [`ChildCommand::run_attached`] handles (and passes on) while its child runs;
/// any other signal keeps its default action.
pub const ATTACHED_SIGNALS: [Signal; 6] =
    [Signal::SIGTERM, Signal::SIGHUP, Signal::SIGINT, Signal::SIGQUIT, Signal::SIGUSR1, Signal::SIGUSR2];

/// Reads a whole stream, keeping its first [`OUTPUT_LIMIT`] bytes.
async fn read_capped(stream: Option<impl AsyncRead + Unpin>) -> std::io::Result<Vec<u8>> {
    let Some(mut stream) = stream else { return Ok(Vec::new()) };
    let mut kept = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(kept);
        }
        let room = OUTPUT_LIMIT.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..n.min(room)]);
    }
}

/// Kills the child's process group when dropped (or told to), unless the child ended by
/// itself first.
struct GroupGuard(Option<i32>);

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            // The group is the child's own (`process_group(0)` made its pid the group id), so
            // this reaches it and its descendants and nothing else.
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn sh(script: &str) -> ChildCommand {
        ChildCommand::new(Purpose::Sink, &["sh".to_owned(), "-c".to_owned(), script.to_owned()]).unwrap()
    }

    /// Whether `pid` is gone (or a zombie waiting for its reaper).
    fn gone(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        }
    }

    async fn wait_gone(pid: i32) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !gone(pid) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        gone(pid)
    }

    #[tokio::test]
    async fn output_is_captured_and_redacted() {
        let token = Secret::new("sk-ant-oat01-SECRETVALUE");
        let refresh = Secret::new("refresh-SECRETR");
        let out = sh("echo \"out $TOKENKEEPER_ACCESS_TOKEN\"; echo \"err $R sk-ant-ort01-OTHERTOKEN\" >&2; exit 3")
            .secret_env("TOKENKEEPER_ACCESS_TOKEN", &token)
            .env("R", refresh.expose())
            .redact(&refresh)
            .run()
            .await
            .unwrap();
        assert!(!out.success());
        assert_eq!(out.describe_status(), "exit code 3");
        assert_eq!(out.stdout.trim(), format!("out {}", token.fingerprint()));
        assert!(out.stderr.starts_with(&format!("err {} sk-ant-ort01-…", refresh.fingerprint())), "{}", out.stderr);
        for text in [&out.stdout, &out.stderr] {
            assert!(!text.contains("SECRET") && !text.contains("OTHERTOKEN"), "{text}");
        }
    }

    #[tokio::test]
    async fn stdin_is_delivered_and_output_is_capped() {
        let out = sh("cat; head -c 200000 /dev/zero | tr '\\0' x").stdin(b"hello\n".to_vec()).run().await.unwrap();
        assert!(out.success());
        assert!(out.stdout.starts_with("hello\nxxx"));
        assert_eq!(out.stdout.len(), OUTPUT_LIMIT);
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_group_grandchildren_too() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let started = std::time::Instant::now();
        let e = sh(&format!("sleep 30 & echo $! > {}; wait", pidfile.display()))
            .timeout(Duration::from_millis(300))
            .run()
            .await
            .unwrap_err();
        assert!(matches!(e, ProcessError::Timeout { .. }), "{e}");
        assert!(e.to_string().contains("process group"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        assert!(wait_gone(pid).await, "a grandchild outlived the timeout");
    }

    #[tokio::test]
    async fn dropping_a_run_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let cmd = sh(&format!("sleep 30 & echo $! > {}; wait", pidfile.display())).timeout(Duration::from_secs(60));
        let run = cmd.run();
        // A caller's own, shorter timeout drops the run future.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let _ = tokio::time::timeout_at(deadline, async {
            tokio::pin!(run);
            loop {
                tokio::select! {
                    _ = &mut run => break,
                    () = tokio::time::sleep(Duration::from_millis(10)) => {
                        if pidfile.exists() && !std::fs::read_to_string(&pidfile).unwrap().trim().is_empty() {
                            break;
                        }
                    }
                }
            }
        })
        .await;
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        assert!(wait_gone(pid).await, "a grandchild outlived its cancelled run");
    }

    #[tokio::test]
    async fn the_environment_follows_the_policy() {
        // This test's own process environment stands in for tokenkeeper's: the variables it
        // sets are only read by children of this test binary.
        std::env::set_var("TOKENKEEPER_KEY", "STOREKEY");
        std::env::set_var("CLAUDE_CODE_OAUTH_TOKEN", "sk-ant-oat01-STALE");
        let token = Secret::new("sk-ant-oat01-FRESH");
        let out = sh("env").secret_env("CLAUDE_CODE_OAUTH_TOKEN", &token).run().await.unwrap();
        assert!(!out.stdout.contains("TOKENKEEPER_KEY") && !out.stdout.contains("STALE"), "{}", out.stdout);
        assert!(out.stdout.contains(&format!("CLAUDE_CODE_OAUTH_TOKEN={}", token.fingerprint())), "{}", out.stdout);
        assert!(out.stdout.contains("PATH="), "{}", out.stdout);
    }

    #[tokio::test]
    async fn a_missing_program_and_an_empty_argv_say_what_to_do() {
        let e = ChildCommand::new(Purpose::Nudge, &["/nonexistent/tk-hook".to_owned()]).unwrap().run().await;
        let e = e.unwrap_err().to_string();
        assert!(e.contains("nudge command `/nonexistent/tk-hook`") && e.contains("PATH"), "{e}");
        let e = ChildCommand::new(Purpose::Alert, &[]).unwrap_err().to_string();
        assert!(e.contains("alert command is empty"), "{e}");
    }

    #[tokio::test]
    async fn an_attached_child_gets_the_terminate_signal_and_its_exit_code_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("ready");
        let script = format!("trap 'exit 42' TERM; echo $$ > {}; while :; do sleep 0.02; done", ready.display());
        let run = tokio::spawn(async move { sh(&script).run_attached().await });
        // Once the child has set its trap, tokenkeeper (this process) is told to stop.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&ready).is_ok_and(|s| s.ends_with('\n')) {
            assert!(std::time::Instant::now() < deadline, "the child never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        nix::sys::signal::kill(nix::unistd::getpid(), Signal::SIGTERM).unwrap();
        let status = run.await.unwrap().unwrap();
        assert_eq!(status.code(), Some(42), "the child got SIGTERM and its exit code is returned");
        assert_eq!(exit_code_of(status), 42);

        let status = sh("exit 3").run_attached().await.unwrap();
        assert_eq!(exit_code_of(status), 3);
        let status = sh("kill -KILL $$").run_attached().await.unwrap();
        assert_eq!((status.signal(), exit_code_of(status)), (Some(9), 137));
        let e = ChildCommand::new(Purpose::Exec, &["/nonexistent/tk-cli".to_owned()]).unwrap().run_attached().await;
        assert!(matches!(e, Err(ProcessError::Spawn { .. })), "{e:?}");
    }

    #[test]
    fn debug_shows_no_values() {
        let c = sh("x").secret_env("TOKENKEEPER_ACCESS_TOKEN", &Secret::new("sk-ant-oat01-SECRET"));
        let d = format!("{c:?}");
        assert!(d.contains("TOKENKEEPER_ACCESS_TOKEN") && !d.contains("SECRET") && !d.contains("oat01"), "{d}");
    }
}
