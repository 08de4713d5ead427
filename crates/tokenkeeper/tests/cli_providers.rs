//! Providers beyond Anthropic through the real binary: Codex's `auth.json` imported by
//! `--provider` and by detection, refreshed against the mock's OpenAI-shaped endpoint, written
//! back with every unknown key, shown with its provider in `status`, and handed to `exec` as
//! Codex reads it (`CODEX_HOME` pointing at a private directory, no usable refresh token).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{stderr, stdout, World};
use serde_json::{json, Value};
use tokenkeeper_mock::Shape;

/// An `auth.json` as Codex writes it, with keys of a future version at two levels.
fn codex_file(access: &str, refresh: &str, id_token: &str, account_id: &str) -> String {
    serde_json::to_string_pretty(&json!({
        "auth_mode": "chatgpt",
        "OPENAI_API_KEY": null,
        "tokens": {
            "id_token": id_token,
            "access_token": access,
            "refresh_token": refresh,
            "account_id": account_id,
            "x_future_token_field": {"nested": [1, {"deep": true}]}
        },
        "last_refresh": "2026-11-20T08:15:30.123456Z",
        "x_future_top": {"a": "b"}
    }))
    .unwrap()
}

fn config(w: &World) -> String {
    format!("[providers.codex]\ntoken_url = \"{}\"\n", w.mock.shape_token_url(Shape::Codex))
}

fn read_json(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_is_imported_refreshed_written_back_and_handed_to_exec() {
    let w = World::new().await;
    w.write_config(&config(&w));
    let login = w.mock.issue_shape_login(Shape::Codex, "dev@example.com");
    let file = w.home().join(".codex/auth.json");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let (id_token, account_id) = (login.id_token.clone().unwrap(), login.account_id.clone().unwrap());
    std::fs::write(&file, codex_file(&login.access_token, &login.refresh_token, &id_token, &account_id)).unwrap();

    // `--provider codex` without a file reads Codex's own (~/.codex/auth.json) and binds it.
    let out = w.run(&["import", "--provider", "codex", "--account", "dev"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains("provider codex") && said.contains("bound to"), "{said}");

    let status: Value = serde_json::from_str(&w.ok(&["status", "--json"], "")).unwrap();
    let dev = &status.as_array().unwrap()[0];
    assert_eq!(dev["provider"], "codex", "{status}");
    assert_eq!(dev["bound_file"], file.display().to_string());
    assert!(w.ok(&["status"], "").contains("codex"));

    // Two forced rotations: one request each at the OpenAI-shaped endpoint, none rejected.
    for round in 1..=2u64 {
        w.ok(&["refresh", "--force", "--account", "dev"], "");
        let counts = w.mock.shape_counts(Shape::Codex);
        assert_eq!((counts.refresh_ok, counts.refresh_rejected), (round, 0), "round {round}");
    }
    let store = w.store().await;
    let stored = tokenkeeper_core::Store::get_account(&store, "dev").await.unwrap().unwrap();
    assert_ne!(stored.credential.access_token.expose(), login.access_token);
    // The bound file holds the new tokens in Codex's shape, every unknown key kept.
    let doc = read_json(&file);
    assert_eq!(doc["tokens"]["access_token"], stored.credential.access_token.expose());
    assert_eq!(doc["tokens"]["refresh_token"], stored.credential.refresh_token.as_ref().unwrap().expose());
    assert_eq!(doc["tokens"]["x_future_token_field"]["nested"][1]["deep"], true);
    assert_eq!((doc["x_future_top"]["a"].as_str(), doc["auth_mode"].as_str()), (Some("b"), Some("chatgpt")));
    assert_ne!(doc["last_refresh"], "2026-11-20T08:15:30.123456Z", "Codex ignores tokens without a fresh last_refresh");

    // check names the provider of an account that is not Claude's, text and JSON.
    let out = w.run(&["check"], "");
    let text = stdout(&out);
    assert!(text.starts_with("OK dev [codex]: "), "{text}");
    let report: Value = serde_json::from_str(&stdout(&w.run(&["check", "--json"], ""))).unwrap();
    assert_eq!(report["accounts"][0]["provider"], "codex", "{report}");

    // The Anthropic proxy never picks a Codex login; its pool status says so and why.
    let table = w.ok(&["pool"], "");
    assert!(table.contains("dev (codex): never picked: Codex CLI (codex) speaks the ChatGPT Codex API"), "{table}");
    let pools: Value = serde_json::from_str(&w.ok(&["pool", "--json"], "")).unwrap();
    assert_eq!(pools[0]["skipped"][0]["account"], "dev", "{pools}");
    assert_eq!(pools[0]["members"], json!([]), "{pools}");

    // exec: Codex finds its file where CODEX_HOME points, private, without a refresh token
    // it could spend (which would log the keeper out). The child copies what it finds, since
    // the file is gone once it ends.
    let copy = w.dir.path().join("handed.json");
    let perms = w.dir.path().join("perms");
    let script = format!(
        "printf '%s\\n' \"$CODEX_HOME\"; stat -c '%a' \"$CODEX_HOME\" \"$CODEX_HOME/auth.json\" > {}; cp \"$CODEX_HOME/auth.json\" {}",
        perms.display(),
        copy.display()
    );
    let out = w.run(&["exec", "--account", "dev", "--", "sh", "-c", &script], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let home = std::path::PathBuf::from(stdout(&out).trim());
    assert!(home.starts_with(w.data_dir()), "{}", home.display());
    assert_eq!(std::fs::read_to_string(&perms).unwrap(), "700\n600\n", "the directory 0700, the file 0600");
    assert!(!home.join("auth.json").exists(), "the file holding the access token is removed when the child ends");
    let doc = read_json(&copy);
    assert_eq!(doc["tokens"]["access_token"], stored.credential.access_token.expose());
    assert_eq!(doc["tokens"]["refresh_token"], "", "the child must not get the keeper's refresh token");
    assert!(doc["tokens"]["id_token"].as_str().is_some_and(|t| !t.is_empty()), "Codex needs its id_token");

    // The child's exit code is tokenkeeper's, and the file is removed after a failure too.
    let out = w.run(&["exec", "--account", "dev", "--", "sh", "-c", "test -s \"$CODEX_HOME/auth.json\" && exit 7"], "");
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(!home.join("auth.json").exists());
    // A child killed by a signal tokenkeeper does not pass on ends tokenkeeper the same way.
    let out = w.run(&["exec", "--account", "dev", "--", "sh", "-c", "kill -KILL $$"], "");
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&out.status), Some(9), "{:?}", out.status);
    assert!(!home.join("auth.json").exists());
    assert!(!stderr(&out).contains(stored.credential.access_token.expose()));
}

#[tokio::test(flavor = "multi_thread")]
async fn import_detects_codex_after_the_claude_shapes_and_refuses_unknown_json_helpfully() {
    let w = World::new().await;
    w.write_config(&config(&w));
    let login = w.mock.issue_shape_login(Shape::Codex, "dev@example.com");
    let text = codex_file(&login.access_token, &login.refresh_token, &login.id_token.unwrap(), "acct-1");
    // From stdin: detected by its shape, not bound (there is no file to keep in step).
    let out = w.run(&["import", "-", "--account", "piped"], &text);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("provider codex"), "{}", stderr(&out));
    let status: Value = serde_json::from_str(&w.ok(&["status", "--json"], "")).unwrap();
    assert_eq!(status[0]["provider"], "codex");
    assert!(status[0]["bound_file"].is_null());

    // Claude Code's JSON is still read as before.
    let (claude, _) = w.claude_json("c@example.com");
    let out = w.run(&["import", "-", "--account", "claude"], &claude);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("provider anthropic"), "{}", stderr(&out));

    // JSON nobody claims: the message names the files it could have been and the flag.
    let out = w.run(&["import", "-", "--account", "x"], "{\"something\": {\"else\": 1}}");
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("--provider") && e.contains("auth.json"), "{e}");

    // An unknown provider id names the ones there are and how to add one.
    let out = w.run(&["import", "-", "--provider", "nope"], &text);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("codex") && e.contains("[providers.nope]"), "{e}");
}

/// An `oauth_creds.json` as Gemini CLI writes it, with an unknown key.
fn gemini_file(access: &str, refresh: &str, id_token: &str, expiry_ms: i64) -> String {
    serde_json::to_string_pretty(&json!({
        "access_token": access,
        "refresh_token": refresh,
        "scope": "https://www.googleapis.com/auth/cloud-platform openid",
        "token_type": "Bearer",
        "id_token": id_token,
        "expiry_date": expiry_ms,
        "x_future": {"deep": [1, 2]}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn gemini_is_imported_by_shape_refreshed_and_delivered_by_a_native_sink() {
    let w = World::new().await;
    let file = w.home().join(".gemini/oauth_creds.json");
    let mounted = w.dir.path().join("mounted/oauth_creds.json");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::create_dir_all(mounted.parent().unwrap()).unwrap();
    w.write_config(&format!(
        "[providers.gemini]\ntoken_url = \"{}\"\n\n[[sinks]]\naccount = \"g\"\nkind = \"native\"\nprovider = \"gemini\"\npath = \"{}\"\n",
        w.mock.shape_token_url(Shape::Google),
        mounted.display()
    ));
    let login = w.mock.issue_shape_login(Shape::Google, "g@example.com");
    let text = gemini_file(&login.access_token, &login.refresh_token, &login.id_token.unwrap(), login.expires_at_ms);
    std::fs::write(&file, &text).unwrap();

    // A file path and no --provider: no Claude shape claims it, Gemini CLI's does.
    let out = w.run(&["import", file.to_str().unwrap(), "--account", "g"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("provider gemini") && stderr(&out).contains("bound to"), "{}", stderr(&out));

    w.ok(&["refresh", "--force", "--account", "g"], "");
    let counts = w.mock.shape_counts(Shape::Google);
    assert_eq!((counts.refresh_ok, counts.refresh_rejected, counts.wrong_encoding), (1, 0, 0));
    let store = w.store().await;
    let stored = tokenkeeper_core::Store::get_account(&store, "g").await.unwrap().unwrap();
    assert_ne!(stored.credential.access_token.expose(), login.access_token);
    // Google does not rotate: the refresh token is kept.
    assert_eq!(stored.credential.refresh_token.as_ref().unwrap().expose(), login.refresh_token);
    let doc = read_json(&file);
    assert_eq!(doc["access_token"], stored.credential.access_token.expose());
    assert_eq!(doc["expiry_date"], stored.credential.expires_at.timestamp_millis());
    assert_eq!(doc["x_future"]["deep"][1], 2, "unknown keys survive the write-back");

    // `sync` delivers the account to its native sink, in Gemini CLI's format.
    w.ok(&["sync", "--account", "g"], "");
    let doc = read_json(&mounted);
    assert_eq!(doc["access_token"], stored.credential.access_token.expose());
    assert_eq!(doc["refresh_token"], login.refresh_token);
    assert_eq!(std::fs::metadata(&mounted).unwrap().permissions().mode() & 0o777, 0o600);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_generic_oauth2_provider_is_configured_in_toml_imported_refreshed_and_delivered_to_an_env_file() {
    let w = World::new().await;
    let env_file = w.dir.path().join("bot.env");
    std::fs::write(&env_file, "# kept\nOTHER=1\n").unwrap();
    w.mock.set_generic_shape(tokenkeeper_mock::GenericShape {
        body: tokenkeeper_mock::Encoding::Form,
        rotating: true,
        client_id: "corp-cli".into(),
        client_secret: None,
        jwt_access: false,
    });
    w.write_config(&format!(
        "[providers.corp]\nkind = \"oauth2\"\ntoken_url = \"{}\"\nclient_id = \"corp-cli\"\nbody = \"form\"\n\n\
         [[sinks]]\naccount = \"corp\"\nkind = \"env_file\"\npath = \"{}\"\nkey = \"CORP_TOKEN\"\n",
        w.mock.shape_token_url(Shape::Generic),
        env_file.display()
    ));
    let login = w.mock.issue_shape_login(Shape::Generic, "c@example.com");
    let answer = json!({"access_token": login.access_token, "refresh_token": login.refresh_token, "expires_in": 3600});
    let out = w.run(&["import", "-", "--provider", "corp", "--account", "corp"], &answer.to_string());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("provider corp"), "{}", stderr(&out));

    w.ok(&["refresh", "--force", "--account", "corp"], "");
    w.ok(&["refresh", "--force", "--account", "corp"], "");
    let counts = w.mock.shape_counts(Shape::Generic);
    assert_eq!((counts.refresh_ok, counts.refresh_rejected, counts.wrong_encoding), (2, 0, 0));
    w.ok(&["sync", "--account", "corp"], "");
    let store = w.store().await;
    let stored = tokenkeeper_core::Store::get_account(&store, "corp").await.unwrap().unwrap();
    let env = std::fs::read_to_string(&env_file).unwrap();
    assert_eq!(env, format!("# kept\nOTHER=1\nCORP_TOKEN={}\n", stored.credential.access_token.expose()));

    // Without the expiry the answer is refused with what to add.
    let out = w.run(&["import", "-", "--provider", "corp", "--account", "x"], "{\"access_token\": \"a\"}");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("expires_in"), "{}", stderr(&out));
}

/// Four processes race `refresh --force` on one account, `rounds` times, while the provider
/// answers slowly enough that they all overlap: every round must reach the provider exactly
/// once (the others find the new version under the account's lock and adopt it), no
/// refresh token is ever spent twice, and the stored token is the one the provider issued last.
fn race_forced_refreshes(w: &World, shape: Shape, account: &str, rounds: u64) {
    w.mock.set_persistent_fault(Some(tokenkeeper_mock::Fault::Slow(std::time::Duration::from_millis(300))));
    for round in 1..=rounds {
        let children: Vec<_> = (0..4)
            .map(|_| {
                w.cmd(&["refresh", "--force", "--account", account])
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            // 0: refreshed, or adopted the refresh another process made meanwhile.
            assert!(matches!(out.status.code(), Some(0) | Some(3)), "round {round}: {}", stderr(&out));
        }
        let counts = w.mock.shape_counts(shape);
        assert_eq!(counts.refresh_ok, round, "round {round}: exactly one refresh reached the provider");
        assert_eq!(counts.refresh_rejected, 0, "round {round}: a refresh token was spent twice");
    }
    w.mock.set_persistent_fault(None);
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_processes_refresh_codex_gemini_and_a_generic_provider_once_per_rotation() {
    let w = World::new().await;
    w.mock.set_generic_shape(tokenkeeper_mock::GenericShape {
        body: tokenkeeper_mock::Encoding::Json,
        rotating: true,
        client_id: "corp-cli".into(),
        client_secret: None,
        jwt_access: true,
    });
    w.write_config(&format!(
        "[providers.codex]\ntoken_url = \"{}\"\n\n[providers.gemini]\ntoken_url = \"{}\"\n\n\
         [providers.corp]\nkind = \"oauth2\"\ntoken_url = \"{}\"\nclient_id = \"corp-cli\"\nbody = \"json\"\nexpiry = \"jwt_exp\"\n",
        w.mock.shape_token_url(Shape::Codex),
        w.mock.shape_token_url(Shape::Google),
        w.mock.shape_token_url(Shape::Generic),
    ));
    let codex = w.mock.issue_shape_login(Shape::Codex, "dev@example.com");
    let codex_json = codex_file(
        &codex.access_token,
        &codex.refresh_token,
        codex.id_token.as_deref().unwrap(),
        codex.account_id.as_deref().unwrap(),
    );
    w.ok(&["import", "-", "--provider", "codex", "--account", "dev"], &codex_json);
    let google = w.mock.issue_shape_login(Shape::Google, "g@example.com");
    let gemini_json = gemini_file(
        &google.access_token,
        &google.refresh_token,
        google.id_token.as_deref().unwrap(),
        google.expires_at_ms,
    );
    w.ok(&["import", "-", "--provider", "gemini", "--account", "g"], &gemini_json);
    let corp = w.mock.issue_shape_login(Shape::Generic, "c@example.com");
    let answer = json!({"access_token": corp.access_token, "refresh_token": corp.refresh_token, "expires_in": 3600});
    w.ok(&["import", "-", "--provider", "corp", "--account", "corp"], &answer.to_string());

    race_forced_refreshes(&w, Shape::Codex, "dev", 6);
    race_forced_refreshes(&w, Shape::Google, "g", 6);
    race_forced_refreshes(&w, Shape::Generic, "corp", 6);

    // Each account holds a token its provider still honours: a rotating one's stored refresh
    // token is the last one issued (the next refresh, once more, succeeds and is not refused).
    let before = (w.mock.shape_counts(Shape::Codex).refresh_ok, w.mock.shape_counts(Shape::Generic).refresh_ok);
    w.ok(&["refresh", "--force", "--account", "dev"], "");
    w.ok(&["refresh", "--force", "--account", "corp"], "");
    assert_eq!(w.mock.shape_counts(Shape::Codex).refresh_ok, before.0 + 1);
    assert_eq!(w.mock.shape_counts(Shape::Generic).refresh_ok, before.1 + 1);
    assert_eq!(w.mock.shape_counts(Shape::Codex).refresh_rejected, 0);
    assert_eq!(w.mock.shape_counts(Shape::Generic).refresh_rejected, 0);
}

/// Never regress, per provider, through the real daemon: after a refresh, an older credential
/// written into the CLI's bound file (a restored backup, a stale copy) is repaired by `serve`'s
/// watcher with the stored newer one, every unknown key kept, and the same older credential
/// offered to `import` is refused with the stored one kept.
#[tokio::test(flavor = "multi_thread")]
async fn older_codex_and_gemini_credentials_never_replace_newer_ones() {
    let w = World::new().await;
    w.write_config(&format!(
        "[providers.codex]\ntoken_url = \"{}\"\n\n[providers.gemini]\ntoken_url = \"{}\"\n",
        w.mock.shape_token_url(Shape::Codex),
        w.mock.shape_token_url(Shape::Google),
    ));
    let codex_path = w.home().join(".codex/auth.json");
    let gemini_path = w.home().join(".gemini/oauth_creds.json");
    std::fs::create_dir_all(codex_path.parent().unwrap()).unwrap();
    std::fs::create_dir_all(gemini_path.parent().unwrap()).unwrap();
    let c = w.mock.issue_shape_login(Shape::Codex, "dev@example.com");
    let old_codex =
        codex_file(&c.access_token, &c.refresh_token, c.id_token.as_deref().unwrap(), c.account_id.as_deref().unwrap());
    std::fs::write(&codex_path, &old_codex).unwrap();
    let g = w.mock.issue_shape_login(Shape::Google, "g@example.com");
    let old_gemini = gemini_file(&g.access_token, &g.refresh_token, g.id_token.as_deref().unwrap(), g.expires_at_ms);
    std::fs::write(&gemini_path, &old_gemini).unwrap();
    w.ok(&["import", codex_path.to_str().unwrap(), "--provider", "codex", "--account", "dev"], "");
    w.ok(&["import", gemini_path.to_str().unwrap(), "--provider", "gemini", "--account", "g"], "");
    w.ok(&["refresh", "--force", "--account", "dev"], "");
    w.ok(&["refresh", "--force", "--account", "g"], "");
    let store = w.store().await;
    let newer = |name: &str| {
        let store = &store;
        let name = name.to_owned();
        async move { tokenkeeper_core::Store::get_account(store, &name).await.unwrap().unwrap() }
    };
    let (dev, gem) = (newer("dev").await, newer("g").await);
    assert_ne!(dev.credential.access_token.expose(), c.access_token);
    assert_ne!(gem.credential.access_token.expose(), g.access_token);

    // The older files are refused by import: the store keeps the newer credential.
    for (name, text) in [("dev", &old_codex), ("g", &old_gemini)] {
        let out = w.run(&["import", "-", "--account", name], text);
        assert!(!out.status.success(), "an older credential was accepted for {name}");
        assert!(stderr(&out).contains("the stored credential was kept"), "{}", stderr(&out));
    }
    assert_eq!(newer("dev").await.version, dev.version);
    assert_eq!(newer("g").await.version, gem.version);

    // The daemon repairs a bound file that goes back to an older credential.
    let ready = common::Ready::new();
    let log = std::fs::File::create(w.dir.path().join("serve.log")).unwrap();
    let mut daemon = ready
        .attach(&mut w.cmd(&["serve", "--no-http"]))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    ready.wait("serve");
    std::fs::write(&codex_path, &old_codex).unwrap();
    std::fs::write(&gemini_path, &old_gemini).unwrap();
    common::wait_for(
        || {
            // Read leniently: a file caught mid-write is simply not repaired yet.
            let json = |p: &std::path::Path| {
                std::fs::read_to_string(p).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok()).unwrap_or_default()
            };
            json(&codex_path)["tokens"]["access_token"] == dev.credential.access_token.expose()
                && json(&gemini_path)["access_token"] == gem.credential.access_token.expose()
        },
        "serve to repair both files with the newer credentials",
    );
    let (a, b) = (read_json(&codex_path), read_json(&gemini_path));
    assert_eq!(a["x_future_top"]["a"], "b", "the repair keeps Codex's unknown keys");
    assert_eq!(a["tokens"]["refresh_token"], dev.credential.refresh_token.as_ref().unwrap().expose());
    assert_eq!(b["x_future"]["deep"][1], 2, "the repair keeps Gemini's unknown keys");
    assert_eq!(b["refresh_token"], g.refresh_token, "Google's refresh token does not rotate");
    assert_eq!(newer("dev").await.version, dev.version, "the older file did not become the stored credential");
    assert_eq!(newer("g").await.version, gem.version);
    daemon.kill().unwrap();
    daemon.wait().unwrap();
}
