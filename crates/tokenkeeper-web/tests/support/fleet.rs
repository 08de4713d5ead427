//! A fleet of six accounts in known states at a known instant, for the dashboard's tests (the
//! router tests and the browser test draw the same page). Every time is relative to [`now`],
//! so each bar's width and each mark's place is a number the tests can state exactly.

use std::path::Path;

use chrono::{DateTime, Duration, Utc};

use tokenkeeper_core::config::{PoolConfig, PoolMember};
use tokenkeeper_core::store::{AccountPatch, CredentialChange, CredentialUpdate, EventKind, NewEvent, UsageRecord};
use tokenkeeper_core::{
    AccountState, Binding, BindingKind, Config, Credential, ManualClock, Mode, NewAccount, Secret, Store,
};
use tokenkeeper_web::{router, WebState};

use super::{Env, ADMIN_TOKEN};

/// The instant the fleet is drawn at: 2026-01-01T12:00:00Z.
pub fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z").unwrap().with_timezone(&Utc)
}

/// `now` shifted by `minutes`.
pub fn t(minutes: i64) -> DateTime<Utc> {
    now() + Duration::minutes(minutes)
}

fn credential(name: &str, n: u32, expires_at: DateTime<Utc>) -> Credential {
    Credential {
        access_token: Secret::new(format!("sk-ant-oat01-{name}-{n}")),
        // The same refresh token across updates, so its issue time stays what the test set.
        refresh_token: Some(Secret::new(format!("sk-ant-ort01-{name}"))),
        expires_at,
        scopes: vec!["user:inference".into(), "user:profile".into()],
        subscription_type: Some("max".into()),
        rate_limit_tier: None,
        provider_data: None,
    }
}

/// Creates `name` (ten days ago, refresh token issued `rt_issued` minutes from now) and
/// records a credential change at each `(minutes, kind)`, each giving an 8-hour token.
async fn account(
    store: &dyn Store,
    name: &str,
    mode: Mode,
    binding: Option<Binding>,
    rt_issued: i64,
    changes: &[(i64, CredentialChange)],
) {
    let created = t(-10 * 24 * 60);
    let new = NewAccount {
        name: name.into(),
        provider: "anthropic".into(),
        mode,
        credential: credential(name, 0, created + Duration::hours(8)),
        email: Some(format!("{name}@example.com")),
        organization: None,
        binding,
        refresh_token_issued_at: Some(t(rt_issued)),
    };
    let mut a = store.create_account(&new, created, CredentialChange::Imported).await.unwrap();
    for (i, (at, change)) in changes.iter().enumerate() {
        let update = CredentialUpdate {
            expected_version: a.version,
            credential: credential(name, u32::try_from(i).unwrap() + 1, t(*at) + Duration::hours(8)),
            change: *change,
            at: t(*at),
            detail: String::new(),
            email: None,
            organization: None,
        };
        a = store.update_credential(name, &update).await.unwrap();
    }
}

fn hour(account: &str, at: DateTime<Utc>, requests: u64, output_tokens: u64) -> UsageRecord {
    UsageRecord {
        account: account.into(),
        key_id: None,
        model: Some("claude-sonnet-4".into()),
        hour: UsageRecord::hour_of(at),
        requests,
        input_tokens: requests * 100,
        output_tokens,
        last_used_at: at,
        ..UsageRecord::default()
    }
}

/// Stores the fleet:
///
/// | account | state | access token | refresh token | events in the last day |
/// |---|---|---|---|---|
/// | `healthy` | healthy, pooled | 5 h left of 8 h | 6 days old | refreshes 11 h and 3 h ago |
/// | `expiring` | inside the 30 min lead, pooled | 10 min left of 8 h | 2 days | refresh 7 h 50 min ago |
/// | `lapsed` | needs login | 2 h left of 8 h | 20 days | refresh 6 h ago, failure 1 h ago |
/// | `cooling` | cooling down until 13:30, pooled | 7 h left | 1 day | refresh 1 h ago |
/// | `laptop` | follows Claude Code's file | 6 h left | 3 days | adopted 2 h ago |
/// | `deploy` | its sink fails | 4 h left | 4 days | refresh 4 h ago |
///
/// Usage: `healthy` 30 requests at 10:00 and 10 at 11:00, `cooling` 10 at 09:00 (so 80 % and
/// 20 % of the pool's 50).
pub async fn seed(store: &dyn Store, dir: &Path) {
    use CredentialChange::{Adopted, Refreshed};
    account(store, "healthy", Mode::Own, None, -6 * 1440, &[(-11 * 60, Refreshed), (-3 * 60, Refreshed)]).await;
    account(store, "expiring", Mode::Own, None, -2 * 1440, &[(-(7 * 60 + 50), Refreshed)]).await;
    account(store, "lapsed", Mode::Own, None, -20 * 1440, &[(-6 * 60, Refreshed)]).await;
    store
        .record_event(&NewEvent {
            account: "lapsed".into(),
            kind: EventKind::RefreshFailed,
            at: t(-60),
            detail: "invalid_grant: the refresh token was revoked".into(),
        })
        .await
        .unwrap();
    let patch = AccountPatch {
        state: Some(AccountState::NeedsLogin),
        last_error: Some(Some("the provider rejected the refresh token (invalid_grant)".into())),
        ..AccountPatch::default()
    };
    store.patch_account("lapsed", &patch, t(-60)).await.unwrap();
    account(store, "cooling", Mode::Own, None, -1440, &[(-60, Refreshed)]).await;
    let cooldown = serde_json::json!({"until": t(90), "reason": "429 from the provider"});
    store.put_state("cooldown/cooling", &cooldown, t(-30)).await.unwrap();
    let file = dir.join("laptop").join(".claude").join(".credentials.json");
    let binding = Binding { kind: BindingKind::ClaudeCredentials, path: file };
    account(store, "laptop", Mode::Follow, Some(binding), -3 * 1440, &[(-120, Adopted)]).await;
    account(store, "deploy", Mode::Own, None, -4 * 1440, &[(-240, Refreshed)]).await;
    let health = serde_json::json!([{
        "name": "bot-env", "account": "deploy", "kind": "env_file", "ok": false,
        "last_error": "cannot write /srv/bot/.env: permission denied",
        "last_written_at": null, "writes": 0, "failures": 3,
    }]);
    store.put_state("sinks/health", &health, t(-5)).await.unwrap();
    store
        .record_usage(&[
            hour("healthy", t(-110), 30, 3_000),
            hour("healthy", t(-50), 10, 1_000),
            hour("cooling", t(-170), 10, 500),
        ])
        .await
        .unwrap();
}

/// The pool the fleet's proxy configuration has: `healthy`, `expiring` and `cooling` as the
/// pool of keys that name none.
pub fn pools(config: &mut Config) {
    let members = ["healthy", "expiring", "cooling"].map(|n| PoolMember::Name(n.into())).to_vec();
    config.pools.insert("default".into(), PoolConfig { accounts: members, strategy: None, sticky_ttl: None });
}

/// A keeper at [`now`] over the fleet, and the page with the proxy's pools.
pub async fn env() -> Env {
    let clock = ManualClock::new(now());
    let base = tokenkeeper_keeper::testing::env_at(clock, pools).await;
    seed(base.store.as_ref(), base.dir.path()).await;
    let proxy = tokenkeeper_proxy::ProxyState::new(base.keeper.clone(), &base.config).unwrap();
    let state = WebState::new(base.keeper.clone(), None, Secret::new(ADMIN_TOKEN), false).with_pool(proxy);
    let app = router(state.clone());
    Env { base, state, app }
}

/// The fleet's accounts' names.
pub const NAMES: [&str; 6] = ["healthy", "expiring", "lapsed", "cooling", "laptop", "deploy"];
