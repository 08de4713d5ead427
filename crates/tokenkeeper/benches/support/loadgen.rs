//! A small closed-loop load generator: `connections` keep-alive HTTP/1.1 connections, each
//! sending the next request as soon as the previous answer has been read in full, latency
//! recorded per request in an HDR histogram (microseconds).
//!
//! `crates/tokenkeeper-bench` (branch `proxy`) is growing the project's load generator; once
//! it is merged, this module should become a use of it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;

/// What one run measured.
pub struct Run {
    /// Requests answered with 2xx.
    pub ok: u64,
    /// Requests answered otherwise, or failed.
    pub errors: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Latency of answered requests, microseconds.
    pub latency: Histogram<u64>,
}

impl Run {
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// A quantile in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Sends requests for `duration` over `connections` connections to `addr`. Connection `c`
/// sends `paths[(c + k * connections) % paths.len()]` as its k-th request, with `headers`.
pub async fn run(
    addr: SocketAddr,
    paths: &[String],
    headers: &[(&'static str, String)],
    connections: usize,
    duration: Duration,
) -> Run {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(connections);
    for c in 0..connections {
        let paths = paths.to_vec();
        let headers = headers.to_vec();
        tasks.push(tokio::spawn(async move { connection(addr, c, connections, &paths, &headers, deadline).await }));
    }
    let mut total = Run { ok: 0, errors: 0, elapsed: Duration::ZERO, latency: new_histogram() };
    for t in tasks {
        let (ok, errors, h) = t.await.expect("a load-generator connection panicked");
        total.ok += ok;
        total.errors += errors;
        total.latency.add(&h).expect("histograms of the same bounds");
    }
    total.elapsed = started.elapsed();
    total
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 60 s, three significant figures.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

async fn connection(
    addr: SocketAddr,
    index: usize,
    connections: usize,
    paths: &[String],
    headers: &[(&'static str, String)],
    deadline: Instant,
) -> (u64, u64, Histogram<u64>) {
    let mut hist = new_histogram();
    let (mut ok, mut errors) = (0u64, 0u64);
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the server");
    stream.set_nodelay(true).expect("TCP_NODELAY");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("an HTTP/1.1 handshake");
    let driver = tokio::spawn(conn);
    let host = addr.to_string();
    let mut k = 0usize;
    while Instant::now() < deadline {
        let path = &paths[(index + k * connections) % paths.len()];
        k += 1;
        let mut req = Request::get(path.as_str()).header("host", &host);
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        let req = req.body(Empty::<Bytes>::new()).expect("a valid request");
        if sender.ready().await.is_err() {
            errors += 1;
            break;
        }
        let sent = Instant::now();
        match sender.send_request(req).await {
            Ok(resp) => {
                let status = resp.status();
                let body = resp.into_body().collect().await;
                let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX).max(1);
                if status.is_success() && body.is_ok() {
                    ok += 1;
                    hist.saturating_record(micros);
                } else {
                    errors += 1;
                }
            }
            Err(_) => {
                errors += 1;
                break;
            }
        }
    }
    drop(sender);
    driver.abort();
    (ok, errors, hist)
}
