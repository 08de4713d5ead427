//! The alert engine end to end: real channels delivering to stand-in receivers on loopback,
//! time driven by a `ManualClock`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use axum::http::{HeaderMap, StatusCode, Uri};
use axum::Router;
use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use tokenkeeper_alert::{AlertEngine, AlertError, AlertEvent, AlertStatus, RetryPolicy, WatchedAccount};
use tokenkeeper_core::config::{AlertConfig, AlertKind, AlertingConfig};
use tokenkeeper_core::status::{assess, Assessment, Facts, Level, Severity, Thresholds};
use tokenkeeper_core::{Account, AccountState, Credential, ManualClock, Mode, Secret, SharedClock, Usage};
use tokio::sync::mpsc;

/// Safety net for waits; tests normally get what they wait for in milliseconds.
const WAIT: StdDuration = StdDuration::from_secs(10);

#[derive(Debug)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: String,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// A stand-in HTTP receiver on 127.0.0.1:0 that hands every request to the test and answers
/// with the status the test sets.
struct Receiver {
    addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<Received>,
    answer: Arc<AtomicU16>,
}

impl Receiver {
    async fn start() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let answer = Arc::new(AtomicU16::new(200));
        let status = answer.clone();
        let app = Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: String| {
            let tx = tx.clone();
            let status = status.clone();
            async move {
                let _ = tx.send(Received { path: uri.path().to_owned(), headers, body });
                StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, rx, answer }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn next(&mut self) -> Received {
        tokio::time::timeout(WAIT, self.rx.recv()).await.expect("no request arrived in time").unwrap()
    }

    /// Everything that arrived so far (call after `engine.flush()`).
    fn drain(&mut self) -> Vec<Received> {
        let mut out = Vec::new();
        while let Ok(r) = self.rx.try_recv() {
            out.push(r);
        }
        out
    }
}

fn channel(kind: AlertKind) -> AlertConfig {
    AlertConfig { kind, name: None, url: None, url_file: None, api_key_file: None, command: None, min_severity: None }
}

fn webhook(url: String) -> AlertConfig {
    AlertConfig { url: Some(url), ..channel(AlertKind::Webhook) }
}

fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        backoff: vec![StdDuration::from_millis(5), StdDuration::from_millis(10)],
        attempt_timeout: StdDuration::from_secs(5),
        queue: 64,
        shutdown_grace: StdDuration::from_secs(5),
    }
}

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

fn engine(channels: Vec<AlertConfig>, clock: &ManualClock) -> AlertEngine {
    let clock: SharedClock = Arc::new(clock.clone());
    let settings = AlertingConfig { reminder: StdDuration::from_secs(6 * 3600) };
    AlertEngine::with_policy(channels, settings, clock, fast_policy()).unwrap()
}

fn at(level: Level) -> Assessment {
    Assessment { level, message: format!("test account is {level}") }
}

fn one(account: &str, level: Level) -> Vec<(String, Assessment)> {
    vec![(account.to_owned(), at(level))]
}

fn codex(account: &str, level: Level) -> Vec<WatchedAccount> {
    vec![WatchedAccount {
        account: account.to_owned(),
        provider: "codex".into(),
        provider_name: "Codex CLI".into(),
        assessment: at(level),
    }]
}

#[tokio::test]
async fn delivered_alerts_name_the_provider_even_after_the_account_is_removed() {
    let clock = ManualClock::new(t0());
    let mut rx = Receiver::start().await;
    let channels =
        vec![webhook(rx.url("/hook")), AlertConfig { url: Some(rx.url("/slack")), ..channel(AlertKind::Slack) }];
    let engine = engine(channels, &clock);
    engine.observe(&codex("cx", Level::NeedsLogin)).await;
    engine.flush().await;
    let mut got = rx.drain();
    got.sort_by(|a, b| a.path.cmp(&b.path));
    let hook = got[0].json();
    assert_eq!((hook["account"].as_str(), hook["provider"].as_str()), (Some("cx"), Some("codex")));
    assert_eq!(hook["provider_name"], "Codex CLI");
    assert_eq!(hook["status"], "firing", "the old fields are all still there");
    let slack = got[1].json();
    let text = slack["text"].as_str().unwrap();
    assert!(text.contains("for Codex CLI account `cx`"), "{text}");

    // Removed while firing: the resolution still says whose account it was.
    clock.advance(Duration::minutes(1));
    engine.observe::<WatchedAccount>(&[]).await;
    engine.flush().await;
    let got = rx.drain();
    let hook = got.iter().find(|r| r.path == "/hook").unwrap().json();
    assert_eq!((hook["status"].as_str(), hook["provider"].as_str()), (Some("resolved"), Some("codex")));
}

#[tokio::test]
async fn every_transition_of_one_incident() {
    let clock = ManualClock::new(t0());
    let mut rx = Receiver::start().await;
    let engine = engine(vec![webhook(rx.url("/hook"))], &clock);

    assert!(engine.observe(&one("main", Level::Healthy)).await.is_empty());

    // healthy → warning: one firing.
    clock.advance(Duration::minutes(1));
    let started = clock_now(&clock);
    let sent = engine.observe(&one("main", Level::Warning)).await;
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].status, sent[0].kind), (AlertStatus::Firing, AlertEvent::New));
    let r = rx.next().await;
    assert_eq!(r.path, "/hook");
    assert_eq!(r.headers["content-type"], "application/json");
    let body = r.json();
    assert_eq!(body["name"], "ClaudeOAuthTokenExpiry");
    assert_eq!(body["status"], "firing");
    assert_eq!(body["severity"], "warning");
    assert_eq!(body["account"], "main");
    assert_eq!(body["description"], "test account is warning");
    assert_eq!(body["since"], started.to_rfc3339());

    // Still warning across many observes, short of the reminder interval: nothing.
    for _ in 0..70 {
        clock.advance(Duration::minutes(5));
        assert!(engine.observe(&one("main", Level::Warning)).await.is_empty());
    }
    engine.flush().await;
    assert!(rx.drain().is_empty(), "repeated while nothing changed");

    // The reminder interval passes: exactly one reminder.
    clock.set(started + Duration::hours(6));
    let sent = engine.observe(&one("main", Level::Warning)).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].kind, AlertEvent::Reminder);
    let body = rx.next().await.json();
    assert_eq!((body["status"].as_str(), body["event"].as_str()), (Some("firing"), Some("reminder")));
    clock.advance(Duration::minutes(1));
    assert!(engine.observe(&one("main", Level::Warning)).await.is_empty());

    // warning → critical: an escalation, at the higher severity, same incident start.
    clock.advance(Duration::minutes(10));
    let sent = engine.observe(&one("main", Level::Critical)).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].kind, AlertEvent::Escalated);
    let body = rx.next().await.json();
    assert_eq!((body["status"].as_str(), body["severity"].as_str()), (Some("firing"), Some("critical")));
    assert_eq!(body["since"], started.to_rfc3339());

    // critical → healthy: one resolved.
    clock.advance(Duration::minutes(10));
    let sent = engine.observe(&one("main", Level::Healthy)).await;
    assert_eq!(sent.len(), 1);
    let body = rx.next().await.json();
    assert_eq!((body["status"].as_str(), body["event"].as_str()), (Some("resolved"), Some("resolved")));
    assert_eq!(body["account"], "main");

    // Healthy (or merely expiring) for a month: nothing at all.
    for day in 0..30 {
        clock.advance(Duration::days(1));
        let level = if day % 2 == 0 { Level::Healthy } else { Level::Expiring };
        assert!(engine.observe(&one("main", level)).await.is_empty());
    }
    engine.flush().await;
    assert!(rx.drain().is_empty());
    let status = &engine.channel_statuses()[0];
    assert_eq!((status.name.as_str(), status.sent, status.failed, status.ok), ("webhook", 4, 0, true));
    engine.shutdown().await;
}

fn clock_now(clock: &ManualClock) -> DateTime<Utc> {
    use tokenkeeper_core::Clock;
    clock.now()
}

#[tokio::test]
async fn needs_login_and_expired_fire_critical_once_each() {
    let clock = ManualClock::new(t0());
    let mut rx = Receiver::start().await;
    let engine = engine(vec![webhook(rx.url("/"))], &clock);
    let both = |a, b| vec![("a".to_owned(), at(a)), ("b".to_owned(), at(b))];
    let sent = engine.observe(&both(Level::NeedsLogin, Level::Expired)).await;
    assert_eq!(sent.len(), 2);
    let mut bodies = [rx.next().await.json(), rx.next().await.json()];
    bodies.sort_by_key(|b| b["account"].as_str().unwrap().to_owned());
    for (body, account) in bodies.iter().zip(["a", "b"]) {
        assert_eq!(body["account"], account);
        assert_eq!(body["severity"], "critical");
        assert_eq!(body["status"], "firing");
    }
    // Moving between critical levels is the same incident: no new firing.
    clock.advance(Duration::minutes(5));
    assert!(engine.observe(&both(Level::Expired, Level::NeedsLogin)).await.is_empty());
    clock.advance(Duration::minutes(5));
    assert_eq!(engine.observe(&both(Level::Healthy, Level::Healthy)).await.len(), 2);
    engine.flush().await;
    let resolved = rx.drain();
    assert_eq!(resolved.len(), 2);
    assert!(resolved.iter().all(|r| r.json()["status"] == "resolved" && r.json()["severity"] == "critical"));
    engine.shutdown().await;
}

#[tokio::test]
async fn one_firing_and_one_resolved_per_incident_and_accounts_are_independent() {
    let clock = ManualClock::new(t0());
    let mut rx = Receiver::start().await;
    let engine = engine(vec![webhook(rx.url("/"))], &clock);
    // A day of minute-by-minute observations: `a` has two incidents, `b` one overlapping both.
    let level_a =
        |m: i64| if (60..180).contains(&m) || (600..700).contains(&m) { Level::Expired } else { Level::Healthy };
    let level_b = |m: i64| if (120..650).contains(&m) { Level::Warning } else { Level::Healthy };
    for m in 0..1440 {
        clock.set(t0() + Duration::minutes(m));
        engine.observe(&[("a".to_owned(), at(level_a(m))), ("b".to_owned(), at(level_b(m)))]).await;
    }
    engine.flush().await;
    let got: Vec<(String, String, String)> = rx
        .drain()
        .iter()
        .map(|r| {
            let b = r.json();
            let s = |k: &str| b[k].as_str().unwrap().to_owned();
            (s("account"), format!("{}/{}", s("status"), s("event")), s("since"))
        })
        .collect();
    let of = |account: &str| got.iter().filter(|g| g.0 == account).map(|g| g.1.as_str()).collect::<Vec<_>>();
    assert_eq!(of("a"), ["firing/new", "resolved/resolved", "firing/new", "resolved/resolved"]);
    // `b` lasts 530 minutes, past the 6 h reminder interval: one reminder, never a second firing.
    assert_eq!(of("b"), ["firing/new", "firing/reminder", "resolved/resolved"]);
    // Each resolved message names the start of its own incident.
    let a_since: Vec<&str> = got.iter().filter(|g| g.0 == "a").map(|g| g.2.as_str()).collect();
    assert_eq!(a_since[0], a_since[1]);
    assert_eq!(a_since[0], (t0() + Duration::minutes(60)).to_rfc3339());
    assert_eq!(a_since[2], (t0() + Duration::minutes(600)).to_rfc3339());
    engine.shutdown().await;
}

#[tokio::test]
async fn removed_account_is_resolved() {
    let clock = ManualClock::new(t0());
    let mut rx = Receiver::start().await;
    let engine = engine(vec![webhook(rx.url("/"))], &clock);
    engine.observe(&one("gone", Level::Expired)).await;
    assert_eq!(rx.next().await.json()["status"], "firing");
    let sent = engine.observe::<(String, Assessment)>(&[]).await;
    assert_eq!(sent.len(), 1);
    let body = rx.next().await.json();
    assert_eq!((body["status"].as_str(), body["account"].as_str()), (Some("resolved"), Some("gone")));
    engine.shutdown().await;
}

#[tokio::test]
async fn a_failing_receiver_is_retried_a_bounded_number_of_times_and_shows_in_status() {
    let clock = ManualClock::new(t0());
    let mut bad = Receiver::start().await;
    let mut good = Receiver::start().await;
    bad.answer.store(500, Ordering::SeqCst);
    let mut failing = webhook(bad.url("/bad"));
    failing.name = Some("flaky".into());
    let engine = engine(vec![failing, webhook(good.url("/good"))], &clock);

    engine.observe(&one("main", Level::Critical)).await;
    // The healthy channel is not held up by the failing one.
    assert_eq!(good.next().await.json()["status"], "firing");
    engine.flush().await;
    assert_eq!(bad.drain().len(), 3, "three attempts, then give up");

    let statuses = engine.channel_statuses();
    let flaky = statuses.iter().find(|s| s.name == "flaky").unwrap();
    assert!(!flaky.ok);
    assert_eq!((flaky.sent, flaky.failed, flaky.retries), (0, 1, 2));
    let error = flaky.last_error.as_deref().unwrap();
    assert!(error.contains("500"), "{error}");
    assert!(!error.contains("/bad"), "the URL leaked into the error: {error}");
    let fine = statuses.iter().find(|s| s.name == "webhook").unwrap();
    assert!(fine.ok);
    assert_eq!((fine.sent, fine.failed), (1, 0));

    // The receiver recovers: the next message goes through and the channel is healthy again.
    bad.answer.store(200, Ordering::SeqCst);
    clock.advance(Duration::minutes(1));
    engine.observe(&one("main", Level::Healthy)).await;
    assert_eq!(bad.next().await.json()["status"], "resolved");
    engine.flush().await;
    let flaky = engine.channel_statuses().into_iter().find(|s| s.name == "flaky").unwrap();
    assert!(flaky.ok && flaky.last_error.is_none());
    assert_eq!((flaky.sent, flaky.failed), (1, 1));
    engine.shutdown().await;
}

#[tokio::test]
async fn a_refused_alert_is_not_retried() {
    let clock = ManualClock::new(t0());
    let mut rx = Receiver::start().await;
    rx.answer.store(400, Ordering::SeqCst);
    let engine = engine(vec![webhook(rx.url("/"))], &clock);
    engine.observe(&one("main", Level::Warning)).await;
    engine.flush().await;
    assert_eq!(rx.drain().len(), 1);
    assert_eq!(engine.channel_statuses()[0].failed, 1);
    engine.shutdown().await;
}

#[tokio::test]
async fn keep_gets_its_format_and_api_key() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("keep.key");
    std::fs::write(&key_file, "keep-api-key-0123\n").unwrap();
    let clock = ManualClock::new(t0());
    let mut rx = Receiver::start().await;
    let keep = AlertConfig { url: Some(rx.url("")), api_key_file: Some(key_file), ..channel(AlertKind::Keep) };
    let engine = engine(vec![keep], &clock);

    engine.observe(&one("main", Level::Warning)).await;
    let r = rx.next().await;
    assert_eq!(r.path, "/alerts/event", "a bare Keep URL gets Keep's event path");
    assert_eq!(r.headers["x-api-key"], "keep-api-key-0123");
    let body = r.json();
    assert_eq!(body["name"], "ClaudeOAuthTokenExpiry");
    assert_eq!(body["status"], "firing");
    assert_eq!(body["severity"], "warning");
    assert_eq!(body["description"], "test account is warning");
    assert_eq!(body["source"], serde_json::json!(["tokenkeeper"]));
    assert_eq!(body["fingerprint"], "tokenkeeper:main");
    assert_eq!(body["labels"]["account"], "main");

    clock.advance(Duration::hours(1));
    engine.observe(&one("main", Level::Critical)).await;
    let body = rx.next().await.json();
    assert_eq!((body["severity"].as_str(), body["fingerprint"].as_str()), (Some("critical"), Some("tokenkeeper:main")));
    clock.advance(Duration::hours(1));
    engine.observe(&one("main", Level::Healthy)).await;
    let body = rx.next().await.json();
    assert_eq!((body["status"].as_str(), body["fingerprint"].as_str()), (Some("resolved"), Some("tokenkeeper:main")));
    engine.shutdown().await;
}

#[tokio::test]
async fn slack_reads_its_url_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t0());
    let mut rx = Receiver::start().await;
    let url_file = dir.path().join("slack.url");
    std::fs::write(&url_file, format!("{}\n", rx.url("/services/T000/B000/SlackSecretPart"))).unwrap();
    let slack = AlertConfig { url_file: Some(url_file), ..channel(AlertKind::Slack) };
    let engine = engine(vec![slack], &clock);
    assert!(!format!("{engine:?}").contains("SlackSecretPart"));

    engine.observe(&one("main", Level::NeedsLogin)).await;
    let r = rx.next().await;
    assert_eq!(r.path, "/services/T000/B000/SlackSecretPart");
    let body = r.json();
    let text = body["text"].as_str().unwrap();
    assert_eq!(body.as_object().unwrap().len(), 1, "Slack gets only `text`");
    assert!(text.contains("[CRITICAL]") && text.contains("`main`") && text.contains("needs-login"), "{text}");

    // A failure shows in status without the secret URL.
    rx.answer.store(500, Ordering::SeqCst);
    engine.observe::<(String, Assessment)>(&[]).await;
    engine.flush().await;
    let status = &engine.channel_statuses()[0];
    assert_eq!(status.failed, 1);
    let shown = serde_json::to_string(status).unwrap();
    assert!(!shown.contains("SlackSecretPart"), "{shown}");
    engine.shutdown().await;
}

#[tokio::test]
async fn unreadable_or_empty_secret_files_are_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let clock: SharedClock = Arc::new(ManualClock::new(t0()));
    let missing = dir.path().join("nope.url");
    let slack = AlertConfig { url_file: Some(missing.clone()), ..channel(AlertKind::Slack) };
    let err = AlertEngine::new(vec![slack], AlertingConfig::default(), clock.clone()).unwrap_err();
    assert!(matches!(err, AlertError::ReadFile { setting: "url_file", .. }), "{err:?}");
    assert!(err.to_string().contains(&missing.display().to_string()), "{err}");

    let empty = dir.path().join("keep.key");
    std::fs::write(&empty, "\n").unwrap();
    let keep = AlertConfig {
        url: Some("http://127.0.0.1:9/".into()),
        api_key_file: Some(empty.clone()),
        ..channel(AlertKind::Keep)
    };
    let err = AlertEngine::new(vec![keep], AlertingConfig::default(), clock.clone()).unwrap_err();
    assert!(err.to_string().contains("api_key_file") && err.to_string().contains(&empty.display().to_string()));

    let bad_url = AlertConfig { url: Some("ftp://x/secret-part".into()), ..channel(AlertKind::Webhook) };
    let err = AlertEngine::new(vec![bad_url], AlertingConfig::default(), clock.clone()).unwrap_err();
    assert!(matches!(err, AlertError::InvalidUrl { .. }));
    assert!(!err.to_string().contains("secret-part"), "{err}");
    // An unknown `min_severity` cannot reach the engine: the config load refuses it (tested
    // in core's config tests), since the field is a `Severity`.
}

#[test]
fn building_outside_a_runtime_is_an_error_not_a_panic() {
    let clock: SharedClock = Arc::new(ManualClock::new(t0()));
    let err = AlertEngine::new(vec![], AlertingConfig::default(), clock).unwrap_err();
    assert!(matches!(err, AlertError::NoRuntime));
}

#[tokio::test]
async fn min_severity_filters_per_channel() {
    let clock = ManualClock::new(t0());
    let mut all = Receiver::start().await;
    let mut pager = Receiver::start().await;
    let mut critical_only = webhook(pager.url("/"));
    critical_only.min_severity = Some(Severity::Critical);
    let engine = engine(vec![webhook(all.url("/")), critical_only], &clock);

    // A warning-only incident never reaches the pager, not even its resolution.
    engine.observe(&one("main", Level::Warning)).await;
    clock.advance(Duration::minutes(1));
    engine.observe(&one("main", Level::Healthy)).await;
    // An incident that escalates reaches it from the escalation on, resolution included.
    clock.advance(Duration::minutes(1));
    engine.observe(&one("main", Level::Warning)).await;
    clock.advance(Duration::minutes(1));
    engine.observe(&one("main", Level::Critical)).await;
    clock.advance(Duration::minutes(1));
    engine.observe(&one("main", Level::Healthy)).await;
    engine.flush().await;
    assert_eq!(all.drain().len(), 5);
    let paged: Vec<(String, String)> = pager
        .drain()
        .iter()
        .map(|r| {
            let b = r.json();
            (b["event"].as_str().unwrap().to_owned(), b["severity"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(paged, [("escalated".into(), "critical".into()), ("resolved".into(), "critical".into())]);
    engine.shutdown().await;
}

/// Runs a command channel that saves its environment and stdin under `dir`.
fn recording_command(dir: &Path) -> AlertConfig {
    let script = format!(
        "env | grep '^TOKENKEEPER_ALERT_' | sort > '{0}/env.tmp' && cat > '{0}/stdin.tmp' && mv '{0}/env.tmp' '{0}/env' && mv '{0}/stdin.tmp' '{0}/stdin'",
        dir.display()
    );
    AlertConfig { command: Some(vec!["sh".into(), "-c".into(), script]), ..channel(AlertKind::Command) }
}

#[tokio::test]
async fn command_channel_gets_env_and_json_on_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t0());
    let engine = engine(vec![recording_command(dir.path())], &clock);
    engine.observe(&one("main", Level::Expired)).await;
    engine.flush().await;
    let env = std::fs::read_to_string(dir.path().join("env")).unwrap();
    assert!(env.contains("TOKENKEEPER_ALERT_NAME=ClaudeOAuthTokenExpiry\n"), "{env}");
    assert!(env.contains("TOKENKEEPER_ALERT_STATUS=firing\n"));
    assert!(env.contains("TOKENKEEPER_ALERT_SEVERITY=critical\n"));
    assert!(env.contains("TOKENKEEPER_ALERT_ACCOUNT=main\n"));
    assert!(env.contains("TOKENKEEPER_ALERT_DESCRIPTION=test account is expired\n"));
    assert!(env.contains(&format!("TOKENKEEPER_ALERT_SINCE={}\n", t0().to_rfc3339())));
    let stdin: Value = serde_json::from_str(&std::fs::read_to_string(dir.path().join("stdin")).unwrap()).unwrap();
    assert_eq!(stdin["account"], "main");
    assert_eq!(stdin["status"], "firing");
    assert_eq!(stdin["severity"], "critical");
    let status = &engine.channel_statuses()[0];
    assert_eq!((status.name.as_str(), status.sent), ("command", 1));
    engine.shutdown().await;
}

#[tokio::test]
async fn a_failing_command_shows_its_exit_and_stderr() {
    let clock = ManualClock::new(t0());
    let cmd = AlertConfig {
        command: Some(vec!["sh".into(), "-c".into(), "echo 'pager offline' >&2; exit 3".into()]),
        ..channel(AlertKind::Command)
    };
    let missing = AlertConfig {
        name: Some("missing".into()),
        command: Some(vec!["/nonexistent/tokenkeeper-notify".into()]),
        ..channel(AlertKind::Command)
    };
    let engine = engine(vec![cmd, missing], &clock);
    engine.observe(&one("main", Level::Warning)).await;
    engine.flush().await;
    let statuses = engine.channel_statuses();
    assert_eq!((statuses[0].failed, statuses[0].retries), (1, 2));
    let error = statuses[0].last_error.as_deref().unwrap();
    assert!(error.contains("exit code 3") && error.contains("pager offline"), "{error}");
    // A program that does not exist is not retried.
    assert_eq!((statuses[1].failed, statuses[1].retries), (1, 0));
    assert!(statuses[1].last_error.as_deref().unwrap().contains("cannot run `/nonexistent/tokenkeeper-notify`"));
    engine.shutdown().await;
}

#[tokio::test]
async fn a_slow_channel_holds_up_neither_the_caller_nor_other_channels() {
    let clock = ManualClock::new(t0());
    let mut rx = Receiver::start().await;
    let slow = AlertConfig { command: Some(vec!["sleep".into(), "30".into()]), ..channel(AlertKind::Command) };
    let clock_shared: SharedClock = Arc::new(clock.clone());
    let policy = RetryPolicy { shutdown_grace: StdDuration::from_millis(20), ..fast_policy() };
    let engine =
        AlertEngine::with_policy(vec![slow, webhook(rx.url("/"))], AlertingConfig::default(), clock_shared, policy)
            .unwrap();
    let started = std::time::Instant::now();
    assert_eq!(engine.observe(&one("main", Level::Critical)).await.len(), 1);
    assert!(started.elapsed() < StdDuration::from_secs(1), "observe waited for delivery");
    assert_eq!(rx.next().await.json()["status"], "firing");
    // Shutdown gives up on the stuck command after the grace period.
    let started = std::time::Instant::now();
    engine.shutdown().await;
    assert!(started.elapsed() < StdDuration::from_secs(5));
}

#[tokio::test]
async fn shutdown_delivers_what_is_queued() {
    let clock = ManualClock::new(t0());
    let mut rx = Receiver::start().await;
    let engine = engine(vec![webhook(rx.url("/"))], &clock);
    let sent = engine.observe(&[("a".to_owned(), at(Level::Warning)), ("b".to_owned(), at(Level::Expired))]).await;
    assert_eq!(sent.len(), 2);
    engine.shutdown().await;
    assert_eq!(rx.drain().len(), 2);
}

#[tokio::test]
async fn restored_state_neither_refires_nor_forgets_to_resolve() {
    let clock = ManualClock::new(t0());
    let mut rx = Receiver::start().await;
    let first = engine(vec![webhook(rx.url("/"))], &clock);
    first.observe(&one("main", Level::Critical)).await;
    let saved = serde_json::to_string(&first.state()).unwrap();
    first.shutdown().await;
    assert_eq!(rx.drain().len(), 1);

    let second = engine(vec![webhook(rx.url("/"))], &clock);
    second.restore_state(serde_json::from_str(&saved).unwrap());
    clock.advance(Duration::minutes(1));
    assert!(second.observe(&one("main", Level::Critical)).await.is_empty());
    clock.advance(Duration::minutes(1));
    assert_eq!(second.observe(&one("main", Level::Healthy)).await[0].status, AlertStatus::Resolved);
    second.shutdown().await;
    assert_eq!(rx.drain().len(), 1);
}

const ACCESS: &str = "sk-ant-oat01-AccessSecretValue_0123456789abcdefghijklmnopqrstuvwxyz";
const REFRESH: &str = "sk-ant-ort01-RefreshSecretValue_0123456789abcdefghijklmnopqrstuvwx";

fn account(name: &str, n: usize, now: DateTime<Utc>) -> Account {
    Account {
        name: name.to_owned(),
        provider: "anthropic".into(),
        mode: Mode::Own,
        credential: Credential {
            access_token: Secret::new(format!("{ACCESS}{n}")),
            refresh_token: Some(Secret::new(format!("{REFRESH}{n}"))),
            expires_at: now + Duration::hours(8),
            scopes: vec!["user:inference".into()],
            subscription_type: Some("max".into()),
            rate_limit_tier: None,
            provider_data: None,
        },
        version: 1,
        email: Some(format!("{name}@example.com")),
        organization: None,
        binding: None,
        state: AccountState::Active,
        created_at: now,
        updated_at: now,
        last_refreshed_at: Some(now),
        refresh_token_issued_at: Some(now),
        usage: Usage::default(),
        last_error: None,
    }
}

#[tokio::test]
async fn no_token_ever_appears_in_an_alert() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("keep.key");
    std::fs::write(&key_file, "keep-key").unwrap();
    let clock = ManualClock::new(t0());
    let mut rx = Receiver::start().await;
    let channels = vec![
        webhook(rx.url("/webhook")),
        AlertConfig { url: Some(rx.url("/keep")), api_key_file: Some(key_file), ..channel(AlertKind::Keep) },
        AlertConfig { url: Some(rx.url("/slack")), ..channel(AlertKind::Slack) },
        recording_command(dir.path()),
    ];
    let engine = engine(channels, &clock);
    let now = t0();
    let thresholds = Thresholds {
        lead: Duration::minutes(30),
        refresh_token_warn_age: Duration::days(20),
        refresh_token_life: Duration::days(30),
    };

    // One account for every bad level, each with its own known tokens.
    let mut expired = account("expired", 1, now);
    expired.credential.expires_at = now - Duration::hours(1);
    let mut login = account("login", 2, now);
    login.state = AccountState::NeedsLogin;
    let mut old = account("old", 3, now);
    old.refresh_token_issued_at = Some(now - Duration::days(25));
    let mut failing = account("failing", 4, now);
    failing.credential.expires_at = now + Duration::minutes(10);
    // An error text that (wrongly) quotes a token: the redaction must still catch it.
    failing.last_error = Some(format!("provider said: bad refresh_token {REFRESH}4"));
    let mut sinks = account("sinks", 5, now);
    sinks.last_error = Some(format!("writing {ACCESS}5 failed"));
    let facts_for = |a: &Account| Facts {
        refresh_failing: a.name == "failing",
        failing_sinks: if a.name == "sinks" { vec!["env_file:/srv/.env".into()] } else { vec![] },
    };
    let accounts = [expired, login, old, failing, sinks];
    let assessments: Vec<(String, Assessment)> =
        accounts.iter().map(|a| (a.name.clone(), assess(a, &facts_for(a), now, &thresholds))).collect();
    let levels: Vec<Level> = assessments.iter().map(|(_, a)| a.level).collect();
    assert_eq!(levels, [Level::Expired, Level::NeedsLogin, Level::Warning, Level::Critical, Level::Warning]);

    let mut messages = engine.observe(&assessments).await;
    engine.flush().await;
    // The one command run leaves its last input; collect it before the resolutions overwrite it.
    let mut seen: Vec<String> = vec![std::fs::read_to_string(dir.path().join("stdin")).unwrap()];
    seen.push(std::fs::read_to_string(dir.path().join("env")).unwrap());
    clock.advance(Duration::minutes(1));
    let healthy: Vec<(String, Assessment)> = accounts
        .iter()
        .map(|a| {
            let mut fine = account(&a.name, 9, now);
            fine.last_error = a.last_error.clone();
            (a.name.clone(), assess(&fine, &Facts::default(), clock_now(&clock), &thresholds))
        })
        .collect();
    messages.extend(engine.observe(&healthy).await);
    engine.flush().await;
    assert_eq!(messages.len(), 10);

    let received = rx.drain();
    assert_eq!(received.len(), 30, "10 messages to 3 HTTP channels");
    for r in &received {
        seen.push(r.body.clone());
        seen.extend(r.headers.iter().map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or_default())));
        seen.push(r.path.clone());
    }
    seen.push(std::fs::read_to_string(dir.path().join("stdin")).unwrap());
    seen.push(std::fs::read_to_string(dir.path().join("env")).unwrap());
    seen.extend(messages.iter().map(|m| format!("{m:?}")));
    seen.push(serde_json::to_string(&engine.channel_statuses()).unwrap());
    seen.push(serde_json::to_string(&engine.state()).unwrap());
    seen.push(format!("{engine:?}"));
    for text in &seen {
        for secret in ["AccessSecretValue", "RefreshSecretValue"] {
            assert!(!text.contains(secret), "a token leaked: {text}");
        }
    }
    // The redaction left a trace of what was there, so the message still makes sense.
    assert!(messages.iter().any(|m| m.description.contains("sk-ant-ort01-…")));
    engine.shutdown().await;
}
