//! The next-deadline scheduler: each `own` account is due at `expires_at − lead − jitter`, or
//! later while it backs off after a failure. [`Scheduler::tick`] refreshes every due account;
//! the daemon sleeps until [`Scheduler::next_deadline`] between ticks.
//!
//! Jitter is derived from the account name and its expiry, so it is stable across restarts and
//! spreads a fleet of accounts issued at the same moment; it only ever makes a refresh earlier.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

use tokenkeeper_core::{Account, AccountState, Mode};

use crate::error::KeeperError;
use crate::keeper::{chrono_duration, Keeper, RefreshPolicy, RefreshResult};

#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    not_before: DateTime<Utc>,
}

/// Schedules refreshes of every `own` account.
#[derive(Debug)]
pub struct Scheduler {
    keeper: Arc<Keeper>,
    backoff: HashMap<String, Backoff>,
}

/// The outcome of one refresh attempted by a tick.
pub type TickOutcome = (String, Result<RefreshResult, KeeperError>);

impl Scheduler {
    /// A scheduler over the keeper's accounts.
    pub fn new(keeper: Arc<Keeper>) -> Self {
        Self { keeper, backoff: HashMap::new() }
    }

    /// This account's jitter: a stable fraction of the configured jitter.
    pub fn jitter_for(&self, account: &Account) -> Duration {
        let max = self.keeper.config().keeper.jitter;
        if max.is_zero() {
            return Duration::ZERO;
        }
        let mut h = DefaultHasher::new();
        account.name.hash(&mut h);
        account.credential.expires_at.timestamp_millis().hash(&mut h);
        let fraction = (h.finish() % 10_000) as f64 / 10_000.0;
        max.mul_f64(fraction)
    }

    /// The lead this account is refreshed at (lead plus its jitter).
    pub fn lead_for(&self, account: &Account) -> Duration {
        self.keeper.lead() + self.jitter_for(account)
    }

    /// When the account is next due, or `None` if the keeper never refreshes it.
    pub fn due_at(&self, account: &Account) -> Option<DateTime<Utc>> {
        if account.mode != Mode::Own
            || account.state == AccountState::NeedsLogin
            || !account.credential.is_refreshable()
        {
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
        let accounts = self.keeper.store().list_accounts().await?;
        Ok(accounts.iter().filter_map(|a| self.due_at(a)).min())
    }

    /// Refreshes every due account (concurrently) and updates backoff.
    pub async fn tick(&mut self) -> Result<Vec<TickOutcome>, KeeperError> {
        let now = self.keeper.clock().now();
        let accounts = self.keeper.store().list_accounts().await?;
        self.backoff.retain(|name, _| accounts.iter().any(|a| &a.name == name));
        let due: Vec<(String, Duration)> = accounts
            .iter()
            .filter(|a| self.due_at(a).is_some_and(|t| t <= now))
            .map(|a| (a.name.clone(), self.lead_for(a)))
            .collect();
        let keeper = &self.keeper;
        let results = futures::future::join_all(due.into_iter().map(|(name, lead)| async move {
            let r = keeper.refresh(&name, RefreshPolicy::IfWithin(lead)).await;
            (name, r)
        }))
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
