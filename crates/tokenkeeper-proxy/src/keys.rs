//! Proxy keys: API keys with the `proxy` scope, presented as `x-api-key` (what
//! `ANTHROPIC_API_KEY` makes clients send) or `Authorization: Bearer` (`ANTHROPIC_AUTH_TOKEN`).
//! Looked up by hash in memory while the keeper follows the change feed (a revocation by any
//! process clears the memory), with the server's failure limit per client address, and the
//! per-key limits (requests per minute by `governor`, requests in flight by a semaphore).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use tokenkeeper_core::config::{KeyLimits, ProxyConfig};
use tokenkeeper_core::store::ApiKey;
use tokenkeeper_server::auth::{hash_key, ClientAddr, FailureLimiter, Principal, Scope, KEY_PREFIX};

use crate::Inner;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why a request's key was not accepted; each becomes an Anthropic-shaped error.
#[derive(Debug)]
pub(crate) enum KeyRefusal {
    Missing,
    Invalid,
    NoScope,
    Blocked(std::time::Duration),
    RateLimited(std::time::Duration),
    Concurrency,
    Store,
}

struct Limits {
    rate: Option<DefaultDirectRateLimiter>,
    concurrency: Option<Arc<Semaphore>>,
}

/// A stored key as admission needs it: built once when the key is first seen and shared by
/// every request that presents it (no per-request copy of the stored record).
pub(crate) struct Known {
    pub principal: Principal,
    pub key_id: String,
    /// The stored hash, compared with the presented key's again on every use.
    hash: String,
    revoked: bool,
    limits: Arc<Limits>,
}

pub(crate) struct KeyCache {
    by_hash: Mutex<(u64, HashMap<String, Arc<Known>>)>,
    limiter: FailureLimiter,
    limits: Mutex<HashMap<String, Arc<Limits>>>,
}

/// An accepted key: who, and the permit that holds its concurrency slot until the response
/// ends.
pub(crate) struct Admitted {
    pub key: Arc<Known>,
    pub permit: Option<OwnedSemaphorePermit>,
}

/// The key a request presents: `x-api-key`, else `Authorization: Bearer`.
pub(crate) fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(k) = headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim).filter(|k| !k.is_empty()) {
        return Some(k);
    }
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim()).filter(|t| !t.is_empty())
}

impl KeyCache {
    pub fn new(max_failures: usize) -> Self {
        Self {
            by_hash: Mutex::new((u64::MAX, HashMap::new())),
            limiter: FailureLimiter::for_api(max_failures),
            limits: Mutex::new(HashMap::new()),
        }
    }

    async fn find(&self, inner: &Inner, hash: &str) -> Result<Option<Arc<Known>>, KeyRefusal> {
        let generation = inner.keeper.keys_generation();
        if let Some(g) = generation {
            let mut cache = lock(&self.by_hash);
            if cache.0 != g {
                cache.1.clear();
                cache.0 = g;
            }
            if let Some(k) = cache.1.get(hash) {
                return Ok(Some(k.clone()));
            }
        }
        let found = inner.keeper.store().find_api_key(hash).await.map_err(|e| {
            tracing::warn!(error = %e, "cannot look up a proxy key");
            KeyRefusal::Store
        })?;
        let found = found.map(|k| {
            Arc::new(Known {
                principal: Principal::from_key(&k),
                limits: self.limits_of(&k, &inner.config),
                revoked: k.revoked_at.is_some(),
                key_id: k.id,
                hash: k.hash,
            })
        });
        if let (Some(g), Some(k)) = (generation, &found) {
            let mut cache = lock(&self.by_hash);
            // A change during the read starts a newer generation: keep nothing then.
            if cache.0 == g && inner.keeper.keys_generation() == Some(g) {
                cache.1.insert(hash.to_owned(), k.clone());
            }
        }
        Ok(found)
    }

    fn limits_of(&self, key: &ApiKey, config: &ProxyConfig) -> Arc<Limits> {
        let mut all = lock(&self.limits);
        if let Some(l) = all.get(&key.id) {
            return l.clone();
        }
        let KeyLimits { requests_per_minute, concurrent_requests } =
            config.key_limits.get(&key.name).cloned().unwrap_or(KeyLimits {
                requests_per_minute: config.requests_per_minute,
                concurrent_requests: config.concurrent_requests,
            });
        let limits = Arc::new(Limits {
            rate: NonZeroU32::new(requests_per_minute).map(|n| RateLimiter::direct(Quota::per_minute(n))),
            concurrency: (concurrent_requests > 0)
                .then(|| Arc::new(Semaphore::new(usize::try_from(concurrent_requests).unwrap_or(usize::MAX)))),
        });
        all.insert(key.id.clone(), limits.clone());
        limits
    }

    /// Authenticates and admits a request, or says why not.
    pub async fn admit(&self, inner: &Inner, headers: &HeaderMap, addr: ClientAddr) -> Result<Admitted, KeyRefusal> {
        let now = inner.keeper.clock().now();
        let Some(presented) = presented(headers) else { return Err(KeyRefusal::Missing) };
        if let Err(blocked) = self.limiter.check(addr, now) {
            return Err(KeyRefusal::Blocked(blocked.retry_after));
        }
        let found = if presented.starts_with(KEY_PREFIX) {
            let hash = hash_key(presented);
            self.find(inner, &hash).await?.filter(|k| !k.revoked && k.hash == hash)
        } else {
            None
        };
        let Some(key) = found else {
            self.limiter.fail(addr, now);
            tracing::info!(client = ?addr, "proxy request with an invalid key");
            return Err(KeyRefusal::Invalid);
        };
        if !key.principal.has(Scope::Proxy) {
            return Err(KeyRefusal::NoScope);
        }
        let limits = &key.limits;
        if let Some(rate) = &limits.rate {
            if let Err(not_until) = rate.check() {
                let wait =
                    not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
                return Err(KeyRefusal::RateLimited(wait));
            }
        }
        let permit = match &limits.concurrency {
            Some(s) => Some(s.clone().try_acquire_owned().map_err(|_| KeyRefusal::Concurrency)?),
            None => None,
        };
        Ok(Admitted { key, permit })
    }
}
