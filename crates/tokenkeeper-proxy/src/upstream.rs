//! The proxy's upstream connections: HTTP/1.1 (over TLS for `https` upstreams), kept alive
//! and pooled per upstream, each driven by the task of the request using it.
//!
//! Written on hyper's `client::conn` rather than hyper-util's pooled `Client` because that
//! client runs every connection in a task of its own: each proxied exchange then crosses
//! between two tasks (the client connection's, serving the request, and the pooled
//! connection's, talking to the upstream) four times, each a wake-up and often a thread
//! switch to the other runtime worker, which on a busy machine cost more than the proxying
//! itself (`docs/BENCHMARKS.md`). Here the request's own task polls the upstream connection
//! beside the response's head and body: one task per exchange, as in nginx's event loop.
//!
//! Idle connections are pooled per runtime as well: a connection's socket is registered with
//! the reactor of the runtime that opened it, and `serve` runs each client connection on a
//! single-threaded runtime of its own thread (`tokenkeeper_server`'s connection threads).
//! Used from another of those threads, the connection's readiness would come through the
//! first one, a wake-up across threads for every read; kept to its own runtime, it never
//! leaves the thread. (On a multi-threaded runtime, one id covers all its workers.)
//!
//! Nobody polls an idle connection. One the upstream closed meanwhile is noticed when it is
//! checked out (its connection future has ended) and dropped; a request that a connection
//! turned away unwritten goes to another one; nothing that was written is sent twice.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

use crate::Upstream;

type Io = MaybeHttpsStream<TokioIo<TcpStream>>;

/// How long an idle connection is kept for reuse.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per upstream; one more that comes back is closed.
const MAX_IDLE: usize = 256;
/// Idle connections tried before a new one is opened (each one tried is dropped if it
/// turns the request away).
const MAX_IDLE_TRIES: usize = 4;

/// Why an exchange failed before its answer's head arrived.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// No connection: DNS, TCP (within `[proxy] connect_timeout`) or TLS.
    #[error("cannot connect to the upstream: {0}")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// No connection within `[proxy] connect_timeout` (TLS handshake included).
    #[error("no connection to the upstream within {0:?} ([proxy] connect_timeout)")]
    ConnectTimeout(Duration),
    /// The connection failed while the request was sent or the answer's head read.
    #[error("the upstream connection failed: {0}")]
    Http(#[source] hyper::Error),
}

/// One upstream connection: the handle requests are sent through, and the connection
/// future that does its I/O, polled by whichever request holds it.
struct Conn {
    send: http1::SendRequest<Full<Bytes>>,
    io: http1::Connection<Io, Full<Bytes>>,
    /// The connection future has ended (closed or failed); it is never polled again.
    ended: bool,
    /// The runtime whose reactor its socket is registered with: it is pooled for that one.
    runtime: tokio::runtime::Id,
}

impl Conn {
    /// Does the connection's pending I/O (writes the request, reads the answer into its
    /// head and body channels), registering `cx` for more.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if !self.ended && Pin::new(&mut self.io).poll(cx).is_ready() {
            self.ended = true;
        }
    }

    /// Whether it may take another request: its I/O done once without a waker (what
    /// arrived while nobody polled it: the end of the previous answer, or the upstream's
    /// close), then neither side closed.
    fn reusable(&mut self) -> bool {
        self.drive(&mut Context::from_waker(Waker::noop()));
        !self.ended && !self.send.is_closed()
    }

    /// Sends `req` and waits for the answer's head, driving the connection meanwhile. On
    /// failure, the request comes back if it was never written.
    async fn exchange(
        &mut self,
        req: hyper::Request<Full<Bytes>>,
    ) -> Result<hyper::Response<Incoming>, hyper::client::conn::TrySendError<hyper::Request<Full<Bytes>>>> {
        // `try_send_request` queues the request at once; the connection writes it when
        // driven. Driving first lets one poll read an answer that arrived and hand it on.
        let mut answer = std::pin::pin!(self.send.try_send_request(req));
        std::future::poll_fn(|cx| {
            self.drive(cx);
            answer.as_mut().poll(cx)
        })
        .await
    }
}

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

/// Idle connections by runtime ([`Conn::runtime`]) and upstream ([`Upstream::key`]), most
/// recently used last.
type IdleMap = HashMap<tokio::runtime::Id, HashMap<Arc<str>, Vec<Idle>>>;

#[derive(Default)]
struct Pool {
    idle: Mutex<IdleMap>,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, IdleMap> {
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The most recently used live idle connection to `key` opened on `runtime`; expired and
    /// closed ones met on the way are dropped. Each is looked at outside the lock: that may
    /// read from its socket, and dropping one closes it.
    fn checkout(&self, runtime: tokio::runtime::Id, key: &str) -> Option<Box<Conn>> {
        loop {
            let mut c = self.lock().get_mut(&runtime)?.get_mut(key)?.pop()?;
            if c.since.elapsed() < IDLE_TIMEOUT && c.conn.reusable() {
                return Some(c.conn);
            }
        }
    }

    /// Keeps `conn` for the next request to `key`, unless it cannot take one or the pool
    /// is full; connections idle for longer than [`IDLE_TIMEOUT`] are closed on the way.
    fn checkin(&self, key: &Arc<str>, mut conn: Box<Conn>) {
        if !conn.reusable() {
            return;
        }
        // What is closed (expired ones, or this one when the pool is full) is dropped after
        // the lock is released.
        let (expired, overflow) = {
            let mut idle = self.lock();
            let list = idle.entry(conn.runtime).or_default().entry(key.clone()).or_default();
            let fresh = list.iter().position(|c| c.since.elapsed() < IDLE_TIMEOUT).unwrap_or(list.len());
            let expired: Vec<Idle> = list.drain(..fresh).collect();
            let overflow = if list.len() < MAX_IDLE {
                list.push(Idle { conn, since: Instant::now() });
                None
            } else {
                Some(conn)
            };
            (expired, overflow)
        };
        drop((expired, overflow));
    }
}

/// The upstream connections of one proxy: a connector (TCP, and TLS with the web PKI's roots
/// for `https`, within `[proxy] connect_timeout`) and the idle pool.
pub(crate) struct Upstreams {
    connector: HttpsConnector<HttpConnector>,
    /// `[proxy] connect_timeout`: DNS, TCP and TLS together.
    connect_timeout: Duration,
    pool: Arc<Pool>,
}

impl Upstreams {
    /// Connections made within `connect_timeout` (DNS, TCP and TLS together).
    pub fn new(connect_timeout: Duration) -> Result<Self, rustls::Error> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        // Kept beside the outer timeout in `connect`: with several addresses for one name the
        // connector shares this one out between its attempts, so a dead first address does not
        // take the whole allowance; the outer one also bounds DNS and the TLS handshake.
        http.set_connect_timeout(Some(connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Upstreams { connector, connect_timeout, pool: Arc::default() })
    }

    /// Sends `req` (origin-form URI, `Host` set) to `upstream` and returns the answer's head
    /// with a body that drives the connection and gives it back to the pool at its end. An
    /// idle connection is used when one is alive, else a new one is opened.
    pub async fn send(
        &self,
        upstream: &Upstream,
        mut req: hyper::Request<Full<Bytes>>,
    ) -> Result<hyper::Response<UpstreamBody>, UpstreamError> {
        let runtime = tokio::runtime::Handle::current().id();
        let mut tries = 0;
        loop {
            let idle = if tries < MAX_IDLE_TRIES { self.pool.checkout(runtime, &upstream.key) } else { None };
            tries += 1;
            let reused = idle.is_some();
            let mut conn = match idle {
                Some(c) => c,
                // Connecting is the cold path: boxed, so its state does not weigh on every
                // request's future.
                None => Box::pin(self.connect(upstream)).await?,
            };
            match conn.exchange(req).await {
                Ok(answer) => return Ok(self.body(upstream, answer, conn)),
                Err(mut e) => match e.take_message() {
                    // An idle connection turned it away unwritten (it had just closed): try
                    // another, or a new one.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(UpstreamError::Http(e.into_error())),
                },
            }
        }
    }

    /// A new connection, boxed: it moves between requests and the pool, and a TLS stream's
    /// state is large.
    async fn connect(&self, upstream: &Upstream) -> Result<Box<Conn>, UpstreamError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await.map_err(UpstreamError::Connect)?;
        let io = tokio::time::timeout(self.connect_timeout, connector.call(upstream.origin.clone()))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout(self.connect_timeout))?
            .map_err(UpstreamError::Connect)?;
        let (send, io) = http1::handshake(io).await.map_err(UpstreamError::Http)?;
        Ok(Box::new(Conn { send, io, ended: false, runtime: tokio::runtime::Handle::current().id() }))
    }

    fn body(
        &self,
        upstream: &Upstream,
        answer: hyper::Response<Incoming>,
        conn: Box<Conn>,
    ) -> hyper::Response<UpstreamBody> {
        answer.map(|incoming| UpstreamBody {
            incoming,
            conn: Some(conn),
            pool: self.pool.clone(),
            key: upstream.key.clone(),
        })
    }
}

/// An answer's body as it comes from the upstream: polling it drives its connection; at its
/// end the connection goes back to the pool. Dropped before its end (the client went away,
/// or a failure was read only in part), it closes the connection, which cancels the
/// upstream request.
pub(crate) struct UpstreamBody {
    incoming: Incoming,
    conn: Option<Box<Conn>>,
    pool: Arc<Pool>,
    key: Arc<str>,
}

impl UpstreamBody {
    fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.checkin(&self.key, conn);
        }
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        // What the connection already read is taken first; only when nothing is there does
        // it read more (and asking for more is what lets it read: hyper's body channel
        // holds the connection back until the body is polled).
        let polled = match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Pending => match this.conn.as_mut() {
                Some(conn) => {
                    conn.drive(cx);
                    Pin::new(&mut this.incoming).poll_frame(cx)
                }
                None => Poll::Pending,
            },
            ready => ready,
        };
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Err(_))) => this.conn = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body read to its end (servers stop polling once `is_end_stream` says so) leaves
        // a connection ready for the next request; any other is closed with the body.
        if self.incoming.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use hyper::service::service_fn;

    use super::*;

    /// A loopback HTTP/1.1 server answering "ok" (`/close` with `Connection: close`),
    /// counting the connections it accepted.
    async fn server() -> (Upstream, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = service_fn(|req: hyper::Request<Incoming>| async move {
                        let mut r = hyper::Response::new(Full::new(Bytes::from_static(b"ok")));
                        if req.uri().path() == "/close" {
                            r.headers_mut().insert("connection", "close".parse().unwrap());
                        }
                        Ok::<_, std::convert::Infallible>(r)
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        (crate::parse_upstream(&format!("http://{addr}")).unwrap(), accepted)
    }

    fn request(upstream: &Upstream, path: &str) -> hyper::Request<Full<Bytes>> {
        hyper::Request::builder().uri(path).header("host", upstream.host.clone()).body(Full::new(Bytes::new())).unwrap()
    }

    async fn get(ups: &Upstreams, upstream: &Upstream, path: &str) -> String {
        let answer = ups.send(upstream, request(upstream, path)).await.unwrap();
        let body = answer.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection() {
        let (upstream, accepted) = server().await;
        let ups = Upstreams::new(Duration::from_secs(5)).unwrap();
        for _ in 0..10 {
            assert_eq!(get(&ups, &upstream, "/").await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_closes_its_connection_and_the_next_request_opens_one() {
        let (upstream, accepted) = server().await;
        let ups = Upstreams::new(Duration::from_secs(5)).unwrap();
        let answer = ups.send(&upstream, request(&upstream, "/")).await.unwrap();
        drop(answer);
        assert_eq!(get(&ups, &upstream, "/").await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_reused() {
        let (upstream, accepted) = server().await;
        let ups = Upstreams::new(Duration::from_secs(5)).unwrap();
        // `Connection: close` ends the connection with the answer: it never reaches the pool.
        assert_eq!(get(&ups, &upstream, "/close").await, "ok");
        for _ in 0..3 {
            assert_eq!(get(&ups, &upstream, "/").await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "one closed by the server, one reused after it");
    }

    #[tokio::test]
    async fn concurrent_requests_open_one_connection_each_and_pool_them_all() {
        let (upstream, accepted) = server().await;
        let ups = Upstreams::new(Duration::from_secs(5)).unwrap();
        // Five answers held at once need five connections.
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(ups.send(&upstream, request(&upstream, "/")).await.unwrap());
        }
        for answer in held {
            answer.into_body().collect().await.unwrap();
        }
        for _ in 0..5 {
            assert_eq!(get(&ups, &upstream, "/").await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
    }

    /// Each client connection thread is a single-threaded runtime: a connection opened on
    /// one is pooled for that one only (its socket is on that runtime's reactor). The test's
    /// runtime has workers of its own: the server runs there while this thread waits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_are_reused_only_on_the_runtime_that_opened_them() {
        let (upstream, accepted) = server().await;
        let ups = Arc::new(Upstreams::new(Duration::from_secs(5)).unwrap());
        let on_own_runtime = |ups: Arc<Upstreams>, upstream: Upstream| {
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async {
                    for _ in 0..3 {
                        assert_eq!(get(&ups, &upstream, "/").await, "ok");
                    }
                });
                // Kept alive: its connection stays pooled (and open) for the checks below.
                rt
            })
            .join()
            .unwrap()
        };
        let first = on_own_runtime(ups.clone(), upstream.clone());
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "three requests on one runtime share a connection");
        let second = on_own_runtime(ups.clone(), upstream.clone());
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "another runtime opens its own");
        assert_eq!(get(&ups, &upstream, "/").await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 3, "and so does this test's runtime");
        assert_eq!(get(&ups, &upstream, "/").await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 3, "which reuses its own");
        // A runtime may not be dropped from inside another one.
        std::thread::spawn(move || drop((first, second))).join().unwrap();
    }

    #[test]
    fn the_host_header_is_the_authority_without_a_default_port() {
        for (url, host, key) in [
            ("https://api.example.com:443/x", "api.example.com", "https://api.example.com:443"),
            ("https://api.example.com", "api.example.com", "https://api.example.com"),
            ("http://127.0.0.1:8080/", "127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("http://[::1]:80", "[::1]", "http://[::1]:80"),
        ] {
            let u = crate::parse_upstream(url).unwrap();
            assert_eq!((u.host.to_str().unwrap(), &*u.key), (host, key), "{url}");
        }
    }

    /// Paused time: the handshake's wait is the runtime's clock, advanced at once.
    #[tokio::test(start_paused = true)]
    async fn a_tls_handshake_that_never_completes_ends_at_the_connect_timeout() {
        // Accepts, then never answers the ClientHello.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let upstream = crate::parse_upstream(&format!("https://{addr}")).unwrap();
        let ups = Upstreams::new(Duration::from_secs(10)).unwrap();
        let started = tokio::time::Instant::now();
        let e = ups.send(&upstream, request(&upstream, "/")).await.err().unwrap();
        assert!(matches!(e, UpstreamError::ConnectTimeout(_)), "{e}");
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let upstream = crate::parse_upstream(&format!("http://{addr}")).unwrap();
        let ups = Upstreams::new(Duration::from_secs(5)).unwrap();
        let e = ups.send(&upstream, request(&upstream, "/")).await.err().unwrap();
        assert!(matches!(e, UpstreamError::Connect(_)), "{e}");
    }
}
