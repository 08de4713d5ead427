//! `tokenkeeper serve`: the daemon, and beside it the HTTP API, the web page and the Anthropic
//! API proxy (unless `--no-http` or `[server] enabled = false`; the proxy also unless
//! `[proxy] enabled = false`). Stops cleanly on SIGTERM/SIGINT; tells systemd when ready,
//! which is once the listeners are bound and the daemon has started.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use tokenkeeper_alert::AlertEngine;
use tokenkeeper_daemon::leader::{default_replica_id, Campaign};
use tokenkeeper_daemon::Daemon;
use tokenkeeper_proxy::ProxyState;
use tokenkeeper_server::metrics::prometheus_client::metrics::{counter::Counter, family::Family};
use tokenkeeper_server::metrics::prometheus_client::registry::Registry;
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
    let sinks = Arc::new(SinkSet::with_providers(app.config.sinks.clone(), app.keeper.providers().clone()));
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
    let mut proxy_server = None;
    let server = if http {
        let from_env = std::env::var(ADMIN_TOKEN_ENV).ok();
        let admin = load_or_create_admin_token(&app.data_dir, from_env.as_deref())?;
        let listen = app.config.server.listen;
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| {
            format!("cannot listen on {listen} for the HTTP API; change [server] listen, or run with --no-http")
        })?;
        let proxy = proxy_state(&app)?;
        let web = {
            let (keeper, sinks, admin, pool) = (app.keeper.clone(), sinks.clone(), admin.clone(), proxy.clone());
            Arc::new(move |secure: bool| {
                let web = tokenkeeper_web::WebState::new(keeper.clone(), Some(sinks.clone()), admin.clone(), secure);
                // The dashboard's pool view reads the same proxy state that serves /v1.
                tokenkeeper_web::router(match &pool {
                    Some(p) => web.with_pool(p.clone()),
                    None => web,
                })
            })
        };
        let mut state = AppState::new(app.keeper.clone(), Some(sinks.clone()), admin)
            .with_routes(web)
            .with_replica(Replica { id: campaign.replica().to_owned(), leading: campaign.watch() });
        if let Some(alerts) = &alerts {
            let alerts = alerts.clone();
            state = state.with_metrics(Arc::new(move |registry: &mut Registry| alert_metrics(&alerts, registry)));
        }
        if let Some(proxy) = proxy {
            let (mounted, own) = mount_proxy(&app, proxy, state, &stop_tx).await?;
            state = mounted;
            proxy_server = own;
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
    if let Some(handle) = proxy_server {
        if !drain_proxy(handle).await {
            code = exit::FAILURE;
        }
    }
    flush_after_drain(&app).await;
    daemon_result?;
    if let Ok(s) = Arc::try_unwrap(sinks) {
        s.shutdown().await;
    }
    if let Some(Ok(engine)) = alerts.map(Arc::try_unwrap) {
        engine.shutdown().await;
    }
    Ok(code)
}

/// The proxy over the app's keeper, unless `[proxy] enabled = false`.
fn proxy_state(app: &App) -> Result<Option<ProxyState>> {
    if !app.config.proxy.enabled {
        tracing::info!("the API proxy is disabled ([proxy] enabled = false)");
        return Ok(None);
    }
    let proxy = ProxyState::new(app.keeper.clone(), &app.config).context("cannot set up the API proxy ([proxy])")?;
    Ok(Some(proxy))
}

/// Mounts the proxy: its metrics join `/metrics`; its front (`/v1/*`) joins the main listener
/// ahead of the router and outside the API's request timeout (streams last as long as they
/// last), or, with
/// `[proxy] listen`, get a listener of their own, bound now (so `ready` means it accepts),
/// stopped by the same stop signal and drained like the API. A proxy server that fails stops
/// `serve`, like the API's.
async fn mount_proxy(
    app: &App,
    proxy: ProxyState,
    state: AppState,
    stop_tx: &watch::Sender<bool>,
) -> Result<(AppState, Option<tokio::task::JoinHandle<std::io::Result<()>>>)> {
    // A configured pool that lists an account the proxy never picks (a Codex or Gemini CLI
    // login, an unknown provider) is a configuration mistake worth saying at startup.
    match proxy.unservable().await {
        Ok(skipped) => {
            for s in skipped {
                tracing::warn!(pool = %s.pool, account = %s.account, provider = %s.provider, "[pools.{}] lists an account the proxy never picks: {}", s.pool, s.reason);
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot check the pools' accounts against their providers"),
    }
    let metrics = proxy.clone();
    let state = state.with_metrics(Arc::new(move |registry: &mut Registry| metrics.register_metrics(registry)));
    let front = tokenkeeper_proxy::front(proxy);
    let Some(listen) = app.config.proxy.listen else {
        tracing::info!(listen = %app.config.server.listen, "API proxy at /v1/* on the main listener");
        return Ok((state.with_front(front), None));
    };
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| {
        format!("cannot listen on {listen} for the API proxy; change [proxy] listen, or leave it out to serve the proxy on [server] listen")
    })?;
    let limits = app.config.server.clone();
    let mut stop = stop_tx.subscribe();
    let failed = stop_tx.clone();
    let handle = tokio::spawn(async move {
        let result = tokenkeeper_server::serve_front(listener, front, &limits, async move {
            let _ = stop.wait_for(|stop| *stop).await;
        })
        .await;
        if let Err(e) = &result {
            tracing::error!(error = %e, "the API proxy's server failed");
        }
        let _ = failed.send(true);
        result
    });
    Ok((state, Some(handle)))
}

/// Waits for the proxy's own server to drain (at most [`HTTP_DRAIN`]); false if it failed.
async fn drain_proxy(handle: tokio::task::JoinHandle<std::io::Result<()>>) -> bool {
    match tokio::time::timeout(HTTP_DRAIN, handle).await {
        Ok(Ok(Ok(()))) => true,
        Ok(Ok(Err(e))) => {
            eprintln!("error: the API proxy's server failed: {e}");
            false
        }
        Ok(Err(e)) => {
            eprintln!("error: the API proxy's server task failed: {e}");
            false
        }
        Err(_) => {
            tracing::warn!("the API proxy did not drain in time");
            true
        }
    }
}

/// Flushes the usage counted while the servers drained (the daemon flushed when it stopped,
/// but proxied streams and hand-outs that ended after that counted more).
async fn flush_after_drain(app: &App) {
    match app.keeper.flush_usage().await {
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot flush the usage counted during the drain; it is lost"),
    }
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

/// `tokenkeeper_alert_deliveries_total{channel, result}`, a counter per channel and result
/// (`sent`, `failed`), registered into the server's `/metrics` registry. Channel names come
/// from the config (never a URL); the registry escapes them.
fn alert_metrics(alerts: &AlertEngine, registry: &mut Registry) {
    let deliveries = Family::<Vec<(String, String)>, Counter>::default();
    for c in alerts.channel_statuses() {
        for (result, n) in [("sent", c.sent), ("failed", c.failed)] {
            let labels = vec![("channel".to_owned(), c.name.clone()), ("result".to_owned(), result.to_owned())];
            deliveries.get_or_create(&labels).inc_by(n);
        }
    }
    registry.register(
        "tokenkeeper_alert_deliveries",
        "Alert messages delivered or given up on, by channel",
        deliveries,
    );
}
