//! `tokenkeeper doctor` through the real binary against the mock provider: a healthy set-up
//! is all `ok` (exit 0); each broken one (bad modes, a stale Claude Code lock, an unreachable
//! token endpoint, a bound file or a sink out of step, a rejected login, a refused token in
//! `--probe`) is named with its fix, and following the fix makes it `ok` again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Output;
use std::time::{Duration, SystemTime};

use common::{stdout, World};
use tokenkeeper_mock::{Fault, IssuedTokens};

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited with a status")
}

/// Writes a fresh mock login to Claude Code's file and imports it from there (bound).
fn import_bound(w: &World) -> IssuedTokens {
    let (json, t) = w.claude_json("a@example.com");
    std::fs::write(w.claude_file(), json).unwrap();
    std::fs::set_permissions(w.claude_file(), std::fs::Permissions::from_mode(0o600)).unwrap();
    w.ok(&["import"], "");
    t
}

/// The finding lines (without the summary).
fn findings(out: &Output) -> Vec<String> {
    stdout(out).lines().take_while(|l| !l.is_empty()).map(str::to_owned).collect()
}

/// The one finding line that mentions `needle`.
fn line_with(out: &Output, needle: &str) -> String {
    let lines: Vec<String> = findings(out).into_iter().filter(|l| l.contains(needle)).collect();
    assert_eq!(lines.len(), 1, "expected one line with {needle:?} in:\n{}", stdout(out));
    lines[0].clone()
}

fn assert_no_tokens(w: &World, tokens: &[&IssuedTokens]) {
    let text = w.transcript_text();
    for t in tokens {
        assert!(!text.contains(&t.access_token), "an access token was printed");
        assert!(!text.contains(&t.refresh_token), "a refresh token was printed");
    }
}

fn doctor(w: &World, args: &[&str]) -> Output {
    let mut argv = vec!["doctor"];
    argv.extend_from_slice(args);
    w.run(&argv, "")
}

/// Runs the fix doctor names for a bound file; exit 3 is `refresh --if-needed`'s "not needed".
fn reconcile(w: &World) {
    let out = w.run(&["refresh", "--if-needed", "--account", "main"], "");
    assert!(matches!(code(&out), 0 | 3), "{}", common::stderr(&out));
}

fn assert_all_ok(out: &Output) {
    let lines = findings(out);
    assert!(lines.len() >= 6, "{}", stdout(out));
    for l in &lines {
        assert!(l.starts_with("ok    "), "not ok: {l}\n{}", stdout(out));
    }
    assert_eq!(code(out), 0, "{}", stdout(out));
}

#[tokio::test(flavor = "multi_thread")]
async fn healthy_setup_is_all_ok_and_spends_nothing() {
    let w = World::new().await;
    let t = import_bound(&w);
    let before = w.mock.counts();
    let out = doctor(&w, &[]);
    assert_all_ok(&out);
    let config = w.dir.path().join("config.toml");
    assert!(line_with(&out, "config ").contains(&format!("config {} parses", config.display())));
    assert!(line_with(&out, "data directory").contains("mode 0700"));
    assert!(line_with(&out, "private to the owner").contains("tokenkeeper.db"));
    let account = line_with(&out, "account `main` (own, healthy)");
    assert!(account.contains("access token valid for") && account.contains("refresh token"), "{account}");
    assert!(line_with(&out, "token endpoint").contains(&w.mock.token_url()));
    assert!(line_with(&out, "bound file").contains("holds the stored token"));
    assert!(line_with(&out, "no Claude Code lock held").contains(".claude"));
    // The endpoint check is one harmless request: no refresh, no exchange.
    let after = w.mock.counts();
    assert_eq!(after.token_requests, before.token_requests + 1);
    assert_eq!((after.refresh_ok, after.refresh_invalid_grant), (before.refresh_ok, before.refresh_invalid_grant));
    assert_eq!(after.messages_ok, 0, "no API call without --probe");
    assert_no_tokens(&w, &[&t]);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_config_file_means_defaults() {
    let w = World::new().await;
    import_bound(&w);
    let out = w.cmd(&["doctor"]).env_remove("TOKENKEEPER_CONFIG").output().unwrap();
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    assert!(line_with(&out, "config").contains("no config file: using the defaults"), "{}", stdout(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_config_is_a_failure_naming_the_key() {
    let w = World::new().await;
    w.write_config("[keeper]\nleed = \"30m\"\n");
    let out = doctor(&w, &[]);
    assert_eq!(code(&out), 2, "{}", stdout(&out));
    let line = line_with(&out, "config does not load");
    assert!(line.starts_with("fail  ") && line.contains("leed") && line.contains("— fix: "), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn probe_makes_a_real_call_and_names_the_fix_for_401_and_429() {
    let w = World::new().await;
    let t = import_bound(&w);
    let out = doctor(&w, &["--probe"]);
    assert_all_ok(&out);
    assert!(line_with(&out, "API call").contains("answered 200"), "{}", stdout(&out));
    let req = w.mock.last_messages_request().unwrap();
    assert_eq!(req.anthropic_version.as_deref(), Some("2023-06-01"));
    assert!(req.anthropic_beta.unwrap().contains("oauth-2025-04-20"));
    assert_eq!(req.body["max_tokens"], 1);

    w.mock.push_fault(Fault::Messages401);
    let out = doctor(&w, &["--probe"]);
    assert_eq!(code(&out), 2, "{}", stdout(&out));
    let line = line_with(&out, "API call");
    assert!(line.starts_with("fail  ") && line.contains("401"), "{line}");
    assert!(line.contains("— fix: `tokenkeeper refresh --force --account main`"), "{line}");

    w.mock.push_fault(Fault::Messages429 { reset_secs: 600 });
    let out = doctor(&w, &["--probe"]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    let line = line_with(&out, "API call");
    assert!(line.starts_with("warn  ") && line.contains("429") && line.contains("— fix: wait until"), "{line}");
    assert_no_tokens(&w, &[&t]);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_modes_name_chmod() {
    let w = World::new().await;
    let t = import_bound(&w);
    let data = w.data_dir();
    let db = data.join("tokenkeeper.db");

    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = doctor(&w, &[]);
    assert_eq!(code(&out), 2, "{}", stdout(&out));
    let line = line_with(&out, "data directory");
    assert!(line.starts_with("fail  ") && line.contains("mode 0755"), "{line}");
    assert!(line.ends_with(&format!("— fix: chmod 700 {}", data.display())), "{line}");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();

    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = doctor(&w, &[]);
    assert_eq!(code(&out), 2, "{}", stdout(&out));
    let line = line_with(&out, "tokenkeeper.db is mode");
    assert!(line.starts_with("fail  ") && line.contains("0644"), "{line}");
    assert!(line.ends_with(&format!("— fix: chmod 600 {}", db.display())), "{line}");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();

    // A key file that others can read.
    let key = data.join("key");
    std::fs::write(&key, common::KEY_B64).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = doctor(&w, &[]);
    let line = line_with(&out, "key is mode");
    assert!(line.ends_with(&format!("— fix: chmod 600 {}", key.display())), "{line}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    // The bound Claude Code file holds tokens too.
    std::fs::set_permissions(w.claude_file(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = doctor(&w, &[]);
    let line = line_with(&out, ".credentials.json is mode");
    assert!(line.ends_with(&format!("— fix: chmod 600 {}", w.claude_file().display())), "{line}");
    std::fs::set_permissions(w.claude_file(), std::fs::Permissions::from_mode(0o600)).unwrap();

    assert_all_ok(&doctor(&w, &[]));
    assert_no_tokens(&w, &[&t]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_claude_lock_names_rmdir_and_a_fresh_one_is_fine() {
    let w = World::new().await;
    import_bound(&w);
    let newer = w.home().join(".claude/.oauth_refresh.lock");
    let older = w.home().join(".claude.lock");

    std::fs::create_dir(&newer).unwrap();
    let out = doctor(&w, &[]);
    assert_eq!(code(&out), 0, "a fresh lock is someone refreshing: {}", stdout(&out));
    assert!(line_with(&out, ".oauth_refresh.lock").contains("held and fresh"));

    // 61 s untouched: past the newer lock's 60 s; 11 s: past the older lock's 10 s.
    std::fs::File::open(&newer).unwrap().set_modified(SystemTime::now() - Duration::from_secs(61)).unwrap();
    std::fs::create_dir(&older).unwrap();
    std::fs::File::open(&older).unwrap().set_modified(SystemTime::now() - Duration::from_secs(11)).unwrap();
    let out = doctor(&w, &[]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    for lock in [&newer, &older] {
        let line = line_with(&out, &format!("lock {} is stale", lock.display()));
        assert!(line.starts_with("warn  "), "{line}");
        assert!(line.contains(&format!("`rmdir {}`", lock.display())), "{line}");
    }
    std::fs::remove_dir(&newer).unwrap();
    std::fs::remove_dir(&older).unwrap();
    assert_all_ok(&doctor(&w, &[]));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_token_endpoint_names_the_url_and_the_setting() {
    let w = World::new().await;
    import_bound(&w);
    // A port that was just free on loopback: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}/v1/oauth/token");
    let out = w.cmd(&["doctor"]).env("TOKENKEEPER_ANTHROPIC_TOKEN_URL", &url).output().unwrap();
    assert_eq!(code(&out), 2, "{}", stdout(&out));
    let line = line_with(&out, "token endpoint");
    assert!(line.starts_with(&format!("fail  token endpoint {url} is unreachable")), "{line}");
    assert!(line.contains("— fix: ") && line.contains("`[providers.anthropic] token_url`"), "{line}");
    assert!(line_with(&out, "config").contains("overridden by TOKENKEEPER_ANTHROPIC_TOKEN_URL"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bound_file_out_of_step_names_the_fix_that_works() {
    let w = World::new().await;
    let first = import_bound(&w);
    // Claude Code logs in again behind tokenkeeper's back.
    let (json, second) = w.claude_json("a@example.com");
    std::fs::write(w.claude_file(), json).unwrap();
    let out = doctor(&w, &[]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    let line = line_with(&out, "bound file");
    assert!(line.starts_with("warn  ") && line.contains("out of step"), "{line}");
    assert!(line.contains("newer token"), "{line}");
    assert!(line.contains("— fix: `tokenkeeper refresh --if-needed --account main` adopts it"), "{line}");

    reconcile(&w);
    assert_all_ok(&doctor(&w, &[]));

    // A blank stub (what a process that lost the refresh race writes) is out of step too.
    std::fs::write(
        w.claude_file(),
        r#"{"claudeAiOauth":{"accessToken":"","refreshToken":"","expiresAt":0,"scopes":[]}}"#,
    )
    .unwrap();
    let out = doctor(&w, &[]);
    let line = line_with(&out, "bound file");
    assert!(line.contains("out of step") && line.contains("blank stub"), "{line}");
    assert!(line.contains("— fix: `tokenkeeper refresh --force --account main` writes a fresh token back"), "{line}");
    w.ok(&["refresh", "--force", "--account", "main"], "");
    assert_all_ok(&doctor(&w, &[]));
    assert_no_tokens(&w, &[&first, &second]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sink_out_of_step_names_tokenkeeper_sync() {
    let w = World::new().await;
    let env = w.dir.path().join("bot.env");
    w.write_config(&format!(
        "[[sinks]]\naccount = \"main\"\nkind = \"env_file\"\npath = \"{}\"\nkey = \"CLAUDE_CODE_OAUTH_TOKEN\"\n",
        env.display()
    ));
    let t = import_bound(&w);
    let out = doctor(&w, &[]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    let line = line_with(&out, "sink env_file");
    assert!(line.contains("does not exist yet") && line.ends_with("— fix: tokenkeeper sync --account main"), "{line}");

    w.ok(&["sync"], "");
    assert_all_ok(&doctor(&w, &[]));

    std::fs::write(&env, "OTHER=1\nCLAUDE_CODE_OAUTH_TOKEN=sk-ant-oat01-old\n").unwrap();
    let out = doctor(&w, &[]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    let line = line_with(&out, "sink env_file");
    assert!(line.starts_with("warn  ") && line.contains("out of step"), "{line}");
    assert!(line.ends_with("— fix: tokenkeeper sync --account main"), "{line}");
    w.ok(&["sync", "--account", "main"], "");
    assert_all_ok(&doctor(&w, &[]));
    assert!(std::fs::read_to_string(&env).unwrap().starts_with("OTHER=1\n"));
    assert_no_tokens(&w, &[&t]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_login_names_tokenkeeper_login() {
    let w = World::new().await;
    let t = import_bound(&w);
    w.mock.revoke(&t.refresh_token);
    assert_eq!(code(&w.run(&["refresh", "--force"], "")), 4);
    let out = doctor(&w, &[]);
    assert_eq!(code(&out), 2, "{}", stdout(&out));
    let line = line_with(&out, "account `main` (");
    assert!(line.starts_with("fail  ") && line.contains("needs-login"), "{line}");
    assert!(line.ends_with("— fix: tokenkeeper login --account main"), "{line}");
    assert_no_tokens(&w, &[&t]);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_accounts_is_a_warning_with_the_way_to_add_one() {
    let w = World::new().await;
    drop(w.store().await);
    let out = doctor(&w, &[]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    assert!(line_with(&out, "no accounts yet").contains("— fix: `tokenkeeper login`"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_machine_is_told_how_to_start_and_nothing_is_created() {
    let w = World::new().await;
    let out = doctor(&w, &[]);
    assert_eq!(code(&out), 2, "{}", stdout(&out));
    let line = line_with(&out, "data directory");
    assert!(line.starts_with("fail  ") && line.contains("does not exist"), "{line}");
    assert!(line.contains("— fix: `tokenkeeper login` or `tokenkeeper import`"), "{line}");
    assert!(line_with(&out, "no accounts yet").starts_with("warn  "));
    // The endpoint is still checked: it is what a first login needs.
    assert!(line_with(&out, "token endpoint").starts_with("ok    "));
    assert!(!w.data_dir().exists(), "doctor must not create the data directory");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lead_not_shorter_than_the_token_lifetime_names_the_setting_and_the_account() {
    let w = World::new().await;
    w.write_config("[keeper]\nlead = \"10m\"\n");
    // 5-minute tokens; the lifetime is known once the keeper has refreshed one.
    w.mock.set_access_lifetime(Duration::from_secs(300));
    let (json, _) = w.claude_json("a@example.com");
    w.ok(&["import", "-", "--account", "main"], &json);
    let before = doctor(&w, &[]);
    assert!(!stdout(&before).contains("[keeper] lead"), "flagged before the lifetime is known:\n{}", stdout(&before));
    w.ok(&["refresh", "--force", "--account", "main"], "");

    let out = doctor(&w, &[]);
    let line = line_with(&out, "[keeper] lead");
    assert!(line.starts_with("warn  "), "{line}");
    assert!(
        line.contains("`[keeper] lead` (10m) is not shorter than the lifetime of account `main`'s token (5m)"),
        "{line}"
    );
    assert!(line.contains("refreshed at half its lifetime (2m 30s before expiry)"), "{line}");
    assert!(line.contains("fix: set `lead` under `[keeper]`") && line.contains("lead = \"2m 30s\""), "{line}");
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    // Inside its effective lead only at half the lifetime: a fresh token is not "expiring".
    assert!(stdout(&out).contains("account `main` (own, healthy)"), "{}", stdout(&out));

    // Following the fix clears it.
    w.write_config("[keeper]\nlead = \"2m 30s\"\n");
    let fixed = doctor(&w, &[]);
    assert!(!stdout(&fixed).contains("[keeper] lead"), "{}", stdout(&fixed));
}
