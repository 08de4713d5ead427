//! Issue 2's "done when", through the real binary against the mock provider: login with the
//! code pasted on stdin, status and token, every import format, every refusal leaving the
//! store as it was, and no token anywhere in what the program printed or stored in clear.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use base64::Engine;
use common::{stderr, stdout, World};

#[tokio::test(flavor = "multi_thread")]
async fn login_then_status_and_token() {
    let w = World::new().await;
    let out = w.login(Some("main"), "me@example.com");
    assert!(out.status.success(), "login failed: {}", stderr(&out));
    assert!(stderr(&out).contains("Logged in: account `main` created (me@example.com)"), "{}", stderr(&out));
    assert_eq!(w.mock.counts().exchange_ok, 1);

    let status = w.ok(&["status"], "");
    assert!(status.contains("main") && status.contains("healthy"), "{status}");
    assert!(status.contains("7h 5") || status.contains("7h 59m") || status.contains("8h 00m"), "{status}");

    let json: serde_json::Value = serde_json::from_str(&w.ok(&["status", "--json"], "")).unwrap();
    assert_eq!(json[0]["name"], "main");
    assert_eq!(json[0]["email"], "me@example.com");
    assert_eq!(json[0]["status"], "healthy");

    let token = w.ok(&["token"], "");
    let token = token.trim();
    assert!(token.starts_with("sk-ant-oat01-"), "{token}");
    assert!(w.mock.is_access_token_valid(token));
    // Fresh token: no refresh was spent.
    assert_eq!(w.mock.counts().refresh_ok, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn login_with_a_bad_paste_says_what_to_paste() {
    let w = World::new().await;
    let out = w.run(&["login"], "justacode\n");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("#"), "{}", stderr(&out));
    let out = w.run(&["login"], "code#wrongstate\n");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("another login attempt"), "{}", stderr(&out));
    let out = w.run(&["login"], "\n");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("CODE#STATE"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn token_refreshes_a_due_credential_first() {
    let w = World::new().await;
    w.mock.set_access_lifetime(std::time::Duration::from_secs(20 * 60)); // inside the 30 min lead
    let (json, _) = w.claude_json("a@example.com");
    w.ok(&["import", "-"], &json);
    let token = w.ok(&["token"], "");
    assert_eq!(w.mock.counts().refresh_ok, 1);
    assert!(w.mock.is_access_token_valid(token.trim()));
}

#[tokio::test(flavor = "multi_thread")]
async fn imports_every_stdin_format() {
    let w = World::new().await;
    let b64 = base64::engine::general_purpose::STANDARD;
    // Claude JSON.
    let (json, t1) = w.claude_json("a@example.com");
    let out = w.run(&["import", "-", "--account", "json"], &json);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("Claude Code credentials JSON"), "{}", stderr(&out));
    // Base64 of the JSON, wrapped like `base64` does.
    let (json2, _) = w.claude_json("b@example.com");
    let enc = b64.encode(json2);
    let wrapped: String =
        enc.as_bytes().chunks(76).map(|c| std::str::from_utf8(c).unwrap().to_owned() + "\n").collect();
    let out = w.run(&["import", "-", "--account", "b64"], &wrapped);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("base64"), "{}", stderr(&out));
    // OpenClaw oauth.json.
    let t3 = w.mock.issue_login("c@example.com");
    let oc = serde_json::json!({"anthropic": {"access": t3.access_token, "refresh": t3.refresh_token, "expires": t3.expires_at_ms}});
    let out = w.run(&["import", "-", "--account", "openclaw"], &oc.to_string());
    assert!(out.status.success(), "{}", stderr(&out));
    // OpenClaw auth-profiles.
    let t4 = w.mock.issue_login("d@example.com");
    let ap = serde_json::json!({"version": 1, "profiles": {"anthropic:default": {"type": "oauth", "provider": "anthropic", "access": t4.access_token, "refresh": t4.refresh_token, "expires": t4.expires_at_ms}}});
    let out = w.run(&["import", "-", "--account", "profiles"], &ap.to_string());
    assert!(out.status.success(), "{}", stderr(&out));
    // A bare long-lived token.
    let out = w.run(&["import", "-", "--account", "longlived"], "sk-ant-oat01-longlivedSETUPTOKENvalue\n");
    assert!(out.status.success(), "{}", stderr(&out));

    let json: serde_json::Value = serde_json::from_str(&w.ok(&["status", "--json"], "")).unwrap();
    let names: Vec<&str> = json.as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["b64", "json", "longlived", "openclaw", "profiles"]);
    let long = json.as_array().unwrap().iter().find(|a| a["name"] == "longlived").unwrap();
    assert_eq!(long["refreshable"], false);
    assert!(long["expires_in_seconds"].as_i64().unwrap() > 360 * 86_400);
    assert_eq!(w.ok(&["token", "--account", "json"], "").trim(), t1.access_token);
    // Several accounts and none named: a clear error listing them.
    let out = w.run(&["token"], "");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("several accounts") && stderr(&out).contains("openclaw"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn imports_claude_code_file_and_binds_it() {
    let w = World::new().await;
    let (json, t) = w.claude_json("a@example.com");
    std::fs::write(w.claude_file(), &json).unwrap();
    // Default source: ~/.claude/.credentials.json.
    let out = w.run(&["import"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("bound to"), "{}", stderr(&out));
    // CLAUDE_CONFIG_DIR is honoured.
    let other = w.dir.path().join("other-claude");
    std::fs::create_dir_all(&other).unwrap();
    let (json2, _) = w.claude_json("b@example.com");
    std::fs::write(other.join(".credentials.json"), &json2).unwrap();
    let out = w.cmd(&["import", "--account", "second"]).env("CLAUDE_CONFIG_DIR", &other).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // An OpenClaw file by path.
    let t3 = w.mock.issue_login("c@example.com");
    let oc_path = w.dir.path().join("oauth.json");
    std::fs::write(&oc_path, serde_json::json!({"anthropic": {"access": t3.access_token, "refresh": t3.refresh_token, "expires": t3.expires_at_ms}}).to_string()).unwrap();
    let out = w.run(&["import", oc_path.to_str().unwrap(), "--account", "third"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let accounts = w.ok(&["accounts"], "");
    assert!(accounts.contains(".credentials.json"), "{accounts}");
    assert_eq!(w.ok(&["token", "-a", "main"], "").trim(), t.access_token);
}

#[tokio::test(flavor = "multi_thread")]
async fn keychain_import_is_macos_only() {
    let w = World::new().await;
    let out = w.run(&["import", "keychain"], "");
    if cfg!(target_os = "macos") {
        return;
    }
    assert!(!out.status.success());
    assert!(stderr(&out).contains("only on macOS"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_are_clear_and_leave_the_store_as_it_was() {
    let w = World::new().await;
    let (good, t) = w.claude_json("a@example.com");
    w.ok(&["import", "-"], &good);
    let before = w.ok(&["status", "--json"], "");
    let store_before = w.store().await;
    let v_before = tokenkeeper_core::Store::get_account(&store_before, "main").await.unwrap().unwrap().version;

    let older = serde_json::json!({"claudeAiOauth": {"accessToken": "sk-ant-oat01-olderOLDER", "refreshToken": "sk-ant-ort01-olderOLDER", "expiresAt": t.expires_at_ms - 3_600_000, "scopes": ["user:inference"]}}).to_string();
    let blank = r#"{"claudeAiOauth":{"accessToken":"","refreshToken":"","expiresAt":0,"scopes":[]}}"#;
    let truncated = &good[..good.len() / 2];
    let unreadable = w.dir.path().join("unreadable.json");
    std::fs::write(&unreadable, &good).unwrap();
    let cases: Vec<(Vec<String>, String, &str)> = vec![
        (vec!["import".into(), "-".into()], older, "older"),
        (vec!["import".into(), "-".into()], blank.into(), "blank stub"),
        (vec!["import".into(), "-".into()], truncated.into(), "cut off"),
        (vec!["import".into(), "-".into()], "%%%not-base64%%%".into(), "base64"),
        (vec!["import".into(), "-".into()], "".into(), "empty"),
        (vec!["import".into(), w.dir.path().join("missing.json").display().to_string()], String::new(), "cannot read"),
        (vec!["import".into(), w.dir.path().display().to_string()], String::new(), "cannot read"),
    ];
    for (args, input, expect) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = w.run(&args, &input);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = stderr(&out);
        assert!(err.contains(expect), "{args:?}: expected `{expect}` in: {err}");
        assert!(!err.contains("olderOLDER"), "the refused token was echoed: {err}");
    }
    assert_eq!(w.ok(&["status", "--json"], ""), before);
    let v_after = tokenkeeper_core::Store::get_account(&w.store().await, "main").await.unwrap().unwrap().version;
    assert_eq!(v_before, v_after);
    assert_eq!(w.ok(&["token"], "").trim(), t.access_token);
}

#[tokio::test(flavor = "multi_thread")]
async fn remove_asks_unless_yes() {
    let w = World::new().await;
    let (json, _) = w.claude_json("a@example.com");
    w.ok(&["import", "-"], &json);
    let out = w.run(&["accounts", "remove", "main"], "");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--yes"), "{}", stderr(&out));
    w.ok(&["accounts", "remove", "main", "--yes"], "");
    let out = w.run(&["token"], "");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no accounts yet"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_and_help_work() {
    let w = World::new().await;
    for shell in ["bash", "zsh", "fish"] {
        let out = w.ok(&["completions", shell], "");
        assert!(out.contains("tokenkeeper"), "{shell}");
    }
    let help = stdout(&w.run(&["--help"], ""));
    for cmd in ["login", "import", "accounts", "status", "token", "refresh", "exec", "serve", "sync"] {
        assert!(help.contains(cmd), "{cmd} missing from --help");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_config_names_file_and_key() {
    let w = World::new().await;
    w.write_config("[keeper]\nleed = \"30m\"\n");
    let out = w.run(&["status"], "");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("config.toml") && err.contains("leed") && err.contains("lead"), "{err}");
}

/// Runs a scenario through the binary and scans everything: output, logs (debug level), the
/// data directory on disk, and the argv of every process spawned.
#[tokio::test(flavor = "multi_thread")]
async fn no_token_appears_in_clear_anywhere() {
    let w = World::new().await;
    w.mock.set_access_lifetime(std::time::Duration::from_secs(10 * 60));
    let out = w.login(Some("main"), "leak@example.com");
    assert!(out.status.success(), "{}", stderr(&out));
    let (json, t) = w.claude_json("other@example.com");
    w.ok(&["import", "-", "--account", "other"], &json);
    w.ok(&["status"], "");
    w.ok(&["status", "--json"], "");
    w.ok(&["accounts", "--json"], "");
    let _ = w.run(&["refresh", "--force", "-a", "main"], "");
    let _ = w.run(&["refresh", "-a", "other"], "");
    // A refused import logs the refused credential's fingerprint at most.
    let _ = w.run(&["import", "-", "--account", "other"], &json);
    // exec: the token goes to the child's environment, not its argv.
    let script = w.dir.path().join("argv.sh");
    std::fs::write(&script, "#!/bin/sh\necho \"argv: $0 $*\"\n").unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(&mut std::fs::metadata(&script).unwrap().permissions(), 0o755);
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let argv_out = w.ok(&["exec", "-a", "other", "--", script.to_str().unwrap(), "hello"], "");
    assert!(argv_out.contains("argv:") && argv_out.contains("hello"));

    // Every token the mock ever issued in this test.
    let store = w.store().await;
    let mut secrets = vec![t.access_token.clone(), t.refresh_token.clone()];
    for a in tokenkeeper_core::Store::list_accounts(&store).await.unwrap() {
        secrets.push(a.credential.access_token.expose().to_owned());
        if let Some(r) = &a.credential.refresh_token {
            secrets.push(r.expose().to_owned());
        }
    }
    let transcript = w.transcript_text();
    assert!(transcript.contains("sk-ant-oat01-…"), "fingerprints expected in the logs");
    for s in &secrets {
        // The token command's own stdout is the one place a token belongs; it was not run here.
        assert!(!transcript.contains(s.as_str()), "a token appeared in the output");
        for (path, bytes) in common::read_tree(&w.data_dir()) {
            assert!(
                !bytes.windows(s.len()).any(|win| win == s.as_bytes()),
                "a token appears in clear in {}",
                path.display()
            );
        }
        for argv in w.argvs.lock().unwrap().iter() {
            assert!(!argv.iter().any(|a| a.contains(s.as_str())), "a token appeared in argv");
        }
        assert!(!argv_out.contains(s.as_str()), "a token reached the child's argv");
    }
}
