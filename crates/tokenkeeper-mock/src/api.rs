//! The mock's Anthropic API: `/v1/messages` (JSON and SSE), `/v1/messages/count_tokens`,
//! `/v1/models`, and a 404 for other `/v1/*` paths. Every request is recorded whole; faults
//! (global or per account) shape the answer.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::routes::{api_error, bearer, expired_401, OAUTH_BETA, UTILIZATION_5H, UTILIZATION_7D};
use crate::state::random_string;
use crate::{Credential, Fault, MessagesRequestSummary, RecordedRequest, Shared};

/// The words the mock answers with; the stream sends one delta per word.
const REPLY: [&str; 4] = ["Hello", " from", " the", " mock."];

/// Input tokens the mock reports for every request.
pub(crate) const INPUT_TOKENS: u64 = 8;

/// Who a request's credential belongs to (the account key faults and utilisation use).
fn identify(shared: &Shared, headers: &HeaderMap) -> Credential {
    let st = shared.lock();
    if let Some(token) = bearer(headers) {
        return st.access_email(token).map_or(Credential::Unknown, Credential::OAuth);
    }
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return st.api_keys.get(key.trim()).cloned().map_or(Credential::Unknown, Credential::ApiKey);
    }
    Credential::None
}

fn who(c: &Credential) -> Option<&str> {
    match c {
        Credential::OAuth(e) | Credential::ApiKey(e) => Some(e),
        _ => None,
    }
}

/// Records the request; returns whose credential it carried, the fault to apply and the
/// mock's now (unix seconds).
fn record(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> (Credential, Option<Fault>, i64) {
    let credential = identify(shared, headers);
    let mut st = shared.lock();
    st.recorded.push(RecordedRequest {
        method: method.to_string(),
        path: uri.path_and_query().map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned()),
        headers: headers.iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect(),
        body: body.to_vec(),
        credential: credential.clone(),
    });
    let fault = st.take_api_fault(who(&credential));
    (credential, fault, st.now().timestamp())
}

/// Rate-limit headers of an allowed answer, with the account's utilisation.
fn allowed_headers(shared: &Shared, headers: &mut HeaderMap, who: Option<&str>, now_s: i64) {
    let (u5, u7) =
        who.and_then(|w| shared.lock().utilization.get(w).copied()).unwrap_or((UTILIZATION_5H, UTILIZATION_7D));
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    put("anthropic-ratelimit-unified-status", "allowed".into());
    put("anthropic-ratelimit-unified-5h-status", "allowed".into());
    put("anthropic-ratelimit-unified-5h-utilization", u5.to_string());
    put("anthropic-ratelimit-unified-5h-reset", (now_s + 5 * 3600).to_string());
    put("anthropic-ratelimit-unified-7d-status", "allowed".into());
    put("anthropic-ratelimit-unified-7d-utilization", u7.to_string());
    put("anthropic-ratelimit-unified-7d-reset", (now_s + 7 * 86_400).to_string());
    put("request-id", format!("req_mock{}", random_string(16)));
}

/// The answer of a fault that replaces the whole response, if `fault` is one.
fn fault_response(shared: &Shared, fault: &Fault, now_s: i64) -> Option<Response> {
    let count = |f: fn(&mut crate::Counts)| f(&mut shared.lock().counts);
    match fault {
        Fault::Messages401 => {
            count(|c| c.messages_401 += 1);
            Some(expired_401())
        }
        Fault::Messages429 { reset_secs } => {
            count(|c| c.messages_429 += 1);
            let reset = now_s + i64::try_from(*reset_secs).unwrap_or(i64::MAX / 2);
            let mut response = rate_limited();
            let h = response.headers_mut();
            for (name, value) in [
                ("anthropic-ratelimit-unified-status", "rejected".to_owned()),
                ("anthropic-ratelimit-unified-reset", reset.to_string()),
                ("anthropic-ratelimit-unified-5h-status", "rejected".to_owned()),
                ("anthropic-ratelimit-unified-5h-reset", reset.to_string()),
                ("anthropic-ratelimit-unified-5h-utilization", "1.0".to_owned()),
                ("retry-after", reset_secs.to_string()),
            ] {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    h.insert(name, v);
                }
            }
            Some(response)
        }
        Fault::Messages429Bare => {
            count(|c| c.messages_429 += 1);
            Some(rate_limited())
        }
        Fault::Messages529 => {
            count(|c| c.messages_529 += 1);
            Some(api_error(
                StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                "overloaded_error",
                "Overloaded",
            ))
        }
        Fault::Messages500 => {
            count(|c| c.messages_500 += 1);
            Some(api_error(StatusCode::INTERNAL_SERVER_ERROR, "api_error", "Internal server error"))
        }
        _ => None,
    }
}

fn rate_limited() -> Response {
    api_error(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_error",
        "This request would exceed your account's rate limit. Please try again later.",
    )
}

/// Checks the credential and headers every API call needs; `Err` is the refusal.
#[allow(clippy::result_large_err)] // test double: a refusal is the answer itself, built once per request
fn authorise(credential: &Credential, headers: &HeaderMap) -> Result<(), Response> {
    match credential {
        Credential::OAuth(_) => {
            let beta_ok = headers
                .get_all("anthropic-beta")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|flag| flag.trim() == OAUTH_BETA);
            if !beta_ok {
                return Err(api_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "OAuth authentication requires the anthropic-beta flag oauth-2025-04-20",
                ));
            }
        }
        Credential::ApiKey(_) => {}
        Credential::Unknown | Credential::None => return Err(expired_401()),
    }
    if headers.get("anthropic-version").is_none() {
        return Err(api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "anthropic-version: header is required",
        ));
    }
    Ok(())
}

pub(crate) async fn messages(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (credential, fault, now_s) = record(&shared, &method, &uri, &headers, &body);
    {
        let header = |name: &str| {
            let values: Vec<&str> = headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
            (!values.is_empty()).then(|| values.join(","))
        };
        shared.lock().last_messages_request = Some(MessagesRequestSummary {
            email: match &credential {
                Credential::OAuth(e) => Some(e.clone()),
                _ => None,
            },
            anthropic_version: header("anthropic-version"),
            anthropic_beta: header("anthropic-beta"),
            user_agent: header("user-agent"),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        });
    }
    if let Some(response) = fault.as_ref().and_then(|f| fault_response(&shared, f, now_s)) {
        return response;
    }
    if let Err(refusal) = authorise(&credential, &headers) {
        if refusal.status() == StatusCode::UNAUTHORIZED {
            shared.lock().counts.messages_401 += 1;
        }
        return refusal;
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, "invalid_request_error", &format!("body: {e}")),
    };
    shared.lock().counts.messages_ok += 1;
    let model = request.get("model").and_then(Value::as_str).unwrap_or("claude-mock").to_owned();
    let stream = request.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let mut response =
        if stream { sse_response(shared.clone(), &model, fault) } else { Json(message_json(&model)).into_response() };
    allowed_headers(&shared, response.headers_mut(), who(&credential), now_s);
    response
}

pub(crate) async fn count_tokens(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (credential, fault, now_s) = record(&shared, &method, &uri, &headers, &body);
    if let Some(response) = fault.as_ref().and_then(|f| fault_response(&shared, f, now_s)) {
        return response;
    }
    if let Err(refusal) = authorise(&credential, &headers) {
        return refusal;
    }
    Json(json!({"input_tokens": INPUT_TOKENS})).into_response()
}

pub(crate) async fn models(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let (credential, _, _) = record(&shared, &method, &uri, &headers, &Bytes::new());
    if let Err(refusal) = authorise(&credential, &headers) {
        return refusal;
    }
    let model = |id: &str, name: &str| json!({"type": "model", "id": id, "display_name": name, "created_at": "2025-05-14T00:00:00Z"});
    Json(json!({
        "data": [model("claude-sonnet-4-5", "Claude Sonnet 4.5"), model("claude-opus-4-1", "Claude Opus 4.1"),
                 model("claude-haiku-4-5", "Claude Haiku 4.5")],
        "has_more": false, "first_id": "claude-sonnet-4-5", "last_id": "claude-haiku-4-5",
    }))
    .into_response()
}

pub(crate) async fn other(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&shared, &method, &uri, &headers, &body);
    api_error(StatusCode::NOT_FOUND, "not_found_error", &format!("Not found: {}", uri.path()))
}

fn message_json(model: &str) -> Value {
    json!({
        "id": format!("msg_mock{}", random_string(16)),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": REPLY.concat()}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": REPLY.len(),
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": 2},
    })
}

/// The events of one streamed answer, as SSE bytes (`event: …\ndata: …\n\n` each).
fn sse_events(model: &str) -> Vec<Bytes> {
    let id = format!("msg_mock{}", random_string(16));
    let mut events: Vec<(&str, Value)> = vec![
        (
            "message_start",
            json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": 1,
                          "cache_creation_input_tokens": 0, "cache_read_input_tokens": 2}}}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        ("ping", json!({"type": "ping"})),
    ];
    for word in REPLY {
        events.push((
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}}),
        ));
    }
    events.push(("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
    events.push((
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"output_tokens": REPLY.len()}}),
    ));
    events.push(("message_stop", json!({"type": "message_stop"})));
    events.into_iter().map(|(name, data)| Bytes::from(format!("event: {name}\ndata: {data}\n\n"))).collect()
}

/// Counts a stream that ends before its last event because its client went away.
struct StreamGuard {
    shared: Arc<Shared>,
    finished: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if !self.finished {
            let n = {
                let mut st = self.shared.lock();
                st.counts.streams_cancelled += 1;
                st.counts.streams_cancelled
            };
            self.shared.cancelled.send_replace(n);
        }
    }
}

fn sse_response(shared: Arc<Shared>, model: &str, fault: Option<Fault>) -> Response {
    let events = sse_events(model);
    let (cut_after, delay) = match fault {
        Some(Fault::StreamCut { after_events }) => (Some(after_events), None),
        Some(Fault::SlowStream { delay }) => (None, Some(delay)),
        _ => (None, None),
    };
    struct St {
        events: std::vec::IntoIter<Bytes>,
        sent: usize,
        cut_after: Option<usize>,
        delay: Option<Duration>,
        guard: StreamGuard,
    }
    let state =
        St { events: events.into_iter(), sent: 0, cut_after, delay, guard: StreamGuard { shared, finished: false } };
    let stream = futures::stream::unfold(state, |mut st| async move {
        if st.cut_after.is_some_and(|n| st.sent >= n) {
            if !st.guard.finished {
                st.guard.finished = true;
                st.guard.shared.lock().counts.streams_cut += 1;
                // Let the events sent so far leave first (hyper drops what is still buffered
                // when a body fails), so the client sees a stream that starts and then breaks.
                if st.sent > 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                return Some((Err(std::io::Error::other("stream cut by the mock")), st));
            }
            return None;
        }
        if let Some(d) = st.delay.filter(|_| st.sent > 0) {
            tokio::time::sleep(d).await;
        }
        match st.events.next() {
            Some(bytes) => {
                st.sent += 1;
                Some((Ok(bytes), st))
            }
            None => {
                if !st.guard.finished {
                    st.guard.finished = true;
                    st.guard.shared.lock().counts.streams_completed += 1;
                }
                None
            }
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
