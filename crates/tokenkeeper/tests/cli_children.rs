//! Issue 10 (4) through the binary: every kind of child tokenkeeper starts (`exec`,
//! `on_change`, a `command` sink, an alert `command`) is started by a tokenkeeper whose
//! environment holds the store key, the admin token and the other secret variables, dumps its
//! own environment, and none of them is there; the documented variables are. A timeout kills
//! the child's whole process group, and what a child prints is logged redacted.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{stderr, World, KEY_B64};

/// Secret (or stale) variables set in tokenkeeper's own environment, none of which any child
/// may see. `TOKENKEEPER_KEY` is set by `World::cmd` already (the store's real key).
const PARENT_SECRETS: &[(&str, &str)] = &[
    ("TOKENKEEPER_ADMIN_TOKEN", "tka_PARENT-ADMIN-SECRET"),
    ("TOKENKEEPER_ADMIN_TOKEN_FILE", "/run/secrets/PARENT-ADMIN-FILE"),
    ("TOKENKEEPER_KEY_FILE", "/run/secrets/PARENT-KEY-FILE"),
    ("TOKENKEEPER_API_KEY", "tk_PARENT_API_SECRET"),
    ("TOKENKEEPER_SOME_FUTURE_SECRET", "PARENT-FUTURE-SECRET"),
    ("TOKENKEEPER_ACCESS_TOKEN", "sk-ant-oat01-PARENT-STALE-ACCESS"),
    ("TOKENKEEPER_ALERT_NAME", "PARENT-STALE-ALERT"),
    ("CLAUDE_CODE_OAUTH_TOKEN", "sk-ant-oat01-PARENT-STALE-CLAUDE"),
    ("CLAUDE_CODE_OAUTH_TOKEN_FILE_DESCRIPTOR", "PARENT-STALE-FD"),
];

/// The binary with `PARENT_SECRETS` and an ordinary variable in its environment.
fn parent(w: &World, args: &[&str]) -> Command {
    let mut c = w.cmd(args);
    c.envs(PARENT_SECRETS.iter().copied()).env("TK_TEST_ORDINARY", "inherited").env("GITHUB_TOKEN", "ghp_PARENT");
    c
}

/// `NAME=value` lines of an `env` dump.
fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

/// A script that dumps its environment to `file` atomically (so a reader never sees half).
fn dump_env(file: &Path) -> String {
    format!("env > '{0}.tmp' && mv '{0}.tmp' '{0}'", file.display())
}

/// Asserts that `env` holds none of tokenkeeper's secrets (by name and by value) and the
/// settings a nested `tokenkeeper` needs.
fn assert_no_parent_secrets(kind: &str, env: &BTreeMap<String, String>, w: &World) {
    let dump: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    assert!(!env.contains_key("TOKENKEEPER_KEY") && !dump.contains(KEY_B64), "{kind}: the store key leaked:\n{dump}");
    for (name, value) in PARENT_SECRETS {
        assert!(!dump.contains(value), "{kind}: {name}'s value reached the child:\n{dump}");
    }
    for name in
        ["TOKENKEEPER_ADMIN_TOKEN", "TOKENKEEPER_ADMIN_TOKEN_FILE", "TOKENKEEPER_KEY_FILE", "TOKENKEEPER_API_KEY"]
    {
        assert!(!env.contains_key(name), "{kind}: {name} reached the child");
    }
    assert_eq!(env.get("TOKENKEEPER_DATA_DIR").map(String::as_str), w.data_dir().to_str(), "{kind}");
    assert!(env.contains_key("TOKENKEEPER_CONFIG") && env.contains_key("PATH"), "{kind}:\n{dump}");
}

fn read_env(file: &Path) -> BTreeMap<String, String> {
    parse_env(&std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display())))
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_hands_on_the_token_and_nothing_of_tokenkeeper() {
    let w = World::new().await;
    let (json, _) = w.claude_json("exec@example.com");
    w.ok(&["import", "-"], &json);
    let file = w.dir.path().join("exec.env");
    let out = parent(&w, &["exec", "--env", "MY_TOKEN", "--", "sh", "-c", &dump_env(&file)])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let env = read_env(&file);
    assert_no_parent_secrets("exec", &env, &w);
    let token = &env["CLAUDE_CODE_OAUTH_TOKEN"];
    assert!(w.mock.is_access_token_valid(token), "exec got no fresh token");
    assert_eq!(&env["MY_TOKEN"], token);
    assert_eq!(env["TK_TEST_ORDINARY"], "inherited");
    // exec is not a notifier: ordinary credentials of the user's own stay theirs.
    assert_eq!(env["GITHUB_TOKEN"], "ghp_PARENT");
    assert!(!env.contains_key("CLAUDE_CODE_OAUTH_TOKEN_FILE_DESCRIPTOR"));
}

#[tokio::test(flavor = "multi_thread")]
async fn on_change_and_command_sinks_get_the_documented_variables_only_and_are_redacted() {
    let w = World::new().await;
    let out = w.dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let on_change = out.join("on_change.env");
    let command = out.join("command.env");
    // Each also prints the token, which the log must show as a fingerprint only.
    let print = "echo \"printed $TOKENKEEPER_ACCESS_TOKEN\"; echo \"to stderr $CLAUDE_CODE_OAUTH_TOKEN\" >&2";
    w.write_config(&format!(
        r#"
[[sinks]]
account = "main"
kind = "env_file"
name = "bot"
path = "{out}/bot.env"
key = "CLAUDE_CODE_OAUTH_TOKEN"
on_change = ["sh", "-c", "{dump_on_change}; {print}"]

[[sinks]]
account = "main"
kind = "command"
name = "hook"
command = ["sh", "-c", "{dump_command}; {print}"]
"#,
        out = out.display(),
        dump_on_change = dump_env(&on_change).replace('"', "\\\""),
        dump_command = dump_env(&command).replace('"', "\\\""),
        print = print.replace('"', "\\\""),
    ));
    let (json, t) = w.claude_json("sink@example.com");
    w.ok(&["import", "-"], &json);
    let run = parent(&w, &["sync"]).stdin(Stdio::null()).output().unwrap();
    let log = stderr(&run);
    assert!(run.status.success(), "{log}");
    let expires_ms = {
        let store = w.store().await;
        let a = tokenkeeper_core::Store::get_account(&store, "main").await.unwrap().unwrap();
        a.credential.expires_at.timestamp_millis().to_string()
    };
    for (kind, file, sink) in [("on_change", &on_change, "bot"), ("command sink", &command, "hook")] {
        let env = read_env(file);
        assert_no_parent_secrets(kind, &env, &w);
        assert_eq!(env["TOKENKEEPER_ACCESS_TOKEN"], t.access_token, "{kind}");
        assert_eq!(env["CLAUDE_CODE_OAUTH_TOKEN"], t.access_token, "{kind}");
        assert_eq!(env["TOKENKEEPER_EXPIRES_AT_MS"], expires_ms, "{kind}");
        assert!(env["TOKENKEEPER_EXPIRES_AT"].ends_with('Z'), "{kind}");
        assert_eq!(env["TOKENKEEPER_ACCOUNT"], "main", "{kind}");
        assert_eq!(env["TOKENKEEPER_SINK"], sink, "{kind}");
        assert_eq!(env["TK_TEST_ORDINARY"], "inherited", "{kind}");
        assert!(!env.values().any(|v| v == &t.refresh_token), "{kind} got the refresh token");
    }
    let fingerprint = tokenkeeper_core::Secret::new(t.access_token.clone()).fingerprint();
    assert!(log.contains(&format!("printed {fingerprint}")), "the command's stdout is logged redacted:\n{log}");
    assert!(log.contains(&format!("to stderr {fingerprint}")), "the command's stderr is logged redacted:\n{log}");
    assert!(!log.contains(&t.access_token) && !log.contains(&t.refresh_token), "a token reached the log:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sink_command_timeout_kills_its_grandchildren() {
    let w = World::new().await;
    let pidfile = w.dir.path().join("grandchild.pid");
    w.write_config(&format!(
        r#"
[[sinks]]
account = "main"
kind = "command"
name = "stuck"
command = ["sh", "-c", "sleep 30 & echo $! > '{}'; wait"]
timeout = "500ms"
"#,
        pidfile.display()
    ));
    let (json, _) = w.claude_json("stuck@example.com");
    w.ok(&["import", "-"], &json);
    let started = std::time::Instant::now();
    let run = parent(&w, &["sync"]).stdin(Stdio::null()).output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "sync waited for the stuck command");
    let log = stderr(&run);
    assert!(log.contains("stuck: failed") && log.contains("after 500ms, killed"), "{log}");
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let gone = || match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie waits for its reaper; it runs nothing.
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    };
    common::wait_for(gone, "the grandchild of the timed-out command to be killed");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_alert_command_gets_the_alert_and_no_credentials() {
    let w = World::new().await;
    let file = w.dir.path().join("alert.env");
    w.write_config(&format!(
        "[[alerts]]\nkind = \"command\"\nname = \"pager\"\ncommand = [\"sh\", \"-c\", \"{}\"]\n",
        dump_env(&file).replace('"', "\\\"")
    ));
    // A login whose refresh token the provider has revoked, due for refresh: needs-login.
    w.mock.set_access_lifetime(Duration::from_secs(600));
    let (json, t) = w.claude_json("alert@example.com");
    w.ok(&["import", "-"], &json);
    w.mock.revoke(&t.refresh_token);
    let log = std::fs::File::create(w.dir.path().join("daemon.log")).unwrap();
    let mut daemon =
        parent(&w, &["serve", "--no-http"]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().unwrap();
    common::wait_for(|| file.exists(), "the alert command");
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let env = read_env(&file);
    assert_no_parent_secrets("alert command", &env, &w);
    assert_eq!(env["TOKENKEEPER_ALERT_NAME"], "ClaudeOAuthTokenExpiry");
    assert_eq!(env["TOKENKEEPER_ALERT_ACCOUNT"], "main");
    assert_eq!(env["TOKENKEEPER_ALERT_STATUS"], "firing");
    for name in [
        "TOKENKEEPER_ALERT_SEVERITY",
        "TOKENKEEPER_ALERT_DESCRIPTION",
        "TOKENKEEPER_ALERT_SINCE",
        "TOKENKEEPER_ALERT_EVENT",
    ] {
        assert!(env.contains_key(name), "{name} missing");
    }
    // A notifier gets no credential of any kind.
    assert!(!env.contains_key("GITHUB_TOKEN") && !env.contains_key("CLAUDE_CODE_OAUTH_TOKEN"));
    assert!(!env.values().any(|v| v == &t.access_token || v == &t.refresh_token));
    assert_eq!(env["TK_TEST_ORDINARY"], "inherited");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follow_mode_nudge_gets_no_secrets_and_no_token() {
    let w = World::new().await;
    let file = w.dir.path().join("nudge.env");
    w.write_config(&format!(
        "[accounts.main]\nnudge = [\"sh\", \"-c\", \"{}\"]\n",
        dump_env(&file).replace('"', "\\\"")
    ));
    // A followed login inside the lead time: `token` nudges its owner.
    w.mock.set_access_lifetime(Duration::from_secs(600));
    let (json, t) = w.claude_json("nudge@example.com");
    std::fs::write(w.claude_file(), &json).unwrap();
    w.ok(&["import", "--mode", "follow", "--account", "main"], "");
    let _ = parent(&w, &["token"]).stdin(Stdio::null()).output().unwrap();
    let env = read_env(&file);
    assert_no_parent_secrets("nudge", &env, &w);
    assert_eq!(env["TOKENKEEPER_ACCOUNT"], "main");
    // No token at all: Claude Code must use, and refresh, its own file.
    assert!(!env.contains_key("CLAUDE_CODE_OAUTH_TOKEN") && !env.contains_key("TOKENKEEPER_ACCESS_TOKEN"));
    assert!(!env.values().any(|v| v == &t.access_token || v == &t.refresh_token));
    assert_eq!(env["TK_TEST_ORDINARY"], "inherited");
}
