//! Leadership gates the daemon's leader work: a follower never refreshes on schedule and
//! skips leader-only sinks while delivering its host's sinks; taking over starts both at once,
//! stepping down stops them. The leadership is a test double (a watch channel), so nothing but
//! what the daemon is told decides.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokenkeeper_core::config::{RunOn, SinkConfig};
use tokenkeeper_core::formats::{Format, ParsedCredential};
use tokenkeeper_core::Mode;
use tokenkeeper_daemon::Daemon;
use tokenkeeper_sync::sink::SinkSet;

fn template_sink(path: &Path, run_on: &str) -> SinkConfig {
    toml::from_str(&format!(
        "account = \"main\"\nkind = \"template\"\npath = \"{}\"\ntemplate = \"{{{{ access_token }}}}\"\nrun_on = \"{run_on}\"\n",
        path.display()
    ))
    .unwrap()
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < Duration::from_secs(10), "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn holds(path: &Path, token: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.trim() == token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_refreshes_on_schedule_and_feeds_leader_only_sinks() {
    let env = support::env(|_| {}).await;
    // Lifetimes shorter than the lead: each token is due at half its life (90 s).
    env.mock.set_access_lifetime(Duration::from_secs(180));
    let (a, _) = env.seed("main", None, Mode::Own).await;
    let here = env.dir.path().join("here.txt");
    let shared = env.dir.path().join("shared.txt");
    let sinks = Arc::new(SinkSet::new(vec![template_sink(&here, "every_replica"), template_sink(&shared, "leader")]));
    assert_eq!(template_sink(&shared, "leader").runs_on(), RunOn::Leader);
    // Past half its life: a leader refreshes it at once.
    env.clock.advance(chrono::Duration::minutes(2));

    let (lead_tx, lead_rx) = tokio::sync::watch::channel(false);
    let daemon = Daemon::new(env.keeper.clone(), Some(sinks.clone())).with_leadership(lead_rx);
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
    wait_until("the host's sink has the credential", || holds(&here, a.credential.access_token.expose())).await;

    // The account has been due since the start. Another replica pushes a credential: the
    // follower's loop delivers it to the host's sink, having refreshed nothing (a leader would
    // have refreshed on its first turn) and left the leader-only sink alone.
    let push = |t: &tokenkeeper_mock::IssuedTokens| ParsedCredential {
        credential: support::Env::credential(t),
        format: Format::ClaudeJson,
        email: None,
    };
    let other = env.other_process().await;
    let pushed = env.mock.issue_login("main@example.com");
    support::import_as(&other, "main", push(&pushed)).await.unwrap();
    wait_until("the follower delivers the push to the host's sink", || holds(&here, &pushed.access_token)).await;
    assert_eq!(env.mock.counts().refresh_ok, 0, "a follower refreshed on schedule");
    assert!(!shared.exists(), "a follower wrote a leader-only sink");

    // Taking over, with the pushed token due: it is refreshed and the leader-only sink catches up.
    env.clock.advance(chrono::Duration::minutes(2));
    lead_tx.send_replace(true);
    wait_until("the new leader refreshes", || env.mock.counts().refresh_ok == 1).await;
    // The mock answered; the commit follows.
    let committing = Instant::now();
    let refreshed = loop {
        assert!(committing.elapsed() < Duration::from_secs(10), "the refresh was never committed");
        let now = env.account("main").await.credential.access_token.expose().to_owned();
        if now != pushed.access_token {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    wait_until("the leader-only sink has the refreshed token", || holds(&shared, &refreshed)).await;
    wait_until("the host's sink has the refreshed token", || holds(&here, &refreshed)).await;

    // Stepping down: the next push reaches the host's sink only.
    lead_tx.send_replace(false);
    env.clock.advance(chrono::Duration::minutes(1));
    let again = env.mock.issue_login("main@example.com");
    // The step-down is seen before this push is (same loop, earlier event), so no race here.
    tokio::task::yield_now().await;
    support::import_as(&other, "main", push(&again)).await.unwrap();
    wait_until("the host's sink has the second push", || holds(&here, &again.access_token)).await;
    assert!(holds(&shared, &refreshed), "a replica that stepped down still wrote the leader-only sink");
    assert_eq!(env.mock.counts().refresh_ok, 1, "a replica that stepped down refreshed on schedule");

    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap().unwrap();
}
