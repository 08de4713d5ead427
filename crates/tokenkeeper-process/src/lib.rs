//! The one runner of every child process tokenkeeper starts: `on_change` commands and
//! `command` sinks (`tokenkeeper-sync`), the alert `command` channel (`tokenkeeper-alert`), the
//! follow-mode nudge (`tokenkeeper-keeper`) and `tokenkeeper exec` (the binary).
//!
//! - **Environment** ([`env`](mod@env)): the parent's environment minus tokenkeeper's own secrets, plus
//!   exactly the documented variables of that [`Purpose`]. Every `TOKENKEEPER_*` variable is
//!   withheld except the non-secret ones in [`env::PASSED_TOKENKEEPER_VARS`] (deny by default:
//!   a secret variable added later is withheld without anyone remembering to list it).
//! - **Process group**: each child leads its own, so a timeout or a cancelled run kills what
//!   it started too (a `sh -c` and its grandchildren).
//! - **Timeout** (not for `exec`): the whole group gets `SIGKILL` when it expires.
//! - **Output**: stdout and stderr are captured (at most [`OUTPUT_LIMIT`] bytes each, the rest
//!   drained and dropped) and redacted with [`tokenkeeper_core::redact`]: every secret the
//!   caller registered and anything shaped like a provider token becomes a fingerprint.
//! - **No shell**: argv is run as given; secrets travel in the environment, never in argv.
//! - **`exec`**: [`ChildCommand::exec`] replaces tokenkeeper with the child; when something
//!   must happen after the child ends (a private file to remove),
//!   [`ChildCommand::run_attached`] runs it in the foreground instead, in tokenkeeper's own
//!   process group, passing signals on and returning its exit status.
//!
//! # Why a crate of its own
//!
//! Its users sit side by side in the dependency graph (`docs/ARCHITECTURE.md`):
//! `tokenkeeper-sync` and `tokenkeeper-alert` both depend only on `tokenkeeper-core`, and the
//! keeper and the binary sit above them. `tokenkeeper-core` does no I/O beyond reading files,
//! and making `tokenkeeper-alert` depend on `tokenkeeper-sync` (files, Infisical, watching)
//! for this alone would couple two unrelated halves. So the runner is a small crate on top of
//! core that all four depend on.

pub mod env;
mod run;

pub use env::Purpose;
pub use run::{exit_code_of, ChildCommand, ChildOutput, ProcessError, ATTACHED_SIGNALS, OUTPUT_LIMIT};
