//! The floor of an HTTP/1.1 proxy built on this workspace's stack (tokio, hyper): accept,
//! read the request, send it on an upstream connection, stream the answer back, nothing else
//! (no routing, keys, accounts, header rewriting, timeouts or usage). Each client connection
//! gets one upstream connection, driven in the same task, as tokenkeeper's proxy drives its
//! pooled ones. The proxy benchmark runs it beside nginx and tokenkeeper: the gap between it
//! and tokenkeeper is what tokenkeeper's own work per request costs, the gap between it and
//! nginx what the stack costs.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// Serves the floor proxy on `listener`, sending every request to `upstream`, until the
/// task is dropped. A connection whose upstream fails is closed.
pub async fn serve_floor_proxy(listener: TcpListener, upstream: SocketAddr) {
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            let Ok(up) = TcpStream::connect(upstream).await else { return };
            let _ = up.set_nodelay(true);
            let Ok((send, conn)) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(up)).await
            else {
                return;
            };
            // Requests on one client connection come one after another: the lock is never
            // contended; it only lets the service share the sender.
            let send = Arc::new(tokio::sync::Mutex::new(send));
            let service = service_fn(move |req: hyper::Request<Incoming>| {
                let send = send.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body.collect().await?.to_bytes();
                    let mut send = send.lock().await;
                    send.send_request(hyper::Request::from_parts(parts, Full::new(body))).await
                }
            });
            let server = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(client), service);
            // Both halves in one task: the upstream connection is polled beside the client's.
            let _ = tokio::join!(server, conn);
        });
    }
}
