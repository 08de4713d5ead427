//! Each failure class: rejected → needs-login and silence; rate limited → Retry-After honoured;
//! transient → bounded backoff while the valid token keeps being served; recovery on the first
//! attempt after the provider heals.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod support;

use tokenkeeper_core::Clock;

use std::time::Duration;

use tokenkeeper_core::{AccountState, Mode, Store};
use tokenkeeper_keeper::schedule::Scheduler;
use tokenkeeper_keeper::LeaseRequest;
use tokenkeeper_keeper::{KeeperError, RefreshPolicy, RefreshResult};
use tokenkeeper_mock::Fault;

#[tokio::test]
async fn rejected_refresh_token_means_needs_login_and_no_more_attempts() {
    let env = support::env(|_| {}).await;
    let (_, t) = env.seed("main", None, Mode::Own).await;
    env.mock.revoke(&t.refresh_token);
    let mut events = env.keeper.subscribe();
    let err = env.keeper.refresh("main", RefreshPolicy::Force).await.unwrap_err();
    assert!(matches!(err, KeeperError::NeedsLogin { .. }), "{err}");
    assert!(err.to_string().contains("tokenkeeper login --account main"), "{err}");
    let a = env.account("main").await;
    assert_eq!(a.state, AccountState::NeedsLogin);
    assert!(a.last_error.is_some());
    assert!(matches!(events.try_recv(), Ok(tokenkeeper_keeper::KeeperEvent::RefreshFailed { .. })));
    // The scheduler leaves it alone; a forced refresh does not reach the provider either.
    let mut sched = Scheduler::new(env.keeper.clone());
    assert!(sched.due_at(&a).is_none());
    env.clock.advance(chrono::Duration::hours(9));
    assert!(sched.tick().await.unwrap().is_empty());
    let requests = env.mock.counts().token_requests;
    assert!(env.keeper.refresh("main", RefreshPolicy::Force).await.is_err());
    assert_eq!(env.mock.counts().token_requests, requests);
    // A new credential brings it back.
    let (a, _) = env.seed("main", None, Mode::Own).await;
    assert_eq!(a.state, AccountState::Active);
    assert!(sched.due_at(&a).is_some());
}

#[tokio::test]
async fn rate_limited_waits_for_retry_after() {
    let env = support::env(|_| {}).await;
    env.seed("main", None, Mode::Own).await;
    env.mock.push_fault(Fault::RateLimited { retry_after_secs: 900 });
    let mut sched = Scheduler::new(env.keeper.clone());
    let due = sched.next_deadline().await.unwrap().unwrap();
    env.clock.set(due);
    let results = sched.tick().await.unwrap();
    match &results[0].1 {
        Err(KeeperError::TryLater { retry_after: Some(d), .. }) => assert_eq!(*d, Duration::from_secs(900)),
        other => panic!("{other:?}"),
    }
    let next = sched.next_deadline().await.unwrap().unwrap();
    assert!(next >= due + chrono::Duration::seconds(900), "retried before Retry-After");
    env.clock.set(next);
    let results = sched.tick().await.unwrap();
    assert!(matches!(results[0].1, Ok(RefreshResult::Refreshed(_))));
}

#[tokio::test]
async fn an_hour_of_500s_is_a_bounded_number_of_attempts_then_recovery() {
    let env = support::env(|_| {}).await;
    env.seed("main", None, Mode::Own).await;
    env.mock.set_persistent_fault(Some(Fault::ServerError));
    let mut sched = Scheduler::new(env.keeper.clone());
    let first = sched.next_deadline().await.unwrap().unwrap();
    let hour_later = first + chrono::Duration::hours(1);
    env.clock.set(first);
    let mut attempts = 0;
    loop {
        let results = sched.tick().await.unwrap();
        attempts += results.len();
        for (_, r) in &results {
            assert!(matches!(r, Err(KeeperError::TryLater { .. })), "{r:?}");
        }
        let next = sched.next_deadline().await.unwrap().unwrap();
        if next >= hour_later {
            break;
        }
        env.clock.set(next);
        // Meanwhile the still-valid token keeps being served.
        // (Its own refresh attempts count against the same hourly budget.) Once the token has
        // expired there is nothing valid left to hand out.
        let expires_at = env.account("main").await.credential.expires_at;
        match env.keeper.lease(LeaseRequest::account(Some("main"))).await {
            Ok(lease) => assert!(!lease.account().credential.is_expired(env.clock.now())),
            Err(e) => assert!(env.clock.now() >= expires_at, "a valid token was not served: {e}"),
        }
    }
    let requests = env.mock.counts().token_requests;
    // Backoff 30 s doubling to 10 min: about 10 in an hour; never more than the hourly cap (12).
    assert!((5..=12).contains(&requests), "{requests} token requests in an hour of 500s");
    assert!(attempts >= 5);
    assert_eq!(env.account("main").await.state, AccountState::Active);
    // The provider heals: the next attempt succeeds.
    env.mock.set_persistent_fault(None);
    let next = sched.next_deadline().await.unwrap().unwrap();
    env.clock.set(next);
    let results = sched.tick().await.unwrap();
    assert!(matches!(results[0].1, Ok(RefreshResult::Refreshed(_))), "{:?}", results[0].1);
    assert_eq!(env.mock.counts().refresh_ok, 1);
    assert!(env.account("main").await.last_error.is_none());
}

#[tokio::test]
async fn attempts_per_hour_are_capped_whatever_the_caller() {
    let env = support::env(|c| c.keeper.max_attempts_per_hour = 3).await;
    env.seed("main", None, Mode::Own).await;
    env.mock.set_persistent_fault(Some(Fault::Html));
    for _ in 0..3 {
        let e = env.keeper.refresh("main", RefreshPolicy::Force).await.unwrap_err();
        assert!(e.to_string().contains("HTML"), "{e}");
    }
    let e = env.keeper.refresh("main", RefreshPolicy::Force).await.unwrap_err();
    assert!(e.to_string().contains("attempts in the last hour"), "{e}");
    assert_eq!(env.mock.counts().token_requests, 3);
    env.clock.advance(chrono::Duration::minutes(61));
    env.mock.set_persistent_fault(None);
    assert!(env.keeper.refresh("main", RefreshPolicy::Force).await.is_ok());
}

#[tokio::test]
async fn long_lived_tokens_are_not_refreshable_but_are_served() {
    let env = support::env(|_| {}).await;
    let parsed = tokenkeeper_core::formats::parse_credential("sk-ant-oat01-setupTOKEN", env.clock.now()).unwrap();
    tokenkeeper_keeper::testing::import_as(&env.keeper, "ci", parsed).await.unwrap();
    let lease = env.keeper.lease(LeaseRequest::account(Some("ci"))).await.unwrap();
    assert!(lease.warning().is_none());
    assert_eq!(lease.token().expose(), "sk-ant-oat01-setupTOKEN");
    let e = env.keeper.refresh("ci", RefreshPolicy::Force).await.unwrap_err();
    assert!(matches!(e, KeeperError::NotRefreshable { .. }));
    assert!(Scheduler::new(env.keeper.clone()).due_at(&env.account("ci").await).is_none());
    let _ = env.store.list_accounts().await.unwrap();
}

#[tokio::test]
async fn one_login_cannot_be_stored_under_two_accounts() {
    let env = support::env(|_| {}).await;
    let (a, _) = env.seed("first", None, Mode::Own).await;
    let parsed = tokenkeeper_core::formats::ParsedCredential {
        credential: a.credential.clone(),
        format: tokenkeeper_core::formats::Format::ClaudeJson,
        email: None,
    };
    let e = tokenkeeper_keeper::testing::import_as(&env.keeper, "second", parsed).await.unwrap_err();
    assert!(matches!(e, KeeperError::Refused { .. }), "{e}");
    assert!(e.to_string().contains("already stored as account `first`"), "{e}");
    assert!(env.store.get_account("second").await.unwrap().is_none());
}

#[tokio::test]
async fn the_scheduler_backs_off_after_any_retryable_error_never_spins() {
    let env = support::env(|_| {}).await;
    env.seed("main", None, Mode::Own).await;
    // The lock directory cannot be created: every refresh fails with an I/O error.
    let locks = env.dir.path().join("data/locks");
    let _ = std::fs::remove_dir_all(&locks);
    std::fs::write(&locks, "not a directory").unwrap();
    let mut sched = Scheduler::new(env.keeper.clone());
    let due = sched.next_deadline().await.unwrap().unwrap();
    env.clock.set(due);
    let results = sched.tick().await.unwrap();
    assert!(matches!(results[0].1, Err(KeeperError::Lock(_))), "{:?}", results[0].1);
    let next = sched.next_deadline().await.unwrap().unwrap();
    assert!(next >= due + chrono::Duration::seconds(25), "no backoff after a lock error: next {next} due {due}");
    // At that moment nothing else is due.
    assert!(sched.tick().await.unwrap().is_empty());
    assert_eq!(env.mock.counts().token_requests, 0);
}

#[tokio::test]
async fn a_still_valid_token_is_served_after_a_rejection() {
    let env = support::env(|_| {}).await;
    let (a, t) = env.seed("main", None, Mode::Own).await;
    env.mock.revoke(&t.refresh_token);
    env.clock.set(a.credential.expires_at - chrono::Duration::minutes(10));
    let lease = env.keeper.lease(LeaseRequest::account(Some("main"))).await.unwrap();
    assert_eq!(lease.token(), &a.credential.access_token);
    let warning = lease.warning().unwrap_or_default();
    assert!(warning.contains("rejected the refresh token"), "{warning}");
    assert_eq!(env.account("main").await.state, AccountState::NeedsLogin);
    env.clock.set(a.credential.expires_at + chrono::Duration::seconds(1));
    assert!(env.keeper.lease(LeaseRequest::account(Some("main"))).await.is_err());
}

/// The hourly budget is one per account for the installation: processes that each start
/// fresh (a cron job running `refresh` every minute) share it through the store.
#[tokio::test]
async fn the_attempt_budget_is_shared_by_every_process() {
    let env = support::env(|c| c.keeper.max_attempts_per_hour = 4).await;
    env.seed("main", None, Mode::Own).await;
    for minute in 0..10 {
        // A new process each minute, as cron starts one.
        let cron = env.other_process().await;
        let _ = cron.refresh("main", RefreshPolicy::Force).await;
        env.clock.advance(chrono::Duration::minutes(1));
        assert!(env.mock.counts().token_requests <= 4, "minute {minute}: the budget was exceeded");
    }
    assert_eq!(env.mock.counts().token_requests, 4);
    let e = env.keeper.refresh("main", RefreshPolicy::Force).await.unwrap_err();
    assert!(e.to_string().contains("attempts in the last hour"), "{e}");
}

#[tokio::test]
async fn login_code_and_name_errors_are_the_callers_each_with_its_own_class() {
    let env = support::env(|_| {}).await;
    let (login, url) = env.keeper.start_login();
    let pasted = env.mock.authorize(&url, "new@example.com").unwrap();

    // Mangled: nothing reaches the provider.
    let requests = env.mock.counts().token_requests;
    let err = env.keeper.finish_login(None, "", &login).await.unwrap_err();
    assert!(matches!(err, KeeperError::BadLoginCode(tokenkeeper_provider::LoginError::Empty)), "{err:?}");
    let code_only = pasted.split('#').next().unwrap();
    let err = env.keeper.finish_login(None, &format!("{code_only}#other-state"), &login).await.unwrap_err();
    assert!(matches!(err, KeeperError::BadLoginCode(tokenkeeper_provider::LoginError::StateMismatch)), "{err:?}");
    assert_eq!(env.mock.counts().token_requests, requests);

    // A name that cannot be one: refused after the exchange, before anything is stored.
    let err = env.keeper.finish_login(Some("../etc"), &pasted, &login).await.unwrap_err();
    assert!(matches!(err, KeeperError::BadAccountName(_)), "{err:?}");
    assert!(err.to_string().contains("account name `../etc` contains `/`"), "{err}");
    assert!(env.keeper.store().list_accounts().await.unwrap().is_empty());

    // The same code again: well-formed, but the provider refuses it (codes work once).
    let err = env.keeper.finish_login(None, &pasted, &login).await.unwrap_err();
    assert!(matches!(err, KeeperError::LoginCodeRefused { .. }), "{err:?}");
    assert!(err.to_string().contains("run `tokenkeeper login` again"), "{err}");
    assert!(!err.is_temporary());
}
