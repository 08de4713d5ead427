//! Delivery of credentials to sinks, and watching of credential files.
//!
//! - [`fs`]: the one atomic (or in-place) file writer of the project, [`write_file`];
//! - [`dotenv`]: byte-preserving `.env` editing;
//! - [`render`]: what each file sink writes (env_file, claude_credentials, openclaw, template);
//! - [`infisical`]: the Infisical sink;
//! - [`runner`]: `on_change` and `command` sinks: no shell, the token in the environment only,
//!   timeout, debounce, bounded retries;
//! - [`sink`]: [`SinkSet`], delivering an account's credential to all its sinks;
//! - [`watch`]: [`FileWatcher`], noticing changes of a bound file however it is written;
//! - [`error`][mod@error]: [`SyncError`];
//! - `testing` (feature `testing`): an account fixture for tests of sinks.
//!
//! # `write = "in_place"`
//!
//! Sinks write atomically by default (temp file, fsync, rename, fsync of the directory): a
//! reader or a crash sees the old file or the new one, never a mix. A file bind-mounted into
//! a container *as a single file* (`docker run -v /srv/bot/.env:/app/.env`) is the exception:
//! the mount pins the inode it was created with, so after a rename the container keeps
//! reading the old file. For such a file set `write = "in_place"`: the same inode is
//! rewritten and fsynced, at the price of a weaker guarantee (a crash or a reader racing the
//! write may see a mix of old and new bytes until the next write repairs it). Better still,
//! mount the directory and keep atomic writes. See [`fs`] for details.
//!
//! The keeper's write-back to a bound Claude Code file goes through the same machinery
//! ([`sink::write_file_sink`] with a `claude_credentials` sink, or [`write_file`]).

pub mod dotenv;
pub mod error;
pub mod fs;
pub mod infisical;
pub mod render;
pub mod runner;
pub mod sink;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod watch;

pub use error::SyncError;
pub use fs::{write_file, WriteOptions, WriteOutcome};
pub use sink::{SinkSet, SinkSetOptions, SinkStatus};
pub use watch::{Changes, FileWatcher};
