//! A throwaway PostgreSQL cluster for tests: one per test binary, started on first use,
//! a fresh database per test, gone when the binary ends.
//!
//! [`Cluster::get`] runs `initdb` into a new directory under the system temporary directory
//! (`tokenkeeper-pg-*`) and `pg_ctl start`s a server there that listens only on a Unix socket in
//! that directory (no TCP port, so parallel runs never collide), with durability off (tests do
//! not survive power loss anyway). Run as root, it runs PostgreSQL (which refuses root) as
//! `nobody`, owning the directory.
//!
//! Cleanup does not depend on the test binary ending well: a small supervisor process, started
//! with the cluster in a process group of its own, waits for the binary's end of a pipe to close
//! (which the kernel does however the binary ends: success, panic, SIGKILL), then stops the
//! server (`pg_ctl stop -m immediate`) and removes the directory. A cluster whose supervisor was
//! killed too is swept by the next run (its owner pid is dead), and PostgreSQL itself shuts down
//! within a minute once its directory is gone.
//!
//! The binaries are looked for in `$TOKENKEEPER_PG_BIN`, then the newest
//! `/usr/lib/postgresql/*/bin` (Debian's layout), then `PATH`. If PostgreSQL cannot be found or
//! started, the test fails and says to run `scripts/test-deps`.

// Test support: a broken set-up should stop the test with its message, right there.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};

/// The superuser `initdb` creates (trusted on the socket, which only the cluster's owner and
/// root can reach).
pub const SUPERUSER: &str = "tokenkeeper";

/// Prefix of cluster directories in the temporary directory.
const DIR_PREFIX: &str = "tokenkeeper-pg-";

/// What to tell someone whose machine lacks PostgreSQL.
const HELP: &str = "the PostgreSQL tests need PostgreSQL's server binaries (initdb, pg_ctl, postgres): run \
                    scripts/test-deps (Debian package `postgresql`), or point TOKENKEEPER_PG_BIN at their directory";

/// A running throwaway cluster (see the module docs).
pub struct Cluster {
    /// The cluster's directory: `data/` (the cluster), the socket, `server.log`, `owner`.
    dir: PathBuf,
    /// Where the binaries are.
    bin: PathBuf,
    /// Held open for the life of the process: its closing tells the supervisor to clean up.
    _lifeline: Mutex<ChildStdin>,
    /// Never waited for: it outlives this process on purpose (reparented to init, which reaps it).
    _supervisor: Mutex<Child>,
    next_database: AtomicU32,
    /// How long starting it took (initdb included), for reports.
    pub started_in: Duration,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

impl Cluster {
    /// The cluster of this test binary, started on first use. Blocks while starting (a second or
    /// two); panics with what to do if PostgreSQL is missing or does not start.
    pub fn get() -> &'static Cluster {
        CLUSTER.get_or_init(Cluster::start)
    }

    /// Options to connect to `database` as the superuser, over the cluster's socket.
    pub fn options(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .socket(&self.dir)
            .port(5432)
            .username(SUPERUSER)
            .database(database)
            .disable_statement_logging()
    }

    /// The URL of `database`, as a user would write it in `[store] url`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@localhost:5432/{database}?host={}", self.dir.display())
    }

    /// The cluster's directory (its socket lives there).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of the PostgreSQL binaries in use.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Creates a new, empty database and returns options to connect to it.
    pub async fn create_database(&self) -> PgConnectOptions {
        let n = self.next_database.fetch_add(1, Ordering::Relaxed);
        let name = format!("t{}_{n}", std::process::id());
        let mut admin = PgConnection::connect_with(&self.options("postgres"))
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test cluster in {}: {e}", self.dir.display()));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
        admin.close().await.ok();
        self.options(&name)
    }

    fn start() -> Cluster {
        let began = Instant::now();
        let bin = find_binaries().unwrap_or_else(|| panic!("{HELP}"));
        let owner = unprivileged_owner();
        sweep_stale_clusters(&bin, owner);
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a directory for the test cluster: {e}"))
            .keep();
        std::fs::write(dir.join("owner"), std::process::id().to_string()).expect("write the owner file");
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("give the cluster directory to nobody");
        }
        // The supervisor first, so even a failed start is cleaned up.
        let (supervisor, lifeline) = start_supervisor(&bin, &dir, owner);
        let data = dir.join("data");
        run(
            as_owner(Command::new(bin.join("initdb")), owner, &dir).arg("--pgdata").arg(&data).args([
                "--username",
                SUPERUSER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
            ]),
            "initdb",
        );
        let server_options = format!(
            "-c listen_addresses='' -k {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
             -c max_connections=300 -c shared_buffers=32MB",
            dir.display()
        );
        run(
            as_owner(Command::new(bin.join("pg_ctl")), owner, &dir)
                .args(["start", "--wait", "--timeout", "60", "--silent", "--pgdata"])
                .arg(&data)
                .arg("--log")
                .arg(dir.join("server.log"))
                .args(["-o", &server_options]),
            "pg_ctl start",
        );
        Cluster {
            dir,
            bin,
            _lifeline: Mutex::new(lifeline),
            _supervisor: Mutex::new(supervisor),
            next_database: AtomicU32::new(0),
            started_in: began.elapsed(),
        }
    }
}

/// `$TOKENKEEPER_PG_BIN`, the newest `/usr/lib/postgresql/*/bin`, or the directory of `initdb`
/// on `PATH`: the first holding `initdb` and `pg_ctl`.
fn find_binaries() -> Option<PathBuf> {
    let usable = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("TOKENKEEPER_PG_BIN").map(PathBuf::from) {
        return usable(&dir).then_some(dir);
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| usable(dir))
        .collect();
    debian.sort();
    if let Some((_, dir)) = debian.pop() {
        return Some(dir);
    }
    std::env::split_paths(&std::env::var_os("PATH")?).find(|dir| usable(dir))
}

/// As root, `nobody`'s uid and gid (PostgreSQL refuses to run as root); otherwise `None`: the
/// cluster runs as the current user.
fn unprivileged_owner() -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("running as root, the test cluster needs the user `nobody` to run PostgreSQL"));
    Some((nobody.uid.as_raw(), nobody.gid.as_raw()))
}

/// `command`, run as `owner` (dropping root's groups too) in `dir`, with nothing of this
/// process's environment that could point PostgreSQL elsewhere.
fn as_owner(mut command: Command, owner: Option<(u32, u32)>, dir: &Path) -> Command {
    command.current_dir(dir).env_clear().env("PATH", "/usr/bin:/bin").env("LC_ALL", "C");
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
    command
}

fn run(command: &mut Command, what: &str) {
    let output = command.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {what} ({e}); {HELP}"));
    if !output.status.success() {
        panic!(
            "{what} failed ({}): {}{}\n{HELP}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Starts the process that cleans up after this one: it reads its stdin until EOF (the write
/// end is ours, close-on-exec, so only our exit closes it), then stops the server and removes
/// the directory. In a process group of its own, so a Ctrl-C aimed at the tests spares it.
fn start_supervisor(bin: &Path, dir: &Path, owner: Option<(u32, u32)>) -> (Child, ChildStdin) {
    let script = r#"cat >/dev/null; "$0" stop --pgdata "$1/data" --mode immediate >/dev/null 2>&1; rm -rf "$1""#;
    let mut child = as_owner(Command::new("/bin/sh"), owner, dir)
        .current_dir("/")
        .arg("-c")
        .arg(script)
        .arg(bin.join("pg_ctl"))
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the test cluster's supervisor: {e}"));
    let lifeline = child.stdin.take().expect("the supervisor's stdin is piped");
    (child, lifeline)
}

/// Stops and removes clusters left by runs whose process is gone (their supervisor was killed
/// with them). Only directories with our prefix and an `owner` file naming a dead process.
fn sweep_stale_clusters(bin: &Path, owner: Option<(u32, u32)>) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let is_ours = entry.file_name().to_str().is_some_and(|name| name.starts_with(DIR_PREFIX));
        let mut pid = String::new();
        let read = std::fs::File::open(dir.join("owner")).and_then(|mut f| f.read_to_string(&mut pid));
        let Ok(pid) = pid.trim().parse::<u32>() else {
            continue;
        };
        if !is_ours || read.is_err() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = as_owner(Command::new(bin.join("pg_ctl")), owner, Path::new("/"))
            .args(["stop", "--mode", "immediate", "--pgdata"])
            .arg(dir.join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
