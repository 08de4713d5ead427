//! The refresh path every caller shares (daemon, `refresh`, `token`, `exec`, the HTTP API):
//! single-flight, cross-process lock, Claude Code's lock, re-read and adopt, refresh, commit
//! durably, then publish. Also ingest (import, push, login, watched files) under the
//! never-regress rule.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::broadcast;

use tokenkeeper_core::config::ANTHROPIC;
use tokenkeeper_core::formats::ParsedCredential;
use tokenkeeper_core::status::human_duration;
use tokenkeeper_core::store::{AccountPatch, Attempt, CredentialChange, CredentialUpdate, EventKind, NewEvent};
use tokenkeeper_core::{
    Account, AccountLock, AccountState, Backend, Binding, BindingKind, ChangeFeed, ChangeKind, Config, Credential,
    Freshness, Leadership, Mode, NewAccount, SharedClock, Store, StoreError,
};
use tokenkeeper_process::{ChildCommand, Purpose};
use tokenkeeper_provider::{parse_pasted_code, OAuthClient, PkceLogin, Provider, Providers, TokenGrant, TokenOutcome};

use crate::bound::{read_bound, write_bound, BoundContent};
use crate::error::KeeperError;
use crate::lease::{LeaseCache, UsageMeter};
use crate::locks::{claude_lock_dirs, ClaudeLockDir, HeldLocks, SingleFlight};
use crate::schedule::effective_lead;

/// The name of Claude Code's credentials file in its config directory.
const CLAUDE_CREDENTIALS_FILE: &str = ".credentials.json";

/// How long a half-written bound file is given to become whole before it is repaired.
const UNUSABLE_RECHECK: Duration = Duration::from_millis(250);

/// How long a caller waits for another process's refresh lock.
const LOCK_WAIT: Duration = Duration::from_secs(90);

/// When to refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshPolicy {
    /// Only if the access token expires within this long (the lead time), capped at half the
    /// token's lifetime when it is not shorter than that ([`crate::schedule::effective_lead`]).
    IfWithin(Duration),
    /// Now: rotates, unless another refresh committed between the call's start and the moment
    /// it holds the locks (it was in flight, so this call coalesces into it).
    Force,
    /// The caller's API request was answered 401 with the token of credential `version`:
    /// rotates unless the credential already moved on from that version.
    Rejected {
        /// The version whose access token was rejected.
        version: i64,
    },
}

/// What a refresh call did.
#[derive(Debug, Clone)]
pub enum RefreshResult {
    /// We spent the refresh token and stored the new credential.
    Refreshed(Box<Account>),
    /// Someone else refreshed meanwhile; we took theirs.
    Adopted(Box<Account>),
    /// Nothing to do: the token is fresh enough.
    NotNeeded(Box<Account>),
}

impl RefreshResult {
    /// The account after the call.
    pub fn account(&self) -> &Account {
        match self {
            RefreshResult::Refreshed(a) | RefreshResult::Adopted(a) | RefreshResult::NotNeeded(a) => a,
        }
    }
}

/// Something that happened, for the daemon, the server and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeeperEvent {
    /// An account's credential changed.
    Changed {
        /// The account's name.
        account: String,
        /// Why.
        change: CredentialChange,
    },
    /// A refresh failed; the account's `last_error` and a `refresh_failed` event were recorded.
    RefreshFailed {
        /// The account whose refresh failed (its name).
        account: String,
        /// Why, in words.
        reason: String,
    },
    /// An account was removed.
    Removed {
        /// The removed account's name.
        account: String,
    },
    /// Another process committed a change (from the change feed): credentials of other
    /// processes arrive as `Credential`, settings and bindings as `Metadata`.
    StoreChanged {
        /// The account, when the change concerns one.
        account: Option<String>,
        /// What changed.
        kind: ChangeKind,
    },
    /// Changes may have been missed: reload everything.
    Resync,
}

/// A credential to ingest.
#[derive(Debug, Clone)]
pub struct Ingest {
    /// Account name; `None` picks the only account, or `main` when there is none.
    pub account: Option<String>,
    /// The credential and what came with it.
    pub parsed: ParsedCredential,
    /// Set the mode (new accounts default to `own`).
    pub mode: Option<Mode>,
    /// Bind the account to this file.
    pub binding: Option<Binding>,
    /// Why.
    pub change: CredentialChange,
    /// Organization, when known (logins).
    pub organization: Option<String>,
    /// The provider id of a new account (`codex`, `gemini`, a `[providers.NAME]`); `None`
    /// decides from the format (`anthropic`, or `anthropic-api-key` for a plain API key). An
    /// existing account keeps its provider: a credential of another one is refused.
    pub provider: Option<String>,
}

/// What an ingest did.
#[derive(Debug, Clone)]
pub enum IngestOutcome {
    /// A new account.
    Created(Box<Account>),
    /// A newer credential replaced the stored one.
    Updated(Box<Account>),
    /// The same credential was there already (settings may have changed).
    Unchanged(Box<Account>),
}

impl IngestOutcome {
    /// The account after the ingest.
    pub fn account(&self) -> &Account {
        match self {
            IngestOutcome::Created(a) | IngestOutcome::Updated(a) | IngestOutcome::Unchanged(a) => a,
        }
    }
}

/// The refresh engine. Cheap to share (`Arc<Keeper>`).
///
/// It names no backend: the store, the cross-process lock and the change feed arrive as one
/// [`Backend`].
#[derive(Debug)]
pub struct Keeper {
    store: Arc<dyn Store>,
    lock: Arc<dyn AccountLock>,
    feed: Arc<dyn ChangeFeed>,
    leader: Arc<dyn Leadership>,
    providers: Providers,
    /// Anthropic's client, for the PKCE login only (refreshes go through `providers`).
    client: OAuthClient,
    clock: SharedClock,
    config: Arc<Config>,
    data_dir: PathBuf,
    single_flight: SingleFlight,
    events: broadcast::Sender<KeeperEvent>,
    lock_wait: Duration,
    counters: Mutex<HashMap<(String, &'static str), u64>>,
    pub(crate) cache: LeaseCache,
    pub(crate) meter: UsageMeter,
}

fn fp(c: &Credential) -> String {
    c.access_token.fingerprint()
}

impl Keeper {
    /// Builds a keeper over a backend, with the providers `config` names
    /// ([`Providers::from_config`]). `data_dir` holds what belongs to this host.
    pub fn new(
        backend: Backend,
        config: Arc<Config>,
        data_dir: &Path,
        clock: SharedClock,
    ) -> Result<Self, KeeperError> {
        let providers = Providers::from_config(&config)?;
        Self::with_providers(backend, config, data_dir, clock, providers)
    }

    /// Builds a keeper that refreshes, reads and writes accounts through `providers` (a test
    /// adds its own provider with [`Providers::with`]); otherwise as [`Keeper::new`].
    pub fn with_providers(
        backend: Backend,
        config: Arc<Config>,
        data_dir: &Path,
        clock: SharedClock,
        providers: Providers,
    ) -> Result<Self, KeeperError> {
        let client = OAuthClient::new(&config.provider(ANTHROPIC))?;
        let (events, _) = broadcast::channel(1024);
        Ok(Self {
            store: backend.store,
            lock: backend.lock,
            feed: backend.feed,
            leader: backend.leader,
            providers,
            client,
            clock,
            config,
            data_dir: data_dir.to_owned(),
            single_flight: SingleFlight::default(),
            events,
            lock_wait: LOCK_WAIT,
            counters: Mutex::new(HashMap::new()),
            cache: LeaseCache::default(),
            meter: UsageMeter::default(),
        })
    }

    /// The change feed the keeper follows (see [`Keeper::follow_changes`]).
    pub fn feed(&self) -> &Arc<dyn ChangeFeed> {
        &self.feed
    }

    /// Leadership of the installation. The keeper itself never campaigns (every process hands
    /// out and refreshes inside the lead); the daemon does, to decide who runs the scheduler.
    pub fn leadership(&self) -> &Arc<dyn Leadership> {
        &self.leader
    }

    /// The locks of `name` across processes, then Claude Code's when `binding` is its file.
    async fn lock_account(&self, name: &str, binding: Option<&Binding>) -> Result<HeldLocks, KeeperError> {
        let held = HeldLocks::take(self.lock.as_ref(), name, self.lock_wait).await?;
        Ok(held.and_claude(claude_dirs(binding), self.lock_wait).await?)
    }

    /// What the keeper learns from its own writes: the cache drops the account, and the
    /// change feed's echo of the write is known not to be news.
    fn wrote(&self, account: &Account) {
        self.cache.wrote(account);
    }

    /// The store the keeper reads and writes accounts through (the [`Backend`]'s).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The configuration.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The clock every "now" of the keeper comes from (expiries, leads, event times); a
    /// `ManualClock` in tests.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Anthropic's OAuth client, for the PKCE login.
    pub fn client(&self) -> &OAuthClient {
        &self.client
    }

    /// The providers accounts are refreshed, read and written through.
    pub fn providers(&self) -> &Providers {
        &self.providers
    }

    /// The provider of `account`; an unknown id is an error that names the fix.
    pub fn provider_of(&self, account: &Account) -> Result<&Arc<dyn Provider>, KeeperError> {
        self.providers.get(&account.provider).ok_or_else(|| KeeperError::UnknownProvider {
            account: account.name.clone(),
            provider: account.provider.clone(),
        })
    }

    /// Whether the keeper refreshes `account` at all: its provider refreshes (plain API keys
    /// do not) and its credential has a refresh token. An account of an unknown provider
    /// counts as refreshable, so that refreshing it fails with the error that names the fix
    /// rather than being skipped in silence.
    pub fn refreshes(&self, account: &Account) -> bool {
        account.credential.is_refreshable() && self.providers.get(&account.provider).is_none_or(|p| p.refreshes())
    }

    /// The provider of `account` as the bound-file code takes it (`None` when unknown).
    fn provider_arc(&self, account: &Account) -> Option<Arc<dyn Provider>> {
        self.providers.get(&account.provider).cloned()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The configured lead time.
    pub fn lead(&self) -> Duration {
        self.config.keeper.lead
    }

    /// Subscribes to events.
    pub fn subscribe(&self) -> broadcast::Receiver<KeeperEvent> {
        self.events.subscribe()
    }

    pub(crate) fn publish(&self, event: KeeperEvent) {
        // No subscribers is fine (the CLI has none).
        let _ = self.events.send(event);
    }

    fn count(&self, account: &str, result: &'static str) {
        let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        *c.entry((account.to_owned(), result)).or_default() += 1;
    }

    /// Refresh attempts that reached the provider, by account and result (`success`,
    /// `rejected`, `rate_limited`, `transient`), since this process started; for metrics.
    pub fn refresh_counters(&self) -> Vec<(String, &'static str, u64)> {
        let c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = c.iter().map(|((a, r), n)| (a.clone(), *r, *n)).collect();
        v.sort();
        v
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Picks the account to act on: the named one, or the only one.
    pub async fn resolve_account(&self, name: Option<&str>) -> Result<Account, KeeperError> {
        match name {
            Some(n) => self.store.get_account(n).await?.ok_or_else(|| KeeperError::NoSuchAccount(n.to_owned())),
            None => {
                let mut all = self.store.list_accounts().await?;
                match all.len() {
                    0 => Err(KeeperError::NoAccounts),
                    1 => Ok(all.remove(0)),
                    _ => {
                        Err(KeeperError::Ambiguous(all.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(", ")))
                    }
                }
            }
        }
    }

    /// Refreshes `name` according to `policy`, through every lock. See the module docs.
    pub async fn refresh(&self, name: &str, policy: RefreshPolicy) -> Result<RefreshResult, KeeperError> {
        // What the caller saw, before waiting for any lock: a refresh that commits after this
        // and before we hold the locks was in flight when we started.
        let started = match policy {
            RefreshPolicy::Force => Some(self.get(name).await?.version),
            RefreshPolicy::Rejected { version } => Some(version),
            RefreshPolicy::IfWithin(_) => None,
        };
        let _in_process = self.single_flight.acquire(name).await;
        let seen = self.get(name).await?;
        if seen.mode == Mode::Follow {
            return self.follow(seen, policy).await;
        }
        // Before the locks nothing is written: every credential write happens under the
        // data-dir lock, so a rejection recorded under it cannot mark a fresher credential dead.
        // A newer credential in the bound file is adopted below, under the locks.
        let file_newer = self.bound_newer(&seen).await;
        if file_newer.is_none() {
            if let RefreshPolicy::IfWithin(lead) = policy {
                let lead = effective_lead(lead, &seen);
                if !seen.credential.needs_refresh(self.now(), chrono_duration(lead)) {
                    return Ok(RefreshResult::NotNeeded(Box::new(seen)));
                }
            }
            self.check_refreshable(&seen)?;
        }

        let _locks = self.lock_account(name, seen.binding.as_ref()).await?;

        // Under the locks: whoever refreshed while we waited has committed; take theirs.
        let latest = self.get(name).await?;
        let latest = self.reconcile_bound(latest, true).await?;
        let now = self.now();
        let changed_meanwhile = latest.version != started.unwrap_or(seen.version);
        match policy {
            RefreshPolicy::IfWithin(lead) => {
                // Judged on what is stored now: a token another process just refreshed has a
                // new lifetime, and a lead that covers all of it must not refresh it again.
                if !latest.credential.needs_refresh(now, chrono_duration(effective_lead(lead, &latest))) {
                    return Ok(if changed_meanwhile {
                        RefreshResult::Adopted(Box::new(latest))
                    } else {
                        RefreshResult::NotNeeded(Box::new(latest))
                    });
                }
            }
            RefreshPolicy::Force => {
                // A refresh that committed while this call waited for the locks was in flight
                // when it started: coalesce into it. No time window: a force started after the
                // last refresh finished always rotates.
                if changed_meanwhile && !latest.credential.is_expired(now) {
                    return Ok(RefreshResult::Adopted(Box::new(latest)));
                }
            }
            RefreshPolicy::Rejected { .. } => {
                if changed_meanwhile && !latest.credential.is_expired(now) {
                    return Ok(RefreshResult::Adopted(Box::new(latest)));
                }
            }
        }
        self.check_refreshable(&latest)?;
        self.take_attempt(name, now).await?;
        self.spend(latest).await
    }

    /// A credential in the bound file newer than the stored one, if there is one (read only).
    async fn bound_newer(&self, account: &Account) -> Option<Credential> {
        let binding = account.binding.as_ref()?;
        match read_bound(binding, self.provider_arc(account), self.now()).await {
            BoundContent::Credential(p) if bound_freshness(&p.credential, &account.credential) == Freshness::Newer => {
                Some(p.credential)
            }
            _ => None,
        }
    }

    /// Brings an account and its bound file in step, under every lock: adopts a newer
    /// credential found in the file; for an `own` account, repairs a file holding an older
    /// credential, a blank stub or half-written JSON. The daemon calls this when the file
    /// changes.
    pub async fn sync_bound(&self, name: &str) -> Result<Account, KeeperError> {
        let _in_process = self.single_flight.acquire(name).await;
        let account = self.get(name).await?;
        if account.binding.is_none() {
            return Ok(account);
        }
        let _locks = self.lock_account(name, account.binding.as_ref()).await?;
        let account = self.get(name).await?;
        self.reconcile_bound(account, true).await
    }

    fn check_refreshable(&self, account: &Account) -> Result<(), KeeperError> {
        if !self.provider_of(account)?.refreshes() {
            return Err(KeeperError::NotRefreshable {
                account: account.name.clone(),
                expires: account.credential.expires_at.to_rfc3339(),
            });
        }
        if account.state == AccountState::NeedsLogin {
            return Err(KeeperError::NeedsLogin {
                account: account.name.clone(),
                reason: account.last_error.clone().unwrap_or_else(|| "rejected earlier".into()),
            });
        }
        if !account.credential.is_refreshable() {
            return Err(KeeperError::NotRefreshable {
                account: account.name.clone(),
                expires: account.credential.expires_at.to_rfc3339(),
            });
        }
        Ok(())
    }

    /// Bounds attempts per account per hour, whatever the provider answers, across every
    /// process of the installation (the budget is kept in the store).
    async fn take_attempt(&self, name: &str, now: DateTime<Utc>) -> Result<(), KeeperError> {
        let max = self.config.keeper.max_attempts_per_hour;
        match self.store.take_refresh_attempt(name, now, max).await? {
            Attempt::Granted => Ok(()),
            Attempt::Exhausted { until } => Err(KeeperError::TryLater {
                account: name.to_owned(),
                reason: format!("{max} refresh attempts in the last hour already; waiting before the next"),
                retry_after: Some((until - now).to_std().unwrap_or_default()),
            }),
        }
    }

    /// Spends the refresh token and commits the answer. The commit is the first thing done with
    /// a successful answer: until it is durable, a crash loses the new refresh token.
    async fn spend(&self, account: Account) -> Result<RefreshResult, KeeperError> {
        let name = account.name.clone();
        if !account.credential.is_refreshable() {
            return Err(KeeperError::NotRefreshable {
                account: name,
                expires: account.credential.expires_at.to_rfc3339(),
            });
        }
        let provider = self.provider_of(&account)?.clone();
        let outcome = provider.refresh(&account.credential, self.now()).await;
        self.count(&name, outcome.kind());
        match outcome {
            TokenOutcome::Success(grant) => self.commit_refresh(account, grant).await,
            TokenOutcome::Rejected { reason } => {
                let now = self.now();
                let msg = format!("rejected by the provider: {reason}");
                let patched = self
                    .store
                    .patch_account(
                        &name,
                        &AccountPatch {
                            state: Some(AccountState::NeedsLogin),
                            last_error: Some(Some(msg.clone())),
                            ..Default::default()
                        },
                        now,
                    )
                    .await?;
                self.wrote(&patched);
                self.event(&name, EventKind::RefreshFailed, format!("needs login: {reason}")).await;
                tracing::error!(account = %name, %reason, "refresh token rejected; the account needs a new login");
                self.publish(KeeperEvent::RefreshFailed { account: name.clone(), reason: msg });
                Err(KeeperError::NeedsLogin { account: name, reason })
            }
            TokenOutcome::RateLimited { retry_after, reason } => {
                self.note_failure(&name, &format!("rate limited: {reason}")).await;
                Err(KeeperError::TryLater { account: name, reason: format!("rate limited: {reason}"), retry_after })
            }
            TokenOutcome::Transient { reason } => {
                self.note_failure(&name, &reason).await;
                Err(KeeperError::TryLater { account: name, reason, retry_after: None })
            }
        }
    }

    async fn commit_refresh(&self, account: Account, grant: TokenGrant) -> Result<RefreshResult, KeeperError> {
        let now = self.now();
        let email = grant.email.clone();
        let organization = grant.organization.clone();
        let credential = grant.into_credential(now, Some(&account.credential));
        let detail = format!(
            "{} (expires {}) -> {} (expires {})",
            fp(&account.credential),
            account.credential.expires_at.to_rfc3339(),
            fp(&credential),
            credential.expires_at.to_rfc3339()
        );
        let mut update = CredentialUpdate {
            expected_version: account.version,
            credential,
            change: CredentialChange::Refreshed,
            at: now,
            detail,
            email,
            organization,
        };
        let mut attempts = 0;
        let stored = loop {
            match self.store.update_credential(&account.name, &update).await {
                Ok(a) => break a,
                Err(StoreError::VersionConflict { found, .. }) if attempts < 3 => {
                    // Someone wrote without our lock (an import): keep ours only if it is newer.
                    attempts += 1;
                    let current = self.get(&account.name).await?;
                    if update.credential.compare_to(&current.credential) != Freshness::Newer {
                        return Ok(RefreshResult::Adopted(Box::new(current)));
                    }
                    update.expected_version = found;
                }
                Err(e) => {
                    tracing::error!(account = %account.name, error = %e,
                        "could not store a refreshed credential; the new refresh token may be lost");
                    return Err(e.into());
                }
            }
        };
        self.wrote(&stored);
        tracing::info!(
            account = %stored.name,
            old_expiry = %account.credential.expires_at.to_rfc3339(),
            new_expiry = %stored.credential.expires_at.to_rfc3339(),
            old = %fp(&account.credential),
            new = %fp(&stored.credential),
            "refreshed"
        );
        self.write_back(&stored).await;
        self.publish(KeeperEvent::Changed { account: stored.name.clone(), change: CredentialChange::Refreshed });
        Ok(RefreshResult::Refreshed(Box::new(stored)))
    }

    async fn note_failure(&self, name: &str, reason: &str) {
        let now = self.now();
        let patch = AccountPatch { last_error: Some(Some(reason.to_owned())), ..Default::default() };
        match self.store.patch_account(name, &patch, now).await {
            Ok(a) => self.wrote(&a),
            Err(e) => tracing::warn!(account = %name, error = %e, "could not record a refresh failure"),
        }
        self.event(name, EventKind::RefreshFailed, reason.to_owned()).await;
        tracing::warn!(account = %name, %reason, "refresh failed; will retry");
        self.publish(KeeperEvent::RefreshFailed { account: name.to_owned(), reason: reason.to_owned() });
    }

    async fn event(&self, account: &str, kind: EventKind, detail: String) {
        let e = NewEvent { account: account.to_owned(), kind, at: self.now(), detail };
        if let Err(err) = self.store.record_event(&e).await {
            tracing::warn!(%account, error = %err, "could not record an event");
        }
    }

    async fn get(&self, name: &str) -> Result<Account, KeeperError> {
        self.store.get_account(name).await?.ok_or_else(|| KeeperError::NoSuchAccount(name.to_owned()))
    }

    /// Writes an `own` account's credential to its bound file, if it has one.
    async fn write_back(&self, account: &Account) {
        if account.mode != Mode::Own {
            return;
        }
        if let Some(b) = &account.binding {
            if let Err(e) = write_bound(b, self.provider_arc(account), &account.credential).await {
                tracing::warn!(account = %account.name, file = %b.path.display(), error = %e,
                    "could not write the credential back to the bound file");
            }
        }
    }

    /// Reconciles an account with its bound file: adopts a newer credential found there; with
    /// `repair`, and only then (the caller holds Claude Code's lock, so the file is not being
    /// written), rewrites a file holding an older credential or a blank stub.
    async fn reconcile_bound(&self, account: Account, repair: bool) -> Result<Account, KeeperError> {
        let Some(binding) = account.binding.clone() else { return Ok(account) };
        let now = self.now();
        match read_bound(&binding, self.provider_arc(&account), now).await {
            BoundContent::Missing => Ok(account),
            BoundContent::Credential(mut parsed) => {
                // A file without a refresh token (Gemini CLI's after a Google refresh) keeps ours.
                parsed.credential = parsed.credential.keeping_refresh_token_of(&account.credential);
                match bound_freshness(&parsed.credential, &account.credential) {
                    Freshness::Newer => {
                        let detail = format!(
                            "adopted {} (expires {}) from {}",
                            fp(&parsed.credential),
                            parsed.credential.expires_at.to_rfc3339(),
                            binding.path.display()
                        );
                        let update = CredentialUpdate {
                            expected_version: account.version,
                            credential: parsed.credential.clone(),
                            change: CredentialChange::Adopted,
                            at: now,
                            detail,
                            email: parsed.email.clone(),
                            organization: None,
                        };
                        match self.store.update_credential(&account.name, &update).await {
                            Ok(a) => {
                                self.wrote(&a);
                                tracing::info!(account = %a.name, new = %fp(&a.credential), file = %binding.path.display(),
                                "adopted a credential refreshed by someone else");
                                self.publish(KeeperEvent::Changed {
                                    account: a.name.clone(),
                                    change: CredentialChange::Adopted,
                                });
                                Ok(a)
                            }
                            Err(StoreError::VersionConflict { .. }) => self.get(&account.name).await,
                            Err(e) => Err(e.into()),
                        }
                    }
                    Freshness::Same => Ok(account),
                    Freshness::Older | Freshness::Blank => {
                        if repair {
                            self.repair(&account, &binding, "an older credential").await;
                        }
                        Ok(account)
                    }
                }
            }
            BoundContent::Unusable(reason) => {
                if repair {
                    // A writer that takes no lock (`claude login`) may be between truncate and
                    // write; repairing now would send the rest of its write to a dead inode.
                    tokio::time::sleep(UNUSABLE_RECHECK).await;
                    if let BoundContent::Unusable(_) =
                        read_bound(&binding, self.provider_arc(&account), self.now()).await
                    {
                        self.repair(&account, &binding, &reason).await;
                    } else {
                        return Box::pin(self.reconcile_bound(account, true)).await;
                    }
                }
                Ok(account)
            }
        }
    }

    async fn repair(&self, account: &Account, binding: &Binding, what: &str) {
        if account.mode != Mode::Own || account.credential.is_blank() {
            tracing::warn!(account = %account.name, file = %binding.path.display(), found = %what,
                "bound file holds a credential older than ours; follow mode, leaving it alone");
            return;
        }
        match write_bound(binding, self.provider_arc(account), &account.credential).await {
            Ok(_) => {
                tracing::warn!(account = %account.name, file = %binding.path.display(), found = %what,
                    "repaired bound file: it held a stale or blank credential");
                self.event(&account.name, EventKind::Repaired, format!("repaired {} ({what})", binding.path.display()))
                    .await;
            }
            Err(e) => tracing::warn!(account = %account.name, error = %e, "could not repair the bound file"),
        }
    }

    /// Adopts a newer credential from the bound file under the data-dir lock (follow mode:
    /// never repairs, never refreshes).
    async fn adopt_locked(&self, account: Account) -> Result<Account, KeeperError> {
        if account.binding.is_none() {
            return Ok(account);
        }
        let _locks = self.lock_account(&account.name, None).await?;
        let current = self.get(&account.name).await?;
        self.reconcile_bound(current, false).await
    }

    /// Follow mode: never refresh; read the bound file, and nudge its owner when due.
    async fn follow(&self, account: Account, policy: RefreshPolicy) -> Result<RefreshResult, KeeperError> {
        let before = account.version;
        let account = self.adopt_locked(account).await?;
        let lead = match policy {
            RefreshPolicy::IfWithin(l) => l,
            RefreshPolicy::Force | RefreshPolicy::Rejected { .. } => self.lead(),
        };
        let now = self.now();
        if !account.credential.needs_refresh(now, chrono_duration(effective_lead(lead, &account))) {
            return Ok(if account.version != before {
                RefreshResult::Adopted(Box::new(account))
            } else {
                RefreshResult::NotNeeded(Box::new(account))
            });
        }
        if let Some(nudge) = self.config.accounts.get(&account.name).and_then(|a| a.nudge.clone()) {
            if !nudge.is_empty() {
                tracing::info!(account = %account.name, command = %nudge[0], "nudging the owner to refresh");
                // The one child-process runner: tokenkeeper's own secrets withheld, its own
                // process group, killed as a group on timeout.
                match ChildCommand::new(Purpose::Nudge, &nudge) {
                    Ok(cmd) => match cmd
                        .env("TOKENKEEPER_ACCOUNT", account.name.clone())
                        .timeout(Duration::from_secs(180))
                        .run()
                        .await
                    {
                        Ok(out) if out.success() => {}
                        Ok(out) => tracing::warn!(account = %account.name, status = %out.describe_status(),
                            stderr = %out.stderr_tail(400), "nudge command failed"),
                        Err(e) => tracing::warn!(account = %account.name, error = %e, "cannot run nudge command"),
                    },
                    Err(e) => tracing::warn!(account = %account.name, error = %e, "cannot run nudge command"),
                }
                let after = self.adopt_locked(self.get(&account.name).await?).await?;
                if after.version != account.version
                    && !after.credential.needs_refresh(self.now(), chrono_duration(lead))
                {
                    return Ok(RefreshResult::Adopted(Box::new(after)));
                }
            }
        }
        let left = account.credential.time_left(now);
        let situation = if left.num_seconds() > 0 {
            format!("expires in {}", human_duration(left))
        } else {
            format!("expired {} ago", human_duration(-left))
        };
        Err(KeeperError::FollowMode { account: account.name, situation })
    }

    /// Ingests a credential under the never-regress rule.
    pub async fn ingest(&self, req: Ingest) -> Result<IngestOutcome, KeeperError> {
        let name = self.ingest_target(req.account.as_deref(), req.parsed.email.as_deref()).await?;
        tokenkeeper_core::account::validate_account_name(&name)?;
        if req.parsed.credential.is_blank() {
            return Err(KeeperError::Refused { account: name, reason: "it is a blank stub".into() });
        }
        let provider = match &req.provider {
            Some(p) => p.clone(),
            None if req.parsed.format == tokenkeeper_core::formats::Format::ApiKey => {
                tokenkeeper_core::formats::API_KEY_PROVIDER.to_owned()
            }
            None => ANTHROPIC.to_owned(),
        };
        if self.providers.get(&provider).is_none() {
            return Err(KeeperError::UnknownProvider { account: name, provider });
        }
        let _in_process = self.single_flight.acquire(&name).await;
        let locks = HeldLocks::take(self.lock.as_ref(), &name, self.lock_wait).await?;
        // One login, one account: two accounts holding the same refresh token would each
        // refresh it under their own lock and log each other out.
        let incoming = &req.parsed.credential;
        if let Some(other) = self.store.list_accounts().await?.into_iter().find(|a| {
            a.name != name
                && (a.credential.access_token == incoming.access_token
                    || (incoming.refresh_token.is_some() && a.credential.refresh_token == incoming.refresh_token))
        }) {
            return Err(KeeperError::Refused {
                account: name,
                reason: format!(
                    "this login is already stored as account `{0}`; two accounts sharing one refresh token would log each other out (use --account {0})",
                    other.name
                ),
            });
        }
        let existing = self.store.get_account(&name).await?;
        // Writing back to a bound file happens under Claude Code's lock, like a refresh.
        let binding = req.binding.clone().or_else(|| existing.as_ref().and_then(|a| a.binding.clone()));
        let _locks = locks.and_claude(claude_dirs(binding.as_ref()), self.lock_wait).await?;
        let now = self.now();
        let mut cred = req.parsed.credential.clone();
        let Some(existing) = existing else {
            let new = NewAccount {
                name: name.clone(),
                provider,
                mode: req.mode.unwrap_or_default(),
                credential: cred,
                email: req.parsed.email.clone(),
                organization: req.organization.clone(),
                binding: req.binding.clone(),
                refresh_token_issued_at: None,
            };
            let created = self.store.create_account(&new, now, req.change).await?;
            self.wrote(&created);
            self.write_back(&created).await;
            tracing::info!(account = %name, token = %fp(&created.credential), format = req.parsed.format.describe(), "account created");
            self.publish(KeeperEvent::Changed { account: name, change: req.change });
            return Ok(IngestOutcome::Created(Box::new(created)));
        };
        // An explicit provider must be the account's; without one, the credential is
        // Anthropic's (the format decided), which must not land in another provider's account.
        let compatible = match &req.provider {
            Some(p) => *p == existing.provider,
            None => is_anthropic(&existing.provider),
        };
        if !compatible {
            return Err(KeeperError::Refused {
                account: name,
                reason: format!(
                    "the account belongs to provider `{}` and this credential to `{provider}`; import it under another --account",
                    existing.provider
                ),
            });
        }
        let settings = AccountPatch {
            mode: req.mode.filter(|m| *m != existing.mode),
            binding: req.binding.clone().filter(|b| existing.binding.as_ref() != Some(b)).map(Some),
            ..Default::default()
        };
        let has_settings = settings.mode.is_some() || settings.binding.is_some();
        // A credential without a refresh token (a re-read Gemini CLI file, a bare access
        // token) keeps the stored one: a refresh token is never lost.
        cred = cred.keeping_refresh_token_of(&existing.credential);
        match cred.compare_to(&existing.credential) {
            Freshness::Newer => {
                let update = CredentialUpdate {
                    expected_version: existing.version,
                    credential: cred,
                    change: req.change,
                    at: now,
                    detail: format!(
                        "{} from {} replaces {}",
                        fp(&req.parsed.credential),
                        req.parsed.format.describe(),
                        fp(&existing.credential)
                    ),
                    email: req.parsed.email.clone(),
                    organization: req.organization.clone(),
                };
                let mut updated = self.store.update_credential(&name, &update).await?;
                if has_settings {
                    updated = self.store.patch_account(&name, &settings, now).await?;
                }
                self.wrote(&updated);
                tracing::info!(account = %name, token = %fp(&updated.credential), "credential updated");
                self.write_back(&updated).await;
                self.publish(KeeperEvent::Changed { account: name, change: req.change });
                Ok(IngestOutcome::Updated(Box::new(updated)))
            }
            Freshness::Same => {
                let a = if has_settings { self.store.patch_account(&name, &settings, now).await? } else { existing };
                self.wrote(&a);
                Ok(IngestOutcome::Unchanged(Box::new(a)))
            }
            f @ (Freshness::Older | Freshness::Blank) => {
                let reason = if f == Freshness::Blank {
                    "it is a blank stub".to_owned()
                } else {
                    format!(
                        "it expires {} but the stored credential expires {}, so it is older",
                        req.parsed.credential.expires_at.to_rfc3339(),
                        existing.credential.expires_at.to_rfc3339()
                    )
                };
                self.event(&name, EventKind::Refused, format!("refused {}: {reason}", fp(&req.parsed.credential)))
                    .await;
                Err(KeeperError::Refused { account: name, reason })
            }
        }
    }

    /// Which account an ingest without `--account` goes to.
    async fn ingest_target(&self, name: Option<&str>, email: Option<&str>) -> Result<String, KeeperError> {
        if let Some(n) = name {
            return Ok(n.to_owned());
        }
        let all = self.store.list_accounts().await?;
        if let Some(e) = email {
            if let Some(a) = all.iter().find(|a| a.email.as_deref() == Some(e)) {
                return Ok(a.name.clone());
            }
        }
        match all.len() {
            0 => Ok("main".to_owned()),
            1 => Ok(all[0].name.clone()),
            _ => match email {
                Some(e) => Ok(e.to_owned()),
                None => Err(KeeperError::Ambiguous(all.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(", "))),
            },
        }
    }

    /// Starts a login: the PKCE secrets and the URL to open.
    pub fn start_login(&self) -> (PkceLogin, String) {
        let login = PkceLogin::new();
        let url = self.client.authorize_url(&login);
        (login, url)
    }

    /// Finishes a login with the pasted `CODE#STATE` and stores the account.
    pub async fn finish_login(
        &self,
        account: Option<&str>,
        pasted: &str,
        login: &PkceLogin,
    ) -> Result<IngestOutcome, KeeperError> {
        let code = parse_pasted_code(pasted, &login.state)?;
        let outcome = self.client.exchange_code(&code, login).await;
        self.logged_in(account, outcome, ANTHROPIC).await
    }

    /// The provider `provider` with its login flow, or why there is none.
    fn login_provider(&self, provider: &str) -> Result<Arc<dyn Provider>, KeeperError> {
        let p = self
            .providers
            .get(provider)
            .cloned()
            .ok_or_else(|| KeeperError::UnknownProvider { account: "new".to_owned(), provider: provider.to_owned() })?;
        if p.login().is_none() {
            return Err(KeeperError::NoLoginFlow { provider: provider.to_owned() });
        }
        Ok(p)
    }

    /// Starts a login of `provider` through its [`LoginFlow`](tokenkeeper_provider::LoginFlow):
    /// the PKCE secrets and the URL to open, redirecting to `redirect_uri` (a loopback
    /// listener's) or, when `None`, to the flow's own redirect for a pasted code.
    pub fn start_provider_login(
        &self,
        provider: &str,
        redirect_uri: Option<&str>,
    ) -> Result<StartedLogin, KeeperError> {
        let p = self.login_provider(provider)?;
        let flow = p.login().ok_or_else(|| KeeperError::NoLoginFlow { provider: provider.to_owned() })?;
        let login = PkceLogin::new();
        let redirect_uri = redirect_uri.unwrap_or_else(|| flow.redirect_uri()).to_owned();
        let url = flow.authorize_url(&login, &redirect_uri);
        Ok(StartedLogin { provider: provider.to_owned(), login, url, redirect_uri })
    }

    /// What to paste for a login of `provider`, in words.
    pub fn login_paste_hint(&self, provider: &str) -> Result<String, KeeperError> {
        let p = self.login_provider(provider)?;
        Ok(p.login().map(|f| f.paste_hint().to_owned()).unwrap_or_default())
    }

    /// Finishes the login `started` with what came back (the pasted code or redirect URL, or
    /// the URL a loopback listener caught), and stores the account under `provider`.
    pub async fn finish_provider_login(
        &self,
        account: Option<&str>,
        pasted: &str,
        started: &StartedLogin,
    ) -> Result<IngestOutcome, KeeperError> {
        let p = self.login_provider(&started.provider)?;
        let flow = p.login().ok_or_else(|| KeeperError::NoLoginFlow { provider: started.provider.clone() })?;
        let code = flow.read_code(pasted, &started.login.state)?;
        let outcome = flow.exchange(&code, &started.login, &started.redirect_uri, self.now()).await;
        self.logged_in(account, outcome, &started.provider).await
    }

    /// Stores the account a login's code exchange granted (or says why not).
    async fn logged_in(
        &self,
        account: Option<&str>,
        outcome: TokenOutcome,
        provider: &str,
    ) -> Result<IngestOutcome, KeeperError> {
        match outcome {
            TokenOutcome::Success(grant) => {
                let organization = grant.organization.clone();
                let email = grant.email.clone();
                let credential = grant.into_credential(self.now(), None);
                let format = if provider == ANTHROPIC {
                    tokenkeeper_core::formats::Format::ClaudeJson
                } else {
                    tokenkeeper_core::formats::Format::Native
                };
                let parsed = ParsedCredential { credential, format, email };
                self.ingest(Ingest {
                    account: account.map(str::to_owned),
                    parsed,
                    mode: None,
                    binding: None,
                    change: CredentialChange::LoggedIn,
                    organization,
                    provider: Some(provider.to_owned()),
                })
                .await
            }
            TokenOutcome::Rejected { reason } => Err(KeeperError::LoginCodeRefused { reason }),
            TokenOutcome::RateLimited { reason, retry_after } => {
                Err(KeeperError::TryLater { account: account.unwrap_or("new").to_owned(), reason, retry_after })
            }
            TokenOutcome::Transient { reason } => {
                Err(KeeperError::TryLater { account: account.unwrap_or("new").to_owned(), reason, retry_after: None })
            }
        }
    }

    /// Removes an account.
    pub async fn remove(&self, name: &str) -> Result<bool, KeeperError> {
        let removed = self.store.remove_account(name, self.now()).await?;
        self.cache.removed(name);
        if removed {
            self.publish(KeeperEvent::Removed { account: name.to_owned() });
        }
        Ok(removed)
    }
}

/// A login started with [`Keeper::start_provider_login`], waiting for its code.
#[derive(Debug, Clone)]
pub struct StartedLogin {
    /// The provider id.
    pub provider: String,
    /// The PKCE verifier, challenge and state.
    pub login: PkceLogin,
    /// The authorize URL to open.
    pub url: String,
    /// The redirect URI in that URL, which the code exchange repeats.
    pub redirect_uri: String,
}

/// The never-regress rule for a bound file: as `Credential::compare_to`, except that a
/// different credential with the *same* expiry counts as newer. Two rotations within one
/// millisecond cannot be ordered by expiry; the file is where the other refresher (Claude Code)
/// put its result, and our own copy's refresh token is the one it just spent.
fn bound_freshness(file: &Credential, stored: &Credential) -> Freshness {
    match file.compare_to(stored) {
        Freshness::Older if file.expires_at == stored.expires_at => Freshness::Newer,
        other => other,
    }
}

/// Whether `provider` is one of the two Anthropic ids (OAuth login or plain API key).
fn is_anthropic(provider: &str) -> bool {
    provider == ANTHROPIC || provider == tokenkeeper_core::formats::API_KEY_PROVIDER
}

/// Claude Code's lock directories for an account bound to Claude Code's own
/// `.credentials.json` (none otherwise: another file has no Claude Code to coordinate with,
/// and its directory's `.lock` sibling may not even be creatable).
fn claude_dirs(binding: Option<&Binding>) -> Option<Vec<ClaudeLockDir>> {
    let b = binding?;
    if b.kind != BindingKind::ClaudeCredentials || b.path.file_name().is_none_or(|n| n != CLAUDE_CREDENTIALS_FILE) {
        return None;
    }
    b.path.parent().map(claude_lock_dirs)
}

pub use tokenkeeper_core::clock::chrono_duration;
