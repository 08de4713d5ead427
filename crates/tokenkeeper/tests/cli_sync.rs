//! Issue 4 through the binary: `tokenkeeper sync` renders every sink once; a running
//! `serve` picks up an `import` done by another process (through the store's change file, no
//! polling) and delivers it; `on_change` gets the token in its environment, not its argv.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::process::Stdio;

use common::{stderr, World};

fn config(w: &World) -> String {
    let out = w.dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("bot.env"), "# the bot\nexport OTHER='x'\nCLAUDE_CODE_OAUTH_TOKEN=old\n").unwrap();
    let hook = w.dir.path().join("hook.sh");
    std::fs::write(
        &hook,
        format!("#!/bin/sh\necho \"$TOKENKEEPER_ACCESS_TOKEN argv:$*\" >> {}\n", out.join("hook.log").display()),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    format!(
        r#"
[[sinks]]
account = "main"
kind = "env_file"
path = "{out}/bot.env"
key = "CLAUDE_CODE_OAUTH_TOKEN"
on_change = ["{hook}", "recreate"]
debounce = "10ms"

[[sinks]]
account = "main"
kind = "claude_credentials"
path = "{out}/credentials.json"
"#,
        out = out.display(),
        hook = hook.display()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_renders_every_sink_once() {
    let w = World::new().await;
    w.write_config(&config(&w));
    let (json, t) = w.claude_json("sync@example.com");
    w.ok(&["import", "-"], &json);
    let out = w.run(&["sync"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let env = std::fs::read_to_string(w.dir.path().join("out/bot.env")).unwrap();
    assert_eq!(env, format!("# the bot\nexport OTHER='x'\nCLAUDE_CODE_OAUTH_TOKEN={}\n", t.access_token));
    let creds = std::fs::read_to_string(w.dir.path().join("out/credentials.json")).unwrap();
    assert!(creds.contains(&t.refresh_token), "the credentials sink carries the full credential");
    let mode = std::fs::metadata(w.dir.path().join("out/credentials.json")).unwrap().permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
    assert!(!env.contains(&t.refresh_token), "env_file never gets the refresh token");
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_delivers_an_import_made_by_another_process() {
    let w = World::new().await;
    w.write_config(&config(&w));
    let (json, _) = w.claude_json("sync@example.com");
    w.ok(&["import", "-"], &json);
    let log = std::fs::File::create(w.dir.path().join("daemon.log")).unwrap();
    let ready = common::Ready::new();
    let mut daemon = ready
        .attach(&mut w.cmd(&["serve", "--no-http"]))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let env_path = w.dir.path().join("out/bot.env");
    ready.wait("serve");
    // Another process imports a newer credential.
    let (json2, t2) = w.claude_json("sync@example.com");
    w.ok(&["import", "-"], &json2);
    common::wait_for(
        || std::fs::read_to_string(&env_path).unwrap_or_default().contains(&t2.access_token),
        "the daemon to deliver the import",
    );
    let hook_log = w.dir.path().join("out/hook.log");
    common::wait_for(
        || std::fs::read_to_string(&hook_log).unwrap_or_default().contains(&t2.access_token),
        "on_change to run with the new token",
    );
    let hook = std::fs::read_to_string(&hook_log).unwrap();
    for line in hook.lines() {
        let (_, argv) = line.split_once("argv:").unwrap();
        assert_eq!(argv, "recreate", "the token must not be in on_change's argv");
    }
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let daemon_log = std::fs::read_to_string(w.dir.path().join("daemon.log")).unwrap();
    assert!(!daemon_log.contains(&t2.access_token), "the daemon logged a token");
}
