//! The embedded change feed across store instances (as across processes): each kind of write
//! arrives in commit order with its account and version; usage and state writes do not.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tokenkeeper_core::backend::{ChangeFeed, ChangeKind, FeedItem, StoreChange};
use tokenkeeper_core::store::{AccountPatch, ApiKey, CredentialChange, Store};
use tokenkeeper_store::testing::{at, credential, new_account, update, use_of};
use tokenkeeper_store::{EncryptionKey, SqliteStore};

async fn next(sub: &mut Box<dyn tokenkeeper_core::ChangeSubscription>) -> FeedItem {
    tokio::time::timeout(Duration::from_secs(10), sub.next()).await.expect("a change within 10 s").expect("open feed")
}

fn change(account: Option<&str>, kind: ChangeKind, version: Option<i64>) -> (Option<String>, ChangeKind, Option<i64>) {
    (account.map(str::to_owned), kind, version)
}

fn strip(item: FeedItem) -> (Option<String>, ChangeKind, Option<i64>) {
    match item {
        FeedItem::Change(StoreChange { account, kind, version, .. }) => (account, kind, version),
        FeedItem::Resync => panic!("unexpected resync"),
    }
}

#[tokio::test]
async fn writes_of_another_instance_arrive_in_order_and_usage_never_does() {
    let dir = tempfile::tempdir().unwrap();
    let key = EncryptionKey::generate();
    let copy = EncryptionKey::from_base64(&key.to_base64()).unwrap();
    let reader = SqliteStore::open(dir.path(), key).await.unwrap();
    let writer = SqliteStore::open(dir.path(), copy).await.unwrap();
    let mut sub = reader.change_feed().subscribe().await.unwrap();

    let new = new_account("main", credential("sk-ant-oat01-a", Some("sk-ant-ort01-a"), 100));
    writer.create_account(&new, at(0), CredentialChange::Imported).await.unwrap();
    assert_eq!(strip(next(&mut sub).await), change(Some("main"), ChangeKind::Credential, Some(1)));

    // Usage and state first: they must produce nothing, so the next item is the refresh.
    writer.record_usage(&[use_of("main", 3, at(1))]).await.unwrap();
    writer.put_state("alerts/state", &serde_json::json!([1]), at(1)).await.unwrap();
    let next_cred = credential("sk-ant-oat01-b", Some("sk-ant-ort01-b"), 200);
    writer.update_credential("main", &update(1, next_cred, CredentialChange::Refreshed, at(2))).await.unwrap();
    assert_eq!(strip(next(&mut sub).await), change(Some("main"), ChangeKind::Credential, Some(2)));

    let patch = AccountPatch { last_error: Some(Some("boom".into())), ..Default::default() };
    writer.patch_account("main", &patch, at(3)).await.unwrap();
    let key = ApiKey {
        id: "k1".into(),
        name: "bot".into(),
        hash: "00".repeat(32),
        scopes: vec!["token:read".into()],
        accounts: vec![],
        created_at: at(4),
        revoked_at: None,
    };
    writer.create_api_key(&key).await.unwrap();
    writer.revoke_api_key("k1", at(5)).await.unwrap();
    writer.remove_account("main", at(6)).await.unwrap();
    assert_eq!(strip(next(&mut sub).await), change(Some("main"), ChangeKind::Metadata, None));
    assert_eq!(strip(next(&mut sub).await), change(None, ChangeKind::Keys, None));
    assert_eq!(strip(next(&mut sub).await), change(None, ChangeKind::Keys, None));
    assert_eq!(strip(next(&mut sub).await), change(Some("main"), ChangeKind::Removed, None));
    // Nothing else is pending.
    assert!(tokio::time::timeout(Duration::from_millis(200), sub.next()).await.is_err());
}

#[tokio::test]
async fn a_subscription_starts_after_the_changes_committed_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), EncryptionKey::generate()).await.unwrap();
    let new = new_account("old", credential("sk-ant-oat01-o", None, 100));
    store.create_account(&new, at(0), CredentialChange::Imported).await.unwrap();
    let mut sub = store.change_feed().subscribe().await.unwrap();
    let new = new_account("new", credential("sk-ant-oat01-n", None, 100));
    store.create_account(&new, at(1), CredentialChange::Imported).await.unwrap();
    assert_eq!(strip(next(&mut sub).await), change(Some("new"), ChangeKind::Credential, Some(1)));
}
