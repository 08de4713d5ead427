//! Checks of an authorize request, shared by [`crate::MockProvider::authorize`] and the HTML
//! approve page.

use std::collections::HashMap;

use crate::CLIENT_ID;

/// The parts of a checked authorize request that the code exchange must match.
#[derive(Debug, Clone)]
pub(crate) struct AuthorizeRequest {
    pub state: String,
    pub redirect_uri: String,
    pub challenge: String,
    pub scopes: Vec<String>,
}

/// Checks a full authorize URL: it must point at this mock's authorize page and carry a
/// complete query.
pub(crate) fn check_url(url: &str, expected_base: &str, expected_redirect: &str) -> Result<AuthorizeRequest, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    let base = url.split(['?', '#']).next().unwrap_or_default();
    if base != expected_base {
        return Err(format!("authorize URL points at {base}, expected {expected_base}"));
    }
    let query: HashMap<String, String> = parsed.query_pairs().into_owned().collect();
    check_query(&query, expected_redirect)
}

/// Checks the query of an authorize request.
pub(crate) fn check_query(
    query: &HashMap<String, String>,
    expected_redirect: &str,
) -> Result<AuthorizeRequest, String> {
    let get = |k: &str| query.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let need = |k: &str| get(k).ok_or_else(|| format!("missing query parameter `{k}`"));
    let expect = |k: &str, want: &str| match get(k) {
        Some(v) if v == want => Ok(()),
        Some(v) => Err(format!("`{k}` is {v:?}, expected {want:?}")),
        None => Err(format!("missing query parameter `{k}`")),
    };
    expect("response_type", "code")?;
    expect("client_id", CLIENT_ID)?;
    expect("redirect_uri", expected_redirect)?;
    expect("code_challenge_method", "S256")?;
    expect("code", "true")?;
    let challenge = need("code_challenge")?;
    // A S256 challenge is base64url-no-pad of 32 bytes: 43 characters.
    if challenge.len() != 43 || !challenge.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err("`code_challenge` is not a base64url SHA-256 (43 characters)".into());
    }
    let state = need("state")?;
    let scopes: Vec<String> = need("scope")?.split_whitespace().map(str::to_owned).collect();
    Ok(AuthorizeRequest {
        state: state.to_owned(),
        redirect_uri: expected_redirect.to_owned(),
        challenge: challenge.to_owned(),
        scopes,
    })
}
