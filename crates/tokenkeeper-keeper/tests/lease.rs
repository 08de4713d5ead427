//! The hand-out path: leases come from memory and write nothing; usage is exact after a flush;
//! another process's commit is what the next lease hands out once the feed delivered it; a 401
//! report refreshes once, coalesced, and the rejected token is never handed out again. The
//! keeper is built over test doubles of the lock and the feed, with the data directory's lock
//! files made unusable, which proves it uses nothing else across processes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokenkeeper_core::backend::{
    AccountLock, AccountLockGuard, ChangeFeed, ChangeKind, ChangeSubscription, FeedItem, SeamError, StoreChange,
};
use tokenkeeper_core::store::Store;
use tokenkeeper_core::{Backend, Clock, Mode};
use tokenkeeper_keeper::{Keeper, KeeperEvent, LeaseRequest};
use tokio::sync::broadcast;

/// An in-memory `AccountLock`: one tokio mutex per account, shared by every keeper given it.
#[derive(Debug, Default)]
struct MemLock {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    taken: AtomicUsize,
}

#[derive(Debug)]
struct MemGuard(#[allow(dead_code)] tokio::sync::OwnedMutexGuard<()>);
impl AccountLockGuard for MemGuard {}

#[async_trait]
impl AccountLock for MemLock {
    async fn acquire(&self, account: &str, wait: Duration) -> Result<Box<dyn AccountLockGuard>, SeamError> {
        let m = self.locks.lock().unwrap().entry(account.to_owned()).or_default().clone();
        let guard = tokio::time::timeout(wait, m.lock_owned())
            .await
            .map_err(|_| SeamError::Timeout { what: account.to_owned(), waited: wait })?;
        self.taken.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(MemGuard(guard)))
    }
}

/// An in-memory `ChangeFeed`: yields exactly what the test sends.
#[derive(Debug)]
struct MemFeed {
    tx: broadcast::Sender<FeedItem>,
}

#[derive(Debug)]
struct MemSub(broadcast::Receiver<FeedItem>);

#[async_trait]
impl ChangeSubscription for MemSub {
    async fn next(&mut self) -> Option<FeedItem> {
        self.0.recv().await.ok()
    }
}

#[async_trait]
impl ChangeFeed for MemFeed {
    async fn subscribe(&self) -> Result<Box<dyn ChangeSubscription>, SeamError> {
        Ok(Box::new(MemSub(self.tx.subscribe())))
    }
}

struct Doubles {
    lock: Arc<MemLock>,
    feed: Arc<MemFeed>,
}

/// A keeper like `env.keeper`, but over the doubles.
fn keeper_over(env: &support::Env, d: &Doubles) -> Arc<Keeper> {
    let leader = Arc::new(tokenkeeper_store::FlockLeadership::new(env.dir.path().join("data")));
    let backend = Backend { store: env.store.clone(), lock: d.lock.clone(), feed: d.feed.clone(), leader };
    Arc::new(
        Keeper::new(backend, env.config.clone(), &env.dir.path().join("data"), Arc::new(env.clock.clone())).unwrap(),
    )
}

/// Seeds `main`, then makes the data directory's lock directory a file: any `flock` now fails.
async fn setup() -> (support::Env, Doubles) {
    let env = support::env(|_| {}).await;
    env.seed("main", None, Mode::Own).await;
    let locks = env.dir.path().join("data/locks");
    std::fs::remove_dir_all(&locks).unwrap();
    std::fs::write(&locks, "not a directory: the keeper must use its AccountLock").unwrap();
    let (tx, _) = broadcast::channel(64);
    (env, Doubles { lock: Arc::default(), feed: Arc::new(MemFeed { tx }) })
}

#[tokio::test]
async fn ten_thousand_hand_outs_write_nothing_and_usage_is_exact_after_a_flush() {
    let (env, d) = setup().await;
    let keeper = keeper_over(&env, &d);
    let _follow = keeper.follow_changes().await.unwrap();
    let mut events = keeper.subscribe();
    let mut store_feed = env.store.change_feed().subscribe().await.unwrap();
    let before = env.account("main").await;
    let first = keeper.lease(LeaseRequest::account(Some("main"))).await.unwrap();
    for i in 0..10_000 {
        let key = if i % 2 == 0 { Some("k1") } else { None };
        let lease = keeper.lease(LeaseRequest { account: Some("main"), key_id: key, model: None }).await.unwrap();
        assert_eq!(lease.token(), first.token());
    }
    // Nothing durable happened: no store change (so no sink delivery, no alert pass), no
    // keeper event (what wakes the daemon), no refresh, no lock taken.
    assert!(tokio::time::timeout(Duration::from_millis(100), store_feed.next()).await.is_err());
    assert!(events.try_recv().is_err(), "a hand-out published an event");
    assert_eq!(env.account("main").await, before, "a hand-out changed the stored account");
    assert_eq!(d.lock.taken.load(Ordering::SeqCst), 0);
    assert_eq!(keeper.usage().pending_requests(), 10_001);

    assert_eq!(keeper.flush_usage().await.unwrap(), 10_001);
    let after = env.account("main").await;
    assert_eq!(after.usage.requests, before.usage.requests + 10_001);
    let buckets = env.store.usage(Some("main"), env.clock.now() - chrono::Duration::hours(1)).await.unwrap();
    let by_key: HashMap<Option<String>, u64> = buckets.iter().map(|b| (b.key_id.clone(), b.requests)).collect();
    assert_eq!(by_key, HashMap::from([(Some("k1".to_owned()), 5_000), (None, 5_001)]));
    // The flush itself is not a change either.
    assert!(tokio::time::timeout(Duration::from_millis(100), store_feed.next()).await.is_err());
    assert_eq!(keeper.flush_usage().await.unwrap(), 0, "a second flush has nothing to write");
}

#[tokio::test]
async fn another_process_commit_is_handed_out_once_the_feed_delivers_it() {
    let (env, d) = setup().await;
    let a = keeper_over(&env, &d);
    let b = keeper_over(&env, &d);
    let _follow = a.follow_changes().await.unwrap();
    let mut events = a.subscribe();
    let old = a.lease(LeaseRequest::account(Some("main"))).await.unwrap();
    // Process B rotates the credential.
    let refreshed = b.refresh("main", tokenkeeper_keeper::RefreshPolicy::Force).await.unwrap();
    let new_token = refreshed.account().credential.access_token.clone();
    assert_ne!(&new_token, old.token());
    // Until the feed says so, A serves from memory (the old token is still valid).
    assert_eq!(a.lease(LeaseRequest::account(Some("main"))).await.unwrap().token(), old.token());
    d.feed
        .tx
        .send(FeedItem::Change(StoreChange {
            seq: 1,
            account: Some("main".into()),
            kind: ChangeKind::Credential,
            version: Some(refreshed.account().version),
        }))
        .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), events.recv()).await.unwrap().unwrap();
    assert_eq!(ev, KeeperEvent::StoreChanged { account: Some("main".into()), kind: ChangeKind::Credential });
    assert_eq!(a.lease(LeaseRequest::account(Some("main"))).await.unwrap().token(), &new_token);
    // The lock B took was the injected one.
    assert_eq!(d.lock.taken.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_401_reports_refreshes_once_and_never_hands_out_the_rejected_token() {
    let (env, d) = setup().await;
    let keeper = keeper_over(&env, &d);
    let _follow = keeper.follow_changes().await.unwrap();
    let rejected = keeper.lease(LeaseRequest::account(Some("main"))).await.unwrap();
    let requests_before = env.mock.counts().token_requests;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (k, l) = (keeper.clone(), rejected.clone());
        tasks.push(tokio::spawn(async move { k.lease_after_rejection(&l).await }));
    }
    let mut tokens = Vec::new();
    for t in tasks {
        tokens.push(t.await.unwrap().unwrap().token().clone());
    }
    assert_eq!(env.mock.counts().token_requests - requests_before, 1, "one coalesced refresh");
    assert!(tokens.iter().all(|t| t == &tokens[0] && t != rejected.token()));
    assert_eq!(keeper.lease(LeaseRequest::account(Some("main"))).await.unwrap().token(), &tokens[0]);
}

#[tokio::test]
async fn a_rejected_token_is_not_handed_out_even_when_the_refresh_fails() {
    let (env, d) = setup().await;
    let keeper = keeper_over(&env, &d);
    let _follow = keeper.follow_changes().await.unwrap();
    let rejected = keeper.lease(LeaseRequest::account(Some("main"))).await.unwrap();
    env.mock.set_persistent_fault(Some(tokenkeeper_mock::Fault::ServerError));
    assert!(keeper.lease_after_rejection(&rejected).await.is_err());
    // The token is valid by its expiry, but a caller saw it rejected: no lease hands it out.
    match keeper.lease(LeaseRequest::account(Some("main"))).await {
        Ok(l) => assert_ne!(l.token(), rejected.token(), "the rejected token was handed out again"),
        Err(e) => assert!(e.is_temporary(), "{e}"),
    }
}

/// Every hand-out (`/api/token`, each proxied request) allocates and moves the lease's future,
/// and so does every caller whose future holds it; the refresh behind the slow path is boxed so
/// that it stays small. Inline, the refresh made it 21 KB (24 KB for the proxy's request
/// future), which cost a 24 KB allocation and copy per proxied request.
#[tokio::test]
async fn the_hand_out_future_stays_small_because_the_refresh_behind_it_is_boxed() {
    let (env, _doubles) = setup().await;
    let lease = env.keeper.lease(LeaseRequest { account: Some("main"), ..LeaseRequest::default() });
    let size = std::mem::size_of_val(&lease);
    assert!(size <= 1024, "Keeper::lease's future is {size} bytes; box the slow path it awaits");
}
