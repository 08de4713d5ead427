//! `tokenkeeper serve`: the daemon. Stops cleanly on SIGTERM/SIGINT; tells systemd when ready.

use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};

use tokenkeeper_keeper::daemon::Daemon;
use tokenkeeper_sync::sink::SinkSet;

use crate::app::App;
use crate::cli::ServeArgs;
use crate::exit;

pub async fn run(app: App, _args: ServeArgs) -> Result<i32> {
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
        }
    };
    let sinks = Arc::new(SinkSet::new(app.config.sinks.clone()));
    let daemon = Daemon::new(app.keeper.clone(), Some(sinks.clone()), Some(app.store.changes_path()));
    tracing::info!(data_dir = %app.data_dir.display(), lead = %humantime::format_duration(app.config.keeper.lead), "tokenkeeper serve starting");
    daemon
        .run(shutdown, || {
            // Under systemd (Type=notify) this tells it we are up; elsewhere it does nothing.
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
            tracing::info!("ready");
        })
        .await?;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    if let Ok(s) = Arc::try_unwrap(sinks) {
        s.shutdown().await;
    }
    Ok(exit::OK)
}
