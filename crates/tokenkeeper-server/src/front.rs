//! A handler served ahead of the router: every request whose path starts with its prefix goes
//! straight to it, without the router's routing, layers and extensions. The API proxy's `/v1/`
//! is one (`serve` mounts it with [`crate::AppState::with_front`], or alone on
//! `[proxy] listen` with [`crate::listen::serve_front`]).
//!
//! Why not a route: the router's work per request (matching, a boxed clone of the route's
//! service per layer, a boxed body per layer, the path parameters and their extensions) was
//! about twenty of the sixty allocations of a proxied request (measured with a `malloc`
//! probe; docs/BENCHMARKS.md). A front gets what such a route got and nothing else: the
//! client's address, and the body under `[server] body_read_timeout` (the longest pause while
//! it arrives); no whole-request timeout, so its answers last as long as they last (streams).
//! It bounds everything else itself (body size, upstream timeouts).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::response::Response;
use hyper::body::Incoming;

use crate::client::ClientAddr;

/// A front's request body: the connection's, under `[server] body_read_timeout`.
pub type FrontBody = tower_http::timeout::TimeoutBody<Incoming>;

type Handler =
    dyn Fn(hyper::Request<FrontBody>, ClientAddr) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send + Sync;

/// A handler for the requests whose path starts with a prefix (cheap to clone: one `Arc`).
#[derive(Clone)]
pub struct Front {
    prefix: &'static str,
    handler: Arc<Handler>,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl Front {
    /// `handler` for every request whose path starts with `prefix` (such as `/v1/`).
    pub fn new<F, Fut>(prefix: &'static str, handler: F) -> Self
    where
        F: Fn(hyper::Request<FrontBody>, ClientAddr) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        Front { prefix, handler: Arc::new(move |req, addr| Box::pin(handler(req, addr))) }
    }

    /// Whether a request for `path` is this front's.
    pub fn claims(&self, path: &str) -> bool {
        path.starts_with(self.prefix)
    }

    /// Answers `req` (its body already under the body timeout).
    pub fn call(
        &self,
        req: hyper::Request<FrontBody>,
        addr: ClientAddr,
    ) -> Pin<Box<dyn Future<Output = Response> + Send>> {
        (self.handler)(req, addr)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_front_claims_the_paths_under_its_prefix_only() {
        let front = Front::new("/v1/", |_, _| async { Response::new(axum::body::Body::empty()) });
        assert!(front.claims("/v1/messages"));
        assert!(front.claims("/v1/messages/count_tokens"));
        assert!(!front.claims("/v1"), "the prefix itself is not a proxied path");
        assert!(!front.claims("/oauth/status"));
        assert!(!front.claims("/health"));
    }
}
