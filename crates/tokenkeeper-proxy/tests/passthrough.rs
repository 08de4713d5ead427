//! Byte-for-byte pass-through against a fixed upstream whose answers have unusual framing
//! (CRLF line ends, comments, `data:` without a space, events split across chunks), so any
//! parse-and-reserialize would show.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use futures::StreamExt;

const SSE: &[&[u8]] = &[
    b": a comment line first\r\n",
    b"event: message_start\r\ndata:{\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":11,\"output_tokens\":1}}}\r\n\r\n",
    b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"h\xc3\xa9llo \\\"usage\\\":{}\"}}\n",
    b"\n",
    b"event: message_delta\ndata: {\"type\":\"message_delta\",\"us",
    b"age\":{\"output_tokens\":7}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
];

type Seen = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

async fn fixed_upstream() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/v1/messages",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let s = s.clone();
            async move {
                s.lock().unwrap().push((headers, body));
                let chunks = futures::stream::iter(SSE.iter().map(|c| Ok::<_, std::io::Error>(Bytes::from_static(c))));
                Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "text/event-stream")
                    .header("x-upstream-odd", "Value  With  Spaces")
                    .header("set-cookie", "a=1")
                    .header("set-cookie", "b=2")
                    .body(Body::from_stream(chunks))
                    .unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

#[tokio::test]
async fn sse_headers_and_bodies_pass_byte_for_byte() {
    let (upstream, seen) = fixed_upstream().await;
    let p = support::start(&["a"], |c| c.proxy.upstream = Some(upstream)).await;
    p.env.keeper.usage().take();
    let body: &[u8] = b"{\"model\":\"claude-opus-4-1\",\"stream\":true,   \"messages\":[{\"role\":\"user\",\"content\":\"\\u00e9\"}]}";
    let r = reqwest::Client::new()
        .post(p.url("/v1/messages"))
        .header("x-api-key", &p.key)
        .header("anthropic-version", "2023-06-01")
        .header("x-custom", "one")
        .header("x-custom", "two")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "dropped")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-upstream-odd"], "Value  With  Spaces");
    let cookies: Vec<_> = r.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    let mut got = Vec::new();
    let mut stream = r.bytes_stream();
    while let Some(c) = stream.next().await {
        got.extend_from_slice(&c.unwrap());
    }
    assert_eq!(got, SSE.concat(), "the stream arrives exactly as upstream sent it");

    let (headers, forwarded) = seen.lock().unwrap().pop().unwrap();
    assert_eq!(forwarded, body, "the body arrives exactly as the client sent it");
    let custom: Vec<_> = headers.get_all("x-custom").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(custom, ["one", "two"]);
    assert!(headers.get("x-hop").is_none() && headers.get("connection").is_none_or(|v| v != "keep-alive, x-hop"));
    assert!(headers.get("x-api-key").is_none());
    assert!(headers["authorization"].to_str().unwrap().starts_with("Bearer sk-ant-oat01-"));
    assert!(!format!("{headers:?}").contains(&p.key));

    let records = p.env.keeper.usage().take();
    let out: u64 = records.iter().map(|r| r.output_tokens).sum();
    let inp: u64 = records.iter().map(|r| r.input_tokens).sum();
    assert_eq!((inp, out), (11, 7), "usage read across the split chunk, text ignored");
}
