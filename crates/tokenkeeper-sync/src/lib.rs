//! Delivery of credentials and watching of credential files.
//!
//! - [`fs`]: the one atomic (or in-place) file writer of the project;
//! - [`dotenv`]: byte-preserving `.env` editing;
//! - [`error`]: [`SyncError`].

pub mod dotenv;
pub mod error;
pub mod fs;

pub use error::SyncError;
pub use fs::{write_file, WriteOptions, WriteOutcome};
