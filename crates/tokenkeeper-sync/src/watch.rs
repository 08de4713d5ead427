//! [`FileWatcher`]: notices when a bound credential file (Claude Code's
//! `.credentials.json`, an OpenClaw file) changes, however it was written.
//!
//! It watches each file's *directory* (non-recursively), not the file: programs that replace
//! the file by writing a temporary file and renaming it over (newer Claude Code versions,
//! tokenkeeper itself) give the file a new inode, and a watch on the old inode would never
//! fire again. Events are filtered by file name, so other files in the directory are
//! ignored. Reacted to: creation, content modification, a rename *onto* the name (including
//! inotify's `Modify(Name(To))` and paired `Modify(Name(Both))`), and close-after-write;
//! attribute changes (`chmod`, `touch`) and renames away are not changes of content.
//! A symlinked path is watched both where the link is and where its target is.
//!
//! Events are debounced per file (default 50 ms after the last event): a write in place
//! produces several events (truncate, write, close) and the reader should see the file once,
//! complete. The path given to [`FileWatcher::watch`] is sent on the channel.
//!
//! Limits: a watched directory that is removed and created again is not watched anew (restart
//! or call [`FileWatcher::watch`] again); network file systems may deliver no events at all.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::{Event, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::error::SyncError;
use crate::fs::resolve_symlinks;

/// The default debounce of file events.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(50);

/// Capacity of the channel of changed paths.
const CHANNEL_CAPACITY: usize = 64;

type Targets = Arc<Mutex<HashMap<PathBuf, PathBuf>>>;

/// Watches files through their directories; see the [module docs](self).
pub struct FileWatcher {
    watcher: Option<RecommendedWatcher>,
    /// Path seen in events -> path reported to the receiver.
    targets: Targets,
    dirs: HashSet<PathBuf>,
    debouncer: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for FileWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWatcher").field("dirs", &self.dirs).finish_non_exhaustive()
    }
}

impl FileWatcher {
    /// A watcher with nothing watched yet, and the receiver of changed paths. The receiver
    /// ends (`recv` gives `None`) when the watcher is dropped.
    pub fn new(debounce: Duration) -> Result<(FileWatcher, mpsc::Receiver<PathBuf>), SyncError> {
        let targets: Targets = Arc::default();
        let (raw_tx, raw_rx) = std_mpsc::channel::<PathBuf>();
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let filter_targets = targets.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<Event>| match res {
            Ok(event) => {
                let map = filter_targets.lock().unwrap_or_else(|p| p.into_inner());
                for p in relevant_paths(&event) {
                    if let Some(reported) = map.get(p) {
                        // The receiver is gone only while the watcher is being dropped.
                        let _ = raw_tx.send(reported.clone());
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "file watcher error"),
        })
        .map_err(|source| SyncError::Watch {
            action: "start the file watcher",
            path: PathBuf::new(),
            source,
        })?;
        let debouncer = std::thread::Builder::new()
            .name("tk-watch-debounce".into())
            .spawn(move || debounce_loop(&raw_rx, &tx, debounce))
            .map_err(|e| SyncError::io("start the debounce thread of", "the file watcher", e))?;
        Ok((FileWatcher { watcher: Some(watcher), targets, dirs: HashSet::new(), debouncer: Some(debouncer) }, rx))
    }

    /// Starts watching `path` (which need not exist yet; its directory must).
    pub fn watch(&mut self, path: &Path) -> Result<(), SyncError> {
        let reported = path.to_owned();
        let absolute = std::path::absolute(path).map_err(|e| SyncError::io("make absolute", path, e))?;
        let mut seen = vec![absolute.clone()];
        if let Ok(resolved) = resolve_symlinks(&absolute) {
            if resolved != absolute {
                seen.push(std::path::absolute(&resolved).unwrap_or(resolved));
            }
        }
        for p in seen {
            let dir = p.parent().map(Path::to_owned).unwrap_or_else(|| PathBuf::from("/"));
            if !self.dirs.contains(&dir) {
                if let Some(w) = self.watcher.as_mut() {
                    w.watch(&dir, RecursiveMode::NonRecursive).map_err(|source| SyncError::Watch {
                        action: "watch the directory",
                        path: dir.clone(),
                        source,
                    })?;
                }
                self.dirs.insert(dir);
            }
            self.targets.lock().unwrap_or_else(|p| p.into_inner()).insert(p, reported.clone());
        }
        Ok(())
    }
}

impl Drop for FileWatcher {
    fn drop(&mut self) {
        // Dropping the watcher drops its callback and so the debouncer's input, which ends it.
        drop(self.watcher.take());
        if let Some(t) = self.debouncer.take() {
            let _ = t.join();
        }
    }
}

/// The paths of an event that may mean new content at that path.
fn relevant_paths(event: &Event) -> &[PathBuf] {
    match event.kind {
        EventKind::Create(_) | EventKind::Access(AccessKind::Close(AccessMode::Write)) => &event.paths,
        EventKind::Modify(ModifyKind::Metadata(_)) | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => &[],
        // `[from, to]`: only the destination got new content.
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => event.paths.last().map_or(&[], std::slice::from_ref),
        EventKind::Modify(_) => &event.paths,
        _ => &[],
    }
}

fn debounce_loop(input: &std_mpsc::Receiver<PathBuf>, output: &mpsc::Sender<PathBuf>, debounce: Duration) {
    let mut pending: HashMap<PathBuf, Instant> = HashMap::new();
    loop {
        let next = pending.values().min().copied();
        let received = match next {
            None => input.recv().map_err(|_| std_mpsc::RecvTimeoutError::Disconnected),
            Some(deadline) => input.recv_timeout(deadline.saturating_duration_since(Instant::now())),
        };
        match received {
            Ok(path) => {
                pending.insert(path, Instant::now() + debounce);
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        let due: Vec<PathBuf> = pending.iter().filter(|(_, d)| **d <= now).map(|(p, _)| p.clone()).collect();
        for p in due {
            pending.remove(&p);
            // Never block: a receiver that stopped reading must not hang the drop of the
            // watcher. A path that does not fit now is tried again a debounce later.
            match output.try_send(p) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(p)) => {
                    pending.insert(p, now + debounce.max(Duration::from_millis(1)));
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    }
}
