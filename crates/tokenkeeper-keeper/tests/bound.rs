//! A bound Claude Code file overwritten with a blank stub or an older token is repaired; a
//! newer token written there by Claude Code is adopted; follow mode never refreshes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod support;

use tokenkeeper_core::Clock;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokenkeeper_core::formats::{parse_credential, render_claude_credentials};
use tokenkeeper_core::store::EventKind;
use tokenkeeper_core::{Binding, BindingKind, Mode, Store};
use tokenkeeper_keeper::{KeeperError, RefreshPolicy};

fn bound(env: &support::Env) -> (std::path::PathBuf, Binding) {
    let dir = env.dir.path().join("home/.claude");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(".credentials.json");
    (file.clone(), Binding { kind: BindingKind::ClaudeCredentials, path: file })
}

#[tokio::test]
async fn blank_stub_and_older_token_are_repaired() {
    let env = support::env(|_| {}).await;
    let (file, binding) = bound(&env);
    std::fs::write(&file, r#"{"claudeAiOauth":{},"otherKey":"kept"}"#).unwrap();
    let (a, _) = env.seed("main", Some(binding), Mode::Own).await;
    let good = a.credential.access_token.clone();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("\"otherKey\":\"kept\""), "unknown keys must survive: {text}");
    assert!(text.contains("user:inference"));

    // The loser of a refresh race writes a blank stub.
    std::fs::write(
        &file,
        r#"{"claudeAiOauth":{"accessToken":"","refreshToken":"","expiresAt":0,"scopes":[]},"otherKey":"kept"}"#,
    )
    .unwrap();
    let a = env.keeper.sync_bound("main").await.unwrap();
    assert_eq!(a.credential.access_token, good);
    let repaired = parse_credential(&std::fs::read_to_string(&file).unwrap(), env.clock.now()).unwrap();
    assert_eq!(repaired.credential.access_token, good);

    // An older token.
    let mut older = a.credential.clone();
    older.access_token = "sk-ant-oat01-older".into();
    older.expires_at -= chrono::Duration::hours(3);
    std::fs::write(&file, render_claude_credentials(None, &older).unwrap()).unwrap();
    env.keeper.sync_bound("main").await.unwrap();
    let repaired = parse_credential(&std::fs::read_to_string(&file).unwrap(), env.clock.now()).unwrap();
    assert_eq!(repaired.credential.access_token, good);
    // Half-written JSON.
    std::fs::write(&file, "{\"claudeAiOauth\":{\"accessTo").unwrap();
    env.keeper.sync_bound("main").await.unwrap();
    let repaired = parse_credential(&std::fs::read_to_string(&file).unwrap(), env.clock.now()).unwrap();
    assert_eq!(repaired.credential.access_token, good);

    let events = env.store.events(Some("main"), 50).await.unwrap();
    assert_eq!(events.iter().filter(|e| e.kind == EventKind::Repaired).count(), 3);
    assert_eq!(env.account("main").await.version, a.version, "repairs never change the stored credential");
}

#[tokio::test]
async fn newer_token_from_claude_code_is_adopted_not_refreshed_again() {
    let env = support::env(|_| {}).await;
    let (file, binding) = bound(&env);
    env.seed("main", Some(binding), Mode::Own).await;
    // Claude Code logs in again (or refreshed): a newer credential lands in the file.
    env.clock.advance(chrono::Duration::minutes(1));
    let t2 = env.mock.issue_login("main@example.com");
    let newer = support::Env::credential(&t2);
    std::fs::write(&file, render_claude_credentials(None, &newer).unwrap()).unwrap();
    let a = env.keeper.sync_bound("main").await.unwrap();
    assert_eq!(a.credential.access_token.expose(), t2.access_token);
    assert_eq!(env.mock.counts().refresh_ok, 0);
}

#[tokio::test]
async fn follow_mode_reads_but_never_refreshes() {
    let env = support::env(|_| {}).await;
    let (file, binding) = bound(&env);
    let (a, _) = env.seed("f", Some(binding), Mode::Follow).await;
    // Follow mode never writes the bound file.
    assert!(!file.exists());
    env.clock.set(a.credential.expires_at - chrono::Duration::minutes(5));
    let e = env.keeper.refresh("f", RefreshPolicy::Force).await.unwrap_err();
    assert!(matches!(e, KeeperError::FollowMode { .. }), "{e}");
    assert_eq!(env.mock.counts().token_requests, 0);
    // Claude Code refreshes; we pick it up.
    let t = env.mock.issue_login("f@example.com");
    std::fs::write(&file, render_claude_credentials(None, &support::Env::credential(&t)).unwrap()).unwrap();
    let r = env.keeper.refresh("f", RefreshPolicy::IfWithin(env.keeper.lead())).await.unwrap();
    assert_eq!(r.account().credential.access_token.expose(), t.access_token);
    assert_eq!(env.mock.counts().token_requests, 0);
}

#[tokio::test]
async fn a_half_written_file_that_completes_is_adopted_not_clobbered() {
    let env = support::env(|_| {}).await;
    let (file, binding) = bound(&env);
    env.seed("main", Some(binding), Mode::Own).await;
    // `claude login` (no lock) has truncated the file and not yet written the rest.
    env.clock.advance(chrono::Duration::minutes(1));
    let t = env.mock.issue_login("main@example.com");
    let full = render_claude_credentials(None, &support::Env::credential(&t)).unwrap();
    std::fs::write(&file, &full[..full.len() / 3]).unwrap();
    // The rest lands only once the keeper's first read of the file has finished (inotify's
    // IN_CLOSE_NOWRITE: nothing else reads it), so that read saw the half and the login can
    // only be adopted by the recheck. A recheck that gave up too soon would repair instead.
    let inotify = Inotify::init(InitFlags::empty()).unwrap();
    inotify.add_watch(&file, AddWatchFlags::IN_CLOSE_NOWRITE).unwrap();
    let finisher = {
        let (file, full) = (file.clone(), full.clone());
        std::thread::spawn(move || {
            let events = inotify.read_events().unwrap();
            assert!(!events.is_empty());
            std::fs::write(&file, full).unwrap();
        })
    };
    let a = env.keeper.sync_bound("main").await.unwrap();
    // Only now join: if the keeper never read the file, this assertion fails instead of a hang.
    assert_eq!(a.credential.access_token.expose(), t.access_token, "the completed login was not adopted");
    finisher.join().unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), full, "the new login was clobbered");
}

/// Gemini CLI's `oauth_creds.json` as it writes it after a Google refresh: Google's answer has
/// no `refresh_token`, so the file may have none.
fn gemini_creds(access: &str, refresh: Option<&str>, expiry_ms: i64) -> String {
    let mut doc = serde_json::json!({
        "access_token": access, "scope": "https://www.googleapis.com/auth/cloud-platform",
        "token_type": "Bearer", "expiry_date": expiry_ms,
    });
    if let Some(r) = refresh {
        doc["refresh_token"] = serde_json::json!(r);
    }
    serde_json::to_string_pretty(&doc).unwrap()
}

#[tokio::test]
async fn a_gemini_file_reread_without_refresh_token_keeps_the_stored_one() {
    use tokenkeeper_core::formats::{Format, ParsedCredential};
    use tokenkeeper_core::store::CredentialChange;
    let env = support::env(|_| {}).await;
    let dir = env.dir.path().join("home/.gemini");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("oauth_creds.json");
    let binding = Binding { kind: BindingKind::Native, path: file.clone() };
    let t0 = env.clock.now().timestamp_millis();
    std::fs::write(&file, gemini_creds("ya29.first", Some("1//refresh-kept"), t0 + 3_600_000)).unwrap();
    let providers = env.keeper.providers().clone();
    let gemini = providers.get("gemini").unwrap().native_file().unwrap();
    let read = gemini.parse(&std::fs::read_to_string(&file).unwrap(), env.clock.now()).unwrap();
    let ingest = |parsed: ParsedCredential| tokenkeeper_keeper::Ingest {
        account: Some("gem".into()),
        parsed,
        mode: Some(Mode::Own),
        binding: Some(binding.clone()),
        change: CredentialChange::Imported,
        organization: None,
        provider: Some("gemini".into()),
    };
    let parsed = |credential| ParsedCredential { credential, format: Format::ClaudeJson, email: None };
    env.keeper.ingest(ingest(parsed(read.credential))).await.unwrap();
    let refresh = |a: &tokenkeeper_core::Account| a.credential.refresh_token.as_ref().map(|r| r.expose().to_owned());

    // Gemini CLI rewrites the same token without its refresh token: nothing to adopt, and
    // the stored refresh token stays.
    std::fs::write(&file, gemini_creds("ya29.first", None, t0 + 3_600_000)).unwrap();
    let a = env.keeper.sync_bound("gem").await.unwrap();
    assert_eq!(refresh(&a).as_deref(), Some("1//refresh-kept"));
    assert_eq!(a.credential.access_token.expose(), "ya29.first");

    // Gemini CLI refreshed by itself: a newer access token, still no refresh token. Adopted,
    // with the stored refresh token.
    std::fs::write(&file, gemini_creds("ya29.second", None, t0 + 7_200_000)).unwrap();
    let a = env.keeper.sync_bound("gem").await.unwrap();
    assert_eq!(a.credential.access_token.expose(), "ya29.second");
    assert_eq!(refresh(&a).as_deref(), Some("1//refresh-kept"));
    assert_eq!(refresh(&env.account("gem").await).as_deref(), Some("1//refresh-kept"), "stored too");

    // An import of such a file (no refresh token) keeps it as well.
    let text = gemini_creds("ya29.third", None, t0 + 10_800_000);
    let read = gemini.parse(&text, env.clock.now()).unwrap();
    assert!(read.credential.refresh_token.is_none());
    let a = env.keeper.ingest(ingest(parsed(read.credential))).await.unwrap();
    assert_eq!(a.account().credential.access_token.expose(), "ya29.third");
    assert_eq!(refresh(a.account()).as_deref(), Some("1//refresh-kept"));
}
