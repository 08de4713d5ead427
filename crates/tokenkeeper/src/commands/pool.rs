//! `tokenkeeper pool`: every pool of the API proxy with its accounts, their state (active,
//! cooling down until when, needs login) and their usage in the last 24 hours, as the store
//! holds them (what a running `serve` flushed; cooldowns of every replica).

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};

use tokenkeeper_core::status::human_duration;
use tokenkeeper_proxy::{MemberState, ProxyState};

use crate::app::App;
use crate::cli::PoolArgs;
use crate::exit;

pub async fn run(app: &App, args: PoolArgs) -> Result<i32> {
    let proxy = ProxyState::new(app.keeper.clone(), &app.config).context("cannot read [proxy] and [pools]")?;
    let mut pools = proxy.pool_snapshot().await.context("cannot read the pools")?;
    if let Some(only) = &args.pool {
        pools.retain(|p| &p.name == only);
        if pools.is_empty() {
            bail!(
                "no pool `{only}`: configure it as [pools.{only}], or see `tokenkeeper pool` for the pools there are"
            );
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&pools)?);
        return Ok(exit::OK);
    }
    let now = app.keeper.clock().now();
    for (i, pool) in pools.iter().enumerate() {
        if i > 0 {
            println!();
        }
        let strategy = serde_json::to_value(pool.strategy).ok().and_then(|v| v.as_str().map(str::to_owned));
        println!("pool {} ({})", pool.name, strategy.unwrap_or_default());
        for s in &pool.skipped {
            println!("  {} ({}): never picked: {}", s.account, s.provider, s.reason);
        }
        if pool.members.is_empty() {
            println!("  no accounts yet: `tokenkeeper login --account NAME`");
            continue;
        }
        let header = ["ACCOUNT", "STATE", "UNTIL", "REQ 24H", "ERR 24H", "TOKENS 24H (IN/OUT)", "LAST USED"];
        let rows: Vec<[String; 7]> = pool
            .members
            .iter()
            .map(|m| {
                [
                    m.account.clone(),
                    m.state.as_str().replace('_', " "),
                    until(m.cooldown_until, now),
                    m.requests_24h.to_string(),
                    m.errors_24h.to_string(),
                    format!("{}/{}", m.input_tokens_24h, m.output_tokens_24h),
                    ago(m.last_used, now),
                ]
            })
            .collect();
        print!("{}", table(&header, &rows));
        for m in &pool.members {
            for c in m.cooldowns.iter().filter(|c| c.family.is_some()) {
                let family = c.family.as_deref().unwrap_or_default();
                println!("  {}: {family} models cooling down {}", m.account, until(Some(c.until), now));
            }
            if m.state == MemberState::NeedsLogin {
                println!("  {}: needs a new login: `tokenkeeper login --account {}`", m.account, m.account);
            }
        }
    }
    Ok(exit::OK)
}

fn until(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    match t {
        Some(t) if t > now => format!("{} (in {})", t.format("%H:%M:%S UTC"), human_duration(t - now)),
        _ => "-".into(),
    }
}

fn ago(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    t.map_or_else(|| "never".into(), |t| format!("{} ago", human_duration(now - t)))
}

fn table(header: &[&str; 7], rows: &[[String; 7]]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::from(" ");
        for (c, w) in cells.iter().zip(&widths) {
            s.push_str(&format!(" {c:<w$}"));
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}
