//! The monitoring files in `deploy/`: the Prometheus rules parse and have the shape Prometheus
//! needs (and pass `promtool` when it is installed), and the rules and the Grafana dashboard
//! only use metric names the server exports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

/// The metrics the server exports, by name.
const METRICS: &[&str] = &[
    "tokenkeeper_access_token_expires_in_seconds",
    "tokenkeeper_refresh_token_age_seconds",
    "tokenkeeper_account_status",
    "tokenkeeper_refresh_attempts_total",
    "tokenkeeper_sink_failures_total",
    "tokenkeeper_alert_deliveries_total",
];

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy").join(path)
}

/// Every `tokenkeeper_…` metric name in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("tokenkeeper_") {
        let name: String =
            rest[i..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
        rest = &rest[i + name.len()..];
        out.insert(name);
    }
    out
}

fn str_at<'a>(v: &'a Value, key: &str, what: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_else(|| panic!("{what}: `{key}` missing or not a string"))
}

#[test]
fn metric_names_are_found_in_expressions() {
    let names = metric_names("sum by (a) (increase(tokenkeeper_sink_failures_total[5m])) > tokenkeeper_x_2");
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["tokenkeeper_sink_failures_total", "tokenkeeper_x_2"]);
}

#[test]
fn prometheus_rules_have_the_expected_structure() {
    let path = deploy("prometheus/tokenkeeper-rules.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let doc: Value = serde_yaml::from_str(&text).unwrap();
    let groups = doc.get("groups").and_then(Value::as_sequence).expect("`groups` list");
    assert!(!groups.is_empty());
    let mut alerts = BTreeSet::new();
    let mut used = BTreeSet::new();
    for group in groups {
        str_at(group, "name", "group");
        let rules = group.get("rules").and_then(Value::as_sequence).expect("`rules` list");
        assert!(!rules.is_empty());
        for rule in rules {
            let alert = str_at(rule, "alert", "rule");
            assert!(alerts.insert(alert.to_owned()), "alert {alert} defined twice");
            assert!(alert.starts_with("Tokenkeeper") && !alert.contains(' '), "{alert}: name style");
            let expr = str_at(rule, "expr", alert);
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{alert}: expr uses no tokenkeeper metric");
            used.extend(names);
            let labels = rule.get("labels").unwrap_or_else(|| panic!("{alert}: no labels"));
            let severity = str_at(labels, "severity", alert);
            assert!(["warning", "critical"].contains(&severity), "{alert}: severity {severity}");
            let annotations = rule.get("annotations").unwrap_or_else(|| panic!("{alert}: no annotations"));
            assert!(!str_at(annotations, "summary", alert).trim().is_empty());
            assert!(!str_at(annotations, "description", alert).trim().is_empty());
            if let Some(d) = rule.get("for") {
                let d = d.as_str().unwrap_or_else(|| panic!("{alert}: `for` is not a string"));
                assert!(d.ends_with('m') || d.ends_with('h') || d.ends_with('s'), "{alert}: for {d}");
            }
        }
    }
    let known: BTreeSet<String> = METRICS.iter().map(|m| (*m).to_owned()).collect();
    let unknown: Vec<&String> = used.difference(&known).collect();
    assert!(unknown.is_empty(), "rules use metrics the server does not export: {unknown:?}");
    let unwatched: Vec<&String> = known.difference(&used).collect();
    assert!(unwatched.is_empty(), "no rule watches {unwatched:?}");
    // The levels that mean "act now" each have a rule.
    for level in ["expired", "needs-login", "critical", "warning"] {
        assert!(text.contains(&format!("status=\"{level}\"")), "no rule for level {level}");
    }
}

/// Runs promtool, which `scripts/test-deps` installs (Debian's `prometheus` package): a test
/// that passed because its checker was missing would prove nothing.
fn promtool(args: &[&str], dir: &Path) -> Option<std::process::Output> {
    match Command::new("promtool").args(args).current_dir(dir).output() {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not on PATH (for `promtool {}`): run scripts/test-deps, which installs Debian's `prometheus` package",
            args.join(" ")
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    }
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests() {
    let dir = deploy("prometheus");
    if let Some(out) = promtool(&["check", "rules", "tokenkeeper-rules.yml"], &dir) {
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "promtool check rules failed:\n{text}");
    }
    if let Some(out) = promtool(&["test", "rules", "tokenkeeper-rules.test.yml"], &dir) {
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "promtool test rules failed:\n{text}");
    }
}

#[test]
fn grafana_dashboard_uses_only_exported_metrics() {
    let text = std::fs::read_to_string(deploy("grafana/tokenkeeper-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(dash["uid"], "tokenkeeper");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    let mut used = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("panel title");
        assert!(ids.insert(panel["id"].as_u64().expect("panel id")), "{title}: duplicate id");
        for key in ["h", "w", "x", "y"] {
            assert!(panel["gridPos"][key].is_u64(), "{title}: gridPos.{key}");
        }
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("{title}: targets"));
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            used.extend(metric_names(t["expr"].as_str().unwrap_or_else(|| panic!("{title}: expr"))));
        }
    }
    let known: BTreeSet<String> = METRICS.iter().map(|m| (*m).to_owned()).collect();
    assert_eq!(used, known, "the dashboard should show every exported metric and nothing else");
}
