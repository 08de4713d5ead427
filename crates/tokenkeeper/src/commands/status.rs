//! `tokenkeeper status`.

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokenkeeper_core::pool::{cooldown_until, cooldowns_by_account, Cooldown, PoolState, COOLDOWN_PREFIX};

use crate::app::App;
use crate::cli::StatusArgs;
use crate::exit;
use crate::output::{account_status, status_table};

/// One account of `status --json`: its status, and the API proxy's view of it with the same
/// field names as `pool --json` members (`cooldown_until` and each cooldown's `until` in RFC 3339).
#[derive(Serialize)]
struct JsonRow<'a> {
    #[serde(flatten)]
    status: &'a crate::output::AccountStatus,
    /// `active`, `cooling_down` (every model) or `needs_login`.
    pool_state: PoolState,
    /// When the account-wide cooldown ends, if one runs.
    cooldown_until: Option<DateTime<Utc>>,
    /// Every cooldown still running (per model family included), earliest first.
    cooldowns: Vec<Cooldown>,
}

pub async fn run(app: &App, args: StatusArgs) -> Result<i32> {
    let now = app.keeper.clock().now();
    let accounts = match &args.account {
        Some(n) => vec![app.keeper.resolve_account(Some(n)).await?],
        None => app.keeper.store().list_accounts().await?,
    };
    let recorded = crate::output::recorded_sinks(app.store.as_ref()).await;
    let rows: Vec<_> = accounts.iter().map(|a| account_status(&app.config, &recorded, a, now)).collect();
    if args.json {
        let mut cooldowns = match app.store.list_state(COOLDOWN_PREFIX).await {
            Ok(stored) => cooldowns_by_account(stored),
            Err(e) => return Err(anyhow::Error::new(e).context("cannot read the proxy's cooldowns from the store")),
        };
        let rows: Vec<JsonRow<'_>> = rows
            .iter()
            .zip(&accounts)
            .map(|(status, account)| {
                let mut running = cooldowns.remove(&account.name).unwrap_or_default();
                running.retain(|c| c.until > now);
                running.sort_by_key(|c| c.until);
                JsonRow {
                    status,
                    pool_state: PoolState::of(account, &running, now),
                    cooldown_until: cooldown_until(&running, now),
                    cooldowns: running,
                }
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if rows.is_empty() {
        println!("No accounts yet: run `tokenkeeper login` or `tokenkeeper import`.");
    } else {
        print!("{}", status_table(&rows, now));
        print_cooldowns(app, args.account.as_deref(), now).await;
        print_sinks(app, args.account.as_deref()).await;
        print_alert_channels(app).await;
        print_leader(app).await;
    }
    Ok(exit::OK)
}

/// The API proxy's cooldowns still running (stored by any replica; each ends by itself at its
/// time): a rate-limited account gets no proxied requests until then.
async fn print_cooldowns(app: &App, only: Option<&str>, now: chrono::DateTime<chrono::Utc>) {
    let Ok(stored) = app.store.list_state(COOLDOWN_PREFIX).await else { return };
    let mut by_account: Vec<_> = cooldowns_by_account(stored).into_iter().collect();
    by_account.sort_by(|a, b| a.0.cmp(&b.0));
    for (account, cooldowns) in by_account {
        if only.is_some_and(|o| o != account) {
            continue;
        }
        for c in cooldowns.iter().filter(|c| c.until > now) {
            let models = c.family.as_deref().map_or_else(|| "all models".to_owned(), |f| format!("{f} models"));
            let left = tokenkeeper_core::status::human_duration(c.until - now);
            println!(
                "proxy {account}: cooling down ({models}) until {} (in {left}): {}",
                c.until.format("%Y-%m-%d %H:%M:%S UTC"),
                c.reason
            );
        }
    }
}

/// Each sink's health as the running daemon last recorded it.
async fn print_sinks(app: &App, only: Option<&str>) {
    for (name, account, ok, error) in crate::output::recorded_sinks(app.store.as_ref()).await {
        if only.is_some_and(|o| o != account) {
            continue;
        }
        match (ok, error) {
            (false, Some(e)) => println!("sink {name} ({account}): FAILING: {e}"),
            (false, None) => println!("sink {name} ({account}): FAILING"),
            (true, _) => println!("sink {name} ({account}): ok"),
        }
    }
}

/// The alert channels' health as the running daemon last recorded it (nothing when no daemon
/// with `[[alerts]]` has run): a failing channel is itself something to fix.
async fn print_alert_channels(app: &App) {
    let Ok(Some(value)) = app.store.get_state(tokenkeeper_daemon::ALERT_CHANNELS_KEY).await else { return };
    let Ok(channels) = serde_json::from_value::<Vec<serde_json::Value>>(value) else { return };
    for c in channels {
        let name = c["name"].as_str().unwrap_or("?");
        let (sent, failed) = (c["sent"].as_u64().unwrap_or(0), c["failed"].as_u64().unwrap_or(0));
        match (c["ok"].as_bool(), c["last_error"].as_str()) {
            (Some(false), Some(e)) => println!("alert channel {name}: FAILING ({e}); {sent} sent, {failed} failed"),
            _ => println!("alert channel {name}: ok; {sent} sent, {failed} failed"),
        }
    }
}

/// Which `serve` leads the installation (runs the scheduler, alerts, leader-only sinks), as the
/// last one to take over recorded it; nothing before any `serve` has run.
async fn print_leader(app: &App) {
    let Ok(Some(value)) = app.store.get_state(tokenkeeper_core::backend::LEADER_KEY).await else { return };
    let Ok(record) = serde_json::from_value::<tokenkeeper_daemon::leader::LeaderRecord>(value) else { return };
    let since = record.since.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M:%S");
    println!("leader: {} (since {since})", record.replica);
}
