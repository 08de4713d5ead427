//! Golden files: what each file sink writes, byte for byte (`tests/golden/*.golden`).
//! Set `TK_UPDATE_GOLDEN=1` to rewrite them after an intended change, then review the diff.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use tokenkeeper_core::config::SinkConfig;
use tokenkeeper_core::{Account, Secret};
use tokenkeeper_sync::render::render_sink;

const ACCESS: &str = "sk-ant-oat01-NEWACCESS_abc";
const REFRESH: &str = "sk-ant-ort01-NEWREFRESH_xyz";

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn account() -> Account {
    let mut a = tokenkeeper_sync::testing::account("main", ACCESS);
    a.credential.refresh_token = Some(Secret::new(REFRESH));
    a.credential.scopes = vec!["user:inference".into(), "user:profile".into()];
    a.credential.subscription_type = Some("max".into());
    a.credential.rate_limit_tier = Some("default_claude_max_20x".into());
    a.version = 3;
    a.email = Some("me@example.com".into());
    a
}

fn sink(toml_text: &str) -> SinkConfig {
    let text = toml_text.replace("@DIR@", &dir().display().to_string());
    toml::from_str(&format!("account = \"main\"\n{text}")).unwrap()
}

fn check(name: &str, cfg: &SinkConfig, input: Option<&str>) -> String {
    let existing = input.map(|i| std::fs::read_to_string(dir().join(i)).unwrap());
    let out = render_sink(cfg, &account(), existing.as_deref()).unwrap().contents;
    let golden = dir().join(format!("{name}.golden"));
    if std::env::var_os("TK_UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &out).unwrap();
    }
    let want = std::fs::read_to_string(&golden).unwrap();
    assert_eq!(out, want, "{name} differs from {}", golden.display());
    // Rendering the result again changes nothing, so a sink never rewrites an unchanged file.
    assert_eq!(render_sink(cfg, &account(), Some(&out)).unwrap().contents, out, "{name} is not stable");
    out
}

#[test]
fn env_file_sets_only_the_access_token() {
    let cfg = sink("kind = \"env_file\"\npath = \"/srv/bot/.env\"\nkey = \"CLAUDE_CODE_OAUTH_TOKEN\"");
    let out = check("env_file", &cfg, Some("env_file.input.env"));
    assert!(!out.contains(REFRESH));
}

#[test]
fn claude_credentials_merges_and_keeps_unknown_keys() {
    let cfg = sink("kind = \"claude_credentials\"\npath = \"/root/.claude/.credentials.json\"");
    let out = check("claude_credentials", &cfg, Some("claude_credentials.input.json"));
    assert!(out.contains("futureField") && out.contains("mcpOAuth"));
    check("claude_credentials_new", &cfg, None);
}

#[test]
fn openclaw_layouts() {
    let cfg = sink("kind = \"openclaw\"\npath = \"/x/oauth.json\"");
    check("openclaw_oauth_new", &cfg, None);
    let cfg = sink("kind = \"openclaw\"\npath = \"/x/auth-profiles.json\"\nlayout = \"auth_profiles\"");
    let out = check("openclaw_auth_profiles", &cfg, Some("openclaw_auth_profiles.input.json"));
    assert!(out.contains("keep-me") && out.contains("anthropic:work") && !out.contains("anthropic:default"));
}

#[test]
fn template_gets_exactly_what_it_names() {
    let cfg = sink("kind = \"template\"\npath = \"/x/t.env\"\ntemplate_file = \"@DIR@/template.j2\"");
    let out = check("template", &cfg, None);
    assert!(!out.contains(REFRESH));
    let cfg = sink("kind = \"template\"\npath = \"/x/t.json\"\ntemplate_file = \"@DIR@/template_refresh.j2\"");
    let out = check("template_refresh", &cfg, None);
    assert!(out.contains(REFRESH));
}
