//! Two hosts (two data directories) on one PostgreSQL database through the real binary: a
//! login imported on one is listed and handed out on the other, with the installation's key;
//! without the key nothing is revealed; a URL that is not PostgreSQL is refused with a hint.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::io::Write;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};

use common::serve::{Replica, ADMIN};
use common::{stderr, stdout, World, KEY_B64};
use tokenkeeper_core::Store;
use tokenkeeper_store::EncryptionKey;
use tokenkeeper_store_postgres::testing::Cluster;
use tokenkeeper_store_postgres::PgStore;

fn run(w: &World, url: &str, key: Option<&str>, args: &[&str], stdin: &str) -> Output {
    let mut cmd = w.cmd(args);
    cmd.env("TOKENKEEPER_STORE_URL", url).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(k) = key {
        cmd.env("TOKENKEEPER_KEY", k);
    }
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_share_one_postgres_store() {
    let cluster = Cluster::get();
    let db = cluster.create_database().await;
    let url = cluster.url(db.get_database().unwrap());
    let key = EncryptionKey::generate().to_base64().to_string();
    let host_a = World::new().await;
    let host_b = World::new().await;

    let (json, t) = host_a.claude_json("shared@example.com");
    let out = run(&host_a, &url, Some(&key), &["import", "-", "--account", "main"], &json);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = run(&host_b, &url, Some(&key), &["accounts"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("main"), "{}", stdout(&out));
    let out = run(&host_b, &url, Some(&key), &["token", "--account", "main"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), t.access_token);
    assert!(!host_b.data_dir().join("tokenkeeper.db").exists(), "host B used its embedded store");

    // The database alone reveals nothing: another key cannot read the token.
    let other = EncryptionKey::generate().to_base64().to_string();
    let out = run(&host_b, &url, Some(&other), &["token", "--account", "main"], "");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("TOKENKEEPER_KEY"), "{}", stderr(&out));
    assert!(!stdout(&out).contains(&t.access_token) && !stderr(&out).contains(&t.access_token));

    // `migrate` as a step of its own: idempotent, says the version.
    for _ in 0..2 {
        let out = run(&host_b, &url, Some(&key), &["migrate"], "");
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stdout(&out).contains("schema version 2, up to date"), "{}", stdout(&out));
    }

    // [store] url_file names the database as well as the variable does (the variable wins).
    let url_file = host_b.dir.path().join("store-url");
    std::fs::write(&url_file, format!("{url}\n")).unwrap();
    host_b.write_config(&format!("[store]\nurl_file = \"{}\"\n", url_file.display()));
    let out = host_b.cmd(&["accounts"]).env("TOKENKEEPER_KEY", &key).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("main"), "{}", stdout(&out));
    // A password in the config file itself is refused, without echoing it.
    host_b.write_config("[store]\nurl = \"postgres://keeper:hunter2@db.example/tk\"\n");
    let out = host_b.cmd(&["accounts"]).env("TOKENKEEPER_KEY", &key).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("password") && !stderr(&out).contains("hunter2"), "{}", stderr(&out));
    host_b.write_config("");

    let out = run(&host_b, "mysql://x@localhost/db", Some(&key), &["accounts"], "");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("postgres://"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("mysql://x@"), "the URL is not echoed: {}", stderr(&out));
}

// ---------------------------------------------------------------------------------------------
// Two `serve` replicas, A and B, on one database.

/// A browser without JavaScript: keeps the cookies it is given (for any of the replicas, as
/// one load-balanced site would) and sends same-origin form posts.
struct Browser {
    http: reqwest::Client,
    cookies: Vec<(String, String)>,
}

/// A page as the browser got it.
struct Got {
    status: u16,
    location: String,
    body: String,
}

impl Got {
    fn hidden(&self, name: &str) -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let at = self.body.find(&marker).unwrap_or_else(|| panic!("no field {name} in:\n{}", self.body)) + marker.len();
        let end = self.body[at..].find('"').unwrap();
        unescape(&self.body[at..at + end])
    }

    fn href_of(&self, id: &str) -> String {
        let at = self.body.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in:\n{}", self.body));
        let tag = &self.body[self.body[..at].rfind('<').unwrap()..];
        let href = tag.find("href=\"").unwrap() + 6;
        unescape(&tag[href..href + tag[href..].find('"').unwrap()])
    }
}

fn unescape(s: &str) -> String {
    s.replace("&amp;", "&").replace("&#x2f;", "/").replace("&#x3d;", "=").replace("&quot;", "\"").replace("&#x27;", "'")
}

impl Browser {
    fn new() -> Browser {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Browser { http, cookies: Vec::new() }
    }

    fn cookie(&self, name: &str) -> Option<String> {
        self.cookies.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> Got {
        let header: Vec<String> = self.cookies.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let res = req.header("cookie", header.join("; ")).send().await.unwrap();
        for set in res.headers().get_all("set-cookie") {
            let pair = set.to_str().unwrap().split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            self.cookies.retain(|(n, _)| n != name);
            if !value.is_empty() {
                self.cookies.push((name.to_owned(), value.to_owned()));
            }
        }
        let status = res.status().as_u16();
        let location = res.headers().get("location").map(|l| l.to_str().unwrap().to_owned()).unwrap_or_default();
        Got { status, location, body: res.text().await.unwrap() }
    }

    async fn get(&mut self, replica: &Replica, path: &str) -> Got {
        let req = self.http.get(format!("{}{path}", replica.base()));
        self.send(req).await
    }

    async fn post(&mut self, replica: &Replica, path: &str, fields: &[(&str, &str)]) -> Got {
        let req = self
            .http
            .post(format!("{}{path}", replica.base()))
            .header("origin", replica.base())
            .header("sec-fetch-site", "same-origin")
            .form(fields);
        self.send(req).await
    }

    async fn sign_in(&mut self, replica: &Replica) {
        let form = self.get(replica, "/login").await;
        let csrf = form.hidden("csrf");
        let res = self.post(replica, "/login", &[("csrf", &csrf), ("token", ADMIN)]).await;
        assert_eq!((res.status, res.location.as_str()), (303, "/"), "{}", res.body);
    }
}

/// A database with its URL, the installation key, and two hosts for replicas A and B.
async fn installation() -> (String, World, World) {
    let cluster = Cluster::get();
    let db = cluster.create_database().await;
    let url = cluster.url(db.get_database().unwrap());
    (url, World::new().await, World::new().await)
}

fn import(w: &World, url: &str, account: &str, json: &str) {
    let out = run(w, url, Some(KEY_B64), &["import", "-", "--account", account], json);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_session_and_the_login_wizard_work_across_replicas() {
    let (url, host_a, host_b) = installation().await;
    let a = Replica::start(&host_a, &host_a.mock, &url, "a", "");
    let b = Replica::start(&host_b, &host_a.mock, &url, "b", "");
    let mut browser = Browser::new();

    // Signed in through A, the same cookie opens the dashboard on B.
    browser.sign_in(&a).await;
    let session = browser.cookie("tk_session").expect("a session cookie");
    let dash = browser.get(&b, "/").await;
    assert_eq!(dash.status, 200, "B refused A's session: {} {}", dash.location, dash.body);
    assert!(dash.body.contains("Signed in."), "the flash message set on A is shown once, on B");
    assert!(!browser.get(&a, "/").await.body.contains("Signed in."), "the flash was shown twice");

    // The wizard started on A is finished on B (the mock checks the PKCE verifier).
    let wizard = browser.get(&a, "/wizard").await;
    assert_eq!(wizard.status, 200, "{}", wizard.body);
    let pasted = host_a.mock.authorize(&wizard.href_of("authorize"), "wizard@example.com").unwrap();
    let again = browser.get(&b, "/wizard").await;
    assert_eq!(again.href_of("authorize"), wizard.href_of("authorize"), "B shows the login A started");
    let done =
        browser.post(&b, "/wizard", &[("csrf", &again.hidden("csrf")), ("code", &pasted), ("account", "web")]).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("Added") && done.body.contains("web"), "{}", done.body);
    let out = run(&host_a, &url, Some(KEY_B64), &["accounts"], "");
    assert!(stdout(&out).contains("web"), "the account is in the shared store: {}", stdout(&out));

    // The store keys the session by the cookie's hash, never by the cookie.
    let store = PgStore::open(&url, EncryptionKey::from_base64(KEY_B64).unwrap()).await.unwrap();
    let hash = tokenkeeper_server::auth::hash_key(&session);
    assert!(store.session(&hash, chrono::Utc::now()).await.unwrap().is_some(), "the session is kept by its hash");
    assert_eq!(store.session(&session, chrono::Utc::now()).await.unwrap(), None, "the cookie itself is a key");

    // Signing out on B ends the session on A as well.
    let csrf = browser.get(&a, "/").await.hidden("csrf");
    let out = browser.post(&b, "/logout", &[("csrf", &csrf)]).await;
    assert_eq!((out.status, out.location.as_str()), (303, "/login"));
    browser.cookies.push(("tk_session".into(), session.clone()));
    let after = browser.get(&a, "/").await;
    assert_eq!((after.status, after.location.as_str()), (303, "/login"), "A still accepts the ended session");

    // Neither the cookie nor the admin token reached a log, and the session is gone from the store.
    for r in [&a, &b] {
        assert!(!r.log().contains(&session) && !r.log().contains(ADMIN), "a secret in {}'s log", r.id);
    }
    assert_eq!(store.session(&hash, chrono::Utc::now()).await.unwrap(), None, "signed out in the store");
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_created_on_one_replica_works_on_another_at_once() {
    let (url, host_a, host_b) = installation().await;
    let (json, t) = host_a.claude_json("keys@example.com");
    import(&host_a, &url, "main", &json);
    let a = Replica::start(&host_a, &host_a.mock, &url, "a", "");
    let b = Replica::start(&host_b, &host_a.mock, &url, "b", "");
    let http = reqwest::Client::new();
    let token_on = |r: &Replica, key: &str| {
        http.get(format!("{}/api/token?account=main", r.base())).bearer_auth(key.to_owned()).send()
    };
    let out = run(&host_a, &url, Some(KEY_B64), &["keys", "create", "--name", "bot", "--scope", "token:read"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let key = stdout(&out).trim().to_owned();
    for r in [&b, &a] {
        let res = token_on(r, &key).await.unwrap();
        assert_eq!(res.status(), 200, "replica {} refused a key created on host A", r.id);
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["access_token"], t.access_token.as_str());
    }
    // Revoked on A's host, B refuses it soon after (the change feed empties its key cache).
    let out = run(&host_a, &url, Some(KEY_B64), &["keys", "revoke", "bot"], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if token_on(&b, &key).await.unwrap().status() == 401 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "B still accepts the revoked key");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for r in [&a, &b] {
        assert!(!r.log().contains(&key), "the key in {}'s log", r.id);
    }
    a.stop();
    b.stop();
}

/// A webhook receiver on loopback that counts what it gets, by account.
async fn webhook() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let received: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(serde_json::from_str(&body).unwrap());
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), received)
}

fn firing_for(received: &Mutex<Vec<serde_json::Value>>, account: &str) -> usize {
    received.lock().unwrap().iter().filter(|a| a["account"] == account && a["status"] == "firing").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_fires_once_for_the_installation_not_once_per_replica() {
    let (url, host_a, host_b) = installation().await;
    let (hook, received) = webhook().await;
    let alerts = format!("[[alerts]]\nkind = \"webhook\"\nname = \"ops\"\nurl = \"{hook}\"\n");
    // A login whose refresh token the provider revoked, due for refresh: it needs a new login.
    host_a.mock.set_access_lifetime(std::time::Duration::from_secs(600));
    let (json, t) = host_a.claude_json("alert@example.com");
    host_a.mock.revoke(&t.refresh_token);
    let a = Replica::start(&host_a, &host_a.mock, &url, "a", &alerts);
    let b = Replica::start(&host_b, &host_a.mock, &url, "b", &alerts);
    import(&host_a, &url, "main", &json);
    common::wait_for(|| firing_for(&received, "main") > 0, "the alert for main");

    // The leader goes away; the other replica takes over the alert state and does not repeat it.
    let (leader, follower) = if a.log().contains("this replica now leads") { (a, b) } else { (b, a) };
    leader.stop();
    common::wait_for(|| follower.log().contains("leading: running"), "the follower to take over");
    // A second incident proves the new leader runs alert passes.
    // Both replicas refresh at A's mock (each world starts its own; B's config points at A's).
    let (json, t2) = host_a.claude_json("second@example.com");
    host_a.mock.revoke(&t2.refresh_token);
    import(&host_a, &url, "second", &json);
    common::wait_for(|| firing_for(&received, "second") > 0, "the alert for second from the new leader");
    assert_eq!(firing_for(&received, "main"), 1, "main alerted more than once: {:?}", received.lock().unwrap());
    assert_eq!(firing_for(&received, "second"), 1);
    for body in received.lock().unwrap().iter() {
        let text = body.to_string();
        assert!(!text.contains(&t.access_token) && !text.contains(&t.refresh_token), "a token in an alert");
    }
    follower.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_pushed_to_one_replica_reaches_the_file_sinks_of_another() {
    let (url, host_a, host_b) = installation().await;
    let (json, _) = host_a.claude_json("sink@example.com");
    import(&host_a, &url, "main", &json);
    // A file sink on every replica (the default `run_on`), each writing on its own host.
    let sink = |w: &World| {
        let path = w.dir.path().join("bot.env");
        let config = format!(
            "[[sinks]]\naccount = \"main\"\nkind = \"env_file\"\npath = \"{}\"\nkey = \"CLAUDE_CODE_OAUTH_TOKEN\"\n",
            path.display()
        );
        (path, config)
    };
    let (file_a, config_a) = sink(&host_a);
    let (file_b, config_b) = sink(&host_b);
    let a = Replica::start(&host_a, &host_a.mock, &url, "a", &config_a);
    let b = Replica::start(&host_b, &host_a.mock, &url, "b", &config_b);
    let (newer, t) = host_a.claude_json("sink@example.com");
    let res = reqwest::Client::new()
        .post(format!("{}/api/push?account=main", b.base()))
        .bearer_auth(ADMIN)
        .body(newer)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let line = format!("CLAUDE_CODE_OAUTH_TOKEN={}", t.access_token);
    for (file, host) in [(&file_a, "A"), (&file_b, "B")] {
        common::wait_for(
            || std::fs::read_to_string(file).is_ok_and(|text| text.contains(&line)),
            &format!("the pushed token in the sink of {host}"),
        );
    }
    for r in [&a, &b] {
        assert!(!r.log().contains(&t.access_token), "a token in {}'s log", r.id);
    }
    a.stop();
    b.stop();
}

// ---------------------------------------------------------------------------------------------
// `store copy`: from the SQLite store of a data directory to PostgreSQL.

/// The bytes of the SQLite database and the key file (SQLite's `-wal`/`-shm` companions come
/// and go with every connection, so they are left out).
/// What `store copy` must leave as it was: the files of the data directory other than the
/// database (the change file, the lock files: no write was announced), and every row of every
/// table of the database, read through a read-only connection. The database's bytes are not
/// compared: a checkpoint of the WAL that earlier processes left (by whichever connection closes
/// last) rewrites `tokenkeeper.db` without changing a row.
async fn sqlite_snapshot(w: &World) -> (Vec<(std::path::PathBuf, Vec<u8>)>, Vec<(String, Vec<String>)>) {
    use sqlx::{Connection, Row};
    let mut files = common::read_tree(&w.data_dir());
    files.retain(|(p, _)| {
        let name = p.file_name().unwrap().to_string_lossy();
        !name.starts_with("tokenkeeper.db")
    });
    files.sort();
    let options =
        sqlx::sqlite::SqliteConnectOptions::new().filename(w.data_dir().join("tokenkeeper.db")).read_only(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&options).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let mut rows = Vec::new();
    for table in tables {
        let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info(?) ORDER BY cid")
            .bind(&table)
            .fetch_all(&mut conn)
            .await
            .unwrap();
        let row = columns.iter().map(|c| format!("quote(\"{c}\")")).collect::<Vec<_>>().join(" || '|' || ");
        let mut values: Vec<String> = sqlx::query(&format!("SELECT {row} FROM \"{table}\""))
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>(0))
            .collect();
        values.sort();
        rows.push((table, values));
    }
    conn.close().await.unwrap();
    (files, rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_copy_moves_a_sqlite_installation_to_postgres_and_serve_hands_out_the_same() {
    let w = World::new().await;
    // A SQLite installation with some history: two accounts, one refreshed (version 2), an API
    // key (and a revoked one), hand-outs counted as usage.
    let (json, _) = w.claude_json("main@example.com");
    w.ok(&["import", "-", "--account", "main", "--no-bind"], &json);
    let (json, _) = w.claude_json("other@example.com");
    w.ok(&["import", "-", "--account", "other", "--no-bind"], &json);
    w.ok(&["refresh", "--account", "main", "--force"], "");
    let key = w.ok(&["keys", "create", "--name", "bot", "--scope", "token:read"], "").trim().to_owned();
    w.ok(&["keys", "create", "--name", "old", "--scope", "token:read"], "");
    w.ok(&["keys", "revoke", "old"], "");
    let main_token = w.ok(&["token", "--account", "main"], "").trim().to_owned();
    let before = w.store().await.get_account("main").await.unwrap().unwrap();
    assert_eq!(before.version, 2);
    let sqlite_before = sqlite_snapshot(&w).await;
    assert!(sqlite_before.1.iter().any(|(t, rows)| t == "accounts" && rows.len() == 2), "{:?}", sqlite_before.1);

    let cluster = Cluster::get();
    let db = cluster.create_database().await;
    let url = cluster.url(db.get_database().unwrap());

    // A password on the command line is refused, without echoing it.
    let out = w.run(&["store", "copy", "--to", "postgres://keeper:hunter2@127.0.0.1:1/tk"], "");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("--to-file") && !stderr(&out).contains("hunter2"), "{}", stderr(&out));

    // The wrong key copies nothing, and says which key was used.
    let out = w
        .cmd(&["store", "copy"])
        .env("TOKENKEEPER_STORE_URL", &url)
        .env("TOKENKEEPER_KEY", EncryptionKey::generate().to_base64().as_str())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("does not open with this key") && stderr(&out).contains("TOKENKEEPER_KEY"),
        "{}",
        stderr(&out)
    );

    // The URL from a file (password and all, as a mounted secret would hold it).
    let url_file = w.dir.path().join("target-url");
    std::fs::write(&url_file, format!("{url}\n")).unwrap();
    let copied = w.ok(&["store", "copy", "--to-file", url_file.to_str().unwrap()], "");
    for line in ["accounts", "events", "api_keys", "usage", "state"] {
        assert!(copied.contains(line), "{copied}");
    }
    assert!(copied.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["accounts", "2", "rows"]), "{copied}");
    assert!(copied.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["api_keys", "2", "rows"]), "{copied}");
    assert!(copied.contains("2 accounts decrypted with the installation key (TOKENKEEPER_KEY)"), "{copied}");
    let sqlite_after = sqlite_snapshot(&w).await;
    assert_eq!(sqlite_after.0, sqlite_before.0, "a file of the SQLite data directory changed");
    assert_eq!(sqlite_after.1, sqlite_before.1, "a row of the SQLite store changed");

    // A second copy finds the target not empty and changes nothing.
    let out = w.cmd(&["store", "copy"]).env("TOKENKEEPER_STORE_URL", &url).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is not empty (2 accounts"), "{}", stderr(&out));

    // The same account, version and history on PostgreSQL...
    let pg = PgStore::open(&url, EncryptionKey::from_base64(KEY_B64).unwrap()).await.unwrap();
    let after = pg.get_account("main").await.unwrap().unwrap();
    assert_eq!((after.version, after.usage.requests), (before.version, before.usage.requests));
    assert_eq!(
        after.credential.refresh_token.as_ref().map(|s| s.expose().to_owned()),
        before.credential.refresh_token.as_ref().map(|s| s.expose().to_owned())
    );
    let sqlite_events = w.store().await.events(None, 100).await.unwrap();
    assert_eq!(pg.events(None, 100).await.unwrap(), sqlite_events, "events with their ids");
    assert_eq!(pg.list_api_keys().await.unwrap(), w.store().await.list_api_keys().await.unwrap());

    // ...and `serve` on PostgreSQL hands out the same token to the same API key.
    let host = World::new().await;
    let replica = Replica::start(&host, &w.mock, &url, "copied", "");
    let res = reqwest::Client::new()
        .get(format!("{}/api/token?account=main", replica.base()))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["access_token"], main_token.as_str());
    replica.stop();

    // `store copy` printed neither a token nor the URL (which names the database's role).
    assert!(!copied.contains(&main_token) && !copied.contains(&url), "{copied}");
    assert!(!replica_log_has(&host, &main_token), "a token in the replica's log");
}

fn replica_log_has(w: &World, needle: &str) -> bool {
    common::read_tree(w.dir.path())
        .iter()
        .any(|(p, bytes)| p.extension().is_some_and(|e| e == "log") && String::from_utf8_lossy(bytes).contains(needle))
}
