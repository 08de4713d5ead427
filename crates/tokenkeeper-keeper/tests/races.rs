//! Many callers, one rotation: concurrent refreshes in one process and across "processes"
//! (independent keepers sharing the data directory) spend each refresh token exactly once.
//! A stand-in for Claude Code that takes `proper-lockfile` locks races the keeper on a bound
//! file: nobody is logged out and the keeper adopts the other's token.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokenkeeper_core::formats::{parse_credential, render_claude_credentials};
use tokenkeeper_core::{Binding, BindingKind, Clock, Mode, Secret};
use tokenkeeper_keeper::{RefreshPolicy, RefreshResult};
use tokenkeeper_provider::{OAuthClient, TokenOutcome};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_spend_each_refresh_token_once() {
    let env = support::env(|c| c.keeper.max_attempts_per_hour = 1000).await;
    env.seed("main", None, Mode::Own).await;
    let others = [env.keeper.clone(), env.other_process().await, env.other_process().await];
    for round in 1..=40u64 {
        // Make the account due.
        let a = env.account("main").await;
        env.clock.set(a.credential.expires_at - chrono::Duration::minutes(10));
        let mut tasks = Vec::new();
        for i in 0..12 {
            let k = others[i % others.len()].clone();
            tasks.push(tokio::spawn(async move { k.refresh("main", RefreshPolicy::IfWithin(k.lead())).await }));
        }
        let mut refreshed = 0;
        for t in tasks {
            match t.await.unwrap().unwrap() {
                RefreshResult::Refreshed(_) => refreshed += 1,
                RefreshResult::Adopted(a) | RefreshResult::NotNeeded(a) => {
                    assert!(!a.credential.needs_refresh(env.clock.now(), chrono::Duration::minutes(30)))
                }
            }
        }
        assert_eq!(refreshed, 1, "round {round}");
        assert_eq!(env.mock.counts().refresh_ok, round);
    }
    assert_eq!(env.mock.counts().refresh_invalid_grant, 0);
}

fn lock_dirs(config_dir: &Path) -> [PathBuf; 2] {
    let mut older = config_dir.as_os_str().to_owned();
    older.push(".lock");
    [PathBuf::from(older), config_dir.join(".oauth_refresh.lock")]
}

/// What Claude Code does around a refresh: mkdir its lock directories (waiting while they
/// exist and are fresh), re-read the file, refresh, write the file in place, rmdir.
async fn claude_code_refresh(client: &OAuthClient, file: &Path, now: chrono::DateTime<chrono::Utc>) -> bool {
    let dirs = lock_dirs(file.parent().unwrap());
    for d in &dirs {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::fs::create_dir(d).is_err() {
            assert!(std::time::Instant::now() < deadline, "stand-in could not get {}", d.display());
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
    let text = std::fs::read_to_string(file).unwrap();
    let current = parse_credential(&text, now).unwrap().credential;
    let refresh = current.refresh_token.clone().unwrap();
    let ok = match client.refresh(&refresh, &current.scopes).await {
        TokenOutcome::Success(grant) => {
            let next = grant.into_credential(now, Some(&current));
            // In place, as writeFileSync does.
            std::fs::write(file, render_claude_credentials(Some(&text), &next).unwrap()).unwrap();
            true
        }
        other => panic!("Claude Code stand-in was logged out: {other:?}"),
    };
    for d in dirs.iter().rev() {
        std::fs::remove_dir(d).unwrap();
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claude_code_stand_in_racing_the_keeper_logs_nobody_out() {
    let env = support::env(|c| c.keeper.max_attempts_per_hour = 1000).await;
    // Every token is always inside the lead time, so both sides refresh on every call.
    env.mock.set_access_lifetime(std::time::Duration::from_secs(10 * 60));
    let config_dir = env.dir.path().join("home/.claude");
    std::fs::create_dir_all(&config_dir).unwrap();
    let file = config_dir.join(".credentials.json");
    let binding = Binding { kind: BindingKind::ClaudeCredentials, path: file.clone() };
    let (a, _) = env.seed("main", Some(binding), Mode::Own).await;
    // Own mode writes the credential to the bound file.
    let on_disk = parse_credential(&std::fs::read_to_string(&file).unwrap(), env.clock.now()).unwrap();
    assert_eq!(on_disk.credential.access_token, a.credential.access_token);

    let client = Arc::new(OAuthClient::new(&env.config.provider("anthropic")).unwrap());
    let stand_in = {
        let (client, file, clock) = (client.clone(), file.clone(), env.clock.clone());
        tokio::spawn(async move {
            let mut n = 0;
            for _ in 0..30 {
                if claude_code_refresh(&client, &file, tokenkeeper_core::Clock::now(&clock)).await {
                    n += 1;
                }
                tokio::task::yield_now().await;
            }
            n
        })
    };
    let keeper = env.keeper.clone();
    let ours = tokio::spawn(async move {
        let mut results = Vec::new();
        for _ in 0..30 {
            results.push(keeper.refresh("main", RefreshPolicy::IfWithin(keeper.lead())).await.unwrap());
        }
        results
    });
    let theirs = stand_in.await.unwrap();
    let ours = ours.await.unwrap();
    let counts = env.mock.counts();
    assert_eq!(counts.refresh_invalid_grant, 0, "someone was logged out");
    let refreshed_by_us = ours.iter().filter(|r| matches!(r, RefreshResult::Refreshed(_))).count() as u64;
    assert_eq!(counts.refresh_ok, refreshed_by_us + theirs);
    // The keeper adopted the stand-in's token at least once.
    let events = tokenkeeper_core::Store::events(&*env.store, Some("main"), 500).await.unwrap();
    assert!(events.iter().any(|e| e.kind == tokenkeeper_core::store::EventKind::Adopted), "never adopted");
    // In the end, store and file agree on the newest credential.
    let a = env.keeper.sync_bound("main").await.unwrap();
    let on_disk = parse_credential(&std::fs::read_to_string(&file).unwrap(), env.clock.now()).unwrap();
    assert_eq!(on_disk.credential.access_token, a.credential.access_token);
    let _ = Secret::new("");
}
