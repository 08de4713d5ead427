//! `GET /metrics`: Prometheus (OpenMetrics) text, built fresh from the store, the keeper's
//! counters and the sinks on every scrape, so what it shows is what `status` shows.
//!
//! Labels hold account and sink names and level words only, never a token.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use tokenkeeper_core::status::Level;

use crate::auth::{scope, Authed};
use crate::error::ApiError;
use crate::state::AppState;

/// The crate `/metrics` is built with, for components that register families of their own
/// through [`crate::AppState::with_metrics`] (the same version, so the types match).
pub use prometheus_client;

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccountLabels {
    account: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    account: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    account: String,
    result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    account: String,
    provider: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    replica: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    account: String,
    sink: String,
}

/// Renders every metric as OpenMetrics text: the server's families and those the
/// [`crate::RegistryMetrics`] hooks register, encoded by one registry, then `# EOF`.
pub async fn render(st: &AppState) -> Result<String, ApiError> {
    let expires = Family::<AccountLabels, Gauge>::default();
    let rt_age = Family::<AccountLabels, Gauge>::default();
    let status = Family::<StatusLabels, Gauge>::default();
    let info = Family::<InfoLabels, Gauge>::default();
    let attempts = Family::<ResultLabels, Counter>::default();
    let sink_writes = Family::<SinkLabels, Counter>::default();
    let sink_failures = Family::<SinkLabels, Counter>::default();

    let accounts = st.keeper.store().list_accounts().await?;
    let sinks = st.sink_statuses();
    for a in &accounts {
        let view = st.view_with(a, &sinks).view;
        let labels = AccountLabels { account: a.name.clone() };
        info.get_or_create(&InfoLabels { account: a.name.clone(), provider: a.provider.clone() }).set(1);
        expires.get_or_create(&labels).set(view.expires_in_seconds);
        if let Some(age) = view.refresh_token_age_seconds {
            rt_age.get_or_create(&labels).set(age);
        }
        for level in Level::ALL {
            let l = StatusLabels { account: a.name.clone(), status: level.as_str().to_owned() };
            status.get_or_create(&l).set(i64::from(level == view.level));
        }
    }
    for (account, result, n) in st.keeper.refresh_counters() {
        attempts.get_or_create(&ResultLabels { account, result: result.to_owned() }).inc_by(n);
    }
    for s in &sinks {
        let l = SinkLabels { account: s.account.clone(), sink: s.name.clone() };
        sink_writes.get_or_create(&l).inc_by(s.writes);
        sink_failures.get_or_create(&l).inc_by(s.failures);
    }

    let mut registry = Registry::default();
    registry.register(
        "tokenkeeper_access_token_expires_in_seconds",
        "Seconds until the access token expires (negative once expired)",
        expires,
    );
    registry.register(
        "tokenkeeper_refresh_token_age_seconds",
        "Age of the refresh token in seconds (absent for tokens without one)",
        rt_age,
    );
    registry.register(
        "tokenkeeper_account_status",
        "1 for the account's current status level, 0 for the others",
        status,
    );
    registry.register(
        "tokenkeeper_account_info",
        "Always 1; its labels name each account's provider (join on `account`)",
        info,
    );
    registry.register(
        "tokenkeeper_refresh_attempts",
        "Refresh attempts that reached the provider since start, by result",
        attempts,
    );
    registry.register("tokenkeeper_sink_writes", "Successful sink writes since start", sink_writes);
    registry.register("tokenkeeper_sink_failures", "Failed sink deliveries since start", sink_failures);

    if let Some(r) = &st.replica {
        let leader = Family::<ReplicaLabels, Gauge>::default();
        leader.get_or_create(&ReplicaLabels { replica: r.id.clone() }).set(i64::from(*r.leading.borrow()));
        registry.register(
            "tokenkeeper_leader",
            "1 while this replica leads the installation (scheduler, alerts, leader-only sinks), else 0",
            leader,
        );
    }

    for hook in &st.registry_metrics {
        hook(&mut registry);
    }

    let mut out = String::new();
    encode_registry(&mut out, &registry).map_err(ApiError::Metrics)?;
    encode_eof(&mut out).map_err(ApiError::Metrics)?;
    Ok(out)
}

/// `GET /metrics` (scope `metrics:read`).
pub async fn metrics(_auth: Authed<scope::MetricsRead>, State(st): State<AppState>) -> Result<Response, ApiError> {
    let text = render(&st).await?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}
