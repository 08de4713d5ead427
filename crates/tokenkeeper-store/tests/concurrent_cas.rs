//! Compare-and-set under contention: many writers holding the same version, in one store and
//! in several independent stores on one file (what separate processes do).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use tokenkeeper_core::store::{CredentialChange, EventKind, Store, StoreError};
use tokenkeeper_store::testing::{at, credential, new_account, update};
use tokenkeeper_store::{EncryptionKey, SqliteStore};
use tokio::sync::Barrier;

const WRITERS: usize = 16;

fn access(round: i64, writer: usize) -> String {
    format!("sk-ant-oat01-round{round}-writer{writer}")
}

/// Seeds `main` at version 1 through `store`.
async fn seed(store: &SqliteStore) {
    let first = new_account("main", credential("sk-ant-oat01-seed", Some("sk-ant-ort01-seed"), 100));
    store.create_account(&first, at(0), CredentialChange::LoggedIn).await.unwrap();
}

/// One round: every writer reads the current version, waits for the others, then tries to
/// write its own credential (each newer than anything of earlier rounds). Returns the winner.
async fn race(stores: &[Arc<SqliteStore>], round: i64) -> usize {
    let before = stores[0].get_account("main").await.unwrap().unwrap();
    let barrier = Arc::new(Barrier::new(WRITERS));
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let store = Arc::clone(&stores[writer % stores.len()]);
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            let read = store.get_account("main").await.unwrap().unwrap();
            let refresh = format!("sk-ant-ort01-round{round}-writer{writer}");
            let mine = credential(&access(round, writer), Some(&refresh), 1_000 * (round + 1) + writer as i64);
            barrier.wait().await;
            store.update_credential("main", &update(read.version, mine, CredentialChange::Refreshed, at(round))).await
        }));
    }
    let mut winners = Vec::new();
    for (writer, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
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
        let after = store.get_account("main").await.unwrap().unwrap();
        assert_eq!(after.version, before.version + 1);
        assert_eq!(after.credential.access_token.expose(), access(round, winner));
        assert!(after.credential.expires_at > before.credential.expires_at, "each round's winner is the newest");
    }
    winner
}

async fn rounds(stores: &[Arc<SqliteStore>], count: i64) {
    for round in 1..=count {
        race(stores, round).await;
    }
    let after = stores[0].get_account("main").await.unwrap().unwrap();
    assert_eq!(after.version, 1 + count);
    let refreshed = stores[0]
        .events(Some("main"), 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == EventKind::Refreshed)
        .count();
    assert_eq!(refreshed as i64, count, "one event per winning write, none for the losers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_tasks_one_store_exactly_one_wins_each_round() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path(), EncryptionKey::generate()).await.unwrap());
    seed(&store).await;
    rounds(&[store], 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_independent_stores_on_one_file_exactly_one_wins_each_round() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let key = EncryptionKey::load_or_create(None, &dir).unwrap().to_base64();
    // Opened at once on a fresh file: setting up the database must not race either.
    let opening: Vec<_> = (0..4)
        .map(|_| {
            let dir = dir.clone();
            let key = EncryptionKey::from_base64(&key).unwrap();
            tokio::spawn(async move { SqliteStore::open(&dir, key).await.map(Arc::new) })
        })
        .collect();
    let mut stores = Vec::new();
    for open in opening {
        stores.push(open.await.unwrap().unwrap());
    }
    seed(&stores[3]).await;
    rounds(&stores, 4).await;
}
