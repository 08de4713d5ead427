//! [`FileWatcher`]: notices when a bound credential file (Claude Code's
//! `.credentials.json`, an OpenClaw file) changes, however it was written.
//!
//! It watches each file's *directory* (non-recursively), not the file: programs that replace
//! the file by writing a temporary file and renaming it over (newer Claude Code versions,
//! tokenkeeper itself) give the file a new inode, and a watch on the old inode would never
//! fire again. Events are filtered by file name, so other files in the directory are
//! ignored. Reacted to: creation, content modification, a rename *onto* the name, and
//! close-after-write;
//! attribute changes (`chmod`, `touch`) and renames away are not changes of content.
//! A symlinked path is watched both where the link is and where its target is.
//!
//! No fixed delay: a change is reported as soon as the write is complete, which inotify
//! says itself. A rename onto the name (`Modify(Name(To))`; elsewhere than Linux also the
//! destination of `Modify(Name(Both))`) and a close after writing (`Access(Close(Write))`, the end of an
//! in-place truncate, write, close) are reported at once. A plain modification or creation
//! starts a fallback timer instead (the `fallback` given to [`FileWatcher::new`], restarted
//! by each further modification): the close that normally follows reports the change and
//! cancels the timer; the timer covers writers that never close (or back ends without
//! close events).
//!
//! Bursts coalesce: at most one notification per path is waiting in the channel. A change
//! noticed while one is waiting adds nothing (the reader will read the file after it, so it
//! sees that change too); a change noticed after the reader took the notification (during
//! its delivery) queues exactly one more. The path given to [`FileWatcher::watch`] is what
//! [`Changes::recv`] returns.
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

/// The default fallback delay after a modification that no close-after-write follows.
pub const DEFAULT_FALLBACK: Duration = Duration::from_millis(50);

type Targets = Arc<Mutex<HashMap<PathBuf, PathBuf>>>;

/// Paths with a notification waiting in the channel (taken out by [`Changes::recv`]).
type Waiting = Arc<Mutex<HashSet<PathBuf>>>;

/// How soon an event is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Urgency {
    /// The write is complete (renamed onto the name, or closed after writing): report now.
    Now,
    /// The file is being written: report when the fallback timer runs out, unless a
    /// [`Urgency::Now`] event comes first.
    Later,
}

/// The receiving end of a [`FileWatcher`]: the paths whose content changed, at most one
/// waiting per path. It ends (`recv` gives `None`) when the watcher is dropped.
#[derive(Debug)]
pub struct Changes {
    rx: mpsc::UnboundedReceiver<PathBuf>,
    waiting: Waiting,
}

impl Changes {
    /// The next changed path. Read the file after this returns: any change noticed from now
    /// on is reported again. Cancel-safe (usable in `tokio::select!`).
    pub async fn recv(&mut self) -> Option<PathBuf> {
        let path = self.rx.recv().await?;
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(&path);
        Some(path)
    }

    /// A changed path if one is waiting now.
    pub fn try_recv(&mut self) -> Result<PathBuf, mpsc::error::TryRecvError> {
        let path = self.rx.try_recv()?;
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(&path);
        Ok(path)
    }
}

/// The sending side: queues a notification unless one for the path is already waiting.
#[derive(Clone)]
struct Notifier {
    tx: mpsc::UnboundedSender<PathBuf>,
    waiting: Waiting,
}

impl Notifier {
    /// Queues `path`; `false` when the receiver is gone.
    fn notify(&self, path: &Path) -> bool {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if waiting.contains(path) {
            return true;
        }
        if self.tx.send(path.to_owned()).is_err() {
            return false;
        }
        waiting.insert(path.to_owned());
        true
    }
}

/// Watches files through their directories; see the [module docs](self).
pub struct FileWatcher {
    watcher: Option<RecommendedWatcher>,
    /// Path seen in events -> path reported to the receiver.
    targets: Targets,
    dirs: HashSet<PathBuf>,
    timers: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for FileWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWatcher").field("dirs", &self.dirs).finish_non_exhaustive()
    }
}

impl FileWatcher {
    /// A watcher with nothing watched yet, and the receiver of changed paths. `fallback` is
    /// how long after a plain modification (one no close-after-write follows) the change is
    /// reported anyway; complete writes are reported without waiting (see the
    /// [module docs](self)).
    pub fn new(fallback: Duration) -> Result<(FileWatcher, Changes), SyncError> {
        let targets: Targets = Arc::default();
        let waiting: Waiting = Arc::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let notifier = Notifier { tx, waiting: waiting.clone() };
        let (later_tx, later_rx) = std_mpsc::channel::<(PathBuf, Urgency)>();
        let filter_targets = targets.clone();
        let now_notifier = notifier.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<Event>| match res {
            Ok(event) => {
                let Some(urgency) = urgency(&event.kind) else { return };
                let map = filter_targets.lock().unwrap_or_else(|p| p.into_inner());
                for p in relevant_paths(&event) {
                    if let Some(reported) = map.get(p) {
                        if urgency == Urgency::Now {
                            now_notifier.notify(reported);
                        }
                        // The timer thread learns of both: a `Now` cancels its timer. Its
                        // receiver is gone only while the watcher is being dropped.
                        let _ = later_tx.send((reported.clone(), urgency));
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
        let timers = std::thread::Builder::new()
            .name("tk-watch-timers".into())
            .spawn(move || fallback_loop(&later_rx, &notifier, fallback))
            .map_err(|e| SyncError::io("start the timer thread of", "the file watcher", e))?;
        Ok((
            FileWatcher { watcher: Some(watcher), targets, dirs: HashSet::new(), timers: Some(timers) },
            Changes { rx, waiting },
        ))
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
        // Dropping the watcher drops its callback and so the timer thread's input, which ends
        // it; the timer thread holds the last sender, so the receiver ends too.
        drop(self.watcher.take());
        if let Some(t) = self.timers.take() {
            let _ = t.join();
        }
    }
}

/// How soon an event of this kind is reported, or `None` if it is no change of content
/// (attribute changes such as `chmod` and `touch`, renames away, reads).
fn urgency(kind: &EventKind) -> Option<Urgency> {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(Urgency::Now),
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => Some(Urgency::Now),
        // inotify follows every `Name(To)` of a rename within watched directories with a
        // paired `Name(Both)`: the rename is reported already, once is enough.
        #[cfg(target_os = "linux")]
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => None,
        #[cfg(not(target_os = "linux"))]
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => Some(Urgency::Now),
        EventKind::Modify(ModifyKind::Metadata(_)) | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => None,
        // inotify reports a rename onto the name as `Name(To)`, never as a creation: a creation
        // is `open(O_CREAT)`, the start of an in-place write whose close follows.
        EventKind::Create(_) | EventKind::Modify(_) => Some(Urgency::Later),
        _ => None,
    }
}

/// The paths of an event that may mean new content at that path.
fn relevant_paths(event: &Event) -> &[PathBuf] {
    match event.kind {
        // `[from, to]`: only the destination got new content.
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => event.paths.last().map_or(&[], std::slice::from_ref),
        _ => &event.paths,
    }
}

/// Runs the fallback timers: a `Later` event (re)starts the path's timer, a `Now` event
/// (already reported) cancels it, and a timer that runs out reports its path.
fn fallback_loop(input: &std_mpsc::Receiver<(PathBuf, Urgency)>, output: &Notifier, fallback: Duration) {
    let mut timers: HashMap<PathBuf, Instant> = HashMap::new();
    loop {
        let next = timers.values().min().copied();
        let received = match next {
            None => input.recv().map_err(|_| std_mpsc::RecvTimeoutError::Disconnected),
            Some(deadline) => input.recv_timeout(deadline.saturating_duration_since(Instant::now())),
        };
        match received {
            Ok((path, Urgency::Later)) => {
                timers.insert(path, Instant::now() + fallback);
            }
            Ok((path, Urgency::Now)) => {
                timers.remove(&path);
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        let due: Vec<PathBuf> = timers.iter().filter(|(_, d)| **d <= now).map(|(p, _)| p.clone()).collect();
        for p in due {
            timers.remove(&p);
            if !output.notify(&p) {
                return;
            }
        }
    }
}
