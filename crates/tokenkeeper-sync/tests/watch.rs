//! The file watcher with real file-system events: writes by rename and in place are both
//! seen at once (no timer), other files in the directory are not, bursts coalesce.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokenkeeper_sync::watch::{Changes, FileWatcher};

const SAFETY: Duration = Duration::from_secs(5);

async fn next(rx: &mut Changes) -> PathBuf {
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
async fn bursts_coalesce_per_file() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.json");
    let b = dir.path().join("b.json");
    let (mut w, mut rx) = FileWatcher::new(Duration::from_millis(40)).unwrap();
    w.watch(&a).unwrap();
    w.watch(&b).unwrap();
    for i in 0..20 {
        write_in_place(&a, &format!("{i}"));
    }
    write_in_place(&b, "x");
    // Nothing is taken while the burst is written, so its 20 writes wait as one notification
    // (plus at most one per change noticed after the reader took the last one).
    let mut a_seen = 0;
    loop {
        let p = next(&mut rx).await;
        if p == b {
            break;
        }
        assert_eq!(p, a);
        a_seen += 1;
    }
    assert!((1..=3).contains(&a_seen), "20 writes of a gave {a_seen} notifications");
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

/// A fallback far longer than any wait below: what arrives in time was not sent by a timer.
const NO_TIMER: Duration = Duration::from_secs(30);

/// Waits until nothing more arrives for a while, returning what did (the wait is a bound on
/// a real signal, not a sleep the result depends on).
async fn drain(rx: &mut Changes) -> Vec<PathBuf> {
    let mut got = Vec::new();
    while let Ok(Some(p)) = tokio::time::timeout(Duration::from_millis(50), rx.recv()).await {
        got.push(p);
    }
    got
}

#[tokio::test]
async fn rename_and_in_place_writes_are_reported_once_each_without_a_timer() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join(".credentials.json");
    std::fs::write(&creds, "{}").unwrap();
    let (mut w, mut rx) = FileWatcher::new(NO_TIMER).unwrap();
    w.watch(&creds).unwrap();

    write_by_rename(&creds, "{\"a\":1}");
    let started = std::time::Instant::now();
    assert_eq!(next(&mut rx).await, creds);
    assert!(started.elapsed() < NO_TIMER / 2, "the rename was reported by the fallback timer");
    assert_eq!(drain(&mut rx).await, Vec::<PathBuf>::new(), "a rename was reported more than once");

    // Truncate, write, close: reported on the close, once.
    write_in_place(&creds, "{\"a\":2}");
    assert_eq!(next(&mut rx).await, creds);
    assert_eq!(std::fs::read_to_string(&creds).unwrap(), "{\"a\":2}", "reported before the write was complete");
    assert_eq!(drain(&mut rx).await, Vec::<PathBuf>::new(), "an in-place write was reported more than once");
}

#[tokio::test]
async fn a_write_still_open_is_not_reported_until_it_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join(".credentials.json");
    std::fs::write(&creds, "{}").unwrap();
    let (mut w, mut rx) = FileWatcher::new(NO_TIMER).unwrap();
    w.watch(&creds).unwrap();
    let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(&creds).unwrap();
    f.write_all(b"{\"half\":").unwrap();
    assert_eq!(drain(&mut rx).await, Vec::<PathBuf>::new(), "a half-written file was reported");
    f.write_all(b"1}").unwrap();
    drop(f);
    assert_eq!(next(&mut rx).await, creds);
    assert_eq!(std::fs::read_to_string(&creds).unwrap(), "{\"half\":1}");
}

#[tokio::test]
async fn a_modification_never_closed_is_reported_by_the_fallback_timer() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join(".credentials.json");
    std::fs::write(&creds, "{}").unwrap();
    let (mut w, mut rx) = FileWatcher::new(Duration::from_millis(20)).unwrap();
    w.watch(&creds).unwrap();
    let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(&creds).unwrap();
    f.write_all(b"{\"b\":1}").unwrap();
    // Still open: only the timer can report it.
    assert_eq!(next(&mut rx).await, creds);
    drop(f);
}

#[tokio::test]
async fn a_hundred_quick_writes_coalesce_and_the_last_content_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join(".credentials.json");
    std::fs::write(&creds, "start").unwrap();
    let (mut w, mut rx) = FileWatcher::new(NO_TIMER).unwrap();
    w.watch(&creds).unwrap();
    let writer = {
        let creds = creds.clone();
        std::thread::spawn(move || {
            for i in 0..100 {
                if i % 2 == 0 {
                    write_by_rename(&creds, &format!("{i}"));
                } else {
                    write_in_place(&creds, &format!("{i}"));
                }
            }
        })
    };
    // A reader that delivers what it was told about, one read per notification; its first
    // delivery lasts until the writer is done, so every later write arrives during a delivery.
    let mut writer = Some(writer);
    let mut notifications = 0;
    let mut last = String::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            Ok(Some(p)) => {
                notifications += 1;
                last = std::fs::read_to_string(&p).unwrap();
                if let Some(w) = writer.take() {
                    w.join().unwrap();
                }
            }
            Ok(None) => panic!("watcher ended"),
            Err(_) if writer.is_none() => break,
            Err(_) => {}
        }
    }
    assert_eq!(last, "99", "the last delivery did not read the last content");
    // One for the first write, one for everything during its delivery, and a few more only
    // if the watcher was still catching up with the burst when those were taken.
    assert!(notifications <= 5, "100 writes caused {notifications} notifications");
}
