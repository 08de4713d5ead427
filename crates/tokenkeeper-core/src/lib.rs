//! Core of tokenkeeper: the domain (accounts, credentials, secrets), the injected clock,
//! configuration, the [`store::Store`] trait, credential formats and status levels.
//!
//! Nothing here talks to the network or a database; those live in the crates that depend on
//! this one (`tokenkeeper-store`, `tokenkeeper-provider`, `tokenkeeper-keeper`, …).

pub mod account;
pub mod backend;
pub mod clock;
pub mod config;
pub mod credential;
pub mod error_text;
pub mod formats;
pub mod fs;
pub mod paths;
pub mod pool;
pub mod secret;
pub mod status;
pub mod store;

pub use account::{Account, AccountState, Binding, BindingKind, Mode, NewAccount, Usage};
pub use backend::{
    AccountLock, AccountLockGuard, Backend, ChangeFeed, ChangeKind, ChangeSubscription, FeedItem, LeaderGuard,
    Leadership, SeamError, StoreChange,
};
#[cfg(any(test, feature = "testing"))]
pub use clock::ManualClock;
pub use clock::{system_clock as system_clock_handle, Clock, SharedClock, SystemClock};
pub use config::Config;
pub use credential::{Credential, Freshness};
pub use error_text::error_chain;
pub use secret::{constant_time_eq, random_bytes, redact, Secret};
pub use store::{Store, StoreError};
