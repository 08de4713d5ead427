//! `tokenkeeper login --provider codex|gemini` through the real binary against the mock's
//! OpenAI- and Google-shaped authorize and token endpoints: a pasted redirect URL (Codex) or
//! bare code (Gemini), a loopback redirect (`--listen`), the stored account refreshing
//! afterwards and reaching Codex's `auth.json` through `exec`; a wrong state refused without
//! storing anything; a provider without a login flow told to import instead. No token or code
//! appears in any output (`RUST_LOG=debug` included).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Output, Stdio};

use common::{stderr, World};
use serde_json::Value;
use tokenkeeper_mock::Shape;

fn config(w: &World) -> String {
    format!(
        "[providers.codex]\ntoken_url = \"{}\"\nauthorize_url = \"{}\"\n\n[providers.gemini]\ntoken_url = \"{}\"\nauthorize_url = \"{}\"\n",
        w.mock.shape_token_url(Shape::Codex),
        w.mock.shape_authorize_url(Shape::Codex),
        w.mock.shape_token_url(Shape::Google),
        w.mock.shape_authorize_url(Shape::Google),
    )
}

/// Runs `tokenkeeper ARGS`, waits for the authorize URL it prints, and answers with what
/// `answer` makes of it: `Some(text)` is pasted on stdin; `None` pastes nothing (a loopback
/// login, whose redirect `answer` delivers itself).
fn login_with(w: &World, args: &[&str], answer: impl FnOnce(&str) -> Option<String>) -> Output {
    let mut child = w.cmd(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    let url = loop {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "login ended before printing a URL: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(line.as_bytes());
        if let Some(u) = line.split_whitespace().find(|w| w.starts_with("http")) {
            break u.to_owned();
        }
    };
    let mut stdin = child.stdin.take().unwrap();
    if let Some(pasted) = answer(&url) {
        stdin.write_all(format!("{pasted}\n").as_bytes()).unwrap();
    }
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut err, &mut rest).unwrap();
    drop(stdin);
    seen.extend_from_slice(&rest);
    let mut out = child.wait_with_output().unwrap();
    out.stderr = seen;
    let mut t = w.transcript.lock().unwrap();
    t.extend_from_slice(&out.stdout);
    t.extend_from_slice(&out.stderr);
    drop(t);
    out
}

/// A plain HTTP GET as a browser would send it: the status and the body.
fn get(url: &str) -> (u16, String) {
    let u = reqwest::Url::parse(url).unwrap();
    let mut s = std::net::TcpStream::connect((u.host_str().unwrap(), u.port().unwrap())).unwrap();
    let target = &url[u.origin().ascii_serialization().len()..];
    write!(s, "GET {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", u.authority()).unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut s, &mut text).unwrap();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

fn query(url: &str, key: &str) -> Option<String> {
    reqwest::Url::parse(url).unwrap().query_pairs().find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
}

fn assert_no_secret(w: &World, secrets: &[&str]) {
    let transcript = w.transcript_text();
    for s in secrets.iter().filter(|s| s.len() > 8) {
        assert!(!transcript.contains(s), "a secret leaked into the output");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_login_by_pasted_redirect_url_refreshes_and_reaches_auth_json() {
    let w = World::new().await;
    w.write_config(&config(&w));
    let mut code = String::new();
    let out = login_with(&w, &["login", "--provider", "codex", "--account", "dev"], |url| {
        // Codex's own parameters and its registered redirect, as Codex CLI sends them.
        assert_eq!(query(url, "redirect_uri").as_deref(), Some("http://localhost:1455/auth/callback"));
        assert_eq!(query(url, "originator").as_deref(), Some("codex_cli_rs"));
        // The browser lands on localhost:1455, which fails to load on another machine; its URL
        // bar holds the code, and that whole URL is what is pasted.
        let landed = w.mock.authorize_shape(Shape::Codex, url, "dev@example.com").unwrap();
        code = query(&landed, "code").unwrap();
        Some(landed)
    });
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains("Logged in: account `dev` created (dev@example.com)"), "{said}");
    assert!(said.contains("localhost:1455/auth/callback?code="), "the prompt says what to paste: {said}");
    assert_eq!(w.mock.shape_counts(Shape::Codex).codes_exchanged, 1);

    let store = w.store().await;
    let first = tokenkeeper_core::Store::get_account(&store, "dev").await.unwrap().unwrap();
    assert_eq!(first.provider, "codex");
    assert_eq!(first.email.as_deref(), Some("dev@example.com"));
    let data: Value = serde_json::from_str(first.credential.provider_data.as_ref().unwrap().expose()).unwrap();
    assert_eq!(data["account_id"], "acct-dev");

    // The stored login refreshes at the OpenAI-shaped endpoint (its refresh token is live).
    w.ok(&["refresh", "--force", "--account", "dev"], "");
    let counts = w.mock.shape_counts(Shape::Codex);
    assert_eq!((counts.refresh_ok, counts.refresh_rejected), (1, 0));
    let stored = tokenkeeper_core::Store::get_account(&store, "dev").await.unwrap().unwrap();
    assert_ne!(stored.credential.access_token, first.credential.access_token);

    // exec hands Codex an auth.json with the account id and a fresh last_refresh.
    let copy = w.dir.path().join("handed.json");
    let script = format!("cp \"$CODEX_HOME/auth.json\" '{}'", copy.display());
    w.ok(&["exec", "--account", "dev", "--", "sh", "-c", &script], "");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&copy).unwrap()).unwrap();
    assert_eq!(doc["tokens"]["account_id"], "acct-dev", "{}", doc["tokens"]["account_id"]);
    assert_eq!(doc["tokens"]["access_token"], stored.credential.access_token.expose());
    assert!(doc["tokens"]["id_token"].as_str().is_some_and(|t| t.split('.').count() == 3));
    let last = chrono::DateTime::parse_from_rfc3339(doc["last_refresh"].as_str().unwrap()).unwrap();
    assert!((chrono::Utc::now() - last.with_timezone(&chrono::Utc)).num_minutes().abs() < 5);

    let id = data["id_token"].as_str().unwrap().to_owned();
    assert_no_secret(
        &w,
        &[
            &code,
            first.credential.access_token.expose(),
            first.credential.refresh_token.as_ref().unwrap().expose(),
            stored.credential.access_token.expose(),
            stored.credential.refresh_token.as_ref().unwrap().expose(),
            &id,
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn gemini_login_by_pasted_code_refreshes_and_reaches_a_native_sink() {
    let w = World::new().await;
    let mounted = w.dir.path().join("mounted/oauth_creds.json");
    std::fs::create_dir_all(mounted.parent().unwrap()).unwrap();
    w.write_config(&format!(
        "{}\n[[sinks]]\naccount = \"g\"\nkind = \"native\"\nprovider = \"gemini\"\npath = \"{}\"\n",
        config(&w),
        mounted.display()
    ));
    let mut code = String::new();
    let out = login_with(&w, &["login", "--provider", "gemini", "--account", "g"], |url| {
        assert_eq!(query(url, "redirect_uri").as_deref(), Some("https://codeassist.google.com/authcode"));
        assert_eq!(query(url, "access_type").as_deref(), Some("offline"));
        // Gemini CLI's authcode page shows the bare code: that is what is pasted.
        let landed = w.mock.authorize_shape(Shape::Google, url, "g@example.com").unwrap();
        code = query(&landed, "code").unwrap();
        Some(code.clone())
    });
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("Logged in: account `g` created (g@example.com)"), "{}", stderr(&out));
    let counts = w.mock.shape_counts(Shape::Google);
    assert_eq!((counts.codes_exchanged, counts.bad_client, counts.wrong_encoding), (1, 0, 0));

    let store = w.store().await;
    let first = tokenkeeper_core::Store::get_account(&store, "g").await.unwrap().unwrap();
    assert_eq!(first.provider, "gemini");
    w.ok(&["refresh", "--force", "--account", "g"], "");
    assert_eq!(w.mock.shape_counts(Shape::Google).refresh_ok, 1);
    let stored = tokenkeeper_core::Store::get_account(&store, "g").await.unwrap().unwrap();
    assert_ne!(stored.credential.access_token, first.credential.access_token);
    assert_eq!(stored.credential.refresh_token, first.credential.refresh_token, "Google does not rotate");

    w.ok(&["sync", "--account", "g"], "");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&mounted).unwrap()).unwrap();
    assert_eq!(doc["access_token"], stored.credential.access_token.expose());
    assert_eq!(doc["expiry_date"], stored.credential.expires_at.timestamp_millis());

    assert_no_secret(
        &w,
        &[
            &code,
            first.credential.access_token.expose(),
            stored.credential.access_token.expose(),
            stored.credential.refresh_token.as_ref().unwrap().expose(),
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn gemini_login_with_listen_catches_the_loopback_redirect() {
    let w = World::new().await;
    w.write_config(&config(&w));
    let out = login_with(&w, &["login", "--provider", "gemini", "--listen", "--account", "g"], |url| {
        let redirect = query(url, "redirect_uri").unwrap();
        assert!(redirect.starts_with("http://127.0.0.1:") && redirect.ends_with("/oauth2callback"), "{redirect}");
        let landed = w.mock.authorize_shape(Shape::Google, url, "g@example.com").unwrap();
        // The browser's request for another path is answered 404 and the listener waits on.
        let origin = redirect.trim_end_matches("/oauth2callback");
        assert_eq!(get(&format!("{origin}/favicon.ico")).0, 404);
        let (status, page) = get(&landed);
        assert_eq!(status, 200);
        assert!(page.contains("Login received"), "{page}");
        None
    });
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("Logged in: account `g` created (g@example.com)"), "{}", stderr(&out));
    assert_eq!(w.mock.shape_counts(Shape::Google).codes_exchanged, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_state_is_refused_and_stores_nothing() {
    let w = World::new().await;
    w.write_config(&config(&w));
    let out = login_with(&w, &["login", "--provider", "codex", "--account", "dev"], |url| {
        let landed = w.mock.authorize_shape(Shape::Codex, url, "dev@example.com").unwrap();
        let state = query(&landed, "state").unwrap();
        Some(landed.replace(&format!("state={state}"), "state=someone-elses"))
    });
    assert!(!out.status.success());
    assert!(stderr(&out).contains("this code belongs to another login attempt"), "{}", stderr(&out));
    assert_eq!(w.mock.shape_counts(Shape::Codex).requests, 0, "nothing was exchanged");
    let store = w.store().await;
    assert!(tokenkeeper_core::Store::list_accounts(&store).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_without_a_login_flow_is_told_to_import() {
    let w = World::new().await;
    w.write_config(&format!(
        "{}\n[providers.corp]\nkind = \"oauth2\"\ntoken_url = \"{}\"\nclient_id = \"generic-client\"\n",
        config(&w),
        w.mock.shape_token_url(Shape::Generic)
    ));
    for id in ["corp", "anthropic-api-key"] {
        let out = w.run(&["login", "--provider", id], "");
        assert!(!out.status.success());
        let want =
            format!("provider {id} has no login flow; import its credential with `tokenkeeper import --provider {id}`");
        assert!(stderr(&out).contains(&want), "{}", stderr(&out));
    }
    // An unknown id names the providers that have a flow.
    let out = w.run(&["login", "--provider", "nope"], "");
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("unknown provider `nope`") && e.contains("anthropic, codex, gemini"), "{e}");
    // --listen with a provider whose redirect is not loopback (Anthropic's) says so.
    let out = w.run(&["login", "--listen"], "");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("has no loopback redirect"), "{}", stderr(&out));
}
