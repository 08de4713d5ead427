//! Serving the router: plain HTTP or TLS (rustls) on a TCP listener, and optionally a Unix
//! socket beside it, all stopped by one shutdown future and drained before [`serve`] returns.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

use crate::error::ServerError;
use crate::state::AppState;

/// How long in-flight requests get to finish after shutdown under TLS (plain HTTP waits for
/// them all).
const TLS_DRAIN: Duration = Duration::from_secs(30);

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
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Whether serving on `addr` sends keys and tokens over a network in clear text.
pub fn exposes_plaintext(addr: SocketAddr, tls: bool) -> bool {
    !tls && !addr.ip().is_loopback()
}

fn tls_files(state: &AppState) -> Result<Option<(PathBuf, PathBuf)>, ServerError> {
    let server = &state.keeper.config().server;
    match (&server.tls_cert, &server.tls_key) {
        (Some(c), Some(k)) => Ok(Some((c.clone(), k.clone()))),
        (None, None) => Ok(None),
        _ => Err(ServerError::TlsHalfConfigured),
    }
}

/// Serves `state`'s router on `listener` (TLS when `[server] tls_cert`/`tls_key` are set) and
/// on `[server] unix_socket` when set, until `shutdown` resolves; then stops accepting, lets
/// requests in flight finish, and returns.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let addr = listener.local_addr()?;
    let tls = match tls_files(&state)? {
        Some((cert, key)) => Some(tls_config(&cert, &key)?),
        None => None,
    };
    if exposes_plaintext(addr, tls.is_some()) {
        tracing::warn!(%addr, "the HTTP API listens on a non-loopback address WITHOUT TLS: keys and tokens cross the network in clear text. Set [server] tls_cert and tls_key, or put a TLS proxy in front");
    }
    let secure = tls.is_some();
    let app = crate::router_with(state.clone(), secure);
    let shutdown = shutdown.shared();

    let unix = match state.keeper.config().server.unix_socket.clone() {
        Some(path) => Some(serve_unix(path, app.clone(), shutdown.clone()).await?),
        None => None,
    };

    tracing::info!(%addr, tls = secure, "HTTP API listening");
    let tcp = async {
        match tls {
            Some(config) => {
                let handle = axum_server::Handle::new();
                let stopper = handle.clone();
                let stop = shutdown.clone();
                let watcher = tokio::spawn(async move {
                    stop.await;
                    stopper.graceful_shutdown(Some(TLS_DRAIN));
                });
                let std_listener = listener.into_std()?;
                let config = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config));
                let result = axum_server::from_tcp_rustls(std_listener, config)?
                    .handle(handle)
                    .serve(app.into_make_service_with_connect_info::<SocketAddr>())
                    .await;
                watcher.abort();
                result
            }
            None => {
                axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                    .with_graceful_shutdown(shutdown.clone())
                    .await
            }
        }
    };
    let tcp_result = tcp.await;
    if let Some(u) = unix {
        if tcp_result.is_err() {
            // The TCP side failed before shutdown: don't wait for a shutdown that may never
            // come; stop the socket too so the caller sees the failure now.
            u.abort();
            if let Some(path) = &state.keeper.config().server.unix_socket {
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

#[cfg(unix)]
async fn serve_unix(
    path: PathBuf,
    app: axum::Router,
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
    let listener = tokio::net::UnixListener::bind(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on the Unix socket {}: {e}", path.display())))?;
    // Only the owner may connect; requests still need a key.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    tracing::info!(socket = %path.display(), "HTTP API listening on a Unix socket");
    Ok(tokio::spawn(async move {
        let result = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
        let _ = std::fs::remove_file(&path);
        result
    }))
}

#[cfg(not(unix))]
async fn serve_unix(
    path: PathBuf,
    _app: axum::Router,
    _shutdown: futures::future::Shared<impl Future<Output = ()> + Send + 'static>,
) -> io::Result<tokio::task::JoinHandle<io::Result<()>>> {
    Err(io::Error::new(io::ErrorKind::Unsupported, format!("Unix sockets are not available here ({})", path.display())))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

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
