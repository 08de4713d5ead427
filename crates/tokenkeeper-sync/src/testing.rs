//! Test support, compiled for this crate's tests and with the `testing` feature: an [`Account`]
//! to deliver, the same fixture for every test of sinks and renderers.

use chrono::{DateTime, Utc};
use tokenkeeper_core::{Account, AccountState, Credential, Mode, Secret, Usage};

/// An active `own` account `name` of provider `anthropic` with access token `token`, refresh
/// token `sk-ant-ort01-REFRESH`, scope `user:inference` and version 1, expiring (and created)
/// at 2027-01-15T08:00:00Z; tests change the fields they care about.
pub fn account(name: &str, token: &str) -> Account {
    // A constant in range: `from_timestamp` cannot fail here, the default is never taken.
    let t = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap_or_default();
    Account {
        name: name.into(),
        provider: "anthropic".into(),
        mode: Mode::Own,
        credential: Credential {
            access_token: Secret::new(token),
            refresh_token: Some(Secret::new("sk-ant-ort01-REFRESH")),
            expires_at: t,
            scopes: vec!["user:inference".into()],
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
        usage: Usage::default(),
        last_error: None,
    }
}
