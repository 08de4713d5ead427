//! Delivery of credentials and watching of credential files.
//!
//! - [`fs`]: the one atomic (or in-place) file writer of the project;
//! - [`dotenv`]: byte-preserving `.env` editing;
//! - [`render`]: what each file sink writes;
//! - [`runner`]: `on_change` and `command` sinks: no shell, token in the environment,
//!   timeout, debounce, retries;
//! - [`error`]: [`SyncError`].

pub mod dotenv;
pub mod error;
pub mod fs;
pub mod infisical;
pub mod render;
pub mod runner;
pub mod sink;
pub mod watch;

pub use error::SyncError;
pub use fs::{write_file, WriteOptions, WriteOutcome};
