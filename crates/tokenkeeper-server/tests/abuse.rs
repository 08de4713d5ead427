//! Issue 10 (5): the server holds under abuse. Hundreds of idle, slow-header (slowloris) and
//! slow-body connections are held open against short `[server]` timeouts; a normal client
//! still gets `/api/status` promptly, and each abusive connection is cut off once its timeout
//! has passed, not before. Also: the connection cap, the header size limit, and the warning
//! for plain HTTP on a non-loopback address. Real time, bounded: a few seconds in all.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use support::{env_with, Env, ADMIN};

const HEADER_TIMEOUT: Duration = Duration::from_millis(1000);
const BODY_TIMEOUT: Duration = Duration::from_millis(1000);
const REQUEST_TIMEOUT: Duration = Duration::from_millis(2500);
/// How long after its deadline a connection may still be open (scheduling on a busy machine).
const SLACK: Duration = Duration::from_millis(2500);

struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    handle: JoinHandle<std::io::Result<()>>,
}

async fn start(e: &Env, bind: &str) -> Running {
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(tokenkeeper_server::serve(listener, e.state.clone(), async move {
        let _ = rx.await;
    }));
    Running { addr, stop, handle }
}

impl Running {
    async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.handle).await.unwrap().unwrap().unwrap();
    }
}

async fn limited(max_connections: usize) -> Env {
    env_with(|c| {
        c.server.header_read_timeout = HEADER_TIMEOUT;
        c.server.body_read_timeout = BODY_TIMEOUT;
        c.server.request_timeout = REQUEST_TIMEOUT;
        c.server.max_connections = max_connections;
    })
    .await
}

/// Lets this test process hold a thousand sockets even where the soft limit is 1024.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
}

/// Reads until the server closes the connection; returns when that happened (after `from`)
/// and what it sent.
async fn until_closed(mut conn: TcpStream, from: Instant) -> (Duration, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return (from.elapsed(), String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

async fn status_ok(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let r = reqwest::Client::new()
        .get(format!("http://{addr}/api/status"))
        .bearer_auth(ADMIN)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_are_cut_off_and_do_not_starve_a_normal_client() {
    raise_fd_limit();
    let e = limited(2000).await;
    e.seed("main").await;
    let server = start(&e, "127.0.0.1:0").await;
    let addr = server.addr;
    let opened = Instant::now();

    // 200 idle: connect and say nothing.
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    // 200 slowloris: a request head trickled in a byte at a time, never finished.
    let mut slow_heads = Vec::new();
    for _ in 0..200 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"G").await.unwrap();
        slow_heads.push(c);
    }
    // 50 slow bodies: complete headers, then a body trickled in too slowly to end.
    let mut slow_bodies = Vec::new();
    for _ in 0..50 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /api/push HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN}\r\nContent-Length: 10000\r\n\r\n{{"
        );
        c.write_all(head.as_bytes()).await.unwrap();
        slow_bodies.push(c);
    }
    // 20 kept alive after one request, then idle.
    let mut kept_alive = Vec::new();
    for _ in 0..20 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 512];
        let n = c.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
        kept_alive.push((c, Instant::now()));
    }
    let setup = opened.elapsed();

    // While all of that is held open, a normal client is served promptly, several times.
    for _ in 0..5 {
        let took = status_ok(addr).await;
        assert!(took < Duration::from_millis(500), "/api/status took {took:?} beside 470 abusive connections");
    }

    let watch_idle: Vec<_> = idle.into_iter().map(|c| tokio::spawn(until_closed(c, opened))).collect();
    let watch_kept: Vec<_> = kept_alive.into_iter().map(|(c, t)| tokio::spawn(until_closed(c, t))).collect();
    // Slow heads and bodies: one half trickles a byte per stream every 250 ms (trickling does
    // not extend a deadline), the other waits for the close.
    let split = |conns: Vec<TcpStream>| {
        let mut readers = Vec::new();
        let mut writers = Vec::new();
        for c in conns {
            let (r, w) = c.into_split();
            readers.push(r);
            writers.push(w);
        }
        (readers, writers)
    };
    let (head_readers, head_writers) = split(slow_heads);
    let (body_readers, body_writers) = split(slow_bodies);
    let drip = |writers: Vec<tokio::net::tcp::OwnedWriteHalf>, byte: u8| {
        tokio::spawn(async move {
            let mut writers = writers;
            let deadline = Instant::now() + Duration::from_secs(8);
            while !writers.is_empty() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let mut still = Vec::new();
                for mut w in writers {
                    if w.write_all(&[byte]).await.is_ok() {
                        still.push(w);
                    }
                }
                writers = still;
            }
        })
    };
    let head_drip = drip(head_writers, b'E');
    let body_drip = drip(body_writers, b' ');
    let read_close = |readers: Vec<tokio::net::tcp::OwnedReadHalf>| -> Vec<JoinHandle<(Duration, String)>> {
        readers
            .into_iter()
            .map(|mut r| {
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 1024];
                    loop {
                        match r.read(&mut buf).await {
                            Ok(0) | Err(_) => return (opened.elapsed(), String::from_utf8_lossy(&got).into_owned()),
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                })
            })
            .collect()
    };
    let watch_heads = read_close(head_readers);
    let watch_bodies = read_close(body_readers);

    let collect = |what: &'static str, handles: Vec<JoinHandle<(Duration, String)>>| async move {
        let mut out = Vec::new();
        for h in handles {
            let closed = tokio::time::timeout(Duration::from_secs(10), h).await;
            out.push(closed.unwrap_or_else(|_| panic!("a {what} connection was never cut off")).unwrap());
        }
        out
    };
    let check = |what: &str, closed: &[(Duration, String)], deadline: Duration, earliest: Duration| {
        let first = closed.iter().map(|c| c.0).min().unwrap();
        let last = closed.iter().map(|c| c.0).max().unwrap();
        assert!(first >= earliest, "{what}: cut off at {first:?}, before its timeout {deadline:?}");
        assert!(last <= deadline + setup + SLACK, "{what}: still open at {last:?}, timeout {deadline:?}");
    };
    let idle = collect("idle", watch_idle).await;
    check("idle", &idle, HEADER_TIMEOUT, HEADER_TIMEOUT.saturating_sub(Duration::from_millis(100)));
    let heads = collect("slow head", watch_heads).await;
    check("slow head", &heads, HEADER_TIMEOUT, HEADER_TIMEOUT.saturating_sub(Duration::from_millis(100)));
    let kept = collect("kept-alive", watch_kept).await;
    let kept_first = kept.iter().map(|c| c.0).min().unwrap();
    let kept_last = kept.iter().map(|c| c.0).max().unwrap();
    assert!(kept_first >= HEADER_TIMEOUT - Duration::from_millis(100), "kept-alive cut at {kept_first:?}");
    assert!(kept_last <= HEADER_TIMEOUT + SLACK, "a kept-alive idle connection stayed open {kept_last:?}");
    let bodies = collect("slow body", watch_bodies).await;
    check("slow body", &bodies, REQUEST_TIMEOUT, REQUEST_TIMEOUT.saturating_sub(Duration::from_millis(100)));
    // A body cut off by the request timeout is answered 408 before the close.
    assert!(bodies.iter().all(|(_, text)| text.starts_with("HTTP/1.1 408")), "{:?}", bodies[0]);
    head_drip.await.unwrap();
    body_drip.await.unwrap();

    // Afterwards the server is as good as new.
    assert!(status_ok(addr).await < Duration::from_millis(500));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_is_answered_408() {
    let e = limited(100).await;
    let server = start(&e, "127.0.0.1:0").await;
    let mut c = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /api/push HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN}\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{{"
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (after, text) = until_closed(c, started).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("too slowly") && text.contains("\"hint\""), "{text}");
    assert!(after >= BODY_TIMEOUT - Duration::from_millis(100) && after < BODY_TIMEOUT + SLACK, "{after:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_closed_at_once_until_one_ends() {
    let e = limited(5).await;
    let server = start(&e, "127.0.0.1:0").await;
    // Six at once: the server takes each connection's slot in its own task, so which of the
    // six is over the cap is up to the scheduler; exactly one is closed straight away.
    let started = Instant::now();
    let mut waiting = Vec::new();
    for _ in 0..6 {
        let c = TcpStream::connect(server.addr).await.unwrap();
        waiting.push(tokio::spawn(until_closed(c, started)));
    }
    let (first, text) = futures::future::select_all(waiting.iter_mut()).await.0.unwrap();
    assert!(first < HEADER_TIMEOUT / 2 && text.is_empty(), "{first:?} {text}");
    // The other five hold the slots (until the idle timeout closes them).
    let mut held: Vec<_> = waiting.into_iter().filter(|w| !w.is_finished()).collect();
    assert_eq!(held.len(), 5);
    // One ends: a normal client gets in.
    if let Some(one) = held.pop() {
        one.abort(); // drops its connection
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = reqwest::Client::new().get(format!("http://{}/health", server.addr)).send().await;
        if r.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "no connection was let in after one ended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for h in held {
        h.abort();
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_head_is_refused() {
    let e = limited(100).await;
    let server = start(&e, "127.0.0.1:0").await;
    let r = reqwest::Client::new()
        .get(format!("http://{}/api/status", server.addr))
        .bearer_auth(ADMIN)
        .header("X-Padding", "x".repeat(e.keeper.config().server.max_header_bytes + 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    assert!(status_ok(server.addr).await < Duration::from_secs(1));
    server.stop().await;
}

/// Collects formatted log lines (the logger of the test's own thread).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn plain_http_on_a_non_loopback_address_warns_once_how_to_enable_tls() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    for (bind, warned) in [("0.0.0.0:0", true), ("127.0.0.1:0", false)] {
        logs.0.lock().unwrap().clear();
        let e = limited(10).await;
        let server = start(&e, bind).await;
        let port = server.addr.port();
        let _ = status_ok(SocketAddr::from(([127, 0, 0, 1], port))).await;
        server.stop().await;
        let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
        assert_eq!(text.matches("WITHOUT TLS").count(), usize::from(warned), "{bind}: {text}");
        if warned {
            assert!(text.contains("tls_cert") && text.contains("tls_key"), "{text}");
        }
    }
}
