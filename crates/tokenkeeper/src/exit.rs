//! Exit statuses, documented in docs/OPERATIONS.md.

use tokenkeeper_keeper::KeeperError;

/// Refreshed, or the command succeeded.
pub const OK: i32 = 0;
/// Any other failure (bad config, I/O, usage).
pub const FAILURE: i32 = 1;
/// `refresh --if-needed`: nothing to do, the token is fresh.
pub const NOT_NEEDED: i32 = 3;
/// The account needs a new login (refresh token rejected, or none to refresh with).
pub const NEEDS_LOGIN: i32 = 4;
/// A temporary failure (rate limited, provider or network error, lock busy): try later.
pub const TRY_LATER: i32 = 5;

/// The exit status for a keeper error.
pub fn for_keeper_error(e: &KeeperError) -> i32 {
    match e {
        KeeperError::NeedsLogin { .. } | KeeperError::NotRefreshable { .. } => NEEDS_LOGIN,
        KeeperError::FollowMode { .. } => TRY_LATER,
        e if e.is_temporary() => TRY_LATER,
        _ => FAILURE,
    }
}

/// Finds a keeper error in an anyhow chain.
pub fn for_error(e: &anyhow::Error) -> i32 {
    e.chain().find_map(|c| c.downcast_ref::<KeeperError>()).map_or(FAILURE, for_keeper_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_and_internal_failures_are_plain_failures_not_try_later() {
        let bad_name = tokenkeeper_core::account::validate_account_name("").unwrap_err();
        for e in [
            KeeperError::BadAccountName(bad_name),
            KeeperError::BadLoginCode(tokenkeeper_provider::LoginError::Empty),
            KeeperError::LoginCodeRefused { reason: "invalid_grant".into() },
        ] {
            assert_eq!(for_keeper_error(&e), FAILURE, "{e}");
        }
        let e = anyhow::Error::new(KeeperError::LoginCodeRefused { reason: "used".into() }).context("logging in");
        assert_eq!(for_error(&e), FAILURE);
        let e = anyhow::Error::new(KeeperError::NeedsLogin { account: "a".into(), reason: "revoked".into() });
        assert_eq!(for_error(&e), NEEDS_LOGIN);
    }
}
