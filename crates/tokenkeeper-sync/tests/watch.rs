//! The file watcher with real file-system events: writes by rename and in place are both
//! seen, other files in the directory are not, bursts are debounced.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokenkeeper_sync::watch::FileWatcher;
use tokio::sync::mpsc::Receiver;

const SAFETY: Duration = Duration::from_secs(5);

async fn next(rx: &mut Receiver<PathBuf>) -> PathBuf {
    tokio::time::timeout(SAFETY, rx.recv()).await.expect("no event in time").expect("watcher ended")
}

fn write_by_rename(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp-writer");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn write_in_place(path: &Path, content: &str) {
    let mut f = std::fs::OpenOptions::new().write(true).truncate(true).create(true).open(path).unwrap();
    f.write_all(content.as_bytes()).unwrap();
}

#[tokio::test]
async fn rename_and_in_place_writes_are_both_seen_and_others_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join(".credentials.json");
    let other = dir.path().join("settings.json");
    std::fs::write(&creds, "{}").unwrap();
    let (mut w, mut rx) = FileWatcher::new(Duration::from_millis(20)).unwrap();
    w.watch(&creds).unwrap();

    write_by_rename(&creds, "{\"a\":1}");
    assert_eq!(next(&mut rx).await, creds);

    write_in_place(&creds, "{\"a\":2}");
    assert_eq!(next(&mut rx).await, creds);

    // Another file changes first; the only event is still the watched file's.
    write_in_place(&other, "x");
    write_by_rename(&other, "y");
    write_in_place(&creds, "{\"a\":3}");
    assert_eq!(next(&mut rx).await, creds);
    assert!(rx.try_recv().is_err(), "an event for another file leaked through");
}

#[tokio::test]
async fn a_file_that_does_not_exist_yet_is_seen_when_created() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("later.json");
    let (mut w, mut rx) = FileWatcher::new(Duration::from_millis(20)).unwrap();
    w.watch(&creds).unwrap();
    write_by_rename(&creds, "{}");
    assert_eq!(next(&mut rx).await, creds);
}

#[tokio::test]
async fn bursts_are_debounced_per_file() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.json");
    let b = dir.path().join("b.json");
    let (mut w, mut rx) = FileWatcher::new(Duration::from_millis(40)).unwrap();
    w.watch(&a).unwrap();
    w.watch(&b).unwrap();
    for i in 0..20 {
        write_in_place(&a, &format!("{i}"));
    }
    assert_eq!(next(&mut rx).await, a);
    // Had the burst produced a second event for `a`, it would come before `b`'s.
    write_in_place(&b, "x");
    assert_eq!(next(&mut rx).await, b);
}

#[tokio::test]
async fn a_symlinked_file_is_seen_when_its_target_changes() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let target = real.join("creds.json");
    std::fs::write(&target, "{}").unwrap();
    let link = dir.path().join("link.json");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let (mut w, mut rx) = FileWatcher::new(Duration::from_millis(20)).unwrap();
    w.watch(&link).unwrap();
    write_by_rename(&target, "{\"x\":1}");
    assert_eq!(next(&mut rx).await, link, "reported under the path that was asked for");
}

#[tokio::test]
async fn a_missing_directory_is_an_error_naming_it() {
    let (mut w, _rx) = FileWatcher::new(Duration::from_millis(20)).unwrap();
    let e = w.watch(Path::new("/nonexistent-tk-dir/creds.json")).unwrap_err().to_string();
    assert!(e.contains("watch the directory") && e.contains("/nonexistent-tk-dir"), "{e}");
}

#[tokio::test]
async fn dropping_the_watcher_ends_the_channel() {
    let (w, mut rx) = FileWatcher::new(Duration::from_millis(20)).unwrap();
    drop(w);
    assert_eq!(tokio::time::timeout(SAFETY, rx.recv()).await.unwrap(), None);
}
