//! The OAuth client tokenkeeper uses to talk to the provider's token endpoint: the refresh
//! grant, the PKCE login (authorize URL, pasted code, code exchange) and a reachability probe.
//!
//! Every answer is classified into a [`TokenOutcome`] the keeper can act on without looking at
//! HTTP details: [`TokenOutcome::Success`], [`TokenOutcome::Rejected`] (the login is dead: a new
//! one is needed), [`TokenOutcome::RateLimited`] (wait as told) and [`TokenOutcome::Transient`]
//! (back off and retry). Reasons carry the HTTP status and the provider's `error` and
//! `error_description`, never a token, a code or a request body.

pub mod anthropic;
mod client;
pub mod codex;
mod error;
pub mod gemini;
mod grant;
pub mod jwt;
mod login;
pub mod oauth2;
mod pkce;
mod provider;
mod registry;
mod shared;

pub use anthropic::{Anthropic, ApiKey};
pub use client::{OAuthClient, TokenOutcome};
pub use error::{LoginError, ProviderError};
pub use grant::TokenGrant;
pub use login::{read_redirect_code, LoginFlow, Loopback};
pub use pkce::{parse_pasted_code, PastedCode, PkceLogin};
pub use provider::{
    ApiAccess, ApiKind, CredentialHeader, NativeCredential, NativeFile, NativeFileError, Provider, Providers,
};
