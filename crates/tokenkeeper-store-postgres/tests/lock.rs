//! `PgAccountLock` across connections and processes: guards exclude each other, a dropped
//! guard, a dead connection or a killed holder process frees the lock at once, and a timeout
//! names the account.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::Connection;
use tokenkeeper_core::backend::{AccountLock, SeamError};
use tokenkeeper_store_postgres::testing::Cluster;
use tokenkeeper_store_postgres::{account_lock_key, PgAccountLock};

async fn database() -> PgConnectOptions {
    Cluster::get().create_database().await
}

/// The backend pids holding (`granted`) or waiting for the advisory lock of `account`.
async fn lock_sessions(admin: &mut PgConnection, account: &str, granted: bool) -> Vec<i32> {
    let key = account_lock_key(account);
    // A bigint advisory key shows in pg_locks as classid (high 32 bits) and objid (low 32 bits).
    // pg_locks is cluster-wide and every test has its own database (run in parallel, with the
    // same account names), so only this database's locks count.
    sqlx::query_scalar(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND granted = $3 \
         AND classid::bigint = $1 AND objid::bigint = $2 \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .bind((key >> 32) & 0xffff_ffff)
    .bind(key & 0xffff_ffff)
    .bind(granted)
    .fetch_all(admin)
    .await
    .unwrap()
}

/// Waits (polling the server, 10 ms apart, at most 10 s) until someone waits for `account`.
async fn until_someone_waits(admin: &mut PgConnection, account: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while lock_sessions(admin, account, false).await.is_empty() {
        assert!(Instant::now() < deadline, "nobody started waiting for the lock of `{account}`");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn two_guards_exclude_each_other_and_a_timeout_names_the_account() {
    let options = database().await;
    let lock = PgAccountLock::new(options.clone());
    let other_replica = PgAccountLock::new(options);
    let held = lock.acquire("main", Duration::from_secs(5)).await.unwrap();
    for wait in [Duration::ZERO, Duration::from_millis(50)] {
        let started = Instant::now();
        match other_replica.acquire("main", wait).await {
            Err(SeamError::Timeout { what, waited }) => {
                assert!(what.contains("`main`"), "{what}");
                assert_eq!(waited, wait);
                assert!(started.elapsed() >= wait, "gave up after {:?}, before {wait:?}", started.elapsed());
                let message = SeamError::Timeout { what, waited }.to_string();
                assert!(message.contains("main") && message.contains("try again"), "{message}");
            }
            other => panic!("a held lock must time out, got {other:?}"),
        }
    }
    // Another account's lock is another lock.
    let other_account = other_replica.acquire("backup", Duration::ZERO).await.unwrap();
    drop(other_account);
    drop(held);
    let again = other_replica.acquire("main", Duration::from_secs(5)).await.unwrap();
    assert!(format!("{again:?}").contains("main"));
}

#[tokio::test]
async fn a_waiter_gets_the_lock_the_moment_the_guard_drops() {
    let options = database().await;
    let mut admin = PgConnection::connect_with(&options).await.unwrap();
    let lock = PgAccountLock::new(options);
    let held = lock.acquire("main", Duration::from_secs(5)).await.unwrap();
    let waiter = {
        let lock = lock.clone();
        tokio::spawn(async move { lock.acquire("main", Duration::from_secs(10)).await.map(|_| Instant::now()) })
    };
    until_someone_waits(&mut admin, "main").await;
    let released = Instant::now();
    drop(held);
    let taken = waiter.await.unwrap().unwrap();
    eprintln!("lock handover after a dropped guard: {:?}", taken - released);
    assert!(taken - released < Duration::from_secs(2), "handover took {:?}", taken - released);
}

#[tokio::test]
async fn a_holder_whose_connection_dies_frees_the_lock() {
    let options = database().await;
    let mut admin = PgConnection::connect_with(&options).await.unwrap();
    let lock = PgAccountLock::new(options);
    let held = lock.acquire("main", Duration::from_secs(5)).await.unwrap();
    let holders = lock_sessions(&mut admin, "main", true).await;
    assert_eq!(holders.len(), 1, "one session holds the lock");
    let waiter = {
        let lock = lock.clone();
        tokio::spawn(async move { lock.acquire("main", Duration::from_secs(10)).await.map(|_| Instant::now()) })
    };
    until_someone_waits(&mut admin, "main").await;
    // As if the holder's host vanished: the server ends its session.
    let killed = Instant::now();
    let terminated: bool =
        sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(holders[0]).fetch_one(&mut admin).await.unwrap();
    assert!(terminated);
    let taken = waiter.await.unwrap().expect("the waiter takes the lock over");
    eprintln!("lock takeover after the holder's connection died: {:?}", taken - killed);
    assert!(taken - killed < Duration::from_secs(2), "takeover took {:?}", taken - killed);
    drop(held);
}

#[tokio::test]
async fn a_killed_holder_process_frees_the_lock() {
    let options = database().await;
    let database = options.get_database().unwrap().to_owned();
    let mut admin = PgConnection::connect_with(&options).await.unwrap();
    let mut holder = Command::new(env!("CARGO_BIN_EXE_tokenkeeper-pg-lock-holder"))
        .arg(Cluster::get().url(&database))
        .arg("main")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "held", "the holder process must report holding the lock");
    let lock = PgAccountLock::new(options);
    assert!(matches!(lock.acquire("main", Duration::ZERO).await, Err(SeamError::Timeout { .. })));
    let waiter = {
        let lock = lock.clone();
        tokio::spawn(async move { lock.acquire("main", Duration::from_secs(10)).await.map(|_| Instant::now()) })
    };
    until_someone_waits(&mut admin, "main").await;
    let killed = Instant::now();
    holder.kill().unwrap(); // SIGKILL: no destructor runs, the kernel closes its socket
    holder.wait().unwrap();
    let taken = waiter.await.unwrap().expect("the waiter takes the lock over");
    eprintln!("lock takeover after SIGKILL of the holder process: {:?}", taken - killed);
    assert!(taken - killed < Duration::from_secs(2), "takeover took {:?}", taken - killed);
}

/// The leader's lock session is killed under it (an operator's `pg_terminate_backend`, a
/// failover): `lost` says so within a ping, and a waiting replica leads at once.
#[tokio::test]
async fn a_leader_whose_session_dies_learns_it_and_a_waiter_takes_over() {
    use tokenkeeper_core::backend::Leadership;
    use tokenkeeper_store_postgres::{PgLeadership, PING_EVERY, PING_TIMEOUT};
    let options = database().await;
    let a = PgLeadership::new(options.clone());
    let b = PgLeadership::new(options.clone());
    let mut held = a.acquire("replica-a", Duration::ZERO).await.unwrap().expect("nobody leads yet");
    let waiter = tokio::spawn(async move { b.acquire("replica-b", Duration::from_secs(20)).await.unwrap() });
    let mut admin = PgConnection::connect_with(&options).await.unwrap();
    let pid: i32 =
        sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE application_name = 'tokenkeeper leader: replica-a'")
            .fetch_one(&mut admin)
            .await
            .unwrap();
    let killed = Instant::now();
    sqlx::query("SELECT pg_terminate_backend($1)").bind(pid).execute(&mut admin).await.unwrap();
    let why = tokio::time::timeout(PING_EVERY + PING_TIMEOUT + Duration::from_secs(2), held.lost())
        .await
        .expect("the leader did not notice its lost session");
    assert!(why.to_string().contains("leader lock"), "{why}");
    let next = waiter.await.unwrap();
    assert!(next.is_some(), "the waiting replica did not take over");
    assert!(killed.elapsed() < Duration::from_secs(10), "takeover took {:?}", killed.elapsed());
}
