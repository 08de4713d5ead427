//! The mock's memory: issued tokens, authorization codes, queued faults and counters, all behind
//! one mutex so that a refresh-token spend is atomic (two concurrent requests with the same
//! refresh token give exactly one success, as at the real provider).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use rand::distributions::Alphanumeric;
use rand::Rng as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokenkeeper_core::SharedClock;

use crate::{Counts, Fault, MessagesRequestSummary, TokenRequestSummary, CLIENT_ID};

/// How long an authorization code may wait before it is exchanged.
pub(crate) const CODE_LIFETIME: chrono::Duration = chrono::Duration::minutes(10);

/// Scopes a login gets when nothing asks for others (Claude Code's set).
pub(crate) const DEFAULT_SCOPES: &[&str] = &["org:create_api_key", "user:profile", "user:inference"];

/// Where a fault applies: the token endpoint or the Messages API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Token,
    Messages,
}

impl Fault {
    pub(crate) fn target(&self) -> Target {
        match self {
            Fault::Messages401
            | Fault::Messages429 { .. }
            | Fault::Messages429Bare
            | Fault::Messages529
            | Fault::Messages500
            | Fault::StreamCut { .. }
            | Fault::SlowStream { .. } => Target::Messages,
            _ => Target::Token,
        }
    }
}

#[derive(Debug, Clone)]
struct AccountInfo {
    uuid: String,
    org_uuid: String,
    org_name: String,
}

#[derive(Debug, Clone)]
struct AccessEntry {
    email: String,
    expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefreshStatus {
    Live,
    Spent,
    Revoked,
}

#[derive(Debug, Clone)]
struct RefreshEntry {
    email: String,
    scopes: Vec<String>,
    status: RefreshStatus,
}

#[derive(Debug, Clone)]
struct CodeEntry {
    email: String,
    state: String,
    redirect_uri: String,
    challenge: String,
    scopes: Vec<String>,
    created_at: DateTime<Utc>,
    used: bool,
}

/// A freshly issued token pair, with what the token endpoint says about it.
#[derive(Clone)]
pub(crate) struct Pair {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in: u64,
    pub expires_at: DateTime<Utc>,
    pub scopes: Vec<String>,
    pub email: String,
}

/// A JSON error answer of the token endpoint: status, `error`, `error_description`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OAuthError {
    pub status: u16,
    pub error: &'static str,
    pub description: String,
}

impl OAuthError {
    fn new(status: u16, error: &'static str, description: impl Into<String>) -> Self {
        Self { status, error, description: description.into() }
    }

    pub(crate) fn body(&self) -> Value {
        json!({ "error": self.error, "error_description": self.description })
    }
}

/// The fields a token request may carry; all optional so that a missing one gets a precise
/// `invalid_request` instead of a serde message.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct TokenRequest {
    pub grant_type: Option<String>,
    pub refresh_token: Option<String>,
    pub client_id: Option<String>,
    pub scope: Option<String>,
    pub code: Option<String>,
    pub state: Option<String>,
    pub redirect_uri: Option<String>,
    pub code_verifier: Option<String>,
}

pub(crate) struct State {
    pub clock: SharedClock,
    pub access_lifetime: Duration,
    accounts: HashMap<String, AccountInfo>,
    access: HashMap<String, AccessEntry>,
    refresh: HashMap<String, RefreshEntry>,
    codes: HashMap<String, CodeEntry>,
    faults: VecDeque<Fault>,
    pub persistent: Option<Fault>,
    pub counts: Counts,
    pub last_token_request: Option<TokenRequestSummary>,
    pub last_messages_request: Option<MessagesRequestSummary>,
    /// Faults queued for one account (by email, or API key label).
    pub account_faults: HashMap<String, VecDeque<Fault>>,
    /// Faults applied to every request of one account until cleared.
    pub account_persistent: HashMap<String, Fault>,
    /// 5-hour and 7-day utilisation reported per account (0..=1).
    pub utilization: HashMap<String, (f64, f64)>,
    /// API keys issued (`sk-ant-api03-…`) and their labels.
    pub api_keys: HashMap<String, String>,
    /// Every API request (`/v1/*` but the token endpoint), in order.
    pub recorded: Vec<crate::RecordedRequest>,
    /// The Codex, Google and generic token endpoints.
    pub shapes: crate::shapes::Shapes,
}

pub(crate) fn random_string(len: usize) -> String {
    rand::thread_rng().sample_iter(&Alphanumeric).take(len).map(char::from).collect()
}

fn split_scopes(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

/// base64url-no-pad of SHA-256, the PKCE S256 transform.
pub(crate) fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

impl State {
    pub(crate) fn new(clock: SharedClock) -> Self {
        Self {
            clock,
            access_lifetime: Duration::from_secs(8 * 3600),
            accounts: HashMap::new(),
            access: HashMap::new(),
            refresh: HashMap::new(),
            codes: HashMap::new(),
            faults: VecDeque::new(),
            persistent: None,
            counts: Counts::default(),
            last_token_request: None,
            last_messages_request: None,
            account_faults: HashMap::new(),
            account_persistent: HashMap::new(),
            utilization: HashMap::new(),
            api_keys: HashMap::new(),
            recorded: Vec::new(),
            shapes: crate::shapes::Shapes::new(),
        }
    }

    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub(crate) fn push_fault(&mut self, fault: Fault) {
        self.faults.push_back(fault);
    }

    /// Takes the first queued fault for `target` (FIFO), else the persistent one if it applies.
    /// Counts it as served.
    pub(crate) fn take_fault(&mut self, target: Target) -> Option<Fault> {
        let queued = self.faults.iter().position(|f| f.target() == target).and_then(|i| self.faults.remove(i));
        let fault = queued.or_else(|| self.persistent.clone().filter(|f| f.target() == target));
        if fault.is_some() {
            self.counts.faults_served += 1;
        }
        fault
    }

    /// The fault for a Messages request of `who`: queued global ones first, then the
    /// account's queued, then the account's persistent, then the global persistent one.
    pub(crate) fn take_api_fault(&mut self, who: Option<&str>) -> Option<Fault> {
        let queued =
            self.faults.iter().position(|f| f.target() == Target::Messages).and_then(|i| self.faults.remove(i));
        let fault = queued
            .or_else(|| who.and_then(|w| self.account_faults.get_mut(w).and_then(VecDeque::pop_front)))
            .or_else(|| who.and_then(|w| self.account_persistent.get(w).cloned()))
            .or_else(|| self.persistent.clone().filter(|f| f.target() == Target::Messages));
        if fault.is_some() {
            self.counts.faults_served += 1;
        }
        fault
    }

    fn account(&mut self, email: &str) -> AccountInfo {
        self.accounts
            .entry(email.to_owned())
            .or_insert_with(|| AccountInfo {
                uuid: uuid::Uuid::new_v4().to_string(),
                org_uuid: uuid::Uuid::new_v4().to_string(),
                org_name: format!("{email}'s Organization"),
            })
            .clone()
    }

    fn issue_access(&mut self, email: &str) -> (String, u64, DateTime<Utc>) {
        let token = format!("sk-ant-oat01-{}", random_string(48));
        let expires_in = self.access_lifetime.as_secs();
        let lifetime = tokenkeeper_core::clock::chrono_duration(self.access_lifetime);
        let expires_at = self.now() + lifetime;
        self.access.insert(token.clone(), AccessEntry { email: email.to_owned(), expires_at });
        (token, expires_in, expires_at)
    }

    /// Issues a new access token and, unless `with_refresh` is false, a new live refresh token.
    pub(crate) fn issue_pair(&mut self, email: &str, scopes: Vec<String>, with_refresh: bool) -> Pair {
        let (access_token, expires_in, expires_at) = self.issue_access(email);
        let refresh_token = with_refresh.then(|| {
            let token = format!("sk-ant-ort01-{}", random_string(48));
            self.refresh.insert(
                token.clone(),
                RefreshEntry { email: email.to_owned(), scopes: scopes.clone(), status: RefreshStatus::Live },
            );
            token
        });
        Pair { access_token, refresh_token, expires_in, expires_at, scopes, email: email.to_owned() }
    }

    pub(crate) fn default_scopes() -> Vec<String> {
        DEFAULT_SCOPES.iter().map(|s| (*s).to_owned()).collect()
    }

    /// The token endpoint's JSON answer for a pair.
    pub(crate) fn grant_body(&mut self, pair: &Pair) -> Value {
        let account = self.account(&pair.email);
        let mut body = json!({
            "token_type": "Bearer",
            "access_token": pair.access_token,
            "expires_in": pair.expires_in,
            "scope": pair.scopes.join(" "),
            "account": { "uuid": account.uuid, "email_address": pair.email },
            "organization": { "uuid": account.org_uuid, "name": account.org_name },
        });
        if let (Some(rt), Some(obj)) = (&pair.refresh_token, body.as_object_mut()) {
            obj.insert("refresh_token".into(), Value::String(rt.clone()));
        }
        body
    }

    pub(crate) fn revoke(&mut self, refresh_token: &str) {
        if let Some(entry) = self.refresh.get_mut(refresh_token) {
            entry.status = RefreshStatus::Revoked;
        }
    }

    /// Whether `token` is a known access token that has not expired by the mock's clock.
    pub(crate) fn access_valid(&self, token: &str) -> bool {
        self.access.get(token).is_some_and(|e| e.expires_at > self.now())
    }

    /// The email of a valid access token.
    pub(crate) fn access_email(&self, token: &str) -> Option<String> {
        self.access.get(token).filter(|e| e.expires_at > self.now()).map(|e| e.email.clone())
    }

    /// Registers an authorization code for a checked authorize request.
    pub(crate) fn register_code(
        &mut self,
        email: &str,
        state: &str,
        redirect_uri: &str,
        challenge: &str,
        scopes: Vec<String>,
    ) -> String {
        let code = random_string(40);
        let entry = CodeEntry {
            email: email.to_owned(),
            state: state.to_owned(),
            redirect_uri: redirect_uri.to_owned(),
            challenge: challenge.to_owned(),
            scopes,
            created_at: self.now(),
            used: false,
        };
        self.codes.insert(code.clone(), entry);
        code
    }

    /// Handles a parsed token request (after faults). `omit_refresh` answers a refresh without a
    /// new refresh token, leaving the old one live (as a provider that does not rotate would).
    pub(crate) fn handle_token(&mut self, req: TokenRequest, omit_refresh: bool) -> Result<Value, OAuthError> {
        self.last_token_request = Some(TokenRequestSummary {
            grant_type: req.grant_type.clone(),
            client_id: req.client_id.clone(),
            scope: req.scope.clone(),
            redirect_uri: req.redirect_uri.clone(),
        });
        match req.grant_type.as_deref() {
            Some("refresh_token") => self.refresh_grant(req, omit_refresh),
            Some("authorization_code") => {
                let result = self.code_grant(req);
                match result {
                    Ok(_) => self.counts.exchange_ok += 1,
                    Err(_) => self.counts.exchange_rejected += 1,
                }
                result
            }
            Some(other) => {
                Err(OAuthError::new(400, "unsupported_grant_type", format!("grant_type {other:?} is not supported")))
            }
            None => Err(OAuthError::new(400, "invalid_request", "grant_type is required")),
        }
    }

    fn check_client(client_id: Option<&str>) -> Result<(), OAuthError> {
        match client_id {
            Some(CLIENT_ID) => Ok(()),
            Some(_) => Err(OAuthError::new(400, "invalid_client", "Unknown client_id")),
            None => Err(OAuthError::new(400, "invalid_request", "client_id is required")),
        }
    }

    fn refresh_grant(&mut self, req: TokenRequest, omit_refresh: bool) -> Result<Value, OAuthError> {
        let Some(refresh_token) = req.refresh_token.as_deref() else {
            return Err(OAuthError::new(400, "invalid_request", "refresh_token is required"));
        };
        Self::check_client(req.client_id.as_deref())?;
        let entry = match self.refresh.get_mut(refresh_token) {
            Some(entry) if entry.status == RefreshStatus::Live => entry,
            _ => {
                self.counts.refresh_invalid_grant += 1;
                return Err(OAuthError::new(400, "invalid_grant", "Refresh token not found or invalid"));
            }
        };
        if !omit_refresh {
            entry.status = RefreshStatus::Spent;
        }
        let email = entry.email.clone();
        let scopes = match req.scope.as_deref().map(split_scopes) {
            Some(asked) if !asked.is_empty() => asked,
            _ => entry.scopes.clone(),
        };
        let pair = self.issue_pair(&email, scopes, !omit_refresh);
        self.counts.refresh_ok += 1;
        Ok(self.grant_body(&pair))
    }

    fn code_grant(&mut self, req: TokenRequest) -> Result<Value, OAuthError> {
        let invalid = |what: &str| OAuthError::new(400, "invalid_grant", what);
        let missing = |what: &str| OAuthError::new(400, "invalid_request", format!("{what} is required"));
        let code = req.code.as_deref().ok_or_else(|| missing("code"))?;
        let state = req.state.as_deref().ok_or_else(|| missing("state"))?;
        let redirect_uri = req.redirect_uri.as_deref().ok_or_else(|| missing("redirect_uri"))?;
        let verifier = req.code_verifier.as_deref().ok_or_else(|| missing("code_verifier"))?;
        Self::check_client(req.client_id.as_deref())?;
        let now = self.now();
        let entry = self.codes.get(code).ok_or_else(|| invalid("Invalid authorization code"))?;
        if entry.used {
            return Err(invalid("Authorization code already used"));
        }
        if now - entry.created_at > CODE_LIFETIME {
            return Err(invalid("Authorization code expired"));
        }
        if entry.state != state {
            return Err(invalid("state does not match the authorize request"));
        }
        if entry.redirect_uri != redirect_uri {
            return Err(invalid("redirect_uri does not match the authorize request"));
        }
        if s256(verifier) != entry.challenge {
            return Err(invalid("code_verifier does not match code_challenge"));
        }
        let (email, scopes) = (entry.email.clone(), entry.scopes.clone());
        if let Some(entry) = self.codes.get_mut(code) {
            entry.used = true;
        }
        let pair = self.issue_pair(&email, scopes, true);
        Ok(self.grant_body(&pair))
    }
}
