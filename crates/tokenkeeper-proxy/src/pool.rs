//! The pools: which accounts a request may use, which one it gets (the strategies), and what
//! the proxy knows about each account (cooldowns, quota seen, counters).
//!
//! Cooldowns are absolute times kept in the store's installation state under
//! `cooldown/<account>` (or `cooldown/<account>/<family>` for a per-model limit), so they
//! survive a restart and every replica honours them. A cooldown ends by itself (availability
//! compares it with the clock; nothing has to clear it) and a success clears it at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use tokenkeeper_core::config::{Config, PoolConfig, PoolMember, Strategy};
use tokenkeeper_core::{Account, AccountState};

pub use tokenkeeper_core::pool::{Cooldown, COOLDOWN_PREFIX, DEFAULT_POOL};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain counters and maps: a panic elsewhere leaves nothing half-done that matters.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What this process knows about one account.
#[derive(Debug, Default)]
pub(crate) struct Runtime {
    pub cooldowns: Vec<Cooldown>,
    pub utilization: Option<f64>,
    pub started: u64,
    pub in_flight: u64,
    pub ok: u64,
    pub errors: HashMap<&'static str, u64>,
    pub tokens: crate::scan::Tokens,
    pub last_used: Option<DateTime<Utc>>,
    pub state: Option<AccountState>,
}

/// One account of a pool, as a request sees it.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub account: Arc<Account>,
    pub priority: i32,
    pub weight: u32,
    /// Position in the pool's configuration (ties of `fill_first`).
    pub index: usize,
}

/// A pool with its strategy and its memory (round-robin weights, sticky sessions).
#[derive(Debug)]
pub(crate) struct Pool {
    pub name: String,
    pub strategy: Strategy,
    pub sticky_ttl: Duration,
    /// `None`: every account (the implicit default pool).
    pub members: Option<Vec<PoolMember>>,
    rr: Mutex<HashMap<String, i64>>,
    sessions: Mutex<HashMap<String, (String, DateTime<Utc>)>>,
    turn: AtomicU64,
}

/// The most sticky sessions remembered per pool; the oldest are forgotten first.
const MAX_SESSIONS: usize = 100_000;

impl Pool {
    fn new(name: &str, cfg: Option<&PoolConfig>, config: &Config) -> Self {
        Pool {
            name: name.to_owned(),
            strategy: cfg.and_then(|c| c.strategy).unwrap_or(config.proxy.strategy),
            sticky_ttl: cfg.and_then(|c| c.sticky_ttl).unwrap_or(config.proxy.sticky_ttl),
            members: cfg.map(|c| c.accounts.clone()),
            rr: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            turn: AtomicU64::new(0),
        }
    }

    /// The pool's accounts that exist, from `all` (sorted by name).
    pub fn candidates(&self, all: &[Arc<Account>]) -> Vec<Candidate> {
        match &self.members {
            None => all
                .iter()
                .enumerate()
                .map(|(index, a)| Candidate { account: a.clone(), priority: 0, weight: 1, index })
                .collect(),
            Some(members) => members
                .iter()
                .enumerate()
                .filter_map(|(index, m)| {
                    let account =
                        all.binary_search_by(|a| a.name.as_str().cmp(m.account())).ok().map(|i| all[i].clone())?;
                    Some(Candidate { account, priority: m.priority(), weight: m.weight(), index })
                })
                .collect(),
        }
    }

    /// Picks one of `available` (non-empty) by the pool's strategy.
    pub fn pick(
        &self,
        available: &[&Candidate],
        session: Option<&str>,
        runtime: &HashMap<String, Runtime>,
        now: DateTime<Utc>,
    ) -> Option<String> {
        if available.is_empty() {
            return None;
        }
        let name = |c: &Candidate| c.account.name.clone();
        match self.strategy {
            Strategy::RoundRobin => Some(self.weighted_turn(available)),
            Strategy::LeastUsed => available
                .iter()
                .min_by(|a, b| {
                    let used = |c: &Candidate| {
                        runtime.get(&c.account.name).map_or(0, |r| r.started) as f64 / f64::from(c.weight)
                    };
                    used(a).total_cmp(&used(b)).then(a.index.cmp(&b.index))
                })
                .map(|c| name(c)),
            Strategy::FillFirst => available.iter().min_by_key(|c| (c.priority, c.index)).map(|c| name(c)),
            Strategy::QuotaAware => {
                // Unknown quota counts as unused: the first answer tells us more.
                let used = |c: &Candidate| runtime.get(&c.account.name).and_then(|r| r.utilization).unwrap_or(0.0);
                let best = available.iter().map(|c| used(c)).fold(f64::INFINITY, f64::min);
                let tied: Vec<&Candidate> = available.iter().copied().filter(|c| used(c) <= best + 1e-9).collect();
                Some(self.weighted_turn(&tied))
            }
            Strategy::Sticky => {
                let Some(session) = session else { return Some(self.weighted_turn(available)) };
                let ttl = tokenkeeper_core::clock::chrono_duration(self.sticky_ttl);
                let mut sessions = lock(&self.sessions);
                if let Some((bound, seen)) = sessions.get_mut(session) {
                    if now - *seen < ttl && available.iter().any(|c| c.account.name == *bound) {
                        *seen = now;
                        return Some(bound.clone());
                    }
                }
                // New, expired, or bound to an account that is unavailable now: (re)bind.
                let chosen = self.weighted_turn(available);
                if sessions.len() >= MAX_SESSIONS {
                    sessions.retain(|_, (_, seen)| now - *seen < ttl);
                    if sessions.len() >= MAX_SESSIONS {
                        sessions.clear();
                    }
                }
                sessions.insert(session.to_owned(), (chosen.clone(), now));
                Some(chosen)
            }
        }
    }

    /// Smooth weighted round robin (nginx's): each account gets `weight` turns per round,
    /// spread out rather than in runs.
    fn weighted_turn(&self, available: &[&Candidate]) -> String {
        if available.iter().all(|c| c.weight == 1) {
            // The common case without a lock: a plain turn counter.
            let i = self.turn.fetch_add(1, Ordering::Relaxed) as usize % available.len();
            return available[i].account.name.clone();
        }
        let mut current = lock(&self.rr);
        let total: i64 = available.iter().map(|c| i64::from(c.weight)).sum();
        let mut best: Option<(&Candidate, i64)> = None;
        for c in available {
            let w = current.entry(c.account.name.clone()).or_insert(0);
            *w += i64::from(c.weight);
            if best.is_none_or(|(_, bw)| *w > bw) {
                best = Some((c, *w));
            }
        }
        let Some((chosen, _)) = best else { return String::new() };
        if let Some(w) = current.get_mut(&chosen.account.name) {
            *w -= total;
        }
        chosen.account.name.clone()
    }
}

/// Every configured pool, plus the implicit `default` pool of every account when none is
/// configured under that name.
#[derive(Debug)]
pub(crate) struct Pools {
    by_name: HashMap<String, Pool>,
}

impl Pools {
    pub fn new(config: &Config) -> Self {
        let mut by_name: HashMap<String, Pool> =
            config.pools.iter().map(|(n, c)| (n.clone(), Pool::new(n, Some(c), config))).collect();
        by_name.entry(DEFAULT_POOL.to_owned()).or_insert_with(|| Pool::new(DEFAULT_POOL, None, config));
        Pools { by_name }
    }

    pub fn get(&self, name: Option<&str>) -> Option<&Pool> {
        self.by_name.get(name.unwrap_or(DEFAULT_POOL))
    }

    pub fn all(&self) -> impl Iterator<Item = &Pool> {
        let mut v: Vec<&Pool> = self.by_name.values().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v.into_iter()
    }
}

/// The per-account memory of the proxy, shared by every pool.
#[derive(Debug, Default)]
pub(crate) struct Accounts {
    pub map: Mutex<HashMap<String, Runtime>>,
}

impl Accounts {
    pub fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, Runtime>) -> R) -> R {
        f(&mut lock(&self.map))
    }

    /// Runs `f` on `name`'s entry, made when missing (the hot path allocates no key then).
    pub fn of<R>(&self, name: &str, f: impl FnOnce(&mut Runtime) -> R) -> R {
        self.with(|map| with_entry(map, name, f))
    }

    /// Replaces the cooldowns with the store's (`list_state("cooldown/")`).
    pub fn set_cooldowns(&self, stored: Vec<(String, serde_json::Value)>) {
        let mut by_account = tokenkeeper_core::pool::cooldowns_by_account(stored);
        self.with(|map| {
            for (name, rt) in map.iter_mut() {
                rt.cooldowns = by_account.remove(name).unwrap_or_default();
            }
            for (name, cooldowns) in by_account {
                map.entry(name).or_default().cooldowns = cooldowns;
            }
        });
    }
}

/// Runs `f` on `name`'s entry in `map`, made when missing: looked up by `&str` first, so
/// only a new entry allocates its key (`entry` would allocate one on every call).
pub(crate) fn with_entry<R>(map: &mut HashMap<String, Runtime>, name: &str, f: impl FnOnce(&mut Runtime) -> R) -> R {
    match map.get_mut(name) {
        Some(rt) => f(rt),
        None => f(map.entry(name.to_owned()).or_default()),
    }
}

/// Whether `account` may take a request for `family` now; the time it becomes available
/// again when it cools down.
pub(crate) fn availability(
    account: &Account,
    runtime: Option<&Runtime>,
    family: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), Option<DateTime<Utc>>> {
    if account.state == AccountState::NeedsLogin {
        return Err(None);
    }
    let until =
        runtime.into_iter().flat_map(|r| r.cooldowns.iter()).filter(|c| c.blocks(family, now)).map(|c| c.until).max();
    match until {
        Some(u) => Err(Some(u)),
        None => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokenkeeper_core::{Credential, Mode, Secret};

    fn account(name: &str) -> Arc<Account> {
        let t = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        Arc::new(Account {
            name: name.into(),
            provider: "anthropic".into(),
            mode: Mode::Own,
            credential: Credential {
                access_token: Secret::new("x"),
                refresh_token: None,
                expires_at: t,
                scopes: vec![],
                subscription_type: None,
                rate_limit_tier: None,
                provider_data: None,
            },
            version: 1,
            email: None,
            organization: None,
            binding: None,
            state: AccountState::Active,
            created_at: t,
            updated_at: t,
            last_refreshed_at: None,
            refresh_token_issued_at: None,
            usage: Default::default(),
            last_error: None,
        })
    }

    fn pool(strategy: Strategy, members: Vec<PoolMember>) -> Pool {
        let mut config = Config::default();
        config.pools.insert(
            "p".into(),
            PoolConfig { accounts: members, strategy: Some(strategy), sticky_ttl: Some(Duration::from_secs(60)) },
        );
        Pool::new("p", config.pools.get("p"), &config)
    }

    fn full(a: &str, priority: i32, weight: u32) -> PoolMember {
        PoolMember::Full { account: a.into(), priority, weight }
    }

    fn picks(p: &Pool, all: &[Arc<Account>], n: usize, rt: &HashMap<String, Runtime>) -> Vec<String> {
        let c = p.candidates(all);
        let avail: Vec<&Candidate> = c.iter().collect();
        (0..n).map(|_| p.pick(&avail, None, rt, DateTime::<Utc>::MIN_UTC).unwrap()).collect()
    }

    #[test]
    fn weighted_round_robin_is_smooth() {
        let all = vec![account("a"), account("b")];
        let p = pool(Strategy::RoundRobin, vec![full("a", 0, 2), full("b", 0, 1)]);
        assert_eq!(picks(&p, &all, 6, &HashMap::new()), ["a", "b", "a", "a", "b", "a"]);
        let plain = pool(Strategy::RoundRobin, vec![PoolMember::Name("a".into()), PoolMember::Name("b".into())]);
        assert_eq!(picks(&plain, &all, 4, &HashMap::new()), ["a", "b", "a", "b"]);
    }

    #[test]
    fn fill_first_least_used_and_quota_aware() {
        let all = vec![account("a"), account("b"), account("c")];
        let p = pool(Strategy::FillFirst, vec![full("a", 2, 1), full("b", 1, 1), full("c", 1, 1)]);
        assert_eq!(picks(&p, &all, 2, &HashMap::new()), ["b", "b"]);
        let mut rt: HashMap<String, Runtime> = HashMap::new();
        rt.entry("a".into()).or_default().started = 5;
        rt.entry("b".into()).or_default().started = 1;
        rt.entry("c".into()).or_default().started = 3;
        let p = pool(Strategy::LeastUsed, vec![full("a", 0, 1), full("b", 0, 1), full("c", 0, 4)]);
        assert_eq!(picks(&p, &all, 1, &rt), ["c"], "3 requests over weight 4 is the least used");
        rt.get_mut("a").unwrap().utilization = Some(0.9);
        rt.get_mut("b").unwrap().utilization = Some(0.2);
        rt.get_mut("c").unwrap().utilization = Some(0.5);
        let p = pool(Strategy::QuotaAware, vec![full("a", 0, 1), full("b", 0, 1), full("c", 0, 1)]);
        assert_eq!(picks(&p, &all, 2, &rt), ["b", "b"]);
    }

    #[test]
    fn sticky_keeps_then_rebinds_when_unavailable_or_expired() {
        let all = vec![account("a"), account("b")];
        let p = pool(Strategy::Sticky, vec![PoolMember::Name("a".into()), PoolMember::Name("b".into())]);
        let c = p.candidates(&all);
        let both: Vec<&Candidate> = c.iter().collect();
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let rt = HashMap::new();
        let first = p.pick(&both, Some("s1"), &rt, t0).unwrap();
        for i in 0..5 {
            assert_eq!(p.pick(&both, Some("s1"), &rt, t0 + chrono::Duration::seconds(i)).unwrap(), first);
        }
        let other: Vec<&Candidate> = c.iter().filter(|x| x.account.name != first).collect();
        let rebound = p.pick(&other, Some("s1"), &rt, t0).unwrap();
        assert_ne!(rebound, first);
        assert_eq!(p.pick(&both, Some("s1"), &rt, t0).unwrap(), rebound, "the session stays on its new account");
        let later = t0 + chrono::Duration::seconds(3600);
        let _ = p.pick(&both, Some("s1"), &rt, later);
    }

    #[test]
    fn cooldowns_block_by_family_and_end_by_themselves() {
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let a = account("a");
        let mut rt = Runtime::default();
        rt.cooldowns.push(Cooldown {
            until: t0 + chrono::Duration::seconds(60),
            family: Some("opus".into()),
            reason: String::new(),
        });
        assert_eq!(availability(&a, Some(&rt), Some("opus"), t0), Err(Some(t0 + chrono::Duration::seconds(60))));
        assert_eq!(availability(&a, Some(&rt), Some("sonnet"), t0), Ok(()));
        assert_eq!(availability(&a, Some(&rt), Some("opus"), t0 + chrono::Duration::seconds(60)), Ok(()));
        assert_eq!(Cooldown::key("a", Some("opus")), "cooldown/a/opus");
    }
}
