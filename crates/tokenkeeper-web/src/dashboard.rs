//! The dashboard's model: what each chart shows, computed from the accounts, the event log, the
//! hourly usage, the sinks' health and (when a proxy runs) the pools, at one instant `now`.
//!
//! Everything here is a pure function of its inputs, so the tests pin exact widths and labels
//! with a fixed `now`. The template only draws: every SVG width below is in thousandths of the
//! chart's width (`permille`), and every chart has a sentence next to it that says the same
//! thing in words (colour is never the only signal).
//!
//! - **Time-left bar**: the access token's time left over its lifetime (expiry minus the last
//!   refresh; 8 hours, the provider's usual lifetime, when the last refresh is unknown).
//! - **Refresh-token age**: the refresh token's age over its expected life (provider setting
//!   `refresh_token_life`, 30 days by default); warning from `refresh_token_warn_age`.
//! - **Refresh strip**: the last [`tokenkeeper_keeper::view::HISTORY_WINDOW`] of the event log on a time axis: refreshes
//!   (tall marks), failures (low wide marks), logins and imports (short marks at the top).
//! - **Usage sparkline**: requests and tokens per UTC hour over the last 24 hours.
//! - **Pools**: each member's state (active, cooling down until HH:MM, needs login), share of
//!   the pool's requests in 24 hours, and load.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use tokenkeeper_core::status::{human_duration, Level, Thresholds};
use tokenkeeper_core::store::{EventKind, UsageRecord};
use tokenkeeper_core::{Account, AccountState, Mode};
use tokenkeeper_keeper::view::{AccountHistory, AccountView, History};
use tokenkeeper_proxy::{MemberState, PoolSnapshot};

/// The lifetime the time-left bar assumes when an account's last refresh is unknown (an
/// imported or pasted token): the provider's usual 8 hours.
pub const NOMINAL_LIFETIME: Duration = Duration::hours(8);

/// Hours in the usage sparkline.
pub const SPARK_HOURS: usize = 24;

/// One sink's health as the dashboard needs it, from the sinks of this process or from the
/// daemon's `sinks/health` state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkHealth {
    /// The sink's name.
    pub name: String,
    /// Its account.
    pub account: String,
    /// Its kind (`env_file`, `claude_file`, …).
    pub kind: String,
    /// Whether the last delivery succeeded.
    pub ok: bool,
    /// The last error, without secrets.
    #[serde(default)]
    pub last_error: Option<String>,
    /// When it last wrote.
    #[serde(default)]
    pub last_written_at: Option<DateTime<Utc>>,
    /// Successful writes.
    #[serde(default)]
    pub writes: u64,
    /// Failed attempts.
    #[serde(default)]
    pub failures: u64,
}

/// The dashboard's query string: filters and order, so a reload or a bookmark keeps them.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct DashboardQuery {
    /// A level word (`healthy`, `needs-login`, …) or `attention` (warning and worse).
    pub level: String,
    /// A provider id.
    pub provider: String,
    /// A pool's name.
    pub pool: String,
    /// Part of the name or email, any case.
    pub q: String,
    /// `urgency` (default: worst first, then least time left), `name` or `time-left`.
    pub sort: String,
}

/// What [`build`] draws from.
#[derive(Debug)]
pub struct Inputs<'a> {
    /// Every account.
    pub accounts: &'a [Account],
    /// Each account's assessed view (same order as `accounts`).
    pub views: &'a [AccountView],
    /// Each account's thresholds (same order).
    pub thresholds: &'a [Thresholds],
    /// When the scheduler plans each account's next refresh (same order; `None`: never).
    pub due: &'a [Option<DateTime<Utc>>],
    /// Every sink's health.
    pub sinks: &'a [SinkHealth],
    /// The last day's events and usage.
    pub history: &'a History,
    /// The proxy's pools, when a proxy runs.
    pub pools: Option<&'a [PoolSnapshot]>,
    /// The instant everything is drawn at.
    pub now: DateTime<Utc>,
}

/// The CSS class of a level's colour.
pub fn level_class(level: Level) -> &'static str {
    match level {
        Level::Healthy => "ok",
        Level::Expiring => "info",
        Level::Warning => "warn",
        Level::Critical | Level::NeedsLogin | Level::Expired => "bad",
    }
}

/// A level in words, as the page shows it.
pub fn level_label(level: Level) -> &'static str {
    match level {
        Level::Healthy => "Healthy",
        Level::Expiring => "Refreshing soon",
        Level::Warning => "Warning",
        Level::Critical => "Critical",
        Level::NeedsLogin => "Needs login",
        Level::Expired => "Expired",
    }
}

/// `part / whole` in thousandths, clamped to `0..=1000`.
pub fn permille(part: i64, whole: i64) -> u32 {
    if whole <= 0 {
        return 0;
    }
    let p = (i128::from(part.max(0)) * 1000 + i128::from(whole) / 2) / i128::from(whole);
    u32::try_from(p.clamp(0, 1000)).unwrap_or(1000)
}

fn hhmm(t: DateTime<Utc>) -> String {
    t.format("%H:%M UTC").to_string()
}

/// "in 3h 30m (12:30 UTC)" / "4m ago (08:56 UTC)".
fn relative(now: DateTime<Utc>, t: DateTime<Utc>) -> String {
    if t > now {
        format!("in {} ({})", human_duration(t - now), hhmm(t))
    } else {
        format!("{} ago ({})", human_duration(now - t), hhmm(t))
    }
}

/// Short counts: 950, 12.3k, 4.1M.
pub fn compact(n: u64) -> String {
    match n {
        0..=999 => n.to_string(),
        1_000..=999_999 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// One level's count in the summary.
#[derive(Debug, Clone, Serialize)]
pub struct LevelCount {
    /// The level word (for the filter link).
    pub level: &'static str,
    /// In words.
    pub label: &'static str,
    /// Colour class.
    pub class: &'static str,
    /// How many accounts are at it.
    pub count: usize,
}

/// What fixes an account, in one step.
#[derive(Debug, Clone, Serialize)]
pub struct Action {
    /// The button or link text.
    pub label: String,
    /// A page to open (login wizard, paste box), if the fix is there.
    pub href: Option<String>,
    /// A form to post (refresh now), if that is the fix.
    pub post: Option<String>,
    /// What to do elsewhere, when the page cannot do it.
    pub hint: Option<String>,
}

/// An account that needs a person.
#[derive(Debug, Clone, Serialize)]
pub struct Attention {
    /// The account's name, as in `tokenkeeper status`.
    pub account: String,
    /// Its level in words.
    pub label: &'static str,
    /// Colour class.
    pub class: &'static str,
    /// What is wrong, in words.
    pub problem: String,
    /// What fixes it.
    pub action: Action,
}

/// The top of the page.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Accounts in all.
    pub total: usize,
    /// Per level, every level listed (zero included), best first.
    pub counts: Vec<LevelCount>,
    /// The next refresh the scheduler plans, in words ("main in 3h 30m (12:30 UTC)").
    pub next_refresh: String,
}

/// A horizontal bar: filled share and its sentence.
#[derive(Debug, Clone, Serialize)]
pub struct Bar {
    /// Filled share in thousandths of the width.
    pub permille: u32,
    /// Colour class.
    pub class: &'static str,
    /// The same in words ("5h 00m left of 8h 00m").
    pub label: String,
}

/// One mark on the refresh strip.
#[derive(Debug, Clone, Serialize)]
pub struct Mark {
    /// Position in thousandths of the strip's width (0: 24 hours ago, 1000: now).
    pub x: u32,
    /// `refresh`, `failure`, `login` or `other`: the shape and colour.
    pub kind: &'static str,
    /// When, in words.
    pub when: String,
    /// When, RFC 3339 (for scripts and tests).
    pub at: String,
    /// What happened, in words.
    pub what: String,
}

/// The refresh strip of one account.
#[derive(Debug, Clone, Serialize)]
pub struct Strip {
    /// The marks, oldest first.
    pub marks: Vec<Mark>,
    /// The strip in one sentence.
    pub summary: String,
}

/// One hour of the sparkline.
#[derive(Debug, Clone, Serialize)]
pub struct SparkHour {
    /// Left edge, in tenths of the chart's width units (an hour is 10 wide).
    pub x: u32,
    /// Requests bar height in units of 30 (the chart's height).
    pub requests_h: u32,
    /// Tokens bar height in units of 30.
    pub tokens_h: u32,
    /// The hour in words, with its numbers (shown on hover).
    pub title: String,
}

/// Requests and tokens per hour over the last day.
#[derive(Debug, Clone, Serialize)]
pub struct Spark {
    /// The hours, oldest first, always [`SPARK_HOURS`] of them.
    pub hours: Vec<SparkHour>,
    /// Requests in the window.
    pub requests: u64,
    /// Tokens in the window.
    pub tokens: u64,
    /// The chart in one sentence.
    pub summary: String,
}

/// An account's place in one pool.
#[derive(Debug, Clone, Serialize)]
pub struct Membership {
    /// The pool's name (`default` for keys that name none), as the `pool` filter takes it.
    pub pool: String,
    /// Its state in words ("Active", "Cooling down until 14:30 UTC", "Needs login").
    pub state: String,
    /// `active`, `cooling_down` or `needs_login`.
    pub state_key: &'static str,
    /// Colour class of the state.
    pub class: &'static str,
    /// Per-model cooldowns still running, in words.
    pub family_cooldowns: Vec<String>,
    /// Its share of the pool's requests in 24 hours.
    pub share: Bar,
    /// Requests in 24 hours.
    pub requests_24h: u64,
    /// Tokens (input and output) in 24 hours.
    pub tokens_24h: String,
    /// Requests in progress in this process.
    pub in_flight: u64,
}

/// One account's card.
#[derive(Debug, Clone, Serialize)]
pub struct Card {
    /// The account's name, as in `tokenkeeper status`.
    pub name: String,
    /// The account's email, when the provider said; `None` otherwise.
    pub email: Option<String>,
    /// The account's organization name, when the provider said; `None` otherwise.
    pub organization: Option<String>,
    /// Provider id (`anthropic`, `anthropic-api-key`, `codex`, …).
    pub provider: String,
    /// `own` or `follow`.
    pub mode: String,
    /// Whether Claude Code (or another owner) refreshes it and tokenkeeper follows.
    pub following: bool,
    /// Level word.
    pub level: &'static str,
    /// Level in words.
    pub label: &'static str,
    /// Colour class.
    pub class: &'static str,
    /// What is going on.
    pub message: String,
    /// Access token time left.
    pub time_left: Bar,
    /// Expiry.
    pub expires_at: String,
    /// Refresh token age over its expected life, when known.
    pub refresh_token: Option<Bar>,
    /// Whether it has a refresh token.
    pub refreshable: bool,
    /// When the scheduler refreshes it next.
    pub next_refresh: Option<String>,
    /// When it was last refreshed, relative and in UTC ("4m ago (08:56 UTC)"); `None` if never.
    pub last_refresh: Option<String>,
    /// Why the last refresh failed, without secrets; `None` once a credential update succeeds.
    pub last_error: Option<String>,
    /// The refresh strip.
    pub strip: Strip,
    /// The usage sparkline.
    pub spark: Spark,
    /// Pools it is in.
    pub pools: Vec<Membership>,
    /// Access token fingerprint.
    pub fingerprint: String,
    /// All-time requests.
    pub usage_count: u64,
    /// Last use.
    pub last_used: Option<String>,
    /// The bound file, when bound.
    pub bound_file: Option<String>,
    /// Its sinks.
    pub sinks: Vec<SinkRow>,
}

/// A sink on a card.
#[derive(Debug, Clone, Serialize)]
pub struct SinkRow {
    /// The sink's name, as configured.
    pub name: String,
    /// The sink's kind (`env_file`, `claude_file`, …).
    pub kind: String,
    /// Whether it works.
    pub ok: bool,
    /// Why the last delivery (or its `on_change` command) failed, without secrets; `None` when it
    /// succeeded or none was tried yet.
    pub last_error: Option<String>,
    /// Last write, in words.
    pub last_written: Option<String>,
}

/// A pool side by side.
#[derive(Debug, Clone, Serialize)]
pub struct PoolView {
    /// The pool's name (`default` for keys that name none).
    pub name: String,
    /// Strategy word.
    pub strategy: String,
    /// Its accounts with their state and load.
    pub members: Vec<PoolMember>,
    /// The pool in one sentence.
    pub summary: String,
}

/// One member of a pool view.
#[derive(Debug, Clone, Serialize)]
pub struct PoolMember {
    /// The account's name.
    pub account: String,
    /// State and load.
    pub membership: Membership,
    /// Its usage over the day.
    pub spark: Spark,
}

/// A choice in a filter list.
#[derive(Debug, Clone, Serialize)]
pub struct Choice {
    /// The query value.
    pub value: String,
    /// In words.
    pub label: String,
    /// Whether it is the current one.
    pub selected: bool,
}

/// The filter form, filled with the current query.
#[derive(Debug, Clone, Serialize)]
pub struct Filters {
    /// Level choices.
    pub levels: Vec<Choice>,
    /// Provider choices.
    pub providers: Vec<Choice>,
    /// Pool choices.
    pub pools: Vec<Choice>,
    /// Sort choices.
    pub sorts: Vec<Choice>,
    /// The name search.
    pub q: String,
    /// Whether any filter is set.
    pub active: bool,
}

/// The whole page.
#[derive(Debug, Clone, Serialize)]
pub struct Dashboard {
    /// Counts and the next refresh.
    pub summary: Summary,
    /// Accounts that need a person, worst first.
    pub attention: Vec<Attention>,
    /// The cards that pass the filters, in the chosen order.
    pub cards: Vec<Card>,
    /// Pools, when a proxy runs.
    pub pools: Vec<PoolView>,
    /// Whether a proxy's pools are known.
    pub has_pools: bool,
    /// The filter form.
    pub filters: Filters,
    /// "Showing 3 of 7 accounts", when filtered.
    pub shown: String,
    /// When the page was drawn.
    pub drawn_at: String,
}

fn time_left_bar(account: &Account, view: &AccountView, now: DateTime<Utc>) -> Bar {
    let expires = account.credential.expires_at;
    let lifetime =
        account.last_refreshed_at.map(|t| expires - t).filter(|d| *d > Duration::zero()).unwrap_or(NOMINAL_LIFETIME);
    let left = expires - now;
    let label = if left >= Duration::zero() {
        format!("{} left of {}", human_duration(left), human_duration(lifetime))
    } else {
        format!("expired {} ago", human_duration(-left))
    };
    Bar { permille: permille(left.num_seconds(), lifetime.num_seconds()), class: level_class(view.level), label }
}

fn refresh_token_bar(account: &Account, t: &Thresholds, now: DateTime<Utc>) -> Option<Bar> {
    if !account.credential.is_refreshable() {
        return None;
    }
    let age = now - account.refresh_token_issued_at?;
    let class = if age > t.refresh_token_life {
        "bad"
    } else if age > t.refresh_token_warn_age {
        "warn"
    } else {
        "ok"
    };
    let tail = if age > t.refresh_token_life {
        "past its expected life".to_owned()
    } else {
        format!("about {} left", human_duration(t.refresh_token_life - age))
    };
    Some(Bar {
        permille: permille(age.num_seconds(), t.refresh_token_life.num_seconds()),
        class,
        label: format!("{} old of about {}; {tail}", human_duration(age), human_duration(t.refresh_token_life)),
    })
}

fn mark_kind(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Refreshed | EventKind::Adopted => "refresh",
        EventKind::RefreshFailed => "failure",
        EventKind::LoggedIn | EventKind::Imported => "login",
        _ => "other",
    }
}

fn event_words(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Imported => "imported",
        EventKind::LoggedIn => "logged in",
        EventKind::Refreshed => "refreshed",
        EventKind::Adopted => "took another refresher's token",
        EventKind::RefreshFailed => "refresh failed",
        EventKind::Refused => "refused an older credential",
        EventKind::Repaired => "repaired the bound file",
        EventKind::StateChanged => "state changed",
        EventKind::Removed => "removed",
    }
}

/// The refresh strip over `[since, now]`.
pub fn strip(history: &AccountHistory, since: DateTime<Utc>, now: DateTime<Utc>) -> Strip {
    let window = (now - since).num_seconds();
    let marks: Vec<Mark> = history
        .events
        .iter()
        .map(|e| Mark {
            x: permille((e.at - since).num_seconds(), window),
            kind: mark_kind(e.kind),
            when: relative(now, e.at),
            at: e.at.to_rfc3339(),
            what: if e.detail.is_empty() {
                event_words(e.kind).to_owned()
            } else {
                format!("{}: {}", event_words(e.kind), e.detail)
            },
        })
        .collect();
    let count = |k: &str| marks.iter().filter(|m| m.kind == k).count();
    let (refreshes, failures, logins) = (count("refresh"), count("failure"), count("login"));
    let hours = plural(usize::try_from((now - since).num_hours()).unwrap_or(0), "hour", "hours");
    let mut summary = if marks.is_empty() {
        format!("No refreshes or failures in the last {hours}")
    } else {
        let mut parts = vec![plural(refreshes, "refresh", "refreshes"), plural(failures, "failure", "failures")];
        if logins > 0 {
            parts.push(plural(logins, "login or import", "logins or imports"));
        }
        format!("{} in the last {hours}", parts.join(", "))
    };
    if let Some(last) = marks.iter().rev().find(|m| m.kind == "failure") {
        summary.push_str(&format!("; last failure {}", last.when));
    } else if let Some(last) = marks.iter().rev().find(|m| m.kind == "refresh") {
        summary.push_str(&format!("; last refresh {}", last.when));
    }
    summary.push('.');
    Strip { marks, summary }
}

/// The sparkline of the [`SPARK_HOURS`] UTC hours up to the one `now` is in.
pub fn spark(history: &AccountHistory, now: DateTime<Utc>) -> Spark {
    let last = UsageRecord::hour_of(now);
    let first = last - Duration::hours(SPARK_HOURS as i64 - 1);
    let mut slots = vec![(0u64, 0u64); SPARK_HOURS];
    for h in &history.usage {
        let i = (h.hour - first).num_hours();
        if let Ok(i) = usize::try_from(i) {
            if let Some(slot) = slots.get_mut(i) {
                slot.0 += h.requests;
                slot.1 += h.tokens();
            }
        }
    }
    let max_r = slots.iter().map(|s| s.0).max().unwrap_or(0);
    let max_t = slots.iter().map(|s| s.1).max().unwrap_or(0);
    let height = |v: u64, max: u64| -> u32 {
        if max == 0 || v == 0 {
            return 0;
        }
        // At least one unit, so an hour with any use is visible next to a busy one.
        u32::try_from((v * 30).div_ceil(max)).unwrap_or(30).clamp(1, 30)
    };
    let hours: Vec<SparkHour> = slots
        .iter()
        .enumerate()
        .map(|(i, &(r, t))| {
            let at = first + Duration::hours(i as i64);
            SparkHour {
                x: u32::try_from(i * 10).unwrap_or(0),
                requests_h: height(r, max_r),
                tokens_h: height(t, max_t),
                title: format!("{}: {} requests, {} tokens", at.format("%H:00 UTC"), r, compact(t)),
            }
        })
        .collect();
    let requests: u64 = slots.iter().map(|s| s.0).sum();
    let tokens: u64 = slots.iter().map(|s| s.1).sum();
    let summary = if requests == 0 && tokens == 0 {
        "Not used in the last 24 hours.".to_owned()
    } else {
        let (busiest, &(r, _)) =
            slots.iter().enumerate().max_by_key(|(i, s)| (s.0, std::cmp::Reverse(*i))).unwrap_or((0, &(0, 0)));
        let at = first + Duration::hours(busiest as i64);
        format!(
            "{} requests and {} tokens in the last 24 hours; busiest hour {} ({} requests).",
            requests,
            compact(tokens),
            at.format("%H:00 UTC"),
            r
        )
    };
    Spark { hours, requests, tokens, summary }
}

fn membership(pool: &PoolSnapshot, m: &tokenkeeper_proxy::MemberSnapshot, now: DateTime<Utc>) -> Membership {
    let total: u64 = pool.members.iter().map(|m| m.requests_24h).sum();
    let (state, state_key, class) = match m.state {
        MemberState::Active => ("Active".to_owned(), "active", "ok"),
        MemberState::CoolingDown => (
            match m.cooldown_until {
                Some(t) => format!("Cooling down until {}", hhmm(t)),
                None => "Cooling down".to_owned(),
            },
            "cooling_down",
            "warn",
        ),
        MemberState::NeedsLogin => ("Needs login".to_owned(), "needs_login", "bad"),
    };
    let family_cooldowns = m
        .cooldowns
        .iter()
        .filter(|c| c.until > now)
        .filter_map(|c| c.family.as_ref().map(|f| format!("{f} cooling down until {}", hhmm(c.until))))
        .collect();
    let share = permille(i64::try_from(m.requests_24h).unwrap_or(i64::MAX), i64::try_from(total).unwrap_or(i64::MAX));
    Membership {
        pool: pool.name.clone(),
        state,
        state_key,
        class,
        family_cooldowns,
        share: Bar {
            permille: share,
            class: "info",
            label: format!("{}% of the pool's {} requests in 24 hours", (share + 5) / 10, total),
        },
        requests_24h: m.requests_24h,
        tokens_24h: compact(m.input_tokens_24h + m.output_tokens_24h),
        in_flight: m.in_flight,
    }
}

/// What is wrong with an account that needs a person, and the one action that fixes it, or
/// `None` when nothing needs a person. Follows the order of `tokenkeeper_core::status::assess`.
pub fn attention(
    account: &Account,
    view: &AccountView,
    t: &Thresholds,
    sinks: &[&SinkHealth],
    now: DateTime<Utc>,
) -> Option<Attention> {
    let name = &account.name;
    let seg = crate::templates::path_segment(name.clone());
    let login =
        || Action { label: format!("Log in {name} again"), href: Some("/wizard".into()), post: None, hint: None };
    let refresh = || Action {
        label: format!("Refresh {name} now"),
        href: None,
        post: Some(format!("/accounts/{seg}/refresh")),
        hint: None,
    };
    let paste = |hint: &str| Action {
        label: format!("Paste a fresh credential for {name}"),
        href: Some("/paste".into()),
        post: None,
        hint: Some(hint.to_owned()),
    };
    let rt_age = account.refresh_token_issued_at.map(|i| now - i).filter(|_| account.credential.is_refreshable());
    let failing: Vec<&&SinkHealth> = sinks.iter().filter(|s| !s.ok).collect();
    let (problem, action) = if account.state == AccountState::NeedsLogin {
        ("The provider rejected its refresh token.".to_owned(), login())
    } else if account.credential.is_expired(now) {
        let problem = format!("Its access token expired {} ago.", human_duration(now - account.credential.expires_at));
        let action = if !account.credential.is_refreshable() {
            paste("It has no refresh token, so only a new token helps.")
        } else if account.mode == Mode::Follow {
            paste("It follows Claude Code: run claude on that machine, or paste its new credential here.")
        } else {
            refresh()
        };
        (problem, action)
    } else if rt_age.is_some_and(|a| a > t.refresh_token_life) {
        (
            format!("Its refresh token is {} old, past its expected life.", human_duration(rt_age.unwrap_or_default())),
            login(),
        )
    } else if account.last_error.is_some() {
        (
            format!(
                "Refreshing fails: {}. The token is valid for {}.",
                account.last_error.as_deref().unwrap_or_default(),
                human_duration(account.credential.time_left(now))
            ),
            refresh(),
        )
    } else if let Some(first) = failing.first() {
        let names: Vec<&str> = failing.iter().map(|s| s.name.as_str()).collect();
        (
            format!(
                "Delivery to {} fails{}.",
                names.join(", "),
                first.last_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
            ),
            Action {
                label: format!("Fix the sink {}", first.name),
                href: None,
                post: None,
                hint: Some(format!(
                    "Correct its path, permissions or command in the configuration, then run `tokenkeeper sync --account {name}`."
                )),
            },
        )
    } else if rt_age.is_some_and(|a| a > t.refresh_token_warn_age) {
        let age = rt_age.unwrap_or_default();
        (
            format!(
                "Its refresh token is {} old and may stop working in {}.",
                human_duration(age),
                human_duration(t.refresh_token_life - age)
            ),
            Action { label: format!("Plan a new login for {name}"), ..login() },
        )
    } else if view.level >= Level::Warning {
        (view.message.clone(), refresh())
    } else {
        return None;
    };
    Some(Attention {
        account: name.clone(),
        label: level_label(view.level),
        class: level_class(view.level),
        problem,
        action,
    })
}

fn choice(value: &str, label: &str, current: &str) -> Choice {
    Choice { value: value.to_owned(), label: label.to_owned(), selected: value == current }
}

/// Builds the page from `inputs`, filtered and sorted by `query`.
pub fn build(inputs: &Inputs<'_>, query: &DashboardQuery) -> Dashboard {
    let now = inputs.now;
    let since = inputs.history.since;
    let pools = inputs.pools.unwrap_or_default();

    let counts = Level::ALL
        .iter()
        .map(|&l| LevelCount {
            level: l.as_str(),
            label: level_label(l),
            class: level_class(l),
            count: inputs.views.iter().filter(|v| v.level == l).count(),
        })
        .collect();
    let next = inputs.accounts.iter().zip(inputs.due).filter_map(|(a, d)| d.map(|d| (d, &a.name))).min();
    let next_refresh = match next {
        Some((d, name)) if d <= now => format!("{name} now (it is due)"),
        Some((d, name)) => format!("{name} {}", relative(now, d)),
        None => "none planned: no account here is refreshed by tokenkeeper".to_owned(),
    };

    let mut attention_rows: Vec<(Level, i64, Attention)> = Vec::new();
    let mut cards: Vec<(Level, i64, Card, &Account)> = Vec::new();
    for (i, a) in inputs.accounts.iter().enumerate() {
        let (Some(v), Some(t)) = (inputs.views.get(i), inputs.thresholds.get(i)) else { continue };
        let sinks: Vec<&SinkHealth> = inputs.sinks.iter().filter(|s| s.account == a.name).collect();
        let left = a.credential.time_left(now).num_seconds();
        if let Some(row) = attention(a, v, t, &sinks, now) {
            attention_rows.push((v.level, left, row));
        }
        let history = inputs.history.of(&a.name);
        let memberships: Vec<Membership> = pools
            .iter()
            .flat_map(|p| p.members.iter().filter(|m| m.account == a.name).map(move |m| (p, m)))
            .map(|(p, m)| membership(p, m, now))
            .collect();
        let card = Card {
            name: a.name.clone(),
            email: a.email.clone(),
            organization: a.organization.clone(),
            provider: a.provider.clone(),
            mode: a.mode.to_string(),
            following: a.mode == Mode::Follow,
            level: v.level.as_str(),
            label: level_label(v.level),
            class: level_class(v.level),
            message: v.message.clone(),
            time_left: time_left_bar(a, v, now),
            expires_at: a.credential.expires_at.format("%Y-%m-%d %H:%M UTC").to_string(),
            refresh_token: refresh_token_bar(a, t, now),
            refreshable: a.credential.is_refreshable(),
            next_refresh: inputs.due.get(i).copied().flatten().map(|d| {
                if d <= now {
                    "now (due)".to_owned()
                } else {
                    relative(now, d)
                }
            }),
            last_refresh: a.last_refreshed_at.map(|t| relative(now, t)),
            last_error: a.last_error.clone(),
            strip: strip(&history, since, now),
            spark: spark(&history, now),
            pools: memberships,
            fingerprint: v.token_fingerprint.clone(),
            usage_count: a.usage.requests,
            last_used: a.usage.last_used_at.map(|t| relative(now, t)),
            bound_file: v.bound_file.clone(),
            sinks: sinks
                .iter()
                .map(|s| SinkRow {
                    name: s.name.clone(),
                    kind: s.kind.clone(),
                    ok: s.ok,
                    last_error: s.last_error.clone(),
                    last_written: s.last_written_at.map(|t| relative(now, t)),
                })
                .collect(),
        };
        cards.push((v.level, left, card, a));
    }
    // Worst first; among equals, the one with the least time left.
    attention_rows.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.account.cmp(&b.2.account)));

    let total = cards.len();
    let q = query.q.trim().to_lowercase();
    cards.retain(|(level, _, c, a)| {
        let level_ok = match query.level.as_str() {
            "" => true,
            "attention" => *level >= Level::Warning || c.sinks.iter().any(|s| !s.ok),
            l => level.as_str() == l,
        };
        let provider_ok = query.provider.is_empty() || a.provider == query.provider;
        let pool_ok = query.pool.is_empty() || c.pools.iter().any(|m| m.pool == query.pool);
        let q_ok = q.is_empty()
            || a.name.to_lowercase().contains(&q)
            || a.email.as_deref().is_some_and(|e| e.to_lowercase().contains(&q));
        level_ok && provider_ok && pool_ok && q_ok
    });
    match query.sort.as_str() {
        "name" => cards.sort_by(|a, b| a.2.name.cmp(&b.2.name)),
        "time-left" => cards.sort_by(|a, b| a.1.cmp(&b.1).then(a.2.name.cmp(&b.2.name))),
        _ => cards.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.name.cmp(&b.2.name))),
    }
    let shown = if cards.len() == total {
        String::new()
    } else {
        format!("Showing {} of {}.", cards.len(), plural(total, "account", "accounts"))
    };

    let histories: HashMap<&str, Spark> = pools
        .iter()
        .flat_map(|p| p.members.iter())
        .map(|m| (m.account.as_str(), spark(&inputs.history.of(&m.account), now)))
        .collect();
    let pool_views = pools
        .iter()
        .map(|p| {
            let members: Vec<PoolMember> = p
                .members
                .iter()
                .map(|m| PoolMember {
                    account: m.account.clone(),
                    membership: membership(p, m, now),
                    spark: histories
                        .get(m.account.as_str())
                        .cloned()
                        .unwrap_or_else(|| spark(&AccountHistory::default(), now)),
                })
                .collect();
            let active = members.iter().filter(|m| m.membership.state_key == "active").count();
            let cooling = members.iter().filter(|m| m.membership.state_key == "cooling_down").count();
            let summary = format!(
                "{} of {} active, {} cooling down, {} requests in 24 hours.",
                active,
                plural(members.len(), "account", "accounts"),
                cooling,
                p.members.iter().map(|m| m.requests_24h).sum::<u64>()
            );
            PoolView {
                name: p.name.clone(),
                strategy: serde_json::to_value(p.strategy)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                members,
                summary,
            }
        })
        .collect();

    let mut providers: Vec<&str> = inputs.accounts.iter().map(|a| a.provider.as_str()).collect();
    providers.sort_unstable();
    providers.dedup();
    let mut levels = vec![choice("", "Any level", &query.level), choice("attention", "Needs attention", &query.level)];
    levels.extend(Level::ALL.iter().map(|l| choice(l.as_str(), level_label(*l), &query.level)));
    let filters = Filters {
        levels,
        providers: std::iter::once(choice("", "Any provider", &query.provider))
            .chain(providers.iter().map(|p| choice(p, p, &query.provider)))
            .collect(),
        pools: std::iter::once(choice("", "Any pool", &query.pool))
            .chain(pools.iter().map(|p| choice(&p.name, &p.name, &query.pool)))
            .collect(),
        sorts: vec![
            choice("urgency", "Most urgent first", if query.sort.is_empty() { "urgency" } else { &query.sort }),
            choice("time-left", "Least time left", &query.sort),
            choice("name", "Name", &query.sort),
        ],
        q: query.q.clone(),
        active: !(query.level.is_empty() && query.provider.is_empty() && query.pool.is_empty() && q.is_empty()),
    };

    Dashboard {
        summary: Summary { total, counts, next_refresh },
        attention: attention_rows.into_iter().map(|r| r.2).collect(),
        cards: cards.into_iter().map(|c| c.2).collect(),
        pools: pool_views,
        has_pools: inputs.pools.is_some(),
        filters,
        shown,
        drawn_at: now.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokenkeeper_keeper::view::{HistoryEvent, HISTORY_WINDOW};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn permille_rounds_and_clamps() {
        assert_eq!(permille(5 * 3600, 8 * 3600), 625);
        assert_eq!(permille(1, 3), 333);
        assert_eq!(permille(2, 3), 667);
        assert_eq!(permille(-5, 10), 0);
        assert_eq!(permille(20, 10), 1000);
        assert_eq!(permille(1, 0), 0);
    }

    #[test]
    fn the_strip_places_events_on_the_day_and_says_it_in_words() {
        let now = at("2026-01-02T12:00:00Z");
        let since = now - HISTORY_WINDOW;
        let ev = |kind, t: &str, detail: &str| HistoryEvent { kind, at: at(t), detail: detail.into() };
        let h = AccountHistory {
            events: vec![
                ev(EventKind::Refreshed, "2026-01-01T18:00:00Z", ""),
                ev(EventKind::RefreshFailed, "2026-01-02T06:00:00Z", "provider answered 503"),
                ev(EventKind::Refreshed, "2026-01-02T09:00:00Z", ""),
            ],
            usage: vec![],
        };
        let s = strip(&h, since, now);
        let xs: Vec<_> = s.marks.iter().map(|m| (m.x, m.kind)).collect();
        assert_eq!(xs, [(250, "refresh"), (750, "failure"), (875, "refresh")]);
        assert_eq!(s.marks[1].what, "refresh failed: provider answered 503");
        assert_eq!(s.marks[1].when, "6h 00m ago (06:00 UTC)");
        assert_eq!(s.summary, "2 refreshes, 1 failure in the last 24 hours; last failure 6h 00m ago (06:00 UTC).");
        let empty = strip(&AccountHistory::default(), since, now);
        assert!(empty.marks.is_empty());
        assert_eq!(empty.summary, "No refreshes or failures in the last 24 hours.");
    }

    #[test]
    fn the_sparkline_has_a_bar_per_hour_scaled_to_the_busiest() {
        let now = at("2026-01-02T12:20:00Z");
        let hour = |t: &str, requests, output_tokens| tokenkeeper_keeper::view::HourUsage {
            hour: at(t),
            requests,
            output_tokens,
            ..Default::default()
        };
        let h = AccountHistory {
            events: vec![],
            usage: vec![
                hour("2026-01-01T12:00:00Z", 5, 0), // 24 hours before the current hour: outside
                hour("2026-01-01T13:00:00Z", 10, 1000),
                hour("2026-01-02T12:00:00Z", 40, 500),
            ],
        };
        let s = spark(&h, now);
        assert_eq!(s.hours.len(), SPARK_HOURS);
        assert_eq!((s.hours[0].x, s.hours[0].requests_h, s.hours[0].tokens_h), (0, 8, 30));
        assert_eq!((s.hours[23].x, s.hours[23].requests_h, s.hours[23].tokens_h), (230, 30, 15));
        assert_eq!(s.hours[1].requests_h, 0);
        assert_eq!(s.hours[23].title, "12:00 UTC: 40 requests, 500 tokens");
        assert_eq!((s.requests, s.tokens), (50, 1500));
        assert_eq!(
            s.summary,
            "50 requests and 1.5k tokens in the last 24 hours; busiest hour 12:00 UTC (40 requests)."
        );
        assert_eq!(spark(&AccountHistory::default(), now).summary, "Not used in the last 24 hours.");
    }
}
