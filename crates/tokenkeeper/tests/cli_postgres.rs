//! Two hosts (two data directories) on one PostgreSQL database through the real binary: a
//! login imported on one is listed and handed out on the other, with the installation's key;
//! without the key nothing is revealed; a URL that is not PostgreSQL is refused with a hint.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::io::Write;
use std::process::{Output, Stdio};

use common::{stderr, stdout, World};
use tokenkeeper_store::EncryptionKey;
use tokenkeeper_store_postgres::testing::Cluster;

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
        assert!(stdout(&out).contains("schema version 1, up to date"), "{}", stdout(&out));
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
