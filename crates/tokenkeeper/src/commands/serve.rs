//! `tokenkeeper serve`: the daemon, and beside it the HTTP API and web page (unless
//! `--no-http` or `[server] enabled = false`). Stops cleanly on SIGTERM/SIGINT; tells systemd
//! when ready, which is once the listener is bound and the daemon has started.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use tokenkeeper_alert::AlertEngine;
use tokenkeeper_daemon::leader::{default_replica_id, Campaign};
use tokenkeeper_daemon::Daemon;
use tokenkeeper_server::{load_or_create_admin_token, AppState, Replica, ADMIN_TOKEN_ENV};
use tokenkeeper_sync::sink::SinkSet;

use crate::app::App;
use crate::cli::ServeArgs;
use crate::exit;

/// How long the HTTP server may take to drain after the daemon stopped.
const HTTP_DRAIN: Duration = Duration::from_secs(35);

pub async fn run(app: App, args: ServeArgs) -> Result<i32> {
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    // One stop signal for both: a signal stops the daemon, the daemon's end stops the server,
    // and a server that fails on its own stops the daemon.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut server_failed = stop_rx.clone();
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
            _ = server_failed.wait_for(|stop| *stop) => tracing::warn!("the HTTP server stopped; stopping"),
        }
    };
    let sinks = Arc::new(SinkSet::new(app.config.sinks.clone()));
    let alerts = if app.config.alerts.is_empty() {
        None
    } else {
        let engine =
            AlertEngine::new(app.config.alerts.clone(), app.config.alerting.clone(), app.keeper.clock().clone())
                .context("cannot set up [[alerts]]")?;
        Some(Arc::new(engine))
    };
    let campaign = start_campaign(&app);
    let http = !args.no_http && app.config.server.enabled;
    let server = if http {
        let from_env = std::env::var(ADMIN_TOKEN_ENV).ok();
        let admin = load_or_create_admin_token(&app.data_dir, from_env.as_deref())?;
        let listen = app.config.server.listen;
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| {
            format!("cannot listen on {listen} for the HTTP API; change [server] listen, or run with --no-http")
        })?;
        let web = {
            let (keeper, sinks, admin) = (app.keeper.clone(), sinks.clone(), admin.clone());
            Arc::new(move |secure: bool| {
                tokenkeeper_web::router(tokenkeeper_web::WebState::new(
                    keeper.clone(),
                    Some(sinks.clone()),
                    admin.clone(),
                    secure,
                ))
            })
        };
        let mut state = AppState::new(app.keeper.clone(), Some(sinks.clone()), admin)
            .with_routes(web)
            .with_replica(Replica { id: campaign.replica().to_owned(), leading: campaign.watch() });
        if let Some(alerts) = &alerts {
            let alerts = alerts.clone();
            state = state.with_extra_metrics(Arc::new(move |out: &mut String| alert_metrics(&alerts, out)));
        }
        let mut stop = stop_rx.clone();
        let failed = stop_tx.clone();
        Some(tokio::spawn(async move {
            let result = tokenkeeper_server::serve(listener, state, async move {
                let _ = stop.wait_for(|stop| *stop).await;
            })
            .await;
            if let Err(e) = &result {
                tracing::error!(error = %e, "the HTTP server failed");
            }
            let _ = failed.send(true);
            result
        }))
    } else {
        tracing::info!("HTTP server disabled (--no-http or [server] enabled = false)");
        None
    };
    let mut daemon = Daemon::new(app.keeper.clone(), Some(sinks.clone())).with_leadership(campaign.watch());
    if let Some(alerts) = &alerts {
        daemon = daemon.with_alerts(alerts.clone());
    }
    tracing::info!(data_dir = %app.data_dir.display(), lead = %humantime::format_duration(app.config.keeper.lead), "tokenkeeper serve starting");
    let daemon_result = daemon
        .run(shutdown, || {
            // Under systemd (Type=notify) this tells it we are up; elsewhere it does nothing.
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
            tracing::info!("ready");
        })
        .await;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    // Leadership is handed over as soon as the daemon stopped, not after the HTTP drain.
    campaign.stop().await;
    let _ = stop_tx.send(true);
    let mut code = exit::OK;
    if let Some(handle) = server {
        match tokio::time::timeout(HTTP_DRAIN, handle).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                eprintln!("error: the HTTP server failed: {e}");
                code = exit::FAILURE;
            }
            Ok(Err(e)) => {
                eprintln!("error: the HTTP server task failed: {e}");
                code = exit::FAILURE;
            }
            Err(_) => tracing::warn!("the HTTP server did not drain in time"),
        }
    }
    daemon_result?;
    if let Ok(s) = Arc::try_unwrap(sinks) {
        s.shutdown().await;
    }
    if let Some(Ok(engine)) = alerts.map(Arc::try_unwrap) {
        engine.shutdown().await;
    }
    Ok(code)
}

/// Campaigns for leadership of the installation as `[replica] id` (default `<hostname>:<pid>`):
/// with one `serve` per data directory it leads at once; among replicas on PostgreSQL one leads.
fn start_campaign(app: &App) -> Campaign {
    let replica = app.config.replica.id.clone().unwrap_or_else(default_replica_id);
    tracing::info!(replica = %replica, "campaigning for leadership");
    Campaign::start(
        app.keeper.leadership().clone(),
        app.store.clone(),
        app.keeper.clock().clone(),
        replica,
        app.config.replica.leader_retry,
    )
}

/// `tokenkeeper_alert_deliveries_total{channel, result}` in Prometheus text format. Channel
/// names come from the config (never a URL).
fn alert_metrics(alerts: &AlertEngine, out: &mut String) {
    use std::fmt::Write;
    let _ =
        writeln!(out, "# HELP tokenkeeper_alert_deliveries_total Alert messages delivered or given up on, by channel.");
    let _ = writeln!(out, "# TYPE tokenkeeper_alert_deliveries_total counter");
    for c in alerts.channel_statuses() {
        let name = c.name.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(out, "tokenkeeper_alert_deliveries_total{{channel=\"{name}\",result=\"sent\"}} {}", c.sent);
        let _ =
            writeln!(out, "tokenkeeper_alert_deliveries_total{{channel=\"{name}\",result=\"failed\"}} {}", c.failed);
    }
}
