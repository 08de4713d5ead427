//! The container image and the deployment files, for real.
//!
//! - `image_serves_refreshes_delivers_reaps_and_stops`: builds the Dockerfile's `prebuilt`
//!   stage with podman around the binary this test suite built, on a base made from Debian's
//!   packages (`scripts/container-base`; no image registry is needed), and runs it the way
//!   `deploy/compose/` does: `/health` answers and the image's health check passes; an account
//!   is imported with `podman exec`; a refresh against the mock reaches a second container (a
//!   stand-in bot) through the volume they share, with no restart, and a third one (a bot that
//!   reads its token only at start) is restarted in place by `deploy/compose/restart-on-change`
//!   after `on_change` wrote its trigger (the sinks are `deploy/compose/`'s own config files);
//!   another `on_change` runs and the process it leaves behind is reaped by PID 1 (no zombie);
//!   SIGTERM stops the
//!   container within seconds with exit status 0; no token appears in its log.
//! - `kubernetes_manifests_render_and_validate`: `kustomize build` of the base and of every
//!   overlay, each rendered object checked against the schemas of current Kubernetes
//!   versions (`kubernetes-validate --strict`), and the properties the docs promise (probes,
//!   security context, Secret references, replicas) checked in the rendered objects.
//! - `compose_files_validate`: every file in `deploy/compose/` against the Compose
//!   Specification's schema (`check-jsonschema --builtin-schema vendor.compose-spec`), and the
//!   services and volumes the docs rely on.
//!
//! The tools come from `scripts/test-deps` (podman, runc, mmdebstrap; a venv in `.tools/` with
//! kubernetes-validate and check-jsonschema; kustomize from `kubectl kustomize` or a
//! `kustomize` binary). A missing tool fails the test with the command that installs it: these
//! tests never pass without having run.
//!
//! Podman keeps its images in its own storage under `~/.cache/tokenkeeper/podman` (or
//! `$TOKENKEEPER_CONTAINER_CACHE/podman`), with the settings this kind of machine needs (runc,
//! cgroupfs, no default ulimits); the base image and the build's layers stay cached there
//! between runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokenkeeper_mock::MockProvider;
use tokio::io::AsyncWriteExt;

/// A fixed store key (the one the CLI tests use).
const KEY_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const ADMIN: &str = "tka_container-test-admin-token-0123456789";
/// The uid the compose files run tokenkeeper and the bot as (a Claude Code image's `node`).
const BOT_UID: &str = "1000:1000";
const FIX: &str = "run scripts/test-deps (it installs podman, runc, uidmap, mmdebstrap, the .tools venv)";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("TOKENKEEPER_CONTAINER_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache"));
    base.join("tokenkeeper")
}

/// `name` on PATH, or a failure saying how to install it.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not installed, so the container test cannot run: {FIX}"))
}

/// A tool of the project's Python venv.
fn venv_tool(name: &str) -> PathBuf {
    let p = repo_root().join(".tools/venv/bin").join(name);
    assert!(p.is_file(), "{} is missing, so the deployment files cannot be validated: {FIX}", p.display());
    p
}

/// Runs `cmd` to completion within `timeout`, stdin fed from `input`.
async fn run(mut cmd: tokio::process::Command, input: Option<&[u8]>, timeout: Duration, what: &str) -> Output {
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    if let Some(bytes) = input {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(bytes).await.unwrap();
        drop(stdin);
    }
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(out) => out.unwrap(),
        Err(_) => panic!("{what} did not finish within {timeout:?}"),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// podman with this test's storage and settings.
#[derive(Clone)]
struct Podman {
    bin: PathBuf,
    dir: PathBuf,
}

impl Podman {
    fn new() -> Podman {
        let bin = tool("podman");
        tool("runc");
        let dir = cache_root().join("podman");
        std::fs::create_dir_all(&dir).unwrap();
        // This machine's kind (a container itself) refuses podman's default rlimits and has
        // no systemd to manage cgroups; see docs/DEPLOY.md.
        std::fs::write(
            dir.join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
        )
        .unwrap();
        Podman { bin, dir }
    }

    fn cmd(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.bin);
        c.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .args(args);
        c
    }

    fn blocking(&self, args: &[&str]) -> std::process::Output {
        let mut c = std::process::Command::new(&self.bin);
        c.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .args(args)
            .stdin(Stdio::null());
        c.output().unwrap()
    }

    async fn out(&self, args: &[&str], timeout: Duration) -> Output {
        run(self.cmd(args), None, timeout, &format!("podman {}", args.join(" "))).await
    }

    async fn ok(&self, args: &[&str], timeout: Duration) -> String {
        let out = self.out(args, timeout).await;
        assert_ok(&out, &format!("podman {}", args.join(" ")))
    }
}

/// Removes what one run created, and shows the containers' logs when the test failed.
struct Cleanup {
    podman: Podman,
    containers: Vec<String>,
    volumes: Vec<String>,
    images: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            if std::thread::panicking() {
                let logs = self.podman.blocking(&["logs", c]);
                eprintln!("--- podman logs {c}:\n{}{}", text(&logs.stdout), text(&logs.stderr));
            }
            self.podman.blocking(&["rm", "-f", "-t", "0", c]);
        }
        for v in &self.volumes {
            self.podman.blocking(&["volume", "rm", "-f", v]);
        }
        for i in &self.images {
            self.podman.blocking(&["rmi", "-f", i]);
        }
    }
}

/// The base image from Debian's packages, imported once per recipe.
async fn base_image(podman: &Podman) -> String {
    let script = repo_root().join("scripts/container-base");
    let key = text(&std::process::Command::new(&script).arg("--key").output().unwrap().stdout).trim().to_owned();
    assert!(!key.is_empty(), "scripts/container-base --key printed nothing");
    let tag = format!("localhost/tokenkeeper-base:{key}");
    if podman.out(&["image", "exists", &tag], Duration::from_secs(60)).await.status.success() {
        return tag;
    }
    let mut cmd = tokio::process::Command::new(&script);
    cmd.env("TOKENKEEPER_CONTAINER_CACHE", cache_root());
    let out = run(cmd, None, Duration::from_secs(900), "scripts/container-base").await;
    let tar =
        assert_ok(&out, "scripts/container-base (mmdebstrap of the base image; needs mmdebstrap: scripts/test-deps)");
    podman.ok(&["import", "--quiet", tar.trim(), &tag], Duration::from_secs(300)).await;
    tag
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `probe` every 20 ms until it returns `Some`, for at most `limit`.
async fn wait_until<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Processes in a container: (pid, state letter, parent pid) from `/proc/*/stat`.
async fn processes(podman: &Podman, container: &str) -> Vec<(u32, char, u32)> {
    let out = podman
        .ok(
            &[
                "exec",
                container,
                "sh",
                "-c",
                "for s in /proc/[0-9]*/stat; do read -r l < \"$s\" && echo \"$l\"; done 2>/dev/null",
            ],
            Duration::from_secs(30),
        )
        .await;
    out.lines()
        .filter_map(|l| {
            // `pid (comm) S ppid ...`; comm may hold spaces and parentheses: split at the last ')'.
            let (head, tail) = l.rsplit_once(") ")?;
            let pid = head.split(" (").next()?.parse().ok()?;
            let mut f = tail.split(' ');
            let state = f.next()?.chars().next()?;
            let ppid = f.next()?.parse().ok()?;
            Some((pid, state, ppid))
        })
        .collect()
}

/// `on_change` of the orphan-maker sink: records its run, then leaves a process behind that waits
/// until its parent has exited (so it is re-parented to PID 1), records its new parent and
/// exits. Only PID 1 can reap it.
const ON_CHANGE: &str = r#"echo ran >> /tmp/on_change.log
sh -c 'while kill -0 "$1" 2>/dev/null; do sleep 0.01; done
while read -r k v; do if [ "$k" = PPid: ]; then echo "$$ $v" >> /tmp/orphans; fi; done < /proc/$$/status' orphan "$$" </dev/null >/dev/null 2>&1 &"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_serves_refreshes_delivers_reaps_and_stops() {
    let started = Instant::now();
    let podman = Podman::new();
    let run_id = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()
    );
    let image = format!("localhost/tokenkeeper-test:{run_id}");
    let (tk, bot) = (format!("tk-test-{run_id}"), format!("tk-test-bot-{run_id}"));
    let restarting_bot = format!("tk-test-bot2-{run_id}");
    let (data, claude, bot_token) =
        (format!("tk-test-data-{run_id}"), format!("tk-test-claude-{run_id}"), format!("tk-test-bottoken-{run_id}"));
    let mut cleanup = Cleanup { podman: podman.clone(), containers: vec![], volumes: vec![], images: vec![] };

    // The image: the Dockerfile's prebuilt stage around the binary of this test build.
    let base = base_image(&podman).await;
    let t_base = started.elapsed();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_tokenkeeper"), ctx.path().join("tokenkeeper")).unwrap();
    let dockerfile = repo_root().join("Dockerfile");
    cleanup.images.push(image.clone());
    podman
        .ok(
            &[
                "build",
                "--pull=never",
                "--format=docker",
                "--target=prebuilt",
                &format!("--build-arg=BASE_IMAGE={base}"),
                "--build-arg=BINARY=tokenkeeper",
                "-f",
                dockerfile.to_str().unwrap(),
                "-t",
                &image,
                ctx.path().to_str().unwrap(),
            ],
            Duration::from_secs(600),
        )
        .await;
    let t_build = started.elapsed();
    let config = podman
        .ok(
            &[
                "image",
                "inspect",
                "--format",
                "{{.Config.User}}|{{json .Config.Entrypoint}}|{{json .Config.Cmd}}",
                &image,
            ],
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(
        config.trim(),
        r#"10001:10001|["/usr/bin/tini","--","/usr/local/bin/tokenkeeper"]|["serve"]"#,
        "the image runs as the unprivileged user 10001, under tini, `serve` by default"
    );

    // The world: the mock provider on loopback (the containers share the host's network).
    let mock = MockProvider::start().await.unwrap();
    let login = mock.issue_login("bot@example.com");
    let port = free_port();
    // The sinks of deploy/compose/config.toml and config.restart.toml as shipped, plus a sink
    // whose on_change leaves an orphan behind. Everything else comes from TOKENKEEPER_*.
    let compose = repo_root().join("deploy/compose");
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}\n{}\n[[sinks]]\nname = \"orphan-maker\"\naccount = \"main\"\nkind = \"env_file\"\npath = \"/tmp/orphan-maker.env\"\nkey = \"T\"\ndebounce = \"100ms\"\non_change = [\"sh\", \"-c\", '''{ON_CHANGE}''']\n",
            std::fs::read_to_string(compose.join("config.toml")).unwrap(),
            std::fs::read_to_string(compose.join("config.restart.toml")).unwrap(),
        ),
    )
    .unwrap();

    // As deploy/compose/ does: the volumes handed to the bot's uid by a one-shot root step.
    cleanup.volumes.extend([data.clone(), claude.clone(), bot_token.clone()]);
    for v in [&data, &claude, &bot_token] {
        podman.ok(&["volume", "create", v], Duration::from_secs(30)).await;
    }
    podman
        .ok(
            &[
                "run",
                "--rm",
                "--user=0:0",
                "--entrypoint=chown",
                "--network=none",
                &format!("--volume={data}:/data"),
                &format!("--volume={claude}:/shared/claude"),
                &format!("--volume={bot_token}:/shared/bot"),
                &image,
                BOT_UID,
                "/data",
                "/shared/claude",
                "/shared/bot",
            ],
            Duration::from_secs(60),
        )
        .await;

    // tokenkeeper, locked down as the Kubernetes manifests run it. Secrets reach podman through
    // its environment (`-e NAME` without a value), never through its argv.
    cleanup.containers.push(tk.clone());
    let mut start = podman.cmd(&[
        "run",
        "-d",
        &format!("--name={tk}"),
        "--network=host",
        &format!("--user={BOT_UID}"),
        "--read-only",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        "--health-interval=disable",
        "-e",
        "TOKENKEEPER_KEY",
        "-e",
        "TOKENKEEPER_ADMIN_TOKEN",
        "-e",
        "TOKENKEEPER_LISTEN",
        "-e",
        "TOKENKEEPER_ANTHROPIC_TOKEN_URL",
        "-e",
        "TOKENKEEPER_CONFIG=/etc/tokenkeeper/config.toml",
        &format!("--volume={data}:/data"),
        &format!("--volume={claude}:/shared/claude"),
        &format!("--volume={bot_token}:/shared/bot"),
        &format!("--volume={}:/etc/tokenkeeper/config.toml:ro", cfg.display()),
        &image,
    ]);
    start
        .env("TOKENKEEPER_KEY", KEY_B64)
        .env("TOKENKEEPER_ADMIN_TOKEN", ADMIN)
        .env("TOKENKEEPER_LISTEN", format!("127.0.0.1:{port}"))
        .env("TOKENKEEPER_ANTHROPIC_TOKEN_URL", mock.token_url());
    assert_ok(&run(start, None, Duration::from_secs(120), "podman run tokenkeeper").await, "podman run tokenkeeper");

    // /health answers, and so does the image's own health check.
    let http = reqwest::Client::new();
    let health = wait_until(Duration::from_secs(30), "/health of the container", || {
        let http = http.clone();
        async move {
            let r = http.get(format!("http://127.0.0.1:{port}/health")).send().await.ok()?;
            r.status().is_success().then_some(())?;
            r.json::<Value>().await.ok()
        }
    })
    .await;
    assert_eq!(health, serde_json::json!({"status": "ok"}));
    let t_ready = started.elapsed();
    let hc = podman.out(&["healthcheck", "run", &tk], Duration::from_secs(30)).await;
    assert_ok(&hc, "podman healthcheck run (the image's HEALTHCHECK)");

    // An account, imported with `podman exec`.
    let login_json = tokenkeeper_keeper::testing::claude_json(&login);
    let import = run(
        podman.cmd(&["exec", "-i", &tk, "tokenkeeper", "import", "-", "--account", "main"]),
        Some(login_json.as_bytes()),
        Duration::from_secs(60),
        "podman exec tokenkeeper import",
    )
    .await;
    assert_ok(&import, "podman exec tokenkeeper import -");

    // The stand-in bot: another container, the shared volume mounted read-only where Claude
    // Code keeps its credentials, no network, started once.
    cleanup.containers.push(bot.clone());
    podman
        .ok(
            &[
                "run",
                "-d",
                &format!("--name={bot}"),
                "--network=none",
                &format!("--user={BOT_UID}"),
                "--read-only",
                "--cap-drop=ALL",
                &format!("--volume={claude}:/home/node/.claude:ro"),
                "--entrypoint=sh",
                &base,
                "-c",
                "trap 'exit 0' TERM; while :; do sleep 1; done",
            ],
            Duration::from_secs(60),
        )
        .await;
    // The other stand-in: a bot that reads its token only at start, run under
    // deploy/compose/restart-on-change as compose.restart.yaml runs it.
    cleanup.containers.push(restarting_bot.clone());
    let wrapper = compose.join("restart-on-change");
    podman
        .ok(
            &[
                "run",
                "-d",
                &format!("--name={restarting_bot}"),
                "--network=none",
                &format!("--user={BOT_UID}"),
                "--read-only",
                "--cap-drop=ALL",
                "-e",
                "RESTART_ON_CHANGE_INTERVAL=0.05",
                &format!("--volume={bot_token}:/run/tokenkeeper:ro"),
                &format!("--volume={}:/opt/tokenkeeper/restart-on-change:ro", wrapper.display()),
                "--entrypoint=/bin/sh",
                &base,
                "/opt/tokenkeeper/restart-on-change",
                "/run/tokenkeeper/.env",
                "/run/tokenkeeper/restart",
                "--",
                "sh",
                "-c",
                "printf '%s\\n' \"$CLAUDE_CODE_OAUTH_TOKEN\" >> /tmp/started-with; exec sleep 1000",
            ],
            Duration::from_secs(60),
        )
        .await;
    let bot_reads = |podman: Podman, bot: String| async move {
        let creds =
            podman.out(&["exec", &bot, "cat", "/home/node/.claude/.credentials.json"], Duration::from_secs(30)).await;
        let env = podman
            .out(
                &["exec", &bot, "sh", "-c", ". /home/node/.claude/.env && printf %s \"$CLAUDE_CODE_OAUTH_TOKEN\""],
                Duration::from_secs(30),
            )
            .await;
        if !creds.status.success() || !env.status.success() {
            return None;
        }
        let json: Value = serde_json::from_slice(&creds.stdout).ok()?;
        let access = json["claudeAiOauth"]["accessToken"].as_str()?.to_owned();
        let refresh = json["claudeAiOauth"]["refreshToken"].as_str().unwrap_or_default().to_owned();
        Some((access, refresh, text(&env.stdout)))
    };
    let first = wait_until(Duration::from_secs(30), "the imported token in the bot's files", || {
        let f = bot_reads(podman.clone(), bot.clone());
        let want = login.access_token.clone();
        async move { f.await.filter(|(a, _, e)| *a == want && *e == want) }
    })
    .await;
    assert_eq!(first.0, login.access_token);

    // A refresh against the mock; the bot reads the new token from the same files, unrestarted.
    let refresh = podman
        .out(&["exec", &tk, "tokenkeeper", "refresh", "--account", "main", "--force"], Duration::from_secs(60))
        .await;
    assert_ok(&refresh, "podman exec tokenkeeper refresh --force");
    assert_eq!(mock.counts().refresh_ok, 1, "exactly one refresh reached the provider");
    let (new_access, new_refresh, _) =
        wait_until(Duration::from_secs(30), "the refreshed token in the bot's files", || {
            let f = bot_reads(podman.clone(), bot.clone());
            let old = login.access_token.clone();
            async move { f.await.filter(|(a, _, e)| *a != old && e == a) }
        })
        .await;
    assert!(mock.is_access_token_valid(&new_access), "the bot holds a token the provider issued and accepts");
    assert_ne!(new_refresh, login.refresh_token, "the rotated refresh token was delivered");
    let bot_state = podman
        .ok(&["inspect", "--format", "{{.State.Running}} {{.RestartCount}}", &bot], Duration::from_secs(30))
        .await;
    assert_eq!(bot_state.trim(), "true 0", "the bot was never restarted");
    let t_delivered = started.elapsed();
    // The restarting bot was restarted in place (same container) and now runs with the new token.
    let starts = wait_until(Duration::from_secs(30), "the restarting bot to run with the refreshed token", || {
        let podman = podman.clone();
        let bot = restarting_bot.clone();
        let want = new_access.clone();
        async move {
            let out = podman.out(&["exec", &bot, "cat", "/tmp/started-with"], Duration::from_secs(30)).await;
            let starts: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
            (starts.last() == Some(&want)).then_some(starts)
        }
    })
    .await;
    assert!(
        starts.len() >= 2,
        "the bot started with the first token, then again with the new one ({} starts)",
        starts.len()
    );
    let state = podman
        .ok(&["inspect", "--format", "{{.State.Running}} {{.RestartCount}}", &restarting_bot], Duration::from_secs(30))
        .await;
    assert_eq!(state.trim(), "true 0", "restart-on-change restarted the process, not the container");
    let term_at = Instant::now();
    podman.ok(&["kill", "--signal=TERM", &restarting_bot], Duration::from_secs(30)).await;
    podman.ok(&["wait", &restarting_bot], Duration::from_secs(10)).await;
    assert!(term_at.elapsed() < Duration::from_secs(5), "restart-on-change passes SIGTERM on");

    // The orphan-maker's on_change ran, and what it left behind was re-parented to PID 1 and reaped: no zombie.
    let orphans =
        wait_until(Duration::from_secs(30), "the orphan-maker's on_change to run and its orphan to finish", || {
            let podman = podman.clone();
            let tk = tk.clone();
            async move {
                let out = podman
                    .out(&["exec", &tk, "cat", "/tmp/on_change.log", "/tmp/orphans"], Duration::from_secs(30))
                    .await;
                out.status.success().then_some(())?;
                let lines: Vec<(u32, u32)> = text(&out.stdout)
                    .lines()
                    .filter_map(|l| {
                        let (p, pp) = l.split_once(' ')?;
                        Some((p.parse().ok()?, pp.parse().ok()?))
                    })
                    .collect();
                (!lines.is_empty()).then_some(lines)
            }
        })
        .await;
    for (pid, ppid) in &orphans {
        assert_eq!(*ppid, 1, "the process on_change left behind (pid {pid}) was re-parented to PID 1");
    }
    let pid1 = podman.ok(&["exec", &tk, "cat", "/proc/1/comm"], Duration::from_secs(30)).await;
    assert_eq!(pid1.trim(), "tini", "PID 1 is tini");
    let procs = wait_until(Duration::from_secs(10), "every orphan to be reaped (no zombie)", || {
        let podman = podman.clone();
        let tk = tk.clone();
        let orphans = orphans.clone();
        async move {
            let procs = processes(&podman, &tk).await;
            let left = procs.iter().any(|(pid, state, _)| *state == 'Z' || orphans.iter().any(|(o, _)| o == pid));
            (!left).then_some(procs)
        }
    })
    .await;
    assert!(procs.iter().any(|(pid, _, _)| *pid == 1), "the process list was read: {procs:?}");

    // SIGTERM stops it within seconds, exit status 0.
    let term_at = Instant::now();
    podman.ok(&["kill", "--signal=TERM", &tk], Duration::from_secs(30)).await;
    let status = podman.ok(&["wait", &tk], Duration::from_secs(10)).await;
    let stop_time = term_at.elapsed();
    assert_eq!(status.trim(), "0", "tokenkeeper exits 0 on SIGTERM");
    assert!(stop_time < Duration::from_secs(5), "SIGTERM took {stop_time:?} to stop the container");

    // Nothing secret in the container's log.
    let logs = podman.out(&["logs", &tk], Duration::from_secs(30)).await;
    let logs = format!("{}{}", text(&logs.stdout), text(&logs.stderr));
    assert!(logs.contains("SIGTERM"), "the log shows the shutdown: {logs}");
    for secret in [login.access_token.as_str(), &login.refresh_token, &new_access, &new_refresh, KEY_B64, ADMIN] {
        assert!(!logs.contains(secret), "a secret appeared in the container's log");
    }

    mock.stop().await;
    eprintln!(
        "container test: base image ready {:.1?}, image built {:.1?}, /health {:.1?}, token delivered {:.1?}, \
         SIGTERM to exit {:.1?}, total {:.1?}",
        t_base,
        t_build,
        t_ready,
        t_delivered,
        stop_time,
        started.elapsed()
    );
}

/// `kustomize build DIR`: a `kustomize` binary, else the one built into `kubectl`.
fn kustomize_build(dir: &Path) -> String {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let find = |name: &str| std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file());
    let mut cmd = if let Some(k) = find("kustomize") {
        let mut c = std::process::Command::new(k);
        c.arg("build");
        c
    } else if let Some(k) = find("kubectl") {
        let mut c = std::process::Command::new(k);
        c.arg("kustomize");
        c
    } else {
        panic!("neither `kustomize` nor `kubectl` (which has kustomize built in) is installed: {FIX}");
    };
    let out = cmd.arg(dir).output().unwrap();
    assert_ok(&out, &format!("kustomize build {}", dir.display()))
}

/// Every object of a multi-document YAML stream, as JSON values.
fn objects(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(doc).unwrap();
            serde_json::to_value(v).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"].as_str().is_some_and(|n| n == name))
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"))
}

/// `labels` ⊆ `of`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let sel = selector.as_object().expect("a selector is a map");
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// `kubernetes-validate --strict` of `file` against Kubernetes `version`; returns its verdict.
fn kubernetes_validate(file: &Path, version: &str) -> Output {
    std::process::Command::new(venv_tool("kubernetes-validate"))
        .args(["--strict", "--quiet", "--kubernetes-version", version])
        .arg(file)
        .output()
        .unwrap()
}

/// Kubernetes versions the manifests are checked against: the newest the validator ships
/// schemas for (its default) and an older release still in wide use.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.37.0", "1.31.0"];

#[test]
fn kubernetes_manifests_render_and_validate() {
    // A copy, so the generators' input files (kept out of git: they hold secrets) can be made
    // from their examples without touching the work tree.
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("kubernetes");
    copy_tree(&repo_root().join("deploy/kubernetes"), &tree);
    for (example, real) in [
        ("base/secrets.env.example", "base/secrets.env"),
        ("overlays/postgres/store.env.example", "overlays/postgres/store.env"),
    ] {
        std::fs::copy(tree.join(example), tree.join(real)).unwrap();
    }

    let mut rendered = vec![("base".to_owned(), kustomize_build(&tree.join("base")))];
    let mut overlays: Vec<_> = std::fs::read_dir(tree.join("overlays")).unwrap().map(|e| e.unwrap().path()).collect();
    overlays.sort();
    assert!(!overlays.is_empty(), "deploy/kubernetes/overlays/ holds the overlays");
    for o in &overlays {
        rendered.push((format!("overlays/{}", o.file_name().unwrap().to_string_lossy()), kustomize_build(o)));
    }

    // Every rendered object against the schemas (strict: no unknown field passes).
    for (name, yaml) in &rendered {
        let file = tmp.path().join(format!("{}.yaml", name.replace('/', "-")));
        std::fs::write(&file, yaml).unwrap();
        for version in KUBERNETES_VERSIONS {
            let out = kubernetes_validate(&file, version);
            assert_ok(&out, &format!("kubernetes-validate --strict of {name} against Kubernetes {version}"));
        }
    }
    // The validator is not a rubber stamp: a misspelt field in the Deployment fails it.
    let broken = rendered[0].1.replacen("  strategy:\n", "  stratgey:\n", 1);
    assert_ne!(broken, rendered[0].1, "the base renders a Deployment strategy to misspell");
    let file = tmp.path().join("broken.yaml");
    std::fs::write(&file, broken).unwrap();
    assert!(
        !kubernetes_validate(&file, KUBERNETES_VERSIONS[0]).status.success(),
        "kubernetes-validate rejects an unknown field"
    );

    // What the docs promise, in the base.
    let base = objects(&rendered[0].1);
    let deploy = find(&base, "Deployment", "tokenkeeper");
    assert_eq!(deploy["spec"]["replicas"], 1);
    assert_eq!(deploy["spec"]["strategy"]["type"], "Recreate", "never two SQLite keepers at once");
    let secret = base.iter().find(|o| o["kind"] == "Secret").expect("the base generates the Secret");
    let secret_name = secret["metadata"]["name"].as_str().unwrap();
    for key in ["store-key", "admin-token"] {
        assert!(secret["data"].get(key).is_some(), "the Secret holds {key}");
    }
    let pod = &deploy["spec"]["template"];
    check_pod(pod, secret_name, &["TOKENKEEPER_KEY", "TOKENKEEPER_ADMIN_TOKEN"]);
    let c = &pod["spec"]["containers"][0];
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["httpGet"]["path"], "/health", "{probe} probes /health");
        assert!(c[probe]["httpGet"].get("httpHeaders").is_none(), "{probe} needs no secret");
    }
    let claim = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|v| v["persistentVolumeClaim"]["claimName"].as_str());
    find(&base, "PersistentVolumeClaim", claim.expect("the data volume is a PersistentVolumeClaim"));
    let labels = &pod["metadata"]["labels"];
    assert!(selects(&deploy["spec"]["selector"]["matchLabels"], labels));
    assert!(
        selects(&find(&base, "Service", "tokenkeeper")["spec"]["selector"], labels),
        "the Service selects the pods"
    );
    let np = find(&base, "NetworkPolicy", "tokenkeeper-server");
    assert!(selects(&np["spec"]["podSelector"]["matchLabels"], labels), "the NetworkPolicy covers the pods");
    assert_eq!(np["spec"]["ingress"][0]["ports"][0]["port"], 8377);
    let cron = find(&base, "CronJob", "tokenkeeper-check");
    assert_eq!(cron["spec"]["concurrencyPolicy"], "Forbid");
    let job_pod = &cron["spec"]["jobTemplate"]["spec"]["template"];
    assert_eq!(job_pod["spec"]["containers"][0]["args"], serde_json::json!(["check"]));
    check_pod(job_pod, secret_name, &["TOKENKEEPER_KEY"]);
    assert!(
        selects(
            &job_pod["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
                ["labelSelector"]["matchLabels"],
            labels
        ),
        "the check runs beside the server, on its ReadWriteOnce volume"
    );

    // The PostgreSQL overlay: three replicas, the store URL from a Secret, no SQLite volume.
    let (_, pg_yaml) = rendered.iter().find(|(n, _)| n == "overlays/postgres").expect("overlays/postgres exists");
    let pg = objects(pg_yaml);
    let deploy = find(&pg, "Deployment", "tokenkeeper");
    assert_eq!(deploy["spec"]["replicas"], 3);
    assert_eq!(deploy["spec"]["strategy"]["type"], "RollingUpdate");
    assert!(pg.iter().all(|o| o["kind"] != "PersistentVolumeClaim"), "no PVC with PostgreSQL");
    let store = pg
        .iter()
        .find(|o| o["kind"] == "Secret" && o["data"].get("store-url").is_some())
        .expect("the overlay generates the store URL's Secret");
    let store_name = store["metadata"]["name"].as_str().unwrap();
    for pod in [
        &deploy["spec"]["template"],
        &find(&pg, "CronJob", "tokenkeeper-check")["spec"]["jobTemplate"]["spec"]["template"],
    ] {
        let env = &pod["spec"]["containers"][0]["env"];
        let url = env
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "TOKENKEEPER_STORE_URL")
            .expect("TOKENKEEPER_STORE_URL is set");
        assert_eq!(url["valueFrom"]["secretKeyRef"]["name"], store_name);
        assert_eq!(url["valueFrom"]["secretKeyRef"]["key"], "store-url");
        assert!(
            pod["spec"]["volumes"].as_array().unwrap().iter().all(|v| v.get("persistentVolumeClaim").is_none()),
            "no pod mounts a PVC with PostgreSQL"
        );
        assert!(pod["spec"].get("affinity").is_none(), "nothing ties the pods to one node");
    }
    let pdb = find(&pg, "PodDisruptionBudget", "tokenkeeper");
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], &deploy["spec"]["template"]["metadata"]["labels"]));
    let egress = serde_json::to_string(&find(&pg, "NetworkPolicy", "tokenkeeper-server")["spec"]["egress"]).unwrap();
    assert!(egress.contains("5432"), "the server may reach PostgreSQL: {egress}");
}

/// The security context, non-root user and Secret-sourced environment of one pod template.
fn check_pod(pod: &Value, secret: &str, from_secret: &[&str]) {
    let spec = &pod["spec"];
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(spec["securityContext"]["runAsUser"], 10001, "the image's user");
    assert_eq!(spec["securityContext"]["fsGroup"], 10001, "volumes writable by the image's user");
    assert_eq!(spec["automountServiceAccountToken"], false);
    let c = &spec["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    for name in from_secret {
        let e =
            c["env"].as_array().unwrap().iter().find(|e| e["name"] == *name).unwrap_or_else(|| panic!("{name} is set"));
        assert_eq!(e["valueFrom"]["secretKeyRef"]["name"], secret, "{name} comes from the Secret");
        assert!(e.get("value").is_none(), "{name} is not written into the manifest");
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn check_compose_schema(file: &Path) -> Output {
    std::process::Command::new(venv_tool("check-jsonschema"))
        .args(["--builtin-schema", "vendor.compose-spec"])
        .arg(file)
        .output()
        .unwrap()
}

#[test]
fn compose_files_validate() {
    let dir = repo_root().join("deploy/compose");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name().unwrap().to_string_lossy().starts_with("compose")
                && p.extension().is_some_and(|x| x == "yaml")
        })
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "compose.yaml and compose.restart.yaml: {files:?}");
    for f in &files {
        assert_ok(&check_compose_schema(f), &format!("check-jsonschema (Compose Specification) of {}", f.display()));
    }
    // The schema check rejects what Compose would.
    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("compose.yaml");
    let text = std::fs::read_to_string(&files[0]).unwrap().replacen(
        "condition: service_healthy",
        "condition: service_feeling_fine",
        1,
    );
    std::fs::write(&broken, text).unwrap();
    assert!(
        !check_compose_schema(&broken).status.success(),
        "check-jsonschema rejects an unknown depends_on condition"
    );

    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let doc = &objects(&std::fs::read_to_string(f).unwrap())[0];
        let services = &doc["services"];
        let tk = &services["tokenkeeper"];
        let bot = &services["bot"];
        let init = &services["volumes-init"];
        assert_eq!(
            tk["user"], bot["user"],
            "{name}: tokenkeeper runs as the bot's uid, so both can use the 0600 files"
        );
        assert_eq!(init["entrypoint"][0], "chown", "{name}: volumes-init hands the volumes to that uid");
        assert_eq!(tk["depends_on"]["volumes-init"]["condition"], "service_completed_successfully");
        assert_eq!(
            bot["depends_on"]["tokenkeeper"]["condition"], "service_healthy",
            "{name}: the image's health check gates the bot"
        );
        assert_eq!(tk["read_only"], true);
        assert_eq!(tk["cap_drop"], serde_json::json!(["ALL"]));
        let mounts = |svc: &Value| -> Vec<(String, String)> {
            svc["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| {
                    let s = v.as_str().expect("short volume syntax");
                    let mut p = s.split(':');
                    (p.next().unwrap().to_owned(), p.next().unwrap().to_owned())
                })
                .collect()
        };
        for svc in ["tokenkeeper", "bot", "volumes-init"] {
            for (src, _) in mounts(&services[svc]) {
                assert!(!src.contains("docker.sock"), "{name}: {svc} gets no Docker socket");
                if src.starts_with("./") {
                    assert!(dir.join(&src).is_file(), "{name}: {svc} mounts {src}, which exists");
                } else {
                    assert!(doc["volumes"].get(&src).is_some(), "{name}: volume {src} is declared");
                }
            }
        }
        // The volume the bot reads is one tokenkeeper writes, and volumes-init owns it over.
        let tk_mounts = mounts(tk);
        let shared: Vec<_> =
            mounts(bot).into_iter().filter(|(src, _)| tk_mounts.iter().any(|(s, _)| s == src)).collect();
        assert_eq!(shared.len(), 1, "{name}: the bot shares one volume with tokenkeeper");
        let (vol, _) = &shared[0];
        let (_, tk_path) = tk_mounts.iter().find(|(s, _)| s == vol).unwrap();
        assert!(
            init["entrypoint"].as_array().unwrap().iter().any(|a| a == tk_path.as_str()),
            "{name}: volumes-init chowns {tk_path}"
        );
        let config = tk_mounts
            .iter()
            .find(|(_, dst)| dst == "/etc/tokenkeeper/config.toml")
            .expect("the config file is mounted");
        let config_text = std::fs::read_to_string(dir.join(&config.0)).unwrap();
        assert!(
            config_text.contains(&format!("path = \"{tk_path}/")),
            "{name}: the sinks write into the shared volume"
        );
    }
    let restart = &objects(&std::fs::read_to_string(dir.join("compose.restart.yaml")).unwrap())[0]["services"]["bot"];
    assert_eq!(restart["entrypoint"][1], "/opt/tokenkeeper/restart-on-change");
    assert_eq!(restart["init"], true, "an init passes SIGTERM on to the wrapper");
}
