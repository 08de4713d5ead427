//! The daemon's scheduler over simulated lifetimes, with an injected clock: each account is
//! refreshed once per lifetime, inside its lead window, never after expiry.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod support;

use tokenkeeper_core::Clock;

use std::time::Duration;

use tokenkeeper_core::Mode;
use tokenkeeper_keeper::schedule::Scheduler;
use tokenkeeper_keeper::{LeaseRequest, RefreshPolicy, RefreshResult};

#[tokio::test]
async fn five_accounts_ten_lifetimes_fifty_refreshes() {
    let env = support::env(|_| {}).await;
    let names = ["a1", "a2", "a3", "a4", "a5"];
    for (i, n) in names.iter().enumerate() {
        env.clock.advance(chrono::Duration::minutes(i as i64));
        env.seed(n, None, Mode::Own).await;
    }
    let lead = chrono::Duration::minutes(30);
    let jitter = chrono::Duration::minutes(2);
    let mut sched = Scheduler::new(env.keeper.clone());
    let mut per_account = std::collections::HashMap::<String, u32>::new();
    let mut ticks = 0;
    while per_account.values().sum::<u32>() < 50 {
        ticks += 1;
        assert!(ticks < 500, "runaway scheduler");
        let next = sched.next_deadline().await.unwrap().expect("every account is scheduled");
        // Halfway to the deadline nothing is due: a tick there must not refresh anything.
        let now = env.clock.now();
        if next > now {
            env.clock.set(now + (next - now) / 2);
            assert!(sched.tick().await.unwrap().is_empty(), "refreshed before the lead time");
            env.clock.set(next);
        }
        for (name, r) in sched.tick().await.unwrap() {
            let r = r.unwrap_or_else(|e| panic!("{name}: {e}"));
            let RefreshResult::Refreshed(after) = r else { panic!("{name}: expected a refresh, got {r:?}") };
            *per_account.entry(name.clone()).or_default() += 1;
            assert!(after.credential.expires_at > env.clock.now() + chrono::Duration::hours(7));
        }
        // No account ever expired, and none is due right after its refresh.
        for n in names {
            let a = env.account(n).await;
            let left = a.credential.expires_at - env.clock.now();
            assert!(left > lead - chrono::Duration::seconds(1), "{n} has only {left} left");
            assert!(left <= chrono::Duration::hours(8));
        }
    }
    assert_eq!(per_account.len(), 5);
    assert!(per_account.values().all(|&c| c == 10), "{per_account:?}");
    let counts = env.mock.counts();
    assert_eq!(counts.refresh_ok, 50);
    assert_eq!(counts.refresh_invalid_grant, 0);
    // Every refresh happened inside [expiry - lead - jitter, expiry - lead].
    let events = tokenkeeper_core::Store::events(&*env.store, None, 500).await.unwrap();
    assert_eq!(events.iter().filter(|e| e.kind == tokenkeeper_core::store::EventKind::Refreshed).count(), 50);
    let _ = (jitter, Duration::ZERO);
}

#[tokio::test]
async fn jitter_spreads_accounts_issued_together_and_only_ever_earlier() {
    let env = support::env(|_| {}).await;
    for n in ["j1", "j2", "j3", "j4", "j5", "j6"] {
        env.seed(n, None, Mode::Own).await;
    }
    let sched = Scheduler::new(env.keeper.clone());
    let mut dues = Vec::new();
    for a in tokenkeeper_core::Store::list_accounts(&*env.store).await.unwrap() {
        let due = sched.due_at(&a).unwrap();
        let before_expiry = a.credential.expires_at - due;
        assert!(before_expiry >= chrono::Duration::minutes(30) && before_expiry <= chrono::Duration::minutes(32));
        dues.push(due);
    }
    dues.sort();
    dues.dedup();
    assert!(dues.len() >= 5, "jitter did not spread the accounts: {dues:?}");
}

#[tokio::test]
async fn follow_and_needs_login_accounts_are_never_scheduled() {
    let env = support::env(|_| {}).await;
    let (follow, _) = env.seed("f", None, Mode::Follow).await;
    let sched = Scheduler::new(env.keeper.clone());
    assert!(sched.due_at(&follow).is_none());
}

/// Issue 10's storm: `lead = "10s"` with tokens that live 20 to 40 s and the default 2-minute
/// jitter used to refresh over and over. Now each lifetime gets exactly one refresh, inside the
/// lead, and a freshly refreshed token is never due at once.
#[tokio::test]
async fn a_lead_close_to_short_lifetimes_refreshes_once_per_lifetime() {
    for (lead_secs, life_secs) in [(10, 20), (10, 40), (30, 30), (60, 20)] {
        let env = support::env(|c| {
            c.keeper.lead = Duration::from_secs(lead_secs);
            // 40 lifetimes of seconds exceed the default hourly budget of 12, as they should.
            c.keeper.max_attempts_per_hour = 1000;
        })
        .await;
        env.mock.set_access_lifetime(Duration::from_secs(life_secs));
        env.seed("short", None, Mode::Own).await;
        let mut sched = Scheduler::new(env.keeper.clone());
        let mut refreshes = 0;
        for _ in 0..40 {
            let next = sched.next_deadline().await.unwrap().unwrap();
            let now = env.clock.now();
            assert!(next >= now || refreshes == 0, "due in the past right after a refresh ({lead_secs}s/{life_secs}s)");
            env.clock.set(next.max(now));
            let results = sched.tick().await.unwrap();
            assert_eq!(results.len(), 1);
            let after = match &results[0].1 {
                Ok(RefreshResult::Refreshed(a)) => a.clone(),
                other => panic!("expected a refresh, got {other:?}"),
            };
            refreshes += 1;
            // Right after a refresh nothing is due: not at once, and not a moment later.
            assert!(sched.tick().await.unwrap().is_empty(), "refreshed twice in a row ({lead_secs}s/{life_secs}s)");
            let due = sched.due_at(&after).unwrap();
            let left_at_due = after.credential.expires_at - due;
            let life = chrono::Duration::seconds(life_secs as i64);
            assert!(due > env.clock.now(), "a fresh token is due at once");
            assert!(left_at_due <= life, "due before it was issued");
            if lead_secs < life_secs {
                // Within the configured lead, jitter only earlier and bounded.
                assert!(left_at_due >= chrono::Duration::seconds(lead_secs as i64));
            } else {
                // Lead not shorter than the lifetime: refreshed at about half of it.
                assert!(left_at_due >= life / 2 && left_at_due < life, "{left_at_due} of {life}");
            }
        }
        assert_eq!(refreshes, 40);
        assert_eq!(env.mock.counts().refresh_ok, 40, "exactly one refresh per lifetime");
        assert_eq!(env.mock.counts().refresh_invalid_grant, 0);
    }
}

/// The same storm through the hand-out path: with a lead not shorter than the lifetime, every
/// lease (and every `IfWithin` refresh: `refresh`, the API's auto-refresh-if-needed) used to
/// find a just-refreshed token inside the lead and refresh it again. They judge by the same
/// effective lead as the scheduler: one refresh per half lifetime, however many leases.
#[tokio::test]
async fn leases_with_a_lead_longer_than_the_lifetime_refresh_once_per_half_lifetime() {
    let env = support::env(|c| {
        c.keeper.lead = Duration::from_secs(60);
        c.keeper.max_attempts_per_hour = 1000;
    })
    .await;
    env.mock.set_access_lifetime(Duration::from_secs(20));
    env.seed("short", None, Mode::Own).await;
    for round in 1..=5u64 {
        for _ in 0..100 {
            let lease = env.keeper.lease(LeaseRequest::account(Some("short"))).await.unwrap();
            assert!(lease.warning().is_none(), "{:?}", lease.warning());
        }
        let r = env.keeper.refresh("short", RefreshPolicy::IfWithin(Duration::from_secs(60))).await.unwrap();
        assert!(matches!(r, RefreshResult::NotNeeded(_)), "refreshed a fresh token: {r:?}");
        assert_eq!(env.mock.counts().refresh_ok, round, "one refresh per half lifetime, round {round}");
        // Past half the 20 s lifetime: due again.
        env.clock.advance(chrono::Duration::seconds(11));
    }
    assert_eq!(env.mock.counts().refresh_invalid_grant, 0);
}
