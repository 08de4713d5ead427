//! schemathesis (installed by `scripts/test-deps` into `.venv-test/`) against a running server:
//! every operation of the OpenAPI document (`src/openapi.json`), with the admin token, over a
//! store holding the account `main` and the mock provider behind it. All of schemathesis's
//! checks run (no server error, status codes, content types, headers and bodies conform to the
//! document, authentication is not ignored, …), with the exceptions and their reasons in
//! `tests/schemathesis.toml`. A missing schemathesis fails the test; it never skips.
//!
//! `TK_SCHEMATHESIS_EXAMPLES` sets the examples per operation (default 25, for the test
//! command); `docs/TESTING.md` has the figures of a longer run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::oneshot;

use support::{env, ADMIN};

fn examples() -> u32 {
    std::env::var("TK_SCHEMATHESIS_EXAMPLES").ok().and_then(|v| v.parse().ok()).unwrap_or(25)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_every_response_conforms() {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bin = crate_dir.join("../../.venv-test/bin/schemathesis");
    assert!(
        bin.exists(),
        "schemathesis is not installed at {}: run scripts/test-deps (it installs it into .venv-test/)",
        bin.display()
    );
    let e = env().await;
    e.seed("main").await;
    // schemathesis presents wrong keys on purpose; the per-address block would otherwise turn
    // the rest of the run into 429s.
    let state = e.state.clone().with_failure_limit(1_000_000);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(tokenkeeper_server::serve(listener, state, async move {
        let _ = rx.await;
    }));

    let run = tokio::process::Command::new(&bin)
        .arg("--config-file")
        .arg(crate_dir.join("tests/schemathesis.toml"))
        .arg("run")
        .arg(crate_dir.join("src/openapi.json"))
        .args(["--url", &format!("http://{addr}")])
        .args(["--header", &format!("Authorization: Bearer {ADMIN}")])
        .args(["--max-examples", &examples().to_string(), "--seed", "10"])
        .args(["--workers", "1", "--no-color", "--generation-database", "none"])
        // Its caches and reports go to the test's own directory.
        .current_dir(e.dir.path())
        .kill_on_drop(true)
        .output();
    let out =
        tokio::time::timeout(Duration::from_secs(600), run).await.expect("schemathesis ran over 10 minutes").unwrap();
    let report = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let summary = report.lines().filter(|l| l.contains(" generated, ") || l.starts_with("=====")).collect::<Vec<_>>();
    eprintln!("schemathesis: {}", summary.join(" | "));
    assert!(out.status.success(), "schemathesis found problems:\n{report}");
    let operations = tokenkeeper_server::api_routes().len();
    assert!(
        report.contains(&format!("Tested: {operations}")),
        "not all {operations} operations were tested:\n{report}"
    );

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap().unwrap();
}
