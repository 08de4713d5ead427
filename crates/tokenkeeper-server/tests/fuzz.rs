//! Fuzzing of every parser of outside input, with proptest driven as a mutational fuzzer: each
//! input is a seed (a valid example of the format) put through random AFL-style "havoc"
//! mutations (bit flips, interesting bytes, dictionary tokens, deletions, duplications,
//! truncation), or plain random bytes.
//!
//! Targets: credential formats (Claude JSON, base64, OpenClaw, bare token, Keychain output,
//! and the existing files the renderers merge into), push bodies (`credential_text` then the
//! parser), `.env` editing, the config file (`Config::from_toml`), and templates.
//!
//! Properties: no panic, no hang (every input finishes well within [`HANG`]), and per target
//! what must hold for any input (an error never echoes a token, a set variable reads back, a
//! parsed credential survives a write and a re-read).
//!
//! `TK_FUZZ_CASES` sets the inputs per target (default 3000: seconds, for the test command);
//! the long run in `docs/TESTING.md` is this file in release mode with millions of cases.
//! Each target prints how many inputs it ran and its slowest one (`--nocapture` shows it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config as RunConfig, TestRunner};

use tokenkeeper_core::config::{SinkConfig, SinkKind, SinkTarget, TemplateSource};
use tokenkeeper_core::formats::{parse_credential, render_claude_credentials, render_openclaw, OpenclawLayout};
use tokenkeeper_core::Config;
use tokenkeeper_server::api::credential_text;
use tokenkeeper_sync::dotenv::{get_var, set_var};
use tokenkeeper_sync::render::render_sink;

/// Any single input taking longer than this counts as a hang.
const HANG: Duration = Duration::from_secs(2);

/// The secret part of every token in the seeds: no error message may contain it.
const MARK: &str = "FUZZSECRET";

fn cases() -> u32 {
    std::env::var("TK_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000)
}

const CLAUDE: &str = r#"{"claudeAiOauth":{"accessToken":"sk-ant-oat01-FUZZSECRETaccess","refreshToken":"sk-ant-ort01-FUZZSECRETrefresh","expiresAt":1800000000000,"scopes":["user:inference","user:profile"],"subscriptionType":"max","rateLimitTier":"default_claude_max_20x"},"mcpOAuth":{"x":{"token":"keep"}}}"#;
const OPENCLAW: &str = r#"{"anthropic":{"type":"oauth","access":"sk-ant-oat01-FUZZSECRETaccess","refresh":"sk-ant-ort01-FUZZSECRETrefresh","expires":1800000000000}}"#;
const OPENCLAW_PROFILES: &str = r#"{"version":1,"profiles":{"anthropic:default":{"type":"oauth","provider":"anthropic","access":"sk-ant-oat01-FUZZSECRETaccess","refresh":"sk-ant-ort01-FUZZSECRETrefresh","expires":1800000000000}}}"#;
const BARE: &str = "sk-ant-oat01-FUZZSECRETlonglivedtoken_AbC-123";
/// What `security find-generic-password -w` prints: the JSON and a newline.
const KEYCHAIN: &str = "{\"claudeAiOauth\":{\"accessToken\":\"sk-ant-oat01-FUZZSECRETk\",\"refreshToken\":\"sk-ant-ort01-FUZZSECRETr\",\"expiresAt\":1800000000000,\"scopes\":[\"user:inference\"]}}\n";
const PUSH_WRAPPED: &str = r#"{"credential": "sk-ant-oat01-FUZZSECRETwrapped"}"#;

const DOTENV: &str = "# the bot\nexport OTHER='x y'\nCLAUDE_CODE_OAUTH_TOKEN=old\r\nQUOTED=\"a \\\"b\\\" c\"\n  SPACED = v # note\nEMPTY=\n";
const TOML: &str = r#"
[keeper]
lead = "30m"
jitter = "2m"
max_attempts_per_hour = 12
[server]
listen = "127.0.0.1:8377"
header_read_timeout = "10s"
max_connections = 512
[providers.anthropic]
token_url = "https://platform.claude.com/v1/oauth/token"
scopes = ["user:inference"]
[accounts.main]
nudge = ["claude", "-p", "ok"]
[[sinks]]
account = "main"
kind = "env_file"
path = "/srv/bot/.env"
key = "CLAUDE_CODE_OAUTH_TOKEN"
mode = "0600"
on_change = ["docker", "compose", "up", "-d"]
timeout = "60s"
[[sinks]]
account = "main"
kind = "template"
path = "/srv/x.json"
template = "{\"t\": \"{{ access_token }}\"}"
[[alerts]]
kind = "webhook"
url = "https://hooks.example/tokenkeeper"
min_severity = "warning"
[alerting]
reminder = "6h"
"#;
const TEMPLATE: &str = "{\"token\": \"{{ access_token }}\", \"exp\": {{ expires_at_ms }}, \"account\": \"{{ account }}\"}\n{% if refresh_token %}{{ refresh_token | upper }}{% endif %}{% for s in scopes %}{{ s }},{% endfor %}{{ expires_at }}";

/// Tokens an AFL dictionary for these formats would hold.
const DICT: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ":",
    ",",
    "\\",
    "\\u0000",
    "\\ud800",
    "null",
    "true",
    "-1",
    "1e309",
    "0",
    "18446744073709551616",
    "\"claudeAiOauth\"",
    "\"accessToken\"",
    "\"refreshToken\"",
    "\"expiresAt\"",
    "\"scopes\"",
    "\"anthropic\"",
    "\"profiles\"",
    "\"access\"",
    "\"refresh\"",
    "\"expires\"",
    "sk-ant-",
    "sk-ant-oat01-",
    "sk-ant-ort01-",
    "=",
    "'",
    "export ",
    "#",
    "\n",
    "\r\n",
    "\t",
    "\u{feff}",
    "\u{0}",
    "é",
    "[[sinks]]",
    "[server]",
    "= \"",
    "\"\"\"",
    "'''",
    "{{",
    "}}",
    "{%",
    "%}",
    "{% for x in range(99) %}",
    "{% endfor %}",
    "{{ x.y.z }}",
    "|",
    "eyJ",
    "==",
    "+/",
    "-_",
];

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    Insert(usize, usize),
    InsertRandom(usize, Vec<u8>),
    Delete(usize, usize),
    Duplicate(usize, usize, usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting = prop_oneof![Just(0u8), Just(0xff), Just(0x7f), Just(0x80), Just(b'"'), Just(b'\n'), any::<u8>()];
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(p, b)| Mutation::FlipBit(p, b)),
        (any::<usize>(), interesting).prop_map(|(p, b)| Mutation::SetByte(p, b)),
        (any::<usize>(), 0..DICT.len()).prop_map(|(p, d)| Mutation::Insert(p, d)),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8)).prop_map(|(p, b)| Mutation::InsertRandom(p, b)),
        (any::<usize>(), 1usize..32).prop_map(|(p, n)| Mutation::Delete(p, n)),
        (any::<usize>(), 1usize..64, any::<usize>()).prop_map(|(p, n, to)| Mutation::Duplicate(p, n, to)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(seed: &str, mutations: &[Mutation]) -> String {
    let mut b = seed.as_bytes().to_vec();
    for m in mutations {
        let at = |p: usize, len: usize| if len == 0 { 0 } else { p % (len + 1) };
        match m {
            Mutation::FlipBit(p, bit) if !b.is_empty() => {
                let i = p % b.len();
                b[i] ^= 1 << bit;
            }
            Mutation::SetByte(p, v) if !b.is_empty() => {
                let i = p % b.len();
                b[i] = *v;
            }
            Mutation::Insert(p, d) => {
                let i = at(*p, b.len());
                b.splice(i..i, DICT[*d].bytes());
            }
            Mutation::InsertRandom(p, bytes) => {
                let i = at(*p, b.len());
                b.splice(i..i, bytes.iter().copied());
            }
            Mutation::Delete(p, n) if !b.is_empty() => {
                let i = p % b.len();
                let end = (i + n).min(b.len());
                b.drain(i..end);
            }
            Mutation::Duplicate(p, n, to) if !b.is_empty() => {
                let i = p % b.len();
                let piece: Vec<u8> = b[i..(i + n).min(b.len())].to_vec();
                let j = at(*to, b.len());
                b.splice(j..j, piece);
            }
            Mutation::Truncate(p) => {
                let i = at(*p, b.len());
                b.truncate(i);
            }
            _ => {}
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// Seeds mutated (mostly), or random bytes, or a seed's base64 form mutated.
fn input(seeds: &'static [&'static str]) -> impl Strategy<Value = String> {
    use base64::Engine as _;
    let seed = || proptest::sample::select(seeds);
    let mutations = || proptest::collection::vec(mutation(), 0..12);
    prop_oneof![
        8 => (seed(), mutations()).prop_map(|(s, m): (&str, Vec<Mutation>)| apply(s, &m)),
        1 => (seed(), mutations())
            .prop_map(|(s, m): (&str, Vec<Mutation>)| apply(&base64::engine::general_purpose::STANDARD.encode(s), &m)),
        1 => proptest::collection::vec(any::<u8>(), 0..256).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

/// Runs `check` on `cases()` inputs from `strategy`; fails on a panic, a failed property or a
/// hang, and prints the figures.
/// `check` says whether the input was accepted (parsed, rendered), so the figures show how
/// deep the inputs reach.
fn fuzz<S: Strategy>(name: &str, strategy: S, check: impl Fn(S::Value) -> Result<bool, TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let config = RunConfig { cases: cases(), failure_persistence: None, ..RunConfig::default() };
    let mut runner = TestRunner::new(config);
    let slowest = std::cell::Cell::new(Duration::ZERO);
    let runs = std::cell::Cell::new(0u64);
    let accepted = std::cell::Cell::new(0u64);
    let started = Instant::now();
    let result = runner.run(&strategy, |value| {
        let t = Instant::now();
        let r = check(value);
        let took = t.elapsed();
        runs.set(runs.get() + 1);
        slowest.set(slowest.get().max(took));
        prop_assert!(took < HANG, "one input took {took:?}: a hang");
        accepted.set(accepted.get() + u64::from(r?));
        Ok(())
    });
    eprintln!(
        "fuzz {name}: {} inputs ({} accepted) in {:.1?}, slowest {:?}",
        runs.get(),
        accepted.get(),
        started.elapsed(),
        slowest.get()
    );
    if let Err(e) = result {
        panic!("fuzz {name} failed: {e}");
    }
}

fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(1_790_000_000, 0).unwrap()
}

/// The properties of any credential input: an error never repeats a secret; a credential that
/// parses can be written as Claude Code's JSON and read back to the same tokens. (That Debug
/// shows no token is tested where the types are: a mutated input may well put a token into a
/// field that is not secret, such as `rateLimitTier`.)
fn check_credential(text: &str) -> Result<bool, TestCaseError> {
    match parse_credential(text, now()) {
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(!msg.contains(MARK), "the error repeats a secret: {msg}");
            prop_assert!(!format!("{e:?}").contains(MARK), "the error's Debug repeats a secret");
            Ok(false)
        }
        Ok(p) => {
            let written = render_claude_credentials(None, &p.credential).unwrap();
            let back = parse_credential(&written, now()).unwrap();
            prop_assert_eq!(back.credential.access_token, p.credential.access_token);
            prop_assert_eq!(back.credential.refresh_token, p.credential.refresh_token);
            Ok(true)
        }
    }
}

#[test]
fn fuzz_credential_formats() {
    let seeds: &'static [&'static str] = &[CLAUDE, OPENCLAW, OPENCLAW_PROFILES, BARE, KEYCHAIN];
    fuzz("credential formats", input(seeds), |text| check_credential(&text));
}

#[test]
fn fuzz_existing_files_the_renderers_merge_into() {
    let good = parse_credential(CLAUDE, now()).unwrap().credential;
    let seeds: &'static [&'static str] = &[CLAUDE, OPENCLAW, OPENCLAW_PROFILES, KEYCHAIN];
    fuzz("renderers' existing files", input(seeds), |existing| {
        // Whatever is on disk, the merge either refuses with an error or writes a file from
        // which the new credential reads back.
        let merged = render_claude_credentials(Some(&existing), &good);
        if let Ok(out) = &merged {
            let back = parse_credential(out, now()).map_err(|e| TestCaseError::fail(format!("{e}: {out}")))?;
            prop_assert_eq!(&back.credential.access_token, &good.access_token);
        }
        for layout in [OpenclawLayout::Oauth, OpenclawLayout::AuthProfiles] {
            let _ = render_openclaw(Some(&existing), &good, layout);
        }
        Ok(merged.is_ok())
    });
}

#[test]
fn fuzz_push_bodies() {
    let seeds: &'static [&'static str] = &[PUSH_WRAPPED, CLAUDE, OPENCLAW, BARE, KEYCHAIN];
    fuzz("push bodies", input(seeds), |body| match credential_text(&body) {
        Ok(text) => check_credential(&text),
        Err(_) => Ok(false),
    });
}

#[test]
fn fuzz_dotenv_editing() {
    let seeds: &'static [&'static str] = &[DOTENV, "", "CLAUDE_CODE_OAUTH_TOKEN=\"unterminated\n"];
    let value = "[A-Za-z0-9_.:/+=-]{0,40}";
    fuzz("dotenv editing", (input(seeds), value), |(existing, value)| {
        let out = set_var(&existing, "CLAUDE_CODE_OAUTH_TOKEN", &value);
        prop_assert_eq!(get_var(&out, "CLAUDE_CODE_OAUTH_TOKEN"), Some(value.clone()), "in {:?}", out);
        // Setting it again reads back too (and, for a file whose quotes pair up, changes
        // nothing; a broken one may get a fresh assignment appended instead).
        let again = set_var(&out, "CLAUDE_CODE_OAUTH_TOKEN", &value);
        prop_assert_eq!(get_var(&again, "CLAUDE_CODE_OAUTH_TOKEN"), Some(value.clone()));
        if !existing.contains(['"', '\'', '`']) {
            prop_assert_eq!(again, out);
        }
        Ok(true)
    });
}

#[test]
fn fuzz_config_file() {
    let seeds: &'static [&'static str] = &[TOML, "", "[keeper]\nlead = \"10m\"\n"];
    fuzz("config file", input(seeds), |text| {
        if let Ok(config) = Config::from_toml(&text, Path::new("/etc/tokenkeeper/config.toml")) {
            // What loads is valid, and an alert's Debug does not show its URL (may hold a secret).
            config.validate("fuzz").map_err(|e| TestCaseError::fail(format!("loaded but invalid: {e}")))?;
            for alert in &config.alerts {
                if let Some(url) = alert.url.as_deref().filter(|u| u.len() >= 8) {
                    prop_assert!(!format!("{alert:?}").contains(url), "an alert's URL shows in its Debug");
                }
            }
            return Ok(true);
        }
        Ok(false)
    });
}

#[test]
fn fuzz_templates() {
    let account = tokenkeeper_sync::testing::account("main", "sk-ant-oat01-FUZZSECRETaccess");
    let seeds: &'static [&'static str] = &[TEMPLATE, "{{ access_token }}", "{% if x %}{{ y }}{% else %}z{% endif %}"];
    let base: SinkConfig = Config::from_toml(
        "[[sinks]]\naccount = \"main\"\nkind = \"template\"\nname = \"t\"\npath = \"/tmp/x\"\ntemplate = \"x\"\n",
        Path::new("fuzz.toml"),
    )
    .unwrap()
    .sinks
    .remove(0);
    assert_eq!(base.kind(), SinkKind::Template);
    let file = base.file().unwrap().clone();
    fuzz("templates", input(seeds), |template| {
        let target = SinkTarget::Template { file: file.clone(), source: TemplateSource::Text(template) };
        let cfg = SinkConfig { target, ..base.clone() };
        match render_sink(&cfg, &account, None) {
            Ok(_) => Ok(true),
            Err(e) => {
                prop_assert!(!e.to_string().contains(MARK), "a template error repeats the token: {e}");
                Ok(false)
            }
        }
    });
}
