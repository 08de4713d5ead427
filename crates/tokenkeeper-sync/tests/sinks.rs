//! `SinkSet`: delivery to every sink of an account, on_change debouncing, failures that are
//! reported, retried and never block the other sinks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokenkeeper_core::config::SinkConfig;
use tokenkeeper_core::Secret;
use tokenkeeper_sync::runner::{CommandEnv, Executor, RunnerOptions};
use tokenkeeper_sync::sink::{SinkSet, SinkSetOptions};
use tokenkeeper_sync::testing::account;
use tokenkeeper_sync::{SyncError, WriteOutcome};

fn sink(text: &str) -> SinkConfig {
    toml::from_str(text).unwrap()
}

/// Records each run's argv[0] and token; fails while `fail` > 0.
#[derive(Default)]
struct Fake {
    runs: Mutex<Vec<(String, String)>>,
    fail: AtomicU32,
}

impl Executor for Fake {
    fn run<'a>(&'a self, argv: &'a [String], env: &'a CommandEnv, _: Duration) -> BoxFuture<'a, Result<(), SyncError>> {
        Box::pin(async move {
            self.runs.lock().unwrap().push((argv[0].clone(), env.access_token.expose().to_owned()));
            if self.fail.load(Ordering::SeqCst) > 0 {
                self.fail.fetch_sub(1, Ordering::SeqCst);
                return Err(SyncError::CommandFailed {
                    action: "run on_change",
                    path: argv[0].clone().into(),
                    status: "exit code 2".into(),
                    stderr: "boom".into(),
                });
            }
            Ok(())
        })
    }
}

fn options(fake: &Arc<Fake>) -> SinkSetOptions {
    SinkSetOptions { executor: fake.clone(), ..SinkSetOptions::default() }
}

#[tokio::test]
async fn delivers_every_sink_of_the_account_and_only_on_change() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    std::fs::write(dir.path().join(".env"), "# keep\nA=1\n").unwrap();
    let fake = Arc::new(Fake::default());
    let set = SinkSet::with_options(
        vec![
            sink(&format!("account=\"main\"\nkind=\"env_file\"\npath=\"{d}/.env\"\nkey=\"CLAUDE_CODE_OAUTH_TOKEN\"")),
            sink(&format!("account=\"main\"\nkind=\"claude_credentials\"\npath=\"{d}/creds.json\"\nmode=\"0640\"")),
            sink(&format!(
                "account=\"main\"\nkind=\"template\"\npath=\"{d}/t.txt\"\ntemplate=\"{{{{ access_token }}}}\""
            )),
            sink("account=\"main\"\nkind=\"command\"\nname=\"hook\"\ncommand=[\"/bin/hook\"]"),
            sink(&format!("account=\"other\"\nkind=\"template\"\npath=\"{d}/other.txt\"\ntemplate=\"x\"")),
        ],
        options(&fake),
    );
    set.deliver_once(&account("main", "sk-ant-oat01-ONE")).await.into_iter().for_each(|(n, r)| {
        assert_eq!(r.unwrap(), WriteOutcome::Written, "{n}");
    });
    assert_eq!(
        std::fs::read_to_string(dir.path().join(".env")).unwrap(),
        "# keep\nA=1\nCLAUDE_CODE_OAUTH_TOKEN=sk-ant-oat01-ONE\n"
    );
    assert_eq!(std::fs::read_to_string(dir.path().join("t.txt")).unwrap(), "sk-ant-oat01-ONE");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(dir.path().join("creds.json")).unwrap().permissions().mode() & 0o777, 0o640);
    assert!(!dir.path().join("other.txt").exists(), "another account's sink was written");
    assert_eq!(fake.runs.lock().unwrap().as_slice(), [("/bin/hook".to_owned(), "sk-ant-oat01-ONE".to_owned())]);

    // The same credential again: nothing is written and the command does not run.
    let again = set.deliver_once(&account("main", "sk-ant-oat01-ONE")).await;
    assert!(again.iter().all(|(_, r)| matches!(r, Ok(WriteOutcome::Unchanged))), "{again:?}");
    assert_eq!(fake.runs.lock().unwrap().len(), 1);
    let st = set.statuses();
    assert_eq!(st.len(), 5);
    assert!(st.iter().take(3).all(|s| s.ok && s.writes == 1 && s.last_written_at.is_some()), "{st:?}");
    assert_eq!(st[4].writes, 0);
    set.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_sink_is_reported_retried_and_blocks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let fake = Arc::new(Fake::default());
    let set = SinkSet::with_options(
        vec![
            sink(&format!("account=\"main\"\nkind=\"template\"\nname=\"broken\"\npath=\"{d}/missing/t.txt\"\ntemplate=\"{{{{ access_token }}}}\"")),
            sink(&format!("account=\"main\"\nkind=\"template\"\nname=\"fine\"\npath=\"{d}/t.txt\"\ntemplate=\"{{{{ access_token }}}}\"")),
        ],
        options(&fake),
    );
    set.deliver(&account("main", "sk-ant-oat01-ONE")).await;
    assert_eq!(std::fs::read_to_string(dir.path().join("t.txt")).unwrap(), "sk-ant-oat01-ONE");
    let st = set.statuses();
    assert!(!st[0].ok && st[0].failures == 1, "{st:?}");
    let err = st[0].last_error.clone().unwrap();
    assert!(err.contains("create a temporary file in") && err.contains("missing"), "{err}");
    assert!(!err.contains("sk-ant-oat01-ONE"));
    assert!(st[1].ok && st[1].writes == 1);

    // Still failing after a few retries, then the directory appears and a retry succeeds.
    tokio::time::sleep(Duration::from_secs(16)).await;
    assert!(set.statuses()[0].failures >= 3, "{:?}", set.statuses()[0]);
    std::fs::create_dir(dir.path().join("missing")).unwrap();
    for _ in 0..100 {
        if set.statuses()[0].ok {
            break;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let st = set.statuses();
    assert!(st[0].ok && st[0].writes == 1 && st[0].last_error.is_none(), "{st:?}");
    assert_eq!(std::fs::read_to_string(dir.path().join("missing/t.txt")).unwrap(), "sk-ant-oat01-ONE");
    set.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn retries_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let fake = Arc::new(Fake::default());
    let opts = SinkSetOptions { retry_attempts: 4, ..options(&fake) };
    let set = SinkSet::with_options(
        vec![sink(&format!("account=\"main\"\nkind=\"template\"\npath=\"{d}/nope/t\"\ntemplate=\"x\""))],
        opts,
    );
    set.deliver(&account("main", "sk-ant-oat01-ONE")).await;
    // 5 + 10 + 20 s of backoff, then nothing more however long we wait.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(set.statuses()[0].failures, 4);
    set.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_100_changes_in_one_second_runs_on_change_once_or_twice() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let fake = Arc::new(Fake::default());
    let set = SinkSet::with_options(
        vec![sink(&format!(
            "account=\"main\"\nkind=\"env_file\"\npath=\"{d}/.env\"\nkey=\"K\"\non_change=[\"/bin/restart\"]"
        ))],
        options(&fake),
    );
    for i in 0..100 {
        set.deliver(&account("main", &format!("sk-ant-oat01-T{i:03}"))).await;
        tokio::time::advance(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    let runs = fake.runs.lock().unwrap().clone();
    assert!((1..=2).contains(&runs.len()), "on_change ran {} times", runs.len());
    assert_eq!(runs.last().unwrap().1, "sk-ant-oat01-T099", "the last run has the latest credential");
    assert_eq!(std::fs::read_to_string(dir.path().join(".env")).unwrap(), "K=sk-ant-oat01-T099\n");
    assert_eq!(set.statuses()[0].writes, 100);
    set.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_on_change_shows_in_status_and_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let fake = Arc::new(Fake { fail: AtomicU32::new(2), ..Fake::default() });
    let set = SinkSet::with_options(
        vec![sink(&format!("account=\"main\"\nkind=\"template\"\npath=\"{d}/t\"\ntemplate=\"x{{{{ access_token }}}}\"\non_change=[\"/bin/restart\"]"))],
        SinkSetOptions { runner: RunnerOptions { max_attempts: 5, ..RunnerOptions::default() }, ..options(&fake) },
    );
    set.deliver(&account("main", "sk-ant-oat01-ONE")).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let st = &set.statuses()[0];
    assert!(!st.ok && st.last_error.as_deref().unwrap().starts_with("on_change:"), "{st:?}");
    tokio::time::sleep(Duration::from_secs(60)).await;
    let st = &set.statuses()[0];
    assert!(st.ok, "{st:?}");
    assert_eq!(st.failures, 2);
    assert_eq!(fake.runs.lock().unwrap().len(), 3);
    set.shutdown().await;
}

#[tokio::test]
async fn shutdown_runs_pending_on_change_and_returns() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let fake = Arc::new(Fake::default());
    let set = SinkSet::with_options(
        vec![sink(&format!("account=\"main\"\nkind=\"template\"\npath=\"{d}/t\"\ntemplate=\"x\"\non_change=[\"/bin/restart\"]\ndebounce=\"1h\""))],
        options(&fake),
    );
    set.deliver(&account("main", "sk-ant-oat01-ONE")).await;
    tokio::time::timeout(Duration::from_secs(5), set.shutdown()).await.unwrap();
    assert_eq!(fake.runs.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn real_on_change_and_command_get_the_token_in_their_environment() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let set = SinkSet::new(vec![
        sink(&format!(
            "account=\"main\"\nkind=\"env_file\"\npath=\"{d}/.env\"\nkey=\"K\"\non_change=[\"sh\", \"-c\", \"printf %s \\\"$TOKENKEEPER_ACCESS_TOKEN\\\" > {d}/hook\"]"
        )),
        sink(&format!(
            "account=\"main\"\nkind=\"command\"\ncommand=[\"sh\", \"-c\", \"printf %s \\\"$CLAUDE_CODE_OAUTH_TOKEN\\\" > {d}/cmd; exit 4\"]"
        )),
    ]);
    let results = set.deliver_once(&account("main", "sk-ant-oat01-REALRUN")).await;
    assert!(matches!(results[0].1, Ok(WriteOutcome::Written)), "{results:?}");
    let err = results[1].1.as_ref().unwrap_err().to_string();
    assert!(err.contains("exit code 4"), "{err}");
    assert_eq!(std::fs::read_to_string(dir.path().join("hook")).unwrap(), "sk-ant-oat01-REALRUN");
    assert_eq!(std::fs::read_to_string(dir.path().join("cmd")).unwrap(), "sk-ant-oat01-REALRUN");
    // Status, its JSON and the set's Debug name the failure but never the token.
    let st = set.statuses();
    assert!(st[0].ok && !st[1].ok, "{st:?}");
    for shown in [serde_json::to_string(&st).unwrap(), format!("{set:?}"), format!("{results:?}")] {
        assert!(!shown.contains("REALRUN"), "{shown}");
    }
    set.shutdown().await;
}

#[tokio::test]
async fn a_credential_file_holding_a_newer_login_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("credentials.json");
    let cfg = sink(&format!("account = \"main\"\nkind = \"claude_credentials\"\npath = \"{}\"\n", path.display()));
    let ours = account("main", "sk-ant-oat01-OURS");
    // A container's own Claude Code refreshed: its file expires later than our credential.
    let mut theirs = ours.credential.clone();
    theirs.access_token = Secret::new("sk-ant-oat01-THEIRS");
    theirs.refresh_token = Some(Secret::new("sk-ant-ort01-THEIRS"));
    theirs.expires_at += chrono::Duration::hours(1);
    let newer = tokenkeeper_core::formats::render_claude_credentials(None, &theirs).unwrap();
    std::fs::write(&path, &newer).unwrap();
    let err = tokenkeeper_sync::sink::write_file_sink(&cfg, &ours).unwrap_err();
    assert!(matches!(err, SyncError::NewerOnDisk { .. }), "{err}");
    assert!(err.to_string().contains("--mode follow"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), newer, "the newer login was overwritten");
    // An older file is replaced as usual.
    let mut older = theirs.clone();
    older.expires_at -= chrono::Duration::hours(3);
    std::fs::write(&path, tokenkeeper_core::formats::render_claude_credentials(None, &older).unwrap()).unwrap();
    tokenkeeper_sync::sink::write_file_sink(&cfg, &ours).unwrap();
    assert!(std::fs::read_to_string(&path).unwrap().contains("sk-ant-oat01-OURS"));
}
