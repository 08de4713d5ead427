//! Shared by the benches of the real binary: an installation in a temporary directory (the
//! mock provider on loopback, a data directory seeded straight through the store), `tokenkeeper
//! serve` spawned with `READY=1` awaited on a `NOTIFY_SOCKET` of our own. The load generator
//! is the workspace's one, `tokenkeeper-bench`.
//!
//! Benches are not tests: they panic with a message when something is wrong.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokenkeeper_core::account::{Mode, NewAccount};
use tokenkeeper_core::config::ANTHROPIC;
use tokenkeeper_core::store::{CredentialChange, Store};
use tokenkeeper_mock::MockProvider;

/// A fixed encryption key, so the bench can open the store itself.
pub const KEY_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// An installation: a temporary home, data and config, and the mock provider.
pub struct Install {
    pub dir: tempfile::TempDir,
    pub mock: MockProvider,
}

impl Install {
    pub async fn new() -> Install {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::create_dir_all(dir.path().join("home/.claude")).unwrap();
        let mock = MockProvider::start().await.expect("the mock provider on loopback");
        let install = Install { dir, mock };
        install.write_config("");
        install
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("serve.log")
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(self.dir.path().join("config.toml"), text).unwrap();
    }

    /// The release binary (cargo builds it for `cargo bench -p tokenkeeper`; `BENCH_BINARY`
    /// names another, such as a copy built from the baseline commit, for a before/after run
    /// side by side), with the environment pointing at this installation and the mock.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let binary = std::env::var_os("BENCH_BINARY").unwrap_or_else(|| env!("CARGO_BIN_EXE_tokenkeeper").into());
        let mut c = Command::new(binary);
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path().join("home"))
            .env("TOKENKEEPER_DATA_DIR", self.data_dir())
            .env("TOKENKEEPER_CONFIG", self.dir.path().join("config.toml"))
            .env("TOKENKEEPER_KEY", KEY_B64)
            .env("TOKENKEEPER_ANTHROPIC_TOKEN_URL", self.mock.token_url())
            .env("TOKENKEEPER_ANTHROPIC_AUTHORIZE_URL", self.mock.authorize_url())
            .env("TOKENKEEPER_ANTHROPIC_REDIRECT_URI", self.mock.redirect_uri())
            .env("TOKENKEEPER_ANTHROPIC_API_BASE_URL", self.mock.api_base_url())
            .env("RUST_LOG", "info");
        // `BENCH_SERVE_ENV="MALLOC_ARENA_MAX=2 TOKIO_WORKER_THREADS=1"`: extra variables for
        // the binary, to try a setting without rebuilding it.
        if let Ok(extra) = std::env::var("BENCH_SERVE_ENV") {
            for (k, v) in extra.split_whitespace().filter_map(|kv| kv.split_once('=')) {
                c.env(k, v);
            }
        }
        c
    }

    /// Runs a command to success and returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).stdin(Stdio::null()).output().unwrap();
        assert!(out.status.success(), "tokenkeeper {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// The store, opened as another process would.
    pub async fn store(&self) -> tokenkeeper_store::SqliteStore {
        let key = tokenkeeper_store::EncryptionKey::from_base64(KEY_B64).unwrap();
        tokenkeeper_store::SqliteStore::open(&self.data_dir(), key).await.unwrap()
    }

    /// Writes `n` accounts `acct-00000`… straight into the store (one durable commit each, no
    /// CLI process per account), each a live mock login; `expires(i)` overrides the stored
    /// expiry of account `i` when it returns `Some`.
    ///
    /// The commits go to a staging directory on tmpfs (`/dev/shm`, when there is one) and the
    /// finished store is copied into place: 10,000 durable commits on a shared disk take minutes,
    /// and nothing measured depends on how the accounts got there.
    pub async fn seed(&self, n: usize, expires: impl Fn(usize) -> Option<DateTime<Utc>>) -> Vec<String> {
        let shm = std::path::Path::new("/dev/shm");
        let staging = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.unwrap();
        let staged = staging.path().join("data");
        let key = tokenkeeper_store::EncryptionKey::from_base64(KEY_B64).unwrap();
        let store = tokenkeeper_store::SqliteStore::open(&staged, key).await.unwrap();
        let now = Utc::now();
        let mut names = Vec::with_capacity(n);
        for i in 0..n {
            let name = account_name(i);
            let t = self.mock.issue_login(&format!("{name}@example.com"));
            let mut credential = tokenkeeper_keeper::testing::Env::credential(&t);
            if let Some(at) = expires(i) {
                credential.expires_at = at;
            }
            let new = NewAccount {
                name: name.clone(),
                provider: ANTHROPIC.into(),
                mode: Mode::Own,
                credential,
                email: Some(format!("{name}@example.com")),
                organization: None,
                binding: None,
                refresh_token_issued_at: None,
            };
            store.create_account(&new, now, CredentialChange::Imported).await.unwrap();
            names.push(name);
        }
        store.close().await;
        drop(store);
        std::fs::create_dir_all(self.data_dir()).unwrap();
        for entry in std::fs::read_dir(&staged).unwrap() {
            let entry = entry.unwrap();
            // SQLite removes its `-wal` and `-shm` files as the last connection closes, which
            // may still be under way: a file gone by now was one of those.
            let copied = match entry.file_type() {
                Ok(t) if t.is_file() => std::fs::copy(entry.path(), self.data_dir().join(entry.file_name())).map(drop),
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = copied {
                assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "cannot copy {}: {e}", entry.path().display());
            }
        }
        names
    }
}

pub fn account_name(i: usize) -> String {
    format!("acct-{i:05}")
}

/// A free loopback port (bound and released; good enough on a quiet loopback).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `tokenkeeper serve`, stopped with SIGTERM when dropped.
pub struct Served {
    pub child: Child,
    /// From spawn to `READY=1`.
    pub time_to_ready: Duration,
}

impl Served {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(mut self) {
        terminate(&mut self.child);
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            terminate(&mut self.child);
        }
    }
}

/// Asks `child` to stop with SIGTERM and reaps it. For nginx this is its fast shutdown, in
/// which the master stops its workers first; SIGKILL would kill only the master and leave the
/// workers running, orphaned, after the bench.
pub fn terminate(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
}

/// Spawns `tokenkeeper serve` and waits (up to `timeout`) for `READY=1` on a notify socket
/// of our own, the way systemd's `Type=notify` does.
pub fn spawn_serve(install: &Install, timeout: Duration) -> Served {
    let socket_path = install.dir.path().join("notify.sock");
    let _ = std::fs::remove_file(&socket_path);
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let log = std::fs::OpenOptions::new().create(true).append(true).open(install.log_path()).unwrap();
    let started = Instant::now();
    let child = install
        .cmd(&["serve"])
        .env("NOTIFY_SOCKET", &socket_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut served = Served { child, time_to_ready: Duration::ZERO };
    let mut buf = [0u8; 512];
    loop {
        if let Ok(n) = socket.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1") {
                served.time_to_ready = started.elapsed();
                return served;
            }
        }
        if let Ok(Some(status)) = served.child.try_wait() {
            panic!("tokenkeeper serve exited with {status} before it was ready; log:\n{}", read_log(install));
        }
        assert!(
            started.elapsed() < timeout,
            "tokenkeeper serve not ready after {timeout:?}; log:\n{}",
            read_log(install)
        );
    }
}

pub fn read_log(install: &Install) -> String {
    std::fs::read_to_string(install.log_path()).unwrap_or_default()
}

/// A field of /proc/PID/status in kB (`VmRSS`, `VmHWM`).
pub fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// utime + stime of a process, in clock ticks (see `cpu_ticks_per_second`).
pub fn cpu_ticks(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name may contain spaces; fields after the closing parenthesis are fixed.
    let rest = &text[text.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 is the state; utime and stime are fields 14 and 15 (1-based over the whole line).
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Clock ticks per second for /proc times (`getconf CLK_TCK`; 100 on Linux everywhere we run).
pub fn cpu_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}
