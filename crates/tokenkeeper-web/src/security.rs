//! What keeps the page safe besides the session: the cross-site guard on every state-changing
//! request, security headers on every response, and the per-address limit on failed sign-ins.
//! Secrets are compared with the project's one length-hiding comparison,
//! [`tokenkeeper_core::constant_time_eq`], shared with the API.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;

use tokenkeeper_server::client::FailureLimiter;

use crate::WebState;

/// Failed sign-ins allowed per client address within [`SIGN_IN_WINDOW`].
pub const MAX_FAILED_SIGN_INS: u32 = 5;
/// The window over which failed sign-ins are counted; a blocked address may try again when it
/// has passed.
pub const SIGN_IN_WINDOW: Duration = Duration::from_secs(15 * 60);

/// The sign-in limit: [`MAX_FAILED_SIGN_INS`] wrong admin tokens from one address within
/// [`SIGN_IN_WINDOW`] refuse it for [`SIGN_IN_WINDOW`]; a right one forgets its failures. The
/// same limiter type as the API's and the proxy's key checks, with the page's numbers.
pub fn sign_in_limiter() -> FailureLimiter {
    FailureLimiter::new(MAX_FAILED_SIGN_INS as usize, SIGN_IN_WINDOW, SIGN_IN_WINDOW)
}

/// Why a request was taken for cross-site.
///
/// Browsers send `Sec-Fetch-Site` on every request and no page can forge it, so when it is
/// there it decides alone: `same-origin` (or `none`, typed by the user) passes, anything else,
/// `same-site` included (a sibling subdomain may belong to someone else), is refused. Trusting
/// it over `Origin` keeps the page usable behind a reverse proxy that rewrites `Host`. Older
/// browsers without it are judged by `Origin` against `Host`. Clients that send neither are not
/// browsers, carry no victim's cookies, and still need the CSRF token.
fn cross_site(headers: &HeaderMap) -> Option<&'static str> {
    if let Some(site) = headers.get("sec-fetch-site") {
        return match site.to_str().unwrap_or_default() {
            "same-origin" | "none" => None,
            _ => Some("the browser said the form came from another site"),
        };
    }
    let origin = headers.get(header::ORIGIN)?.to_str().unwrap_or_default();
    if origin == "null" {
        return Some("the form's origin is hidden (null)");
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    let authority = origin.split_once("://").map(|(_, rest)| rest).unwrap_or_default();
    if host.is_empty() || !authority.eq_ignore_ascii_case(host) {
        return Some("the form came from another origin");
    }
    None
}

/// Middleware on every route of the page: refuses state-changing requests that a browser marks
/// as cross-site (before any handler or body parsing runs), and adds the security headers.
pub async fn guard(State(state): State<WebState>, req: Request, next: Next) -> Response {
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let mut response = match (safe, cross_site(req.headers())) {
        (false, Some(why)) => {
            tracing::warn!(method = %req.method(), path = %req.uri().path(), reason = why, "cross-site request refused");
            crate::pages::refused(
                &state,
                "This form was sent from another site, so it was refused. Open tokenkeeper's page directly and try again.",
            )
        }
        _ => next.run(req).await,
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, state.templates().content_security_policy().clone());
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use chrono::Utc;
    use tokenkeeper_core::{Clock, ManualClock};
    use tokenkeeper_server::client::ClientAddr;

    #[test]
    fn limiter_blocks_after_the_budget_and_forgives_after_the_window() {
        let clock = ManualClock::new(Utc::now());
        let limiter = sign_in_limiter();
        let ip = ClientAddr::Ip("192.0.2.1".parse().unwrap());
        let other = ClientAddr::Ip("192.0.2.2".parse().unwrap());
        for _ in 0..MAX_FAILED_SIGN_INS {
            assert!(limiter.check(ip, clock.now()).is_ok());
            limiter.fail(ip, clock.now());
        }
        let wait = limiter.check(ip, clock.now()).unwrap_err().retry_after;
        assert!(wait <= SIGN_IN_WINDOW && wait > Duration::from_secs(60), "{wait:?}");
        assert!(limiter.check(other, clock.now()).is_ok(), "another address keeps its own budget");
        clock.advance(chrono::Duration::from_std(SIGN_IN_WINDOW).unwrap());
        assert!(limiter.check(ip, clock.now()).is_ok());
    }

    #[test]
    fn cross_site_reads_fetch_metadata_and_origin() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("keeper.example:8377"));
        assert_eq!(cross_site(&h), None, "not a browser: left to the CSRF token");
        // Older browsers: Origin against Host.
        h.insert(header::ORIGIN, HeaderValue::from_static("http://keeper.example:8377"));
        assert_eq!(cross_site(&h), None);
        h.insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(cross_site(&h).is_some());
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(cross_site(&h).is_some(), "a hidden origin");
        // Fetch metadata decides when present (a proxy may have rewritten Host).
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert_eq!(cross_site(&h), None);
        h.insert(header::ORIGIN, HeaderValue::from_static("https://keeper.example"));
        assert_eq!(cross_site(&h), None);
        for other in ["same-site", "cross-site", "garbage"] {
            h.insert("sec-fetch-site", HeaderValue::from_str(other).unwrap());
            assert!(cross_site(&h).is_some(), "{other}");
        }
    }
}
