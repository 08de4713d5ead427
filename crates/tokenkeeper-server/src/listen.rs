//! Serving the router: plain HTTP or TLS (rustls) on a TCP listener, and optionally a Unix
//! socket beside it, all stopped by one shutdown future and drained before [`serve`] returns.
//!
//! Every listener is served by `axum-server`, HTTP/1.1 only (the reason is on `configure`), with
//! the limits of `[server]` set on the HTTP library rather than written here:
//!
//! - `header_read_timeout`: hyper's header read timeout (HTTP/1), which runs whenever a
//!   connection waits for a request head, so it also closes idle connections, new or kept
//!   alive; TLS handshakes get the same time (`axum-server`'s handshake timeout);
//! - `max_header_bytes`: hyper's read buffer (a larger head is answered 431 and the connection
//!   closed);
//! - `body_read_timeout` and `request_timeout`: `tower-http`'s body and request timeouts on the
//!   router ([`crate::router`]);
//! - `max_connections`: a semaphore taken when a connection is accepted (before TLS) and held
//!   by the connection's service until the connection ends; past it, new connections are
//!   closed at once; the same acceptor turns Nagle's algorithm off on TCP connections
//!   (axum-server's default acceptor, which it replaces, did): a proxied stream's events each
//!   go out as they come, not held back until the client acknowledges the previous one.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum_server::accept::Accept;
use axum_server::Address;
use futures::FutureExt;
use hyper_util::rt::TokioTimer;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokenkeeper_core::config::{ServerConfig, MIN_HEADER_BYTES};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::Layer;

use crate::error::ServerError;
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
    let app = crate::router_with(state.clone(), secure);
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

/// Serves `app` on a listener of its own (the proxy's `[proxy] listen`) with `[server]`'s TLS
/// files, connection limit and header timeout, until `shutdown` resolves; then drains like
/// [`serve`] (requests in flight get up to `[server] request_timeout`). Like
/// [`AppState::with_streaming_routes`], only `[server] body_read_timeout` is added (the longest
/// pause while a request body arrives), no whole-request timeout: `app` bounds the rest.
pub async fn serve_routes(
    listener: TcpListener,
    app: axum::Router,
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
    let app = app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(limits.body_read_timeout));
    serve_tcp(listener, app, tls, limits, shutdown).await
}

/// The TCP side of [`serve`] and [`serve_routes`]: `app` on `listener`, TLS when `tls` is
/// set, under `limits`, until `shutdown`, then drained.
async fn serve_tcp(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<rustls::ServerConfig>,
    limits: &ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let handle = axum_server::Handle::new();
    let watcher = tokio::spawn(stop_on(shutdown, handle.clone(), limits.request_timeout));
    let limit = ConnectionLimit::new(limits.max_connections);
    let std_listener = listener.into_std()?;
    let make_service = app.into_make_service_with_connect_info::<SocketAddr>();
    let result = match tls {
        Some(config) => {
            let config = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config));
            let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(config)
                .handshake_timeout(limits.header_read_timeout)
                .acceptor(limit);
            let server = axum_server::from_tcp(std_listener)?.acceptor(acceptor).handle(handle);
            configure(server, limits).serve(make_service).await
        }
        None => {
            let server = axum_server::from_tcp(std_listener)?.acceptor(limit).handle(handle);
            configure(server, limits).serve(make_service).await
        }
    };
    watcher.abort();
    result
}

/// What `serve` logs, once, when it listens on a non-loopback address without TLS.
pub const PLAINTEXT_WARNING: &str = "the HTTP API listens on a non-loopback address WITHOUT TLS: keys and tokens cross the network in clear text. Enable TLS with [server] tls_cert = \"/path/fullchain.pem\" and tls_key = \"/path/privkey.pem\" in the config, put a TLS proxy in front, or listen on 127.0.0.1 only";

/// Applies `[server]`'s limits to the HTTP library.
///
/// HTTP/1.1 only: hyper's HTTP/1 server enforces the header read timeout from the moment a
/// connection waits for a request (so idle connections, new or kept alive, are closed too),
/// while its HTTP/2 server and the protocol detection in front of both have no such timeout:
/// a client could hold a connection open for ever by sending nothing. Nothing served here
/// gains from HTTP/2.
fn configure<A: Address, Acc>(
    server: axum_server::Server<A, Acc>,
    limits: &ServerConfig,
) -> axum_server::Server<A, Acc> {
    let mut server = server.http1_only();
    server
        .http_builder()
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES));
    server
}

/// Begins a graceful shutdown of `handle` when `shutdown` resolves, giving requests in flight
/// up to `drain` to finish.
async fn stop_on<A: Address>(shutdown: impl Future<Output = ()>, handle: axum_server::Handle<A>, drain: Duration) {
    shutdown.await;
    handle.graceful_shutdown(Some(drain));
}

/// The acceptor that caps concurrent connections (see the [module docs](self)).
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
}

/// A connection's share of `[server] max_connections`, released when the connection ends.
#[derive(Clone)]
struct ConnectionPermit {
    _held: Arc<OwnedSemaphorePermit>,
}

/// Connections whose small writes go out at once: TCP with `TCP_NODELAY`; a Unix socket has
/// nothing to set.
trait NoDelay {
    fn no_delay(&self);
}

impl NoDelay for tokio::net::TcpStream {
    fn no_delay(&self) {
        if let Err(e) = self.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on a connection");
        }
    }
}

#[cfg(unix)]
impl NoDelay for tokio::net::UnixStream {
    fn no_delay(&self) {}
}

impl<I: NoDelay, S> Accept<I, S> for ConnectionLimit {
    type Stream = I;
    type Service = <Extension<ConnectionPermit> as Layer<S>>::Service;
    type Future = std::future::Ready<io::Result<(I, Self::Service)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    max = self.max,
                    "[server] max_connections reached: closing new connections until some end (logged once)"
                );
            }
            return std::future::ready(Err(io::Error::other("too many connections")));
        };
        stream.no_delay();
        // The service lives as long as the connection: it holds the permit.
        std::future::ready(Ok((stream, Extension(ConnectionPermit { _held: Arc::new(permit) }).layer(service))))
    }
}

#[cfg(unix)]
async fn serve_unix(
    path: PathBuf,
    app: axum::Router,
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
    tracing::info!(socket = %path.display(), "HTTP API listening on a Unix socket");
    let handle = axum_server::Handle::new();
    let server =
        axum_server::from_unix(listener)?.acceptor(ConnectionLimit::new(limits.max_connections)).handle(handle.clone());
    let server = configure(server, limits);
    let drain = limits.request_timeout;
    Ok(tokio::spawn(async move {
        let watcher = tokio::spawn(stop_on(shutdown, handle, drain));
        let result = server.serve(app.into_make_service()).await;
        watcher.abort();
        let _ = std::fs::remove_file(&path);
        result
    }))
}

#[cfg(not(unix))]
async fn serve_unix(
    path: PathBuf,
    _app: axum::Router,
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
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        assert!(!stream.nodelay().unwrap(), "a new socket starts with Nagle on");
        let (stream, _service) = ConnectionLimit::new(1).accept(stream, ()).await.unwrap();
        assert!(stream.nodelay().unwrap());
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
