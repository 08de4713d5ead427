//! Doctor's checks of a PostgreSQL store: the connection (named by host, port and database,
//! never the password), the schema version against this binary's, the installation key against
//! every account's credentials, and which replica leads. Nothing here migrates or writes.

use std::path::Path;

use tokenkeeper_core::Account;
use tokenkeeper_store::crypto::KEY_FILE_NAME;
use tokenkeeper_store::EncryptionKey;
use tokenkeeper_store_postgres::{binary_schema_version, ConnectProblem};

use super::{env, Finding};

/// The installation key and where it came from, without creating one: a replica that made a
/// fresh key would seal nothing the others can open.
fn key(data_dir: &Path) -> Result<(EncryptionKey, String), Finding> {
    let from_env = env("TOKENKEEPER_KEY");
    let file = data_dir.join(KEY_FILE_NAME);
    let source = match &from_env {
        Some(_) => "TOKENKEEPER_KEY".to_owned(),
        None if file.exists() => format!("the key file {}", file.display()),
        None => {
            return Err(Finding::fail(
                format!("no installation key: TOKENKEEPER_KEY is not set and {} does not exist", file.display()),
                "give this replica the installation's key (the same on every replica): TOKENKEEPER_KEY from a secret, or the key file copied from another replica",
            ))
        }
    };
    match EncryptionKey::load_or_create(from_env.as_deref(), data_dir) {
        Ok(k) => Ok((k, source)),
        Err(e) => Err(Finding::fail(
            format!("the installation key from {source} cannot be loaded: {e}"),
            format!("replace the key in {source} with the installation's key (the same on every replica)"),
        )),
    }
}

/// The PostgreSQL checks, in order; the accounts when the key opens them.
pub async fn checks(url: &str, origin: &str, data_dir: Option<&Path>) -> (Vec<Finding>, Vec<Account>) {
    let mut out = Vec::new();
    let shown = tokenkeeper_store_postgres::describe_url(url);
    let target = shown.clone().unwrap_or_else(|| "the PostgreSQL store".to_owned());
    let inspection = match tokenkeeper_store_postgres::inspect(url).await {
        Ok(i) => i,
        Err(problem) => {
            out.push(connect_finding(&problem, &target, origin));
            return (out, Vec::new());
        }
    };
    out.push(Finding::ok(format!("store: {target} (from {origin}) is reachable")));

    let ours = binary_schema_version();
    let theirs = inspection.schema_version;
    if theirs < ours {
        let what = if theirs == 0 {
            format!("schema: the database has no tokenkeeper schema yet (this binary's is version {ours})")
        } else {
            format!("schema version {theirs} is behind this binary's {ours}")
        };
        out.push(Finding::warn(what, "run `tokenkeeper migrate` (a starting replica also migrates, one at a time)"));
        return (out, Vec::new());
    }
    if theirs > ours {
        out.push(Finding::fail(
            format!("schema version {theirs} is ahead of this binary's {ours}"),
            "this binary is older than the database; upgrade it (every replica runs the same version or newer)",
        ));
        return (out, Vec::new());
    }
    out.push(Finding::ok(format!("schema version {theirs}, as this binary expects")));

    let Some(dir) = data_dir else { return (out, Vec::new()) };
    let accounts = match key(dir) {
        Err(f) => {
            out.push(f);
            Vec::new()
        }
        Ok((key, source)) => match tokenkeeper_store_postgres::decrypt_all(url, key).await {
            Ok(accounts) => {
                out.push(Finding::ok(format!(
                    "the key from {source} opens the credentials of all {} account(s)",
                    accounts.len()
                )));
                accounts
            }
            Err(tokenkeeper_core::StoreError::Decrypt { account, .. }) => {
                out.push(Finding::fail(
                    format!("the key from {source} does not open the credentials of account `{account}`"),
                    format!(
                        "{source} holds another key than the one this installation was sealed with: give every replica the installation's key (TOKENKEEPER_KEY, or the key file of the replica that made the store)"
                    ),
                ));
                Vec::new()
            }
            Err(e) => {
                out.push(Finding::fail(
                    format!("the accounts cannot be read from {target}: {e}"),
                    "check the role may read the tokenkeeper tables, then run `tokenkeeper doctor` again",
                ));
                Vec::new()
            }
        },
    };

    out.push(match &inspection.leader {
        Some(replica) => Finding::ok(format!("replica `{replica}` leads (holds the leader lock)")),
        None => Finding::warn(
            "no replica leads: none holds the leader lock, so nothing refreshes the accounts",
            "start `tokenkeeper serve` on at least one replica (if one runs, its role may not see the others' sessions: grant it pg_read_all_stats)",
        ),
    });
    (out, accounts)
}

/// The failure of a connection, with the next step for its cause.
fn connect_finding(problem: &ConnectProblem, target: &str, origin: &str) -> Finding {
    match problem {
        ConnectProblem::BadUrl => Finding::fail(
            format!("store: {origin} is not a valid PostgreSQL URL (not shown: it may hold a password)"),
            format!("write {origin} as postgres://ROLE@HOST:PORT/DATABASE, the password in the environment or [store] url_file"),
        ),
        ConnectProblem::Unreachable => Finding::fail(
            format!("store: {target} (from {origin}) does not answer"),
            format!("start the PostgreSQL server, or correct the host and port in {origin}; check that no firewall stands between this host and it"),
        ),
        ConnectProblem::AuthRefused => Finding::fail(
            format!("store: {target} (from {origin}) refused the role or its password"),
            format!("correct the role or password in {origin}, or allow this host in the server's pg_hba.conf"),
        ),
        ConnectProblem::NoDatabase => Finding::fail(
            format!("store: {target} (from {origin}) does not exist on the server"),
            format!("create it (`createdb -O ROLE DATABASE`) or correct the database name in {origin}, then `tokenkeeper migrate`"),
        ),
        ConnectProblem::Other(reason) => Finding::fail(
            format!("store: cannot connect to {target} (from {origin}): {reason}"),
            format!("check {origin} and the server's log, then run `tokenkeeper doctor` again"),
        ),
    }
}
