//! Serving the router: plain HTTP or TLS (rustls) on a TCP listener, and optionally a Unix
//! socket beside it, all stopped by one shutdown future and drained before [`serve`] returns.
//!
//! Each listener's accept loop runs on the caller's runtime and hands every connection to a
//! connection thread (the `shards` module: one single-threaded runtime per core), which serves
//! it with hyper's HTTP/1.1 server (the reason for HTTP/1.1 only is on `http1`) until it
//! ends. The limits of `[server]` are set on the HTTP library rather than written here:
//!
//! - `header_read_timeout`: hyper's header read timeout (HTTP/1), which runs whenever a
//!   connection waits for a request head, so it also closes idle connections, new or kept
//!   alive; TLS handshakes get the same time;
//! - `max_header_bytes`: hyper's read buffer (a larger head is answered 431 and the connection
//!   closed);
//! - `body_read_timeout` and `request_timeout`: `tower-http`'s body and request timeouts on the
//!   router ([`crate::router`]);
//! - `max_connections`: a semaphore taken when a connection is accepted (before TLS) and held
//!   by the connection's task until the connection ends; past it, new connections are
//!   closed at once. The accept loop also turns Nagle's algorithm off on TCP connections: a
//!   proxied stream's events each go out as they come, not held back until the client
//!   acknowledges the previous one.
//!
//! A server told to stop stops accepting, lets each connection finish the request it is
//! serving (hyper's graceful shutdown) for up to `[server] request_timeout`, then closes what
//! is left.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokenkeeper_core::config::{ServerConfig, MIN_HEADER_BYTES};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::client::ClientAddr;
use crate::error::ServerError;
use crate::front::Front;
use crate::state::AppState;

/// Builds the rustls configuration from PEM files.
pub fn tls_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, ServerError> {
    let tls = |path: &Path, reason: String| ServerError::Tls { path: path.to_owned(), reason };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls(cert, format!("cannot read PEM certificates ({e})")))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls(cert, format!("bad PEM certificate ({e})")))?;
    if certs.is_empty() {
        return Err(tls(cert, "no certificate found (expected -----BEGIN CERTIFICATE-----)".into()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| tls(key, format!("no usable private key ({e})")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(|e| tls(key, format!("the key does not fit the certificate ({e})")))?;
    // HTTP/1.1 only: see `configure`.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Whether serving on `addr` sends keys and tokens over a network in clear text.
pub fn exposes_plaintext(addr: SocketAddr, tls: bool) -> bool {
    !tls && !addr.ip().is_loopback()
}

fn tls_files(server: &ServerConfig) -> Result<Option<(PathBuf, PathBuf)>, ServerError> {
    match (&server.tls_cert, &server.tls_key) {
        (Some(c), Some(k)) => Ok(Some((c.clone(), k.clone()))),
        (None, None) => Ok(None),
        _ => Err(ServerError::TlsHalfConfigured),
    }
}

/// Serves `state`'s router on `listener` (TLS when `[server] tls_cert`/`tls_key` are set) and
/// on `[server] unix_socket` when set, until `shutdown` resolves; then stops accepting, lets
/// requests in flight finish (each is bounded by `[server] request_timeout`), and returns.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let addr = listener.local_addr()?;
    let tls = match tls_files(&state.keeper.config().server)? {
        Some((cert, key)) => Some(tls_config(&cert, &key)?),
        None => None,
    };
    if exposes_plaintext(addr, tls.is_some()) {
        tracing::warn!(%addr, "{}", PLAINTEXT_WARNING);
    }
    let secure = tls.is_some();
    let app = Served { router: crate::router_with(state.clone(), secure), front: state.front.clone() };
    let limits = state.keeper.config().server.clone();
    let shutdown = shutdown.shared();

    let unix = match limits.unix_socket.clone() {
        Some(path) => Some(serve_unix(path, app.clone(), &limits, shutdown.clone()).await?),
        None => None,
    };

    tracing::info!(%addr, tls = secure, max_connections = limits.max_connections, "HTTP API listening");
    let tcp_result = serve_tcp(listener, app, tls, &limits, shutdown.clone()).await;
    if let Some(u) = unix {
        if tcp_result.is_err() {
            // The TCP side failed before shutdown: don't wait for a shutdown that may never
            // come; stop the socket too so the caller sees the failure now.
            u.abort();
            if let Some(path) = &limits.unix_socket {
                let _ = std::fs::remove_file(path);
            }
            return tcp_result;
        }
        match u.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the Unix socket server failed"),
            Err(e) => tracing::warn!(error = %e, "the Unix socket server task failed"),
        }
    }
    tracing::info!("HTTP API stopped");
    tcp_result
}

/// Serves `front` alone on a listener of its own (the proxy's `[proxy] listen`; any other path
/// is answered 404) with `[server]`'s TLS files, connection limit and header timeout, until
/// `shutdown` resolves; then drains like [`serve`] (requests in flight get up to
/// `[server] request_timeout`). As with [`AppState::with_front`], only
/// `[server] body_read_timeout` applies (the longest pause while a request body arrives), no
/// whole-request timeout: the front bounds the rest.
pub async fn serve_front(
    listener: TcpListener,
    front: Front,
    limits: &ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let addr = listener.local_addr()?;
    let tls = match tls_files(limits)? {
        Some((cert, key)) => Some(tls_config(&cert, &key)?),
        None => None,
    };
    if exposes_plaintext(addr, tls.is_some()) {
        tracing::warn!(%addr, "{}", PLAINTEXT_WARNING);
    }
    tracing::info!(%addr, tls = tls.is_some(), max_connections = limits.max_connections, "listening");
    let app = Served { router: axum::Router::new(), front: Some(front) };
    serve_tcp(listener, app, tls, limits, shutdown).await
}

/// What a listener serves: the router, and the front ahead of it when there is one.
#[derive(Clone)]
struct Served {
    router: axum::Router,
    front: Option<Front>,
}

/// The TCP side of [`serve`] and [`serve_front`]: `app` on `listener`, TLS when `tls` is
/// set, under `limits`, until `shutdown`, then drained.
async fn serve_tcp(
    listener: TcpListener,
    app: Served,
    tls: Option<rustls::ServerConfig>,
    limits: &ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let tls = tls.map(|config| tokio_rustls::TlsAcceptor::from(Arc::new(config)));
    serve_listener(Listener::Tcp(listener), app, tls, limits, shutdown).await
}

/// What `serve` logs, once, when it listens on a non-loopback address without TLS.
pub const PLAINTEXT_WARNING: &str = "the HTTP API listens on a non-loopback address WITHOUT TLS: keys and tokens cross the network in clear text. Enable TLS with [server] tls_cert = \"/path/fullchain.pem\" and tls_key = \"/path/privkey.pem\" in the config, put a TLS proxy in front, or listen on 127.0.0.1 only";

/// Where connections come from.
enum Listener {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix(tokio::net::UnixListener),
}

/// An accepted connection, taken off the accepting runtime's reactor: the connection thread
/// that serves it registers it with its own ([`crate::shards`]).
#[derive(Debug)]
enum Accepted {
    Tcp(std::net::TcpStream, SocketAddr),
    #[cfg(unix)]
    Unix(std::os::unix::net::UnixStream),
}

impl Listener {
    async fn accept(&self) -> io::Result<Accepted> {
        match self {
            Listener::Tcp(l) => {
                let (stream, addr) = l.accept().await?;
                detach_tcp(stream, addr)
            }
            #[cfg(unix)]
            Listener::Unix(l) => Ok(Accepted::Unix(l.accept().await?.0.into_std()?)),
        }
    }
}

/// Turns Nagle's algorithm off (a proxied stream's events each go out as they come, not held
/// back until the client acknowledges the previous one) and takes the socket off this
/// runtime's reactor.
fn detach_tcp(stream: tokio::net::TcpStream, addr: SocketAddr) -> io::Result<Accepted> {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY on a connection");
    }
    Ok(Accepted::Tcp(stream.into_std()?, addr))
}

/// Whether an accept error concerns only the connection being accepted (the next accept may
/// well succeed), rather than the listener or the process (out of file descriptors).
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// A server's state as its connections see it: running, draining (finish the requests in
/// flight, take no new ones), or closing (the drain time is over: end now).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Running,
    Draining,
    Closing,
}

/// The HTTP/1.1 connection settings of `[server]`, on hyper's server (see the
/// [module docs](self)).
///
/// HTTP/1.1 only: hyper's HTTP/1 server enforces the header read timeout from the moment a
/// connection waits for a request (so idle connections, new or kept alive, are closed too),
/// while its HTTP/2 server and the protocol detection in front of both have no such timeout:
/// a client could hold a connection open for ever by sending nothing. Nothing served here
/// gains from HTTP/2.
fn http1(limits: &ServerConfig) -> hyper::server::conn::http1::Builder {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES));
    http
}

/// Accepts connections on `listener` and serves `app` on each, on the connection threads,
/// until `shutdown` resolves; then stops accepting, lets requests in flight finish for up to
/// `[server] request_timeout`, closes what is left, and returns once every connection ended.
async fn serve_listener(
    listener: Listener,
    app: Served,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: &ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let limit = ConnectionLimit::new(limits.max_connections);
    let http = Arc::new(http1(limits));
    let (phase, watch) = tokio::sync::watch::channel(Phase::Running);
    let connections = tokio_util::task::TaskTracker::new();
    let handshake_timeout = limits.header_read_timeout;
    let body_read_timeout = limits.body_read_timeout;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let accepted = match accepted {
            Ok(a) => a,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors, most likely: accepting again at once would spin.
                tracing::warn!(error = %e, "cannot accept a connection; trying again in a second");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // Past the limit the connection is dropped, which closes it.
        let Some(permit) = limit.take() else { continue };
        let connection = Connection {
            app: app.clone(),
            permit,
            tls: tls.clone(),
            http: http.clone(),
            handshake_timeout,
            body_read_timeout,
            phase: watch.clone(),
        };
        crate::shards::spawn(connections.track_future(connection.serve(accepted)));
    }
    drop(listener);
    connections.close();
    let _ = phase.send(Phase::Draining);
    if tokio::time::timeout(limits.request_timeout, connections.wait()).await.is_err() {
        let _ = phase.send(Phase::Closing);
        connections.wait().await;
    }
    Ok(())
}

/// One connection's share of the server: what it needs to be served on a connection thread.
struct Connection {
    app: Served,
    permit: ConnectionPermit,
    tls: Option<tokio_rustls::TlsAcceptor>,
    http: Arc<hyper::server::conn::http1::Builder>,
    handshake_timeout: Duration,
    body_read_timeout: Duration,
    phase: tokio::sync::watch::Receiver<Phase>,
}

impl Connection {
    /// Serves `accepted` until it closes or the server closes it. Runs on a connection thread.
    async fn serve(self, accepted: Accepted) {
        // Held until the connection ends (this function returns).
        let _permit = self.permit;
        match accepted {
            Accepted::Tcp(stream, addr) => {
                let Ok(stream) = tokio::net::TcpStream::from_std(stream) else { return };
                let service = service(self.app, Some(addr), self.body_read_timeout);
                match &self.tls {
                    None => drive(self.http.serve_connection(TokioIo::new(stream), service), self.phase).await,
                    Some(tls) => {
                        let Ok(Ok(stream)) = tokio::time::timeout(self.handshake_timeout, tls.accept(stream)).await
                        else {
                            return;
                        };
                        drive(self.http.serve_connection(TokioIo::new(stream), service), self.phase).await;
                    }
                }
            }
            #[cfg(unix)]
            Accepted::Unix(stream) => {
                let Ok(stream) = tokio::net::UnixStream::from_std(stream) else { return };
                let service = service(self.app, None, self.body_read_timeout);
                drive(self.http.serve_connection(TokioIo::new(stream), service), self.phase).await;
            }
        }
    }
}

/// A connection's requests, answered: those the front claims by the front (with the client's
/// address, the body under `body_read_timeout`), the others by the router (with the address
/// as `ConnectInfo`, which [`ClientAddr::of`] reads). `addr` is `None` on the Unix socket.
fn service(
    app: Served,
    addr: Option<SocketAddr>,
    body_read_timeout: Duration,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send,
> + Send {
    let client = addr.map_or(ClientAddr::Local, |a| ClientAddr::Ip(a.ip()));
    hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let answer = match &app.front {
            Some(front) if front.claims(req.uri().path()) => {
                let req = req.map(|body| tower_http::timeout::TimeoutBody::new(body_read_timeout, body));
                futures::future::Either::Left(front.call(req, client))
            }
            _ => {
                if let Some(a) = addr {
                    req.extensions_mut().insert(axum::extract::ConnectInfo(a));
                }
                let routed = tower::ServiceExt::oneshot(app.router.clone(), req);
                futures::future::Either::Right(routed.map(|r| match r {
                    Ok(r) => r,
                    Err(never) => match never {},
                }))
            }
        };
        answer.map(Ok)
    })
}

/// Runs one HTTP/1.1 connection to its end, following the server's phase: when it drains,
/// the connection finishes the request in flight and closes; when it closes, the connection
/// is dropped.
async fn drive<I, S, B>(
    connection: hyper::server::conn::http1::Connection<I, S>,
    mut phase: tokio::sync::watch::Receiver<Phase>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut connection = std::pin::pin!(connection);
    let mut draining = false;
    loop {
        let now = *phase.borrow_and_update();
        if now == Phase::Closing {
            return;
        }
        if now == Phase::Draining && !draining {
            draining = true;
            connection.as_mut().graceful_shutdown();
        }
        tokio::select! {
            _ = connection.as_mut() => return,
            changed = phase.changed() => {
                if changed.is_err() {
                    // The server is gone without a word (it always says closing first).
                    return;
                }
            }
        }
    }
}

/// The acceptor-side cap on concurrent connections (see the [module docs](self)).
#[derive(Clone)]
struct ConnectionLimit {
    permits: Arc<Semaphore>,
    max: usize,
    /// Whether the cap was already reported, so a flood logs one warning, not thousands.
    warned: Arc<AtomicBool>,
}

impl ConnectionLimit {
    fn new(max: usize) -> Self {
        Self { permits: Arc::new(Semaphore::new(max)), max, warned: Arc::default() }
    }

    /// A connection's permit, or `None` (logged once) when `[server] max_connections` are open.
    fn take(&self) -> Option<ConnectionPermit> {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    max = self.max,
                    "[server] max_connections reached: closing new connections until some end (logged once)"
                );
            }
            return None;
        };
        Some(ConnectionPermit { _held: permit })
    }
}

/// A connection's share of `[server] max_connections`, released when the connection ends.
struct ConnectionPermit {
    _held: OwnedSemaphorePermit,
}

#[cfg(unix)]
async fn serve_unix(
    path: PathBuf,
    app: Served,
    limits: &ServerConfig,
    shutdown: futures::future::Shared<impl Future<Output = ()> + Send + 'static>,
) -> io::Result<tokio::task::JoinHandle<io::Result<()>>> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    // A socket file left by a previous run would make bind fail; anything else is not ours.
    if let Ok(meta) = std::fs::symlink_metadata(&path) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(&path)?;
        } else {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "[server] unix_socket {} exists and is not a socket; remove it or choose another path",
                    path.display()
                ),
            ));
        }
    }
    // Only the owner may connect (requests still need a key). The socket is bound under a
    // temporary name, restricted, and only then renamed into place, so it never appears at
    // `path` with the umask's wider mode, not even for a moment. (Setting the umask instead
    // would change it for every thread of the process.)
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let staging = path.with_file_name(format!(".{name}.{}.tmp", hex::encode(tokenkeeper_core::random_bytes::<6>())));
    let listener = std::os::unix::net::UnixListener::bind(&staging)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on the Unix socket {}: {e}", path.display())))?;
    let placed = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&staging, &path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&staging);
        return Err(io::Error::new(e.kind(), format!("cannot set up the Unix socket {}: {e}", path.display())));
    }
    listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    tracing::info!(socket = %path.display(), "HTTP API listening on a Unix socket");
    let limits = limits.clone();
    Ok(tokio::spawn(async move {
        let result = serve_listener(Listener::Unix(listener), app, None, &limits, shutdown).await;
        let _ = std::fs::remove_file(&path);
        result
    }))
}

#[cfg(not(unix))]
async fn serve_unix(
    path: PathBuf,
    _app: Served,
    _limits: &ServerConfig,
    _shutdown: futures::future::Shared<impl Future<Output = ()> + Send + 'static>,
) -> io::Result<tokio::task::JoinHandle<io::Result<()>>> {
    Err(io::Error::new(io::ErrorKind::Unsupported, format!("Unix sockets are not available here ({})", path.display())))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_tcp_connections_have_nagle_off() {
        let listener = Listener::Tcp(TcpListener::bind("127.0.0.1:0").await.unwrap());
        let Listener::Tcp(l) = &listener else { unreachable!() };
        let addr = l.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(!client.nodelay().unwrap(), "a new socket starts with Nagle on");
        let Accepted::Tcp(stream, from) = listener.accept().await.unwrap() else { unreachable!() };
        assert!(stream.nodelay().unwrap());
        assert_eq!(from, client.local_addr().unwrap());
    }

    #[test]
    fn connection_limit_hands_out_max_permits_and_takes_them_back() {
        let limit = ConnectionLimit::new(2);
        let (a, b) = (limit.take().unwrap(), limit.take().unwrap());
        assert!(limit.take().is_none(), "a third connection past max_connections = 2");
        drop(a);
        assert!(limit.take().is_some(), "a closed connection frees its permit");
        drop(b);
    }

    #[test]
    fn only_non_loopback_plain_http_is_flagged() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(exposes_plaintext(at("0.0.0.0:8377"), false));
        assert!(exposes_plaintext(at("192.0.2.7:8377"), false));
        assert!(exposes_plaintext(at("[::]:8377"), false));
        assert!(!exposes_plaintext(at("0.0.0.0:8377"), true));
        assert!(!exposes_plaintext(at("127.0.0.1:8377"), false));
        assert!(!exposes_plaintext(at("[::1]:8377"), false));
    }
}
