//! Config files written for earlier releases keep loading, and load to the same sinks.
//!
//! `tests/fixtures/configs/*.toml` are config files as users wrote them (the examples of the
//! docs and every key of every sink kind); the deploy examples are read where they live. Each
//! loads to the sinks described in the `.sinks` file next to it, which was written by the
//! release before sink kinds became typed: every effective value (defaults filled in) and the
//! display name, which status, metrics and the store's `sinks/health` key are keyed by.
//! `native.toml` was added with that kind, after the typed release; its `.sinks` file pins
//! that release's reading. `run_on` is the effective value ([`SinkConfig::runs_on`]).
//! `TK_UPDATE_GOLDEN=1` rewrites the `.sinks` files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use tokenkeeper_core::config::{InfisicalAuth, InfisicalFormat, SinkConfig, SinkTarget, TemplateSource};
use tokenkeeper_core::formats::OpenclawLayout;
use tokenkeeper_core::Config;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every effective setting of a sink, one `key = value` per line (the spelling of the
/// release before sink kinds became typed, so its `.sinks` files stay the contract).
fn describe(s: &SinkConfig) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| writeln!(out, "{k} = {v}").unwrap();
    line("name", s.display_name());
    line("account", s.account.clone());
    line("kind", s.kind().to_string());
    line("on_change", format!("{:?}", s.on_change));
    line("timeout", format!("{:?}", s.timeout));
    line("debounce", format!("{:?}", s.debounce));
    line("run_on", format!("{:?}", s.runs_on()));
    if let Some(f) = s.file() {
        line("path", format!("{:?}", f.path));
        line("mode", format!("{:o}", f.mode));
        line("owner", format!("{:?}", f.owner));
        line("group", format!("{:?}", f.group));
        line("write", format!("{:?}", f.write));
    }
    match &s.target {
        SinkTarget::EnvFile { key, .. } => line("key", key.clone()),
        SinkTarget::ClaudeCredentials { .. } => {}
        SinkTarget::Openclaw { layout, .. } => line(
            "layout",
            match layout {
                OpenclawLayout::Oauth => "oauth",
                OpenclawLayout::AuthProfiles => "auth_profiles",
            }
            .into(),
        ),
        SinkTarget::Template { source, .. } => {
            let (text, file) = match source {
                TemplateSource::Text(t) => (Some(t), None),
                TemplateSource::File(f) => (None, Some(f)),
            };
            line("template", format!("{text:?}"));
            line("template_file", format!("{file:?}"));
        }
        SinkTarget::Infisical(i) => {
            line("url", i.url.clone());
            line("project_id", i.project_id.clone());
            line("environment", i.environment.clone());
            line("secret_path", i.secret_path.clone());
            line("secret_name", i.secret_name.clone());
            let format = match i.format {
                InfisicalFormat::Base64Json => "base64_json",
                InfisicalFormat::Json => "json",
                InfisicalFormat::AccessToken => "access_token",
            };
            line("format", format.into());
            let (token, id, secret) = match &i.auth {
                InfisicalAuth::Token(t) => (Some(t), None, None),
                InfisicalAuth::Universal { client_id_file, client_secret_file } => {
                    (None, Some(client_id_file), Some(client_secret_file))
                }
            };
            line("token_file", format!("{token:?}"));
            line("client_id_file", format!("{id:?}"));
            line("client_secret_file", format!("{secret:?}"));
        }
        SinkTarget::Command { argv } => line("command", format!("{argv:?}")),
        SinkTarget::Native { provider, .. } => line("provider", format!("{provider:?}")),
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
    assert_eq!(seen, 4, "a fixture went missing from {}", dir.display());
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
