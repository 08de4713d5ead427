//! tokenkeeper's load generator: N keep-alive HTTP/1.1 connections (hyper's client
//! connection, no pool in between), each sending one request after another for a fixed
//! duration or a fixed count, optionally paced to a total request rate. It records, in
//! microseconds, the latency of every whole response and the time to its first body byte
//! (for server-sent event streams, the first event), and reports throughput and the
//! p50/p99/p999 of both.
//!
//! It is a library so that every benchmark in the workspace measures the same way:
//! `tk-load` and the benches of the real binary in `crates/tokenkeeper/benches` (the proxy
//! benchmark, which also runs [`serve_floor_proxy`], and the hand-out benchmark, `/api/token`
//! against `/health`). [`run_rotating`] spreads a run over several paths (one account after another).

mod floor;

pub use floor::serve_floor_proxy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a load run could not be made (not the failures of single requests, which are counted).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not even one connection could be opened: nothing listens at the address.
    #[error("could not connect to {addr}: {source}; is the server running and listening there?")]
    Connect {
        /// The target address.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The histogram bounds were refused (a programming error in the configuration).
    #[error("latency histogram: {0}")]
    Histogram(#[from] hdrhistogram::CreationError),
    /// A request could not be built from the target (an invalid path or header).
    #[error("invalid request for {path}: {source}")]
    Request {
        /// The request path.
        path: String,
        /// What hyper refused.
        #[source]
        source: hyper::http::Error,
    },
}

/// What every request of a run looks like.
#[derive(Clone, Debug)]
pub struct Target {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The `Host` header (e.g. `127.0.0.1:8080`).
    pub host: String,
    /// The request method.
    pub method: Method,
    /// Path and query, e.g. `/v1/messages`.
    pub path: String,
    /// Extra headers, sent on every request.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The request body (empty for none).
    pub body: Bytes,
}

impl Target {
    /// A `GET` of `path` at `addr` with no headers beyond `Host`.
    pub fn get(addr: SocketAddr, path: &str) -> Self {
        Self {
            addr,
            host: addr.to_string(),
            method: Method::GET,
            path: path.to_owned(),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// A `POST` of `body` to `path` at `addr`.
    pub fn post(addr: SocketAddr, path: &str, body: impl Into<Bytes>) -> Self {
        Self { method: Method::POST, body: body.into(), ..Self::get(addr, path) }
    }

    /// The same target with one more header.
    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        if let Ok(value) = HeaderValue::from_str(value) {
            self.headers.push((HeaderName::from_static(name), value));
        }
        self
    }

    fn request(&self) -> Result<Request<Full<Bytes>>, LoadError> {
        self.request_to(&self.path)
    }

    /// The request of this target with `path` (and query) instead of its own.
    fn request_to(&self, path: &str) -> Result<Request<Full<Bytes>>, LoadError> {
        let mut builder =
            Request::builder().method(self.method.clone()).uri(path).header(hyper::header::HOST, &self.host);
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        builder
            .body(Full::new(self.body.clone()))
            .map_err(|source| LoadError::Request { path: path.to_owned(), source })
    }
}

/// When a run ends.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// After this long (requests in flight at the end are completed and counted).
    Duration(Duration),
    /// After this many requests in total.
    Count(u64),
}

/// One load run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// What to request.
    pub target: Target,
    /// Keep-alive connections, each with one request in flight at a time.
    pub connections: usize,
    /// When to stop.
    pub stop: Stop,
    /// Total requests per second across all connections; `None` sends as fast as answers come.
    pub rate: Option<f64>,
    /// Requests sent before measuring starts, per connection (connection set-up, caches).
    pub warmup_requests: u64,
}

impl LoadConfig {
    /// `connections` connections as fast as possible for `duration`, 10 warm-up requests each.
    pub fn closed(target: Target, connections: usize, duration: Duration) -> Self {
        Self { target, connections, stop: Stop::Duration(duration), rate: None, warmup_requests: 10 }
    }
}

/// What a run measured. Histograms are in microseconds.
#[derive(Clone, Debug)]
pub struct Report {
    /// Responses received completely with a 2xx status.
    pub ok: u64,
    /// Responses with another status.
    pub non_2xx: u64,
    /// Requests that failed at the connection level (reset, refused, broken body).
    pub errors: u64,
    /// Body bytes received.
    pub bytes: u64,
    /// Wall time of the measured part.
    pub elapsed: Duration,
    /// Time from sending a request to the end of its response body.
    pub latency: Histogram<u64>,
    /// Time from sending a request to its first body byte.
    pub ttfb: Histogram<u64>,
}

impl Report {
    /// Completed responses (of any status) per second.
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs == 0.0 {
            return 0.0;
        }
        (self.ok + self.non_2xx) as f64 / secs
    }

    /// The `q` quantile (0..=1) of the whole-response latency.
    pub fn latency_at(&self, q: f64) -> Duration {
        Duration::from_micros(self.latency.value_at_quantile(q))
    }

    /// The `q` quantile (0..=1) of the time to first byte.
    pub fn ttfb_at(&self, q: f64) -> Duration {
        Duration::from_micros(self.ttfb.value_at_quantile(q))
    }

    /// One line: throughput, then p50/p99/p999 of latency and of time to first byte, in ms.
    pub fn summary(&self) -> String {
        format!(
            "{:>9.0} req/s  latency p50 {:.3} p99 {:.3} p999 {:.3} ms  ttfb p50 {:.3} p99 {:.3} ms  ok {} non-2xx {} errors {}",
            self.throughput(),
            ms(self.latency_at(0.5)),
            ms(self.latency_at(0.99)),
            ms(self.latency_at(0.999)),
            ms(self.ttfb_at(0.5)),
            ms(self.ttfb_at(0.99)),
            self.ok,
            self.non_2xx,
            self.errors,
        )
    }

    fn merge(&mut self, other: &Report) {
        self.ok += other.ok;
        self.non_2xx += other.non_2xx;
        self.errors += other.errors;
        self.bytes += other.bytes;
        // Both histograms were created with the same bounds, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.ttfb.add(&other.ttfb);
    }

    fn empty() -> Result<Self, LoadError> {
        Ok(Self {
            ok: 0,
            non_2xx: 0,
            errors: 0,
            bytes: 0,
            elapsed: Duration::ZERO,
            // 1 µs to 60 s, 3 significant digits.
            latency: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            ttfb: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        })
    }
}

/// Milliseconds as a float, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs `config` and reports what it measured.
pub async fn run(config: &LoadConfig) -> Result<Report, LoadError> {
    run_paths(config, Vec::new()).await
}

/// Runs `config` over several paths instead of the target's one: connection `c` sends
/// `paths[(c + k × connections) % paths.len()]` as its `k`-th request, so every path is asked
/// for equally often and neighbouring connections ask for different ones (the hand-out
/// benchmark's accounts). Method, headers and body are the target's. An empty `paths` is
/// [`run`].
pub async fn run_rotating(config: &LoadConfig, paths: &[String]) -> Result<Report, LoadError> {
    run_paths(config, paths.to_vec()).await
}

async fn run_paths(config: &LoadConfig, paths: Vec<String>) -> Result<Report, LoadError> {
    // Fail early, with a clear message, when nothing listens.
    drop(
        TcpStream::connect(config.target.addr)
            .await
            .map_err(|source| LoadError::Connect { addr: config.target.addr, source })?,
    );
    config.target.request()?;
    for path in &paths {
        config.target.request_to(path)?;
    }

    let connections = config.connections.max(1);
    let shared = Arc::new(Shared {
        target: config.target.clone(),
        paths,
        remaining: std::sync::atomic::AtomicI64::new(match config.stop {
            Stop::Count(n) => i64::try_from(n).unwrap_or(i64::MAX),
            Stop::Duration(_) => i64::MAX,
        }),
        barrier: tokio::sync::Barrier::new(connections + 1),
    });
    let per_connection_interval =
        config.rate.filter(|r| *r > 0.0).map(|r| Duration::from_secs_f64(connections as f64 / r));

    let mut tasks = Vec::with_capacity(connections);
    for index in 0..connections {
        let shared = Arc::clone(&shared);
        let warmup = config.warmup_requests;
        tasks.push(tokio::spawn(async move {
            connection_loop(&shared, Rotation { index, connections }, warmup, per_connection_interval).await
        }));
    }
    // Every connection has warmed up: measuring starts now.
    shared.barrier.wait().await;
    let start = Instant::now();
    if let Stop::Duration(d) = config.stop {
        tokio::time::sleep(d).await;
        shared.remaining.store(0, std::sync::atomic::Ordering::Relaxed);
    }
    let mut report = Report::empty()?;
    for task in tasks {
        if let Ok(Ok(part)) = task.await {
            report.merge(&part);
        }
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

struct Shared {
    target: Target,
    /// Paths to rotate through; empty: the target's own.
    paths: Vec<String>,
    remaining: std::sync::atomic::AtomicI64,
    barrier: tokio::sync::Barrier,
}

/// Which paths a connection sends: its index among `connections`.
#[derive(Clone, Copy)]
struct Rotation {
    index: usize,
    connections: usize,
}

impl Shared {
    /// The path of request number `k` of the connection at `rotation`.
    fn path(&self, rotation: Rotation, k: usize) -> &str {
        if self.paths.is_empty() {
            return &self.target.path;
        }
        &self.paths[(rotation.index + k.wrapping_mul(rotation.connections)) % self.paths.len()]
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Option<Sender> {
    let stream = TcpStream::connect(addr).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
    // The connection driver ends when the sender is dropped or the peer closes.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(sender)
}

enum Outcome {
    Ok { ttfb: Duration, bytes: u64 },
    Status { ttfb: Duration, bytes: u64 },
    Broken,
}

async fn one(sender: &mut Sender, target: &Target, path: &str, sent: Instant) -> Outcome {
    let Ok(request) = target.request_to(path) else {
        return Outcome::Broken;
    };
    if sender.ready().await.is_err() {
        return Outcome::Broken;
    }
    let Ok(response) = sender.send_request(request).await else {
        return Outcome::Broken;
    };
    let ok = response.status().is_success();
    let mut body = response.into_body();
    let mut ttfb = None;
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Outcome::Broken;
        };
        if let Some(data) = frame.data_ref() {
            if !data.is_empty() && ttfb.is_none() {
                ttfb = Some(sent.elapsed());
            }
            bytes += data.len() as u64;
        }
    }
    let ttfb = ttfb.unwrap_or_else(|| sent.elapsed());
    if ok {
        Outcome::Ok { ttfb, bytes }
    } else {
        Outcome::Status { ttfb, bytes }
    }
}

async fn connection_loop(
    shared: &Shared,
    rotation: Rotation,
    warmup: u64,
    interval: Option<Duration>,
) -> Result<Report, LoadError> {
    use std::sync::atomic::Ordering;
    let mut report = Report::empty()?;
    let mut sender = connect(shared.target.addr).await;
    let mut k = 0usize;
    for _ in 0..warmup {
        if let Some(s) = sender.as_mut() {
            let path = shared.path(rotation, k);
            k = k.wrapping_add(1);
            if let Outcome::Broken = one(s, &shared.target, path, Instant::now()).await {
                sender = connect(shared.target.addr).await;
            }
        }
    }
    shared.barrier.wait().await;
    let mut next = Instant::now();
    loop {
        if shared.remaining.fetch_sub(1, Ordering::Relaxed) <= 0 {
            break;
        }
        // Paced: wait for this request's slot. A request that is late because the previous
        // answer was slow counts from its slot, so the delay is not hidden (no coordinated
        // omission); one that waited for its slot counts from when it was sent, because
        // the timer wakes up to a millisecond after the slot (tokio's timer resolution), and
        // counting that lateness would add about half a millisecond of noise to every figure.
        let late_since = match interval {
            Some(interval) => {
                next += interval;
                let behind = Instant::now() >= next;
                if !behind {
                    tokio::time::sleep_until(next.into()).await;
                }
                behind.then_some(next)
            }
            None => None,
        };
        let sent = late_since.unwrap_or_else(Instant::now);
        let Some(s) = sender.as_mut() else {
            report.errors += 1;
            sender = connect(shared.target.addr).await;
            continue;
        };
        let path = shared.path(rotation, k);
        k = k.wrapping_add(1);
        match one(s, &shared.target, path, sent).await {
            Outcome::Ok { ttfb, bytes } => {
                report.ok += 1;
                report.bytes += bytes;
                record(&mut report, sent, ttfb);
            }
            Outcome::Status { ttfb, bytes } => {
                report.non_2xx += 1;
                report.bytes += bytes;
                record(&mut report, sent, ttfb);
            }
            Outcome::Broken => {
                report.errors += 1;
                sender = connect(shared.target.addr).await;
            }
        }
    }
    Ok(report)
}

fn record(report: &mut Report, sent: Instant, ttfb: Duration) {
    let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    report.latency.saturating_record(micros(sent.elapsed()));
    report.ttfb.saturating_record(micros(ttfb));
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A tiny keep-alive HTTP/1.1 server answering every request with `answer`.
    async fn fixed_server(answer: &'static [u8]) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    loop {
                        let n = match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            if socket.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn counts_exactly_and_measures() {
        let addr = fixed_server(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        let config = LoadConfig {
            target: Target::get(addr, "/health"),
            connections: 4,
            stop: Stop::Count(1000),
            rate: None,
            warmup_requests: 2,
        };
        let report = run(&config).await.unwrap();
        assert_eq!(report.ok, 1000);
        assert_eq!(report.errors, 0);
        assert_eq!(report.bytes, 2000);
        assert_eq!(report.latency.len(), 1000);
        assert!(report.throughput() > 0.0);
        assert!(report.latency_at(0.5) >= report.ttfb_at(0.0));
    }

    /// Like [`fixed_server`], and records the path of every request line it answers.
    async fn recording_server() -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen_paths = Arc::new(std::sync::Mutex::new(Vec::new()));
        let paths = Arc::clone(&seen_paths);
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let paths = Arc::clone(&paths);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    loop {
                        let n = match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&seen[..end]).into_owned();
                            seen.drain(..end + 4);
                            let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
                            paths.lock().unwrap().push(path);
                            if socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, seen_paths)
    }

    #[tokio::test]
    async fn rotating_asks_for_every_path_equally_often() {
        let (addr, seen) = recording_server().await;
        let paths: Vec<String> = (0..5).map(|i| format!("/api/token?account=a{i}")).collect();
        let config = LoadConfig {
            target: Target::get(addr, "/unused"),
            connections: 3,
            stop: Stop::Count(300),
            rate: None,
            warmup_requests: 0,
        };
        let report = run_rotating(&config, &paths).await.unwrap();
        assert_eq!((report.ok, report.errors), (300, 0));
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 300);
        for p in &paths {
            let n = seen.iter().filter(|s| *s == p).count();
            // Three connections stop at slightly different points of their rotation.
            assert!((57..=63).contains(&n), "{p} asked for {n} times of 300: {seen:?}");
        }
        assert!(!seen.iter().any(|s| s == "/unused"), "the target's own path was sent");
    }

    #[tokio::test]
    async fn the_floor_proxy_passes_requests_and_answers_through() {
        let upstream = fixed_server(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello").await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_floor_proxy(listener, upstream));
        let config = LoadConfig {
            target: Target::post(addr, "/v1/messages", "{}"),
            connections: 3,
            stop: Stop::Count(300),
            rate: None,
            warmup_requests: 1,
        };
        let report = run(&config).await.unwrap();
        assert_eq!((report.ok, report.errors, report.non_2xx, report.bytes), (300, 0, 0, 1500));
    }

    #[tokio::test]
    async fn non_2xx_is_counted_apart() {
        let addr = fixed_server(b"HTTP/1.1 503 Busy\r\ncontent-length: 0\r\n\r\n").await;
        let mut config = LoadConfig::closed(Target::get(addr, "/"), 2, Duration::ZERO);
        config.stop = Stop::Count(50);
        let report = run(&config).await.unwrap();
        assert_eq!((report.ok, report.non_2xx), (0, 50));
    }

    #[tokio::test]
    async fn nothing_listening_is_an_error_that_says_so() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let config = LoadConfig::closed(Target::get(addr, "/"), 1, Duration::ZERO);
        let err = run(&config).await.unwrap_err();
        assert!(err.to_string().contains("is the server running"), "{err}");
    }
}
