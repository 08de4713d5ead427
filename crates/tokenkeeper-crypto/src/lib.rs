//! The installation key of tokenkeeper and the encryption at rest of the tokens in the store,
//! shared by every backend (SQLite in `tokenkeeper-store`, PostgreSQL in
//! `tokenkeeper-store-postgres`), so a credential sealed by one opens in the other and neither
//! backend crate links the other's driver.
//!
//! The key is 32 random bytes, from `TOKENKEEPER_KEY` (base64) or else the key file
//! `<data_dir>/key` (base64, one line, mode 0600), created on first use. Tokens are sealed with
//! XChaCha20-Poly1305 under a fresh random 24-byte nonce, with the account name as associated
//! data, so a ciphertext copied into another account's row does not decrypt. The stored text is
//! `v1:<base64(nonce || ciphertext)>`; the plaintext is the JSON
//! `{"access_token": …, "refresh_token": …}`. The backends' production code never calls
//! [`Secret::expose`] (only their test support does): they store and read back only the
//! sealed text this crate makes. Elsewhere `expose` is called wherever a token must leave as
//! itself (a sink's file, an HTTP answer, a child's environment); grep for it in review.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use tokenkeeper_core::fs::{create_once, Created};
use tokenkeeper_core::{Secret, StoreError};
use zeroize::{Zeroize, Zeroizing};

pub mod fs;

use crate::fs::{ensure_private_dir, io_error};

/// Name of the key file inside the data directory.
pub const KEY_FILE_NAME: &str = "key";

/// Length of a key, in bytes.
const KEY_LEN: usize = 32;

/// Length of an XChaCha20 nonce, in bytes.
const NONCE_LEN: usize = 24;

/// Length of a Poly1305 tag, in bytes.
const TAG_LEN: usize = 16;

/// Prefix of the current storage format.
const FORMAT_V1: &str = "v1:";

/// What to tell someone whose `TOKENKEEPER_KEY` is unusable.
const ENV_KEY_HELP: &str = "TOKENKEEPER_KEY must be 32 bytes, base64-encoded; make one with `openssl rand -base64 32`";

/// The key that encrypts tokens at rest. Wiped from memory when dropped; `Debug` never shows it.
pub struct EncryptionKey {
    bytes: [u8; KEY_LEN],
}

impl EncryptionKey {
    /// Parses a base64-encoded 32-byte key (surrounding whitespace ignored), as given in
    /// `TOKENKEEPER_KEY`.
    pub fn from_base64(text: &str) -> Result<Self, StoreError> {
        Self::decode(text).ok_or_else(|| StoreError::Key(ENV_KEY_HELP.to_owned()))
    }

    /// The key to use: `env_value` (the value of `TOKENKEEPER_KEY`) when it is set and not
    /// blank; else the key file `<data_dir>/key`, created (with `data_dir`, 0700) on first use.
    ///
    /// A key file that its group or others may access is refused. Two processes starting at
    /// once agree on one key: the file is put in place with an exclusive link, and the loser
    /// reads the winner's.
    pub fn load_or_create(env_value: Option<&str>, data_dir: &Path) -> Result<Self, StoreError> {
        if let Some(value) = env_value.filter(|v| !v.trim().is_empty()) {
            return Self::from_base64(value);
        }
        ensure_private_dir(data_dir)?;
        let path = data_dir.join(KEY_FILE_NAME);
        if let Some(key) = read_key_file(&path)? {
            return Ok(key);
        }
        create_key_file(&path)
    }

    /// A fresh random key.
    pub fn generate() -> Self {
        Self { bytes: tokenkeeper_core::random_bytes::<KEY_LEN>() }
    }

    /// The key in base64, as `TOKENKEEPER_KEY` and the key file hold it.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.bytes))
    }

    fn decode(text: &str) -> Option<Self> {
        let decoded = Zeroizing::new(STANDARD.decode(text.trim()).ok()?);
        let bytes: [u8; KEY_LEN] = decoded.as_slice().try_into().ok()?;
        Some(Self { bytes })
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(Key::from_slice(&self.bytes))
    }

    /// Encrypts an account's tokens for storage in its row: the text to store, which is safe to
    /// keep in a database (it reveals nothing without the key). The same as
    /// [`EncryptionKey::seal_credential`] without provider data.
    pub fn seal(&self, account: &str, access: &Secret, refresh: Option<&Secret>) -> Result<String, StoreError> {
        self.seal_credential(account, &SealedRef { access, refresh, provider_data: None })
    }

    /// Encrypts an account's tokens and its provider's data (Codex's `id_token`, …) together,
    /// as one payload. Without provider data the payload is byte for byte what earlier
    /// releases sealed, so an older binary still opens it.
    pub fn seal_credential(&self, account: &str, tokens: &SealedRef<'_>) -> Result<String, StoreError> {
        let payload = TokensRef {
            access_token: tokens.access.expose(),
            refresh_token: tokens.refresh.map(Secret::expose),
            provider_data: tokens.provider_data.map(Secret::expose),
        };
        // Sized up front so serialising never reallocates and leaves unwiped copies behind.
        let capacity = 96
            + payload.access_token.len()
            + payload.refresh_token.map_or(0, str::len)
            + payload.provider_data.map_or(0, |d| d.len() * 6);
        let mut plain = Zeroizing::new(Vec::with_capacity(capacity));
        serde_json::to_writer(&mut *plain, &payload).map_err(|_| StoreError::Corrupt {
            account: account.to_owned(),
            reason: "cannot serialise the tokens for encryption".to_owned(),
        })?;
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = self
            .cipher()
            .encrypt(&nonce, Payload { msg: &plain, aad: account.as_bytes() })
            .map_err(|_| StoreError::Key(format!("cannot encrypt the credential of `{account}`")))?;
        let mut blob = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ciphertext);
        Ok(format!("{FORMAT_V1}{}", STANDARD.encode(blob)))
    }

    /// Decrypts what [`EncryptionKey::seal`] stored for `account`: (access, refresh) tokens.
    /// [`StoreError::Decrypt`] for another key or altered data, [`StoreError::Corrupt`] for text
    /// that is not a sealed credential at all.
    pub fn open(&self, account: &str, stored: &str) -> Result<(Secret, Option<Secret>), StoreError> {
        self.open_credential(account, stored).map(|t| (t.access, t.refresh))
    }

    /// Decrypts what [`EncryptionKey::seal_credential`] (or [`EncryptionKey::seal`], or an
    /// earlier release) stored for `account`: the tokens and the provider data, `None` in a
    /// payload sealed without it. Errors as [`EncryptionKey::open`].
    pub fn open_credential(&self, account: &str, stored: &str) -> Result<OpenedTokens, StoreError> {
        let corrupt = |reason: &str| StoreError::Corrupt { account: account.to_owned(), reason: reason.to_owned() };
        let decrypt = |reason: &str| StoreError::Decrypt { account: account.to_owned(), reason: reason.to_owned() };
        let body = stored
            .strip_prefix(FORMAT_V1)
            .ok_or_else(|| corrupt("the encrypted credential has an unknown format (expected `v1:`)"))?;
        let blob = STANDARD.decode(body).map_err(|_| corrupt("the encrypted credential is not valid base64"))?;
        if blob.len() < NONCE_LEN + TAG_LEN {
            return Err(corrupt("the encrypted credential is truncated"));
        }
        let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
        let plain = Zeroizing::new(
            self.cipher()
                .decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad: account.as_bytes() })
                .map_err(|_| decrypt("authentication failed (another key, altered data, or another account's row)"))?,
        );
        // The parser's own error is not shown: it may quote part of the plaintext.
        let tokens: TokensOwned =
            serde_json::from_slice(&plain).map_err(|_| decrypt("the decrypted payload is not the expected JSON"))?;
        Ok(OpenedTokens {
            access: Secret::new(tokens.access_token),
            refresh: tokens.refresh_token.map(Secret::new),
            provider_data: tokens.provider_data.map(Secret::new),
        })
    }
}

/// What [`EncryptionKey::seal_credential`] seals: borrowed, so nothing is copied unwiped.
#[derive(Debug, Clone, Copy)]
pub struct SealedRef<'a> {
    /// The access token (or API key).
    pub access: &'a Secret,
    /// The refresh token, when there is one.
    pub refresh: Option<&'a Secret>,
    /// The provider's own data (a JSON object as text), when it keeps some.
    pub provider_data: Option<&'a Secret>,
}

impl<'a> SealedRef<'a> {
    /// The secrets of `credential`: its tokens and its provider data.
    pub fn of(credential: &'a tokenkeeper_core::Credential) -> Self {
        Self {
            access: &credential.access_token,
            refresh: credential.refresh_token.as_ref(),
            provider_data: credential.provider_data.as_ref(),
        }
    }
}

/// What [`EncryptionKey::open_credential`] found in a sealed payload.
#[derive(Debug, Clone)]
pub struct OpenedTokens {
    /// The access token (or API key).
    pub access: Secret,
    /// The refresh token, when there is one.
    pub refresh: Option<Secret>,
    /// The provider's own data; `None` in payloads sealed without it (every earlier release).
    pub provider_data: Option<Secret>,
}

impl Drop for EncryptionKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey(<redacted>)")
    }
}

/// The plaintext sealed in a row, as written.
#[derive(Serialize)]
struct TokensRef<'a> {
    access_token: &'a str,
    refresh_token: Option<&'a str>,
    /// Left out when absent, so a payload without it is what earlier releases wrote.
    #[serde(skip_serializing_if = "Option::is_none")]
    provider_data: Option<&'a str>,
}

/// The plaintext sealed in a row, as read back (moved straight into [`Secret`]s).
#[derive(Deserialize)]
struct TokensOwned {
    access_token: String,
    refresh_token: Option<String>,
    #[serde(default)]
    provider_data: Option<String>,
}

/// Reads the key file; `None` when there is none.
fn read_key_file(path: &Path) -> Result<Option<EncryptionKey>, StoreError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("open the key file", path)(e)),
    };
    // Checked on the open file, so what we read is what we checked.
    let meta = file.metadata().map_err(io_error("inspect the key file", path))?;
    if !meta.is_file() {
        return Err(StoreError::Key(format!("key file {} is not a regular file", path.display())));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(StoreError::Key(format!(
            "key file {path} may be read by group or others (mode {mode:03o}); run `chmod 600 {path}`",
            path = path.display()
        )));
    }
    let mut text = Zeroizing::new(String::with_capacity(64));
    file.read_to_string(&mut text).map_err(io_error("read the key file", path))?;
    EncryptionKey::decode(&text).map(Some).ok_or_else(|| {
        StoreError::Key(format!(
            "key file {} must hold 32 bytes, base64-encoded, on one line (as made by `openssl rand -base64 32`)",
            path.display()
        ))
    })
}

/// Creates the key file with a new key, or reads the one another process created meanwhile.
///
/// [`create_once`] writes it whole and private before it appears, and never replaces a key file
/// that exists: of two processes starting at once exactly one key is kept.
fn create_key_file(path: &Path) -> Result<EncryptionKey, StoreError> {
    let key = EncryptionKey::generate();
    let mut line = key.to_base64();
    line.push('\n');
    match create_once(path, line.as_bytes()).map_err(io_error("create the key file", path))? {
        Created::New => {
            tracing::info!(
                path = %path.display(),
                "created a new encryption key; back it up: without it the stored credentials cannot be read"
            );
            Ok(key)
        }
        Created::Existed => read_key_file(path)?.ok_or_else(|| {
            io_error("read the key file", path)(io::Error::new(
                io::ErrorKind::NotFound,
                "it existed a moment ago and has disappeared",
            ))
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const ACCESS: &str = "sk-ant-oat01-ACCESSsecretvalue";
    const REFRESH: &str = "sk-ant-ort01-REFRESHsecretvalue";

    #[test]
    fn seal_and_open_round_trip() {
        let key = EncryptionKey::generate();
        let sealed = key.seal("main", &Secret::new(ACCESS), Some(&Secret::new(REFRESH))).unwrap();
        assert!(sealed.starts_with("v1:"), "{sealed}");
        assert!(!sealed.contains("ACCESS") && !sealed.contains("REFRESH"));
        let (access, refresh) = key.open("main", &sealed).unwrap();
        assert_eq!(access.expose(), ACCESS);
        assert_eq!(refresh.unwrap().expose(), REFRESH);

        let sealed = key.seal("main", &Secret::new(ACCESS), None).unwrap();
        assert!(key.open("main", &sealed).unwrap().1.is_none());
    }

    #[test]
    fn nonces_are_fresh() {
        let key = EncryptionKey::generate();
        let a = key.seal("main", &Secret::new(ACCESS), None).unwrap();
        let b = key.seal("main", &Secret::new(ACCESS), None).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn a_ciphertext_is_bound_to_its_account() {
        let key = EncryptionKey::generate();
        let sealed = key.seal("alice", &Secret::new(ACCESS), None).unwrap();
        match key.open("bob", &sealed) {
            Err(StoreError::Decrypt { account, .. }) => assert_eq!(account, "bob"),
            other => panic!("expected a Decrypt error, got {other:?}"),
        }
    }

    #[test]
    fn another_key_or_tampering_fails_cleanly() {
        let key = EncryptionKey::generate();
        let sealed = key.seal("main", &Secret::new(ACCESS), None).unwrap();
        assert!(matches!(EncryptionKey::generate().open("main", &sealed), Err(StoreError::Decrypt { .. })));

        let mut blob = STANDARD.decode(sealed.strip_prefix("v1:").unwrap()).unwrap();
        let last = blob.len() - 1;
        blob[last] ^= 1;
        let tampered = format!("v1:{}", STANDARD.encode(blob));
        assert!(matches!(key.open("main", &tampered), Err(StoreError::Decrypt { .. })));

        for junk in ["v2:abc", "v1:!!!", "v1:AAAA", ""] {
            assert!(matches!(key.open("main", junk), Err(StoreError::Corrupt { .. })), "{junk}");
        }
    }

    #[test]
    fn debug_is_redacted() {
        let key = EncryptionKey::generate();
        let shown = format!("{key:?}");
        assert_eq!(shown, "EncryptionKey(<redacted>)");
        assert!(!shown.contains(key.to_base64().as_str()));
    }

    #[test]
    fn base64_keys_of_the_wrong_length_are_refused_helpfully() {
        let short = STANDARD.encode([7u8; 16]);
        for bad in [short.as_str(), "not base64 at all", ""] {
            let err = EncryptionKey::from_base64(bad).unwrap_err().to_string();
            assert!(err.contains("32 bytes, base64-encoded"), "{err}");
            assert!(err.contains("openssl rand -base64 32"), "{err}");
        }
        let good = STANDARD.encode([7u8; 32]);
        assert_eq!(EncryptionKey::from_base64(&format!(" {good}\n")).unwrap().bytes, [7u8; 32]);
    }

    /// Sealed by the previous release (tokens only) with the key of 32 bytes of 7s.
    const OLD_BLOB: &str = "v1:MZzyoKr6F4lJWlBhFWCafAb1GBHoKlSaQpUfbvJL3fCXFVHN/Wb911uexFM+pPIqzkMYwNXccrLz6ezEpPb3wOuEAe8XY26q49rjdnBzldQTLhVdU8BwZeHirbqeuA5gH1LSPddsfqovZCOW3P8pdWRPge2nGTW8fDOf";

    #[test]
    fn provider_data_is_sealed_with_the_tokens_and_old_blobs_still_open() {
        let key = EncryptionKey::from_base64(&STANDARD.encode([7u8; 32])).unwrap();
        let old = key.open_credential("main", OLD_BLOB).unwrap();
        assert_eq!(old.access.expose(), "sk-ant-oat01-OLDaccess");
        assert_eq!(old.refresh.as_ref().map(Secret::expose), Some("sk-ant-ort01-OLDrefresh"));
        assert!(old.provider_data.is_none());
        assert_eq!(key.open("main", OLD_BLOB).unwrap().0.expose(), "sk-ant-oat01-OLDaccess");

        let data = Secret::new(r#"{"id_token":"eyJSECRETidtoken","account_id":"acc-1"}"#);
        let (access, refresh) = (Secret::new(ACCESS), Secret::new(REFRESH));
        let sealed = key
            .seal_credential(
                "main",
                &SealedRef { access: &access, refresh: Some(&refresh), provider_data: Some(&data) },
            )
            .unwrap();
        assert!(!sealed.contains("SECRET") && !sealed.contains("acc-1"), "{sealed}");
        let opened = key.open_credential("main", &sealed).unwrap();
        assert_eq!(opened.provider_data.as_ref().map(Secret::expose), Some(data.expose()));
        assert_eq!(opened.access.expose(), ACCESS);
        // Without provider data, the plaintext is exactly what earlier releases sealed.
        let payload = TokensRef { access_token: "a", refresh_token: None, provider_data: None };
        assert_eq!(serde_json::to_string(&payload).unwrap(), r#"{"access_token":"a","refresh_token":null}"#);
    }
}
