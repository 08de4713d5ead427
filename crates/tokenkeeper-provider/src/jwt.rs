//! Reading the claims of a JWT (`exp`, `email`, Codex's account id) without verifying its
//! signature.
//!
//! Not verifying is deliberate and safe here: tokenkeeper only reads the expiry and the email
//! of tokens it was itself handed by the provider (or by the provider's own CLI), to decide
//! when to refresh and what to show. Nothing is authorised on the strength of these claims;
//! the provider checks its own tokens on every request. A forged `exp` could at worst make us
//! refresh early or late, which the provider's 401 then corrects.
//!
//! The payload is read by hand (split on `.`, base64url-decode the middle part, parse JSON)
//! rather than with a JWT crate: a verifying crate such as `jsonwebtoken` brings a crypto
//! stack and wants a key we do not have, and the three lines below are all we need.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::Value;

/// Why a string is not a JWT whose payload we can read. Says nothing of the token's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three non-empty dot-separated parts.
    #[error("not a JWT (expected three dot-separated parts)")]
    Shape,
    /// The payload is not base64url.
    #[error("the JWT payload is not base64url")]
    Base64,
    /// The payload is not a JSON object.
    #[error("the JWT payload is not a JSON object")]
    Json,
}

/// The claims of `token`'s payload, unverified (see the module documentation).
pub fn claims(token: &str) -> Result<serde_json::Map<String, Value>, JwtError> {
    let mut parts = token.trim().split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Shape);
    };
    if header.is_empty() || payload.is_empty() || signature.is_empty() {
        return Err(JwtError::Shape);
    }
    // Some issuers pad; base64url without padding is the standard (RFC 7515 §2).
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).map_err(|_| JwtError::Base64)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwtError::Json),
    }
}

/// The `exp` claim (seconds since the epoch) of `token`; `None` when it has none or it is out
/// of range.
pub fn expiry(token: &str) -> Result<Option<DateTime<Utc>>, JwtError> {
    let claims = claims(token)?;
    let exp = match claims.get("exp") {
        Some(Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        _ => None,
    };
    Ok(exp.and_then(|s| DateTime::from_timestamp(s, 0)))
}

/// The account's email in `token`: the `email` claim, else OpenAI's
/// `https://api.openai.com/profile`.`email` (as Codex reads it, `codex-rs/login/src/token_data.rs`).
pub fn email(token: &str) -> Option<String> {
    let claims = claims(token).ok()?;
    let text =
        |v: Option<&Value>| v.and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned);
    text(claims.get("email"))
        .or_else(|| text(claims.get("https://api.openai.com/profile").and_then(|p| p.get("email"))))
}

/// A string claim inside a namespace object (`https://api.openai.com/auth` →
/// `chatgpt_account_id`).
pub fn nested_str(token: &str, namespace: &str, key: &str) -> Option<String> {
    let claims = claims(token).ok()?;
    claims.get(namespace)?.get(key)?.as_str().map(str::to_owned)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn jwt(payload: &Value) -> String {
        let enc = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.c2ln", enc(&json!({"alg": "RS256", "typ": "JWT"})), enc(payload))
    }

    #[test]
    fn reads_exp_and_email() {
        let t = jwt(&json!({"exp": 1_800_000_000, "email": "a@example.com"}));
        assert_eq!(expiry(&t).unwrap(), DateTime::from_timestamp(1_800_000_000, 0));
        assert_eq!(email(&t).as_deref(), Some("a@example.com"));
        let t = jwt(&json!({"https://api.openai.com/profile": {"email": "p@example.com"},
                            "https://api.openai.com/auth": {"chatgpt_account_id": "acc-1"}}));
        assert_eq!(expiry(&t).unwrap(), None);
        assert_eq!(email(&t).as_deref(), Some("p@example.com"));
        assert_eq!(nested_str(&t, "https://api.openai.com/auth", "chatgpt_account_id").as_deref(), Some("acc-1"));
    }

    #[test]
    fn refuses_what_is_not_a_jwt() {
        assert_eq!(claims("sk-ant-oat01-abc"), Err(JwtError::Shape));
        assert_eq!(claims("a..c"), Err(JwtError::Shape));
        assert_eq!(claims("a.b.c.d"), Err(JwtError::Shape));
        assert_eq!(claims("a.!!!.c"), Err(JwtError::Base64));
        assert_eq!(claims(&format!("a.{}.c", URL_SAFE_NO_PAD.encode("[1]"))), Err(JwtError::Json));
        assert_eq!(email("ya29.not-a-jwt"), None);
        // The error never carries the token.
        assert!(!JwtError::Shape.to_string().contains("sk-ant"));
    }
}
