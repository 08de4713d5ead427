//! Request bodies, read with a size limit so an oversized or endless upload costs nothing and
//! answers 413 in the API's JSON error shape (axum's own limit answers in plain text).

use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_LENGTH;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

/// A request body of at most [`AppState::with_body_limit`] bytes, as UTF-8 text.
#[derive(Debug)]
pub struct LimitedBody(pub String);

impl FromRequest<AppState> for LimitedBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.body_limit;
        let declared =
            req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::TooLarge { limit });
        }
        // A chunked body has no length up front: the limit stops reading past `limit` bytes.
        // The router's `RequestBodyTimeoutLayer` ends a body that stops arriving.
        let bytes = axum::body::to_bytes(req.into_body(), limit).await.map_err(|e| {
            if is_body_timeout(&e) {
                ApiError::SlowBody { after: state.keeper.config().server.body_read_timeout }
            } else {
                ApiError::TooLarge { limit }
            }
        })?;
        let text = String::from_utf8(bytes.to_vec()).map_err(|_| ApiError::BadBody {
            reason: "it is not UTF-8 text".into(),
            hint: "send JSON or text in UTF-8",
        })?;
        Ok(LimitedBody(text))
    }
}

impl LimitedBody {
    /// Parses the body as JSON of type `T`; `hint` says what to send instead.
    pub fn json<T: DeserializeOwned>(&self, hint: &'static str) -> Result<T, ApiError> {
        serde_json::from_str(&self.0).map_err(|e| ApiError::BadBody {
            // serde's message names the field and position, never the value.
            reason: format!("invalid JSON ({})", describe_json_error(&e)),
            hint,
        })
    }
}

/// Whether reading a body failed because `[server] body_read_timeout` passed.
fn is_body_timeout(e: &axum::Error) -> bool {
    tokenkeeper_core::error_text::caused_by::<tower_http::timeout::TimeoutError>(e)
}

fn describe_json_error(e: &serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Data => {
            format!("wrong or missing field at line {} column {}", e.line(), e.column())
        }
        serde_json::error::Category::Eof => "the body ends too early".into(),
        serde_json::error::Category::Syntax => format!("syntax error at line {} column {}", e.line(), e.column()),
        serde_json::error::Category::Io => "unreadable".into(),
    }
}
