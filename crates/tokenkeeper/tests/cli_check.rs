//! `tokenkeeper check` through the real binary against the mock provider: the monitoring exit
//! status (Nagios's 0/1/2/3) for every level, its lines, `--json`, and that it spends nothing
//! and prints no token.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Output;

use chrono::{Duration, Utc};
use common::{stdout, World};
use tokenkeeper_core::store::{CredentialChange, CredentialUpdate};
use tokenkeeper_core::{Secret, Store};

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited with a status")
}

/// Imports a fresh mock login as `account`; returns its tokens.
fn import(w: &World, account: &str, email: &str) -> tokenkeeper_mock::IssuedTokens {
    let (json, t) = w.claude_json(email);
    w.ok(&["import", "-", "--account", account], &json);
    t
}

/// Makes the stored refresh token `age` old: stores a new login (the store stamps a new
/// refresh token's issue time with the update's time) as if it had happened `age` ago.
async fn age_refresh_token(w: &World, account: &str, age: Duration) {
    let store = w.store().await;
    let a = store.get_account(account).await.unwrap().unwrap();
    let t = w.mock.issue_login("aged@example.com");
    let mut credential = a.credential.clone();
    credential.access_token = Secret::new(t.access_token.clone());
    credential.refresh_token = Some(Secret::new(t.refresh_token.clone()));
    let update = CredentialUpdate {
        expected_version: a.version,
        credential,
        change: CredentialChange::Imported,
        at: Utc::now() - age,
        detail: "test: the refresh token is old".into(),
        email: None,
        organization: None,
    };
    let a = store.update_credential(account, &update).await.unwrap();
    let issued = a.refresh_token_issued_at.expect("an issue time");
    assert!(Utc::now() - issued >= age - Duration::minutes(1), "the store kept the old issue time");
}

fn assert_no_tokens(w: &World, tokens: &[&tokenkeeper_mock::IssuedTokens]) {
    let text = w.transcript_text();
    for t in tokens {
        assert!(!text.contains(&t.access_token), "an access token was printed");
        assert!(!text.contains(&t.refresh_token), "a refresh token was printed");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn healthy_is_ok_and_spends_nothing() {
    let w = World::new().await;
    let t = import(&w, "main", "a@example.com");
    let before = w.mock.counts();
    let out = w.run(&["check"], "");
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.starts_with("OK main: valid for 7h") || text.starts_with("OK main: valid for 8h"), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert_eq!(w.mock.counts(), before, "check must not talk to the provider");
    assert_no_tokens(&w, &[&t]);
}

#[tokio::test(flavor = "multi_thread")]
async fn expiring_is_still_ok() {
    let w = World::new().await;
    // Inside the default 30 min lead, and nobody refreshes: `check` only looks.
    w.mock.set_access_lifetime(std::time::Duration::from_secs(20 * 60));
    import(&w, "main", "a@example.com");
    let out = w.run(&["check"], "");
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    assert!(stdout(&out).starts_with("OK main: the access token of `main` expires in"), "{}", stdout(&out));
    assert!(stdout(&out).contains("due for refresh"), "{}", stdout(&out));
    assert_eq!(w.mock.counts().refresh_ok, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_old_refresh_token_is_a_warning() {
    let w = World::new().await;
    import(&w, "main", "a@example.com");
    // Default warn age 25 days, expected life 30.
    age_refresh_token(&w, "main", Duration::days(26) + Duration::hours(1)).await;
    let out = w.run(&["check"], "");
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.starts_with("WARNING main: the refresh token of `main` is 26d 1h old"), "{text}");
    assert!(text.contains("tokenkeeper login --account main"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn warn_age_comes_from_the_provider_config() {
    let w = World::new().await;
    w.write_config("[providers.anthropic]\nrefresh_token_warn_age = \"2d\"\n");
    import(&w, "main", "a@example.com");
    age_refresh_token(&w, "main", Duration::days(3)).await;
    let out = w.run(&["check"], "");
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    // With the default thresholds the same account is fine.
    w.write_config("");
    assert_eq!(code(&w.run(&["check"], "")), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_token_past_its_life_is_critical() {
    let w = World::new().await;
    import(&w, "main", "a@example.com");
    age_refresh_token(&w, "main", Duration::days(31)).await;
    let out = w.run(&["check"], "");
    assert_eq!(code(&out), 2, "{}", stdout(&out));
    assert!(stdout(&out).starts_with("CRITICAL main: the refresh token of `main` is 31d"), "{}", stdout(&out));
    assert!(stdout(&out).contains("past its expected life"), "{}", stdout(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn needs_login_is_critical() {
    let w = World::new().await;
    let t = import(&w, "main", "a@example.com");
    w.mock.revoke(&t.refresh_token);
    let out = w.run(&["refresh", "--force"], "");
    assert_eq!(code(&out), 4, "refresh of a revoked token exits NEEDS_LOGIN");
    let out = w.run(&["check"], "");
    assert_eq!(code(&out), 2, "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.starts_with("CRITICAL main: the provider rejected the refresh token of `main`"), "{text}");
    assert!(text.contains("tokenkeeper login --account main"), "{text}");
    assert_no_tokens(&w, &[&t]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_token_is_critical() {
    let w = World::new().await;
    let t = w.mock.issue_login("a@example.com");
    let json = serde_json::json!({
        "claudeAiOauth": {
            "accessToken": t.access_token,
            "refreshToken": t.refresh_token,
            "expiresAt": Utc::now().timestamp_millis() - 2 * 3600 * 1000,
            "scopes": ["user:inference", "user:profile"],
        }
    });
    w.ok(&["import", "-"], &json.to_string());
    let out = w.run(&["check"], "");
    assert_eq!(code(&out), 2, "{}", stdout(&out));
    assert!(stdout(&out).starts_with("CRITICAL main: the access token of `main` expired 2h"), "{}", stdout(&out));
    assert_no_tokens(&w, &[&t]);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_without_a_store_without_accounts_or_the_named_account() {
    let w = World::new().await;
    let out = w.run(&["check"], "");
    assert_eq!(code(&out), 3, "{}", stdout(&out));
    assert!(stdout(&out).starts_with("UNKNOWN: no store in"), "{}", stdout(&out));
    assert!(!w.data_dir().join("tokenkeeper.db").exists(), "check must not create a store");

    // A store with no accounts.
    drop(w.store().await);
    let out = w.run(&["check"], "");
    assert_eq!(code(&out), 3);
    assert!(stdout(&out).starts_with("UNKNOWN: no accounts yet"), "{}", stdout(&out));

    import(&w, "main", "a@example.com");
    let out = w.run(&["check", "--account", "nope"], "");
    assert_eq!(code(&out), 3);
    assert!(stdout(&out).contains("no account named `nope`"), "{}", stdout(&out));
    assert_eq!(code(&w.run(&["check", "--account", "main"], "")), 0);

    // A store that cannot be read: the wrong key.
    let out = w.cmd(&["check"]).env("TOKENKEEPER_KEY", "not a key").output().unwrap();
    assert_eq!(code(&out), 3, "{}", stdout(&out));
    assert!(stdout(&out).starts_with("UNKNOWN: cannot read the store"), "{}", stdout(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn worst_account_decides_and_comes_first() {
    let w = World::new().await;
    let a = import(&w, "alpha", "a@example.com");
    let b = import(&w, "beta", "b@example.com");
    age_refresh_token(&w, "beta", Duration::days(27)).await;
    let out = w.run(&["check"], "");
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("WARNING beta:"), "{lines:?}");
    assert!(lines[1].starts_with("OK alpha: valid for"), "{lines:?}");
    // One account only.
    assert_eq!(code(&w.run(&["check", "-a", "alpha"], "")), 0);
    assert_no_tokens(&w, &[&a, &b]);
}

#[tokio::test(flavor = "multi_thread")]
async fn json_has_the_views_and_the_exit_code() {
    let w = World::new().await;
    let t = import(&w, "main", "a@example.com");
    let out = w.run(&["check", "--json"], "");
    assert_eq!(code(&out), 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["status"], "ok");
    assert_eq!(v["accounts"][0]["name"], "main");
    assert_eq!(v["accounts"][0]["status"], "healthy");
    assert!(v["accounts"][0]["expires_in_seconds"].as_i64().unwrap() > 7 * 3600);

    age_refresh_token(&w, "main", Duration::days(40)).await;
    let out = w.run(&["check", "--json"], "");
    assert_eq!(code(&out), 2);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["exit_code"], 2);
    assert_eq!(v["status"], "critical");
    assert_eq!(v["accounts"][0]["status"], "critical");

    let out = w.run(&["check", "--json", "--account", "nope"], "");
    assert_eq!(code(&out), 3);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["exit_code"], 3);
    assert!(v["error"].as_str().unwrap().contains("nope"));
    assert_no_tokens(&w, &[&t]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_sink_recorded_by_the_daemon_is_a_warning_in_check_and_status() {
    let w = World::new().await;
    import(&w, "main", "sink@example.com");
    // What `serve` leaves in the store when a sink keeps failing.
    let health: serde_json::Value = serde_json::from_str(
        r#"[{"name":"env_file:/srv/bot/.env","account":"main","kind":"env_file","ok":false,"last_error":"cannot create the temporary file in /srv/bot: Permission denied","last_written_at":null,"writes":0,"failures":3}]"#,
    )
    .unwrap();
    let store = w.store().await;
    tokenkeeper_core::Store::put_state(&store, "sinks/health", &health, chrono::Utc::now()).await.unwrap();
    let out = w.run(&["check"], "");
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    assert!(stdout(&out).contains("env_file:/srv/bot/.env"), "{}", stdout(&out));
    let status = w.ok(&["status"], "");
    assert!(
        status.contains("sink env_file:/srv/bot/.env (main): FAILING: cannot create the temporary file"),
        "{status}"
    );
    assert!(status.contains("warning"), "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lead_not_shorter_than_the_token_lifetime_is_a_warning_naming_it() {
    let w = World::new().await;
    w.write_config("[keeper]\nlead = \"10m\"\n");
    w.mock.set_access_lifetime(std::time::Duration::from_secs(300));
    import(&w, "main", "a@example.com");
    // Imported: the token's issue time, so its lifetime, is unknown; nothing to flag yet.
    let out = w.run(&["check"], "");
    assert!(!stdout(&out).contains("[keeper] lead"), "{}", stdout(&out));
    w.ok(&["refresh", "--force", "--account", "main"], "");

    let out = w.run(&["check"], "");
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("OK main: valid for"), "{text}");
    assert!(
        lines[1].starts_with(
            "WARNING main: `[keeper] lead` (10m) is not shorter than the lifetime of account `main`'s token (5m)"
        ),
        "{text}"
    );
    assert!(lines[1].contains("fix: set `lead` under `[keeper]`") && lines[1].contains("lead = \"2m 30s\""), "{text}");

    let json: serde_json::Value = serde_json::from_str(&stdout(&w.run(&["check", "--json"], ""))).unwrap();
    assert_eq!(json["status"], "warning");
    assert_eq!(json["lead_too_long"][0]["account"], "main");
    assert_eq!(json["lead_too_long"][0]["lifetime"], "5m");

    w.write_config("[keeper]\nlead = \"2m\"\n");
    let out = w.run(&["check"], "");
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    assert_eq!(stdout(&out).lines().count(), 1, "{}", stdout(&out));
}
