//! The deduplication state machine: which accounts have an open incident, at which severity,
//! and when we last told anyone. Pure (no I/O, time passed in), so every transition is tested
//! directly; [`crate::AlertEngine`] wraps it with a lock, the clock and delivery.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
pub use tokenkeeper_core::status::Severity;
use tokenkeeper_core::status::{Assessment, Level};

/// The alert name, the one seed 001's monitor sent to Keep, so Keep rules and workflows written
/// for it keep matching after a switch to tokenkeeper. The account is in the message and labels.
pub const ALERT_NAME: &str = "ClaudeOAuthTokenExpiry";

/// The source tokenkeeper names itself as in payloads.
pub const SOURCE: &str = "tokenkeeper";

/// Whether an alert is open or closed, as receivers (Keep, Alertmanager-style webhooks) say it:
/// the lowercase word, the same for serde and strum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, strum::Display, strum::IntoStaticStr)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum AlertStatus {
    /// The problem is going on.
    Firing,
    /// The problem has ended.
    Resolved,
}

impl AlertStatus {
    /// `firing` or `resolved`.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Why a message was sent: the lowercase word in payloads and stored state, the same for serde
/// and strum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, strum::Display, strum::IntoStaticStr)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum AlertEvent {
    /// An account went from fine to a bad level.
    New,
    /// An open incident got worse (warning → critical).
    Escalated,
    /// An incident is still open after the reminder interval.
    Reminder,
    /// The incident ended (the account is fine again, or was removed).
    Resolved,
}

impl AlertEvent {
    /// `new`, `escalated`, `reminder` or `resolved`.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// One alert, as sent to every channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertMessage {
    /// Alert name ([`ALERT_NAME`]).
    pub name: String,
    /// Firing or resolved.
    pub status: AlertStatus,
    /// For a resolved message, the highest severity sent during the incident (so a channel
    /// that only takes critical alerts gets the resolution of the critical alert it was sent).
    pub severity: Severity,
    /// The account's name.
    pub account: String,
    /// The account's provider id (`anthropic`, `codex`, `gemini`, …), when the caller said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The provider's name for people (`Codex CLI`), when the caller said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_name: Option<String>,
    /// What is going on and what to do, from the assessment (never a token).
    pub description: String,
    /// When the incident started.
    pub since: DateTime<Utc>,
    /// Why this message was sent.
    pub kind: AlertEvent,
    /// When the message was made.
    pub at: DateTime<Utc>,
}

/// One account's open incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    /// When it started.
    pub since: DateTime<Utc>,
    /// The level last observed.
    pub level: Level,
    /// The severity last sent.
    pub severity: Severity,
    /// The highest severity sent during the incident.
    pub peak: Severity,
    /// When a message about it was last sent.
    pub last_sent: DateTime<Utc>,
    /// The account's provider id, for the resolution of an account that is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The provider's name for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_name: Option<String>,
}

/// What the engine is told about one account: its name, its assessment and, when known, its
/// provider. A plain `(name, assessment)` pair is one without a provider.
pub trait Watched {
    /// The account's name.
    fn account(&self) -> &str;
    /// Its current assessment.
    fn assessment(&self) -> &Assessment;
    /// Its provider id and the provider's name for people, when known.
    fn provider(&self) -> Option<(&str, &str)> {
        None
    }
}

impl Watched for (String, Assessment) {
    fn account(&self) -> &str {
        &self.0
    }
    fn assessment(&self) -> &Assessment {
        &self.1
    }
}

/// One account as the daemon watches it: with its provider, which every alert then names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedAccount {
    /// The account's name.
    pub account: String,
    /// Its provider id (`codex`).
    pub provider: String,
    /// The provider's name for people (`Codex CLI`).
    pub provider_name: String,
    /// Its current assessment.
    pub assessment: Assessment,
}

impl Watched for WatchedAccount {
    fn account(&self) -> &str {
        &self.account
    }
    fn assessment(&self) -> &Assessment {
        &self.assessment
    }
    fn provider(&self) -> Option<(&str, &str)> {
        Some((&self.provider, &self.provider_name))
    }
}

/// Open incidents by account. Serialisable so a later version can persist it across restarts
/// (a restart then neither repeats a firing nor forgets to resolve).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertState {
    /// Open incidents, by account name.
    pub incidents: BTreeMap<String, Incident>,
}

impl AlertState {
    /// Takes the current assessment of every account and returns the messages to send.
    ///
    /// `reminder` is the reminder interval (`None`: never remind). Accounts with an open
    /// incident that are missing from `assessments` are resolved as removed.
    pub fn step<W: Watched>(
        &mut self,
        assessments: &[W],
        now: DateTime<Utc>,
        reminder: Option<Duration>,
    ) -> Vec<AlertMessage> {
        let mut out = Vec::new();
        for watched in assessments {
            let account = &watched.account().to_owned();
            let assessment = watched.assessment();
            let provider = watched.provider().map(|(id, _)| id.to_owned());
            let provider_name = watched.provider().map(|(_, name)| name.to_owned());
            // Assessment messages never hold tokens; redacting anything token-shaped is the
            // second line of defence, because an alert leaves the machine.
            let description = tokenkeeper_core::redact(&assessment.message, []);
            let message = |status, severity: Severity, kind, since| AlertMessage {
                name: ALERT_NAME.to_owned(),
                status,
                severity,
                account: account.clone(),
                provider: provider.clone(),
                provider_name: provider_name.clone(),
                description: description.clone(),
                since,
                kind,
                at: now,
            };
            let severity = assessment.level.severity();
            match (self.incidents.get_mut(account), severity) {
                (None, None) => {}
                (None, Some(sev)) => {
                    self.incidents.insert(
                        account.clone(),
                        Incident {
                            since: now,
                            level: assessment.level,
                            severity: sev,
                            peak: sev,
                            last_sent: now,
                            provider: provider.clone(),
                            provider_name: provider_name.clone(),
                        },
                    );
                    out.push(message(AlertStatus::Firing, sev, AlertEvent::New, now));
                }
                (Some(inc), Some(sev)) => {
                    inc.level = assessment.level;
                    if provider.is_some() {
                        inc.provider.clone_from(&provider);
                        inc.provider_name.clone_from(&provider_name);
                    }
                    if sev > inc.severity {
                        // Only a rise above what receivers last heard is news; a dip back to
                        // warning is left to the next reminder, so flapping cannot spam.
                        inc.severity = sev;
                        inc.peak = inc.peak.max(sev);
                        inc.last_sent = now;
                        out.push(message(AlertStatus::Firing, sev, AlertEvent::Escalated, inc.since));
                    } else if reminder.is_some_and(|r| now - inc.last_sent >= r) {
                        inc.severity = sev;
                        inc.last_sent = now;
                        out.push(message(AlertStatus::Firing, sev, AlertEvent::Reminder, inc.since));
                    }
                }
                (Some(_), None) => {
                    if let Some(inc) = self.incidents.remove(account) {
                        let mut m = message(AlertStatus::Resolved, inc.peak, AlertEvent::Resolved, inc.since);
                        m.description = format!("`{account}` recovered ({}): {description}", assessment.level);
                        out.push(m);
                    }
                }
            }
        }
        let removed: Vec<String> =
            self.incidents.keys().filter(|name| !assessments.iter().any(|w| w.account() == *name)).cloned().collect();
        for account in removed {
            if let Some(inc) = self.incidents.remove(&account) {
                out.push(AlertMessage {
                    name: ALERT_NAME.to_owned(),
                    status: AlertStatus::Resolved,
                    severity: inc.peak,
                    description: format!("`{account}` is no longer watched (account removed)"),
                    account,
                    provider: inc.provider,
                    provider_name: inc.provider_name,
                    since: inc.since,
                    kind: AlertEvent::Resolved,
                    at: now,
                });
            }
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn status_and_event_words_are_the_ones_payloads_and_stored_state_hold() {
        for (status, word) in [(AlertStatus::Firing, "firing"), (AlertStatus::Resolved, "resolved")] {
            assert_eq!(status.as_str(), word);
            assert_eq!(status.to_string(), word);
            assert_eq!(serde_json::to_value(status).unwrap(), serde_json::Value::String(word.into()));
        }
        for (event, word) in [
            (AlertEvent::New, "new"),
            (AlertEvent::Escalated, "escalated"),
            (AlertEvent::Reminder, "reminder"),
            (AlertEvent::Resolved, "resolved"),
        ] {
            assert_eq!(event.as_str(), word);
            assert_eq!(event.to_string(), word);
            assert_eq!(serde_json::to_value(event).unwrap(), serde_json::Value::String(word.into()));
        }
    }

    fn a(level: Level) -> Assessment {
        Assessment { level, message: format!("`main` is {level}") }
    }

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
    }

    fn step(s: &mut AlertState, level: Level, at: Duration) -> Vec<(AlertStatus, Severity, AlertEvent)> {
        s.step(&[("main".into(), a(level))], t0() + at, Some(Duration::hours(6)))
            .into_iter()
            .map(|m| (m.status, m.severity, m.kind))
            .collect()
    }

    #[test]
    fn a_whole_incident() {
        let mut s = AlertState::default();
        assert!(step(&mut s, Level::Healthy, Duration::zero()).is_empty());
        assert!(step(&mut s, Level::Expiring, Duration::minutes(1)).is_empty());
        assert_eq!(
            step(&mut s, Level::Warning, Duration::minutes(2)),
            [(AlertStatus::Firing, Severity::Warning, AlertEvent::New)]
        );
        for m in 3..300 {
            assert!(step(&mut s, Level::Warning, Duration::minutes(m)).is_empty(), "repeat at {m}m");
        }
        assert_eq!(
            step(&mut s, Level::Warning, Duration::minutes(2) + Duration::hours(6)),
            [(AlertStatus::Firing, Severity::Warning, AlertEvent::Reminder)]
        );
        assert_eq!(
            step(&mut s, Level::Critical, Duration::hours(7)),
            [(AlertStatus::Firing, Severity::Critical, AlertEvent::Escalated)]
        );
        // Another critical level is the same incident at the same severity.
        assert!(step(&mut s, Level::Expired, Duration::hours(8)).is_empty());
        assert_eq!(
            step(&mut s, Level::Healthy, Duration::hours(9)),
            [(AlertStatus::Resolved, Severity::Critical, AlertEvent::Resolved)]
        );
        assert!(s.incidents.is_empty());
    }

    #[test]
    fn dipping_back_to_warning_does_not_refire() {
        let mut s = AlertState::default();
        assert_eq!(step(&mut s, Level::Critical, Duration::zero()).len(), 1);
        assert!(step(&mut s, Level::Warning, Duration::minutes(1)).is_empty());
        assert!(step(&mut s, Level::Critical, Duration::minutes(2)).is_empty());
    }

    #[test]
    fn since_is_the_start_of_the_incident() {
        let mut s = AlertState::default();
        let acc = |l| [("main".to_owned(), a(l))];
        s.step(&acc(Level::Warning), t0(), None);
        let esc = s.step(&acc(Level::NeedsLogin), t0() + Duration::hours(1), None);
        assert_eq!(esc[0].since, t0());
        assert_eq!(esc[0].at, t0() + Duration::hours(1));
        let res = s.step(&acc(Level::Healthy), t0() + Duration::hours(2), None);
        assert_eq!(res[0].since, t0());
        assert!(res[0].description.contains("recovered (healthy)"), "{}", res[0].description);
    }

    #[test]
    fn no_reminders_without_an_interval() {
        let mut s = AlertState::default();
        let acc = [("main".to_owned(), a(Level::Warning))];
        assert_eq!(s.step(&acc, t0(), None).len(), 1);
        assert!(s.step(&acc, t0() + Duration::days(30), None).is_empty());
    }

    #[test]
    fn removed_accounts_resolve() {
        let mut s = AlertState::default();
        s.step(&[("main".into(), a(Level::Expired)), ("b".into(), a(Level::Healthy))], t0(), None);
        let out = s.step(&[("b".into(), a(Level::Healthy))], t0() + Duration::minutes(1), None);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].account.as_str(), out[0].status), ("main", AlertStatus::Resolved));
        assert!(out[0].description.contains("removed"));
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut s = AlertState::default();
        s.step(&[("main".into(), a(Level::Warning))], t0(), None);
        let text = serde_json::to_string(&s).unwrap();
        let back: AlertState = serde_json::from_str(&text).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn tokens_in_descriptions_are_redacted() {
        let mut state = AlertState::default();
        let leaky = Assessment { level: Level::NeedsLogin, message: "refused sk-ant-ort01-AbC_d-9xYz".into() };
        let out = state.step(&[("main".into(), leaky)], t0(), None);
        assert!(!out.is_empty());
        for m in out {
            assert!(!m.description.contains("AbC_d") && m.description.contains("sk-ant-ort01-…"), "{}", m.description);
        }
    }

    #[test]
    fn severities() {
        assert_eq!(Level::Healthy.severity(), None);
        assert_eq!(Level::Expiring.severity(), None);
        assert_eq!(Level::Warning.severity(), Some(Severity::Warning));
        assert_eq!(Level::NeedsLogin.severity(), Some(Severity::Critical));
        assert!(Severity::Warning < Severity::Critical);
        assert_eq!("CRITICAL".parse::<Severity>(), Ok(Severity::Critical));
        assert!("info".parse::<Severity>().is_err());
    }
}
