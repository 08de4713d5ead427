//! The server through the real binary: `keys`, `server token`, `serve` with the HTTP API
//! beside the daemon, `push --server` and `login --push` from a second data directory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Stdio};

use common::{stderr, stdout, World};
use tokenkeeper_core::Store;

const ADMIN: &str = "tka_cli-test-admin-token-0123456789";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `tokenkeeper serve` on a free loopback port, with the admin token from the environment.
fn spawn_serve(w: &World, port: u16) -> Child {
    spawn_serve_with(w, port, "")
}

/// [`spawn_serve`] with more configuration after `[server]`.
fn spawn_serve_with(w: &World, port: u16, more_config: &str) -> Child {
    w.write_config(&format!("[server]\nlisten = \"127.0.0.1:{port}\"\n{more_config}"));
    let log = std::fs::OpenOptions::new().create(true).append(true).open(w.dir.path().join("serve.log")).unwrap();
    let ready = common::Ready::new();
    let child = ready
        .attach(&mut w.cmd(&["serve"]))
        .env("TOKENKEEPER_ADMIN_TOKEN", ADMIN)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    ready.wait("serve");
    child
}

fn serve_log(w: &World) -> String {
    std::fs::read_to_string(w.dir.path().join("serve.log")).unwrap_or_default()
}

fn stop(mut child: Child) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "serve exited with {status:?}");
}

/// A second data directory: the laptop that pushes.
fn laptop(w: &World) -> PathBuf {
    w.dir.path().join("laptop-data")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_created_once_listed_without_secrets_and_revoked() {
    let w = World::new().await;
    let out = w.run(&["keys", "create", "--name", "bot", "--scope", "token:read", "--account", "main"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let key = stdout(&out).trim().to_owned();
    assert!(key.starts_with("tk_") && key.len() > 60, "{key}");
    assert!(stderr(&out).contains("shown only now"));
    let list = w.ok(&["keys", "list"], "");
    assert!(
        list.contains("bot") && list.contains("token:read") && list.contains("main") && list.contains("active"),
        "{list}"
    );
    assert!(!list.contains(&key[10..]), "the key is never listed");
    let json: serde_json::Value = serde_json::from_str(&w.ok(&["keys", "list", "--json"], "")).unwrap();
    assert_eq!(json[0]["name"], "bot");
    assert!(!json.to_string().contains(&key[10..]));
    // Only the hash is stored.
    let stored = w.store().await.list_api_keys().await.unwrap();
    assert_eq!(stored[0].hash, tokenkeeper_server::auth::hash_key(&key));
    // Bad input is explained.
    let out = w.run(&["keys", "create", "--name", "x", "--scope", "tokens:read"], "");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("token:read"), "{}", stderr(&out));
    let out = w.run(&["keys", "create", "--name", "bot", "--scope", "push"], "");
    assert!(stderr(&out).contains("exists already"), "{}", stderr(&out));
    // Revoke by name.
    w.ok(&["keys", "revoke", "bot"], "");
    assert!(w.ok(&["keys", "list"], "").contains("revoked"));
    let out = w.run(&["keys", "revoke", "nobody"], "");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(w.transcript_text().matches(&key[10..]).count(), 1, "the key is printed once, at creation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_token_is_generated_once_private_and_overridable() {
    let w = World::new().await;
    let a = w.ok(&["server", "token"], "").trim().to_owned();
    assert!(a.starts_with("tka_"), "{a}");
    assert_eq!(w.ok(&["server", "token"], "").trim(), a);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(w.data_dir().join("admin-token")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let out = w.cmd(&["server", "token"]).env("TOKENKEEPER_ADMIN_TOKEN", "from-env").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "from-env");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_runs_the_api_and_push_sends_a_local_credential_to_it() {
    let w = World::new().await;
    let port = free_port();
    let server = spawn_serve(&w, port);
    let url = format!("http://127.0.0.1:{port}");
    // The API is up beside the daemon.
    let health = reqwest::get(format!("{url}/health")).await.unwrap();
    assert_eq!(health.status(), 200);
    let status = reqwest::Client::new().get(format!("{url}/api/status")).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(status.status(), 200);

    // A push key, kept in a file on the laptop.
    let key = w.ok(&["keys", "create", "--name", "laptop", "--scope", "push"], "").trim().to_owned();
    let key_file = w.dir.path().join("push.key");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();

    let (json, t) = w.claude_json("me@example.com");
    let run_push = |args: &[&str], stdin: &str| {
        let mut c = w
            .cmd(args)
            .env("TOKENKEEPER_DATA_DIR", laptop(&w))
            .env("TOKENKEEPER_KEY_FILE", &key_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        c.wait_with_output().unwrap()
    };
    let out = run_push(&["push", "--server", &url, "-"], &json);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("created account `main`"), "{}", stderr(&out));
    let stored = w.store().await.get_account("main").await.unwrap().unwrap();
    assert_eq!(stored.credential.access_token.expose(), t.access_token);
    assert!(!laptop(&w).exists(), "push keeps no local copy");

    // The Claude Code file (the default source), holding what the server has already.
    std::fs::write(w.claude_file(), &json).unwrap();
    let out = run_push(&["push", "--server", &url], "");
    assert!(out.status.success(), "same credential again is fine: {}", stderr(&out));
    assert!(stderr(&out).contains("unchanged"), "{}", stderr(&out));

    // Without a key file: a clear error, nothing sent.
    let out = w.cmd(&["push", "--server", &url, "-"]).env("TOKENKEEPER_DATA_DIR", laptop(&w)).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--key-file"), "{}", stderr(&out));

    // A key without the push scope is refused by the server with its hint.
    let read_key = w.ok(&["keys", "create", "--name", "reader", "--scope", "status:read"], "").trim().to_owned();
    std::fs::write(&key_file, &read_key).unwrap();
    let out = run_push(&["push", "--server", &url, "-"], &json);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("403") && stderr(&out).contains("--scope push"), "{}", stderr(&out));

    // The key never appears in argv, and no token in any output.
    for argv in w.argvs.lock().unwrap().iter() {
        assert!(!argv.iter().any(|a| a.contains(&key[10..])), "key in argv {argv:?}");
    }
    stop(server);
    let log = serve_log(&w);
    assert!(!log.contains(&t.access_token) && !log.contains(&t.refresh_token), "token in the serve log");
    assert!(!log.contains(ADMIN), "admin token in the serve log");
    assert!(log.contains("HTTP API listening"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_push_logs_in_here_and_stores_only_on_the_server() {
    let w = World::new().await;
    let port = free_port();
    let server = spawn_serve(&w, port);
    let url = format!("http://127.0.0.1:{port}");
    let key = w.ok(&["keys", "create", "--name", "laptop", "--scope", "push"], "").trim().to_owned();
    let key_file = w.dir.path().join("push.key");
    std::fs::write(&key_file, &key).unwrap();

    let mut child = w
        .cmd(&["login", "--push", &url, "--key-file", key_file.to_str().unwrap(), "--account", "work"])
        .env("TOKENKEEPER_DATA_DIR", laptop(&w))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let authorize = loop {
        let mut line = String::new();
        assert!(err.read_line(&mut line).unwrap() > 0, "login ended before printing a URL");
        if let Some(u) = line.split_whitespace().find(|w| w.starts_with("http")) {
            break u.to_owned();
        }
    };
    let pasted = w.mock.authorize(&authorize, "work@example.com").unwrap();
    child.stdin.take().unwrap().write_all(format!("{pasted}\n").as_bytes()).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{rest}");
    assert!(rest.contains("created account `work`"), "{rest}");
    let stored = w.store().await.get_account("work").await.unwrap().unwrap();
    assert!(w.mock.is_access_token_valid(stored.credential.access_token.expose()));
    assert!(!laptop(&w).exists(), "login --push stores nothing locally");
    assert!(!rest.contains(stored.credential.access_token.expose()));
    stop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_no_http_starts_no_listener() {
    let w = World::new().await;
    let port = free_port();
    w.write_config(&format!("[server]\nlisten = \"127.0.0.1:{port}\"\n"));
    let log = std::fs::OpenOptions::new().create(true).append(true).open(w.dir.path().join("serve.log")).unwrap();
    let ready = common::Ready::new();
    let child = ready
        .attach(&mut w.cmd(&["serve", "--no-http"]))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    ready.wait("serve");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "nothing listens with --no-http");
    assert!(!w.data_dir().join("admin-token").exists());
    stop(child);
}

/// Hand-outs are counted in memory and written in batches: after SIGTERM every one of them is
/// in the store, exactly; a key revoked by another process stops working once the change feed
/// delivers it (the server caches keys in memory); and a new token committed by another
/// process is what `/api/token` hands out next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_exact_after_sigterm_and_other_processes_changes_are_served() {
    let w = World::new().await;
    let (json, _) = w.claude_json("usage@example.com");
    w.ok(&["import", "-"], &json);
    let key = w.ok(&["keys", "create", "--name", "bot", "--scope", "token:read"], "").trim().to_owned();
    // A long flush interval: only the shutdown flush can have written the counts.
    let port = free_port();
    let child = spawn_serve_with(&w, port, "[keeper]\nusage_flush = \"1h\"\n");
    let url = format!("http://127.0.0.1:{port}/api/token?account=main");
    let client = reqwest::Client::new();
    let first: serde_json::Value =
        client.get(&url).bearer_auth(&key).send().await.unwrap().error_for_status().unwrap().json().await.unwrap();
    for _ in 0..299 {
        let r = client.get(&url).bearer_auth(&key).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(w.store().await.get_account("main").await.unwrap().unwrap().usage.requests, 0, "counted in memory");

    // Another process rotates the token: the server hands out the new one once the feed says so.
    w.ok(&["refresh", "--force"], "");
    let rotated = w.store().await.get_account("main").await.unwrap().unwrap().credential.access_token;
    let mut hand_outs = 300u64;
    common::wait_for(
        || {
            let out = std::process::Command::new("curl")
                .args(["-sf", &url, "-H", &format!("Authorization: Bearer {key}")])
                .output()
                .unwrap();
            if out.status.success() {
                hand_outs += 1;
            }
            String::from_utf8_lossy(&out.stdout).contains(rotated.expose())
        },
        "the rotated token to be handed out",
    );
    assert_ne!(first["access_token"].as_str().unwrap(), rotated.expose());
    // Revoked by another process: refused once the feed delivers it.
    w.ok(&["keys", "revoke", "bot"], "");
    common::wait_for(
        || {
            std::process::Command::new("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    &url,
                    "-H",
                    &format!("Authorization: Bearer {key}"),
                ])
                .output()
                .is_ok_and(|o| o.stdout == b"401")
        },
        "the revoked key to be refused",
    );
    // The binary mounts the web page beside the API on the same listener.
    let page = client.get(format!("http://127.0.0.1:{port}/login")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    stop(child);
    let used = w.store().await.get_account("main").await.unwrap().unwrap().usage.requests;
    // Every hand-out through the API, plus the one `refresh --force` did not make (it hands
    // nothing out): exactly what was served.
    assert_eq!(used, hand_outs, "every hand-out is counted after SIGTERM, once");
}
