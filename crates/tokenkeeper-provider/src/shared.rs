//! What the Codex, Gemini CLI and generic OAuth2 providers share: building their client, the
//! refresh path (expiry from `expires_in` or the JWT's `exp`, a new `id_token` into the
//! credential's provider data) and reading and merging their JSON files.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokenkeeper_core::config::{ExpirySource, ProviderConfig, Rotation};
use tokenkeeper_core::{Credential, Secret};

use crate::client::{OAuthClient, TokenOutcome};
use crate::error::ProviderError;
use crate::grant::TokenGrant;
use crate::jwt;
use crate::provider::NativeFileError;

/// The token endpoint's client for `cfg`, with the client secret resolved from wherever the
/// config says (inline, a file, an environment variable).
pub(crate) fn client(id: &str, cfg: &ProviderConfig) -> Result<OAuthClient, ProviderError> {
    if cfg.client_id.trim().is_empty() {
        return Err(ProviderError::Missing { provider: id.to_owned(), key: "client_id" });
    }
    let secret = cfg
        .resolve_client_secret(&|var| std::env::var(var).ok())
        .map_err(|source| ProviderError::ClientSecret { provider: id.to_owned(), source })?;
    Ok(OAuthClient::new(cfg)?.with_client_secret(secret))
}

/// The provider data of `credential` as a JSON object (empty when it has none or it is not
/// an object).
pub(crate) fn provider_data(credential: &Credential) -> Map<String, Value> {
    credential
        .provider_data
        .as_ref()
        .and_then(|d| serde_json::from_str::<Value>(d.expose()).ok())
        .and_then(|v| match v {
            Value::Object(m) => Some(m),
            _ => None,
        })
        .unwrap_or_default()
}

/// A string of the provider data.
pub(crate) fn data_str(data: &Map<String, Value>, key: &str) -> Option<String> {
    data.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned)
}

/// `data` as provider-data text; `None` when empty.
pub(crate) fn seal(data: Map<String, Value>) -> Option<Secret> {
    (!data.is_empty()).then(|| Secret::new(Value::Object(data).to_string()))
}

/// Spends `credential`'s refresh token with `client` and fits the answer to the provider:
/// the expiry from the access token's `exp` when `cfg.expiry` says so, a new `id_token` (and
/// the account id `extra` reads from it) into the provider data, the email from the
/// `id_token` when the answer gave none. `cli` names the CLI in the message of a
/// credential that cannot be refreshed.
pub(crate) async fn refresh(
    client: &OAuthClient,
    cfg: &ProviderConfig,
    credential: &Credential,
    now: DateTime<Utc>,
    cli: &str,
    extra: &(dyn Fn(&str, &mut Map<String, Value>) + Sync),
) -> TokenOutcome {
    let Some(refresh_token) = credential.refresh_token.as_ref().filter(|r| !r.is_empty()) else {
        return TokenOutcome::Rejected {
            reason: format!("this {cli} credential has no refresh token; log in again with the CLI and import it"),
        };
    };
    let scopes: &[String] = if !cfg.refresh_scope {
        &[]
    } else if credential.scopes.is_empty() {
        &cfg.scopes
    } else {
        &credential.scopes
    };
    let outcome = client.refresh(refresh_token, scopes).await;
    let TokenOutcome::Success(grant) = outcome else { return outcome };
    TokenOutcome::Success(fit(cfg, grant, provider_data(credential), now, cli, extra))
}

/// Fits a grant to the provider: the expiry from the access token's `exp` when `cfg.expiry`
/// says so, a new `id_token` (and what `extra` reads from it) into `data`, the previous
/// provider data, and the email from the `id_token` when the answer gave none.
pub(crate) fn fit(
    cfg: &ProviderConfig,
    mut grant: TokenGrant,
    mut data: Map<String, Value>,
    now: DateTime<Utc>,
    cli: &str,
    extra: &(dyn Fn(&str, &mut Map<String, Value>) + Sync),
) -> TokenGrant {
    if cfg.expiry == ExpirySource::JwtExp {
        if let Some(lifetime) = jwt_lifetime(&grant.access_token, now) {
            grant.expires_in = lifetime;
        }
    }
    if cfg.rotation == Rotation::SingleUse && grant.refresh_token.is_none() {
        tracing::warn!(provider = %cli, "a rotating provider answered without a new refresh token; keeping the old one");
    }
    if let Some(id_token) = &grant.id_token {
        data.insert("id_token".into(), Value::String(id_token.expose().to_owned()));
        extra(id_token.expose(), &mut data);
        grant.provider_data = seal(data);
        if grant.email.is_none() {
            grant.email = jwt::email(id_token.expose());
        }
    }
    grant
}

/// How long a JWT access token still lives at `now`, from its `exp`; `None` when it has no
/// readable `exp` or it is already past (then the answer's `expires_in` stands).
pub(crate) fn jwt_lifetime(access_token: &Secret, now: DateTime<Utc>) -> Option<Duration> {
    let exp = jwt::expiry(access_token.expose()).ok().flatten()?;
    (exp - now).to_std().ok().filter(|d| !d.is_zero())
}

/// Parses a native file's text as a JSON object. `file` names the kind of file in errors.
pub(crate) fn object(file: &str, text: &str) -> Result<Map<String, Value>, NativeFileError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(NativeFileError::Field { file: file.to_owned(), field: "(top level: a JSON object)" }),
        Err(e) => Err(NativeFileError::BadJson {
            file: file.to_owned(),
            detail: format!("line {} column {}", e.line(), e.column()),
        }),
    }
}

/// The object in `existing` to write into, so every key we do not own survives; an empty one
/// when there is no file yet.
pub(crate) fn existing_object(file: &str, existing: Option<&str>) -> Result<Map<String, Value>, NativeFileError> {
    match existing.map(str::trim) {
        None | Some("") => Ok(Map::new()),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(NativeFileError::ExistingNotJson { file: file.to_owned() }),
        },
    }
}

/// A string field: `Some` when present and a string, `None` when absent or null, an error
/// naming `field` otherwise.
pub(crate) fn opt_str<'a>(
    file: &str,
    obj: &'a Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<Option<&'a str>, NativeFileError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(NativeFileError::Field { file: file.to_owned(), field }),
    }
}

/// Pretty JSON with two-space indents, as both CLIs write their files
/// (`serde_json::to_string_pretty` in Codex, `JSON.stringify(…, null, 2)` in Gemini CLI).
pub(crate) fn pretty(obj: Map<String, Value>) -> String {
    // Serialising a map of JSON values cannot fail; the fallback keeps the signature honest.
    serde_json::to_string_pretty(&Value::Object(obj)).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn objects_and_fields() {
        assert!(matches!(object("f", "{"), Err(NativeFileError::BadJson { .. })));
        assert!(matches!(object("f", "[1]"), Err(NativeFileError::Field { .. })));
        assert!(matches!(existing_object("f", Some("nope")), Err(NativeFileError::ExistingNotJson { .. })));
        assert!(existing_object("f", Some("  ")).unwrap().is_empty());
        let o = object("f", r#"{"a":"x","b":null,"c":1}"#).unwrap();
        assert_eq!(opt_str("f", &o, "a", "a").unwrap(), Some("x"));
        assert_eq!(opt_str("f", &o, "b", "b").unwrap(), None);
        assert!(opt_str("f", &o, "c", "c").is_err());
        let e = object("auth.json", r#"{"tokens": {"access_token": "eyJsecret"#).unwrap_err().to_string();
        assert!(!e.contains("eyJsecret"), "{e}");
    }
}
