//! Failures of the page itself (not of what the user asked for: those are shown as messages in
//! words). The person sees a short sentence; the full chain goes to the log.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// What went wrong serving a page.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// An embedded template failed to render.
    #[error("rendering page template `{template}` failed")]
    Template {
        /// Which template.
        template: &'static str,
        /// Why.
        #[source]
        source: minijinja::Error,
    },
    /// The store failed while listing or reading accounts.
    #[error("reading accounts from the store for {action} failed")]
    Store {
        /// Which page or action.
        action: &'static str,
        /// Why.
        #[source]
        source: tokenkeeper_core::StoreError,
    },
    /// The store failed while reading the browser's session.
    #[error("reading the web session from the store failed")]
    Sessions {
        /// Why.
        #[source]
        source: tokenkeeper_core::StoreError,
    },
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        tracing::error!(error = %self, source = ?std::error::Error::source(&self).map(ToString::to_string), "web page failed");
        let text = match self {
            WebError::Template { .. } => {
                "The page could not be shown because of an internal error; the server log has the details."
            }
            WebError::Store { .. } => "The accounts could not be read from the store; the server log has the details.",
            WebError::Sessions { .. } => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Your session could not be checked because the store is unreachable; try again in a moment. \
                     The server log has the details.",
                )
                    .into_response()
            }
        };
        (StatusCode::INTERNAL_SERVER_ERROR, text).into_response()
    }
}
