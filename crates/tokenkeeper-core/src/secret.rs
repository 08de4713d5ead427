//! A string that must never be printed: access tokens, refresh tokens, API keys.
//!
//! [`Secret`] formats itself (`Debug`, `Display`) as a short fingerprint such as
//! `sk-ant-oat01-…f3a9`: the public prefix that says what kind of token it is, then four hex
//! digits of its SHA-256. The fingerprint identifies a token in logs without revealing any of
//! its secret characters. Code that needs the value calls [`Secret::expose`], which is easy to
//! find in review. It deliberately does not implement `Serialize`: a serde round trip would
//! otherwise read the value back and write the fingerprint, silently replacing a token. Writers of
//! credential files and the encrypted store build their JSON from [`Secret::expose`].
//!
//! [`redact`] is the one function that makes text safe to log or pass on (a child process's
//! output, an error from a template or a server, an alert's description).

use std::fmt;

use serde::{Deserialize, Deserializer};
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

/// Whether `presented` equals `expected`, in time that depends on neither their contents nor
/// their lengths: both are hashed with SHA-256 and the fixed-size digests compared in constant
/// time. The one comparison of presented credentials (the admin token on the API and on the
/// web page's sign-in, session and CSRF tokens); a plain `==`, or a constant-time comparison
/// of the bytes themselves, would tell an attacker how long the admin token is.
pub fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    let a = Sha256::digest(presented);
    let b = Sha256::digest(expected);
    bool::from(a.as_slice().ct_eq(b.as_slice()))
}

/// What every token of the provider starts with; [`redact`] hides anything shaped like one.
const TOKEN_MARK: &str = "sk-ant-";

/// `text` made safe to log: every value of `known` (tokens and keys tokenkeeper holds) is
/// replaced by its fingerprint, and then anything else shaped like a provider token
/// (`sk-ant-` followed by token characters, which were not in `known`: another login's token
/// a command printed, say) is replaced by its fingerprint too. Fingerprints are left as they
/// are, so redacting twice changes nothing.
pub fn redact<'a>(text: &str, known: impl IntoIterator<Item = &'a Secret>) -> String {
    let mut known: Vec<&Secret> = known.into_iter().filter(|s| !s.expose().is_empty()).collect();
    // Longest first, so a secret that contains another is replaced whole.
    known.sort_by_key(|s| std::cmp::Reverse(s.expose().len()));
    let mut out = text.to_owned();
    for s in known {
        if out.contains(s.expose()) {
            out = out.replace(s.expose(), &s.fingerprint());
        }
    }
    redact_token_shapes(&out)
}

/// Replaces each `sk-ant-…` run that carries secret characters by its fingerprint.
fn redact_token_shapes(text: &str) -> String {
    let is_token_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find(TOKEN_MARK) {
        out.push_str(&rest[..pos]);
        let candidate = &rest[pos..];
        let end = TOKEN_MARK.len()
            + candidate[TOKEN_MARK.len()..]
                .find(|c: char| !is_token_char(c))
                .unwrap_or(candidate.len() - TOKEN_MARK.len());
        let token = &candidate[..end];
        // After the kind (`sk-ant-oat01-`) comes the secret; a bare kind, or a fingerprint
        // (`sk-ant-oat01-…f3a9`, where `…` ends the run), carries none.
        let secret_part = match token.match_indices('-').nth(2) {
            Some((i, _)) => &token[i + 1..],
            None => &token[TOKEN_MARK.len()..],
        };
        if secret_part.is_empty() {
            out.push_str(token);
        } else {
            out.push_str(&Secret::new(token).fingerprint());
        }
        rest = &candidate[end..];
    }
    out.push_str(rest);
    out
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

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// `N` bytes from the operating system's random source: the one generator behind API keys, the
/// admin token, session ids, CSRF tokens, PKCE verifiers and the installation key.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use rand::RngCore as _;
    let mut bytes = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
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

    // Serialising would write the fingerprint where a reader expects the value; a type holding a
    // Secret that could be serialised and read back would lose its token without an error.
    static_assertions::assert_not_impl_any!(Secret: serde::Serialize);
    static_assertions::assert_not_impl_any!(crate::Credential: serde::Serialize);
    static_assertions::assert_not_impl_any!(crate::Account: serde::Serialize);

    #[test]
    fn deserialize_reads_the_value_itself() {
        let s: Secret = serde_json::from_str(&format!("\"{TOKEN}\"")).unwrap();
        assert_eq!(s.expose(), TOKEN);
    }

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new(TOKEN);
        let outputs = [format!("{s:?}"), format!("{s}"), format!("{s:#?}")];
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
    fn redact_replaces_known_secrets_and_anything_token_shaped() {
        let known = Secret::new("tk_abc_KNOWNSECRET");
        let text =
            format!("key {} then sk-ant-ort01-AbC_d-9xYz and (sk-ant-oat01-QQQQ). sk-ant- sk-ant-RAW", known.expose());
        let out = redact(&text, [&known]);
        for leaked in ["KNOWNSECRET", "AbC_d", "QQQQ", "RAW"] {
            assert!(!out.contains(leaked), "{leaked} in {out}");
        }
        assert!(out.contains(&known.fingerprint()), "{out}");
        assert!(out.contains(&Secret::new("sk-ant-ort01-AbC_d-9xYz").fingerprint()), "{out}");
        assert!(
            out.contains("sk-ant-oat01-…") && out.contains("(sk-ant-oat01-…") && out.contains(" sk-ant- "),
            "{out}"
        );
        assert_eq!(redact(&out, [&known]), out, "redacting twice changes nothing");
        assert_eq!(redact("nothing here", []), "nothing here");
    }

    #[test]
    fn redact_handles_a_secret_inside_another_and_empty_ones() {
        let short = Secret::new("sk-ant-oat01-ABC");
        let long = Secret::new("sk-ant-oat01-ABCDEF");
        let out = redact("x sk-ant-oat01-ABCDEF y", [&short, &long, &Secret::new("")]);
        assert_eq!(out, format!("x {} y", long.fingerprint()));
    }

    #[test]
    fn constant_time_eq_compares_values_of_any_length() {
        assert!(constant_time_eq(b"tka_secret", b"tka_secret"));
        assert!(!constant_time_eq(b"tka_secret", b"tka_secreT"));
        assert!(!constant_time_eq(b"tka_secret", b"tka_secret_longer"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn blank_values_are_empty() {
        assert!(Secret::new("  ").is_empty());
        assert!(!Secret::new(TOKEN).is_empty());
    }
}
