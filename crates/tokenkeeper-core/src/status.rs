//! Status levels, computed in one place and used by `status`, `check`, the API, the web page,
//! metrics and alerts.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::account::{Account, AccountState, Mode};

/// How an account is doing, from best to worst. Shown (and serialised) as the kebab-case word.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    Hash,
    strum::Display,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum Level {
    /// Nothing to do.
    Healthy,
    /// The access token is inside the lead time and not yet refreshed.
    Expiring,
    /// Something needs attention soon: an old refresh token, a failing sink, transient
    /// refresh failures.
    Warning,
    /// Needs attention now: the token expires within 15 minutes while refreshes fail, or the
    /// refresh token is past its expected life.
    Critical,
    /// The provider rejected the refresh token: only a new login helps.
    NeedsLogin,
    /// The access token has expired.
    Expired,
}

impl Level {
    /// The word shown to people and machines (`healthy`, `needs-login`, …).
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// All levels, for metrics.
    pub const ALL: [Level; 6] =
        [Level::Healthy, Level::Expiring, Level::Warning, Level::Critical, Level::NeedsLogin, Level::Expired];

    /// Monitoring exit status: 0 ok, 1 warning, 2 critical.
    pub fn exit_code(self) -> i32 {
        match self {
            Level::Healthy | Level::Expiring => 0,
            Level::Warning => 1,
            Level::Critical | Level::NeedsLogin | Level::Expired => 2,
        }
    }

    /// Alert severity of this level (`None` when nothing should fire). The one place that
    /// decides it; the alert engine and `check` use it as is.
    pub fn severity(self) -> Option<Severity> {
        match self {
            Level::Healthy | Level::Expiring => None,
            Level::Warning => Some(Severity::Warning),
            Level::Critical | Level::NeedsLogin | Level::Expired => Some(Severity::Critical),
        }
    }
}

/// Alert severity, ordered: `Warning < Critical`. Written as the lowercase word in payloads,
/// stored alert state and `min_severity` in the config; read back in any case, and an unknown
/// word is refused with the known ones (so a config typo names the fix).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    strum::Display,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[serde(rename_all = "lowercase", try_from = "String")]
#[strum(serialize_all = "lowercase", ascii_case_insensitive)]
pub enum Severity {
    /// Needs attention soon.
    Warning,
    /// Needs attention now.
    Critical,
}

impl Severity {
    /// The word used in payloads (`warning`, `critical`).
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl TryFrom<String> for Severity {
    type Error = UnknownSeverity;
    fn try_from(word: String) -> Result<Self, Self::Error> {
        word.parse().map_err(|_| UnknownSeverity(word))
    }
}

/// A severity word that is neither `warning` nor `critical`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown severity `{0}`; expected `warning` or `critical`")]
pub struct UnknownSeverity(pub String);

/// Facts from outside the account row that affect its level.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Refreshes have failed transiently since the last success.
    pub refresh_failing: bool,
    /// Names of sinks currently failing.
    pub failing_sinks: Vec<String>,
}

/// Thresholds for the assessment.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Refresh lead time.
    pub lead: Duration,
    /// Warn when the refresh token is older than this.
    pub refresh_token_warn_age: Duration,
    /// Expected life of a refresh token.
    pub refresh_token_life: Duration,
}

/// A level with the sentence that says what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Assessment {
    /// How bad it is; `message` says why and what to do.
    pub level: Level,
    /// What is going on and what to do, in words.
    pub message: String,
}

/// Formats a duration as hours and minutes ("7h 05m", "3d 4h", "12m"); never "0 days".
pub fn human_duration(d: Duration) -> String {
    let total = d.num_minutes().abs();
    let sign = if d.num_seconds() < 0 { "-" } else { "" };
    let (days, hours, minutes) = (total / 1440, (total % 1440) / 60, total % 60);
    if days >= 2 {
        format!("{sign}{days}d {hours}h")
    } else if total >= 60 {
        format!("{sign}{}h {minutes:02}m", days * 24 + hours)
    } else if total >= 1 {
        format!("{sign}{minutes}m")
    } else {
        format!("{sign}{}s", d.num_seconds().abs())
    }
}

/// Assesses one account.
pub fn assess(account: &Account, facts: &Facts, now: DateTime<Utc>, t: &Thresholds) -> Assessment {
    let name = &account.name;
    let cred = &account.credential;
    let left = cred.time_left(now);
    let login_hint = format!(
        "run `tokenkeeper login --account {name}` on a machine with a browser (or `claude login` there, then `tokenkeeper push`)"
    );
    if account.state == AccountState::NeedsLogin {
        return Assessment {
            level: Level::NeedsLogin,
            message: format!("the provider rejected the refresh token of `{name}`; {login_hint}"),
        };
    }
    if cred.is_expired(now) {
        let why = if !cred.is_refreshable() {
            "it has no refresh token".to_owned()
        } else if account.mode == Mode::Follow {
            "it is in follow mode and its owner (Claude Code) has not refreshed it".to_owned()
        } else {
            "refreshing it has not succeeded".to_owned()
        };
        return Assessment {
            level: Level::Expired,
            message: format!(
                "the access token of `{name}` expired {} ago; {why}. Run `tokenkeeper refresh --account {name}`, or {login_hint}",
                human_duration(-left)
            ),
        };
    }
    let rt_age = account.refresh_token_issued_at.map(|t| now - t);
    if cred.is_refreshable() {
        if let Some(age) = rt_age {
            if age > t.refresh_token_life {
                return Assessment {
                    level: Level::Critical,
                    message: format!(
                        "the refresh token of `{name}` is {} old, past its expected life; {login_hint}",
                        human_duration(age)
                    ),
                };
            }
        }
    }
    if facts.refresh_failing && left <= Duration::minutes(15) {
        return Assessment {
            level: Level::Critical,
            message: format!(
                "the access token of `{name}` expires in {} and refreshes are failing{}; check `tokenkeeper doctor`",
                human_duration(left),
                account.last_error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
            ),
        };
    }
    if facts.refresh_failing {
        return Assessment {
            level: Level::Warning,
            message: format!(
                "refreshing `{name}` is failing{}; tokenkeeper keeps retrying and the token is valid for {}",
                account.last_error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default(),
                human_duration(left)
            ),
        };
    }
    if !facts.failing_sinks.is_empty() {
        return Assessment {
            level: Level::Warning,
            message: format!(
                "delivering `{name}` fails for {}; see `tokenkeeper status` for the error",
                facts.failing_sinks.join(", ")
            ),
        };
    }
    if cred.is_refreshable() {
        if let Some(age) = rt_age {
            if age > t.refresh_token_warn_age {
                return Assessment {
                    level: Level::Warning,
                    message: format!(
                        "the refresh token of `{name}` is {} old and may stop working in {}; plan a new login: {login_hint}",
                        human_duration(age),
                        human_duration(t.refresh_token_life - age)
                    ),
                };
            }
        }
    }
    if cred.needs_refresh(now, t.lead) {
        return Assessment {
            level: Level::Expiring,
            message: format!("the access token of `{name}` expires in {} and is due for refresh", human_duration(left)),
        };
    }
    Assessment { level: Level::Healthy, message: format!("valid for {}", human_duration(left)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_never_round_to_zero_days() {
        assert_eq!(human_duration(Duration::hours(7) + Duration::minutes(5)), "7h 05m");
        assert_eq!(human_duration(Duration::minutes(12)), "12m");
        assert_eq!(human_duration(Duration::hours(30)), "30h 00m");
        assert_eq!(human_duration(Duration::days(3) + Duration::hours(4)), "3d 4h");
        assert_eq!(human_duration(Duration::seconds(-90)), "-1m");
        assert_eq!(human_duration(Duration::seconds(30)), "30s");
    }

    #[test]
    fn exit_codes() {
        assert_eq!(Level::Healthy.exit_code(), 0);
        assert_eq!(Level::Warning.exit_code(), 1);
        assert_eq!(Level::NeedsLogin.exit_code(), 2);
    }
}
