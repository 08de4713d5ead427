//! Shared test support: a data directory, the mock provider, and running the real binary
//! against them. Every command's output is kept so the secret-leak test can scan it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokenkeeper_mock::MockProvider;

pub mod serve;

/// A fixed key so tests can open the store themselves.
pub const KEY_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// One test's world: a temp home, data dir, config dir and the mock provider.
pub struct World {
    pub dir: tempfile::TempDir,
    pub mock: MockProvider,
    /// Everything every command printed, for leak scanning.
    pub transcript: Arc<Mutex<Vec<u8>>>,
    /// Every argv we spawned.
    pub argvs: Arc<Mutex<Vec<Vec<String>>>>,
}

impl World {
    pub async fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("home/.claude")).unwrap();
        let mock = MockProvider::start().await.unwrap();
        World { dir, mock, transcript: Default::default(), argvs: Default::default() }
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn claude_file(&self) -> PathBuf {
        self.home().join(".claude/.credentials.json")
    }

    /// The binary with the environment pointing at this world.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(assert_cmd::cargo::cargo_bin("tokenkeeper"));
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.home())
            .env("TOKENKEEPER_DATA_DIR", self.data_dir())
            .env("TOKENKEEPER_CONFIG", self.dir.path().join("config.toml"))
            .env("TOKENKEEPER_KEY", KEY_B64)
            .env("TOKENKEEPER_ANTHROPIC_TOKEN_URL", self.mock.token_url())
            .env("TOKENKEEPER_ANTHROPIC_AUTHORIZE_URL", self.mock.authorize_url())
            .env("TOKENKEEPER_ANTHROPIC_REDIRECT_URI", self.mock.redirect_uri())
            .env("TOKENKEEPER_ANTHROPIC_API_BASE_URL", self.mock.api_base_url())
            .env("RUST_LOG", "debug");
        if !self.dir.path().join("config.toml").exists() {
            std::fs::write(self.dir.path().join("config.toml"), "").unwrap();
        }
        self.argvs.lock().unwrap().push(args.iter().map(|s| s.to_string()).collect());
        c
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(self.dir.path().join("config.toml"), text).unwrap();
    }

    fn keep(&self, out: &Output) {
        let mut t = self.transcript.lock().unwrap();
        t.extend_from_slice(&out.stdout);
        t.extend_from_slice(&out.stderr);
    }

    /// Runs the binary to completion, with `stdin`.
    pub fn run(&self, args: &[&str], stdin: &str) -> Output {
        let mut child =
            self.cmd(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        self.keep(&out);
        out
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str], stdin: &str) -> String {
        let out = self.run(args, stdin);
        assert!(
            out.status.success(),
            "tokenkeeper {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `tokenkeeper login` with the code pasted on stdin, driven like a person would.
    pub fn login(&self, account: Option<&str>, email: &str) -> Output {
        let mut args = vec!["login"];
        if let Some(a) = account {
            args.extend(["--account", a]);
        }
        let mut child =
            self.cmd(&args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut seen = Vec::new();
        let url = loop {
            let mut line = String::new();
            assert!(stderr.read_line(&mut line).unwrap() > 0, "login ended before printing a URL");
            seen.extend_from_slice(line.as_bytes());
            if let Some(u) = line.split_whitespace().find(|w| w.starts_with("http")) {
                break u.to_owned();
            }
        };
        let pasted = self.mock.authorize(&url, email).unwrap();
        child.stdin.take().unwrap().write_all(format!("{pasted}\n").as_bytes()).unwrap();
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut rest).unwrap();
        seen.extend_from_slice(&rest);
        let mut out = child.wait_with_output().unwrap();
        out.stderr = seen;
        self.keep(&out);
        out
    }

    /// Opens the store directly (as another process would).
    pub async fn store(&self) -> tokenkeeper_store::SqliteStore {
        let key = tokenkeeper_store::EncryptionKey::from_base64(KEY_B64).unwrap();
        tokenkeeper_store::SqliteStore::open(&self.data_dir(), key).await.unwrap()
    }

    /// Claude Code's credentials JSON for a fresh mock login.
    pub fn claude_json(&self, email: &str) -> (String, tokenkeeper_mock::IssuedTokens) {
        let t = self.mock.issue_login(email);
        (tokenkeeper_keeper::testing::claude_json(&t), t)
    }

    pub fn transcript_text(&self) -> String {
        String::from_utf8_lossy(&self.transcript.lock().unwrap()).into_owned()
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Every byte of every file under `dir`.
pub fn read_tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.push((p, bytes));
            }
        }
    }
    out
}

/// `serve`'s own readiness signal, the one systemd reads: a datagram socket given to one `serve`
/// as `NOTIFY_SOCKET` ([`Ready::attach`]), on which it sends `READY=1` once it is up (and
/// `STOPPING=1` when it stops). Tests wait on this rather than on the wording of a log line.
/// One per process: nothing else reads the socket, and a few datagrams fit its queue.
pub struct Ready {
    socket: std::os::unix::net::UnixDatagram,
    path: PathBuf,
    /// Holds the socket file; a short path under the system temp directory (the limit is 108 bytes).
    _dir: tempfile::TempDir,
}

impl Ready {
    pub fn new() -> Ready {
        let dir = tempfile::Builder::new().prefix("tk-notify").tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        Ready { socket, path, _dir: dir }
    }

    /// Gives `cmd` this socket as `NOTIFY_SOCKET`.
    pub fn attach<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.env("NOTIFY_SOCKET", &self.path)
    }

    /// Waits up to 20 s (as [`wait_for`]) for `READY=1`; `what` names the process in the failure.
    pub fn wait(&self, what: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 512];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(!left.is_zero(), "timed out waiting for READY=1 from {what}");
            self.socket.set_read_timeout(Some(left)).unwrap();
            match self.socket.recv(&mut buf) {
                Ok(n) if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1") => return,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    panic!("timed out waiting for READY=1 from {what}")
                }
                Err(e) => panic!("reading the notify socket of {what}: {e}"),
            }
        }
    }
}

pub fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
