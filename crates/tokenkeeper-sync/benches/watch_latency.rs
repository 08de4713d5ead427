//! Watcher latency: a credential file is written (alternately by rename and in place), the
//! watcher notices, the credential is parsed and an env_file sink rendered and written.
//! Measures write -> sink written over 1,000 changes per fallback setting (complete writes are reported at once; the fallback only covers modifications no close follows); prints p50/p99.
//!
//! Run: `cargo bench -p tokenkeeper-sync --bench watch_latency` (optionally
//! `TK_BENCH_CHANGES=200` for a quicker run).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokenkeeper_core::config::SinkConfig;
use tokenkeeper_core::formats::parse_credential;
use tokenkeeper_core::{Account, AccountState, Mode, Usage};
use tokenkeeper_sync::sink::write_file_sink;
use tokenkeeper_sync::watch::FileWatcher;

fn credential_json(i: usize) -> String {
    format!(
        r#"{{"claudeAiOauth":{{"accessToken":"sk-ant-oat01-BENCH{i:06}","refreshToken":"sk-ant-ort01-R{i}","expiresAt":1800000000000,"scopes":["user:inference"]}}}}"#
    )
}

fn write_by_rename(path: &Path, content: &str) {
    let tmp = path.with_extension("writer-tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn write_in_place(path: &Path, content: &str) {
    let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(path).unwrap();
    f.write_all(content.as_bytes()).unwrap();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn report(label: &str, mut v: Vec<Duration>) {
    v.sort();
    println!(
        "{label:<34} n={:<5} p50={:>8.2?} p99={:>8.2?} max={:>8.2?}",
        v.len(),
        percentile(&v, 0.50),
        percentile(&v, 0.99),
        v[v.len() - 1]
    );
}

async fn run(debounce: Duration, changes: usize) {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join(".credentials.json");
    let env = dir.path().join("bot.env");
    std::fs::write(&source, credential_json(0)).unwrap();
    std::fs::write(&env, "# bot\nA=1\n").unwrap();
    let sink: SinkConfig = serde_json::from_value(serde_json::json!({
        "account": "main", "kind": "env_file", "path": env, "key": "CLAUDE_CODE_OAUTH_TOKEN"
    }))
    .unwrap();
    let (mut watcher, mut rx) = FileWatcher::new(debounce).unwrap();
    watcher.watch(&source).unwrap();
    let (mut renamed, mut in_place) = (Vec::new(), Vec::new());
    for i in 1..=changes {
        let content = credential_json(i);
        let start = Instant::now();
        if i % 2 == 0 {
            write_by_rename(&source, &content);
        } else {
            write_in_place(&source, &content);
        }
        loop {
            let path = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            let Ok(parsed) = parse_credential(&text, Utc::now()) else { continue };
            if !parsed.credential.access_token.expose().ends_with(&format!("{i:06}")) {
                continue; // a late event of the previous change
            }
            let now = Utc::now();
            let account = Account {
                name: "main".into(),
                provider: "anthropic".into(),
                mode: Mode::Follow,
                credential: parsed.credential,
                version: i as i64,
                email: None,
                organization: None,
                binding: None,
                state: AccountState::Active,
                created_at: now,
                updated_at: now,
                last_refreshed_at: None,
                refresh_token_issued_at: None,
                usage: Usage::default(),
                last_error: None,
            };
            write_file_sink(&sink, &account).unwrap();
            break;
        }
        let took = start.elapsed();
        if i % 2 == 0 {
            renamed.push(took)
        } else {
            in_place.push(took)
        }
    }
    let text = std::fs::read_to_string(&env).unwrap();
    assert!(text.contains(&format!("BENCH{changes:06}")), "the sink holds the last token");
    println!("fallback {debounce:?}, {changes} changes (write -> event -> parse -> env_file written):");
    report("  by rename", renamed.clone());
    report("  in place", in_place.clone());
    let mut all = renamed;
    all.extend(in_place);
    report("  all", all);
}

fn main() {
    let changes = std::env::var("TK_BENCH_CHANGES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        for debounce in [Duration::from_millis(50), Duration::from_millis(5)] {
            run(debounce, changes).await;
        }
    });
}
