//! A string that must never be printed: access tokens, refresh tokens, API keys.
//!
//! [`Secret`] formats itself (`Debug`, `Display`, `Serialize`) as a short fingerprint such as
//! `sk-ant-oat01-…f3a9`: the public prefix that says what kind of token it is, then four hex
//! digits of its SHA-256. The fingerprint identifies a token in logs without revealing any of
//! its secret characters. Code that needs the value calls [`Secret::expose`], which is easy to
//! find in review.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

/// A secret string. The value is wiped from memory when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value itself. Only for writing it where it belongs (a request, a sink,
    /// the encrypted store), never for logs.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is empty (a blank stub).
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }

    /// A short, stable identifier safe to log: the token's public prefix (up to the last
    /// `-` of a `sk-ant-xxx01-` style prefix) followed by four hex digits of its SHA-256.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        let tail = hex::encode(&digest[..2]);
        format!("{}…{}", public_prefix(&self.0), tail)
    }
}

/// The non-secret prefix of a token (`sk-ant-oat01-`), or nothing for tokens without one.
fn public_prefix(value: &str) -> &str {
    // Anthropic tokens look like `sk-ant-oat01-<secret>`; the first three dash-separated
    // parts name the kind of token and carry nothing secret.
    if !value.starts_with("sk-") {
        return "";
    }
    let mut dashes = 0;
    for (i, c) in value.char_indices() {
        if c == '-' {
            dashes += 1;
            if dashes == 3 {
                return &value[..=i];
            }
        }
        if i > 16 {
            break;
        }
    }
    "sk-"
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.fingerprint())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

/// Serialises as the fingerprint: anything serialised for logs or status output is safe.
/// Writers of credential files build their JSON from [`Secret::expose`] explicitly.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.fingerprint())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "sk-ant-oat01-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789";

    #[test]
    fn debug_display_and_serialize_never_show_the_value() {
        let s = Secret::new(TOKEN);
        let outputs = [format!("{s:?}"), format!("{s}"), format!("{s:#?}"), serde_json::to_string(&s).unwrap()];
        for out in outputs {
            assert!(!out.contains("AbCdEf"), "leaked in {out}");
            assert!(out.contains("sk-ant-oat01-…"), "no prefix in {out}");
        }
    }

    #[test]
    fn fingerprint_is_stable_and_distinguishes_tokens() {
        let a = Secret::new(TOKEN);
        let b = Secret::new(format!("{TOKEN}x"));
        assert_eq!(a.fingerprint(), Secret::new(TOKEN).fingerprint());
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().chars().count(), "sk-ant-oat01-…".chars().count() + 4);
    }

    #[test]
    fn tokens_without_a_known_prefix_show_only_the_hash() {
        let s = Secret::new("plainsecretvalue");
        assert!(s.fingerprint().starts_with('…'));
        assert!(!s.fingerprint().contains("plain"));
    }

    #[test]
    fn blank_values_are_empty() {
        assert!(Secret::new("  ").is_empty());
        assert!(!Secret::new(TOKEN).is_empty());
    }
}
