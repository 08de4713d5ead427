//! Errors of the provider crate: building the client and probing ([`ProviderError`]), and
//! reading what the user pasted after login ([`LoginError`]). Token-endpoint answers are not
//! errors but [`crate::TokenOutcome`]s.

/// The client could not be built, or the token endpoint could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// A URL in the provider settings cannot be used.
    #[error("provider setting `{key}` = {url:?} is not a usable URL: {message}")]
    InvalidUrl {
        /// Which setting (`token_url`, `authorize_url`, `redirect_uri`).
        key: &'static str,
        /// Its value (URLs of the provider carry no secrets).
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// A required provider setting is empty.
    #[error("[providers.{provider}] `{key}` is not set; set it in the config file")]
    Missing {
        /// The provider's id.
        provider: String,
        /// Which setting (`client_id`).
        key: &'static str,
    },
    /// The client secret cannot be read from where the config says.
    #[error("[providers.{provider}]: the client secret cannot be read")]
    ClientSecret {
        /// The provider's id.
        provider: String,
        /// Why (names the file or variable, never the secret).
        #[source]
        source: tokenkeeper_core::config::ClientSecretError,
    },
    /// The HTTP client could not be built (TLS set-up).
    #[error("cannot build the HTTP client for the token endpoint")]
    Client(#[source] reqwest::Error),
    /// The token endpoint did not answer at all (connection refused, DNS, TLS, timeout).
    #[error("the token endpoint {url} is unreachable")]
    Unreachable {
        /// The token endpoint.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
}

/// What the user pasted after login cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// Nothing was pasted.
    #[error("nothing was pasted: paste the whole string shown after login (it looks like CODE#STATE)")]
    Empty,
    /// The `#STATE` part is missing.
    #[error("paste the whole string shown after login, including the part after #")]
    MissingState,
    /// There is a state but no code before it (or no `code` in a pasted URL).
    #[error("the pasted text has no code: paste the whole string shown after login (CODE#STATE)")]
    MissingCode,
    /// The state belongs to another login attempt.
    #[error("this code belongs to another login attempt; start again with `tokenkeeper login`")]
    StateMismatch,
    /// The provider redirected with an OAuth `error` (the user declined, or the request was
    /// refused); the code is the provider's word.
    #[error("the provider refused the login (`{0}`); start again with `tokenkeeper login`")]
    Denied(String),
    /// A pasted callback URL cannot be parsed.
    #[error("the pasted URL cannot be read ({0}); paste the string shown after login instead (CODE#STATE)")]
    BadUrl(String),
}
