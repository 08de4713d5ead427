//! Credential formats: what `import`, `push` and the file watchers read, and what the
//! Claude Code and OpenClaw sinks write.
//!
//! Accepted input (auto-detected):
//! - Claude Code's `.credentials.json` (`{"claudeAiOauth":{…}}`, or the inner object alone);
//! - the same JSON base64-encoded (standard or URL-safe alphabet, wrapped lines allowed);
//! - OpenClaw's `oauth.json` (`{"anthropic":{"access","refresh","expires"}}`) and its
//!   auth-profiles layout (`{"profiles":{"anthropic:…":{"type":"oauth",…}}}`);
//! - a bare long-lived token `sk-ant-oat01-…` from `claude setup-token` (no refresh token,
//!   about a year of life);
//! - a plain API key `sk-ant-api…` (for the proxy's pools): never refreshed, never expiring,
//!   stored under the provider [`API_KEY_PROVIDER`].
//!
//! Writers merge into the existing document so keys tokenkeeper does not know survive.

use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Map, Value};

use crate::credential::{Credential, LONG_LIVED_TOKEN_LIFETIME_DAYS};
use crate::secret::Secret;

/// Which format an input was in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Claude Code JSON.
    ClaudeJson,
    /// Claude Code JSON, base64-encoded.
    ClaudeJsonBase64,
    /// OpenClaw `oauth.json`.
    OpenclawOauth,
    /// OpenClaw auth-profiles.
    OpenclawProfiles,
    /// A bare long-lived access token.
    BareToken,
    /// A plain API key (`sk-ant-api…`): sent as `x-api-key`, never refreshed.
    ApiKey,
    /// Another provider's CLI file (Codex's `auth.json`, …), read by that provider's
    /// `NativeFile` in `tokenkeeper-provider`; never produced by [`parse_credential`].
    Native,
}

/// The provider id of plain API-key accounts: their credential is the key itself, with no
/// refresh token and an expiry that never comes ([`api_key_expiry`]).
pub const API_KEY_PROVIDER: &str = "anthropic-api-key";

/// The expiry stored for API keys, which do not expire: 9999-12-31T00:00:00Z.
pub fn api_key_expiry() -> DateTime<Utc> {
    DateTime::from_timestamp(253_402_214_400, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl Format {
    /// Human name.
    pub fn describe(self) -> &'static str {
        match self {
            Format::ClaudeJson => "Claude Code credentials JSON",
            Format::ClaudeJsonBase64 => "base64-encoded Claude Code credentials JSON",
            Format::OpenclawOauth => "OpenClaw oauth.json",
            Format::OpenclawProfiles => "OpenClaw auth-profiles",
            Format::BareToken => "long-lived token (setup-token)",
            Format::ApiKey => "API key",
            Format::Native => "CLI credential file",
        }
    }
}

/// A credential read from some input, with what the input said about the account.
#[derive(Debug, Clone)]
pub struct ParsedCredential {
    /// The credential in tokenkeeper's form. A bare token or API key has no refresh token and an
    /// assumed expiry ([`LONG_LIVED_TOKEN_LIFETIME_DAYS`] from now; [`api_key_expiry`]).
    pub credential: Credential,
    /// The format it came in.
    pub format: Format,
    /// Account email, if the input had one.
    pub email: Option<String>,
}

/// Why an input is not a credential. Messages say what to supply instead and never quote the
/// input (it may hold a token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Nothing at all.
    #[error("the input is empty: supply Claude Code's .credentials.json, its base64 form, OpenClaw's oauth.json, or a sk-ant-oat01- token")]
    Empty,
    /// Looks like JSON but does not parse (truncated?).
    #[error("the input is not valid JSON ({0}); was it cut off? Supply the whole .credentials.json file")]
    BadJson(String),
    /// Neither JSON nor a token; base64 that did not decode.
    #[error("the input is neither JSON, base64 of JSON, nor a sk-ant- token: {0}")]
    Unrecognised(String),
    /// JSON of an unknown shape.
    #[error("the JSON has no `claudeAiOauth`, `anthropic` or `profiles` object: supply Claude Code's .credentials.json or OpenClaw's oauth.json")]
    UnknownShape,
    /// A required field is missing or has the wrong type.
    #[error("`{0}` is missing or not of the right type")]
    Field(&'static str),
    /// All fields present but empty: a blank stub written by a process that lost a refresh race.
    #[error("the credential is a blank stub (empty token or zero expiry); it would log you out, so it was refused. Log in again or import a good copy")]
    Blank,
}

/// Reads a credential from any supported input.
pub fn parse_credential(input: &str, now: DateTime<Utc>) -> Result<ParsedCredential, FormatError> {
    let text = input.trim().trim_start_matches('\u{feff}');
    if text.is_empty() {
        return Err(FormatError::Empty);
    }
    if text.starts_with('{') {
        let value: Value = serde_json::from_str(text).map_err(|e| FormatError::BadJson(describe_json_error(&e)))?;
        return parse_json_value(&value, Format::ClaudeJson);
    }
    if text.starts_with("sk-ant-") {
        if text.chars().any(char::is_whitespace) {
            return Err(FormatError::Unrecognised("a token must be a single word without spaces".into()));
        }
        if text.starts_with("sk-ant-api") {
            let credential = Credential {
                access_token: Secret::new(text),
                refresh_token: None,
                expires_at: api_key_expiry(),
                scopes: vec!["user:inference".into()],
                subscription_type: None,
                rate_limit_tier: None,
                provider_data: None,
            };
            return Ok(ParsedCredential { credential, format: Format::ApiKey, email: None });
        }
        if !text.starts_with("sk-ant-oat") {
            return Err(FormatError::Unrecognised(
                "only access tokens (sk-ant-oat…) can be imported bare; a refresh token alone cannot be used without its access token".into(),
            ));
        }
        let credential = Credential {
            access_token: Secret::new(text),
            refresh_token: None,
            expires_at: now + Duration::days(LONG_LIVED_TOKEN_LIFETIME_DAYS),
            scopes: vec!["user:inference".into()],
            subscription_type: None,
            rate_limit_tier: None,
            provider_data: None,
        };
        return Ok(ParsedCredential { credential, format: Format::BareToken, email: None });
    }
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(compact.as_bytes()))
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(compact.as_bytes()))
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(compact.as_bytes()))
        .map_err(|_| FormatError::Unrecognised("it is not valid base64 either".into()))?;
    let decoded = String::from_utf8(decoded)
        .map_err(|_| FormatError::Unrecognised("it decodes from base64 to binary data, not JSON".into()))?;
    let decoded = decoded.trim();
    if !decoded.starts_with('{') {
        return Err(FormatError::Unrecognised("it decodes from base64, but not to a JSON object".into()));
    }
    let value: Value = serde_json::from_str(decoded)
        .map_err(|e| FormatError::BadJson(format!("inside the base64: {}", describe_json_error(&e))))?;
    let mut parsed = parse_json_value(&value, Format::ClaudeJsonBase64)?;
    if parsed.format == Format::ClaudeJson {
        parsed.format = Format::ClaudeJsonBase64;
    }
    Ok(parsed)
}

/// serde_json's message without any excerpt of the input.
fn describe_json_error(e: &serde_json::Error) -> String {
    format!("{:?} error at line {} column {}", e.classify(), e.line(), e.column()).to_lowercase()
}

fn parse_json_value(value: &Value, json_format: Format) -> Result<ParsedCredential, FormatError> {
    let obj = value.as_object().ok_or(FormatError::UnknownShape)?;
    if let Some(inner) = obj.get("claudeAiOauth") {
        let email =
            obj.get("oauthAccount").and_then(|a| a.get("emailAddress")).and_then(Value::as_str).map(str::to_owned);
        return claude_inner(inner).map(|credential| ParsedCredential { credential, format: json_format, email });
    }
    if obj.contains_key("accessToken") {
        return claude_inner(value).map(|credential| ParsedCredential { credential, format: json_format, email: None });
    }
    if let Some(inner) = obj.get("anthropic") {
        return openclaw_entry(inner).map(|(credential, email)| ParsedCredential {
            credential,
            format: Format::OpenclawOauth,
            email,
        });
    }
    if let Some(profiles) = obj.get("profiles").and_then(Value::as_object) {
        let entry = profiles
            .iter()
            .find(|(k, v)| v.get("provider").and_then(Value::as_str) == Some("anthropic") || k.starts_with("anthropic"))
            .map(|(_, v)| v)
            .ok_or(FormatError::Field("profiles.anthropic:*"))?;
        return openclaw_entry(entry).map(|(credential, email)| ParsedCredential {
            credential,
            format: Format::OpenclawProfiles,
            email,
        });
    }
    Err(FormatError::UnknownShape)
}

fn millis_to_time(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

fn number_field(v: &Value, key: &'static str) -> Result<i64, FormatError> {
    match v.get(key) {
        Some(Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)).ok_or(FormatError::Field(key)),
        Some(Value::String(s)) => s.trim().parse().map_err(|_| FormatError::Field(key)),
        Some(Value::Null) | None => Ok(0),
        _ => Err(FormatError::Field(key)),
    }
}

fn string_field(v: &Value, key: &'static str) -> Result<Option<String>, FormatError> {
    match v.get(key) {
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Null) | None => Ok(None),
        _ => Err(FormatError::Field(key)),
    }
}

fn scopes_field(v: &Value) -> Vec<String> {
    match v.get("scopes").or_else(|| v.get("scope")) {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

fn finish(
    access: Option<String>,
    refresh: Option<String>,
    expires_ms: i64,
    scopes: Vec<String>,
) -> Result<Credential, FormatError> {
    let access = access.unwrap_or_default();
    if access.trim().is_empty() || expires_ms <= 0 {
        return Err(FormatError::Blank);
    }
    let expires_at = millis_to_time(expires_ms).ok_or(FormatError::Field("expiresAt"))?;
    Ok(Credential {
        access_token: Secret::new(access),
        refresh_token: refresh.filter(|r| !r.trim().is_empty()).map(Secret::new),
        expires_at,
        scopes,
        subscription_type: None,
        rate_limit_tier: None,
        provider_data: None,
    })
}

fn claude_inner(v: &Value) -> Result<Credential, FormatError> {
    if !v.is_object() {
        return Err(FormatError::Field("claudeAiOauth"));
    }
    let access = string_field(v, "accessToken")?;
    let refresh = string_field(v, "refreshToken")?;
    let expires = number_field(v, "expiresAt")?;
    let mut c = finish(access, refresh, expires, scopes_field(v))?;
    c.subscription_type = string_field(v, "subscriptionType")?;
    c.rate_limit_tier = string_field(v, "rateLimitTier")?;
    Ok(c)
}

fn openclaw_entry(v: &Value) -> Result<(Credential, Option<String>), FormatError> {
    if !v.is_object() {
        return Err(FormatError::Field("anthropic"));
    }
    let access = string_field(v, "access")?.or(string_field(v, "token")?);
    let refresh = string_field(v, "refresh")?;
    let expires = number_field(v, "expires")?;
    let c = finish(access, refresh, expires, scopes_field(v))?;
    Ok((c, string_field(v, "email")?))
}

/// Errors writing a credential into an existing document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// The existing file is not a JSON object, so merging would destroy it.
    #[error("the existing file is not a JSON object ({0}); refusing to overwrite it. Fix or remove the file")]
    ExistingNotObject(String),
}

fn existing_object(existing: Option<&str>) -> Result<Map<String, Value>, RenderError> {
    match existing.map(str::trim) {
        None | Some("") => Ok(Map::new()),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(RenderError::ExistingNotObject("it holds a JSON value that is not an object".into())),
            Err(e) => Err(RenderError::ExistingNotObject(describe_json_error(&e))),
        },
    }
}

/// The inner object of Claude Code's file for `c`.
fn claude_fields(c: &Credential) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("accessToken".into(), json!(c.access_token.expose()));
    m.insert("refreshToken".into(), c.refresh_token.as_ref().map_or(Value::Null, |r| json!(r.expose())));
    m.insert("expiresAt".into(), json!(c.expires_at.timestamp_millis()));
    m.insert("scopes".into(), json!(c.scopes_for_writing()));
    if let Some(s) = &c.subscription_type {
        m.insert("subscriptionType".into(), json!(s));
    }
    if let Some(s) = &c.rate_limit_tier {
        m.insert("rateLimitTier".into(), json!(s));
    }
    m
}

/// Claude Code's `.credentials.json` with `c` in it, merged into `existing` so every other key
/// (top level and inside `claudeAiOauth`) survives. Scopes are always written.
pub fn render_claude_credentials(existing: Option<&str>, c: &Credential) -> Result<String, RenderError> {
    let mut root = existing_object(existing)?;
    let mut inner = match root.remove("claudeAiOauth") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    for (k, v) in claude_fields(c) {
        inner.insert(k, v);
    }
    if c.refresh_token.is_none() {
        inner.remove("refreshToken");
    }
    root.insert("claudeAiOauth".into(), Value::Object(inner));
    Ok(serde_json::to_string(&Value::Object(root)).unwrap_or_default())
}

/// OpenClaw layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenclawLayout {
    /// `oauth.json`: `{"anthropic":{"access","refresh","expires","scopes"}}`.
    Oauth,
    /// `auth-profiles.json`: `{"version":1,"profiles":{"anthropic:default":{…}}}`.
    AuthProfiles,
}

/// OpenClaw's file with `c` in it, merged into `existing`.
pub fn render_openclaw(existing: Option<&str>, c: &Credential, layout: OpenclawLayout) -> Result<String, RenderError> {
    let mut root = existing_object(existing)?;
    let fill = |entry: &mut Map<String, Value>| {
        entry.insert("access".into(), json!(c.access_token.expose()));
        match &c.refresh_token {
            Some(r) => entry.insert("refresh".into(), json!(r.expose())),
            None => entry.remove("refresh"),
        };
        entry.insert("expires".into(), json!(c.expires_at.timestamp_millis()));
        entry.insert("scopes".into(), json!(c.scopes_for_writing()));
    };
    match layout {
        OpenclawLayout::Oauth => {
            let mut entry = match root.remove("anthropic") {
                Some(Value::Object(m)) => m,
                _ => Map::new(),
            };
            fill(&mut entry);
            root.insert("anthropic".into(), Value::Object(entry));
        }
        OpenclawLayout::AuthProfiles => {
            root.entry("version").or_insert(json!(1));
            let mut profiles = match root.remove("profiles") {
                Some(Value::Object(m)) => m,
                _ => Map::new(),
            };
            let key = profiles
                .iter()
                .find(|(k, v)| {
                    v.get("provider").and_then(Value::as_str) == Some("anthropic") || k.starts_with("anthropic")
                })
                .map(|(k, _)| k.clone())
                .unwrap_or_else(|| "anthropic:default".into());
            let mut entry = match profiles.remove(&key) {
                Some(Value::Object(m)) => m,
                _ => Map::new(),
            };
            entry.insert("type".into(), json!("oauth"));
            entry.insert("provider".into(), json!("anthropic"));
            fill(&mut entry);
            profiles.insert(key, Value::Object(entry));
            root.insert("profiles".into(), Value::Object(profiles));
        }
    }
    Ok(serde_json::to_string_pretty(&Value::Object(root)).unwrap_or_default())
}

/// The credential as Claude Code JSON, base64-encoded (seed 001's Infisical format).
pub fn claude_json_base64(c: &Credential) -> String {
    let doc = json!({ "claudeAiOauth": Value::Object(claude_fields(c)) });
    base64::engine::general_purpose::STANDARD.encode(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sk-ant-oat01-accessAAAA";
    const R: &str = "sk-ant-ort01-refreshRRRR";

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn claude_doc() -> String {
        format!(
            r#"{{"claudeAiOauth":{{"accessToken":"{A}","refreshToken":"{R}","expiresAt":1800003600000,"scopes":["user:inference","user:profile"],"subscriptionType":"max","rateLimitTier":"default_claude_max_20x","futureKey":7}},"otherTop":{{"x":1}}}}"#
        )
    }

    #[test]
    fn claude_json() {
        let p = parse_credential(&claude_doc(), now()).unwrap();
        assert_eq!(p.format, Format::ClaudeJson);
        assert_eq!(p.credential.access_token.expose(), A);
        assert_eq!(p.credential.refresh_token.as_ref().unwrap().expose(), R);
        assert_eq!(p.credential.expires_at.timestamp_millis(), 1_800_003_600_000);
        assert_eq!(p.credential.subscription_type.as_deref(), Some("max"));
    }

    #[test]
    fn base64_forms() {
        for engine in [&base64::engine::general_purpose::STANDARD, &base64::engine::general_purpose::URL_SAFE_NO_PAD] {
            let b = engine.encode(claude_doc());
            let wrapped: String =
                b.as_bytes().chunks(60).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join("\n");
            let p = parse_credential(&wrapped, now()).unwrap();
            assert_eq!(p.format, Format::ClaudeJsonBase64);
            assert_eq!(p.credential.access_token.expose(), A);
        }
    }

    #[test]
    fn openclaw_layouts() {
        let oauth = format!(r#"{{"anthropic":{{"access":"{A}","refresh":"{R}","expires":1800003600000}}}}"#);
        let p = parse_credential(&oauth, now()).unwrap();
        assert_eq!(p.format, Format::OpenclawOauth);
        assert!(p.credential.refresh_token.is_some());
        let profiles = format!(
            r#"{{"version":1,"profiles":{{"anthropic:default":{{"type":"oauth","provider":"anthropic","access":"{A}","refresh":"{R}","expires":1800003600000}}}}}}"#
        );
        let p = parse_credential(&profiles, now()).unwrap();
        assert_eq!(p.format, Format::OpenclawProfiles);
    }

    #[test]
    fn bare_token_lives_a_year_without_refresh() {
        let p = parse_credential(&format!("{A}\n"), now()).unwrap();
        assert_eq!(p.format, Format::BareToken);
        let k = parse_credential("sk-ant-api03-KEYKEY", now()).unwrap();
        assert_eq!(k.format, Format::ApiKey);
        assert!(!k.credential.is_refreshable());
        assert_eq!(k.credential.expires_at, api_key_expiry());
        assert!(p.credential.refresh_token.is_none());
        assert_eq!(p.credential.expires_at, now() + Duration::days(365));
    }

    #[test]
    fn refusals_never_quote_the_input() {
        let cases = [
            (String::new(), "empty"),
            (r#"{"claudeAiOauth":{"accessToken":"sk-ant-oat01-SECRETX","#.to_owned(), "cut off"),
            ("bm90IGpzb24=".to_owned(), "not to a JSON object"),
            ("!!!sk-ant-oat01-SECRETX!!!".to_owned(), "base64"),
            (r#"{"claudeAiOauth":{"accessToken":"","refreshToken":"","expiresAt":0}}"#.to_owned(), "blank stub"),
            (r#"{"hello":"world"}"#.to_owned(), "claudeAiOauth"),
            ("sk-ant-ort01-SECRETX".to_owned(), "refresh token alone"),
        ];
        for (input, expect) in cases {
            let e = parse_credential(&input, now()).unwrap_err().to_string();
            assert!(e.contains(expect), "{input:?} gave {e}");
            assert!(!e.contains("SECRETX"), "{e}");
        }
    }

    #[test]
    fn claude_render_preserves_unknown_keys_and_writes_scopes() {
        let mut c = parse_credential(&claude_doc(), now()).unwrap().credential;
        c.access_token = Secret::new("sk-ant-oat01-new");
        c.scopes.clear();
        let out = render_claude_credentials(Some(&claude_doc()), &c).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["claudeAiOauth"]["accessToken"], "sk-ant-oat01-new");
        assert_eq!(v["claudeAiOauth"]["futureKey"], 7);
        assert_eq!(v["otherTop"]["x"], 1);
        assert!(v["claudeAiOauth"]["scopes"].as_array().unwrap().iter().any(|s| s == "user:inference"));
        let back = parse_credential(&out, now()).unwrap().credential;
        assert_eq!(back.access_token.expose(), "sk-ant-oat01-new");
    }

    #[test]
    fn render_refuses_to_clobber_a_non_object() {
        let c = parse_credential(&claude_doc(), now()).unwrap().credential;
        assert!(render_claude_credentials(Some("[1,2]"), &c).is_err());
        assert!(render_claude_credentials(Some("{broken"), &c).is_err());
        assert!(render_claude_credentials(None, &c).is_ok());
    }

    #[test]
    fn openclaw_render_round_trips() {
        let c = parse_credential(&claude_doc(), now()).unwrap().credential;
        for layout in [OpenclawLayout::Oauth, OpenclawLayout::AuthProfiles] {
            let out = render_openclaw(Some(r#"{"keep":true}"#), &c, layout).unwrap();
            assert!(out.contains("\"keep\": true"));
            let back = parse_credential(&out, now()).unwrap();
            assert_eq!(back.credential.access_token.expose(), A);
        }
    }

    #[test]
    fn base64_json_round_trips() {
        let c = parse_credential(&claude_doc(), now()).unwrap().credential;
        let b = claude_json_base64(&c);
        assert_eq!(parse_credential(&b, now()).unwrap().credential.access_token.expose(), A);
    }
}
