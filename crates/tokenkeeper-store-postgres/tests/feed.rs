//! `PgChangeFeed` beyond the conformance suite: a lost connection yields `Resync` and later
//! changes still arrive; a subscriber whose rows were pruned resynchronises.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sqlx::postgres::PgConnection;
use sqlx::Connection;
use tokenkeeper_core::backend::{ChangeKind, FeedItem};
use tokenkeeper_core::store::{AccountPatch, CredentialChange};
use tokenkeeper_crypto::EncryptionKey;
use tokenkeeper_store::testing::properties::next_item;
use tokenkeeper_store::testing::{at, credential, new_account, update};
use tokenkeeper_store_postgres::testing::Cluster;
use tokenkeeper_store_postgres::{backend_with, CHANNEL};

fn kind_of(item: &FeedItem) -> Option<(Option<&str>, ChangeKind, Option<i64>)> {
    match item {
        FeedItem::Change(c) => Some((c.account.as_deref(), c.kind, c.version)),
        FeedItem::Resync => None,
    }
}

#[tokio::test]
async fn a_lost_connection_yields_resync_and_later_changes_still_arrive() {
    let options = Cluster::get().create_database().await;
    let mut admin = PgConnection::connect_with(&options).await.unwrap();
    let backend = backend_with(options, EncryptionKey::generate()).await.unwrap();
    let mut sub = backend.feed.subscribe().await.unwrap();
    let new = new_account("main", credential("sk-ant-oat01-a", Some("sk-ant-ort01-a"), 100));
    backend.store.create_account(&new, at(0), CredentialChange::Imported).await.unwrap();
    let first = next_item(&mut *sub).await;
    assert_eq!(kind_of(&first), Some((Some("main"), ChangeKind::Credential, Some(1))));

    // The listening session dies (a restart, a proxy, an admin); a change lands meanwhile.
    let listeners: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity \
         WHERE application_name = 'tokenkeeper feed' AND datname = current_database()",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(listeners.len(), 1, "exactly one listening session: {listeners:?}");
    let killed: bool =
        sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(listeners[0]).fetch_one(&mut admin).await.unwrap();
    assert!(killed, "the listening session was terminated");
    let next = credential("sk-ant-oat01-b", Some("sk-ant-ort01-b"), 200);
    backend.store.update_credential("main", &update(1, next, CredentialChange::Refreshed, at(1))).await.unwrap();
    assert_eq!(next_item(&mut *sub).await, FeedItem::Resync, "a lost connection must be reported");

    // Listening again: a later change arrives (the refresh may come first, if it committed after
    // the reconnect; the Resync covered it otherwise).
    let patch = AccountPatch { last_error: Some(Some("after".into())), ..AccountPatch::default() };
    backend.store.patch_account("main", &patch, at(2)).await.unwrap();
    let mut item = next_item(&mut *sub).await;
    if kind_of(&item) == Some((Some("main"), ChangeKind::Credential, Some(2))) {
        item = next_item(&mut *sub).await;
    }
    assert_eq!(kind_of(&item), Some((Some("main"), ChangeKind::Metadata, None)));
    // The terminated backend may linger in pg_stat_activity until its process has exited, so
    // it is left out: what counts is that exactly one new session listens.
    let listening: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tokenkeeper feed' \
         AND datname = current_database() AND pid <> $1",
    )
    .bind(listeners[0])
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(listening, 1, "one listening session again, not a leak per reconnect");
}

#[tokio::test]
async fn a_subscriber_behind_the_kept_changes_resynchronises() {
    let options = Cluster::get().create_database().await;
    let mut admin = PgConnection::connect_with(&options).await.unwrap();
    let backend = backend_with(options, EncryptionKey::generate()).await.unwrap();
    let mut sub = backend.feed.subscribe().await.unwrap();
    let new = new_account("main", credential("sk-ant-oat01-a", None, 100));
    backend.store.create_account(&new, at(0), CredentialChange::Imported).await.unwrap();
    assert!(kind_of(&next_item(&mut *sub).await).is_some());
    // What pruning does to a reader more than 10,000 changes behind, without 10,000 writes.
    sqlx::query("DELETE FROM changes").execute(&mut admin).await.unwrap();
    let patch = AccountPatch { last_error: Some(Some("x".into())), ..AccountPatch::default() };
    backend.store.patch_account("main", &patch, at(1)).await.unwrap();
    assert_eq!(next_item(&mut *sub).await, FeedItem::Resync);
    backend.store.patch_account("main", &AccountPatch::default(), at(2)).await.unwrap();
    assert_eq!(kind_of(&next_item(&mut *sub).await), Some((Some("main"), ChangeKind::Metadata, None)));
}

#[tokio::test]
async fn notifications_go_out_only_on_commit() {
    let options = Cluster::get().create_database().await;
    let backend = backend_with(options.clone(), EncryptionKey::generate()).await.unwrap();
    let mut listener = sqlx::postgres::PgListener::connect_with(
        &sqlx::postgres::PgPoolOptions::new().max_connections(1).connect_with(options).await.unwrap(),
    )
    .await
    .unwrap();
    listener.listen(CHANNEL).await.unwrap();
    let new = new_account("main", credential("sk-ant-oat01-a", None, 100));
    backend.store.create_account(&new, at(0), CredentialChange::Imported).await.unwrap();
    // A failed write (duplicate) rolls back its NOTIFY with it: the next payload is the patch's.
    assert!(backend.store.create_account(&new, at(1), CredentialChange::Imported).await.is_err());
    backend.store.patch_account("main", &AccountPatch::default(), at(2)).await.unwrap();
    let seqs: Vec<String> =
        vec![listener.recv().await.unwrap().payload().to_owned(), listener.recv().await.unwrap().payload().to_owned()];
    let seqs: Vec<i64> = seqs.iter().map(|s| s.parse().unwrap()).collect();
    assert!(seqs[1] > seqs[0], "{seqs:?}");
    assert!(listener.next_buffered().is_none(), "nothing else was notified");
}
