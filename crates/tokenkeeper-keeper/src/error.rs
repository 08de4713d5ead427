//! Errors of the keeper, classified so callers (CLI exit codes, HTTP status, scheduler
//! backoff) can act on the class.

use std::time::Duration;

use tokenkeeper_core::account::AccountNameError;
use tokenkeeper_core::StoreError;
use tokenkeeper_provider::LoginError;
use tokenkeeper_sync::SyncError;

use tokenkeeper_core::backend::SeamError;

/// What went wrong keeping an account fresh.
#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    /// No account of that name.
    #[error("no account named `{0}`; see `tokenkeeper accounts`")]
    NoSuchAccount(String),
    /// No account at all.
    #[error("there are no accounts yet: run `tokenkeeper login` or `tokenkeeper import` first")]
    NoAccounts,
    /// Several accounts and none named.
    #[error("there are several accounts ({0}); name one with --account")]
    Ambiguous(String),
    /// The provider rejected the refresh token: only a new login helps.
    #[error("the provider rejected the refresh token of `{account}` ({reason}); run `tokenkeeper login --account {account}` or import a fresh credential")]
    NeedsLogin {
        /// The account whose refresh token was rejected (its name, as in `tokenkeeper status`).
        account: String,
        /// Provider's reason.
        reason: String,
    },
    /// The credential cannot be refreshed (no refresh token: a long-lived setup token).
    #[error("`{account}` has no refresh token (a long-lived setup token?), so it cannot be refreshed; it is valid until {expires}")]
    NotRefreshable {
        /// The account without a refresh token (its name).
        account: String,
        /// Expiry, RFC 3339.
        expires: String,
    },
    /// The account is in follow mode: another program refreshes it.
    #[error("`{account}` is in follow mode: Claude Code refreshes it, not tokenkeeper, and its token {situation}. Run `claude` once there, or switch with `tokenkeeper import --mode own`")]
    FollowMode {
        /// The followed account (its name).
        account: String,
        /// "expires in 10m" / "expired 5m ago".
        situation: String,
    },
    /// Temporary: rate limited, provider error, network, lock busy, attempt budget used.
    #[error("refreshing `{account}` failed, try again later: {reason}")]
    TryLater {
        /// The account whose refresh should be retried (its name).
        account: String,
        /// What happened.
        reason: String,
        /// When to retry, if the provider said.
        retry_after: Option<Duration>,
    },
    /// An incoming credential was refused by the never-regress rule.
    #[error("refused for `{account}`: {reason}; the stored credential was kept")]
    Refused {
        /// The account whose stored credential was kept (its name).
        account: String,
        /// Why.
        reason: String,
    },
    /// A lock failed.
    #[error(transparent)]
    Lock(#[from] SeamError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An account name given (or taken from a credential's email) that cannot be used; its
    /// message names the rule. The caller's input: pick another name.
    #[error(transparent)]
    BadAccountName(#[from] AccountNameError),
    /// A pasted login code that cannot be read (empty, no `#STATE`, another attempt's); its
    /// message says what to paste. The caller's input.
    #[error(transparent)]
    BadLoginCode(#[from] LoginError),
    /// The provider refused a well-formed login code (used, expired, or from another client):
    /// only a new login attempt helps.
    #[error("the provider refused the code ({reason}). Codes are single-use and expire after about 10 minutes: run `tokenkeeper login` again and paste the new code promptly")]
    LoginCodeRefused {
        /// The provider's reason.
        reason: String,
    },
    /// The file watcher that follows bound files could not be started: not the caller's
    /// fault; usually the inotify limits of the machine.
    #[error("cannot start the file watcher of bound files; raise the inotify limits (sysctl fs.inotify.max_user_instances and fs.inotify.max_user_watches) or free some watches, then start again")]
    Watcher(#[source] SyncError),
    /// The account's provider id is not one this installation knows (a built-in or a
    /// `[providers.NAME]` table): a configuration matter.
    #[error("account `{account}` belongs to provider `{provider}`, which this installation does not know; add a `[providers.{provider}]` table to the configuration (see docs/CONFIG.md), or remove the account")]
    UnknownProvider {
        /// Account (or the name it would have had).
        account: String,
        /// The provider id.
        provider: String,
    },
    /// `login --provider X` for a provider without a login flow here (a generic OAuth2
    /// table, API keys): its credentials are imported instead.
    #[error(
        "provider {provider} has no login flow; import its credential with `tokenkeeper import --provider {provider}`"
    )]
    NoLoginFlow {
        /// The provider id.
        provider: String,
    },
    /// The provider client could not be built.
    #[error(transparent)]
    Provider(#[from] tokenkeeper_provider::ProviderError),
}

impl KeeperError {
    /// Whether retrying later may help.
    pub fn is_temporary(&self) -> bool {
        matches!(self, KeeperError::TryLater { .. } | KeeperError::Lock(SeamError::Timeout { .. }))
    }
}
