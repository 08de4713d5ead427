//! Config files written for earlier releases keep loading, and load to the same sinks.
//!
//! `tests/fixtures/configs/*.toml` are config files as users wrote them (the examples of the
//! docs and every key of every sink kind); the deploy examples are read where they live. Each
//! loads to the sinks described in the `.sinks` file next to it, which was written by the
//! release before sink kinds became typed: every effective value (defaults filled in) and the
//! display name, which status, metrics and the store's `sinks/health` key are keyed by.
//! `TK_UPDATE_GOLDEN=1` rewrites the `.sinks` files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use tokenkeeper_core::config::{SinkConfig, SinkKind};
use tokenkeeper_core::Config;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every effective setting of a sink, one `key = value` per line.
fn describe(s: &SinkConfig) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| writeln!(out, "{k} = {v}").unwrap();
    line("name", s.display_name());
    line("account", s.account.clone());
    line("kind", s.kind.to_string());
    line("on_change", format!("{:?}", s.on_change));
    line("timeout", format!("{:?}", s.timeout));
    line("debounce", format!("{:?}", s.debounce));
    match s.kind {
        SinkKind::EnvFile | SinkKind::ClaudeCredentials | SinkKind::Openclaw | SinkKind::Template => {
            line("path", format!("{:?}", s.path.as_ref().unwrap()));
            line("mode", format!("{:o}", s.file_mode()));
            line("owner", format!("{:?}", s.owner));
            line("group", format!("{:?}", s.group));
            line("write", format!("{:?}", s.write));
        }
        SinkKind::Infisical | SinkKind::Command => {}
    }
    match s.kind {
        SinkKind::EnvFile => line("key", s.key.clone().unwrap()),
        SinkKind::ClaudeCredentials => {}
        SinkKind::Openclaw => line("layout", s.layout.clone().unwrap_or_else(|| "oauth".into())),
        SinkKind::Template => {
            line("template", format!("{:?}", s.template));
            line("template_file", format!("{:?}", s.template_file));
        }
        SinkKind::Infisical => {
            line("url", s.url.clone().unwrap());
            line("project_id", s.project_id.clone().unwrap());
            line("environment", s.environment.clone().unwrap_or_else(|| "prod".into()));
            line("secret_path", s.secret_path.clone().unwrap_or_else(|| "/".into()));
            line("secret_name", s.secret_name.clone().unwrap());
            line("format", s.format.clone().unwrap_or_else(|| "base64_json".into()));
            line("token_file", format!("{:?}", s.token_file));
            line("client_id_file", format!("{:?}", s.client_id_file));
            line("client_secret_file", format!("{:?}", s.client_secret_file));
        }
        SinkKind::Command => line("command", format!("{:?}", s.command.as_ref().unwrap())),
    }
    out
}

fn check(config: &Path, golden: &Path) {
    let text = std::fs::read_to_string(config).unwrap();
    let c = Config::from_toml(&text, config).unwrap_or_else(|e| panic!("{}: {e}", config.display()));
    assert!(!c.sinks.is_empty(), "{} has no sinks", config.display());
    let described: String = c.sinks.iter().map(describe).collect::<Vec<_>>().join("\n");
    if std::env::var_os("TK_UPDATE_GOLDEN").is_some() {
        std::fs::write(golden, &described).unwrap();
    }
    let expected = std::fs::read_to_string(golden).unwrap_or_else(|e| panic!("{}: {e}", golden.display()));
    assert_eq!(described, expected, "{} loads differently from {}", config.display(), golden.display());
}

#[test]
fn old_config_files_load_to_the_same_sinks() {
    let dir = root().join("crates/tokenkeeper-core/tests/fixtures/configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            check(&path, &path.with_extension("sinks"));
            seen += 1;
        }
    }
    assert_eq!(seen, 3, "a fixture went missing from {}", dir.display());
}

#[test]
fn deploy_examples_load_to_the_same_sinks() {
    let fixtures = root().join("crates/tokenkeeper-core/tests/fixtures/configs");
    for (config, golden) in [
        ("deploy/compose/config.toml", "deploy-compose.sinks"),
        ("deploy/compose/config.restart.toml", "deploy-compose-restart.sinks"),
    ] {
        check(&root().join(config), &fixtures.join(golden));
    }
}
