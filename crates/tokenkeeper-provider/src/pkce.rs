//! PKCE login material ([`PkceLogin`]) and reading the code the user pastes after logging in
//! ([`parse_pasted_code`]).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use tokenkeeper_core::Secret;

use crate::error::LoginError;

/// The secrets of one login attempt: the PKCE verifier (kept here until the code exchange), its
/// S256 challenge (sent in the authorize URL) and the `state` that ties the pasted code to this
/// attempt.
#[derive(Debug, Clone)]
pub struct PkceLogin {
    /// 32 random bytes, base64url without padding (43 characters).
    pub verifier: Secret,
    /// base64url-no-pad of SHA-256 of the verifier.
    pub challenge: String,
    /// 32 random bytes, base64url without padding.
    pub state: String,
}

impl PkceLogin {
    /// New random verifier and state.
    pub fn new() -> Self {
        let verifier = URL_SAFE_NO_PAD.encode(random_32());
        let challenge = challenge_for(&verifier);
        Self { verifier: Secret::new(verifier), challenge, state: URL_SAFE_NO_PAD.encode(random_32()) }
    }
}

impl Default for PkceLogin {
    fn default() -> Self {
        Self::new()
    }
}

fn random_32() -> [u8; 32] {
    tokenkeeper_core::random_bytes::<32>()
}

/// The S256 code challenge of a verifier.
pub(crate) fn challenge_for(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// The code the user pasted, with the state it came with (already checked).
#[derive(Debug, Clone)]
pub struct PastedCode {
    /// The authorization code.
    pub code: Secret,
    /// The `state` of the login attempt.
    pub state: String,
}

/// Reads what the user pasted after login: `CODE#STATE` as the provider's page shows it, or the
/// whole callback URL (`…/callback?code=…&state=…`). Surrounding whitespace and quotes are
/// ignored. The state must be `expected_state`.
pub fn parse_pasted_code(input: &str, expected_state: &str) -> Result<PastedCode, LoginError> {
    let input = input.trim().trim_matches(|c| c == '"' || c == '\'').trim();
    if input.is_empty() {
        return Err(LoginError::Empty);
    }
    let (code, state) = if input.starts_with("http://") || input.starts_with("https://") {
        from_url(input)?
    } else {
        let (code, state) = input.split_once('#').ok_or(LoginError::MissingState)?;
        (code.trim().to_owned(), state.trim().to_owned())
    };
    if code.is_empty() {
        return Err(LoginError::MissingCode);
    }
    if state.is_empty() {
        return Err(LoginError::MissingState);
    }
    if state != expected_state {
        return Err(LoginError::StateMismatch);
    }
    Ok(PastedCode { code: Secret::new(code), state })
}

/// `code` and `state` from a callback URL. The code may itself be `CODE#STATE` (as shown on the
/// page), and the state may come as the URL's fragment.
fn from_url(input: &str) -> Result<(String, String), LoginError> {
    // url's messages describe the defect without quoting the input, so they are safe to show.
    let url = url::Url::parse(input).map_err(|e| LoginError::BadUrl(e.to_string()))?;
    let mut code = None;
    let mut state = None;
    for (k, v) in url.query_pairs() {
        match k.as_ref() {
            "code" => code = Some(v.into_owned()),
            "state" => state = Some(v.into_owned()),
            _ => {}
        }
    }
    let code = code.ok_or(LoginError::MissingCode)?;
    let (code, state) = match code.split_once('#') {
        Some((c, s)) => (c.to_owned(), state.unwrap_or_else(|| s.to_owned())),
        None => (code.clone(), state.or_else(|| url.fragment().map(str::to_owned)).ok_or(LoginError::MissingState)?),
    };
    Ok((code, state))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn verifier_and_challenge_follow_rfc_7636() {
        let login = PkceLogin::new();
        assert_eq!(login.verifier.expose().len(), 43);
        assert_eq!(login.challenge.len(), 43);
        assert_eq!(login.challenge, challenge_for(login.verifier.expose()));
        // RFC 7636 appendix B.
        assert_eq!(
            challenge_for("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let other = PkceLogin::new();
        assert_ne!(login.verifier, other.verifier);
        assert_ne!(login.state, other.state);
    }

    #[test]
    fn accepts_code_hash_state_and_callback_urls() {
        let ok = [
            "abc123#st",
            "  abc123#st \n",
            "\"abc123#st\"",
            "https://platform.claude.com/oauth/code/callback?code=abc123&state=st",
            "http://127.0.0.1:9/oauth/code/callback?code=abc123%23st",
            "https://platform.claude.com/oauth/code/callback?code=abc123#st",
        ];
        for input in ok {
            let pasted = parse_pasted_code(input, "st").unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(pasted.code.expose(), "abc123", "{input}");
            assert_eq!(pasted.state, "st");
        }
    }

    #[test]
    fn rejects_with_a_message_that_says_what_to_do() {
        let cases = [
            ("", LoginError::Empty),
            ("   ", LoginError::Empty),
            ("abc123", LoginError::MissingState),
            ("abc123#", LoginError::MissingState),
            ("#st", LoginError::MissingCode),
            ("abc123#other", LoginError::StateMismatch),
            ("https://x.example/cb?state=st", LoginError::MissingCode),
            ("https://x.example/cb?code=abc123", LoginError::MissingState),
            ("https://x.example/cb?code=abc123&state=zz", LoginError::StateMismatch),
        ];
        for (input, want) in cases {
            assert_eq!(parse_pasted_code(input, "st").err(), Some(want), "{input:?}");
        }
        assert!(LoginError::MissingState.to_string().contains("including the part after #"));
        assert!(LoginError::StateMismatch.to_string().contains("start again with `tokenkeeper login`"));
        assert!(matches!(parse_pasted_code("https://[bad", "st"), Err(LoginError::BadUrl(_))));
    }
}
