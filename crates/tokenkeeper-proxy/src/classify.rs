//! What an upstream answer means for the pool: pass it on, or fail over (and why), and what
//! its `anthropic-ratelimit-unified-*` headers say about the account's quota.

use chrono::{DateTime, Utc};
use hyper::header::HeaderMap;
use hyper::StatusCode;

/// The class of an upstream answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Anything the client should see as it is (2xx, and client errors like 400 or 404).
    Pass,
    /// 401: the token was refused; refresh once and retry on the same account.
    Unauthorized,
    /// 429 with rate-limit headers: the account cools down until `until`, for `family` (the
    /// model family the limit applies to) or the whole account.
    RateLimited {
        /// When the limit resets (already capped).
        until: DateTime<Utc>,
        /// `opus`/`sonnet`/… when the headers name a per-model limit.
        family: Option<String>,
    },
    /// 429 without rate-limit headers: back off briefly for this request only.
    RateLimitedBare,
    /// 529 overloaded, or a 5xx: another account may do; no cooldown.
    Overloaded,
}

/// The error class names used in metrics and the snapshot.
pub const CLASSES: [&str; 7] =
    ["unauthorized", "rate_limited", "rate_limited_bare", "overloaded", "network", "broken_stream", "needs_login"];

impl Verdict {
    /// The metrics class of a failure (`None` for [`Verdict::Pass`]).
    pub fn class(&self) -> Option<&'static str> {
        match self {
            Verdict::Pass => None,
            Verdict::Unauthorized => Some("unauthorized"),
            Verdict::RateLimited { .. } => Some("rate_limited"),
            Verdict::RateLimitedBare => Some("rate_limited_bare"),
            Verdict::Overloaded => Some("overloaded"),
        }
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

fn unix(h: &HeaderMap, name: &str) -> Option<DateTime<Utc>> {
    let v = header(h, name)?;
    // Seconds since the epoch (what Anthropic sends); RFC 3339 accepted too.
    v.parse::<i64>()
        .ok()
        .and_then(|s| DateTime::from_timestamp(s, 0))
        .or_else(|| DateTime::parse_from_rfc3339(v).ok().map(|d| d.with_timezone(&Utc)))
}

/// The model family of a model id (`claude-opus-4-1` → `opus`), for per-family cooldowns.
pub fn family(model: &str) -> Option<&'static str> {
    ["opus", "sonnet", "haiku"].into_iter().find(|f| model.contains(f))
}

/// Classifies an upstream answer by status and headers; `now` and `cap` bound a cooldown.
pub fn classify(status: StatusCode, h: &HeaderMap, now: DateTime<Utc>, cap: chrono::Duration) -> Verdict {
    match status.as_u16() {
        401 => Verdict::Unauthorized,
        429 => match reset_of(h, now) {
            Some(until) => Verdict::RateLimited { until: until.min(now + cap), family: limited_family(h) },
            None => Verdict::RateLimitedBare,
        },
        500 | 502 | 503 | 504 | 529 => Verdict::Overloaded,
        _ => Verdict::Pass,
    }
}

/// The latest reset that applies: the unified reset, each rejected window's reset, and
/// `Retry-After` (seconds, or an HTTP date). `None` when the answer carries none of them.
pub fn reset_of(h: &HeaderMap, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let mut resets: Vec<DateTime<Utc>> = Vec::new();
    resets.extend(unix(h, "anthropic-ratelimit-unified-reset"));
    for (name, _) in h.iter() {
        let n = name.as_str();
        if let Some(window) = n.strip_prefix("anthropic-ratelimit-unified-").and_then(|r| r.strip_suffix("-status")) {
            if header(h, n) == Some("rejected") {
                resets.extend(unix(h, &format!("anthropic-ratelimit-unified-{window}-reset")));
            }
        }
    }
    if let Some(v) = header(h, "retry-after") {
        if let Ok(secs) = v.parse::<i64>() {
            resets.push(now + chrono::Duration::seconds(secs.max(0)));
        } else if let Ok(d) = DateTime::parse_from_rfc2822(v) {
            resets.push(d.with_timezone(&Utc));
        }
    }
    resets.into_iter().max().filter(|r| *r > now - chrono::Duration::seconds(1)).map(|r| r.max(now))
}

/// The model family a 429 is limited to, when its headers say so (a representative claim or
/// a rejected window naming `opus`/`sonnet`); `None`: the whole account.
fn limited_family(h: &HeaderMap) -> Option<String> {
    if let Some(claim) = header(h, "anthropic-ratelimit-unified-representative-claim") {
        return family(claim).map(str::to_owned);
    }
    for (name, value) in h.iter() {
        let n = name.as_str();
        if n.starts_with("anthropic-ratelimit-unified-") && n.ends_with("-status") && value == "rejected" {
            if let Some(f) = family(n) {
                return Some(f.to_owned());
            }
        }
    }
    None
}

/// Used share of the tightest window the headers report (0..=1), for `quota_aware`.
pub fn utilization(h: &HeaderMap) -> Option<f64> {
    let mut worst: Option<f64> = None;
    for (name, value) in h.iter() {
        let n = name.as_str();
        if n.starts_with("anthropic-ratelimit-unified-") && n.ends_with("-utilization") {
            if let Some(u) = value.to_str().ok().and_then(|v| v.trim().parse::<f64>().ok()) {
                worst = Some(worst.map_or(u, |w| w.max(u)));
            }
        }
    }
    worst
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use hyper::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    const CAP: chrono::Duration = chrono::Duration::days(8);

    #[test]
    fn statuses() {
        let none = HeaderMap::new();
        assert_eq!(classify(StatusCode::OK, &none, t(0), CAP), Verdict::Pass);
        assert_eq!(classify(StatusCode::BAD_REQUEST, &none, t(0), CAP), Verdict::Pass);
        assert_eq!(classify(StatusCode::UNAUTHORIZED, &none, t(0), CAP), Verdict::Unauthorized);
        assert_eq!(classify(StatusCode::TOO_MANY_REQUESTS, &none, t(0), CAP), Verdict::RateLimitedBare);
        assert_eq!(classify(StatusCode::from_u16(529).unwrap(), &none, t(0), CAP), Verdict::Overloaded);
        assert_eq!(classify(StatusCode::BAD_GATEWAY, &none, t(0), CAP), Verdict::Overloaded);
    }

    #[test]
    fn the_latest_applicable_reset_wins_and_is_capped() {
        let h = headers(&[
            ("anthropic-ratelimit-unified-reset", &(1_800_000_000i64 + 600).to_string()),
            ("anthropic-ratelimit-unified-7d-status", "rejected"),
            ("anthropic-ratelimit-unified-7d-reset", &(1_800_000_000i64 + 7200).to_string()),
            ("anthropic-ratelimit-unified-5h-status", "allowed"),
            ("anthropic-ratelimit-unified-5h-reset", &(1_800_000_000i64 + 99_999).to_string()),
            ("retry-after", "60"),
        ]);
        let v = classify(StatusCode::TOO_MANY_REQUESTS, &h, t(0), CAP);
        assert_eq!(v, Verdict::RateLimited { until: t(7200), family: None });
        let capped = classify(StatusCode::TOO_MANY_REQUESTS, &h, t(0), chrono::Duration::seconds(100));
        assert_eq!(capped, Verdict::RateLimited { until: t(100), family: None });
        let only_retry = headers(&[("retry-after", "30")]);
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, &only_retry, t(0), CAP),
            Verdict::RateLimited { until: t(30), family: None }
        );
    }

    #[test]
    fn per_family_limits_and_utilization() {
        let h = headers(&[
            ("anthropic-ratelimit-unified-representative-claim", "seven_day_opus"),
            ("anthropic-ratelimit-unified-reset", &(1_800_000_000i64 + 60).to_string()),
        ]);
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, &h, t(0), CAP),
            Verdict::RateLimited { until: t(60), family: Some("opus".into()) }
        );
        let u = headers(&[
            ("anthropic-ratelimit-unified-5h-utilization", "0.25"),
            ("anthropic-ratelimit-unified-7d-utilization", "0.5"),
        ]);
        assert_eq!(utilization(&u), Some(0.5));
        assert_eq!(family("claude-sonnet-4-5"), Some("sonnet"));
        assert_eq!(family("gpt"), None);
    }
}
