//! Compare-and-set across OS processes: this test binary runs itself four times as writers.
//!
//! The children start together on a data directory that does not exist yet, so they also race
//! to create the directory, the key file and the database. Each says `READY`, waits for the
//! parent's `go <version>` on stdin, tries its write and reports `RESULT …` on stdout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokenkeeper_core::store::{CredentialChange, Store, StoreError};
use tokenkeeper_store::testing::{at, credential, new_account, update};
use tokenkeeper_store::{EncryptionKey, SqliteStore};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// Set in a child: `<data dir>|<writer number>`.
const CHILD_ENV: &str = "TOKENKEEPER_STORE_TEST_CAS_CHILD";

const CHILDREN: usize = 4;

/// Generous: it only bounds a hung child, it is not a pause.
const PATIENCE: Duration = Duration::from_secs(120);

fn access(writer: usize) -> String {
    format!("sk-ant-oat01-process-writer{writer}")
}

/// A writer's attempt: its own credential, from `expected_version`. Returns the outcome as a
/// `RESULT` line.
async fn attempt(data_dir: &Path, writer: usize, expected_version: i64) -> String {
    let store = open(data_dir).await;
    attempt_with(&store, writer, expected_version).await
}

async fn open(data_dir: &Path) -> SqliteStore {
    let key = EncryptionKey::load_or_create(None, data_dir).unwrap();
    SqliteStore::open(data_dir, key).await.unwrap()
}

async fn attempt_with(store: &SqliteStore, writer: usize, expected_version: i64) -> String {
    let refresh = format!("sk-ant-ort01-process-writer{writer}");
    let mine = credential(&access(writer), Some(&refresh), 1_000 + writer as i64);
    match store.update_credential("main", &update(expected_version, mine, CredentialChange::Refreshed, at(5))).await {
        Ok(account) => format!("RESULT won {}", account.version),
        Err(StoreError::VersionConflict { found, .. }) => format!("RESULT conflict {found}"),
        Err(other) => format!("RESULT error {other}"),
    }
}

/// The child's part; run by itself (no child variable), it checks one writer alone: a fresh
/// version wins, a stale one conflicts.
#[tokio::test]
async fn cas_writer() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path()).await;
        let seed = new_account("main", credential("sk-ant-oat01-seed", Some("sk-ant-ort01-seed"), 10));
        store.create_account(&seed, at(0), CredentialChange::LoggedIn).await.unwrap();
        assert_eq!(attempt(tmp.path(), 7, 1).await, "RESULT won 2");
        assert_eq!(attempt(tmp.path(), 8, 1).await, "RESULT conflict 2");
        return;
    };
    let (dir, writer) = spec.split_once('|').unwrap();
    let store = open(Path::new(dir)).await;
    println!("READY");
    let line = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await
    .unwrap()
    .unwrap();
    let version: i64 = line.trim().strip_prefix("go ").unwrap().parse().unwrap();
    println!("{}", attempt_with(&store, writer.parse().unwrap(), version).await);
}

fn spawn_child(data_dir: &Path, writer: usize) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "cas_writer", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, format!("{}|{writer}", data_dir.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// The next report `prefix…` in a child's output (libtest may print `test cas_writer ... `
/// on the same line before it).
async fn line_starting(lines: &mut Lines<BufReader<ChildStdout>>, prefix: &str) -> String {
    let wanted = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(at) = line.find(prefix) {
                return line[at..].to_owned();
            }
        }
        panic!("a child ended without printing {prefix}");
    };
    tokio::time::timeout(PATIENCE, wanted).await.unwrap_or_else(|_| panic!("no {prefix} from a child"))
}

#[tokio::test]
async fn four_processes_exactly_one_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir: PathBuf = tmp.path().join("fresh");
    let mut children: Vec<Child> = (0..CHILDREN).map(|writer| spawn_child(&data_dir, writer)).collect();
    let mut outputs: Vec<_> = children.iter_mut().map(|c| BufReader::new(c.stdout.take().unwrap()).lines()).collect();
    for lines in &mut outputs {
        line_starting(lines, "READY").await;
    }

    // Every child created or read the key file; if two had made different keys, someone's
    // write below would fail to decrypt the row this one seals.
    let store = open(&data_dir).await;
    let seed = new_account("main", credential("sk-ant-oat01-seed", Some("sk-ant-ort01-seed"), 10));
    store.create_account(&seed, at(0), CredentialChange::LoggedIn).await.unwrap();

    for child in &mut children {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"go 1\n").await.unwrap();
        stdin.flush().await.unwrap();
    }
    let mut results = Vec::new();
    for lines in &mut outputs {
        results.push(line_starting(lines, "RESULT").await);
    }
    for child in &mut children {
        let status = tokio::time::timeout(PATIENCE, child.wait()).await.unwrap().unwrap();
        assert!(status.success(), "a child failed: {status}");
    }

    let winners: Vec<usize> = (0..CHILDREN).filter(|&w| results[w] == "RESULT won 2").collect();
    assert_eq!(winners.len(), 1, "exactly one process must win: {results:?}");
    let losers = results.iter().filter(|r| *r == "RESULT conflict 2").count();
    assert_eq!(losers, CHILDREN - 1, "the others must see a version conflict: {results:?}");
    let stored = store.get_account("main").await.unwrap().unwrap();
    assert_eq!(stored.version, 2);
    assert_eq!(stored.credential.access_token.expose(), access(winners[0]));
}
