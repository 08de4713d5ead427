//! A front on real sockets (`serve_front`, as `[proxy] listen` serves the proxy): the paths it
//! claims reach it with the client's address and their body under `[server]
//! body_read_timeout`; any other path is the router's (here none: 404); a stop drains it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use tokenkeeper_core::config::ServerConfig;
use tokenkeeper_server::front::{Front, FrontBody};

/// Answers `<path> <client> <body length>`, or 408 with the error when the body fails.
fn echo() -> Front {
    Front::new("/v1/", |req: hyper::Request<FrontBody>, addr| async move {
        let path = req.uri().path().to_owned();
        match req.into_body().collect().await {
            Ok(b) => Response::new(Body::from(format!("{path} {addr} {}", b.to_bytes().len()))),
            Err(e) => {
                let mut r = Response::new(Body::from(format!("body error: {e}")));
                *r.status_mut() = axum::http::StatusCode::REQUEST_TIMEOUT;
                r
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_front_gets_its_paths_with_the_client_address_and_its_bodies_under_the_body_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = ServerConfig { body_read_timeout: Duration::from_millis(300), ..ServerConfig::default() };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        tokenkeeper_server::serve_front(listener, echo(), &limits, async move {
            let _ = stopped.await;
        })
        .await
    });

    let http = reqwest::Client::new();
    let r = http.post(format!("http://{addr}/v1/messages?beta=true")).body("hello").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "/v1/messages 127.0.0.1 5");
    let r = http.get(format!("http://{addr}/health")).send().await.unwrap();
    assert_eq!(r.status(), 404, "a path the front does not claim goes to the (empty) router");

    // A body that stops arriving: the front's read fails after the body timeout.
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    raw.write_all(b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc").await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), raw.read(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body error"), "{answer}");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap().unwrap();
}

/// A request still unanswered when the drain time (`[server] request_timeout`) is over is
/// closed, and the server returns; one that finishes in time is answered first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_answers_what_finishes_within_the_drain_and_closes_the_rest() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Each request says it arrived; `/v1/slow` then answers when released, `/v1/never` never.
    let (arrived, mut arrivals) = tokio::sync::mpsc::unbounded_channel::<()>();
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let released = release.clone();
    let front = Front::new("/v1/", move |req: hyper::Request<FrontBody>, _| {
        let (arrived, released) = (arrived.clone(), released.clone());
        async move {
            let _ = arrived.send(());
            if req.uri().path() == "/v1/never" {
                std::future::pending::<()>().await;
            }
            released.notified().await;
            Response::new(Body::from("done"))
        }
    });
    let limits = ServerConfig { request_timeout: Duration::from_secs(1), ..ServerConfig::default() };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        tokenkeeper_server::serve_front(listener, front, &limits, async move {
            let _ = stopped.await;
        })
        .await
    });

    let send = |path: &'static str| async move {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).await.unwrap();
        c
    };
    let (mut slow, mut never) = (send("/v1/slow").await, send("/v1/never").await);
    // Both requests are in their handlers before the stop.
    for _ in 0..2 {
        arrivals.recv().await.unwrap();
    }
    let began = std::time::Instant::now();
    stop.send(()).unwrap();
    release.notify_one();

    let mut answer = String::new();
    slow.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("done"), "{answer}");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), never.read_to_end(&mut rest)).await.unwrap().unwrap();
    assert_eq!(n, 0, "the unanswered request's connection is closed without an answer");
    tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap().unwrap();
    let took = began.elapsed();
    assert!(took >= Duration::from_secs(1), "the drain waited its time: {took:?}");
}
