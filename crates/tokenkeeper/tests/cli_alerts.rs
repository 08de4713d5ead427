//! Issue 6 through the binary: `serve` with a `[[alerts]]` webhook fires once when an account
//! needs a new login, with no token in the payload, and `status` shows the channel's health.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use common::World;

#[tokio::test(flavor = "multi_thread")]
async fn needs_login_fires_one_webhook_alert_without_secrets() {
    let w = World::new().await;
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    w.write_config(&format!("[[alerts]]\nkind = \"webhook\"\nname = \"ops\"\nurl = \"http://{addr}/hook\"\n"));

    // A login whose refresh token the provider has revoked, and that is due for refresh.
    w.mock.set_access_lifetime(std::time::Duration::from_secs(600));
    let (json, t) = w.claude_json("alert@example.com");
    w.ok(&["import", "-"], &json);
    w.mock.revoke(&t.refresh_token);

    let log = std::fs::File::create(w.dir.path().join("daemon.log")).unwrap();
    let mut daemon =
        w.cmd(&["serve", "--no-http"]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().unwrap();
    common::wait_for(|| !received.lock().unwrap().is_empty(), "the alert");
    // The channel counts the delivery once the receiver has answered; the daemon records it.
    let mut status = String::new();
    common::wait_for(
        || {
            status = w.ok(&["status"], "");
            status.contains("alert channel ops: ok; 1 sent")
        },
        "status to show the delivered alert",
    );
    daemon.kill().unwrap();
    daemon.wait().unwrap();

    let bodies = received.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1, "exactly one alert for one incident: {bodies:?}");
    let alert: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(alert["status"], "firing");
    assert_eq!(alert["severity"], "critical");
    assert_eq!(alert["account"], "main");
    assert!(alert["description"].as_str().unwrap().contains("tokenkeeper login --account main"), "{alert}");
    for secret in [&t.access_token, &t.refresh_token] {
        assert!(!bodies[0].contains(secret.as_str()), "a token reached the alert");
    }
    assert!(status.contains("needs-login"), "{status}");
    assert!(status.contains("alert channel ops: ok; 1 sent"), "{status}");
}
