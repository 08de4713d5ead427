//! What every interface shows of the proxy's pools without running the proxy: which pools an
//! account belongs to (from `[pools.*]`), its stored cooldowns, and the state that follows.
//!
//! Cooldowns are absolute times kept in the store's installation state under
//! `cooldown/<account>` (or `cooldown/<account>/<family>` for a per-model limit), written by
//! the proxy of any replica. A cooldown ends by itself: whoever reads it compares it with the
//! clock, so nothing has to clear it (a success clears it early).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::account::{Account, AccountState};
use crate::config::Config;

/// The prefix of cooldown keys in the store's installation state.
pub const COOLDOWN_PREFIX: &str = "cooldown/";

/// The name of the pool of keys that name none (every account, unless `[pools.default]` says
/// otherwise).
pub const DEFAULT_POOL: &str = "default";

/// A stored cooldown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cooldown {
    /// When it ends.
    pub until: DateTime<Utc>,
    /// The model family it applies to (`None`: every model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// Why, in words (no secrets).
    pub reason: String,
}

impl Cooldown {
    /// The installation-state key of this cooldown of `account`.
    pub fn key(account: &str, family: Option<&str>) -> String {
        match family {
            Some(f) => format!("{COOLDOWN_PREFIX}{account}/{f}"),
            None => format!("{COOLDOWN_PREFIX}{account}"),
        }
    }

    /// Whether it applies to a request for `family` at `now`.
    pub fn blocks(&self, family: Option<&str>, now: DateTime<Utc>) -> bool {
        self.until > now && (self.family.is_none() || self.family.as_deref() == family)
    }
}

/// The stored cooldowns (`Store::list_state(COOLDOWN_PREFIX)`) by account; entries that do not
/// parse are skipped (a newer writer's format must not break an older reader).
pub fn cooldowns_by_account(stored: Vec<(String, serde_json::Value)>) -> HashMap<String, Vec<Cooldown>> {
    let mut by_account: HashMap<String, Vec<Cooldown>> = HashMap::new();
    for (key, value) in stored {
        let Some(rest) = key.strip_prefix(COOLDOWN_PREFIX) else { continue };
        let account = rest.split('/').next().unwrap_or(rest).to_owned();
        if let Ok(c) = serde_json::from_value::<Cooldown>(value) {
            by_account.entry(account).or_default().push(c);
        }
    }
    by_account
}

/// When the account-wide cooldown among `cooldowns` ends, if one still runs at `now`.
pub fn cooldown_until(cooldowns: &[Cooldown], now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cooldowns.iter().filter(|c| c.family.is_none() && c.until > now).map(|c| c.until).max()
}

/// Whether a pooled account takes requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum PoolState {
    /// Takes requests.
    Active,
    /// Rate limited until its cooldown ends (for every model).
    CoolingDown,
    /// The provider rejected its refresh token: log in again.
    NeedsLogin,
}

impl PoolState {
    /// The state of `account` with `cooldowns` at `now`.
    pub fn of(account: &Account, cooldowns: &[Cooldown], now: DateTime<Utc>) -> PoolState {
        if account.state == AccountState::NeedsLogin {
            PoolState::NeedsLogin
        } else if cooldown_until(cooldowns, now).is_some() {
            PoolState::CoolingDown
        } else {
            PoolState::Active
        }
    }

    /// The word (`active`, `cooling_down`, `needs_login`).
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The pools `account` belongs to, by name: every `[pools.*]` that lists it, and `default`
/// when no `[pools.default]` is configured (the implicit pool of every account).
pub fn pools_of(config: &Config, account: &str) -> Vec<String> {
    let mut out: Vec<String> = config
        .pools
        .iter()
        .filter(|(_, p)| p.accounts.iter().any(|m| m.account() == account))
        .map(|(n, _)| n.clone())
        .collect();
    if !config.pools.contains_key(DEFAULT_POOL) {
        out.push(DEFAULT_POOL.to_owned());
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pool_state_words_are_the_serde_words() {
        for (state, word) in [
            (PoolState::Active, "active"),
            (PoolState::CoolingDown, "cooling_down"),
            (PoolState::NeedsLogin, "needs_login"),
        ] {
            assert_eq!(state.as_str(), word);
            assert_eq!(serde_json::to_value(state).unwrap(), serde_json::Value::String(word.into()));
        }
    }

    #[test]
    fn stored_cooldowns_group_by_account_and_end_by_themselves() {
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let c = |s: i64, f: Option<&str>| Cooldown {
            until: t0 + chrono::Duration::seconds(s),
            family: f.map(str::to_owned),
            reason: "429".into(),
        };
        let stored = vec![
            (Cooldown::key("a", None), serde_json::to_value(c(60, None)).unwrap()),
            (Cooldown::key("a", Some("opus")), serde_json::to_value(c(600, Some("opus"))).unwrap()),
            (Cooldown::key("b", None), serde_json::json!({"garbage": true})),
        ];
        let by = cooldowns_by_account(stored);
        assert_eq!(by["a"].len(), 2);
        assert!(!by.contains_key("b"), "an unreadable entry is skipped");
        assert_eq!(cooldown_until(&by["a"], t0), Some(t0 + chrono::Duration::seconds(60)));
        assert_eq!(cooldown_until(&by["a"], t0 + chrono::Duration::seconds(60)), None, "ended at its reset");
    }

    #[test]
    fn pools_of_lists_configured_pools_and_the_implicit_default() {
        let mut config: Config = toml::from_str("[pools.team]\naccounts = [\"a\", \"b\"]\n").unwrap();
        assert_eq!(pools_of(&config, "a"), ["team", "default"]);
        assert_eq!(pools_of(&config, "c"), ["default"]);
        config.pools.insert(DEFAULT_POOL.into(), config.pools["team"].clone());
        assert_eq!(pools_of(&config, "c"), Vec::<String>::new());
    }
}
