//! The provider seam, end to end: a provider that exists only in this file (its own
//! `Provider` and `NativeFile`, its own token endpoint on loopback) is registered with
//! `Providers::with`, imported from its CLI's file, refreshed by racing keepers of two
//! "processes" (exactly one request per rotation at its endpoint), written back to its file
//! through a `native` binding with its unknown keys kept, and never regressed either way. No
//! keeper, store or sync code knows it: they hold a `Providers` and an account's provider id.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokenkeeper_core::formats::{Format, ParsedCredential};
use tokenkeeper_core::store::CredentialChange;
use tokenkeeper_core::{Binding, BindingKind, Clock, Config, Credential, ManualClock, Mode, Secret, Store};
use tokenkeeper_keeper::testing::{backend_of, open_keeper_with, start};
use tokenkeeper_keeper::{Ingest, Keeper, KeeperError, RefreshPolicy, RefreshResult};
use tokenkeeper_provider::{
    NativeCredential, NativeFile, NativeFileError, Provider, ProviderError, Providers, TokenGrant, TokenOutcome,
};

/// The id of the test's provider: nothing outside this file spells it.
const ACME: &str = "acme-test-cli";

/// Lifetime of an access token of the endpoint.
const LIFETIME: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------------------------
// The provider's token endpoint: single-use rotating refresh tokens, counted.

#[derive(Debug, Default)]
struct Endpoint {
    /// The one refresh token that works now.
    current: String,
    /// Rotations so far.
    rotations: u64,
    /// Requests answered with new tokens.
    granted: u64,
    /// Requests with a spent or unknown refresh token (a logged-out login).
    rejected: u64,
}

type Shared = Arc<Mutex<Endpoint>>;

async fn token(State(state): State<Shared>, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    let mut e = state.lock().unwrap();
    if body["grant_type"] != "refresh_token" || body["refresh_token"] != e.current.as_str() {
        e.rejected += 1;
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_grant"})));
    }
    e.rotations += 1;
    e.granted += 1;
    let n = e.rotations;
    e.current = format!("acme-refresh-{n}");
    (
        StatusCode::OK,
        Json(json!({
            "access_token": format!("acme-access-{n}"),
            "refresh_token": e.current,
            "expires_in": LIFETIME.as_secs(),
            "session": format!("session-{n}"),
        })),
    )
}

async fn start_endpoint(first_refresh: &str) -> (String, Shared, tokio::task::JoinHandle<()>) {
    let state: Shared = Arc::new(Mutex::new(Endpoint { current: first_refresh.to_owned(), ..Default::default() }));
    let app = Router::new().route("/token", post(token)).with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, state, server)
}

// ---------------------------------------------------------------------------------------------
// The provider and its CLI's file: `{"acme": {"token", "renew", "until" (s), "session"}, …}`.

#[derive(Debug)]
struct Acme {
    http: reqwest::Client,
    token_url: String,
    file: AcmeFile,
}

#[async_trait::async_trait]
impl Provider for Acme {
    fn id(&self) -> &str {
        ACME
    }

    fn display_name(&self) -> &str {
        "Acme CLI"
    }

    async fn refresh(&self, credential: &Credential, _now: DateTime<Utc>) -> TokenOutcome {
        let Some(refresh) = &credential.refresh_token else {
            return TokenOutcome::Rejected { reason: "no refresh token".into() };
        };
        let body = json!({"grant_type": "refresh_token", "refresh_token": refresh.expose()});
        let answer = match self.http.post(&self.token_url).json(&body).send().await {
            Ok(a) => a,
            Err(e) => return TokenOutcome::Transient { reason: e.to_string() },
        };
        let status = answer.status();
        let v: Value = answer.json().await.unwrap_or(Value::Null);
        if status == reqwest::StatusCode::BAD_REQUEST && v["error"] == "invalid_grant" {
            return TokenOutcome::Rejected { reason: "HTTP 400: invalid_grant".into() };
        }
        if !status.is_success() {
            return TokenOutcome::Transient { reason: format!("HTTP {status}") };
        }
        TokenOutcome::Success(TokenGrant {
            access_token: Secret::new(v["access_token"].as_str().unwrap_or_default()),
            refresh_token: v["refresh_token"].as_str().map(Secret::new),
            expires_in: Duration::from_secs(v["expires_in"].as_u64().unwrap_or(60)),
            scopes: Vec::new(),
            email: None,
            organization: None,
            account_uuid: None,
            id_token: None,
            provider_data: Some(Secret::new(json!({"session": v["session"]}).to_string())),
        })
    }

    async fn probe(&self) -> Result<Duration, ProviderError> {
        Ok(Duration::ZERO)
    }

    fn native_file(&self) -> Option<&dyn NativeFile> {
        Some(&self.file)
    }

    fn exec_env(&self, credential: &Credential) -> Vec<(String, Secret)> {
        vec![("ACME_TOKEN".to_owned(), credential.access_token.clone())]
    }
}

#[derive(Debug)]
struct AcmeFile;

const FILE: &str = "Acme creds.json";

impl NativeFile for AcmeFile {
    fn describe(&self) -> &str {
        FILE
    }

    fn default_path(&self, home: &Path, _env: &dyn Fn(&str) -> Option<String>) -> std::path::PathBuf {
        home.join(".acme/creds.json")
    }

    fn detect(&self, doc: &Value) -> bool {
        doc.get("acme").is_some_and(Value::is_object)
    }

    fn parse(&self, text: &str, _now: DateTime<Utc>) -> Result<NativeCredential, NativeFileError> {
        let doc: Value = serde_json::from_str(text)
            .map_err(|e| NativeFileError::BadJson { file: FILE.into(), detail: format!("line {}", e.line()) })?;
        let a = &doc["acme"];
        let field = |field| NativeFileError::Field { file: FILE.into(), field };
        let token = a["token"].as_str().ok_or_else(|| field("acme.token"))?;
        let until = a["until"].as_i64().ok_or_else(|| field("acme.until"))?;
        if token.is_empty() || until <= 0 {
            return Err(NativeFileError::Blank { file: FILE.into() });
        }
        let credential = Credential {
            access_token: Secret::new(token),
            refresh_token: a["renew"].as_str().map(Secret::new),
            expires_at: DateTime::from_timestamp(until, 0).ok_or_else(|| field("acme.until"))?,
            scopes: Vec::new(),
            subscription_type: None,
            rate_limit_tier: None,
            provider_data: a.get("session").map(|s| Secret::new(json!({"session": s}).to_string())),
        };
        Ok(NativeCredential { credential, email: a["email"].as_str().map(str::to_owned) })
    }

    fn render(
        &self,
        existing: Option<&str>,
        credential: &Credential,
        _now: DateTime<Utc>,
    ) -> Result<String, NativeFileError> {
        let mut doc: Value = match existing {
            Some(t) => serde_json::from_str(t).map_err(|_| NativeFileError::ExistingNotJson { file: FILE.into() })?,
            None => json!({}),
        };
        if !doc["acme"].is_object() {
            doc["acme"] = json!({});
        }
        let a = &mut doc["acme"];
        a["token"] = json!(credential.access_token.expose());
        a["renew"] = json!(credential.refresh_token.as_ref().map(Secret::expose));
        a["until"] = json!(credential.expires_at.timestamp());
        if let Some(d) = &credential.provider_data {
            let d: Value = serde_json::from_str(d.expose()).unwrap_or(Value::Null);
            a["session"] = d["session"].clone();
        }
        Ok(doc.to_string())
    }
}

// ---------------------------------------------------------------------------------------------

struct World {
    _dir: tempfile::TempDir,
    clock: ManualClock,
    endpoint: Shared,
    _server: tokio::task::JoinHandle<()>,
    keepers: Vec<Arc<Keeper>>,
    store: Arc<tokenkeeper_store::SqliteStore>,
    file: std::path::PathBuf,
    provider: Arc<Acme>,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(start());
    let (token_url, endpoint, server) = start_endpoint("acme-refresh-0").await;
    let provider = Arc::new(Acme { http: reqwest::Client::new(), token_url, file: AcmeFile });
    let mut config = Config::default();
    config.keeper.max_attempts_per_hour = 1000;
    let config = Arc::new(config);
    let providers = Providers::from_config(&config).unwrap().with(provider.clone());
    let (store, keeper) =
        open_keeper_with(dir.path(), config.clone(), Arc::new(clock.clone()), providers.clone()).await;
    // A second process on the same data directory: its own keeper, locks and feed.
    let data = dir.path().join("data");
    let other = Arc::new(
        Keeper::with_providers(backend_of(&store, &data), config, &data, Arc::new(clock.clone()), providers).unwrap(),
    );
    let file = dir.path().join("home/.acme/creds.json");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    World { _dir: dir, clock, endpoint, _server: server, keepers: vec![keeper, other], store, file, provider }
}

impl World {
    fn on_disk(&self) -> Credential {
        AcmeFile.parse(&std::fs::read_to_string(&self.file).unwrap(), self.clock.now()).unwrap().credential
    }

    fn counts(&self) -> (u64, u64) {
        let e = self.endpoint.lock().unwrap();
        (e.granted, e.rejected)
    }

    /// Imports the file as `tokenkeeper import` does with a shape no Anthropic format claims:
    /// the registry's detection finds the provider, its `NativeFile` reads it, and the account
    /// is bound to it as `native`.
    async fn import(&self, name: &str) -> tokenkeeper_core::Account {
        let keeper = &self.keepers[0];
        let text = std::fs::read_to_string(&self.file).unwrap();
        let doc: Value = serde_json::from_str(&text).unwrap();
        let provider = keeper.providers().detect_native(&doc).expect("the provider claims its file");
        assert_eq!(provider.id(), ACME);
        let read = provider.native_file().unwrap().parse(&text, self.clock.now()).unwrap();
        keeper
            .ingest(Ingest {
                account: Some(name.to_owned()),
                parsed: ParsedCredential { credential: read.credential, format: Format::Native, email: read.email },
                mode: Some(Mode::Own),
                binding: Some(Binding { kind: BindingKind::Native, path: self.file.clone() }),
                change: CredentialChange::Imported,
                organization: None,
                provider: Some(provider.id().to_owned()),
            })
            .await
            .unwrap()
            .account()
            .clone()
    }

    /// `tasks` refreshes per keeper, all at once, each only if due.
    async fn race(&self, tasks: usize) -> Vec<RefreshResult> {
        let mut handles = Vec::new();
        for keeper in &self.keepers {
            for _ in 0..tasks {
                let k = keeper.clone();
                handles.push(tokio::spawn(async move { k.refresh("acme", RefreshPolicy::IfWithin(k.lead())).await }));
            }
        }
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap().unwrap());
        }
        out
    }
}

fn session_of(c: &Credential) -> String {
    let d: Value = serde_json::from_str(c.provider_data.as_ref().expect("provider data").expose()).unwrap();
    d["session"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_defined_only_in_a_test_works_end_to_end() {
    let w = world().await;
    let expires = w.clock.now() + chrono::Duration::minutes(50);
    let first = json!({
        "acme": {"token": "acme-access-0", "renew": "acme-refresh-0", "until": expires.timestamp(),
                 "session": "session-0", "theme": "dark"},
        "telemetry": {"enabled": false}
    });
    std::fs::write(&w.file, first.to_string()).unwrap();

    // Import: detected, read and bound through the provider; its data sealed with the tokens.
    let a = w.import("acme").await;
    assert_eq!((a.provider.as_str(), a.binding.as_ref().map(|b| b.kind)), (ACME, Some(BindingKind::Native)));
    assert_eq!(session_of(&w.store.get_account("acme").await.unwrap().unwrap().credential), "session-0");

    // Rotations under racing refreshers of two processes: exactly one request each.
    let lead = w.keepers[0].lead();
    for round in 1..=3u64 {
        // Into the lead time of the current token.
        let current = w.store.get_account("acme").await.unwrap().unwrap();
        w.clock.set(
            current.credential.expires_at - chrono::Duration::from_std(lead).unwrap() + chrono::Duration::seconds(1),
        );
        let results = w.race(6).await;
        let refreshed = results.iter().filter(|r| matches!(r, RefreshResult::Refreshed(_))).count();
        assert_eq!(refreshed, 1, "round {round}: one caller spends the refresh token, the rest adopt");
        assert_eq!(w.counts(), (round, 0), "round {round}: one request per rotation, nobody logged out");
        let stored = w.store.get_account("acme").await.unwrap().unwrap();
        assert_eq!(stored.credential.access_token.expose(), format!("acme-access-{round}"));
        assert_eq!(session_of(&stored.credential), format!("session-{round}"), "the grant's provider data is stored");
        // The bound file got it, through the provider's own format, its other keys kept.
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&w.file).unwrap()).unwrap();
        assert_eq!(doc["acme"]["token"], format!("acme-access-{round}"));
        assert_eq!(doc["acme"]["session"], format!("session-{round}"));
        assert_eq!((doc["acme"]["theme"].as_str(), doc["telemetry"]["enabled"].as_bool()), (Some("dark"), Some(false)));
    }

    // Never regress the file: an older credential written there is repaired, and the store
    // keeps what it has.
    let stored = w.store.get_account("acme").await.unwrap().unwrap();
    std::fs::write(&w.file, first.to_string()).unwrap();
    let after = w.keepers[1].sync_bound("acme").await.unwrap();
    assert_eq!(after.version, stored.version, "an older file must not replace the stored credential");
    assert_eq!(w.on_disk().access_token, stored.credential.access_token, "the older file was not repaired");

    // Never regress the store: importing that older credential again is refused.
    let text = first.to_string();
    let old = AcmeFile.parse(&text, w.clock.now()).unwrap();
    let refused = w.keepers[0]
        .ingest(Ingest {
            account: Some("acme".into()),
            parsed: ParsedCredential { credential: old.credential, format: Format::Native, email: None },
            mode: None,
            binding: None,
            change: CredentialChange::Imported,
            organization: None,
            provider: Some(ACME.into()),
        })
        .await;
    assert!(matches!(refused, Err(KeeperError::Refused { .. })), "{refused:?}");

    // The CLI refreshes by itself and writes its file: the keeper adopts it (no request of its
    // own), and its next rotation spends the CLI's refresh token, logging nobody out.
    let theirs = match w.provider.refresh(&stored.credential, w.clock.now()).await {
        TokenOutcome::Success(g) => g.into_credential(w.clock.now(), Some(&stored.credential)),
        other => panic!("the CLI's own refresh failed: {other:?}"),
    };
    let doc = AcmeFile.render(Some(&std::fs::read_to_string(&w.file).unwrap()), &theirs, w.clock.now()).unwrap();
    std::fs::write(&w.file, doc).unwrap();
    let adopted = w.keepers[0].sync_bound("acme").await.unwrap();
    assert_eq!(adopted.credential.access_token, theirs.access_token);
    assert_eq!(session_of(&adopted.credential), "session-4", "provider data comes with an adopted credential");
    w.clock
        .set(adopted.credential.expires_at - chrono::Duration::from_std(lead).unwrap() + chrono::Duration::seconds(1));
    let results = w.race(3).await;
    assert_eq!(results.iter().filter(|r| matches!(r, RefreshResult::Refreshed(_))).count(), 1);
    assert_eq!(w.counts(), (5, 0), "four rotations of ours and one of the CLI's, nobody logged out");
    assert_eq!(w.on_disk().access_token.expose(), "acme-access-5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_sink_writes_the_provider_file_and_never_regresses_it() {
    let w = world().await;
    let until = (w.clock.now() + chrono::Duration::hours(1)).timestamp();
    std::fs::write(
        &w.file,
        json!({"acme": {"token": "acme-access-0", "renew": "acme-refresh-0", "until": until, "session": "s0"}})
            .to_string(),
    )
    .unwrap();
    let account = w.import("acme").await;
    let out = w.file.with_file_name("mounted-creds.json");
    std::fs::write(&out, json!({"acme": {"theme": "light"}, "other": [1, 2]}).to_string()).unwrap();
    let cfg: tokenkeeper_core::config::SinkConfig = toml::from_str(&format!(
        "account = \"acme\"\nkind = \"native\"\nprovider = \"{ACME}\"\npath = {:?}\n",
        out.display().to_string()
    ))
    .unwrap();
    let sinks = tokenkeeper_sync::sink::SinkSet::with_providers(vec![cfg.clone()], w.keepers[0].providers().clone());
    let results = sinks.deliver_once(&account).await;
    assert!(matches!(results[0].1, Ok(tokenkeeper_sync::fs::WriteOutcome::Written)), "{results:?}");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!((doc["acme"]["token"].as_str(), doc["acme"]["session"].as_str()), (Some("acme-access-0"), Some("s0")));
    assert_eq!(
        (doc["acme"]["theme"].as_str(), doc["other"][1].as_i64()),
        (Some("light"), Some(2)),
        "unknown keys lost"
    );
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&out).unwrap().permissions()) & 0o777, 0o600);

    // A newer credential in the file (the CLI refreshed there): never overwritten.
    let mut newer = account.credential.clone();
    newer.access_token = Secret::new("acme-access-theirs");
    newer.expires_at += chrono::Duration::hours(1);
    let theirs = AcmeFile.render(Some(&std::fs::read_to_string(&out).unwrap()), &newer, w.clock.now()).unwrap();
    std::fs::write(&out, &theirs).unwrap();
    let results = sinks.deliver_once(&account).await;
    assert!(matches!(results[0].1, Err(tokenkeeper_sync::SyncError::NewerOnDisk { .. })), "{results:?}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), theirs, "a newer credential was overwritten");

    // Without the provider registered, the sink fails with a message that names the fix.
    let bare = tokenkeeper_sync::sink::SinkSet::new(vec![cfg]);
    let e = bare.deliver_once(&account).await.remove(0).1.unwrap_err().to_string();
    assert!(e.contains(&format!("[providers.{ACME}]")), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_of_a_provider_the_installation_does_not_know_is_a_clear_error() {
    let w = world().await;
    std::fs::write(
        &w.file,
        json!({"acme": {"token": "t", "renew": "r", "until": (w.clock.now() + chrono::Duration::hours(1)).timestamp()}})
            .to_string(),
    )
    .unwrap();
    w.import("acme").await;
    // Another process whose configuration lacks the provider.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("elsewhere");
    let config = Arc::new(Config::default());
    let bare = Keeper::new(backend_of(&w.store, &data), config, &data, Arc::new(w.clock.clone())).unwrap();
    let e = bare.refresh("acme", RefreshPolicy::Force).await.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, KeeperError::UnknownProvider { .. }), "{e:?}");
    assert!(text.contains(ACME) && text.contains(&format!("[providers.{ACME}]")), "{text}");
    assert_eq!(w.counts(), (0, 0));
}
