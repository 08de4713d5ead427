//! The daemon end to end, in process: Claude Code rewrites the bound file (by rename, and in
//! place), the daemon adopts the newer credential and every sink has it within milliseconds;
//! a credential changed by another process (through the store) reaches the sinks too.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokenkeeper_core::config::{SinkConfig, SinkKind, WriteMode};
use tokenkeeper_core::formats::render_claude_credentials;
use tokenkeeper_core::{Binding, BindingKind, Mode};
use tokenkeeper_daemon::Daemon;
use tokenkeeper_sync::sink::SinkSet;

/// A file sink of `kind` writing `path`, with the keys its kind requires and `extra`.
fn sink(kind: SinkKind, path: &Path, extra: &str) -> SinkConfig {
    let required = match kind {
        SinkKind::EnvFile => "key = \"CLAUDE_CODE_OAUTH_TOKEN\"\n",
        SinkKind::Template => "template = \"token: {{ access_token }}\\n\"\n",
        _ => "",
    };
    toml::from_str(&format!("account = \"main\"\nkind = \"{kind}\"\npath = \"{}\"\n{required}{extra}", path.display()))
        .unwrap()
}

fn write_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn all_have(paths: &[PathBuf], token: &str) -> bool {
    paths.iter().all(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains(token)))
}

async fn wait_until(mut cond: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < Duration::from_secs(10), "sinks did not get the new credential");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_writes_reach_every_sink_by_rename_and_in_place() {
    let env = support::env(|_| {}).await;
    let claude_dir = env.dir.path().join("home/.claude");
    std::fs::create_dir_all(&claude_dir).unwrap();
    let file = claude_dir.join(".credentials.json");
    let binding = Binding { kind: BindingKind::ClaudeCredentials, path: file.clone() };
    let (a, _) = env.seed("main", Some(binding), Mode::Follow).await;
    std::fs::write(&file, render_claude_credentials(None, &a.credential).unwrap()).unwrap();

    let out = env.dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("bot.env"), "# bot\nOTHER=1\nCLAUDE_CODE_OAUTH_TOKEN=old\n").unwrap();
    let mounted = sink(SinkKind::ClaudeCredentials, &out.join("mounted.json"), "write = \"in_place\"\n");
    assert_eq!(mounted.file().map(|f| f.write), Some(WriteMode::InPlace));
    let configs = vec![
        sink(SinkKind::EnvFile, &out.join("bot.env"), ""),
        mounted,
        sink(SinkKind::Openclaw, &out.join("oauth.json"), ""),
        sink(SinkKind::Template, &out.join("token.yaml"), ""),
    ];
    let targets: Vec<PathBuf> =
        ["bot.env", "mounted.json", "oauth.json", "token.yaml"].iter().map(|n| out.join(n)).collect();
    let sinks = Arc::new(SinkSet::new(configs));
    let daemon = Daemon::new(env.keeper.clone(), Some(sinks.clone()));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(daemon.run(
        async move {
            let _ = stop_rx.await;
        },
        move || {
            let _ = ready_tx.send(());
        },
    ));
    tokio::time::timeout(Duration::from_secs(10), ready_rx).await.unwrap().unwrap();
    // The first delivery happens at start.
    wait_until(|| all_have(&targets, a.credential.access_token.expose())).await;

    let mut latencies = Vec::new();
    for i in 0..20 {
        env.clock.advance(chrono::Duration::minutes(1));
        let t = env.mock.issue_login("main@example.com");
        let text = render_claude_credentials(None, &support::Env::credential(&t)).unwrap();
        let started = Instant::now();
        if i % 2 == 0 {
            write_by_rename(&file, &text);
        } else {
            std::fs::write(&file, &text).unwrap(); // in place, as writeFileSync does
        }
        wait_until(|| all_have(&targets, &t.access_token)).await;
        latencies.push(started.elapsed());
        assert_eq!(env.account("main").await.credential.access_token.expose(), t.access_token);
    }
    // The rest of the .env survives every edit, and it never gets the refresh token.
    let env_text = std::fs::read_to_string(out.join("bot.env")).unwrap();
    assert!(env_text.starts_with("# bot\nOTHER=1\nCLAUDE_CODE_OAUTH_TOKEN=sk-ant-oat01-"), "{env_text}");
    let stored = env.account("main").await;
    assert!(!env_text.contains(stored.credential.refresh_token.as_ref().unwrap().expose()));

    // Another process writes the store (an `import` beside the daemon): the sinks follow.
    env.clock.advance(chrono::Duration::minutes(1));
    let other = env.other_process().await;
    let t = env.mock.issue_login("main@example.com");
    let parsed = tokenkeeper_core::formats::ParsedCredential {
        credential: support::Env::credential(&t),
        format: tokenkeeper_core::formats::Format::ClaudeJson,
        email: None,
    };
    let started = Instant::now();
    tokenkeeper_keeper::testing::import_as(&other, "main", parsed).await.unwrap();
    wait_until(|| all_have(&targets, &t.access_token)).await;
    let cross_process = started.elapsed();

    latencies.sort();
    println!(
        "file change -> every sink: p50 {:?}, max {:?} over {}; store change by another keeper -> sinks: {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
        latencies.len(),
        cross_process
    );
    assert!(sinks.statuses().iter().all(|s| s.ok), "{:?}", sinks.statuses());
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap().unwrap();
}
