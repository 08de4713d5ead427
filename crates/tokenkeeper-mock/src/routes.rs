//! HTTP side of the mock: the token endpoint, the authorize and callback pages, the Messages API
//! and the usage endpoint.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::authorize;
use crate::state::{random_string, OAuthError, Target, TokenRequest};
use crate::{Fault, MessagesRequestSummary, Shared};

/// The beta flag without which the Messages API refuses OAuth tokens.
const OAUTH_BETA: &str = "oauth-2025-04-20";

/// Utilisation figures the mock reports while not rate limited.
const UTILIZATION_5H: f64 = 0.12;
const UTILIZATION_7D: f64 = 0.34;

const CLOUDFLARE_502: &str =
    "<!DOCTYPE html>\n<html><head><title>platform.claude.com | 502: Bad gateway</title></head>\
<body><div id=\"cf-error-details\"><h1>Bad gateway</h1><span>Error code 502</span>\
<p>Cloudflare Ray ID: 8f0000mock0000</p></div></body></html>\n";

const HTML_200: &str = "<!DOCTYPE html>\n<html><head><title>Just a moment...</title></head>\
<body><noscript>Enable JavaScript and cookies to continue</noscript></body></html>\n";

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/oauth/token", post(token))
        .route("/oauth/authorize", get(authorize_page))
        .route("/oauth/authorize/approve", get(approve))
        .route("/oauth/code/callback", get(callback))
        .route("/v1/messages", post(messages))
        .route("/api/oauth/usage", get(usage))
        .with_state(shared)
}

fn oauth_error(err: &OAuthError) -> Response {
    let status = StatusCode::from_u16(err.status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, Json(err.body())).into_response()
}

fn token_fault(fault: &Fault) -> Option<Response> {
    let response = match fault {
        Fault::ServerError => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "server_error", "error_description": "Internal server error"})),
        )
            .into_response(),
        Fault::BadGateway => (StatusCode::BAD_GATEWAY, Html(CLOUDFLARE_502)).into_response(),
        Fault::RateLimited { retry_after_secs } => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, retry_after_secs.to_string())],
            Json(json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limited. Please try again later."}})),
        )
            .into_response(),
        Fault::Html => (StatusCode::OK, Html(HTML_200)).into_response(),
        Fault::InvalidGrant => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant", "error_description": "Refresh token not found or invalid"})),
        )
            .into_response(),
        Fault::Slow(_) | Fault::OmitRefreshToken | Fault::Messages401 | Fault::Messages429 { .. } => return None,
    };
    Some(response)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/json"))
}

async fn token(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let fault = {
        let mut st = shared.lock();
        st.counts.token_requests += 1;
        st.take_fault(Target::Token)
    };
    let mut omit_refresh = false;
    match &fault {
        Some(Fault::Slow(delay)) => tokio::time::sleep(*delay).await,
        Some(Fault::OmitRefreshToken) => omit_refresh = true,
        Some(other) => {
            if let Some(response) = token_fault(other) {
                return response;
            }
        }
        None => {}
    }
    if !is_json(&headers) {
        return oauth_error(&OAuthError {
            status: 400,
            error: "invalid_request",
            description: "token requests must have Content-Type: application/json".into(),
        });
    }
    let req: TokenRequest = match serde_json::from_slice(&body) {
        Ok(req) => req,
        Err(e) => {
            return oauth_error(&OAuthError {
                status: 400,
                error: "invalid_request",
                description: format!("body is not a JSON token request: {e}"),
            })
        }
    };
    let result = shared.lock().handle_token(req, omit_refresh);
    match result {
        Ok(body) => (StatusCode::OK, Json(body)).into_response(),
        Err(err) => oauth_error(&err),
    }
}

/// Escapes text for HTML element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><meta name=\"viewport\" \
         content=\"width=device-width\"><title>{}</title></head><body>{body}</body></html>\n",
        esc(title)
    )
}

async fn authorize_page(State(shared): State<Arc<Shared>>, Query(query): Query<HashMap<String, String>>) -> Response {
    if let Err(problem) = authorize::check_query(&query, &shared.redirect_uri()) {
        let body = format!("<h1>Invalid authorize request</h1><p id=\"error\">{}</p>", esc(&problem));
        return (StatusCode::BAD_REQUEST, Html(page("Invalid authorize request", &body))).into_response();
    }
    let mut hidden = String::new();
    let mut keys: Vec<&String> = query.keys().collect();
    keys.sort();
    for k in keys {
        let v = query.get(k).map(String::as_str).unwrap_or_default();
        hidden.push_str(&format!("<input type=\"hidden\" name=\"{}\" value=\"{}\">", esc(k), esc(v)));
    }
    let body = format!(
        "<h1>Mock provider</h1><p>Authorize tokenkeeper to use your account?</p>\
         <form method=\"get\" action=\"/oauth/authorize/approve\">{hidden}\
         <label>Email <input id=\"email\" name=\"email\" value=\"browser@example.com\"></label>\
         <button id=\"approve\" type=\"submit\">Authorize</button></form>"
    );
    Html(page("Authorize", &body)).into_response()
}

async fn approve(State(shared): State<Arc<Shared>>, Query(mut query): Query<HashMap<String, String>>) -> Response {
    let email = query.remove("email").filter(|e| !e.is_empty()).unwrap_or_else(|| "browser@example.com".into());
    let req = match authorize::check_query(&query, &shared.redirect_uri()) {
        Ok(req) => req,
        Err(problem) => return (StatusCode::BAD_REQUEST, problem).into_response(),
    };
    let code = shared.lock().register_code(&email, &req.state, &req.redirect_uri, &req.challenge, req.scopes);
    let target = match url::Url::parse_with_params(&req.redirect_uri, [("code", code.as_str()), ("state", &req.state)])
    {
        Ok(url) => url,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    Redirect::to(target.as_str()).into_response()
}

async fn callback(Query(query): Query<HashMap<String, String>>) -> Response {
    let (Some(code), Some(state)) = (query.get("code"), query.get("state")) else {
        return (StatusCode::BAD_REQUEST, Html(page("Error", "<p id=\"error\">missing code or state</p>")))
            .into_response();
    };
    let body = format!(
        "<h1>Authentication code</h1><p>Paste this into tokenkeeper:</p><code id=\"code\">{}#{}</code>",
        esc(code),
        esc(state)
    );
    Html(page("Authentication code", &body)).into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn api_error(status: StatusCode, kind: &str, message: &str) -> Response {
    (status, Json(json!({"type": "error", "error": {"type": kind, "message": message}}))).into_response()
}

fn expired_401() -> Response {
    api_error(StatusCode::UNAUTHORIZED, "authentication_error", "OAuth token has expired.")
}

/// Rate-limit headers of an allowed answer.
fn allowed_headers(headers: &mut HeaderMap, now_s: i64) {
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    put("anthropic-ratelimit-unified-status", "allowed".into());
    put("anthropic-ratelimit-unified-5h-status", "allowed".into());
    put("anthropic-ratelimit-unified-5h-utilization", UTILIZATION_5H.to_string());
    put("anthropic-ratelimit-unified-5h-reset", (now_s + 5 * 3600).to_string());
    put("anthropic-ratelimit-unified-7d-status", "allowed".into());
    put("anthropic-ratelimit-unified-7d-utilization", UTILIZATION_7D.to_string());
    put("anthropic-ratelimit-unified-7d-reset", (now_s + 7 * 86_400).to_string());
    put("request-id", format!("req_mock{}", random_string(16)));
}

async fn messages(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (fault, valid, now_s) = {
        let mut st = shared.lock();
        let fault = st.take_fault(Target::Messages);
        let email = bearer(&headers).and_then(|t| st.access_email(t));
        let header = |name: &str| {
            let values: Vec<&str> = headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
            (!values.is_empty()).then(|| values.join(","))
        };
        st.last_messages_request = Some(MessagesRequestSummary {
            email: email.clone(),
            anthropic_version: header("anthropic-version"),
            anthropic_beta: header("anthropic-beta"),
            user_agent: header("user-agent"),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        });
        (fault, email.is_some(), st.now().timestamp())
    };
    let count = |f: fn(&mut crate::Counts)| f(&mut shared.lock().counts);
    match fault {
        Some(Fault::Messages401) => {
            count(|c| c.messages_401 += 1);
            return expired_401();
        }
        Some(Fault::Messages429 { reset_secs }) => {
            count(|c| c.messages_429 += 1);
            let reset = now_s + i64::try_from(reset_secs).unwrap_or(i64::MAX / 2);
            let mut response = api_error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "This request would exceed your account's rate limit. Please try again later.",
            );
            let h = response.headers_mut();
            for (name, value) in [
                ("anthropic-ratelimit-unified-status", "rejected".to_owned()),
                ("anthropic-ratelimit-unified-reset", reset.to_string()),
                ("anthropic-ratelimit-unified-5h-utilization", "1.0".to_owned()),
                ("retry-after", reset_secs.to_string()),
            ] {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    h.insert(name, v);
                }
            }
            return response;
        }
        _ => {}
    }
    if !valid {
        count(|c| c.messages_401 += 1);
        return expired_401();
    }
    if headers.get("anthropic-version").is_none() {
        return api_error(StatusCode::BAD_REQUEST, "invalid_request_error", "anthropic-version: header is required");
    }
    let beta_ok = headers
        .get_all("anthropic-beta")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|flag| flag.trim() == OAUTH_BETA);
    if !beta_ok {
        return api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "OAuth authentication requires the anthropic-beta flag oauth-2025-04-20",
        );
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, "invalid_request_error", &format!("body: {e}")),
    };
    count(|c| c.messages_ok += 1);
    let model = request.get("model").and_then(Value::as_str).unwrap_or("claude-mock").to_owned();
    let stream = request.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let mut response = if stream { sse_response(&model) } else { Json(message_json(&model)).into_response() };
    allowed_headers(response.headers_mut(), now_s);
    response
}

/// The words the mock answers with; the stream sends one delta per word.
const REPLY: [&str; 4] = ["Hello", " from", " the", " mock."];

fn message_json(model: &str) -> Value {
    json!({
        "id": format!("msg_mock{}", random_string(16)),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": REPLY.concat()}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {"input_tokens": 8, "output_tokens": REPLY.len()},
    })
}

fn sse_response(model: &str) -> Response {
    let id = format!("msg_mock{}", random_string(16));
    let mut events: Vec<(&str, Value)> = vec![
        (
            "message_start",
            json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 8, "output_tokens": 1}}}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
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
    let stream = futures::stream::iter(
        events.into_iter().map(|(name, data)| Ok::<_, Infallible>(Event::default().event(name).data(data.to_string()))),
    );
    Sse::new(stream).into_response()
}

async fn usage(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let (valid, now) = {
        let mut st = shared.lock();
        st.counts.usage_requests += 1;
        (bearer(&headers).and_then(|t| st.access_email(t)).is_some(), st.now())
    };
    if !valid {
        return expired_401();
    }
    let fmt = |d: chrono::Duration| (now + d).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    Json(json!({
        "five_hour": {"utilization": UTILIZATION_5H * 100.0, "resets_at": fmt(chrono::Duration::hours(5))},
        "seven_day": {"utilization": UTILIZATION_7D * 100.0, "resets_at": fmt(chrono::Duration::days(7))},
        "seven_day_opus": null,
    }))
    .into_response()
}
