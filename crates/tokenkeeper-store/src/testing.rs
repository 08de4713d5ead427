//! The store conformance suite: [`story`] walks every method of [`Store`] through its normal
//! and error cases. Every implementation (SQLite here, PostgreSQL later) runs it on an empty
//! store, so they cannot drift apart.
//!
//! Also small builders ([`credential`], [`new_account`], [`at`]) for tests of stores.

// A test suite: a broken expectation should stop it with its message, right there.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use tokenkeeper_core::account::{Account, AccountState, Binding, BindingKind, Mode, NewAccount};
use tokenkeeper_core::credential::Credential;
use tokenkeeper_core::secret::Secret;
use tokenkeeper_core::store::{
    AccountPatch, ApiKey, CredentialChange, CredentialUpdate, EventKind, NewEvent, Store, StoreError,
};

/// The instant `minutes` minutes after a fixed base time (whole milliseconds, as stored).
pub fn at(minutes: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_700_000_000_000 + minutes * 60_000).expect("in range")
}

/// A credential with the given tokens, expiring at [`at`]`(expires_minutes)`.
pub fn credential(access: &str, refresh: Option<&str>, expires_minutes: i64) -> Credential {
    Credential {
        access_token: Secret::new(access),
        refresh_token: refresh.map(Secret::new),
        expires_at: at(expires_minutes),
        scopes: vec!["user:inference".to_owned(), "user:profile".to_owned()],
        subscription_type: Some("max".to_owned()),
        rate_limit_tier: Some("default_claude_max_20x".to_owned()),
    }
}

/// A new, unbound `anthropic` account of mode `own`.
pub fn new_account(name: &str, credential: Credential) -> NewAccount {
    NewAccount {
        name: name.to_owned(),
        provider: "anthropic".to_owned(),
        mode: Mode::Own,
        credential,
        email: None,
        organization: None,
        binding: None,
        refresh_token_issued_at: None,
    }
}
/// One hand-out of `account` at `at`, as the keeper's meter flushes it.
pub fn use_of(account: &str, requests: u64, at: DateTime<Utc>) -> tokenkeeper_core::store::UsageRecord {
    tokenkeeper_core::store::UsageRecord {
        account: account.to_owned(),
        hour: at,
        requests,
        last_used_at: at,
        ..Default::default()
    }
}

/// A credential update from `expected_version`.
pub fn update(
    expected_version: i64,
    credential: Credential,
    change: CredentialChange,
    when: DateTime<Utc>,
) -> CredentialUpdate {
    CredentialUpdate {
        expected_version,
        credential,
        change,
        at: when,
        detail: format!("{change:?} in a test"),
        email: None,
        organization: None,
    }
}

fn api_key(id: &str, name: &str, hash: &str, created_minutes: i64) -> ApiKey {
    ApiKey {
        id: id.to_owned(),
        name: name.to_owned(),
        hash: hash.to_owned(),
        scopes: vec!["token:read".to_owned()],
        accounts: vec!["alpha".to_owned()],
        created_at: at(created_minutes),
        revoked_at: None,
    }
}

async fn get<S: Store + ?Sized>(store: &S, name: &str) -> Account {
    store.get_account(name).await.expect("get_account").unwrap_or_else(|| panic!("account `{name}` is missing"))
}

async fn kinds<S: Store + ?Sized>(store: &S, account: Option<&str>) -> Vec<EventKind> {
    store.events(account, 1000).await.expect("events").into_iter().map(|e| e.kind).collect()
}

/// Runs the conformance story against an empty store; panics at the first difference.
pub async fn story<S: Store + ?Sized>(store: &S) {
    // An empty store.
    assert!(store.list_accounts().await.expect("list").is_empty(), "the store must start empty");
    assert!(store.get_account("alpha").await.expect("get").is_none());
    assert!(store.events(None, 10).await.expect("events").is_empty());

    // Create: version 1, fields as given, an event of the change's kind.
    let mut bravo_new = new_account("bravo", credential("sk-ant-oat01-bravo1", Some("sk-ant-ort01-bravo1"), 600));
    bravo_new.mode = Mode::Follow;
    bravo_new.email = Some("bravo@example.com".to_owned());
    bravo_new.organization = Some("Bravo Org".to_owned());
    bravo_new.binding = Some(Binding {
        kind: BindingKind::ClaudeCredentials,
        path: PathBuf::from("/home/b/.claude/.credentials.json"),
    });
    bravo_new.refresh_token_issued_at = Some(at(-30));
    let bravo = store.create_account(&bravo_new, at(1), CredentialChange::Imported).await.expect("create bravo");
    assert_eq!(bravo.name, "bravo");
    assert_eq!(bravo.provider, "anthropic");
    assert_eq!(bravo.mode, Mode::Follow);
    assert_eq!(bravo.credential, bravo_new.credential);
    assert_eq!(bravo.version, 1);
    assert_eq!(bravo.email.as_deref(), Some("bravo@example.com"));
    assert_eq!(bravo.organization.as_deref(), Some("Bravo Org"));
    assert_eq!(bravo.binding, bravo_new.binding);
    assert_eq!(bravo.state, AccountState::Active);
    assert_eq!((bravo.created_at, bravo.updated_at), (at(1), at(1)));
    assert_eq!(bravo.last_refreshed_at, None);
    assert_eq!(bravo.refresh_token_issued_at, Some(at(-30)));
    assert_eq!((bravo.usage.requests, bravo.usage.last_used_at), (0, None));
    assert_eq!(bravo.last_error, None);

    // A long-lived token: no refresh token; its issue time defaults to the creation time.
    let alpha_new = new_account("alpha", credential("sk-ant-oat01-alpha1", None, 500));
    let alpha = store.create_account(&alpha_new, at(2), CredentialChange::LoggedIn).await.expect("create alpha");
    assert_eq!(alpha.credential.refresh_token, None);
    assert_eq!(alpha.refresh_token_issued_at, Some(at(2)));
    assert_eq!(alpha.binding, None);
    assert_eq!(kinds(store, None).await, [EventKind::LoggedIn, EventKind::Imported]);

    // A duplicate name is refused and changes nothing.
    let dup = new_account("alpha", credential("sk-ant-oat01-other", Some("sk-ant-ort01-other"), 900));
    match store.create_account(&dup, at(3), CredentialChange::Imported).await {
        Err(StoreError::AlreadyExists(name)) => assert_eq!(name, "alpha"),
        other => panic!("a duplicate account must be AlreadyExists, got {other:?}"),
    }
    assert_eq!(get(store, "alpha").await, alpha);
    assert_eq!(store.events(None, 10).await.expect("events").len(), 2);

    // Get and list (by name).
    assert_eq!(get(store, "bravo").await, bravo);
    let names: Vec<String> = store.list_accounts().await.expect("list").into_iter().map(|a| a.name).collect();
    assert_eq!(names, ["alpha", "bravo"]);

    // Compare-and-set that wins: a refresh with a new refresh token.
    let refreshed = credential("sk-ant-oat01-alpha2", Some("sk-ant-ort01-alpha2"), 1000);
    let mut up = update(1, refreshed.clone(), CredentialChange::Refreshed, at(10));
    up.email = Some("alpha@example.com".to_owned());
    let alpha2 = store.update_credential("alpha", &up).await.expect("CAS from the current version");
    assert_eq!(alpha2.version, 2);
    assert_eq!(alpha2.credential, refreshed);
    assert_eq!(alpha2.updated_at, at(10));
    assert_eq!(alpha2.last_refreshed_at, Some(at(10)));
    assert_eq!(alpha2.refresh_token_issued_at, Some(at(10)));
    assert_eq!(alpha2.email.as_deref(), Some("alpha@example.com"));
    assert_eq!(alpha2.organization, None, "an update without an organization keeps the stored one");
    assert_eq!(alpha2.created_at, at(2));
    assert_eq!(get(store, "alpha").await, alpha2);

    // A stale writer loses and changes nothing.
    let stale = update(
        1,
        credential("sk-ant-oat01-stale", Some("sk-ant-ort01-stale"), 2000),
        CredentialChange::Refreshed,
        at(11),
    );
    match store.update_credential("alpha", &stale).await {
        Err(StoreError::VersionConflict { account, expected, found }) => {
            assert_eq!((account.as_str(), expected, found), ("alpha", 1, 2));
        }
        other => panic!("a stale CAS must be VersionConflict, got {other:?}"),
    }
    assert_eq!(get(store, "alpha").await, alpha2);

    // No such account.
    let ghost = update(1, credential("sk-ant-oat01-ghost", None, 100), CredentialChange::Imported, at(12));
    assert!(matches!(store.update_credential("nobody", &ghost).await, Err(StoreError::NotFound(n)) if n == "nobody"));
    let patch = AccountPatch { state: Some(AccountState::NeedsLogin), ..AccountPatch::default() };
    assert!(
        matches!(store.patch_account("nobody", &patch, at(12)).await, Err(StoreError::NotFound(n)) if n == "nobody")
    );
    // Usage of a missing account is dropped, not an error (it may have been removed meanwhile).
    store.record_usage(&[use_of("nobody", 1, at(12))]).await.expect("usage of a missing account");
    assert!(store.usage(Some("nobody"), at(-100)).await.expect("usage").is_empty());
    assert!(!store.remove_account("nobody", at(12)).await.expect("remove a missing account"));

    // Patch: state, last error, mode, binding; unmentioned fields stay.
    let patch = AccountPatch {
        state: Some(AccountState::NeedsLogin),
        last_error: Some(Some("invalid_grant: refresh token revoked".to_owned())),
        mode: Some(Mode::Own),
        binding: Some(None),
    };
    let bravo2 = store.patch_account("bravo", &patch, at(20)).await.expect("patch bravo");
    assert_eq!(bravo2.state, AccountState::NeedsLogin);
    assert_eq!(bravo2.last_error.as_deref(), Some("invalid_grant: refresh token revoked"));
    assert_eq!(bravo2.mode, Mode::Own);
    assert_eq!(bravo2.binding, None);
    assert_eq!(bravo2.updated_at, at(20));
    assert_eq!((bravo2.version, &bravo2.credential), (1, &bravo.credential), "a patch never touches the credential");
    assert_eq!(get(store, "bravo").await, bravo2);
    let unchanged = store.patch_account("bravo", &AccountPatch::default(), at(21)).await.expect("empty patch");
    assert_eq!(
        (unchanged.state, &unchanged.last_error, unchanged.mode),
        (bravo2.state, &bravo2.last_error, bravo2.mode)
    );
    let keychain = Binding { kind: BindingKind::Keychain, path: PathBuf::from("Claude Code-credentials") };
    let rebound = AccountPatch { binding: Some(Some(keychain.clone())), ..AccountPatch::default() };
    assert_eq!(store.patch_account("bravo", &rebound, at(22)).await.expect("bind").binding, Some(keychain.clone()));

    // A credential update revives a needs-login account and clears its error; an import with
    // the same refresh token is neither a refresh nor a new refresh token.
    let mut reimport = bravo.credential.clone();
    reimport.access_token = Secret::new("sk-ant-oat01-bravo2");
    reimport.expires_at = at(700);
    let bravo3 = store
        .update_credential("bravo", &update(1, reimport.clone(), CredentialChange::Imported, at(30)))
        .await
        .expect("CAS on bravo");
    assert_eq!(bravo3.version, 2);
    assert_eq!(bravo3.state, AccountState::Active);
    assert_eq!(bravo3.last_error, None);
    assert_eq!(bravo3.last_refreshed_at, None);
    assert_eq!(bravo3.refresh_token_issued_at, Some(at(-30)));
    assert_eq!(bravo3.email.as_deref(), Some("bravo@example.com"));
    assert_eq!(bravo3.organization.as_deref(), Some("Bravo Org"));
    assert_eq!(bravo3.binding, Some(keychain));
    assert_eq!(bravo3.credential, reimport);
    // Adopting someone else's refresh counts as a refresh.
    let adopted = credential("sk-ant-oat01-bravo3", Some("sk-ant-ort01-bravo3"), 800);
    let bravo4 = store
        .update_credential("bravo", &update(2, adopted, CredentialChange::Adopted, at(31)))
        .await
        .expect("adopt on bravo");
    assert_eq!(
        (bravo4.version, bravo4.last_refreshed_at, bravo4.refresh_token_issued_at),
        (3, Some(at(31)), Some(at(31)))
    );

    // Usage counters.
    store.record_usage(&[use_of("alpha", 1, at(40))]).await.expect("usage");
    store.record_usage(&[use_of("alpha", 1, at(41))]).await.expect("usage");
    let used = get(store, "alpha").await;
    assert_eq!((used.usage.requests, used.usage.last_used_at), (2, Some(at(41))));
    assert_eq!(used.version, 2, "usage is not a credential change");

    // Events recorded by hand, then the log: newest first, limited, filtered.
    let failed =
        NewEvent { account: "alpha".into(), kind: EventKind::RefreshFailed, at: at(50), detail: "HTTP 500".into() };
    store.record_event(&failed).await.expect("record_event");
    let repaired =
        NewEvent { account: "bravo".into(), kind: EventKind::Repaired, at: at(51), detail: "rewrote the file".into() };
    store.record_event(&repaired).await.expect("record_event");
    let all = store.events(None, 100).await.expect("events");
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "events must be newest first");
    assert_eq!(
        all.iter().map(|e| (e.account.as_str(), e.kind)).collect::<Vec<_>>(),
        [
            ("bravo", EventKind::Repaired),
            ("alpha", EventKind::RefreshFailed),
            ("bravo", EventKind::Adopted),
            ("bravo", EventKind::Imported),
            ("alpha", EventKind::Refreshed),
            ("alpha", EventKind::LoggedIn),
            ("bravo", EventKind::Imported),
        ]
    );
    assert_eq!((all[0].at, all[0].detail.as_str()), (at(51), "rewrote the file"));
    assert_eq!(all[4].detail, "Refreshed in a test");
    let newest = store.events(None, 2).await.expect("events");
    assert_eq!(newest, all[..2]);
    assert_eq!(
        kinds(store, Some("alpha")).await,
        [EventKind::RefreshFailed, EventKind::Refreshed, EventKind::LoggedIn]
    );
    assert_eq!(store.events(Some("alpha"), 1).await.expect("events")[0], all[1]);
    assert!(store.events(Some("nobody"), 10).await.expect("events").is_empty());
    for event in &all {
        assert!(!event.detail.contains("alpha1") && !event.detail.contains("bravo1"), "a token in an event: {event:?}");
    }

    // Remove: gone, with a `removed` event; a second removal finds nothing; the name is free.
    assert!(store.remove_account("bravo", at(60)).await.expect("remove"));
    assert!(store.get_account("bravo").await.expect("get").is_none());
    let names: Vec<String> = store.list_accounts().await.expect("list").into_iter().map(|a| a.name).collect();
    assert_eq!(names, ["alpha"]);
    let last = &store.events(None, 1).await.expect("events")[0];
    assert_eq!((last.account.as_str(), last.kind, last.at), ("bravo", EventKind::Removed, at(60)));
    assert!(!store.remove_account("bravo", at(61)).await.expect("remove again"));
    assert_eq!(store.events(None, 1).await.expect("events")[0].id, last.id, "no event for removing nothing");
    let again = store.create_account(&bravo_new, at(62), CredentialChange::Imported).await.expect("recreate bravo");
    assert_eq!(again.version, 1);

    // API keys.
    assert!(store.list_api_keys().await.expect("list keys").is_empty());
    let ci = api_key("key_ci", "ci", "aa11", 70);
    let laptop = ApiKey {
        accounts: vec![],
        scopes: vec!["token:read".into(), "admin".into()],
        ..api_key("key_laptop", "laptop", "bb22", 71)
    };
    store.create_api_key(&ci).await.expect("create key");
    store.create_api_key(&laptop).await.expect("create key");
    assert!(store.create_api_key(&api_key("key_other", "ci", "cc33", 72)).await.is_err(), "a live name is unique");
    assert!(store.create_api_key(&api_key("key_other", "other", "aa11", 72)).await.is_err(), "a hash is unique");
    assert_eq!(store.list_api_keys().await.expect("list keys"), [ci.clone(), laptop.clone()]);
    assert_eq!(store.find_api_key("aa11").await.expect("find"), Some(ci.clone()));
    assert_eq!(store.find_api_key("ffff").await.expect("find"), None);
    assert!(store.revoke_api_key("ci", at(80)).await.expect("revoke by name"));
    assert_eq!(store.find_api_key("aa11").await.expect("find"), None, "a revoked key is not found");
    assert!(!store.revoke_api_key("ci", at(81)).await.expect("revoke again"));
    assert!(store.revoke_api_key("key_laptop", at(82)).await.expect("revoke by id"));
    assert!(!store.revoke_api_key("nothing", at(83)).await.expect("revoke unknown"));
    let listed = store.list_api_keys().await.expect("list keys");
    assert_eq!(
        listed.iter().map(|k| (k.id.as_str(), k.revoked_at)).collect::<Vec<_>>(),
        [("key_ci", Some(at(80))), ("key_laptop", Some(at(82)))],
        "revoked keys are still listed"
    );
    // A revoked key's name may be reused.
    let ci2 = api_key("key_ci2", "ci", "dd44", 90);
    store.create_api_key(&ci2).await.expect("reuse a revoked key's name");
    assert_eq!(store.find_api_key("dd44").await.expect("find"), Some(ci2));
}
