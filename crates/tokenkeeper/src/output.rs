//! How accounts are shown in a terminal. The data comes from `tokenkeeper_keeper::view`, shared
//! with the HTTP API and the web page; this module only lays it out.

use chrono::{DateTime, Utc};

use tokenkeeper_core::status::human_duration;
use tokenkeeper_core::{Account, Config};
pub use tokenkeeper_keeper::view::AccountView as AccountStatus;

/// A sink's health as the daemon recorded it: (sink, account, ok, last error).
pub type RecordedSink = (String, String, bool, Option<String>);

/// The sinks' health as the running daemon last recorded it in the store. Empty when no
/// daemon with sinks has run.
pub async fn recorded_sinks(store: &dyn tokenkeeper_core::Store) -> Vec<RecordedSink> {
    let Ok(Some(value)) = store.get_state(tokenkeeper_daemon::SINK_HEALTH_KEY).await else { return Vec::new() };
    let Ok(list) = serde_json::from_value::<Vec<serde_json::Value>>(value) else { return Vec::new() };
    list.iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or("?").to_owned(),
                s["account"].as_str().unwrap_or("?").to_owned(),
                s["ok"].as_bool().unwrap_or(true),
                s["last_error"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// The view of one account, as the CLI shows it, with the failing sinks the daemon recorded.
pub fn account_status(
    config: &Config,
    recorded: &[RecordedSink],
    account: &Account,
    now: DateTime<Utc>,
) -> AccountStatus {
    let failing =
        recorded.iter().filter(|(_, a, ok, _)| a == &account.name && !ok).map(|(name, ..)| name.clone()).collect();
    tokenkeeper_keeper::view::account_view(config, account, now, failing)
}

fn ago(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    match t {
        Some(t) => format!("{} ago", human_duration(now - t)),
        None => "never".into(),
    }
}

/// `tokenkeeper status` as text: a header, then per account one aligned row (name, mode,
/// status, expires in, refresh-token age, last refresh, provider) followed by its message and
/// any last error, indented.
pub fn status_table(rows: &[AccountStatus], now: DateTime<Utc>) -> String {
    let mut out = String::new();
    let header = ["ACCOUNT", "MODE", "STATUS", "EXPIRES IN", "RT AGE", "LAST REFRESH", "PROVIDER"];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.mode.clone(),
                r.status.clone(),
                if r.expires_in_seconds > 0 { r.expires_in.clone() } else { "expired".into() },
                match r.refresh_token_age_seconds {
                    Some(s) => human_duration(chrono::Duration::seconds(s)),
                    None if !r.refreshable => "no refresh".into(),
                    None => "unknown".into(),
                },
                ago(r.last_refreshed_at, now),
                r.provider.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cols: &[String]| {
        cols.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_owned()
    };
    out.push_str(&line(&header.map(str::to_owned)));
    out.push('\n');
    for (row, r) in cells.iter().zip(rows) {
        out.push_str(&line(row));
        out.push('\n');
        out.push_str(&format!("  {}\n", r.message));
        if let Some(e) = &r.last_error {
            out.push_str(&format!("  last error: {e}\n"));
        }
    }
    out
}
