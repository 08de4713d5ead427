//! The next-deadline scheduler: each `own` account is due at `expires_at − lead − jitter`, or
//! later while it backs off after a failure. [`Scheduler::tick`] refreshes every due account;
//! the daemon sleeps until [`Scheduler::next_deadline`] between ticks.
//!
//! Jitter is derived from the account name and its expiry (SHA-256, so it is the same on
//! every build and across restarts) and spreads a fleet of accounts issued at the same moment;
//! it only ever makes a refresh earlier.
//!
//! **The lead/jitter rule.** A token's lifetime is its expiry minus its last refresh (unknown
//! for a token that was imported and never refreshed here). If the configured lead is not shorter
//! than the lifetime, the account is refreshed at half its lifetime instead (logged once per
//! account). The jitter is at most the configured jitter, at most half the effective lead and
//! at most half of what is left of the lifetime before the lead, so a freshly refreshed token
//! is never due at once: there is no lifetime at which lead and jitter add up to a storm.
//!
//! **Bounded concurrency.** A tick refreshes at most `[keeper] max_concurrent_refreshes`
//! accounts at once and takes at most four times that many due accounts per tick, so with
//! thousands due together the daemon stays responsive and the provider sees a steady rate.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use rand::Rng;
use sha2::{Digest, Sha256};

use tokenkeeper_core::{Account, AccountState, Mode};

use crate::error::KeeperError;
use crate::keeper::{chrono_duration, Keeper, RefreshPolicy, RefreshResult};

#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    not_before: DateTime<Utc>,
}

/// The lifetime of the account's current token, when it can be told: its expiry minus its last
/// refresh (ours or one we adopted). An imported or pasted token's issue time is unknown (it
/// may be an 8-hour token with 10 minutes left), so `None`: its lead applies as configured.
pub fn token_lifetime(account: &Account) -> Option<Duration> {
    let issued = account.last_refreshed_at?;
    (account.credential.expires_at - issued).to_std().ok().filter(|d| !d.is_zero())
}

/// The lead `account` is refreshed at, before jitter: `lead`, or half the token's lifetime when
/// `lead` is not shorter than it. Every "is it due?" decision uses this (the scheduler, leases,
/// [`Keeper::refresh`] with [`RefreshPolicy::IfWithin`]), so no caller can refresh a token
/// that was just refreshed because the lead covers its whole lifetime.
pub fn effective_lead(lead: Duration, account: &Account) -> Duration {
    match lead_not_shorter_than_lifetime(lead, account) {
        Some(life) => life / 2,
        None => lead,
    }
}

/// `Some(lifetime)` when `lead` is not shorter than the lifetime of `account`'s token: the
/// configuration that the keeper works around (at half the lifetime, logged once) and that
/// `doctor` and `check` flag.
pub fn lead_not_shorter_than_lifetime(lead: Duration, account: &Account) -> Option<Duration> {
    token_lifetime(account).filter(|life| lead >= *life)
}

/// Schedules refreshes of every `own` account.
#[derive(Debug)]
pub struct Scheduler {
    keeper: Arc<Keeper>,
    backoff: HashMap<String, Backoff>,
    warned_short_life: HashSet<String>,
}

/// The outcome of one refresh attempted by a tick.
pub type TickOutcome = (String, Result<RefreshResult, KeeperError>);

impl Scheduler {
    /// A scheduler over the keeper's accounts.
    pub fn new(keeper: Arc<Keeper>) -> Self {
        Self { keeper, backoff: HashMap::new(), warned_short_life: HashSet::new() }
    }

    /// The lead this account is refreshed at, before jitter: the configured lead, or half the
    /// token's lifetime when the lead is not shorter than it (see the module docs).
    pub fn effective_lead(&self, account: &Account) -> Duration {
        effective_lead(self.keeper.lead(), account)
    }

    /// This account's jitter: a stable fraction of its jitter bound (see the module docs).
    pub fn jitter_for(&self, account: &Account) -> Duration {
        let lead = self.effective_lead(account);
        let mut max = self.keeper.config().keeper.jitter.min(lead / 2);
        if let Some(life) = token_lifetime(account) {
            max = max.min(life.saturating_sub(lead) / 2);
        }
        if max.is_zero() {
            return Duration::ZERO;
        }
        let mut h = Sha256::new();
        h.update(account.name.as_bytes());
        h.update(account.credential.expires_at.timestamp_millis().to_le_bytes());
        let digest = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        let fraction = (u64::from_le_bytes(first) % 10_000) as f64 / 10_000.0;
        max.mul_f64(fraction)
    }

    /// The lead this account is refreshed at (effective lead plus its jitter).
    pub fn lead_for(&self, account: &Account) -> Duration {
        self.effective_lead(account) + self.jitter_for(account)
    }

    fn warn_short_life(&mut self, account: &Account) {
        let lead = self.keeper.lead();
        if let Some(life) = lead_not_shorter_than_lifetime(lead, account) {
            if self.warned_short_life.insert(account.name.clone()) {
                tracing::warn!(account = %account.name, lead = %humantime::format_duration(lead),
                    lifetime = %humantime::format_duration(Duration::from_secs(life.as_secs())),
                    "[keeper] lead is not shorter than this token's lifetime; refreshing at half its lifetime instead");
            }
        }
    }

    /// When the account is next due, or `None` if the keeper never refreshes it.
    pub fn due_at(&self, account: &Account) -> Option<DateTime<Utc>> {
        if account.mode != Mode::Own || account.state == AccountState::NeedsLogin || !self.keeper.refreshes(account) {
            return None;
        }
        let base = account.credential.expires_at - chrono_duration(self.lead_for(account));
        Some(match self.backoff.get(&account.name) {
            Some(b) if b.not_before > base => b.not_before,
            _ => base,
        })
    }

    /// The earliest due time over all accounts.
    pub async fn next_deadline(&self) -> Result<Option<DateTime<Utc>>, KeeperError> {
        let accounts = self.keeper.accounts().await?;
        Ok(accounts.iter().filter_map(|a| self.due_at(a)).min())
    }

    /// Refreshes every due account (concurrently) and updates backoff.
    pub async fn tick(&mut self) -> Result<Vec<TickOutcome>, KeeperError> {
        let now = self.keeper.clock().now();
        let accounts = self.keeper.accounts().await?;
        let names: HashSet<&str> = accounts.iter().map(|a| a.name.as_str()).collect();
        self.backoff.retain(|name, _| names.contains(name.as_str()));
        let concurrency = self.keeper.config().keeper.max_concurrent_refreshes.max(1);
        let mut due: Vec<(DateTime<Utc>, String, Duration)> = accounts
            .iter()
            .filter_map(|a| self.due_at(a).filter(|t| *t <= now).map(|t| (t, a.name.clone(), self.lead_for(a))))
            .collect();
        // Most overdue first; the rest wait for the next tick, which comes at once.
        due.sort();
        due.truncate(concurrency * 4);
        for a in accounts.iter().filter(|a| due.iter().any(|(_, n, _)| n == &a.name)) {
            self.warn_short_life(a);
        }
        let keeper = &self.keeper;
        let results: Vec<TickOutcome> = futures::stream::iter(due.into_iter().map(|(_, name, lead)| async move {
            let r = keeper.refresh(&name, RefreshPolicy::IfWithin(lead)).await;
            (name, r)
        }))
        .buffer_unordered(concurrency)
        .collect()
        .await;
        for (name, r) in &results {
            match r {
                Ok(_) => {
                    self.backoff.remove(name);
                }
                Err(
                    KeeperError::NeedsLogin { .. }
                    | KeeperError::NotRefreshable { .. }
                    | KeeperError::FollowMode { .. },
                ) => {
                    // The account is no longer due: nothing to back off from.
                    self.backoff.remove(name);
                }
                Err(e) => {
                    // Everything else (provider, lock, store, I/O) backs off, so an error that
                    // keeps recurring can never make the daemon spin.
                    let failures = self.backoff.get(name).map_or(0, |b| b.failures) + 1;
                    let mut delay = self.backoff_delay(failures);
                    if let KeeperError::TryLater { retry_after: Some(ra), .. } = e {
                        delay = delay.max(*ra);
                    }
                    self.backoff.insert(name.clone(), Backoff { failures, not_before: now + chrono_duration(delay) });
                }
            }
        }
        Ok(results)
    }

    /// Exponential backoff with ±10 % jitter, capped.
    fn backoff_delay(&self, failures: u32) -> Duration {
        let k = &self.keeper.config().keeper;
        let exp = k.backoff_min.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
        let capped = exp.min(k.backoff_max);
        let spread = rand::thread_rng().gen_range(0.9..1.1);
        capped.mul_f64(spread).min(k.backoff_max)
    }

    /// How many consecutive failures an account has had.
    pub fn failures(&self, account: &str) -> u32 {
        self.backoff.get(account).map_or(0, |b| b.failures)
    }
}
