//! HTTP side of the mock: the token endpoint, the authorize and callback pages, the Messages API
//! and the usage endpoint.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::authorize;
use crate::shapes::Shape;
use crate::state::{OAuthError, Target, TokenRequest};
use crate::{Fault, Shared};

/// The beta flag without which the Messages API refuses OAuth tokens.
pub(crate) const OAUTH_BETA: &str = "oauth-2025-04-20";

/// Utilisation figures the mock reports while not rate limited.
pub(crate) const UTILIZATION_5H: f64 = 0.12;
pub(crate) const UTILIZATION_7D: f64 = 0.34;

const CLOUDFLARE_502: &str =
    "<!DOCTYPE html>\n<html><head><title>platform.claude.com | 502: Bad gateway</title></head>\
<body><div id=\"cf-error-details\"><h1>Bad gateway</h1><span>Error code 502</span>\
<p>Cloudflare Ray ID: 8f0000mock0000</p></div></body></html>\n";

const HTML_200: &str = "<!DOCTYPE html>\n<html><head><title>Just a moment...</title></head>\
<body><noscript>Enable JavaScript and cookies to continue</noscript></body></html>\n";

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/oauth/token", post(token))
        .route(Shape::Codex.path(), post(|s, h, b| shaped(Shape::Codex, s, h, b)))
        .route(Shape::Google.path(), post(|s, h, b| shaped(Shape::Google, s, h, b)))
        .route(Shape::Generic.path(), post(|s, h, b| shaped(Shape::Generic, s, h, b)))
        .route("/oauth/authorize", get(authorize_page))
        .route("/oauth/authorize/approve", get(approve))
        .route("/oauth/code/callback", get(callback))
        .route("/v1/messages", post(crate::api::messages))
        .route("/v1/messages/count_tokens", post(crate::api::count_tokens))
        .route("/v1/models", get(crate::api::models))
        .route("/v1/{*rest}", axum::routing::any(crate::api::other))
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
        // Slow and OmitRefreshToken change a normal answer; Messages faults are not the token
        // endpoint's.
        _ => return None,
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

/// The token endpoint of another provider's shape (see [`crate::shapes`]). Token faults apply
/// as at Anthropic's endpoint.
async fn shaped(shape: Shape, State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let fault = {
        let mut st = shared.lock();
        st.shapes.count_request(shape);
        st.take_fault(Target::Token)
    };
    match &fault {
        Some(Fault::Slow(delay)) => tokio::time::sleep(*delay).await,
        Some(other) => {
            if let Some(response) = token_fault(other) {
                return response;
            }
        }
        None => {}
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let result = {
        let mut st = shared.lock();
        let now = st.now();
        st.shapes.handle(shape, content_type, &body, now)
    };
    match result {
        Ok(body) => (StatusCode::OK, Json(body)).into_response(),
        Err(refusal) => {
            let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_REQUEST);
            (status, Json(refusal.body)).into_response()
        }
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

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub(crate) fn api_error(status: StatusCode, kind: &str, message: &str) -> Response {
    (status, Json(json!({"type": "error", "error": {"type": kind, "message": message}}))).into_response()
}

pub(crate) fn expired_401() -> Response {
    api_error(StatusCode::UNAUTHORIZED, "authentication_error", "OAuth token has expired.")
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
