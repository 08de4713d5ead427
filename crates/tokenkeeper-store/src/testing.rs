//! The conformance suite of a backend: one test per property of [`Store`], of the change feed
//! that goes with it, and of compare-and-set under contention. Every backend (SQLite in this
//! crate's tests, PostgreSQL in `tokenkeeper-store-postgres`'s) runs all of it, so they cannot
//! drift apart:
//!
//! ```text
//! struct Mine { /* an empty installation: a directory, a database */ }
//! #[async_trait::async_trait]
//! impl tokenkeeper_store::testing::Installation for Mine {
//!     async fn open(&self) -> tokenkeeper_core::Backend { /* open it, as a process would */ }
//! }
//! async fn fresh() -> Mine { /* … */ }
//! tokenkeeper_store::store_conformance!(fresh);
//! ```
//!
//! The properties are the functions of [`properties`]; [`store_conformance!`] makes one
//! `#[tokio::test]` of each. Also small builders ([`credential`], [`new_account`], [`at`]) for
//! tests of stores.

// A test suite: a broken expectation should stop it with its message, right there.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use tokenkeeper_core::account::{Account, Mode, NewAccount};
use tokenkeeper_core::backend::Backend;
use tokenkeeper_core::credential::Credential;
use tokenkeeper_core::secret::Secret;
use tokenkeeper_core::store::{ApiKey, CredentialChange, CredentialUpdate, EventKind, Store, UsageRecord, WebSession};

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
        provider_data: None,
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
pub fn use_of(account: &str, requests: u64, at: DateTime<Utc>) -> UsageRecord {
    UsageRecord { account: account.to_owned(), hour: at, requests, last_used_at: at, ..Default::default() }
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

/// An API key with scope `token:read` for account `alpha`.
pub fn api_key(id: &str, name: &str, hash: &str, created_minutes: i64) -> ApiKey {
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

/// The account `name`, which must exist.
pub async fn get<S: Store + ?Sized>(store: &S, name: &str) -> Account {
    store.get_account(name).await.expect("get_account").unwrap_or_else(|| panic!("account `{name}` is missing"))
}

/// The kinds of the newest 1000 events, newest first.
pub async fn kinds<S: Store + ?Sized>(store: &S, account: Option<&str>) -> Vec<EventKind> {
    store.events(account, 1000).await.expect("events").into_iter().map(|e| e.kind).collect()
}

/// The start of the UTC hour `n` hours after the one [`at`]`(0)` falls in.
pub fn hour(n: i64) -> DateTime<Utc> {
    UsageRecord::hour_of(at(0)) + TimeDelta::hours(n)
}

/// A usage record of `requests` plain hand-outs of `account` in [`hour`]`(hour_n)`, the latest
/// at [`at`]`(last_minutes)`.
pub fn usage(account: &str, hour_n: i64, requests: u64, last_minutes: i64) -> UsageRecord {
    UsageRecord {
        account: account.to_owned(),
        hour: hour(hour_n),
        requests,
        last_used_at: at(last_minutes),
        ..UsageRecord::default()
    }
}

/// One installation of a backend under test, empty when made: what every process of it shares
/// (a data directory, a database).
#[async_trait::async_trait]
pub trait Installation: Send + Sync + 'static {
    /// Opens the installation as one more process (or replica) would: a store with its own
    /// connections, and its own lock and feed. Panics if it cannot.
    async fn open(&self) -> Backend;

    /// Everything the installation keeps, as bytes a reader of its storage without the key
    /// would see (the database files, or every row of every table as text): what a property
    /// searches for secrets that must not be there in clear.
    async fn raw(&self) -> Vec<u8>;
}

/// One `#[tokio::test]` per conformance property, each on a fresh installation made by
/// `$fresh` (an `async fn() -> impl Installation`). Invoke it once in a test file of the
/// backend; see the [module docs](crate::testing).
#[macro_export]
macro_rules! store_conformance {
    ($fresh:path) => {
        $crate::store_conformance!(@each $fresh;
            a_new_store_is_empty,
            create_keeps_every_field_at_version_one,
            a_long_lived_token_has_no_refresh_token_and_defaults_its_issue_time,
            a_duplicate_name_is_refused_and_changes_nothing,
            accounts_are_listed_by_name,
            a_compare_and_set_from_the_current_version_wins,
            a_stale_writer_loses_and_changes_nothing,
            a_missing_account_is_not_found,
            a_patch_changes_only_what_it_names,
            a_credential_update_revives_and_keeps_what_it_does_not_mention,
            events_are_newest_first_limited_filtered_and_tokenless,
            removal_forgets_the_account_and_keeps_its_events,
            api_keys_are_unique_found_by_hash_and_revoked,
            usage_buckets_add_up_and_the_account_follows,
            last_used_at_never_moves_back,
            usage_of_a_missing_account_is_skipped,
            usage_is_read_since_an_hour_and_by_account,
            the_attempt_budget_grants_max_per_rolling_hour,
            the_attempt_budget_is_per_account,
            the_attempt_budget_is_atomic_across_processes,
            state_round_trips_and_is_replaced,
            state_is_listed_by_prefix_in_key_order,
            state_removal_says_whether_it_existed,
            the_feed_reports_each_kind_of_write,
            the_feed_is_silent_for_usage_state_and_failed_writes,
            the_feed_carries_changes_of_another_process,
            the_feed_yields_concurrent_changes_once_in_order,
            cas_sixteen_tasks_one_process_exactly_one_wins_each_round,
            cas_four_processes_opened_at_once_exactly_one_wins_each_round,
            one_process_leads_until_it_lets_go_and_a_waiter_takes_over,
            sealed_secrets_open_for_their_purpose_only_and_reveal_nothing,
            provider_data_is_sealed_with_the_tokens_and_round_trips,
            a_web_session_is_found_by_hash_in_every_process_until_it_ends,
            signing_out_in_one_process_ends_the_session_in_every_process,
            a_session_message_is_taken_once,
            pruning_drops_ended_sessions_then_the_oldest_beyond_the_bound,
        );
    };
    (@each $fresh:path; $($property:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $property() {
                let installation: ::std::sync::Arc<dyn $crate::testing::Installation> =
                    ::std::sync::Arc::new($fresh().await);
                $crate::testing::properties::$property(installation).await;
            }
        )*
    };
}

/// The properties every backend must have, one function each (see [`store_conformance!`]).
pub mod properties {
    use std::collections::BTreeSet;
    use std::path::PathBuf;
    use std::time::Duration;

    use tokenkeeper_core::account::{AccountState, Binding, BindingKind};
    use tokenkeeper_core::backend::{ChangeKind, ChangeSubscription, FeedItem, StoreChange};
    use tokenkeeper_core::store::{AccountPatch, Attempt, NewEvent, StoreError};
    use tokio::sync::Barrier;

    use super::*;

    /// How long a feed may take to deliver a committed change before the test fails.
    const FEED_WAIT: Duration = Duration::from_secs(10);

    async fn store(installation: &Arc<dyn Installation>) -> Arc<dyn Store> {
        installation.open().await.store
    }

    fn alpha() -> NewAccount {
        new_account("alpha", credential("sk-ant-oat01-alpha1", None, 500))
    }

    /// `bravo`: every optional field set.
    fn bravo() -> NewAccount {
        let mut new = new_account("bravo", credential("sk-ant-oat01-bravo1", Some("sk-ant-ort01-bravo1"), 600));
        new.mode = Mode::Follow;
        new.email = Some("bravo@example.com".to_owned());
        new.organization = Some("Bravo Org".to_owned());
        new.binding = Some(Binding {
            kind: BindingKind::ClaudeCredentials,
            path: PathBuf::from("/home/b/.claude/.credentials.json"),
        });
        new.refresh_token_issued_at = Some(at(-30));
        new
    }

    async fn create(store: &dyn Store, new: &NewAccount, minutes: i64) -> Account {
        store.create_account(new, at(minutes), CredentialChange::Imported).await.expect("create_account")
    }

    async fn names(store: &dyn Store) -> Vec<String> {
        store.list_accounts().await.expect("list").into_iter().map(|a| a.name).collect()
    }

    /// The next item of `sub`, failing the test after [`FEED_WAIT`].
    pub async fn next_item(sub: &mut dyn ChangeSubscription) -> FeedItem {
        match tokio::time::timeout(FEED_WAIT, sub.next()).await {
            Ok(Some(item)) => item,
            Ok(None) => panic!("the change feed ended"),
            Err(_) => panic!("no change arrived within {FEED_WAIT:?}"),
        }
    }

    /// The next `n` changes of `sub` (a `Resync` fails the test), checking `seq` grows.
    pub async fn next_changes(sub: &mut dyn ChangeSubscription, n: usize) -> Vec<StoreChange> {
        let mut changes: Vec<StoreChange> = Vec::with_capacity(n);
        while changes.len() < n {
            match next_item(sub).await {
                FeedItem::Change(change) => {
                    if let Some(previous) = changes.last() {
                        assert!(change.seq > previous.seq, "seq must grow: {previous:?} then {change:?}");
                    }
                    changes.push(change);
                }
                FeedItem::Resync => panic!("unexpected Resync after {changes:?}"),
            }
        }
        changes
    }

    /// (account, kind, version) of each change, for comparing without `seq`.
    fn what(changes: &[StoreChange]) -> Vec<(Option<&str>, ChangeKind, Option<i64>)> {
        changes.iter().map(|c| (c.account.as_deref(), c.kind, c.version)).collect()
    }

    /// A fresh installation has no accounts, events, API keys, usage or state.
    pub async fn a_new_store_is_empty(installation: Arc<dyn Installation>) {
        let store = store(&installation).await;
        assert!(store.list_accounts().await.expect("list").is_empty(), "the store must start empty");
        assert!(store.get_account("alpha").await.expect("get").is_none());
        assert!(store.events(None, 10).await.expect("events").is_empty());
        assert!(store.list_api_keys().await.expect("keys").is_empty());
        assert!(store.usage(None, at(-100_000)).await.expect("usage").is_empty());
        assert!(store.list_state("").await.expect("state").is_empty());
    }

    /// `create_account` stores every field as given, at version 1, with no refresh, usage or error
    /// yet and one `imported` event; what it returns is what is stored, and another process reads
    /// (and decrypts) the same.
    pub async fn create_keeps_every_field_at_version_one(installation: Arc<dyn Installation>) {
        let store = store(&installation).await;
        let new = bravo();
        let bravo = create(&*store, &new, 1).await;
        assert_eq!(bravo.name, "bravo");
        assert_eq!(bravo.provider, "anthropic");
        assert_eq!(bravo.mode, Mode::Follow);
        assert_eq!(bravo.credential, new.credential);
        assert_eq!(bravo.version, 1);
        assert_eq!(bravo.email.as_deref(), Some("bravo@example.com"));
        assert_eq!(bravo.organization.as_deref(), Some("Bravo Org"));
        assert_eq!(bravo.binding, new.binding);
        assert_eq!(bravo.state, AccountState::Active);
        assert_eq!((bravo.created_at, bravo.updated_at), (at(1), at(1)));
        assert_eq!(bravo.last_refreshed_at, None);
        assert_eq!(bravo.refresh_token_issued_at, Some(at(-30)));
        assert_eq!((bravo.usage.requests, bravo.usage.last_used_at), (0, None));
        assert_eq!(bravo.last_error, None);
        assert_eq!(get(&*store, "bravo").await, bravo, "what create returns is what is stored");
        assert_eq!(kinds(&*store, None).await, [EventKind::Imported]);
        // Another process reads the same (and can decrypt it with the installation's key).
        assert_eq!(get(&*installation.open().await.store, "bravo").await, bravo);
    }

    /// An account created without a refresh token keeps none, and its `refresh_token_issued_at`
    /// defaults to the creation time.
    pub async fn a_long_lived_token_has_no_refresh_token_and_defaults_its_issue_time(
        installation: Arc<dyn Installation>,
    ) {
        let store = store(&installation).await;
        let alpha = store.create_account(&alpha(), at(2), CredentialChange::LoggedIn).await.expect("create");
        assert_eq!(alpha.credential.refresh_token, None);
        assert_eq!(alpha.refresh_token_issued_at, Some(at(2)));
        assert_eq!(alpha.binding, None);
        assert_eq!(kinds(&*store, None).await, [EventKind::LoggedIn]);
    }

    /// Creating a second account of a taken name fails with `AlreadyExists` and leaves the first
    /// account and the event log as they were.
    pub async fn a_duplicate_name_is_refused_and_changes_nothing(installation: Arc<dyn Installation>) {
        let store = store(&installation).await;
        let alpha = create(&*store, &alpha(), 2).await;
        let dup = new_account("alpha", credential("sk-ant-oat01-other", Some("sk-ant-ort01-other"), 900));
        match store.create_account(&dup, at(3), CredentialChange::Imported).await {
            Err(StoreError::AlreadyExists(name)) => assert_eq!(name, "alpha"),
            other => panic!("a duplicate account must be AlreadyExists, got {other:?}"),
        }
        assert_eq!(get(&*store, "alpha").await, alpha);
        assert_eq!(store.events(None, 10).await.expect("events").len(), 1);
    }

    /// `list_accounts` orders by name bytewise (upper case first), whatever the database's locale.
    pub async fn accounts_are_listed_by_name(installation: Arc<dyn Installation>) {
        let store = store(&installation).await;
        for name in ["bravo", "Zulu", "alpha", "alpha-2"] {
            create(&*store, &new_account(name, credential("sk-ant-oat01-x", None, 10)), 0).await;
        }
        // Bytewise: upper case before lower case, whatever the database's locale.
        assert_eq!(names(&*store).await, ["Zulu", "alpha", "alpha-2", "bravo"]);
    }

    /// `update_credential` from the current version bumps it, stores the credential and email,
    /// keeps the organization it does not mention, sets `last_refreshed_at` for a refresh and
    /// records the event.
    pub async fn a_compare_and_set_from_the_current_version_wins(installation: Arc<dyn Installation>) {
        let store = store(&installation).await;
        create(&*store, &alpha(), 2).await;
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
        assert_eq!(get(&*store, "alpha").await, alpha2);
        assert_eq!(kinds(&*store, Some("alpha")).await, [EventKind::Refreshed, EventKind::Imported]);
        assert_eq!(store.events(None, 1).await.expect("events")[0].detail, "Refreshed in a test");
    }

    /// An update from an old version fails with `VersionConflict` (expected and found versions
    /// named) and writes neither the credential nor an event.
    pub async fn a_stale_writer_loses_and_changes_nothing(installation: Arc<dyn Installation>) {
        let store = store(&installation).await;
        create(&*store, &alpha(), 2).await;
        let fresh = credential("sk-ant-oat01-alpha2", Some("sk-ant-ort01-alpha2"), 1000);
        let alpha2 = store.update_credential("alpha", &update(1, fresh, CredentialChange::Refreshed, at(10))).await;
        let alpha2 = alpha2.expect("first writer");
        let stale = credential("sk-ant-oat01-stale", Some("sk-ant-ort01-stale"), 2000);
        match store.update_credential("alpha", &update(1, stale, CredentialChange::Refreshed, at(11))).await {
            Err(StoreError::VersionConflict { account, expected, found }) => {
                assert_eq!((account.as_str(), expected, found), ("alpha", 1, 2));
            }
            other => panic!("a stale CAS must be VersionConflict, got {other:?}"),
        }
        assert_eq!(get(&*store, "alpha").await, alpha2);
        assert_eq!(store.events(Some("alpha"), 10).await.expect("events").len(), 2, "no event for the loser");
    }

    /// Updating or patching an unknown account is `NotFound`, removing it returns `false`, and
    /// none of it records an event.
    pub async fn a_missing_account_is_not_found(installation: Arc<dyn Installation>) {
        let store = store(&installation).await;
        let ghost = update(1, credential("sk-ant-oat01-ghost", None, 100), CredentialChange::Imported, at(12));
        assert!(
            matches!(store.update_credential("nobody", &ghost).await, Err(StoreError::NotFound(n)) if n == "nobody")
        );
        let patch = AccountPatch { state: Some(AccountState::NeedsLogin), ..AccountPatch::default() };
        assert!(
            matches!(store.patch_account("nobody", &patch, at(12)).await, Err(StoreError::NotFound(n)) if n == "nobody")
        );
        assert!(!store.remove_account("nobody", at(12)).await.expect("remove a missing account"));
        assert!(store.events(None, 10).await.expect("events").is_empty(), "no event for a missing account");
    }

    /// `patch_account` sets the state, error, mode and binding it names (`Some(None)` clears),
    /// keeps the rest and never touches the credential or its version.
    pub async fn a_patch_changes_only_what_it_names(installation: Arc<dyn Installation>) {
        let store = store(&installation).await;
        let bravo = create(&*store, &bravo(), 1).await;
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
        assert_eq!(
            (bravo2.version, &bravo2.credential),
            (1, &bravo.credential),
            "a patch never touches the credential"
        );
        assert_eq!(get(&*store, "bravo").await, bravo2);
        let unchanged = store.patch_account("bravo", &AccountPatch::default(), at(21)).await.expect("empty patch");
        assert_eq!(
            (unchanged.state, &unchanged.last_error, unchanged.mode, &unchanged.binding),
            (bravo2.state, &bravo2.last_error, bravo2.mode, &bravo2.binding)
        );
        let keychain = Binding { kind: BindingKind::Keychain, path: PathBuf::from("Claude Code-credentials") };
        let rebound = AccountPatch { binding: Some(Some(keychain.clone())), ..AccountPatch::default() };
        let bound = store.patch_account("bravo", &rebound, at(22)).await.expect("bind");
        assert_eq!(bound.binding, Some(keychain));
        assert_eq!(bound.last_error.as_deref(), Some("invalid_grant: refresh token revoked"), "unmentioned: kept");
        let cleared = AccountPatch { last_error: Some(None), ..AccountPatch::default() };
        assert_eq!(store.patch_account("bravo", &cleared, at(23)).await.expect("clear").last_error, None);
    }

    /// A credential update makes a `needs-login` account active and clears its error, keeps its
    /// email, organization and binding; a re-import of the same refresh token moves neither
    /// `last_refreshed_at` nor the issue time, an adoption moves both.
    pub async fn a_credential_update_revives_and_keeps_what_it_does_not_mention(installation: Arc<dyn Installation>) {
        let store = store(&installation).await;
        let bravo = create(&*store, &bravo(), 1).await;
        let keychain = Binding { kind: BindingKind::Keychain, path: PathBuf::from("Claude Code-credentials") };
        let patch = AccountPatch {
            state: Some(AccountState::NeedsLogin),
            last_error: Some(Some("invalid_grant".to_owned())),
            binding: Some(Some(keychain.clone())),
            ..AccountPatch::default()
        };
        store.patch_account("bravo", &patch, at(20)).await.expect("patch");
        // An import with the same refresh token is neither a refresh nor a new refresh token.
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
    }

    /// `events` lists newest first, up to the limit, optionally of one account, and no event
    /// detail holds a token.
    pub async fn events_are_newest_first_limited_filtered_and_tokenless(installation: Arc<dyn Installation>) {
        let store = store(&installation).await;
        create(&*store, &bravo(), 1).await;
        store.create_account(&alpha(), at(2), CredentialChange::LoggedIn).await.expect("create");
        let refreshed = credential("sk-ant-oat01-alpha2", Some("sk-ant-ort01-alpha2"), 1000);
        store.update_credential("alpha", &update(1, refreshed, CredentialChange::Refreshed, at(10))).await.unwrap();
        let failed =
            NewEvent { account: "alpha".into(), kind: EventKind::RefreshFailed, at: at(50), detail: "HTTP 500".into() };
        store.record_event(&failed).await.expect("record_event");
        let repaired = NewEvent {
            account: "bravo".into(),
            kind: EventKind::Repaired,
            at: at(51),
            detail: "rewrote the file".into(),
        };
        store.record_event(&repaired).await.expect("record_event");
        let all = store.events(None, 100).await.expect("events");
        assert!(all.windows(2).all(|w| w[0].id > w[1].id), "events must be newest first");
        assert_eq!(
            all.iter().map(|e| (e.account.as_str(), e.kind)).collect::<Vec<_>>(),
            [
                ("bravo", EventKind::Repaired),
                ("alpha", EventKind::RefreshFailed),
                ("alpha", EventKind::Refreshed),
                ("alpha", EventKind::LoggedIn),
                ("bravo", EventKind::Imported),
            ]
        );
        assert_eq!((all[0].at, all[0].detail.as_str()), (at(51), "rewrote the file"));
        assert_eq!(store.events(None, 2).await.expect("events"), all[..2]);
        assert_eq!(
            kinds(&*store, Some("alpha")).await,
            [EventKind::RefreshFailed, EventKind::Refreshed, EventKind::LoggedIn]
        );
        assert_eq!(store.events(Some("alpha"), 1).await.expect("events")[0], all[1]);
        assert!(store.events(Some("nobody"), 10).await.expect("events").is_empty());
        for event in &all {
            for token in ["alpha1", "alpha2", "bravo1"] {
                assert!(!event.detail.contains(token), "a token in an event: {event:?}");
            }
        }
    }

    /// `remove_account` deletes the account (a `removed` event; its history stays), a second
    /// removal is `false` with no event, and a new account of that name starts afresh.
    pub async fn removal_forgets_the_account_and_keeps_its_events(installation: Arc<dyn Installation>) {
        let store = store(&installation).await;
        create(&*store, &alpha(), 0).await;
        create(&*store, &bravo(), 1).await;
        store.record_usage(&[usage("bravo", 0, 3, 5)]).await.expect("usage");
        assert!(store.remove_account("bravo", at(60)).await.expect("remove"));
        assert!(store.get_account("bravo").await.expect("get").is_none());
        assert_eq!(names(&*store).await, ["alpha"]);
        let last = &store.events(None, 1).await.expect("events")[0];
        assert_eq!((last.account.as_str(), last.kind, last.at), ("bravo", EventKind::Removed, at(60)));
        assert_eq!(kinds(&*store, Some("bravo")).await, [EventKind::Removed, EventKind::Imported], "history stays");
        assert!(!store.remove_account("bravo", at(61)).await.expect("remove again"));
        assert_eq!(store.events(None, 1).await.expect("events")[0].id, last.id, "no event for removing nothing");
        let again = create(&*store, &bravo(), 62).await;
        assert_eq!((again.version, again.usage.requests, again.usage.last_used_at), (1, 0, None), "a new account");
    }

    /// API keys have unique ids, hashes and live names; `find_api_key` finds a live key by hash in
    /// every process, revoking (by name or id) hides it from `find` but not from `list`, and a
    /// revoked key's name can be reused.
    pub async fn api_keys_are_unique_found_by_hash_and_revoked(installation: Arc<dyn Installation>) {
        let store = store(&installation).await;
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
        assert!(store.create_api_key(&api_key("key_ci", "other", "ee55", 72)).await.is_err(), "an id is unique");
        assert_eq!(store.list_api_keys().await.expect("list keys"), [ci.clone(), laptop.clone()]);
        assert_eq!(store.find_api_key("aa11").await.expect("find"), Some(ci.clone()));
        assert_eq!(store.find_api_key("ffff").await.expect("find"), None);
        // Another process sees a key at once.
        assert_eq!(installation.open().await.store.find_api_key("bb22").await.expect("find"), Some(laptop.clone()));
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
        let ci2 = api_key("key_ci2", "ci", "dd44", 90);
        store.create_api_key(&ci2).await.expect("reuse a revoked key's name");
        assert_eq!(store.find_api_key("dd44").await.expect("find"), Some(ci2));
    }

    /// Buckets sorted by (hour, account, key, model), after checking they come oldest first.
    fn sorted(mut buckets: Vec<UsageRecord>) -> Vec<UsageRecord> {
        assert!(buckets.windows(2).all(|w| w[0].hour <= w[1].hour), "usage must be oldest first: {buckets:?}");
        buckets
            .sort_by(|a, b| (a.hour, &a.account, &a.key_id, &a.model).cmp(&(b.hour, &b.account, &b.key_id, &b.model)));
        buckets
    }

    /// `record_usage` adds records of the same (account, key, model, hour) bucket together, within
    /// a batch and across batches, and adds the requests to the account's counters without a
    /// new credential version.
    pub async fn usage_buckets_add_up_and_the_account_follows(installation: Arc<dyn Installation>) {
        let store = store(&installation).await;
        create(&*store, &alpha(), 0).await;
        create(&*store, &bravo(), 0).await;
        let proxied = UsageRecord {
            key_id: Some("key_ci".to_owned()),
            model: Some("claude-sonnet-4".to_owned()),
            input_tokens: 10,
            output_tokens: 20,
            cache_read_tokens: 3,
            cache_creation_tokens: 4,
            errors: 1,
            ..usage("alpha", 0, 1, 2)
        };
        store.record_usage(&[usage("alpha", 0, 2, 1), proxied.clone(), usage("bravo", 1, 5, 61)]).await.unwrap();
        // The same bucket twice in one batch, and again in a later one.
        let again = UsageRecord { input_tokens: 1, output_tokens: 2, ..proxied.clone() };
        store.record_usage(&[usage("alpha", 0, 3, 5), usage("alpha", 0, 1, 4), again]).await.expect("usage");
        store.record_usage(&[]).await.expect("an empty batch");
        let expected_proxied = UsageRecord {
            requests: 2,
            input_tokens: 11,
            output_tokens: 22,
            cache_read_tokens: 6,
            cache_creation_tokens: 8,
            errors: 2,
            ..proxied
        };
        assert_eq!(
            sorted(store.usage(None, hour(0)).await.expect("usage")),
            [usage("alpha", 0, 6, 5), expected_proxied, usage("bravo", 1, 5, 61)]
        );
        let alpha = get(&*store, "alpha").await;
        assert_eq!((alpha.usage.requests, alpha.usage.last_used_at), (8, Some(at(5))));
        assert_eq!(alpha.version, 1, "usage is not a credential change");
        let bravo = get(&*store, "bravo").await;
        assert_eq!((bravo.usage.requests, bravo.usage.last_used_at), (5, Some(at(61))));
    }

    /// A late flush of an older use adds its requests but leaves `last_used_at` at the latest use.
    pub async fn last_used_at_never_moves_back(installation: Arc<dyn Installation>) {
        let store = store(&installation).await;
        create(&*store, &alpha(), 0).await;
        store.record_usage(&[usage("alpha", 0, 1, 10)]).await.expect("usage");
        // A late flush (another process, an out-of-order batch) of an older use.
        store.record_usage(&[usage("alpha", 0, 1, 3)]).await.expect("usage");
        let alpha = get(&*store, "alpha").await;
        assert_eq!((alpha.usage.requests, alpha.usage.last_used_at), (2, Some(at(10))));
        assert_eq!(store.usage(Some("alpha"), hour(0)).await.expect("usage"), [usage("alpha", 0, 2, 10)]);
    }

    /// Usage of an unknown account is dropped without failing the batch or creating the account.
    pub async fn usage_of_a_missing_account_is_skipped(installation: Arc<dyn Installation>) {
        let store = store(&installation).await;
        create(&*store, &alpha(), 0).await;
        store.record_usage(&[usage("ghost", 0, 7, 1), usage("alpha", 0, 1, 2)]).await.expect("usage with a ghost");
        assert_eq!(store.usage(None, hour(0)).await.expect("usage"), [usage("alpha", 0, 1, 2)]);
        assert_eq!(get(&*store, "alpha").await.usage.requests, 1);
        assert_eq!(names(&*store).await, ["alpha"], "usage never creates an account");
    }

    /// `usage` returns the buckets from a given hour on, oldest first, of all accounts or of one.
    pub async fn usage_is_read_since_an_hour_and_by_account(installation: Arc<dyn Installation>) {
        let store = store(&installation).await;
        create(&*store, &alpha(), 0).await;
        create(&*store, &bravo(), 0).await;
        let batch =
            [usage("alpha", 2, 1, 130), usage("bravo", 0, 1, 1), usage("alpha", 0, 1, 2), usage("bravo", 1, 1, 70)];
        store.record_usage(&batch).await.expect("usage");
        assert_eq!(
            sorted(store.usage(None, hour(1)).await.expect("usage")),
            [usage("bravo", 1, 1, 70), usage("alpha", 2, 1, 130)]
        );
        assert_eq!(
            store.usage(Some("alpha"), hour(0)).await.expect("usage"),
            [usage("alpha", 0, 1, 2), usage("alpha", 2, 1, 130)]
        );
        assert!(store.usage(Some("alpha"), hour(3)).await.expect("usage").is_empty());
        assert!(store.usage(Some("nobody"), hour(0)).await.expect("usage").is_empty());
    }

    /// `take_refresh_attempt` grants `max` attempts per rolling hour, then answers `Exhausted`
    /// with the instant the oldest leaves the window; refusals take nothing, and attempts are
    /// not credential changes.
    pub async fn the_attempt_budget_grants_max_per_rolling_hour(installation: Arc<dyn Installation>) {
        let store = store(&installation).await;
        create(&*store, &alpha(), 0).await;
        for minutes in [0, 10, 20] {
            assert_eq!(store.take_refresh_attempt("alpha", at(minutes), 3).await.unwrap(), Attempt::Granted);
        }
        // Spent: the oldest attempt (at 0) leaves the window an hour after it was taken.
        for minutes in [30, 59] {
            assert_eq!(
                store.take_refresh_attempt("alpha", at(minutes), 3).await.unwrap(),
                Attempt::Exhausted { until: at(60) }
            );
        }
        // At the instant promised, the next attempt is granted; refusals took nothing.
        assert_eq!(store.take_refresh_attempt("alpha", at(60), 3).await.unwrap(), Attempt::Granted);
        assert_eq!(store.take_refresh_attempt("alpha", at(61), 3).await.unwrap(), Attempt::Exhausted { until: at(70) });
        // A larger budget counts the same attempts.
        assert_eq!(store.take_refresh_attempt("alpha", at(61), 4).await.unwrap(), Attempt::Granted);
        // Two quiet hours later the whole budget is back.
        for _ in 0..3 {
            assert_eq!(store.take_refresh_attempt("alpha", at(200), 3).await.unwrap(), Attempt::Granted);
        }
        assert_eq!(
            store.take_refresh_attempt("alpha", at(200), 3).await.unwrap(),
            Attempt::Exhausted { until: at(260) }
        );
        assert_eq!(get(&*store, "alpha").await.version, 1, "attempts are not credential changes");
    }

    /// Each account has its own attempt budget.
    pub async fn the_attempt_budget_is_per_account(installation: Arc<dyn Installation>) {
        let store = store(&installation).await;
        create(&*store, &alpha(), 0).await;
        create(&*store, &bravo(), 0).await;
        assert_eq!(store.take_refresh_attempt("alpha", at(0), 1).await.unwrap(), Attempt::Granted);
        assert_eq!(store.take_refresh_attempt("bravo", at(1), 1).await.unwrap(), Attempt::Granted);
        assert_eq!(store.take_refresh_attempt("alpha", at(2), 1).await.unwrap(), Attempt::Exhausted { until: at(60) });
        assert_eq!(store.take_refresh_attempt("bravo", at(2), 1).await.unwrap(), Attempt::Exhausted { until: at(61) });
    }

    /// Twelve concurrent takers over three processes get exactly the budget granted between them.
    pub async fn the_attempt_budget_is_atomic_across_processes(installation: Arc<dyn Installation>) {
        const TAKERS: usize = 12;
        const MAX: u32 = 5;
        let stores = [store(&installation).await, store(&installation).await, store(&installation).await];
        create(&*stores[0], &alpha(), 0).await;
        let barrier = Arc::new(Barrier::new(TAKERS));
        let mut tasks = Vec::new();
        for taker in 0..TAKERS {
            let store = Arc::clone(&stores[taker % stores.len()]);
            let barrier = Arc::clone(&barrier);
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                store.take_refresh_attempt("alpha", at(5), MAX).await.expect("take")
            }));
        }
        let mut granted = 0;
        for task in tasks {
            match task.await.expect("task") {
                Attempt::Granted => granted += 1,
                Attempt::Exhausted { until } => assert_eq!(until, at(65)),
            }
        }
        assert_eq!(granted, MAX, "exactly the budget is granted, whoever asks");
    }

    /// `put_state` stores any JSON value exactly (large integers, unicode, `null`) for every
    /// process, and a second put replaces it whole.
    pub async fn state_round_trips_and_is_replaced(installation: Arc<dyn Installation>) {
        let store = store(&installation).await;
        assert_eq!(store.get_state("alerts/state").await.expect("get"), None);
        let value = serde_json::json!({
            "main": {"level": "critical", "since": "2023-11-14T22:13:20Z", "sent": [1, 2, 3]},
            "count": 18_446_744_073_709_551_615u64,
            "ratio": 0.25,
            "note": "ünïcode \"quoted\"",
            "none": null,
        });
        store.put_state("alerts/state", &value, at(1)).await.expect("put");
        assert_eq!(store.get_state("alerts/state").await.expect("get"), Some(value));
        // Another process reads it; a second put replaces the whole value.
        let replaced = serde_json::json!(["just", "a", "list"]);
        installation.open().await.store.put_state("alerts/state", &replaced, at(2)).await.expect("put again");
        assert_eq!(store.get_state("alerts/state").await.expect("get"), Some(replaced));
        store.put_state("plain", &serde_json::json!(42), at(3)).await.expect("put a number");
        assert_eq!(store.get_state("plain").await.expect("get"), Some(serde_json::json!(42)));
    }

    /// `list_state` returns the keys under a literal prefix (`_` and `%` are not wildcards), in
    /// key order; an empty prefix lists all.
    pub async fn state_is_listed_by_prefix_in_key_order(installation: Arc<dyn Installation>) {
        let store = store(&installation).await;
        // `_` and `%` are wildcards of SQL's LIKE: a prefix is literal.
        for (key, n) in [
            ("sinks/b", 2),
            ("alerts/state", 0),
            ("sinks/a", 1),
            ("sinksx", 3),
            ("a_b/x", 4),
            ("axb/y", 5),
            ("100%/z", 6),
            ("100x/z", 7),
        ] {
            store.put_state(key, &serde_json::json!(n), at(n)).await.expect("put");
        }
        let listed = |pairs: Vec<(String, serde_json::Value)>| -> Vec<(String, i64)> {
            pairs.into_iter().map(|(k, v)| (k, v.as_i64().expect("a number"))).collect()
        };
        assert_eq!(
            listed(store.list_state("sinks/").await.expect("list")),
            [("sinks/a".to_owned(), 1), ("sinks/b".to_owned(), 2)]
        );
        assert_eq!(listed(store.list_state("a_b/").await.expect("list")), [("a_b/x".to_owned(), 4)]);
        assert_eq!(listed(store.list_state("100%").await.expect("list")), [("100%/z".to_owned(), 6)]);
        let all: Vec<String> = store.list_state("").await.expect("list").into_iter().map(|(k, _)| k).collect();
        assert_eq!(all, ["100%/z", "100x/z", "a_b/x", "alerts/state", "axb/y", "sinks/a", "sinks/b", "sinksx"]);
        assert!(store.list_state("nothing/").await.expect("list").is_empty());
    }

    /// `delete_state` removes one key and says whether it was there.
    pub async fn state_removal_says_whether_it_existed(installation: Arc<dyn Installation>) {
        let store = store(&installation).await;
        store.put_state("cooldowns/main", &serde_json::json!({"until": 5}), at(0)).await.expect("put");
        store.put_state("cooldowns/other", &serde_json::json!({"until": 6}), at(0)).await.expect("put");
        assert!(store.delete_state("cooldowns/main").await.expect("delete"));
        assert!(!store.delete_state("cooldowns/main").await.expect("delete again"));
        assert_eq!(store.get_state("cooldowns/main").await.expect("get"), None);
        assert_eq!(store.list_state("cooldowns/").await.expect("list").len(), 1, "only that key is gone");
    }

    /// The change feed reports creates and credential updates (`Credential`, with the version),
    /// patches (`Metadata`), API key changes (`Keys`) and removals (`Removed`), in order.
    pub async fn the_feed_reports_each_kind_of_write(installation: Arc<dyn Installation>) {
        let backend = installation.open().await;
        let store = &*backend.store;
        let mut sub = backend.feed.subscribe().await.expect("subscribe");
        create(store, &alpha(), 0).await;
        let refreshed = credential("sk-ant-oat01-alpha2", Some("sk-ant-ort01-alpha2"), 1000);
        store.update_credential("alpha", &update(1, refreshed, CredentialChange::Refreshed, at(1))).await.unwrap();
        let patch = AccountPatch { state: Some(AccountState::NeedsLogin), ..AccountPatch::default() };
        store.patch_account("alpha", &patch, at(2)).await.expect("patch");
        store.create_api_key(&api_key("key_ci", "ci", "aa11", 3)).await.expect("key");
        store.revoke_api_key("ci", at(4)).await.expect("revoke");
        assert!(store.remove_account("alpha", at(5)).await.expect("remove"));
        let changes = next_changes(&mut *sub, 6).await;
        assert_eq!(
            what(&changes),
            [
                (Some("alpha"), ChangeKind::Credential, Some(1)),
                (Some("alpha"), ChangeKind::Credential, Some(2)),
                (Some("alpha"), ChangeKind::Metadata, None),
                (None, ChangeKind::Keys, None),
                (None, ChangeKind::Keys, None),
                (Some("alpha"), ChangeKind::Removed, None),
            ]
        );
    }

    /// Usage, state, refresh attempts and writes that fail or find nothing put nothing on the feed.
    pub async fn the_feed_is_silent_for_usage_state_and_failed_writes(installation: Arc<dyn Installation>) {
        let backend = installation.open().await;
        let store = &*backend.store;
        create(store, &alpha(), 0).await;
        let mut sub = backend.feed.subscribe().await.expect("subscribe");
        store.record_usage(&[usage("alpha", 0, 5, 1)]).await.expect("usage");
        store.put_state("alerts/state", &serde_json::json!({"a": 1}), at(1)).await.expect("put");
        store.delete_state("alerts/state").await.expect("delete");
        store.take_refresh_attempt("alpha", at(1), 5).await.expect("attempt");
        // Writes that fail or find nothing commit nothing either.
        let stale = update(7, credential("sk-ant-oat01-stale", None, 9), CredentialChange::Refreshed, at(2));
        assert!(store.update_credential("alpha", &stale).await.is_err());
        assert!(store.create_account(&alpha(), at(2), CredentialChange::Imported).await.is_err());
        assert!(!store.remove_account("ghost", at(2)).await.expect("remove nothing"));
        assert!(!store.revoke_api_key("ghost", at(2)).await.expect("revoke nothing"));
        // The next change is the sentinel: nothing came before it.
        let patch = AccountPatch { last_error: Some(Some("sentinel".to_owned())), ..AccountPatch::default() };
        store.patch_account("alpha", &patch, at(3)).await.expect("patch");
        let changes = next_changes(&mut *sub, 1).await;
        assert_eq!(what(&changes), [(Some("alpha"), ChangeKind::Metadata, None)]);
    }

    /// `seal_secret` hides the secret; another process of the installation opens it, but only for
    /// the same purpose.
    pub async fn sealed_secrets_open_for_their_purpose_only_and_reveal_nothing(installation: Arc<dyn Installation>) {
        let here = installation.open().await;
        let there = installation.open().await;
        let secret = Secret::new("pkce-verifier-0123456789abcdefghijklmnopqrstuvwxyz");
        let sealed = here.store.seal_secret("logins/api/st4te", &secret).expect("seal");
        assert!(!sealed.contains(secret.expose()), "the sealed text shows the secret");
        // Another process of the installation (same key) opens it; another purpose does not.
        assert_eq!(there.store.open_secret("logins/api/st4te", &sealed).expect("open").expose(), secret.expose());
        assert!(there.store.open_secret("logins/api/other", &sealed).is_err(), "opened for another purpose");
    }

    /// A provider's own data (Codex's `id_token` and `account_id`) comes back as it went in,
    /// through create, update and another process, is kept when an update brings none from a
    /// caller that read it first, and is nowhere in the storage in clear.
    pub async fn provider_data_is_sealed_with_the_tokens_and_round_trips(installation: Arc<dyn Installation>) {
        let here = store(&installation).await;
        let data = r#"{"id_token":"eyJPROVIDERDATAidtoken7Qx","account_id":"ACCTID9z3k"}"#;
        let mut c = credential("sk-ant-oat01-PDaccess", Some("sk-ant-ort01-PDrefresh"), 100);
        c.provider_data = Some(Secret::new(data));
        let mut new = new_account("codexy", c);
        new.provider = "codex".to_owned();
        new.email = Some("pd@example.com".to_owned());
        let created = here.create_account(&new, at(0), CredentialChange::Imported).await.expect("create");
        assert_eq!(created.provider, "codex");
        assert_eq!(created.credential.provider_data.as_ref().map(Secret::expose), Some(data));

        let there = store(&installation).await;
        let read = get(there.as_ref(), "codexy").await;
        assert_eq!(read.credential.provider_data.as_ref().map(Secret::expose), Some(data));
        assert_eq!(read.provider, "codex");

        let newer = r#"{"id_token":"eyJPROVIDERDATAnewer4Lm","account_id":"ACCTID9z3k"}"#;
        let mut next = credential("sk-ant-oat01-PDaccess2", Some("sk-ant-ort01-PDrefresh2"), 200);
        next.provider_data = Some(Secret::new(newer));
        there.update_credential("codexy", &update(1, next, CredentialChange::Refreshed, at(1))).await.expect("update");
        let read = get(here.as_ref(), "codexy").await;
        assert_eq!(read.credential.provider_data.as_ref().map(Secret::expose), Some(newer));
        // An account without provider data reads back without any.
        here.create_account(&alpha(), at(0), CredentialChange::Imported).await.expect("create alpha");
        assert!(get(there.as_ref(), "alpha").await.credential.provider_data.is_none());

        let raw = installation.raw().await;
        let has = |needle: &str| raw.windows(needle.len()).any(|w| w == needle.as_bytes());
        assert!(has("pd@example.com"), "raw() does not show the storage: the clear columns are missing");
        for secret in ["PROVIDERDATAidtoken7Qx", "PROVIDERDATAnewer4Lm", "ACCTID9z3k"] {
            assert!(!has(secret), "provider data `{secret}` is in the storage in clear");
        }
    }

    fn web_session(hash: &str, created_minutes: i64, lifetime_minutes: i64) -> WebSession {
        WebSession {
            hash: hash.to_owned(),
            csrf: format!("csrf-of-{hash}"),
            created_at: at(created_minutes),
            expires_at: at(created_minutes + lifetime_minutes),
            flash: Some(r#"{"kind":"ok","text":"Signed in."}"#.to_owned()),
        }
    }

    /// A web session is found by its hash from every process until its expiry by the caller's
    /// clock (the expiry instant itself is too late).
    pub async fn a_web_session_is_found_by_hash_in_every_process_until_it_ends(installation: Arc<dyn Installation>) {
        let here = store(&installation).await;
        let there = store(&installation).await;
        let session = web_session("5e55", 0, 60);
        here.create_session(&session).await.expect("create");
        assert_eq!(there.session("5e55", at(1)).await.expect("read"), Some(session.clone()), "another process");
        assert_eq!(there.session("5e56", at(1)).await.expect("read"), None, "another hash");
        // Expiry follows the caller's clock: the last instant before the end, then the end.
        let last = session.expires_at - TimeDelta::milliseconds(1);
        assert!(there.session("5e55", last).await.expect("read").is_some());
        assert_eq!(there.session("5e55", session.expires_at).await.expect("read"), None, "ended");
        assert_eq!(here.session("5e55", at(0)).await.expect("read"), Some(session), "an earlier clock still sees it");
    }

    /// `delete_session` ends one session for every process and says whether it existed.
    pub async fn signing_out_in_one_process_ends_the_session_in_every_process(installation: Arc<dyn Installation>) {
        let here = store(&installation).await;
        let there = store(&installation).await;
        here.create_session(&web_session("a1", 0, 60)).await.expect("create");
        here.create_session(&web_session("b2", 0, 60)).await.expect("create");
        assert!(there.session("a1", at(1)).await.expect("read").is_some());
        assert!(there.delete_session("a1").await.expect("delete"));
        assert!(!there.delete_session("a1").await.expect("delete again"), "gone already");
        assert_eq!(here.session("a1", at(1)).await.expect("read"), None, "signed out everywhere");
        assert!(here.session("b2", at(1)).await.expect("read").is_some(), "only that session ended");
    }

    /// A session's flash message is taken exactly once, even by two processes at the same time;
    /// setting and clearing it leaves the session otherwise untouched.
    pub async fn a_session_message_is_taken_once(installation: Arc<dyn Installation>) {
        let here = store(&installation).await;
        let there = store(&installation).await;
        let mut session = web_session("f1a5", 0, 60);
        session.flash = None;
        here.create_session(&session).await.expect("create");
        assert_eq!(here.take_session_flash("f1a5").await.expect("take"), None, "no message yet");
        assert!(here.set_session_flash("f1a5", Some("Refreshed main.")).await.expect("set"));
        assert_eq!(there.take_session_flash("f1a5").await.expect("take"), Some("Refreshed main.".to_owned()));
        assert_eq!(here.take_session_flash("f1a5").await.expect("take"), None, "taken once");
        assert!(!here.set_session_flash("ghost", Some("x")).await.expect("set"), "no such session");
        assert_eq!(here.take_session_flash("ghost").await.expect("take"), None);
        // Two pages at once: exactly one shows the message.
        assert!(here.set_session_flash("f1a5", Some("once")).await.expect("set"));
        let (a, b) = tokio::join!(here.take_session_flash("f1a5"), there.take_session_flash("f1a5"));
        let got: Vec<String> = [a.expect("take"), b.expect("take")].into_iter().flatten().collect();
        assert_eq!(got, ["once"]);
        // Clearing works too, and the session itself is untouched by all of it.
        assert!(here.set_session_flash("f1a5", Some("again")).await.expect("set"));
        assert!(here.set_session_flash("f1a5", None).await.expect("clear"));
        assert_eq!(here.take_session_flash("f1a5").await.expect("take"), None);
        assert_eq!(here.session("f1a5", at(1)).await.expect("read"), Some(session));
    }

    /// `prune_sessions` drops the ended sessions, then the oldest live ones beyond the bound, and
    /// returns how many it dropped.
    pub async fn pruning_drops_ended_sessions_then_the_oldest_beyond_the_bound(installation: Arc<dyn Installation>) {
        let store = store(&installation).await;
        // Two ended by minute 100; five live, created at minutes 1..=5.
        store.create_session(&web_session("ended1", 0, 10)).await.expect("create");
        store.create_session(&web_session("ended2", 50, 50)).await.expect("create");
        for n in 1..=5 {
            store.create_session(&web_session(&format!("live{n}"), n, 1000)).await.expect("create");
        }
        assert_eq!(store.prune_sessions(at(100), 3).await.expect("prune"), 4, "two ended, two beyond the bound");
        let mut left = Vec::new();
        for hash in ["ended1", "ended2", "live1", "live2", "live3", "live4", "live5"] {
            if store.session(hash, at(0)).await.expect("read").is_some() {
                left.push(hash);
            }
        }
        assert_eq!(left, ["live3", "live4", "live5"], "the newest three are kept");
        assert_eq!(store.prune_sessions(at(100), 3).await.expect("prune again"), 0);
    }

    /// Leadership has one holder at a time; a process waiting for it takes over within a second
    /// of the leader letting go.
    pub async fn one_process_leads_until_it_lets_go_and_a_waiter_takes_over(installation: Arc<dyn Installation>) {
        use std::time::{Duration, Instant};
        let a = installation.open().await;
        let b = installation.open().await;
        let c = installation.open().await;
        let held = a.leader.acquire("a", Duration::ZERO).await.expect("campaign").expect("nobody leads yet");
        assert!(b.leader.acquire("b", Duration::ZERO).await.expect("try").is_none(), "two leaders at once");
        assert!(c.leader.acquire("c", Duration::from_millis(100)).await.expect("wait").is_none(), "two leaders");
        // A waiter blocked for leadership gets it once the leader lets go, without a retry delay.
        let waiter = tokio::spawn(async move {
            let got = b.leader.acquire("b", Duration::from_secs(10)).await.expect("wait");
            (got, Instant::now())
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let released = Instant::now();
        drop(held);
        let (guard, at) = waiter.await.expect("waiter");
        assert!(guard.is_some(), "the waiter did not take over");
        assert!(at.duration_since(released) < Duration::from_secs(1), "takeover took {:?}", at - released);
        assert!(c.leader.acquire("c", Duration::ZERO).await.expect("try").is_none(), "the new leader is not exclusive");
    }

    /// A subscriber sees another process's commits, and reading after a change shows that version.
    pub async fn the_feed_carries_changes_of_another_process(installation: Arc<dyn Installation>) {
        let here = installation.open().await;
        let there = installation.open().await;
        let mut sub = here.feed.subscribe().await.expect("subscribe");
        create(&*there.store, &alpha(), 0).await;
        let fresh = credential("sk-ant-oat01-alpha2", Some("sk-ant-ort01-alpha2"), 1000);
        there.store.update_credential("alpha", &update(1, fresh, CredentialChange::Adopted, at(1))).await.unwrap();
        let changes = next_changes(&mut *sub, 2).await;
        assert_eq!(
            what(&changes),
            [(Some("alpha"), ChangeKind::Credential, Some(1)), (Some("alpha"), ChangeKind::Credential, Some(2))]
        );
        // What the change names is what this process reads now.
        assert_eq!(get(&*here.store, "alpha").await.version, 2);
    }

    /// Concurrent writers' changes each arrive exactly once, each writer's in commit order.
    pub async fn the_feed_yields_concurrent_changes_once_in_order(installation: Arc<dyn Installation>) {
        const WRITERS: usize = 4;
        const EACH: i64 = 10;
        let here = installation.open().await;
        let mut sub = here.feed.subscribe().await.expect("subscribe");
        let mut tasks = Vec::new();
        for writer in 0..WRITERS {
            let store = installation.open().await.store;
            tasks.push(tokio::spawn(async move {
                let name = format!("writer{writer}");
                create(&*store, &new_account(&name, credential("sk-ant-oat01-w", None, 1)), 0).await;
                for version in 1..EACH {
                    let next = credential(&format!("sk-ant-oat01-w{version}"), None, 1 + version);
                    store
                        .update_credential(&name, &update(version, next, CredentialChange::Refreshed, at(version)))
                        .await
                        .unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.expect("writer");
        }
        let changes = next_changes(&mut *sub, WRITERS * EACH as usize).await;
        let mut seen = BTreeSet::new();
        for change in &changes {
            assert_eq!(change.kind, ChangeKind::Credential);
            let key = (change.account.clone().expect("an account"), change.version.expect("a version"));
            assert!(seen.insert(key), "a change came twice: {change:?}");
        }
        for writer in 0..WRITERS {
            let versions: Vec<i64> = changes
                .iter()
                .filter(|c| c.account.as_deref() == Some(format!("writer{writer}").as_str()))
                .map(|c| c.version.expect("a version"))
                .collect();
            assert_eq!(versions, (1..=EACH).collect::<Vec<_>>(), "writer{writer}'s changes in commit order");
        }
    }

    fn access(round: i64, writer: usize) -> String {
        format!("sk-ant-oat01-round{round}-writer{writer}")
    }

    /// One round: every writer reads the current version, waits for the others, then tries to
    /// write its own credential (each newer than anything of earlier rounds). Returns the winner.
    async fn race(stores: &[Arc<dyn Store>], round: i64, writers: usize) -> usize {
        let before = get(&*stores[0], "main").await;
        let barrier = Arc::new(Barrier::new(writers));
        let mut tasks = Vec::new();
        for writer in 0..writers {
            let store = Arc::clone(&stores[writer % stores.len()]);
            let barrier = Arc::clone(&barrier);
            tasks.push(tokio::spawn(async move {
                let read = get(&*store, "main").await;
                let refresh = format!("sk-ant-ort01-round{round}-writer{writer}");
                let mine = credential(&access(round, writer), Some(&refresh), 1_000 * (round + 1) + writer as i64);
                barrier.wait().await;
                store
                    .update_credential("main", &update(read.version, mine, CredentialChange::Refreshed, at(round)))
                    .await
            }));
        }
        let mut winners = Vec::new();
        for (writer, task) in tasks.into_iter().enumerate() {
            match task.await.expect("writer task") {
                Ok(account) => {
                    assert_eq!(account.version, before.version + 1);
                    winners.push(writer);
                }
                Err(StoreError::VersionConflict { account, expected, found }) => {
                    assert_eq!((account.as_str(), expected, found), ("main", before.version, before.version + 1));
                }
                Err(other) => panic!("writer {writer} failed otherwise: {other}"),
            }
        }
        assert_eq!(winners.len(), 1, "exactly one writer must win round {round}, got {winners:?}");
        let winner = winners[0];
        for store in stores {
            let after = get(&**store, "main").await;
            assert_eq!(after.version, before.version + 1);
            assert_eq!(after.credential.access_token.expose(), access(round, winner));
            assert!(after.credential.expires_at > before.credential.expires_at, "each round's winner is the newest");
        }
        winner
    }

    /// `count` rounds of `writers` racing writers over `stores`; prints who won (for reports).
    async fn rounds(stores: &[Arc<dyn Store>], count: i64, writers: usize) {
        let first = new_account("main", credential("sk-ant-oat01-seed", Some("sk-ant-ort01-seed"), 100));
        stores[stores.len() - 1].create_account(&first, at(0), CredentialChange::LoggedIn).await.expect("seed");
        let mut winners = Vec::new();
        for round in 1..=count {
            winners.push(race(stores, round, writers).await);
        }
        eprintln!("CAS contention: {writers} writers over {} store(s), winner per round: {winners:?}", stores.len());
        assert_eq!(get(&*stores[0], "main").await.version, 1 + count);
        let refreshed = stores[0]
            .events(Some("main"), 1000)
            .await
            .expect("events")
            .into_iter()
            .filter(|e| e.kind == EventKind::Refreshed)
            .count();
        assert_eq!(refreshed as i64, count, "one event per winning write, none for the losers");
    }

    /// Sixteen tasks racing the same compare-and-set in one process: exactly one wins each round,
    /// with exactly one `refreshed` event per round.
    pub async fn cas_sixteen_tasks_one_process_exactly_one_wins_each_round(installation: Arc<dyn Installation>) {
        let store = store(&installation).await;
        rounds(&[store], 5, 16).await;
    }

    /// Sixteen writers spread over four processes opened at once on a fresh installation (setting
    /// it up must not race either): exactly one wins each round.
    pub async fn cas_four_processes_opened_at_once_exactly_one_wins_each_round(installation: Arc<dyn Installation>) {
        // Opened at once on a fresh installation: setting it up (files, migrations) must not race.
        let opening: Vec<_> = (0..4)
            .map(|_| {
                let installation = Arc::clone(&installation);
                tokio::spawn(async move { installation.open().await.store })
            })
            .collect();
        let mut stores = Vec::new();
        for open in opening {
            stores.push(open.await.expect("open"));
        }
        rounds(&stores, 4, 16).await;
    }
}
