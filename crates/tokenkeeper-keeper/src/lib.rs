//! The refresh engine of tokenkeeper.
//!
//! - [`keeper::Keeper`]: the one refresh path (locks, re-read, adopt, refresh, durable commit,
//!   publish) and ingest under the never-regress rule;
//! - [`lease`]: the one hand-out path, served from memory, and the usage meter;
//! - [`locks`]: in-process single-flight, the order of the cross-process lock (a seam of the
//!   backend) and Claude Code's lock directories;
//! - [`schedule::Scheduler`]: next-deadline scheduling with jitter and backoff;
//! - the long-running loop that ties them to watchers, sinks and alerts is the
//!   `tokenkeeper-daemon` crate;
//! - `testing` (feature `testing`): a keeper over a temporary store and the mock provider, for
//!   tests here and in the crates built on the keeper.

pub mod bound;
pub mod error;
pub mod keeper;
pub mod lease;
pub mod locks;
pub mod logins;
pub mod schedule;
#[cfg(feature = "testing")]
pub mod testing;
pub mod view;

pub use error::KeeperError;
pub use keeper::{Ingest, IngestOutcome, Keeper, KeeperEvent, RefreshPolicy, RefreshResult, StartedLogin};
pub use lease::{Lease, LeaseRequest, UsageMeter};
