//! [`Campaign`]: this process campaigns for leadership of the installation for as long as it
//! runs, through the backend's [`Leadership`] seam, and tells the daemon (and `/api/status`,
//! `/metrics`) whether it leads through a [`tokio::sync::watch`] channel.
//!
//! One task per process: it waits for the leader lock (the backend wakes it the moment the
//! leader goes), announces the new leader in the store ([`LEADER_KEY`]), then waits for the lock
//! to be lost; on a loss it says so at once and campaigns again after [`AFTER_LOSS`]. Stopping
//! the campaign drops the guard, so a clean shutdown hands leadership over without delay.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use tokenkeeper_core::{Leadership, SharedClock, Store};

pub use tokenkeeper_core::backend::LEADER_KEY;

/// How long a replica that lost leadership (its lock connection failed) waits before it
/// campaigns again, so a flapping database is not hammered.
pub const AFTER_LOSS: Duration = Duration::from_secs(1);

/// What [`LEADER_KEY`] holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// The leading replica's id.
    pub replica: String,
    /// When it took over.
    pub since: DateTime<Utc>,
}

/// The default replica id: `<hostname>:<pid>`, unique on a host and telling on a dashboard.
pub fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}:{}", std::process::id())
}

/// This process's campaign for leadership; stops (and gives leadership up) when stopped or dropped.
#[derive(Debug)]
pub struct Campaign {
    replica: String,
    leading: watch::Receiver<bool>,
    task: Option<JoinHandle<()>>,
}

impl Campaign {
    /// Starts campaigning as `replica`; a follower waits for the lock `retry` at a time.
    pub fn start(
        leadership: Arc<dyn Leadership>,
        store: Arc<dyn Store>,
        clock: SharedClock,
        replica: String,
        retry: Duration,
    ) -> Campaign {
        let (tx, leading) = watch::channel(false);
        let id = replica.clone();
        let task = tokio::spawn(async move {
            loop {
                match leadership.acquire(&id, retry).await {
                    Ok(Some(mut guard)) => {
                        let since = clock.now();
                        let record = LeaderRecord { replica: id.clone(), since };
                        match serde_json::to_value(&record) {
                            Ok(v) => {
                                if let Err(e) = store.put_state(LEADER_KEY, &v, since).await {
                                    tracing::warn!(error = %e, "cannot record the new leader");
                                }
                            }
                            Err(e) => tracing::debug!(error = %e, "cannot serialise the leader record"),
                        }
                        tracing::info!(replica = %id, "this replica now leads");
                        tx.send_replace(true);
                        let why = guard.lost().await;
                        tx.send_replace(false);
                        drop(guard);
                        tracing::warn!(replica = %id, error = %why, "leadership lost; leader work stopped");
                        tokio::time::sleep(AFTER_LOSS).await;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot campaign for leadership; retrying");
                        tokio::time::sleep(retry.min(Duration::from_secs(5))).await;
                    }
                }
            }
        });
        Campaign { replica, leading, task: Some(task) }
    }

    /// This replica's id.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Whether this process leads, as it changes.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Stops campaigning and gives leadership up (the guard is dropped with the task).
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Campaign {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
