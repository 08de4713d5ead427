//! The one hand-out path: [`Keeper::lease`]. Every token that leaves tokenkeeper (the API's
//! `/api/token`, `tokenkeeper token`, `exec`, the proxy) comes from here.
//!
//! - **From memory.** While the keeper follows the change feed ([`Keeper::follow_changes`],
//!   which `serve` does) the decrypted accounts live in `LeaseCache`; a hand-out is a map
//!   lookup and an `Arc` clone. Without the feed (one-shot CLI commands) each lease reads the
//!   store once: another process may have refreshed since, and nobody would tell us.
//! - **Refreshed only when needed.** A token inside the lead time (or whose version a caller
//!   reported rejected) goes through the locked refresh path, [`Keeper::refresh`]. When that
//!   fails but the token is still valid, it is handed out with a warning, and further leases
//!   serve it without retrying for `backoff_min` (the *gate*), so a failing provider never sees
//!   one refresh attempt per API request.
//! - **Never a rejected token.** [`Keeper::lease_after_rejection`] records the rejected
//!   version; no lease hands it out again, whatever happens to the refresh.
//! - **Usage in memory.** Every lease counts one request in [`UsageMeter`]; the daemon flushes
//!   it in batches ([`Keeper::flush_usage`]), by a store write that produces no change, so a
//!   flush never wakes sink delivery or alerts.
//!
//! Coherence: the keeper's own writes update the cache as they commit; other processes'
//! writes arrive through the feed, which reloads just the account that changed. A lease may
//! hand out the previous token for the milliseconds between another process's commit and the
//! feed's delivery; that token is still valid (a refresh does not revoke the old access token).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;

use tokenkeeper_core::store::UsageRecord;
use tokenkeeper_core::{Account, ChangeKind, FeedItem, Secret};

use crate::error::KeeperError;
use crate::keeper::{chrono_duration, Keeper, KeeperEvent, RefreshPolicy};
use crate::schedule::effective_lead;

/// What a caller asks for; every field is optional.
#[derive(Debug, Clone, Copy, Default)]
pub struct LeaseRequest<'a> {
    /// The account; `None` picks the only one (an error when there are several).
    pub account: Option<&'a str>,
    /// The API key the request came with, for the usage bucket.
    pub key_id: Option<&'a str>,
    /// The model a proxied request is for, for the usage bucket.
    pub model: Option<&'a str>,
}

impl<'a> LeaseRequest<'a> {
    /// A request for `account` (or the only account), counted without key or model.
    pub fn account(account: Option<&'a str>) -> Self {
        Self { account, ..Self::default() }
    }
}

/// A token handed out, with the account it belongs to. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Lease {
    account: Arc<Account>,
    warning: Option<Arc<str>>,
}

impl Lease {
    /// The account as it was when leased (name, provider, credential, state).
    pub fn account(&self) -> &Account {
        &self.account
    }

    /// The access token.
    pub fn token(&self) -> &Secret {
        &self.account.credential.access_token
    }

    /// The credential version the token belongs to (what a 401 report names).
    pub fn version(&self) -> i64 {
        self.account.version
    }

    /// When the token expires.
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.account.credential.expires_at
    }

    /// Set when a refresh failed but the token is still valid: the failure, in words.
    pub fn warning(&self) -> Option<&str> {
        self.warning.as_deref()
    }
}

/// A lead-time refresh that failed while the token stays valid: until `until`, leases hand
/// the token out with `warning` instead of trying again.
#[derive(Debug, Clone)]
struct Gate {
    until: DateTime<Utc>,
    warning: Arc<str>,
}

/// The decrypted accounts of this process, and what it knows about their versions.
#[derive(Debug, Default)]
pub(crate) struct LeaseCache {
    /// Whether the change feed is followed, so entries are kept current.
    following: AtomicBool,
    /// Whether `entries` holds every account (loaded when following started).
    complete: AtomicBool,
    /// Bumped when API keys may have changed (for the server's key cache).
    keys_generation: AtomicU64,
    entries: RwLock<HashMap<String, Arc<Account>>>,
    /// The highest credential version this process committed or loaded, per account: the
    /// feed's echo of such a version is not news.
    known: Mutex<HashMap<String, i64>>,
    /// Versions a caller reported rejected (401), per account: never handed out again.
    rejected: Mutex<HashMap<String, i64>>,
    gates: Mutex<HashMap<String, Gate>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data behind: keep using it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LeaseCache {
    fn get(&self, name: &str) -> Option<Arc<Account>> {
        if !self.following.load(Ordering::Acquire) {
            return None;
        }
        self.entries.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    /// Keeps `account` unless a newer credential version is cached already.
    fn insert(&self, account: Arc<Account>) {
        self.note_version(&account.name, account.version);
        if !self.following.load(Ordering::Acquire) {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        match entries.get(&account.name) {
            Some(old) if old.version > account.version => {}
            _ => {
                entries.insert(account.name.clone(), account);
            }
        }
    }

    fn note_version(&self, name: &str, version: i64) {
        let mut known = lock(&self.known);
        let v = known.entry(name.to_owned()).or_default();
        *v = (*v).max(version);
    }

    /// A write of this process committed `account`.
    pub(crate) fn wrote(&self, account: &Account) {
        self.insert(Arc::new(account.clone()));
    }

    /// An account is gone.
    pub(crate) fn removed(&self, name: &str) {
        self.entries.write().unwrap_or_else(|p| p.into_inner()).remove(name);
        lock(&self.known).remove(name);
        lock(&self.rejected).remove(name);
        lock(&self.gates).remove(name);
    }

    fn is_known(&self, name: &str, version: i64) -> bool {
        lock(&self.known).get(name).is_some_and(|v| *v >= version)
    }

    fn is_rejected(&self, account: &Account) -> bool {
        lock(&self.rejected).get(&account.name).is_some_and(|v| *v >= account.version)
    }

    fn reject(&self, name: &str, version: i64) {
        let mut rejected = lock(&self.rejected);
        let v = rejected.entry(name.to_owned()).or_default();
        *v = (*v).max(version);
        lock(&self.gates).remove(name);
    }

    fn gate(&self, name: &str, now: DateTime<Utc>) -> Option<Arc<str>> {
        let mut gates = lock(&self.gates);
        match gates.get(name) {
            Some(g) if g.until > now => Some(g.warning.clone()),
            Some(_) => {
                gates.remove(name);
                None
            }
            None => None,
        }
    }

    fn close_gate(&self, name: &str, until: DateTime<Utc>, warning: Arc<str>) {
        lock(&self.gates).insert(name.to_owned(), Gate { until, warning });
    }

    fn snapshot(&self) -> Option<Vec<Arc<Account>>> {
        if !(self.following.load(Ordering::Acquire) && self.complete.load(Ordering::Acquire)) {
            return None;
        }
        let mut all: Vec<_> = self.entries.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Some(all)
    }

    fn reset(&self, accounts: Vec<Account>) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        entries.clear();
        for a in accounts {
            self.note_version(&a.name, a.version);
            entries.insert(a.name.clone(), Arc::new(a));
        }
        self.complete.store(true, Ordering::Release);
    }
}

/// Usage counted since the last flush: per account, one record per (API key, model, hour).
/// Keyed by account first so that counting a lease (the hot path) looks the account up by
/// `&str` and finds its bucket among a handful without allocating; a new bucket allocates.
#[derive(Debug, Default)]
pub struct UsageMeter {
    buckets: Mutex<HashMap<String, Vec<UsageRecord>>>,
}

impl UsageMeter {
    /// Adds a record (requests, tokens, errors) to its bucket.
    pub fn add(&self, record: UsageRecord) {
        let hour = UsageRecord::hour_of(record.hour);
        let mut buckets = lock(&self.buckets);
        let of_account = match buckets.get_mut(&record.account) {
            Some(v) => v,
            None => buckets.entry(record.account.clone()).or_default(),
        };
        let same = |b: &&mut UsageRecord| {
            b.hour == hour && b.key_id.as_deref() == record.key_id.as_deref() && b.model == record.model
        };
        match of_account.iter_mut().find(same) {
            Some(b) => {
                b.requests += record.requests;
                b.input_tokens += record.input_tokens;
                b.output_tokens += record.output_tokens;
                b.cache_read_tokens += record.cache_read_tokens;
                b.cache_creation_tokens += record.cache_creation_tokens;
                b.errors += record.errors;
                b.last_used_at = b.last_used_at.max(record.last_used_at);
            }
            None => of_account.push(UsageRecord { hour, ..record }),
        }
    }

    /// Counts one request of `req` for `account` at `now`.
    fn count(&self, req: &LeaseRequest<'_>, account: &str, now: DateTime<Utc>) {
        let hour = UsageRecord::hour_of(now);
        {
            let mut buckets = lock(&self.buckets);
            if let Some(b) = buckets.get_mut(account).and_then(|v| {
                v.iter_mut()
                    .find(|b| b.hour == hour && b.key_id.as_deref() == req.key_id && b.model.as_deref() == req.model)
            }) {
                b.requests += 1;
                b.last_used_at = b.last_used_at.max(now);
                return;
            }
        }
        self.add(UsageRecord {
            account: account.to_owned(),
            key_id: req.key_id.map(str::to_owned),
            model: req.model.map(str::to_owned),
            hour: now,
            requests: 1,
            last_used_at: now,
            ..UsageRecord::default()
        });
    }

    /// Everything counted so far, emptying the meter.
    pub fn take(&self) -> Vec<UsageRecord> {
        lock(&self.buckets).drain().flat_map(|(_, v)| v).collect()
    }

    /// Requests counted and not yet flushed, over every bucket.
    pub fn pending_requests(&self) -> u64 {
        lock(&self.buckets).values().flatten().map(|r| r.requests).sum()
    }
}

impl Keeper {
    /// The in-memory usage meter every lease counts into; the proxy adds token counts here.
    pub fn usage(&self) -> &UsageMeter {
        &self.meter
    }

    /// Hands out a token of `req.account`: from memory when it is fresh, through the locked
    /// refresh path when it is inside the lead (see the module docs). Counts one request.
    pub async fn lease(&self, req: LeaseRequest<'_>) -> Result<Lease, KeeperError> {
        // The slow paths are boxed: inline, their state (a whole refresh: locks, the provider's
        // answer, the store's commit) would make this future, and every caller's, over 20 KB,
        // allocated and copied on every hand-out although almost none of them take it.
        let name = match req.account {
            Some(n) => n.to_owned(),
            None => Box::pin(self.resolve_account(None)).await?.name,
        };
        let now = self.clock().now();
        let lease = match self.cache.get(&name) {
            Some(a) => match self.servable(&a, now) {
                Some(warning) => Lease { account: a, warning },
                None => Box::pin(self.lease_slow(&name, None)).await?,
            },
            None => Box::pin(self.lease_slow(&name, None)).await?,
        };
        self.meter.count(&req, &name, now);
        Ok(lease)
    }

    /// After the provider answered 401 to `rejected`'s token: one refresh (coalesced with every
    /// other report of the same version), then a new lease. The rejected token is never handed
    /// out again; if the refresh fails, so does this call.
    pub async fn lease_after_rejection(&self, rejected: &Lease) -> Result<Lease, KeeperError> {
        let name = rejected.account.name.clone();
        self.cache.reject(&name, rejected.version());
        let lease = Box::pin(self.lease_slow(&name, Some(rejected.version()))).await?;
        self.meter.count(&LeaseRequest::default(), &name, self.clock().now());
        Ok(lease)
    }

    /// `Some(warning)` when `account`'s token may be handed out without a refresh: valid, not
    /// rejected, and outside the lead (or inside it while a failed refresh's gate is closed).
    fn servable(&self, account: &Account, now: DateTime<Utc>) -> Option<Option<Arc<str>>> {
        let c = &account.credential;
        if c.is_blank() || c.is_expired(now) || self.cache.is_rejected(account) {
            return None;
        }
        // The effective lead: with a lead not shorter than the token's lifetime, the configured
        // one would send every lease through a refresh (a storm of them).
        if !c.needs_refresh(now, chrono_duration(effective_lead(self.lead(), account))) {
            return Some(None);
        }
        self.cache.gate(&account.name, now).map(Some)
    }

    async fn lease_slow(&self, name: &str, rejected: Option<i64>) -> Result<Lease, KeeperError> {
        let current = self.store().get_account(name).await?.ok_or_else(|| KeeperError::NoSuchAccount(name.into()))?;
        let now = self.clock().now();
        if rejected.is_none() {
            if let Some(warning) = self.servable(&current, now) {
                let account = Arc::new(current);
                self.cache.insert(account.clone());
                return Ok(Lease { account, warning });
            }
        }
        let rejected = rejected.or_else(|| self.cache.is_rejected(&current).then_some(current.version));
        let policy = match rejected {
            Some(version) => RefreshPolicy::Rejected { version },
            None => RefreshPolicy::IfWithin(self.lead()),
        };
        match self.refresh(name, policy).await {
            Ok(r) => {
                let account = Arc::new(r.account().clone());
                self.cache.insert(account.clone());
                if self.cache.is_rejected(&account) {
                    return Err(KeeperError::TryLater {
                        account: name.to_owned(),
                        reason: "the provider rejected this token and no newer one could be had".into(),
                        retry_after: None,
                    });
                }
                Ok(Lease { account, warning: None })
            }
            Err(e) => {
                let current =
                    self.store().get_account(name).await?.ok_or_else(|| KeeperError::NoSuchAccount(name.into()))?;
                let now = self.clock().now();
                // Even after a rejection the access token works until it expires: keep
                // serving it (with the error as a warning) so the alert, not an outage, is
                // how people learn of it. A token a caller saw rejected is never served.
                let usable = !current.credential.is_expired(now)
                    && !current.credential.is_blank()
                    && !self.cache.is_rejected(&current);
                if !usable {
                    return Err(e);
                }
                let warning: Arc<str> = Arc::from(e.to_string());
                let until = now + chrono_duration(self.config().keeper.backoff_min);
                self.cache.close_gate(name, until, warning.clone());
                let account = Arc::new(current);
                self.cache.insert(account.clone());
                Ok(Lease { account, warning: Some(warning) })
            }
        }
    }

    /// Every account: from memory while following the feed, else from the store.
    pub async fn accounts(&self) -> Result<Vec<Arc<Account>>, KeeperError> {
        if let Some(all) = self.cache.snapshot() {
            return Ok(all);
        }
        Ok(self.store().list_accounts().await?.into_iter().map(Arc::new).collect())
    }

    /// Changes whenever API keys may have changed in the store (a key created or revoked by
    /// any process, or a resynchronisation); `None` while the feed is not followed, when a key
    /// cache could not be kept current.
    pub fn keys_generation(&self) -> Option<u64> {
        self.cache.following.load(Ordering::Acquire).then(|| self.cache.keys_generation.load(Ordering::Acquire))
    }

    /// Writes the usage counted in memory to the store; returns how many requests it held.
    /// On failure the counts go back into the meter for the next flush.
    pub async fn flush_usage(&self) -> Result<u64, KeeperError> {
        let batch = self.meter.take();
        if batch.is_empty() {
            return Ok(0);
        }
        let requests = batch.iter().map(|r| r.requests).sum();
        if let Err(e) = self.store().record_usage(&batch).await {
            for r in batch {
                self.meter.add(r);
            }
            return Err(e.into());
        }
        Ok(requests)
    }

    /// Flushes usage every `every` until the task is aborted (the caller flushes once more on
    /// shutdown).
    pub fn spawn_usage_flusher(self: &Arc<Self>, every: Duration) -> JoinHandle<()> {
        let keeper = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = keeper.flush_usage().await {
                    tracing::warn!(error = %e, "cannot save usage counters; keeping them for the next flush");
                }
            }
        })
    }

    /// Starts following the backend's change feed: loads every account into memory, then keeps
    /// it current from the feed and publishes other processes' changes as
    /// [`KeeperEvent::StoreChanged`] (and [`KeeperEvent::Resync`]). Returns once subscribed;
    /// the task runs until aborted or the feed ends.
    pub async fn follow_changes(self: &Arc<Self>) -> Result<JoinHandle<()>, KeeperError> {
        let mut sub = self.feed().subscribe().await?;
        self.cache.following.store(true, Ordering::Release);
        self.cache.reset(self.store().list_accounts().await?);
        let keeper = self.clone();
        Ok(tokio::spawn(async move {
            while let Some(item) = sub.next().await {
                keeper.apply_change(item).await;
            }
            tracing::warn!("the change feed ended; tokens are read from the store from now on");
            keeper.cache.following.store(false, Ordering::Release);
        }))
    }

    async fn apply_change(&self, item: FeedItem) {
        let change = match item {
            FeedItem::Resync => {
                match self.store().list_accounts().await {
                    Ok(all) => self.cache.reset(all),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot reload accounts after a feed gap; reading the store until then");
                        self.cache.complete.store(false, Ordering::Release);
                    }
                }
                self.cache.keys_generation.fetch_add(1, Ordering::AcqRel);
                self.publish(KeeperEvent::Resync);
                return;
            }
            FeedItem::Change(c) => c,
        };
        if change.kind == ChangeKind::Keys {
            self.cache.keys_generation.fetch_add(1, Ordering::AcqRel);
            self.publish(KeeperEvent::StoreChanged { account: None, kind: ChangeKind::Keys });
            return;
        }
        let Some(name) = change.account else { return };
        if change.kind == ChangeKind::Credential && change.version.is_some_and(|v| self.cache.is_known(&name, v)) {
            return; // our own write, or one we loaded already
        }
        match self.store().get_account(&name).await {
            Ok(Some(a)) => self.cache.insert(Arc::new(a)),
            Ok(None) => self.cache.removed(&name),
            Err(e) => {
                tracing::warn!(account = %name, error = %e, "cannot reload a changed account; reading the store until then");
                self.cache.complete.store(false, Ordering::Release);
                self.cache.entries.write().unwrap_or_else(|p| p.into_inner()).remove(&name);
            }
        }
        self.publish(KeeperEvent::StoreChanged { account: Some(name), kind: change.kind });
    }
}
