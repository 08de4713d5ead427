//! `tokenkeeper keys`: API keys for the HTTP API. A key is printed once, at creation; the
//! store keeps only its SHA-256.

use anyhow::{Context, Result};

use tokenkeeper_server::auth;

use crate::app::App;
use crate::cli::{KeysAction, KeysArgs};
use crate::exit;

pub async fn run(app: &App, args: KeysArgs) -> Result<i32> {
    let store = app.keeper.store().as_ref();
    let now = app.keeper.clock().now();
    match args.action {
        KeysAction::Create { name, mut scopes, accounts, pool } => {
            scopes.extend(pool.map(|p| format!("{}{p}", auth::POOL_PREFIX)));
            let created = auth::create_api_key(store, &name, &scopes, &accounts, now).await?;
            let r = &created.record;
            let limit = if r.accounts.is_empty() {
                ", for every account".to_owned()
            } else {
                format!(", for {}", r.accounts.join(", "))
            };
            eprintln!(
                "Created key `{}` (id {}) with scope {}{limit}. It is shown only now: keep it in a file only its user can read (chmod 600).",
                r.name,
                r.id,
                r.scopes.join(", ")
            );
            println!("{}", created.key.expose());
            Ok(exit::OK)
        }
        KeysAction::List { json } => {
            let keys = auth::list_api_keys(store).await?;
            if json {
                let rows: Vec<serde_json::Value> = keys
                    .iter()
                    .map(|k| {
                        serde_json::json!({
                            "id": k.id, "name": k.name, "scopes": k.scopes, "accounts": k.accounts,
                            "created_at": k.created_at, "revoked_at": k.revoked_at,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows).context("cannot format the keys as JSON")?);
                return Ok(exit::OK);
            }
            if keys.is_empty() {
                eprintln!("No API keys yet: create one with `tokenkeeper keys create --name NAME --scope token:read`.");
                return Ok(exit::OK);
            }
            let header = ["ID", "NAME", "SCOPES", "ACCOUNTS", "CREATED", "STATE"].map(str::to_owned);
            let rows: Vec<[String; 6]> = keys
                .iter()
                .map(|k| {
                    [
                        k.id.clone(),
                        k.name.clone(),
                        k.scopes.join(","),
                        if k.accounts.is_empty() { "*".to_owned() } else { k.accounts.join(",") },
                        k.created_at.format("%Y-%m-%d %H:%M").to_string(),
                        k.revoked_at
                            .map_or_else(|| "active".to_owned(), |t| format!("revoked {}", t.format("%Y-%m-%d %H:%M"))),
                    ]
                })
                .collect();
            let mut widths = header.clone().map(|h| h.len());
            for r in &rows {
                for (w, c) in widths.iter_mut().zip(r) {
                    *w = (*w).max(c.chars().count());
                }
            }
            for r in std::iter::once(&header).chain(rows.iter()) {
                let cells: Vec<String> = r.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
                println!("{}", cells.join("  ").trim_end());
            }
            Ok(exit::OK)
        }
        KeysAction::Revoke { key } => {
            if auth::revoke_api_key(store, &key, now).await? {
                eprintln!("Revoked `{key}`; requests with it now get 401.");
                Ok(exit::OK)
            } else {
                eprintln!("error: no active key with id or name `{key}`; see `tokenkeeper keys list`");
                Ok(exit::FAILURE)
            }
        }
    }
}
