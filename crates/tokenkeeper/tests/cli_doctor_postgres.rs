//! `tokenkeeper doctor` on a PostgreSQL store, through the real binary and a throwaway cluster:
//! a healthy replica is all `ok` and names the leader; an unreachable server, a refused role, a
//! missing database, a schema behind or ahead of the binary and a key that does not open the
//! credentials are each named with the next step, in the words a user reads, and never with
//! the password or the key.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Output, Stdio};
use std::time::Duration;

use common::{stderr, stdout, World, KEY_B64};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokenkeeper_core::Leadership;
use tokenkeeper_store::EncryptionKey;
use tokenkeeper_store_postgres::testing::Cluster;
use tokenkeeper_store_postgres::PgLeadership;

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited with a status")
}

/// `doctor` on the store at `url` (TOKENKEEPER_STORE_URL), with the test key unless changed.
fn doctor(w: &World, url: &str, key: Option<&str>) -> Output {
    let mut cmd = w.cmd(&["doctor"]);
    cmd.env("TOKENKEEPER_STORE_URL", url).stdin(Stdio::null());
    match key {
        Some(k) => cmd.env("TOKENKEEPER_KEY", k),
        None => cmd.env_remove("TOKENKEEPER_KEY"),
    };
    cmd.output().unwrap()
}

/// The finding lines (without the summary).
fn findings(out: &Output) -> Vec<String> {
    stdout(out).lines().take_while(|l| !l.is_empty()).map(str::to_owned).collect()
}

/// The one finding line that starts (after its severity) with `start`.
fn line_with(out: &Output, start: &str) -> String {
    let lines: Vec<String> = findings(out).into_iter().filter(|l| l[6..].starts_with(start)).collect();
    assert_eq!(lines.len(), 1, "expected one line starting {start:?} in:\n{}", stdout(out));
    lines[0].clone()
}

/// A replica's data directory, as `tokenkeeper` makes it (its per-host files live there).
fn make_data_dir(w: &World) {
    std::fs::create_dir_all(w.data_dir()).unwrap();
    std::fs::set_permissions(w.data_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
}

/// A database holding one account `main`, sealed with the test key; its URL and options.
async fn store_with_account(cluster: &Cluster, w: &World) -> (String, PgConnectOptions) {
    let db = cluster.create_database().await;
    let url = cluster.url(db.get_database().unwrap());
    let (json, _) = w.claude_json("a@example.com");
    let mut cmd = w.cmd(&["import", "-", "--account", "main"]);
    cmd.env("TOKENKEEPER_STORE_URL", &url).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), json.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    make_data_dir(w);
    (url, db)
}

async fn execute(db: &PgConnectOptions, sql: &str) {
    let mut conn = PgConnection::connect_with(db).await.unwrap();
    sqlx::query(sql).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
}

fn target(url: &str) -> String {
    tokenkeeper_store_postgres::describe_url(url).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_replica_is_all_ok_and_names_the_leader() {
    let cluster = Cluster::get();
    let w = World::new().await;
    let (url, db) = store_with_account(cluster, &w).await;
    let leadership = PgLeadership::new(db);
    let guard = leadership.acquire("host-a", Duration::ZERO).await.unwrap().expect("nobody else leads");

    let out = doctor(&w, &url, Some(KEY_B64));
    assert_eq!(
        line_with(&out, "store: "),
        format!("ok    store: {} (from TOKENKEEPER_STORE_URL) is reachable", target(&url))
    );
    assert_eq!(line_with(&out, "schema "), "ok    schema version 2, as this binary expects");
    assert_eq!(
        line_with(&out, "the key "),
        "ok    the key from TOKENKEEPER_KEY opens the credentials of all 1 account(s)"
    );
    assert_eq!(line_with(&out, "replica "), "ok    replica `host-a` leads (holds the leader lock)");
    assert!(line_with(&out, "account `main`").starts_with("ok    "), "{}", stdout(&out));
    for l in findings(&out) {
        assert!(l.starts_with("ok    "), "not ok: {l}\n{}", stdout(&out));
    }
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    assert!(!w.data_dir().join("tokenkeeper.db").exists(), "doctor made an embedded store");

    // Without a leader, doctor says nothing refreshes.
    drop(guard);
    let out = doctor(&w, &url, Some(KEY_B64));
    assert_eq!(
        line_with(&out, "no replica leads"),
        "warn  no replica leads: none holds the leader lock, so nothing refreshes the accounts  — fix: start \
         `tokenkeeper serve` on at least one replica (if one runs, its role may not see the others' sessions: grant \
         it pg_read_all_stats)"
    );
    assert_eq!(code(&out), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_named_without_its_password() {
    let w = World::new().await;
    make_data_dir(&w);
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }; // closed again: nothing listens there
    let url = format!("postgres://keeper:hunter2@127.0.0.1:{port}/tk");
    let out = doctor(&w, &url, Some(KEY_B64));
    assert_eq!(
        line_with(&out, "store: "),
        format!(
            "fail  store: PostgreSQL database `tk` as `keeper` at 127.0.0.1:{port} (from TOKENKEEPER_STORE_URL) does not \
             answer  — fix: start the PostgreSQL server, or correct the host and port in TOKENKEEPER_STORE_URL; check \
             that no firewall stands between this host and it"
        )
    );
    assert_eq!(code(&out), 2);
    for text in [stdout(&out), stderr(&out)] {
        assert!(!text.contains("hunter2"), "the password was shown:\n{text}");
        assert!(!text.contains(&url), "the URL was shown:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_database_says_to_create_it() {
    let cluster = Cluster::get();
    let w = World::new().await;
    make_data_dir(&w);
    let url = cluster.url("no_such_database");
    let out = doctor(&w, &url, Some(KEY_B64));
    assert_eq!(
        line_with(&out, "store: "),
        format!(
            "fail  store: {} (from TOKENKEEPER_STORE_URL) does not exist on the server  — fix: create it (`createdb -O \
             ROLE DATABASE`) or correct the database name in TOKENKEEPER_STORE_URL, then `tokenkeeper migrate`",
            target(&url)
        )
    );
    assert_eq!(code(&out), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_role_says_to_correct_it() {
    let cluster = Cluster::get();
    let w = World::new().await;
    make_data_dir(&w);
    let db = cluster.create_database().await;
    let url = format!(
        "postgres://no_such_role@localhost:5432/{}?host={}",
        db.get_database().unwrap(),
        cluster.dir().display()
    );
    let out = doctor(&w, &url, Some(KEY_B64));
    assert_eq!(
        line_with(&out, "store: "),
        format!(
            "fail  store: {} (from TOKENKEEPER_STORE_URL) refused the role or its password  — fix: correct the role or \
             password in TOKENKEEPER_STORE_URL, or allow this host in the server's pg_hba.conf",
            target(&url)
        )
    );
    assert!(target(&url).contains("as `no_such_role`"), "{}", target(&url));
    assert_eq!(code(&out), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_behind_says_migrate_and_one_ahead_says_upgrade() {
    let cluster = Cluster::get();
    let w = World::new().await;
    make_data_dir(&w);

    // A fresh, empty database: doctor says so and leaves it empty.
    let empty = cluster.create_database().await;
    let url = cluster.url(empty.get_database().unwrap());
    let out = doctor(&w, &url, Some(KEY_B64));
    assert_eq!(
        line_with(&out, "schema"),
        "warn  schema: the database has no tokenkeeper schema yet (this binary's is version 2)  — fix: run \
         `tokenkeeper migrate` (a starting replica also migrates, one at a time)"
    );
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    let mut conn = PgConnection::connect_with(&empty).await.unwrap();
    let migrated: bool =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    assert!(!migrated, "doctor migrated the database");

    // One migration fewer recorded than this binary has.
    let (url, db) = store_with_account(cluster, &w).await;
    execute(&db, "DELETE FROM _sqlx_migrations WHERE version = 2").await;
    let out = doctor(&w, &url, Some(KEY_B64));
    assert_eq!(
        line_with(&out, "schema"),
        "warn  schema version 1 is behind this binary's 2  — fix: run `tokenkeeper migrate` (a starting replica also \
         migrates, one at a time)"
    );

    // A migration this binary does not know: a newer binary migrated the database.
    let (url, db) = store_with_account(cluster, &w).await;
    execute(
        &db,
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (3, 'future', true, '\\x00'::bytea, 0)",
    )
    .await;
    let out = doctor(&w, &url, Some(KEY_B64));
    assert_eq!(
        line_with(&out, "schema"),
        "fail  schema version 3 is ahead of this binary's 2  — fix: this binary is older than the database; upgrade \
         it (every replica runs the same version or newer)"
    );
    assert_eq!(code(&out), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_names_its_source_and_never_the_key() {
    let cluster = Cluster::get();
    let w = World::new().await;
    let (url, _) = store_with_account(cluster, &w).await;
    let fix = "holds another key than the one this installation was sealed with: give every replica the \
               installation's key (TOKENKEEPER_KEY, or the key file of the replica that made the store)";

    let other = EncryptionKey::generate().to_base64().to_string();
    let out = doctor(&w, &url, Some(&other));
    assert_eq!(
        line_with(&out, "the key "),
        format!(
            "fail  the key from TOKENKEEPER_KEY does not open the credentials of account `main`  — fix: \
             TOKENKEEPER_KEY {fix}"
        )
    );
    assert_eq!(code(&out), 2);
    assert!(!stdout(&out).contains(&other) && !stderr(&out).contains(&other), "the key was shown");

    // The key file, when TOKENKEEPER_KEY is not set.
    let key_file = w.data_dir().join("key");
    std::fs::write(&key_file, format!("{other}\n")).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = doctor(&w, &url, None);
    let source = format!("the key file {}", key_file.display());
    assert_eq!(
        line_with(&out, "the key "),
        format!("fail  the key from {source} does not open the credentials of account `main`  — fix: {source} {fix}")
    );
    assert!(!stdout(&out).contains(&other) && !stderr(&out).contains(&other), "the key was shown");

    // The right key in the file opens them.
    std::fs::write(&key_file, format!("{KEY_B64}\n")).unwrap();
    let out = doctor(&w, &url, None);
    assert_eq!(
        line_with(&out, "the key "),
        format!("ok    the key from {source} opens the credentials of all 1 account(s)")
    );

    // No key at all: doctor does not make one (it would open nothing).
    std::fs::remove_file(&key_file).unwrap();
    let out = doctor(&w, &url, None);
    assert_eq!(
        line_with(&out, "no installation key"),
        format!(
            "fail  no installation key: TOKENKEEPER_KEY is not set and {} does not exist  — fix: give this replica the \
             installation's key (the same on every replica): TOKENKEEPER_KEY from a secret, or the key file copied \
             from another replica",
            key_file.display()
        )
    );
    assert!(!key_file.exists(), "doctor created a key");
}
