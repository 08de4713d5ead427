//! Who is on the other end of a request, and how often they got a secret wrong: the one
//! client-address extractor ([`ClientAddr`]) and the one per-address failure limit
//! ([`FailureLimiter`]) shared by the API's key check, the proxy's key check and the web page's
//! sign-in.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::Extensions;
use chrono::{DateTime, Utc};

use tokenkeeper_core::clock::chrono_duration;

/// Where a request came from: the TCP peer's IP as the listener saw it, or the Unix socket.
///
/// Headers such as `X-Forwarded-For` are not trusted: anyone can send them. Without connection
/// info (the Unix socket, a router served without `into_make_service_with_connect_info`, a
/// `Router::oneshot` test) every client is [`ClientAddr::Local`] and so shares one budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientAddr {
    /// A TCP peer.
    Ip(IpAddr),
    /// The Unix socket (or a transport without addresses).
    Local,
}

impl ClientAddr {
    /// The address of the request whose extensions are `extensions` (what the listener put
    /// there as `ConnectInfo<SocketAddr>`).
    pub fn of(extensions: &Extensions) -> ClientAddr {
        extensions.get::<ConnectInfo<SocketAddr>>().map_or(ClientAddr::Local, |c| ClientAddr::Ip(c.0.ip()))
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientAddr::Ip(ip) => ip.fmt(f),
            ClientAddr::Local => f.write_str("local"),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr::of(&parts.extensions))
    }
}

/// An address is refused for now; it may try again after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many failed attempts from this address; try again in {} s", retry_after.as_secs().max(1))]
pub struct Blocked {
    /// How long until attempts from the address are accepted again.
    pub retry_after: Duration,
}

#[derive(Debug, Default)]
struct Failures {
    /// When the failures still inside the window happened, oldest first.
    at: VecDeque<DateTime<Utc>>,
    blocked_until: Option<DateTime<Utc>>,
}

/// Counts failed attempts per client address: once an address fails `max_failures` times
/// within a sliding `window` it is refused for `block_for`, after which its count starts
/// again; a success forgets its failures. Time is whatever `now` the caller passes (the
/// keeper's injected clock), so tests drive it with a manual clock. At most
/// [`FailureLimiter::MAX_TRACKED`] addresses are remembered: past that, addresses with no
/// failure in the window and no block are forgotten.
///
/// Why not `governor` (which the proxy uses for requests per minute): it is a GCRA rate
/// limiter, which smooths a quota so that after a burst one more attempt is allowed every
/// `window / max_failures`; we need "refused for `block_for` after N failures, then a fresh
/// count", counted on failures only (governor consumes a cell on every check and has no
/// look-without-consuming), on the keeper's chrono clock (governor's clocks are its own
/// monotonic instants), with a hard bound on the map (its keyed state only shrinks when
/// `retain_recent` is called). Adapting it would keep this map anyway.
#[derive(Debug)]
pub struct FailureLimiter {
    by_addr: Mutex<HashMap<ClientAddr, Failures>>,
    max_failures: usize,
    window: chrono::Duration,
    block_for: chrono::Duration,
}

impl FailureLimiter {
    /// How many addresses the limiter remembers before it forgets the quiet ones.
    pub const MAX_TRACKED: usize = 10_000;

    /// A limiter that refuses an address for `block_for` once it failed `max_failures` times
    /// (at least 1) within `window`.
    pub fn new(max_failures: usize, window: Duration, block_for: Duration) -> Self {
        Self {
            by_addr: Mutex::new(HashMap::new()),
            max_failures: max_failures.max(1),
            window: chrono_duration(window),
            block_for: chrono_duration(block_for),
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<ClientAddr, Failures>> {
        self.by_addr.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fails while `addr` is refused, saying for how long.
    pub fn check(&self, addr: ClientAddr, now: DateTime<Utc>) -> Result<(), Blocked> {
        let mut map = self.map();
        if let Some(f) = map.get_mut(&addr) {
            if let Some(until) = f.blocked_until {
                if until > now {
                    let retry_after = (until - now).to_std().unwrap_or_default();
                    return Err(Blocked { retry_after });
                }
                f.blocked_until = None;
                f.at.clear();
            }
        }
        Ok(())
    }

    /// Records a failure from `addr` at `now`; refuses the address once it failed too often.
    pub fn fail(&self, addr: ClientAddr, now: DateTime<Utc>) {
        let mut map = self.map();
        let window = self.window;
        if map.len() >= Self::MAX_TRACKED {
            map.retain(|_, f| {
                f.blocked_until.is_some_and(|u| u > now) || f.at.back().is_some_and(|t| now - *t < window)
            });
        }
        let f = map.entry(addr).or_default();
        f.at.push_back(now);
        while f.at.front().is_some_and(|t| now - *t >= window) {
            f.at.pop_front();
        }
        if f.at.len() >= self.max_failures {
            tracing::warn!(client = %addr, failures = f.at.len(), block_seconds = self.block_for.num_seconds(),
                "too many failed attempts; refusing this address for a while");
            f.blocked_until = Some(now + self.block_for);
        }
    }

    /// Forgets `addr`'s failures (after it proved it knows the secret).
    pub fn succeed(&self, addr: ClientAddr) {
        self.map().remove(&addr);
    }

    /// How many addresses are remembered now.
    pub fn tracked(&self) -> usize {
        self.map().len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn success_forgets_and_the_map_stays_bounded() {
        let l = FailureLimiter::new(2, Duration::from_secs(60), Duration::from_secs(60));
        let a = ClientAddr::Local;
        l.fail(a, t(0));
        l.succeed(a);
        l.fail(a, t(1));
        assert!(l.check(a, t(1)).is_ok(), "a success resets the count");
        l.fail(a, t(2));
        let blocked = l.check(a, t(2)).unwrap_err();
        assert_eq!(blocked.retry_after, Duration::from_secs(60));
        assert!(blocked.to_string().contains("60 s"), "{blocked}");

        let l = FailureLimiter::new(5, Duration::from_secs(60), Duration::from_secs(60));
        for i in 0..FailureLimiter::MAX_TRACKED as u32 {
            l.fail(ClientAddr::Ip(IpAddr::from(i.to_be_bytes())), t(0));
        }
        assert_eq!(l.tracked(), FailureLimiter::MAX_TRACKED);
        // A minute later the old failures are out of the window and are forgotten.
        l.fail(ClientAddr::Local, t(61));
        assert_eq!(l.tracked(), 1);
    }

    #[test]
    fn the_address_comes_from_connect_info_or_is_local() {
        let mut ext = Extensions::new();
        assert_eq!(ClientAddr::of(&ext), ClientAddr::Local);
        assert_eq!(ClientAddr::Local.to_string(), "local");
        ext.insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 7], 4711))));
        let addr = ClientAddr::of(&ext);
        assert_eq!(addr, ClientAddr::Ip("192.0.2.7".parse().unwrap()));
        assert_eq!(addr.to_string(), "192.0.2.7");
    }
}
