//! End-to-end delivery latency: Claude Code writes a new credential into its watched file
//! (by rename, or in place); the daemon notices, adopts it (durable commit), and every sink has
//! it. Reports p50/p99/max over 1,000 changes per write style. Run with
//! `cargo bench -p tokenkeeper-daemon --bench delivery_latency`.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a measurement harness: a panic is the report

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokenkeeper_core::config::SinkConfig;
use tokenkeeper_core::formats::{render_claude_credentials, Format, ParsedCredential};
use tokenkeeper_core::store::CredentialChange;
use tokenkeeper_core::{Binding, BindingKind, Config, Credential, ManualClock, Mode, Secret};
use tokenkeeper_daemon::Daemon;
use tokenkeeper_keeper::{Ingest, Keeper};
use tokenkeeper_mock::MockProvider;
use tokenkeeper_store::{EncryptionKey, SqliteStore};
use tokenkeeper_sync::sink::SinkSet;

const CHANGES: usize = 1000;

fn sink(kind: &str, path: &Path, extra: &str) -> SinkConfig {
    toml::from_str(&format!("account = \"main\"\nkind = \"{kind}\"\npath = \"{}\"\n{extra}", path.display()))
        .expect("sink config")
}

fn credential(access: &str, refresh: &str, expires_ms: i64) -> Credential {
    Credential {
        access_token: Secret::new(access),
        refresh_token: Some(Secret::new(refresh)),
        expires_at: DateTime::from_timestamp_millis(expires_ms).expect("time"),
        scopes: vec!["user:inference".into()],
        subscription_type: None,
        rate_limit_tier: None,
        provider_data: None,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mock = MockProvider::start().await.expect("mock");
    let start: DateTime<Utc> = Utc::now();
    let clock = ManualClock::new(start);
    let mut config = Config::default();
    config.providers.get_mut("anthropic").expect("provider").token_url = mock.token_url();
    let config = Arc::new(config);
    let data = dir.path().join("data");
    let store = Arc::new(SqliteStore::open(&data, EncryptionKey::generate()).await.expect("store"));
    let keeper = Arc::new(
        Keeper::new(tokenkeeper_keeper::testing::backend_of(&store, &data), config, &data, Arc::new(clock.clone()))
            .expect("keeper"),
    );
    let claude = dir.path().join("home/.claude");
    std::fs::create_dir_all(&claude).expect("mkdir");
    let file = claude.join(".credentials.json");
    let first = credential(
        "sk-ant-oat01-bench-0",
        "sk-ant-ort01-bench-0",
        (start + chrono::Duration::hours(8)).timestamp_millis(),
    );
    std::fs::write(&file, render_claude_credentials(None, &first).expect("render")).expect("write");
    keeper
        .ingest(Ingest {
            account: Some("main".into()),
            parsed: ParsedCredential { credential: first, format: Format::ClaudeJson, email: None },
            mode: Some(Mode::Follow),
            binding: Some(Binding { kind: BindingKind::ClaudeCredentials, path: file.clone() }),
            change: CredentialChange::Imported,
            organization: None,
            provider: None,
        })
        .await
        .expect("ingest");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).expect("mkdir");
    let sinks = vec![
        sink("env_file", &out.join("bot.env"), "key = \"CLAUDE_CODE_OAUTH_TOKEN\"\n"),
        sink("claude_credentials", &out.join("mounted.json"), "write = \"in_place\"\n"),
        sink("openclaw", &out.join("oauth.json"), ""),
        sink("template", &out.join("token.yaml"), "template = \"token: {{ access_token }}\"\n"),
    ];
    let targets: Vec<PathBuf> =
        ["bot.env", "mounted.json", "oauth.json", "token.yaml"].iter().map(|n| out.join(n)).collect();
    let sinks = Arc::new(SinkSet::new(sinks));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = Daemon::new(keeper.clone(), Some(sinks.clone()));
    let task = tokio::spawn(daemon.run(
        async move {
            let _ = stop_rx.await;
        },
        move || {
            let _ = ready_tx.send(());
        },
    ));
    ready_rx.await.expect("ready");

    for style in ["rename", "in_place"] {
        let mut latencies = Vec::with_capacity(CHANGES);
        for i in 1..=CHANGES {
            let n = if style == "rename" { i } else { CHANGES + i };
            let access = format!("sk-ant-oat01-bench-{n}");
            let c = credential(
                &access,
                &format!("sk-ant-ort01-bench-{n}"),
                (start + chrono::Duration::hours(8) + chrono::Duration::seconds(n as i64)).timestamp_millis(),
            );
            let text = render_claude_credentials(None, &c).expect("render");
            let began = Instant::now();
            if style == "rename" {
                let tmp = claude.join(".credentials.json.tmp");
                std::fs::write(&tmp, &text).expect("write");
                std::fs::rename(&tmp, &file).expect("rename");
            } else {
                std::fs::write(&file, &text).expect("write");
            }
            loop {
                if targets.iter().all(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains(&access))) {
                    break;
                }
                assert!(began.elapsed() < Duration::from_secs(10), "change {n} never reached the sinks");
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            latencies.push(began.elapsed());
        }
        latencies.sort();
        println!(
            "{style:>8}: {CHANGES} changes, file write -> all 4 sinks: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            percentile(&latencies, 0.50).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            latencies[latencies.len() - 1].as_secs_f64() * 1e3,
        );
    }
    let _ = stop_tx.send(());
    let _ = task.await;
    drop(mock);
}
