//! What is on disk: no token in clear, private files, the key's handling, the change file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Barrier};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use tokenkeeper_core::store::{CredentialChange, Store, StoreError};
use tokenkeeper_store::testing::{at, credential, new_account, update};
use tokenkeeper_store::{EncryptionKey, SqliteStore};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The database, its WAL and its shared-memory file, as bytes.
fn database_files(store: &SqliteStore) -> Vec<(String, Vec<u8>)> {
    let db = store.database_path();
    ["", "-wal", "-shm"]
        .iter()
        .filter_map(|suffix| {
            let path = format!("{}{suffix}", db.display());
            std::fs::read(&path).ok().map(|bytes| (path, bytes))
        })
        .collect()
}

#[tokio::test]
async fn no_token_reaches_the_disk_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), EncryptionKey::generate()).await.unwrap();
    let mut tokens = Vec::new();
    for i in 0..3 {
        let access = format!("sk-ant-oat01-CLEARACCESS{i}xq7Hd93kLmNo");
        let refresh = format!("sk-ant-ort01-CLEARREFRESH{i}Zp4Wv81jQrSt");
        let mut new = new_account(&format!("acct{i}"), credential(&access, Some(&refresh), 100));
        new.email = Some(format!("visible{i}@example.com"));
        store.create_account(&new, at(0), CredentialChange::Imported).await.unwrap();
        tokens.extend([access, refresh]);
    }
    let (access, refresh) = ("sk-ant-oat01-CLEARACCESSnewPq2Rs5Tu", "sk-ant-ort01-CLEARREFRESHnewVw8Xy1Za");
    let next = credential(access, Some(refresh), 200);
    store.update_credential("acct0", &update(1, next, CredentialChange::Refreshed, at(1))).await.unwrap();
    tokens.extend([access.to_owned(), refresh.to_owned()]);

    let check = |files: &[(String, Vec<u8>)]| {
        let all: Vec<u8> = files.iter().flat_map(|(_, b)| b.iter().copied()).collect();
        // The files read are the right ones: the clear columns are there.
        assert!(contains(&all, "visible2@example.com"), "the account rows are not in {files:?}");
        for (path, bytes) in files {
            for token in &tokens {
                // The secret part too, in case a prefix were stored apart.
                let secret_part = &token["sk-ant-oat01-".len()..];
                assert!(!contains(bytes, secret_part), "{path} holds a token in clear");
            }
        }
    };
    // While open (the latest writes are in the WAL) and after closing (checkpointed).
    let open_files = database_files(&store);
    assert!(open_files.iter().any(|(p, _)| p.ends_with("-wal")), "expected a WAL file");
    check(&open_files);
    store.close().await;
    check(&database_files(&store));
}

#[tokio::test]
async fn another_key_is_a_decrypt_error_naming_the_account() {
    let dir = tempfile::tempdir().unwrap();
    let right = EncryptionKey::generate();
    let right_b64 = right.to_base64();
    let store = SqliteStore::open(dir.path(), right).await.unwrap();
    let new = new_account("work@example.com", credential("sk-ant-oat01-aaa", Some("sk-ant-ort01-bbb"), 100));
    store.create_account(&new, at(0), CredentialChange::Imported).await.unwrap();
    store.close().await;

    let wrong = SqliteStore::open(dir.path(), EncryptionKey::generate()).await.unwrap();
    let expect_decrypt = |result: Result<(), StoreError>| match result {
        Err(e @ StoreError::Decrypt { .. }) => {
            let StoreError::Decrypt { ref account, .. } = e else { unreachable!() };
            assert_eq!(account, "work@example.com");
            let shown = e.to_string();
            assert!(shown.contains("work@example.com") && shown.contains("TOKENKEEPER_KEY"), "{shown}");
        }
        other => panic!("expected a Decrypt error, got {other:?}"),
    };
    expect_decrypt(wrong.get_account("work@example.com").await.map(drop));
    expect_decrypt(wrong.list_accounts().await.map(drop));
    let next = credential("sk-ant-oat01-ccc", Some("sk-ant-ort01-ddd"), 200);
    expect_decrypt(
        wrong
            .update_credential("work@example.com", &update(1, next, CredentialChange::Refreshed, at(1)))
            .await
            .map(drop),
    );
    wrong.close().await;

    // The failed update wrote nothing.
    let again = SqliteStore::open(dir.path(), EncryptionKey::from_base64(&right_b64).unwrap()).await.unwrap();
    let stored = again.get_account("work@example.com").await.unwrap().unwrap();
    assert_eq!((stored.version, stored.credential.access_token.expose()), (1, "sk-ant-oat01-aaa"));
}

#[tokio::test]
async fn the_key_file_and_data_dir_are_created_private() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nested/data");
    let key = EncryptionKey::load_or_create(None, &dir).unwrap();
    assert_eq!(mode(&dir), 0o700);
    let key_file = dir.join("key");
    assert_eq!(mode(&key_file), 0o600);
    let text = std::fs::read_to_string(&key_file).unwrap();
    assert_eq!(text.lines().count(), 1);
    assert_eq!(STANDARD.decode(text.trim()).unwrap().len(), 32);
    assert_eq!(text.trim(), key.to_base64().as_str());
    // Later runs read the same key.
    assert_eq!(EncryptionKey::load_or_create(None, &dir).unwrap().to_base64(), key.to_base64());
    // No temporary file left behind.
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names, ["key"]);

    let store = SqliteStore::open(&dir, key).await.unwrap();
    let new = new_account("main", credential("sk-ant-oat01-x", None, 100));
    store.create_account(&new, at(0), CredentialChange::Imported).await.unwrap();
    assert_eq!(mode(&store.database_path()), 0o600);
    assert_eq!(mode(&dir.join("tokenkeeper.db-wal")), 0o600);
}

#[tokio::test]
async fn open_creates_a_missing_data_dir_private_and_refuses_a_file_in_the_way() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let store = SqliteStore::open(&dir, EncryptionKey::generate()).await.unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(store.data_dir(), dir);

    let blocker = tmp.path().join("blocker");
    std::fs::write(&blocker, "not a directory").unwrap();
    let err = SqliteStore::open(&blocker, EncryptionKey::generate()).await.unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains(&blocker.display().to_string()), "{err}");
    let err = SqliteStore::open(&blocker.join("sub"), EncryptionKey::generate()).await.unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
}

#[test]
fn a_key_file_others_can_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    EncryptionKey::load_or_create(None, dir.path()).unwrap();
    let key_file = dir.path().join("key");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = EncryptionKey::load_or_create(None, dir.path()).unwrap_err();
    let shown = err.to_string();
    assert!(matches!(err, StoreError::Key(_)), "{err:?}");
    assert!(shown.contains(&key_file.display().to_string()) && shown.contains("chmod 600"), "{shown}");
    // Putting it right makes it usable again.
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    EncryptionKey::load_or_create(None, dir.path()).unwrap();
}

#[test]
fn a_malformed_key_file_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, STANDARD.encode([1u8; 31])).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let shown = EncryptionKey::load_or_create(None, dir.path()).unwrap_err().to_string();
    assert!(shown.contains(&key_file.display().to_string()) && shown.contains("32 bytes"), "{shown}");
}

#[test]
fn the_environment_key_wins_and_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let env_key = STANDARD.encode([9u8; 32]);
    let key = EncryptionKey::load_or_create(Some(&env_key), dir.path()).unwrap();
    assert_eq!(key.to_base64().as_str(), env_key);
    assert!(!dir.path().join("key").exists(), "no key file when TOKENKEEPER_KEY is set");

    let short = STANDARD.encode([9u8; 24]);
    let err = EncryptionKey::load_or_create(Some(&short), dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Key(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "encryption key: TOKENKEEPER_KEY must be 32 bytes, base64-encoded; make one with `openssl rand -base64 32`"
    );
    assert!(!err.to_string().contains(&short), "the rejected value is not echoed");

    // A blank variable counts as unset.
    let from_file = EncryptionKey::load_or_create(Some("  "), dir.path()).unwrap();
    assert!(dir.path().join("key").exists());
    assert_ne!(from_file.to_base64().as_str(), env_key);
}

#[test]
fn processes_starting_at_once_agree_on_one_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let barrier = Arc::new(Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (dir, barrier) = (dir.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                EncryptionKey::load_or_create(None, &dir).unwrap().to_base64()
            })
        })
        .collect();
    let keys: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(keys.iter().all(|k| k == &keys[0]), "every starter must end up with the same key");
    assert_eq!(std::fs::read_to_string(dir.join("key")).unwrap().trim(), keys[0].as_str());
}

#[tokio::test]
async fn every_committed_write_touches_the_change_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), EncryptionKey::generate()).await.unwrap();
    let changes = store.changes_path();
    assert_eq!(changes, dir.path().join("tokenkeeper.changed"));
    let stamp = || std::fs::read_to_string(&changes).ok();
    assert_eq!(stamp(), None, "opening is not a change");

    let new = new_account("main", credential("sk-ant-oat01-x", Some("sk-ant-ort01-y"), 100));
    store.create_account(&new, at(0), CredentialChange::Imported).await.unwrap();
    let first = stamp().expect("a create is a change");
    store.get_account("main").await.unwrap();
    store.list_accounts().await.unwrap();
    assert_eq!(stamp().as_ref(), Some(&first), "reads are not changes");

    let next = credential("sk-ant-oat01-x2", Some("sk-ant-ort01-y2"), 200);
    store.update_credential("main", &update(1, next, CredentialChange::Refreshed, at(1))).await.unwrap();
    let second = stamp().unwrap();
    assert_ne!(second, first);
    // A refused write is not a change.
    let stale = credential("sk-ant-oat01-x3", Some("sk-ant-ort01-y3"), 300);
    assert!(store.update_credential("main", &update(1, stale, CredentialChange::Refreshed, at(2))).await.is_err());
    assert_eq!(stamp().as_ref(), Some(&second));
    // Usage and installation state wake nobody: a usage flush must never re-deliver sinks.
    store.record_usage(&[tokenkeeper_store::testing::use_of("main", 1, at(3))]).await.unwrap();
    store.put_state("alerts/state", &serde_json::json!({"x": 1}), at(3)).await.unwrap();
    assert_eq!(stamp().as_ref(), Some(&second), "usage and state are not changes");
    let patch = tokenkeeper_core::store::AccountPatch { last_error: Some(Some("x".into())), ..Default::default() };
    store.patch_account("main", &patch, at(4)).await.unwrap();
    assert_ne!(stamp().as_ref(), Some(&second), "a metadata change is a change");
}
