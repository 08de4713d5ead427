//! The page's handlers. Each action ends in words a person understands: a flash message on the
//! dashboard after a redirect (so a reload never repeats a POST), or a page that says what went
//! wrong and what to do. No handler ever renders a token: fingerprints at most.

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use minijinja::{context, Value};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use tokenkeeper_core::config::{ANTHROPIC, CODEX, GEMINI};
use tokenkeeper_core::formats::parse_credential;
use tokenkeeper_core::status::human_duration;
use tokenkeeper_core::store::CredentialChange;
use tokenkeeper_core::{constant_time_eq, Account};
use tokenkeeper_keeper::schedule::Scheduler;
use tokenkeeper_keeper::view::{account_view, thresholds as view_thresholds, History};
use tokenkeeper_keeper::{Ingest, IngestOutcome, KeeperError, RefreshPolicy, RefreshResult};
use tokenkeeper_server::client::ClientAddr;
use tokenkeeper_sync::sink::SINK_HEALTH_KEY;

use crate::dashboard::{Dashboard, DashboardQuery, Inputs, SinkHealth};
use crate::error::WebError;
use crate::session::{cookie_value, random_token, set_cookie, Flash, PendingLogin, SignedIn};
use crate::session::{LOGIN_CSRF_COOKIE, SESSION_COOKIE, SESSION_LIFETIME};
use crate::WebState;

/// How long the sign-in form's CSRF cookie lives.
const LOGIN_FORM_LIFETIME: std::time::Duration = std::time::Duration::from_secs(3600);

// ---------------------------------------------------------------------------------------------
// Shared pieces

/// The common context of every page.
fn base(signed: Option<&SignedIn>, flash: Option<Flash>, title: &str) -> Value {
    context! {
        title => title,
        signed_in => signed.is_some(),
        csrf => signed.map(|s| s.csrf.clone()),
        flash => flash,
    }
}

fn merge(base: Value, extra: Value) -> Value {
    context! { ..extra, ..base }
}

/// A 403 page that says why; used for CSRF and cross-site refusals.
pub fn refused(state: &WebState, text: &str) -> Response {
    message(state, StatusCode::FORBIDDEN, None, "Refused", text)
}

fn message(state: &WebState, status: StatusCode, signed: Option<&SignedIn>, title: &str, text: &str) -> Response {
    let ctx = merge(base(signed, None, title), context! { heading => title, text => text });
    state.templates().page(status, "message.html", ctx)
}

/// Sets the flash message and sends the browser to `to` with 303 (so reloading does not
/// repeat the POST).
async fn redirect_with(state: &WebState, signed: &SignedIn, flash: Flash, to: &str) -> Response {
    state.sessions().set_flash(&signed.id, flash).await;
    Redirect::to(to).into_response()
}

/// `https://host` of this request, for the commands the paste page shows. The Host header is
/// only echoed back to the one who sent it; it is still limited to host-name characters.
fn base_url(headers: &HeaderMap, secure: bool) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b)))
        .unwrap_or("127.0.0.1:8377");
    format!("{}://{host}", if secure { "https" } else { "http" })
}

fn time_left(seconds: i64) -> String {
    let d = chrono::Duration::seconds(seconds);
    if seconds >= 0 {
        format!("valid for {}", human_duration(d))
    } else {
        format!("expired {} ago", human_duration(-d))
    }
}

fn valid_for(state: &WebState, account: &Account) -> String {
    time_left(account.credential.time_left(state.keeper().clock().now()).num_seconds())
}

// ---------------------------------------------------------------------------------------------
// Forms with a CSRF token

/// Form fields after the CSRF token; `#[serde(default)]` on every form so a missing field is a
/// refusal for the missing token first, not a parse error.
#[derive(Debug, Deserialize)]
struct Guarded<T> {
    #[serde(default)]
    csrf: String,
    #[serde(flatten)]
    form: T,
}

/// A form posted by a signed-in session with that session's CSRF token. Anything else (no
/// session, no token, a wrong token, a body that is not a form) is refused with 403 before the
/// handler runs.
#[derive(Debug)]
pub struct CsrfForm<T> {
    /// The session that posted it.
    pub session: SignedIn,
    /// The fields.
    pub form: T,
}

impl<T: DeserializeOwned + Send> FromRequest<WebState> for CsrfForm<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &WebState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let session = SignedIn::from_request_parts(&mut parts, state).await?;
        let req = Request::from_parts(parts, body);
        let refusal = "This form was refused because its security token is missing or out of date. \
                       Go back, reload the page, and try again.";
        let Form(Guarded { csrf, form }) =
            Form::<Guarded<T>>::from_request(req, state).await.map_err(|_| refused(state, refusal))?;
        if csrf.is_empty() || !constant_time_eq(csrf.as_bytes(), session.csrf.as_bytes()) {
            tracing::warn!("form with a missing or wrong CSRF token refused");
            return Err(refused(state, refusal));
        }
        Ok(CsrfForm { session, form })
    }
}

/// A form with nothing but its CSRF token.
#[derive(Debug, Default, Deserialize)]
pub struct NoFields {}

// ---------------------------------------------------------------------------------------------
// Sign-in

/// Fields of the sign-in form.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LoginForm {
    /// The admin token.
    pub token: String,
    /// The double-submit CSRF token.
    pub csrf: String,
}

fn login_page(state: &WebState, status: StatusCode, error: Option<&str>) -> Response {
    let csrf = random_token();
    let ctx = merge(base(None, None, "Sign in"), context! { login_csrf => csrf.clone(), error => error });
    let mut response = state.templates().page(status, "login.html", ctx);
    let cookie = set_cookie(LOGIN_CSRF_COOKIE, &csrf, "/login", LOGIN_FORM_LIFETIME, state.secure_cookies());
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

/// `GET /login`: the sign-in form (or the dashboard, when already signed in).
pub async fn login_form(State(state): State<WebState>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie_value(&headers, SESSION_COOKIE) {
        // A store failure shows the form: signing in again then reports it.
        if let Ok(Some(_)) = state.sessions().csrf(&id).await {
            return Redirect::to("/").into_response();
        }
    }
    login_page(&state, StatusCode::OK, None)
}

/// `POST /login`: checks the admin token in constant time; failures count against the
/// client's address.
pub async fn login(
    State(state): State<WebState>,
    ip: ClientAddr,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let now = state.keeper().clock().now();
    if let Err(blocked) = state.limiter().check(ip, now) {
        let minutes = blocked.retry_after.as_secs().div_ceil(60).max(1);
        tracing::warn!(client = %ip, "sign-in refused: too many failures");
        return message(
            &state,
            StatusCode::TOO_MANY_REQUESTS,
            None,
            "Too many failed sign-ins",
            &format!("Too many wrong admin tokens were tried from your address. Try again in {minutes} minutes."),
        );
    }
    let Ok(Form(form)) = form else {
        return refused(&state, "The sign-in form was incomplete. Reload the sign-in page and try again.");
    };
    let expected = cookie_value(&headers, LOGIN_CSRF_COOKIE).unwrap_or_default();
    if expected.is_empty() || !constant_time_eq(expected.as_bytes(), form.csrf.as_bytes()) {
        return refused(
            &state,
            "The sign-in form was refused because its security token is missing or out of date. \
             Reload the sign-in page and try again.",
        );
    }
    let token = form.token.trim();
    if token.is_empty() || !constant_time_eq(token.as_bytes(), state.admin_token().expose().as_bytes()) {
        state.limiter().fail(ip, now);
        tracing::warn!(client = %ip, "sign-in with a wrong admin token");
        return login_page(
            &state,
            StatusCode::UNAUTHORIZED,
            Some("That is not the admin token. On the server, `tokenkeeper server token` prints it."),
        );
    }
    state.limiter().succeed(ip);
    let id = match state.sessions().create(Some(Flash::ok("Signed in."))).await {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %tokenkeeper_core::error_chain(&e), "a web session could not be stored");
            return message(
                &state,
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                "Not signed in",
                "The admin token is right, but the session could not be stored: the store is unreachable. \
                 Try again in a moment; the server log has the details.",
            );
        }
    };
    let mut response = Redirect::to("/").into_response();
    let secure = state.secure_cookies();
    for cookie in [
        set_cookie(SESSION_COOKIE, &id, "/", SESSION_LIFETIME, secure),
        set_cookie(LOGIN_CSRF_COOKIE, "", "/login", std::time::Duration::ZERO, secure),
    ] {
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    response
}

/// `POST /logout`: ends the session.
pub async fn logout(State(state): State<WebState>, f: CsrfForm<NoFields>) -> Response {
    if let Err(e) = state.sessions().remove(&f.session.id).await {
        tracing::error!(error = %tokenkeeper_core::error_chain(&e), "a web session could not be ended");
        return message(
            &state,
            StatusCode::SERVICE_UNAVAILABLE,
            Some(&f.session),
            "Not signed out",
            "The session could not be ended because the store is unreachable. Try again in a moment.",
        );
    }
    let mut response = Redirect::to("/login").into_response();
    let cookie = set_cookie(SESSION_COOKIE, "", "/", std::time::Duration::ZERO, state.secure_cookies());
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

// ---------------------------------------------------------------------------------------------
// Dashboard

/// The header the dashboard's script sends when it re-reads the page to refresh the numbers:
/// such a read leaves the flash message for the next real page view.
pub const LIVE_HEADER: &str = "x-tokenkeeper-live";

/// The optional script of the dashboard.
pub const DASHBOARD_JS: &str = include_str!("../templates/dashboard.js");

/// Every sink's health: from the sinks of this process when they run here, else as the daemon
/// last saved it in the store (`sinks/health`), so a replica that does not deliver still shows
/// it.
async fn sink_health(state: &WebState) -> Vec<SinkHealth> {
    if let Some(sinks) = state.sinks() {
        return sinks
            .statuses()
            .into_iter()
            .map(|s| SinkHealth {
                kind: serde_json::to_value(s.kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
                name: s.name,
                account: s.account,
                ok: s.ok,
                last_error: s.last_error,
                last_written_at: s.last_written_at,
                writes: s.writes,
                failures: s.failures,
            })
            .collect();
    }
    match state.keeper().store().get_state(SINK_HEALTH_KEY).await {
        Ok(Some(v)) => serde_json::from_value(v).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the stored sink health is not readable; showing none");
            Vec::new()
        }),
        Ok(None) => Vec::new(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the stored sink health; showing none");
            Vec::new()
        }
    }
}

/// Reads everything the dashboard draws and builds its model.
pub async fn dashboard_model(state: &WebState, query: &DashboardQuery) -> Result<Dashboard, WebError> {
    let keeper = state.keeper();
    let store_err = |source| WebError::Store { action: "the dashboard", source };
    let accounts = keeper.store().list_accounts().await.map_err(store_err)?;
    let now = keeper.clock().now();
    let history = History::read(keeper.store().as_ref(), now).await.map_err(store_err)?;
    let sinks = sink_health(state).await;
    let scheduler = Scheduler::new(keeper.clone());
    let views: Vec<_> = accounts
        .iter()
        .map(|a| {
            let failing = sinks.iter().filter(|s| s.account == a.name && !s.ok).map(|s| s.name.clone()).collect();
            account_view(keeper.config(), a, now, failing)
        })
        .collect();
    let thresholds: Vec<_> = accounts.iter().map(|a| view_thresholds(keeper.config(), a)).collect();
    let due: Vec<_> = accounts.iter().map(|a| scheduler.due_at(a)).collect();
    let pools = match state.pool() {
        Some(proxy) => match proxy.pool_snapshot().await {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the pools for the dashboard; showing none");
                None
            }
        },
        None => None,
    };
    let inputs = Inputs {
        accounts: &accounts,
        views: &views,
        thresholds: &thresholds,
        due: &due,
        sinks: &sinks,
        history: &history,
        pools: pools.as_deref(),
        now,
    };
    Ok(crate::dashboard::build(&inputs, query))
}

/// `GET /[?level=&provider=&pool=&q=&sort=]`: the summary, every account's charts, the pools.
pub async fn dashboard(
    State(state): State<WebState>,
    signed: SignedIn,
    headers: HeaderMap,
    query: Result<Query<DashboardQuery>, QueryRejection>,
) -> Result<Response, WebError> {
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let model = dashboard_model(&state, &query).await?;
    let flash = if headers.contains_key(LIVE_HEADER) { None } else { state.sessions().take_flash(&signed.id).await };
    let ctx = merge(base(Some(&signed), flash, "Accounts"), context! { d => model, query => query });
    Ok(state.templates().page(StatusCode::OK, "dashboard.html", ctx))
}

/// `GET /assets/dashboard.js`: the optional script that refreshes the dashboard's numbers in
/// place. Served by the page itself (the policy allows scripts from this origin only), with no
/// secret in it, so it needs no session.
pub async fn dashboard_script() -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/javascript; charset=utf-8"))], DASHBOARD_JS).into_response()
}

// ---------------------------------------------------------------------------------------------
// Refresh and remove

/// The flash message for a refresh's result.
fn refresh_flash(state: &WebState, name: &str, result: Result<RefreshResult, KeeperError>) -> Flash {
    match result {
        Ok(RefreshResult::Refreshed(a)) => Flash::ok(format!("Refreshed {name}: {}.", valid_for(state, &a))),
        Ok(RefreshResult::Adopted(a)) => Flash::ok(format!(
            "Another process had just refreshed {name}; its new token was taken: {}.",
            valid_for(state, &a)
        )),
        Ok(RefreshResult::NotNeeded(a)) => {
            Flash::ok(format!("{name} was refreshed moments ago: {}.", valid_for(state, &a)))
        }
        Err(KeeperError::NeedsLogin { .. }) => Flash::error(format!(
            "The provider rejected the refresh token of {name}: log in again with the login wizard."
        )),
        Err(KeeperError::NotRefreshable { expires, .. }) => Flash::error(format!(
            "{name} has no refresh token (a long-lived setup token?), so it cannot be refreshed. It is valid until {expires}."
        )),
        Err(KeeperError::FollowMode { situation, .. }) => Flash::error(format!(
            "{name} follows Claude Code, which refreshes it on its own machine; its token {situation}. \
             Run claude there, or paste a fresh credential here."
        )),
        Err(KeeperError::TryLater { reason, retry_after, .. }) => {
            let when = retry_after
                .map(|d| format!("in {}", human_duration(chrono::Duration::seconds(i64::try_from(d.as_secs()).unwrap_or(60)))))
                .unwrap_or_else(|| "in a minute".to_owned());
            Flash::error(format!("Could not refresh {name} right now ({reason}). Try again {when}."))
        }
        Err(KeeperError::NoSuchAccount(_)) => Flash::error(format!("There is no account named {name} (removed meanwhile?).")),
        Err(e) => {
            tracing::error!(account = name, error = %e, "refresh from the web page failed");
            Flash::error(format!("Refreshing {name} failed because of an internal error; the server log has the details."))
        }
    }
}

/// `POST /accounts/{name}/refresh`: refreshes now.
pub async fn refresh(State(state): State<WebState>, Path(name): Path<String>, f: CsrfForm<NoFields>) -> Response {
    let result = state.keeper().refresh(&name, RefreshPolicy::Force).await;
    let flash = refresh_flash(&state, &name, result);
    redirect_with(&state, &f.session, flash, "/").await
}

/// `GET /accounts/{name}/remove`: asks to confirm.
pub async fn remove_confirm(
    State(state): State<WebState>,
    Path(name): Path<String>,
    signed: SignedIn,
) -> Result<Response, WebError> {
    let account = state
        .keeper()
        .store()
        .get_account(&name)
        .await
        .map_err(|source| WebError::Store { action: "the remove page", source })?;
    let Some(account) = account else {
        return Ok(message(
            &state,
            StatusCode::NOT_FOUND,
            Some(&signed),
            "No such account",
            &format!("There is no account named {name}."),
        ));
    };
    let ctx =
        merge(base(Some(&signed), None, "Remove account"), context! { name => account.name, email => account.email });
    Ok(state.templates().page(StatusCode::OK, "remove.html", ctx))
}

/// `POST /accounts/{name}/remove`: removes the account.
pub async fn remove(State(state): State<WebState>, Path(name): Path<String>, f: CsrfForm<NoFields>) -> Response {
    let flash = match state.keeper().remove(&name).await {
        Ok(true) => Flash::ok(format!("Removed {name}. Its sinks keep their last written token.")),
        Ok(false) => Flash::error(format!("There is no account named {name}; nothing was removed.")),
        Err(e) => {
            tracing::error!(account = %name, error = %e, "remove from the web page failed");
            Flash::error(format!(
                "Removing {name} failed because of an internal error; the server log has the details."
            ))
        }
    };
    redirect_with(&state, &f.session, flash, "/").await
}

// ---------------------------------------------------------------------------------------------
// Login wizard

/// Query of `GET /wizard`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct WizardQuery {
    /// Present: discard the started login and start a new one.
    pub new: Option<String>,
    /// Start a login with this provider (`codex`, `gemini`; Anthropic's when absent), unless
    /// the started login is already of it.
    pub provider: Option<String>,
}

/// Fields of the wizard's form.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct WizardForm {
    /// The pasted `CODE#STATE`.
    pub code: String,
    /// Account name; empty lets the keeper choose (by email, the only account, or `main`).
    pub account: String,
    /// The provider the page was showing, so that an attempt that expired restarts with it.
    pub provider: String,
}

/// The page for a login that cannot go on: the wizard with a freshly started login and `error`
/// (or, when no login can be started, a page that says so).
async fn restart_wizard(
    state: &WebState,
    signed: &SignedIn,
    status: StatusCode,
    account: &str,
    error: &str,
    provider: &str,
) -> Response {
    match state.sessions().start_login(&signed.id, Some(provider)).await {
        Ok(fresh) => wizard_page(state, signed, status, &fresh, account, Some(error)),
        Err(e) => login_unavailable(state, signed, &e),
    }
}

/// The page shown when the wizard's login cannot be kept or read (the store failed).
fn login_unavailable(state: &WebState, signed: &SignedIn, e: &KeeperError) -> Response {
    tracing::error!(error = %tokenkeeper_core::error_chain(e), "the web wizard's login could not be kept");
    message(
        state,
        StatusCode::SERVICE_UNAVAILABLE,
        Some(signed),
        "Login unavailable",
        "The login could not be started or read because the store is unreachable. Try again in a moment; \
         the server log has the details.",
    )
}

fn wizard_page(
    state: &WebState,
    signed: &SignedIn,
    status: StatusCode,
    pending: &PendingLogin,
    account: &str,
    error: Option<&str>,
) -> Response {
    // The providers whose login the wizard can run, for its chooser.
    let providers: Vec<Value> = [ANTHROPIC, CODEX, GEMINI]
        .into_iter()
        .filter_map(|id| state.keeper().providers().get(id).filter(|p| p.login().is_some()))
        .map(|p| context! { id => p.id(), name => p.display_name(), current => p.id() == pending.provider() })
        .collect();
    let ctx = merge(
        base(Some(signed), None, "Log in an account"),
        context! {
            authorize_url => pending.url.clone(),
            account => account,
            error => error,
            provider => pending.provider(),
            redirect_uri => pending.started.as_ref().map(|s| s.redirect_uri.clone()),
            providers => providers,
        },
    );
    state.templates().page(status, "wizard.html", ctx)
}

/// `GET /wizard`: starts a login (or shows the one already started) with its authorize link.
pub async fn wizard(State(state): State<WebState>, signed: SignedIn, Query(q): Query<WizardQuery>) -> Response {
    let wanted = q.provider.as_deref().map(str::trim).filter(|p| !p.is_empty());
    let started = match q.new {
        Some(_) => None,
        None => match state.sessions().pending_login(&signed.id).await {
            // A login of another provider than the one asked for is replaced.
            Ok(p) => p.filter(|p| wanted.is_none_or(|w| w == p.provider())),
            Err(e) => return login_unavailable(&state, &signed, &e),
        },
    };
    let pending = match started {
        Some(p) => p,
        None => match state.sessions().start_login(&signed.id, wanted).await {
            Ok(p) => p,
            Err(e @ (KeeperError::NoLoginFlow { .. } | KeeperError::UnknownProvider { .. })) => {
                return message(&state, StatusCode::NOT_FOUND, Some(&signed), "No such login", &e.to_string())
            }
            Err(e) => return login_unavailable(&state, &signed, &e),
        },
    };
    wizard_page(&state, &signed, StatusCode::OK, &pending, "", None)
}

/// The provider a form names, when the wizard can log in with it; otherwise Anthropic's (the
/// field is the page's own, so anything else was edited by hand).
fn wizard_provider<'a>(state: &WebState, named: &'a str) -> &'a str {
    let named = named.trim();
    match state.keeper().providers().get(named) {
        Some(p) if p.login().is_some() => named,
        _ => ANTHROPIC,
    }
}

/// `POST /wizard`: exchanges the pasted code and stores the account.
pub async fn wizard_finish(State(state): State<WebState>, f: CsrfForm<WizardForm>) -> Response {
    let signed = &f.session;
    let account = f.form.account.trim();
    let code = f.form.code.trim();
    let pending = match state.sessions().pending_login(&signed.id).await {
        Ok(Some(pending)) => pending,
        Ok(None) => {
            return restart_wizard(
                &state,
                signed,
                StatusCode::UNPROCESSABLE_ENTITY,
                account,
                "This login attempt has expired or was already used. Start again: open the new link below.",
                wizard_provider(&state, &f.form.provider),
            )
            .await
        }
        Err(e) => return login_unavailable(&state, signed, &e),
    };
    if !account.is_empty() {
        if let Err(why) = tokenkeeper_core::account::validate_account_name(account) {
            return wizard_page(
                &state,
                signed,
                StatusCode::UNPROCESSABLE_ENTITY,
                &pending,
                "",
                Some(&format!("The account name is not usable: {why}.")),
            );
        }
    }
    let anthropic = pending.started.is_none();
    if code.is_empty() || (anthropic && !code.contains('#')) {
        return wizard_page(
            &state,
            signed,
            StatusCode::UNPROCESSABLE_ENTITY,
            &pending,
            account,
            Some(if anthropic {
                "Paste the whole code the provider showed, including the part after the # sign."
            } else {
                "Paste the address your browser was sent to after signing in (or the code the page showed)."
            }),
        );
    }
    let name = (!account.is_empty()).then_some(account);
    let finished = match &pending.started {
        None => state.keeper().finish_login(name, code, &pending.login).await,
        Some(started) => state.keeper().finish_provider_login(name, code, started).await,
    };
    let provider = pending.provider().to_owned();
    match finished {
        Ok(outcome) => {
            // The account is stored; a login left parked only expires later.
            if let Err(e) = state.sessions().forget_login(&signed.id).await {
                tracing::warn!(error = %tokenkeeper_core::error_chain(&e), "a used login could not be forgotten");
            }
            let (verb, a) = match &outcome {
                IngestOutcome::Created(a) => ("Added", a),
                IngestOutcome::Updated(a) => ("Updated", a),
                IngestOutcome::Unchanged(a) => ("Already up to date:", a),
            };
            let ctx = merge(
                base(Some(signed), None, "Logged in"),
                context! { verb => verb, name => a.name.clone(), email => a.email.clone(), valid => valid_for(&state, a) },
            );
            state.templates().page(StatusCode::OK, "wizard_done.html", ctx)
        }
        Err(why @ (KeeperError::BadLoginCode(_) | KeeperError::LoginCodeRefused { .. })) => {
            // A code from another attempt, mistyped, used or expired: only a new attempt helps.
            tracing::info!(reason = %why, "login code refused");
            restart_wizard(
                &state,
                signed,
                StatusCode::UNPROCESSABLE_ENTITY,
                account,
                "The code was not accepted: it was mistyped, belongs to an earlier attempt, or has expired \
                 (codes work once, for about ten minutes). Start again: open the new link below and paste the new code.",
                &provider,
            )
            .await
        }
        Err(KeeperError::TryLater { reason, .. }) => wizard_page(
            &state,
            signed,
            StatusCode::SERVICE_UNAVAILABLE,
            &pending,
            account,
            Some(&format!(
                "The provider could not be reached or is busy ({reason}). Wait a minute and paste the same code again."
            )),
        ),
        Err(KeeperError::Refused { account, reason }) => {
            if let Err(e) = state.sessions().forget_login(&signed.id).await {
                tracing::warn!(error = %tokenkeeper_core::error_chain(&e), "a used login could not be forgotten");
            }
            message(
                &state,
                StatusCode::CONFLICT,
                Some(signed),
                "Not stored",
                &format!("The login worked, but {account} was not changed: {reason}."),
            )
        }
        Err(KeeperError::Ambiguous(names)) => {
            restart_wizard(
                &state,
                signed,
                StatusCode::UNPROCESSABLE_ENTITY,
                account,
                &format!(
                    "There are several accounts ({names}); type the account name, then start again with the new link below."
                ),
                &provider,
            )
            .await
        }
        // The name came from the login's email (the form's own name was checked above).
        Err(KeeperError::BadAccountName(why)) => {
            restart_wizard(
                &state,
                signed,
                StatusCode::UNPROCESSABLE_ENTITY,
                account,
                &format!(
                    "The account name is not usable: {why}. Type another name, then start again with the new link below."
                ),
                &provider,
            )
            .await
        }
        Err(e) => {
            tracing::error!(error = %e, "login from the web page failed");
            wizard_page(
                &state,
                signed,
                StatusCode::INTERNAL_SERVER_ERROR,
                &pending,
                account,
                Some("The login could not be finished because of an internal error; the server log has the details."),
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Paste

/// Fields of the paste form.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PasteForm {
    /// The credential: Claude JSON, its base64, OpenClaw JSON, or a bare token.
    pub credential: String,
    /// Account name; empty lets the keeper choose.
    pub account: String,
}

fn paste_page(
    state: &WebState,
    signed: &SignedIn,
    headers: &HeaderMap,
    status: StatusCode,
    account: &str,
    error: Option<&str>,
) -> Response {
    let url = base_url(headers, state.secure_cookies());
    let push = format!("tokenkeeper push --server {url} --key-file ~/.config/tokenkeeper/push.key");
    // `-d @~/...` would not expand the tilde (it is not at the start of a word), so $HOME.
    let curl = format!(
        "KEY=$(cat ~/.config/tokenkeeper/push.key)\ncurl -X POST {url}/api/push -H \"Authorization: Bearer $KEY\" \
         -H \"Content-Type: application/json\" -d @\"$HOME/.claude/.credentials.json\""
    );
    let ctx = merge(
        base(Some(signed), None, "Paste a credential"),
        context! { push_command => push, curl_command => curl, account => account, error => error },
    );
    state.templates().page(status, "paste.html", ctx)
}

/// `GET /paste`: the paste box and the commands a CLI user can copy instead.
pub async fn paste_form(State(state): State<WebState>, signed: SignedIn, headers: HeaderMap) -> Response {
    paste_page(&state, &signed, &headers, StatusCode::OK, "", None)
}

/// `POST /paste`: parses and ingests the credential under the never-regress rule. The pasted
/// text is never shown back.
pub async fn paste(State(state): State<WebState>, headers: HeaderMap, f: CsrfForm<PasteForm>) -> Response {
    let signed = &f.session;
    let account = f.form.account.trim();
    let fail = |status, text: &str| paste_page(&state, signed, &headers, status, account, Some(text));
    if !account.is_empty() {
        if let Err(why) = tokenkeeper_core::account::validate_account_name(account) {
            return fail(StatusCode::UNPROCESSABLE_ENTITY, &format!("The account name is not usable: {why}."));
        }
    }
    let parsed = match parse_credential(&f.form.credential, state.keeper().clock().now()) {
        Ok(p) => p,
        Err(e) => return fail(StatusCode::UNPROCESSABLE_ENTITY, &format!("Nothing was stored: {e}.")),
    };
    let ingest = Ingest {
        account: (!account.is_empty()).then(|| account.to_owned()),
        parsed,
        mode: None,
        binding: None,
        change: CredentialChange::Imported,
        organization: None,
        provider: None,
    };
    let flash = match state.keeper().ingest(ingest).await {
        Ok(IngestOutcome::Created(a)) => Flash::ok(format!("Added {}: {}.", a.name, valid_for(&state, &a))),
        Ok(IngestOutcome::Updated(a)) => Flash::ok(format!("Updated {}: {}.", a.name, valid_for(&state, &a))),
        Ok(IngestOutcome::Unchanged(a)) => {
            Flash::ok(format!("{} already had this credential; nothing changed.", a.name))
        }
        Err(KeeperError::Refused { account, reason }) => {
            return fail(StatusCode::CONFLICT, &format!("Not stored for {account}: {reason}. Nothing was changed."));
        }
        Err(KeeperError::Ambiguous(names)) => {
            return fail(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("There are several accounts ({names}); type which one this credential belongs to."),
            );
        }
        Err(KeeperError::BadAccountName(why)) => {
            return fail(StatusCode::UNPROCESSABLE_ENTITY, &format!("Nothing was stored: {why}."));
        }
        Err(e) => {
            tracing::error!(error = %e, "paste from the web page failed");
            return fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Nothing was stored because of an internal error; the server log has the details.",
            );
        }
    };
    redirect_with(&state, signed, flash, "/").await
}
