//! The page through `Router::oneshot`: sign-in, sessions, every page, the refresh, remove,
//! paste and wizard flows against the mock provider, and the CSRF and cross-site refusals.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;

use axum::http::{header, StatusCode};
use support::{claude_json, env, env_with, Env, ADMIN_TOKEN, HOST};
use tokenkeeper_core::ManualClock;
use tokenkeeper_web::security::MAX_FAILED_SIGN_INS;

fn session_cookie(setc: &[String]) -> &String {
    setc.iter().find(|c| c.starts_with("tk_session=")).expect("a tk_session cookie")
}

#[tokio::test]
async fn sign_in_sets_a_strict_http_only_session_cookie() {
    let e = env().await;
    let mut c = e.client();
    let form = c.get("/login").await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(form.body.contains("<label for=\"token\">Admin token</label>"));
    let csrf_cookie = form.set_cookies().into_iter().find(|c| c.starts_with("tk_login_csrf=")).unwrap();
    assert!(csrf_cookie.contains("HttpOnly") && csrf_cookie.contains("SameSite=Strict"), "{csrf_cookie}");

    let res = c.sign_in_with(ADMIN_TOKEN).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    let cookies = res.set_cookies();
    let cookie = session_cookie(&cookies);
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(cookie.contains(flag), "{flag} missing in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP must not set Secure: {cookie}");
    let id = c.cookie("tk_session").unwrap();
    assert!(id.len() >= 43, "a 256-bit random id");
    assert_eq!(e.state.keeper().store().list_accounts().await.unwrap().len(), 0);

    let dash = c.get("/").await;
    assert_eq!(dash.status, StatusCode::OK);
    assert!(dash.body.contains("Signed in."), "flash shown once");
    assert!(dash.body.contains("No accounts yet"));
    assert!(!c.get("/").await.body.contains("Signed in."), "the flash is gone on the next page");

    let other = e.client();
    assert_ne!(other.cookie("tk_session"), Some(id), "no session shared");
}

#[tokio::test]
async fn secure_cookies_are_marked_secure() {
    let e = env_with(true, None).await;
    let mut c = e.client();
    let res = c.sign_in_with(ADMIN_TOKEN).await;
    let cookies = res.set_cookies();
    assert!(session_cookie(&cookies).contains("Secure"), "{cookies:?}");
}

#[tokio::test]
async fn a_wrong_token_is_refused_and_failures_are_rate_limited_per_address() {
    let e = env().await;
    let mut c = e.client();
    c.ip = Some(SocketAddr::from(([192, 0, 2, 7], 5000)));
    for _ in 0..MAX_FAILED_SIGN_INS {
        let res = c.sign_in_with("not-the-token").await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED);
        assert!(res.body.contains("That is not the admin token"), "{}", res.body);
        assert!(!res.set_cookies().iter().any(|c| c.starts_with("tk_session=")));
    }
    // Now even the right token waits: the budget is per address, not per guess.
    let res = c.sign_in_with(ADMIN_TOKEN).await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(res.body.contains("Try again in 15 minutes"), "{}", res.body);

    let mut other = e.client();
    other.ip = Some(SocketAddr::from(([192, 0, 2, 8], 5000)));
    assert_eq!(other.sign_in_with(ADMIN_TOKEN).await.status, StatusCode::SEE_OTHER);

    e.clock.advance(chrono::Duration::minutes(16));
    assert_eq!(c.sign_in_with(ADMIN_TOKEN).await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn sign_in_without_the_form_token_is_refused() {
    let e = env().await;
    let mut c = e.client();
    let res = c.post("/login", &[("token", ADMIN_TOKEN), ("csrf", "made-up")]).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert!(res.body.contains("security token is missing or out of date"));
    let res = c.post_with("/login", &[("token", ADMIN_TOKEN)], &[("sec-fetch-site", "cross-site")]).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert!(c.cookie("tk_session").is_none());
}

#[tokio::test]
async fn pages_need_a_session() {
    let e = env().await;
    e.seed("main").await;
    let mut c = e.client();
    for path in ["/", "/wizard", "/paste", "/accounts/main/remove"] {
        let res = c.get(path).await;
        assert_eq!(res.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(res.location(), "/login", "{path}");
    }
    for path in ["/accounts/main/refresh", "/accounts/main/remove", "/paste", "/wizard", "/logout"] {
        let res = c.post(path, &[("csrf", "x")]).await;
        assert_eq!(res.status, StatusCode::FORBIDDEN, "{path}");
        assert!(res.body.contains("not signed in"), "{path}: {}", res.body);
    }
    assert_eq!(e.mock.counts().token_requests, 0);
    assert_eq!(e.state.keeper().store().list_accounts().await.unwrap().len(), 1);
}

#[tokio::test]
async fn every_page_renders_with_security_headers_and_no_token() {
    let e = env().await;
    let t = e.seed("main").await;
    let mut c = e.client();
    let login = c.get("/login").await;
    c.sign_in().await;
    for path in ["/", "/wizard", "/paste", "/accounts/main/remove"] {
        let page = c.get(path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.body);
        assert!(page.body.starts_with("<!DOCTYPE html>"), "{path}");
        assert!(page.body.contains("name=\"viewport\""), "{path}");
        // One optional script on the dashboard, from this origin; no inline code anywhere.
        let scripts = page.body.matches("<script").count();
        assert_eq!(scripts, usize::from(path == "/"), "{path}");
        assert_eq!(
            page.body.matches("<script src=\"/assets/dashboard.js\" defer></script>").count(),
            scripts,
            "{path}"
        );
        assert!(!page.body.contains(" onclick=") && !page.body.contains(" onload="), "{path}: no inline handlers");
        assert!(!page.body.contains(&t.access_token) && !page.body.contains(&t.refresh_token), "{path} leaks a token");
        let csp = page.headers.get(header::CONTENT_SECURITY_POLICY).unwrap().to_str().unwrap();
        assert!(csp.contains("default-src 'none'") && csp.contains("form-action 'self'"), "{csp}");
        assert!(csp.contains("script-src 'self';") && !csp.contains("unsafe"), "{csp}");
        assert_eq!(page.headers.get(header::X_FRAME_OPTIONS).unwrap(), "DENY");
        assert_eq!(page.headers.get(header::CACHE_CONTROL).unwrap(), "no-store");
    }
    assert!(login.headers.get(header::CONTENT_SECURITY_POLICY).is_some());
    let missing = c.get("/accounts/nobody/remove").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.body.contains("There is no account named nobody"));
}

#[tokio::test]
async fn the_dashboard_shows_status_in_words() {
    let e = env().await;
    let t = e.seed("main").await;
    let mut c = e.client();
    c.sign_in().await;
    e.clock.advance(chrono::Duration::minutes(65));
    let dash = c.get("/").await;
    let b = &dash.body;
    assert!(b.contains("<h2 id=\"name-main\">main</h2>"), "{b}");
    assert!(b.contains("class=\"badge ok\" id=\"level-main\">Healthy"), "{b}");
    assert!(b.contains("valid for 6h 55m"), "{b}");
    assert!(b.contains("main@example.com"), "the email is shown: {b}");
    assert!(b.contains("<span id=\"rt-main\">1h 05m old of about 30d 0h; about 29d 22h left</span>"), "{b}");
    assert!(b.contains("Last refresh</dt><dd>never"), "{b}");
    assert!(b.contains("0 times"), "{b}");
    let fp = tokenkeeper_core::Secret::new(t.access_token.clone()).fingerprint();
    assert!(b.contains(&fp), "fingerprint shown");
    assert!(b.contains("action=\"/accounts/main/refresh\""));
    assert!(b.contains("href=\"/accounts/main/remove\""));

    e.clock.advance(chrono::Duration::hours(8));
    let dash = c.get("/").await;
    assert!(dash.body.contains("class=\"badge bad\" id=\"level-main\">Expired"), "{}", dash.body);
    assert!(dash.body.contains("expired 1h 05m ago"), "{}", dash.body);
}

#[tokio::test]
async fn each_card_shows_its_provider() {
    let e = env().await;
    e.seed("main").await;
    let t = e.base.mock.issue_login("cx@example.com");
    let parsed = tokenkeeper_core::formats::ParsedCredential {
        credential: tokenkeeper_keeper::testing::Env::credential(&t),
        format: tokenkeeper_core::formats::Format::ClaudeJson,
        email: None,
    };
    e.base
        .keeper
        .ingest(tokenkeeper_keeper::Ingest {
            account: Some("cx".into()),
            parsed,
            mode: None,
            binding: None,
            change: tokenkeeper_core::store::CredentialChange::Imported,
            organization: None,
            provider: Some("codex".into()),
        })
        .await
        .unwrap();
    let mut c = e.client();
    c.sign_in().await;
    let b = c.get("/").await.body;
    assert!(b.contains("id=\"provider-cx\" title=\"Provider\">codex</span>"), "{b}");
    assert!(b.contains("id=\"provider-main\" title=\"Provider\">anthropic</span>"), "{b}");
}

#[tokio::test]
async fn refresh_says_what_happened() {
    let e = env().await;
    let t = e.seed("main").await;
    let mut c = e.client();
    let csrf = c.sign_in().await;
    e.clock.advance(chrono::Duration::hours(1));
    let res = c.post("/accounts/main/refresh", &[("csrf", &csrf)]).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    assert_eq!(res.location(), "/");
    assert_eq!(e.mock.counts().refresh_ok, 1);
    let dash = c.get("/").await;
    assert!(dash.body.contains("Refreshed main: valid for 8h 00m."), "{}", dash.body);
    assert!(dash.body.contains("Last refresh</dt><dd>0s ago"), "{}", dash.body);

    // The provider kills the refresh token: the page says to log in again.
    let now = e.keeper.store().get_account("main").await.unwrap().unwrap();
    e.mock.revoke(now.credential.refresh_token.as_ref().unwrap().expose());
    assert_ne!(now.credential.refresh_token.as_ref().unwrap().expose(), t.refresh_token);
    e.clock.advance(chrono::Duration::minutes(5));
    c.post("/accounts/main/refresh", &[("csrf", &csrf)]).await;
    let dash = c.get("/").await;
    assert!(
        dash.body.contains("The provider rejected the refresh token of main: log in again with the login wizard."),
        "{}",
        dash.body
    );
    assert!(dash.body.contains("Needs login"), "{}", dash.body);

    c.post("/accounts/nobody/refresh", &[("csrf", &csrf)]).await;
    assert!(c.get("/").await.body.contains("There is no account named nobody"));
}

#[tokio::test]
async fn remove_goes_through_a_confirm_page() {
    let e = env().await;
    e.seed("main").await;
    e.seed("spare").await;
    let mut c = e.client();
    c.sign_in().await;
    let confirm = c.get("/accounts/spare/remove").await;
    assert!(confirm.body.contains("Remove spare?"), "{}", confirm.body);
    assert!(confirm.body.contains("action=\"/accounts/spare/remove\""));
    assert_eq!(e.keeper.store().list_accounts().await.unwrap().len(), 2, "GET changes nothing");
    let res = c.post("/accounts/spare/remove", &[("csrf", &confirm.csrf())]).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    let dash = c.get("/").await;
    assert!(dash.body.contains("Removed spare."), "{}", dash.body);
    assert!(!dash.body.contains("name-spare"));
    let names: Vec<_> = e.keeper.store().list_accounts().await.unwrap().into_iter().map(|a| a.name).collect();
    assert_eq!(names, ["main"]);
}

#[tokio::test]
async fn paste_stores_newer_credentials_and_refuses_older_ones() {
    let e = env().await;
    let mut c = e.client();
    let csrf = c.sign_in().await;
    let first = e.mock.issue_login("work@example.com");
    let res = c.post("/paste", &[("csrf", &csrf), ("credential", &claude_json(&first)), ("account", "work")]).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
    let dash = c.get("/").await;
    assert!(dash.body.contains("Added work: valid for 8h 00m."), "{}", dash.body);

    // An older credential (the clock moved on, a new login was stored, then the old one pasted).
    e.clock.advance(chrono::Duration::hours(1));
    let second = e.mock.issue_login("work@example.com");
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, claude_json(&second));
    let res = c.post("/paste", &[("csrf", &csrf), ("credential", &b64), ("account", "work")]).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER, "base64 is accepted: {}", res.body);
    assert!(c.get("/").await.body.contains("Updated work: valid for 8h 00m."));

    let res = c.post("/paste", &[("csrf", &csrf), ("credential", &claude_json(&first)), ("account", "work")]).await;
    assert_eq!(res.status, StatusCode::CONFLICT);
    assert!(res.body.contains("Nothing was changed"), "{}", res.body);
    assert!(res.body.contains("older"), "{}", res.body);
    assert!(!res.body.contains(&first.access_token), "the pasted text is never shown back");
    let stored = e.keeper.store().get_account("work").await.unwrap().unwrap();
    assert_eq!(stored.credential.access_token.expose(), second.access_token);

    let res = c.post("/paste", &[("csrf", &csrf), ("credential", "{\"claudeAiOauth\": {"), ("account", "")]).await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(res.body.contains("Nothing was stored: the input is not valid JSON"), "{}", res.body);
    let res = c.post("/paste", &[("csrf", &csrf), ("credential", "  "), ("account", "")]).await;
    assert!(res.body.contains("the input is empty"), "{}", res.body);
}

#[tokio::test]
async fn the_paste_page_offers_the_cli_one_liners_for_this_host() {
    let e = env().await;
    let mut c = e.client();
    c.sign_in().await;
    let page = c.get("/paste").await;
    let b = support::unescape(&page.body);
    assert!(
        b.contains(&format!("tokenkeeper push --server http://{HOST} --key-file ~/.config/tokenkeeper/push.key")),
        "{b}"
    );
    assert!(b.contains(&format!("curl -X POST http://{HOST}/api/push -H \"Authorization: Bearer $KEY\"")), "{b}");
    assert!(b.contains("-H \"Content-Type: application/json\" -d @\"$HOME/.claude/.credentials.json\""), "{b}");
}

#[tokio::test]
async fn the_wizard_logs_in_an_account() {
    let e = env().await;
    let mut c = e.client();
    c.sign_in().await;
    let page = c.get("/wizard").await;
    let url = page.href_of("authorize");
    assert!(url.starts_with(&e.mock.authorize_url()), "{url}");
    assert!(page.body.contains("target=\"_blank\""));
    // The same attempt is shown again on reload, so a code from the open tab still fits.
    assert_eq!(c.get("/wizard").await.href_of("authorize"), url);

    let pasted = e.mock.authorize(&url, "new@example.com").unwrap();
    let res = c.post("/wizard", &[("csrf", &page.csrf()), ("code", &pasted), ("account", "new")]).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert!(res.body.contains("Added new (new@example.com): valid for 8h 00m."), "{}", res.body);
    assert_eq!(e.mock.counts().exchange_ok, 1);
    assert!(e.keeper.store().get_account("new").await.unwrap().is_some());

    // The attempt is used up: pasting again says to start again and offers a new link.
    let res = c.post("/wizard", &[("csrf", &page.csrf()), ("code", &pasted), ("account", "new")]).await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(res.body.contains("Start again"), "{}", res.body);
    assert_ne!(res.href_of("authorize"), url);
}

/// The wizard logs in Codex and Gemini CLI accounts too: the provider is chosen on the page,
/// the authorize link is that provider's, and what is pasted back is the address the browser
/// was sent to (Codex's loopback redirect, which does not load on another machine) or the bare
/// code Gemini CLI's page shows; no `#` is asked for.
#[tokio::test]
async fn the_wizard_logs_in_codex_and_gemini_accounts_from_the_pasted_redirect_or_code() {
    use tokenkeeper_mock::Shape;
    let e = support::env_configured(|config| {
        // Every provider at the env's mock (whose base URL the Anthropic API's is).
        let base = config.providers["anthropic"].api_base_url.clone();
        for (id, shape) in [("codex", Shape::Codex), ("gemini", Shape::Google)] {
            let mut p = config.provider(id);
            p.token_url = format!("{base}{}", shape.path());
            p.authorize_url = format!("{base}{}", shape.authorize_path());
            config.providers.insert(id.to_owned(), p);
        }
    })
    .await;
    let mut c = e.client();
    c.sign_in().await;
    // The chooser offers the three providers that have a login flow; Anthropic is the default.
    let page = c.get("/wizard").await;
    assert!(
        page.body.contains("id=\"provider-codex\"") && page.body.contains("id=\"provider-gemini\""),
        "{}",
        page.body
    );
    assert!(page.href_of("authorize").starts_with(&e.mock.authorize_url()));

    // Codex: the whole redirect address is pasted.
    let page = c.get("/wizard?provider=codex").await;
    let url = page.href_of("authorize");
    assert!(url.starts_with(&e.mock.shape_authorize_url(Shape::Codex)), "{url}");
    assert!(
        page.body.contains("<code id=\"redirect-uri\">http:&#x2f;&#x2f;localhost:1455&#x2f;auth&#x2f;callback</code>"),
        "the page says where the browser goes: {}",
        page.body
    );
    assert_eq!(c.get("/wizard").await.href_of("authorize"), url, "a reload keeps the Codex attempt");
    let landed = e.mock.authorize_shape(Shape::Codex, &url, "dev@example.com").unwrap();
    let res = c.post("/wizard", &[("csrf", &page.csrf()), ("code", &landed), ("account", "dev")]).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert!(res.body.contains("Added dev (dev@example.com)"), "{}", res.body);
    let dev = e.keeper.store().get_account("dev").await.unwrap().unwrap();
    assert_eq!(dev.provider, "codex");
    assert!(!res.body.contains(dev.credential.access_token.expose()));
    assert_eq!(e.mock.shape_counts(Shape::Codex).codes_exchanged, 1);
    // The same form again: that attempt is used up, and the new one is of Codex too.
    let res = c
        .post("/wizard", &[("csrf", &page.csrf()), ("code", &landed), ("account", "dev"), ("provider", "codex")])
        .await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", res.body);
    assert!(res.body.contains("expired or was already used"), "{}", res.body);
    let again = res.href_of("authorize");
    assert!(again.starts_with(&e.mock.shape_authorize_url(Shape::Codex)) && again != url, "{again}");
    assert!(res.body.contains("name=\"provider\" value=\"codex\""), "{}", res.body);

    // Gemini CLI: the bare code its page shows.
    let page = c.get("/wizard?provider=gemini").await;
    let url = page.href_of("authorize");
    assert!(url.starts_with(&e.mock.shape_authorize_url(Shape::Google)), "{url}");
    let landed = e.mock.authorize_shape(Shape::Google, &url, "g@example.com").unwrap();
    let code_of = |landed: &str| {
        let u = url::Url::parse(landed).unwrap();
        u.query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned()
    };
    let code = code_of(&landed);
    // A code from another attempt is refused and a new link offered, of the same provider.
    let res = c.post("/wizard", &[("csrf", &page.csrf()), ("code", "not-the-code"), ("account", "g")]).await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", res.body);
    let again = res.href_of("authorize");
    assert!(again.starts_with(&e.mock.shape_authorize_url(Shape::Google)) && again != url, "{again}");
    let landed = e.mock.authorize_shape(Shape::Google, &again, "g@example.com").unwrap();
    let code2 = code_of(&landed);
    assert_ne!(code, code2);
    let res = c.post("/wizard", &[("csrf", &res.csrf()), ("code", &code2), ("account", "g")]).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(e.keeper.store().get_account("g").await.unwrap().unwrap().provider, "gemini");

    // A provider without a login flow, or an unknown one, is a page that says so.
    let res = c.get("/wizard?provider=anthropic-api-key").await;
    assert_eq!(res.status, StatusCode::NOT_FOUND, "{}", res.body);
    assert!(res.body.contains("tokenkeeper import --provider anthropic-api-key"), "{}", res.body);
}

#[tokio::test]
async fn the_wizard_explains_bad_codes() {
    let e = env().await;
    let mut c = e.client();
    c.sign_in().await;
    let page = c.get("/wizard").await;
    let csrf = page.csrf();
    let url = page.href_of("authorize");

    let res = c.post("/wizard", &[("csrf", &csrf), ("code", "just-a-code"), ("account", "")]).await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(res.body.contains("including the part after the # sign"), "{}", res.body);
    assert_eq!(res.href_of("authorize"), url, "a typo keeps the attempt");

    let res = c.post("/wizard", &[("csrf", &csrf), ("code", "abc#not-this-attempt"), ("account", "")]).await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(res.body.contains("The code was not accepted"), "{}", res.body);
    assert!(res.body.contains("Start again"));
    assert_ne!(res.href_of("authorize"), url, "a new attempt was started");

    let res = c.post("/wizard", &[("csrf", &csrf), ("code", "a#b"), ("account", "bad name/")]).await;
    assert!(res.body.contains("The account name is not usable"), "{}", res.body);
    assert_eq!(e.mock.counts().exchange_ok, 0);

    // An attempt older than its lifetime is not used.
    let url = c.get("/wizard").await.href_of("authorize");
    let pasted = e.mock.authorize(&url, "late@example.com").unwrap();
    e.clock.advance(chrono::Duration::minutes(31));
    let res = c.post("/wizard", &[("csrf", &csrf), ("code", &pasted), ("account", "")]).await;
    assert!(res.body.contains("expired or was already used"), "{}", res.body);
    assert_eq!(e.mock.counts().exchange_ok, 0);
}

/// The attack CSRF protection exists for: another site's page makes the signed-in admin's
/// browser post a form here. Each way of getting it wrong is refused and changes nothing.
#[tokio::test]
async fn a_cross_site_form_post_without_the_csrf_token_is_refused() {
    let e = env().await;
    e.seed("main").await;
    let mut c = e.client();
    let csrf = c.sign_in().await;
    let evil = [("origin", "https://evil.example"), ("sec-fetch-site", "cross-site")];

    // A cross-site form has no token.
    let res = c.post_with("/accounts/main/remove", &[], &evil).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert!(res.body.contains("sent from another site"), "{}", res.body);
    // Even without the browser's fetch metadata, no token is no action.
    let res = c.post_with("/accounts/main/remove", &[], &[]).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert!(res.body.contains("security token is missing or out of date"), "{}", res.body);
    // A wrong token.
    let res = c.post("/accounts/main/remove", &[("csrf", "guessed-token")]).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    // Another session's token.
    let mut other = e.client();
    let other_csrf = other.sign_in().await;
    assert_ne!(other_csrf, csrf);
    let res = c.post("/accounts/main/remove", &[("csrf", &other_csrf)]).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    // The right token, but the browser says the form came from another site.
    let res = c.post_with("/accounts/main/remove", &[("csrf", &csrf)], &evil).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    let res = c.post_with("/accounts/main/refresh", &[("csrf", &csrf)], &[("sec-fetch-site", "cross-site")]).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    let res = c.post_with("/accounts/main/refresh", &[("csrf", &csrf)], &[("origin", "https://evil.example")]).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    // A token in a JSON body is not a form.
    let res = c
        .send(
            axum::http::Request::post("/paste")
                .header(header::HOST, HOST)
                .header(header::CONTENT_TYPE, "application/json")
                .body(axum::body::Body::from(format!("{{\"csrf\":\"{csrf}\",\"credential\":\"x\"}}")))
                .unwrap(),
        )
        .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);

    assert_eq!(e.keeper.store().list_accounts().await.unwrap().len(), 1, "nothing was removed");
    assert_eq!(e.mock.counts().token_requests, 0, "nothing was refreshed");
    // The same form from the page itself works.
    assert_eq!(c.post("/accounts/main/remove", &[("csrf", &csrf)]).await.status, StatusCode::SEE_OTHER);
    assert_eq!(e.keeper.store().list_accounts().await.unwrap().len(), 0);
}

#[tokio::test]
async fn logout_ends_the_session() {
    let e = env().await;
    let mut c = e.client();
    let csrf = c.sign_in().await;
    let id = c.cookie("tk_session").unwrap();
    let res = c.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    assert_eq!(res.location(), "/login");
    assert!(res.set_cookies().iter().any(|c| c.starts_with("tk_session=;") && c.contains("Max-Age=0")));
    assert!(c.cookie("tk_session").is_none());
    // The old id is dead on the server too, not just forgotten by the browser.
    c.cookies.push(("tk_session".into(), id));
    assert_eq!(c.get("/").await.location(), "/login");
}

#[tokio::test]
async fn sessions_expire_after_twelve_hours() {
    let clock = ManualClock::new(support::start());
    let e: Env = env_with(false, Some(clock.clone())).await;
    let mut c = e.client();
    c.sign_in().await;
    clock.advance(chrono::Duration::hours(11) + chrono::Duration::minutes(59));
    assert_eq!(c.get("/").await.status, StatusCode::OK);
    clock.advance(chrono::Duration::minutes(2));
    let res = c.get("/").await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    assert_eq!(res.location(), "/login");
}

#[tokio::test]
async fn the_dashboard_shows_each_sinks_state() {
    let e = env().await;
    e.seed("main").await;
    let dir = e.dir.path();
    std::fs::write(dir.join("not-a-dir"), "").unwrap();
    let sink = |name: &str, path: std::path::PathBuf| {
        serde_json::from_value::<tokenkeeper_core::config::SinkConfig>(serde_json::json!({
            "account": "main", "kind": "env_file", "name": name,
            "path": path, "key": "CLAUDE_CODE_OAUTH_TOKEN",
        }))
        .unwrap()
    };
    let sinks = std::sync::Arc::new(tokenkeeper_sync::sink::SinkSet::new(vec![
        sink("bot-env", dir.join("bot.env")),
        sink("broken-env", dir.join("not-a-dir").join("x.env")),
    ]));
    let account = e.keeper.store().get_account("main").await.unwrap().unwrap();
    let results = sinks.deliver_once(&account).await;
    assert!(results.iter().any(|(n, r)| n == "bot-env" && r.is_ok()), "{results:?}");
    assert!(results.iter().any(|(n, r)| n == "broken-env" && r.is_err()), "{results:?}");

    let state = tokenkeeper_web::WebState::new(
        e.keeper.clone(),
        Some(sinks),
        tokenkeeper_core::Secret::new(ADMIN_TOKEN),
        false,
    );
    let mut c = support::Client { app: tokenkeeper_web::router(state), cookies: Vec::new(), ip: None };
    c.sign_in().await;
    let b = c.get("/").await.body;
    assert!(b.contains("bot-env (env_file): <span class=\"badge ok\">OK</span>"), "{b}");
    assert!(b.contains("broken-env (env_file): <span class=\"badge bad\">Failing</span>"), "{b}");
    assert!(b.contains("class=\"badge warn\" id=\"level-main\">Warning"), "a failing sink is a warning: {b}");
}

#[tokio::test]
async fn a_rate_limited_refresh_says_when_to_try_again() {
    let e = env().await;
    e.seed("main").await;
    let mut c = e.client();
    let csrf = c.sign_in().await;
    e.clock.advance(chrono::Duration::hours(1));
    e.mock.push_fault(tokenkeeper_mock::Fault::RateLimited { retry_after_secs: 120 });
    let res = c.post("/accounts/main/refresh", &[("csrf", &csrf)]).await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    let dash = c.get("/").await;
    assert!(dash.body.contains("Could not refresh main right now"), "{}", dash.body);
    assert!(dash.body.contains("Try again in 2m."), "{}", dash.body);
    assert!(dash.body.contains("class=\"flash error\""), "{}", dash.body);
}

/// The `(data-x, data-kind)` of every mark in a strip's markup, in order.
fn marks(svg: &str) -> Vec<(u32, String)> {
    svg.split("data-x=\"")
        .skip(1)
        .map(|rest| {
            let x = rest[..rest.find('"').unwrap()].parse().unwrap();
            let k = rest.split("data-kind=\"").nth(1).unwrap();
            (x, k[..k.find('"').unwrap()].to_owned())
        })
        .collect()
}

fn permille_of(body: &str, id: &str) -> u32 {
    let e = support::element(body, id);
    let v = e.split("data-permille=\"").nth(1).unwrap_or_else(|| panic!("no bar in {e}"));
    v[..v.find('"').unwrap()].parse().unwrap()
}

#[tokio::test]
async fn the_dashboard_draws_the_fleet_with_exact_bars_strips_and_pools() {
    let e = support::fleet::env().await;
    let mut c = e.client();
    c.sign_in().await;
    let page = c.get("/").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let b = support::unescape(&page.body);
    let text = |id: &str| support::inner_text(&b, id);

    // The summary: a count per level, the next refresh, and who needs a person.
    for (level, n) in
        [("healthy", 3), ("expiring", 1), ("warning", 1), ("critical", 0), ("needs-login", 1), ("expired", 0)]
    {
        let count = support::element(&b, &format!("count-{level}"));
        assert!(count.contains(&format!("<span class=\"n\">{n}</span>")), "{level}: {count}");
    }
    let next = support::element(&b, "next-refresh");
    assert!(next.contains("Next refresh:</strong> expiring "), "the account inside its lead is next: {next}");
    let attention = support::element(&b, "attention-lapsed");
    assert!(
        attention.contains("Needs login") && attention.contains("The provider rejected its refresh token."),
        "{attention}"
    );
    assert!(attention.contains("href=\"/wizard\">Log in lapsed again</a>"), "{attention}");
    let sink = support::element(&b, "attention-deploy");
    assert!(sink.contains("Delivery to bot-env fails: cannot write /srv/bot/.env: permission denied."), "{sink}");
    assert!(sink.contains("Fix the sink bot-env") && sink.contains("tokenkeeper sync --account deploy"), "{sink}");
    assert!(b.find("id=\"attention-lapsed\"").unwrap() < b.find("id=\"attention-deploy\"").unwrap(), "worst first");
    for name in ["healthy", "expiring", "cooling", "laptop"] {
        assert!(!b.contains(&format!("id=\"attention-{name}\"")), "{name} needs nobody");
    }

    // Time-left bars: width over the token's lifetime, and the same in words.
    for (name, permille, label) in [
        ("healthy", 625, "5h 00m left of 8h 00m"),
        ("expiring", 21, "10m left of 8h 00m"),
        ("lapsed", 250, "2h 00m left of 8h 00m"),
        ("cooling", 875, "7h 00m left of 8h 00m"),
        ("laptop", 750, "6h 00m left of 8h 00m"),
        ("deploy", 500, "4h 00m left of 8h 00m"),
    ] {
        assert_eq!(permille_of(&b, &format!("left-bar-{name}")), permille, "{name}");
        assert_eq!(text(&format!("left-{name}")), label, "{name}");
    }
    assert!(support::element(&b, "left-bar-lapsed").contains("class=\"fill bad\""), "needs login is drawn red");
    assert!(support::element(&b, "left-bar-expiring").contains("class=\"fill info\""));
    assert_eq!(text("level-expiring"), "Refreshing soon");
    assert_eq!(text("level-lapsed"), "Needs login");
    assert_eq!(text("level-deploy"), "Warning");
    assert_eq!(text("follows-laptop"), "Follows Claude Code");

    // Refresh-token age against its 30-day life.
    assert_eq!(permille_of(&b, "rt-bar-healthy"), 200);
    assert_eq!(text("rt-healthy"), "6d 0h old of about 30d 0h; about 24d 0h left");
    assert_eq!(permille_of(&b, "rt-bar-lapsed"), 667);
    assert!(support::element(&b, "rt-bar-healthy").contains("class=\"fill ok\""));

    // The strips: each event at its place on the day (0 = 24 h ago, 1000 = now).
    let strip = |name: &str| marks(support::element(&b, &format!("strip-{name}")));
    assert_eq!(strip("healthy"), [(542, "refresh".to_owned()), (875, "refresh".to_owned())]);
    assert_eq!(strip("expiring"), [(674, "refresh".to_owned())]);
    assert_eq!(strip("lapsed"), [(750, "refresh".to_owned()), (958, "failure".to_owned())]);
    assert_eq!(strip("laptop"), [(917, "refresh".to_owned())]);
    assert_eq!(
        text("strip-text-healthy"),
        "2 refreshes, 0 failures in the last 24 hours; last refresh 3h 00m ago (09:00 UTC)."
    );
    assert_eq!(
        text("strip-text-lapsed"),
        "1 refresh, 1 failure in the last 24 hours; last failure 1h 00m ago (11:00 UTC)."
    );
    assert!(b.contains("refresh failed: invalid_grant: the refresh token was revoked"), "the events in words");

    // Usage and pools.
    assert_eq!(
        text("spark-text-healthy"),
        "40 requests and 8.0k tokens in the last 24 hours; busiest hour 10:00 UTC (30 requests)."
    );
    assert_eq!(text("spark-text-lapsed"), "Not used in the last 24 hours.");
    assert_eq!(text("pool-cooling-default"), "Cooling down until 13:30 UTC");
    assert!(support::element(&b, "pool-cooling-default").contains("data-state=\"cooling_down\""));
    assert_eq!(text("pool-healthy-default"), "Active");
    assert_eq!(text("pool-healthy-default-share"), "80% of the pool's 50 requests in 24 hours");
    assert_eq!(permille_of(&b, "pool-healthy-default-share-bar"), 800);
    assert_eq!(permille_of(&b, "pool-cooling-default-share-bar"), 200);
    assert_eq!(text("pool-default-summary"), "2 of 3 accounts active, 1 cooling down, 50 requests in 24 hours.");
    assert_eq!(text("member-default-cooling-state"), "Cooling down until 13:30 UTC");
    assert!(!b.contains("id=\"pool-laptop-default\""), "laptop is in no pool");

    // Most urgent first: needs login, warning, expiring, then by time left.
    let order: Vec<usize> = ["lapsed", "deploy", "expiring", "healthy", "laptop", "cooling"]
        .iter()
        .map(|n| b.find(&format!("id=\"account-{n}\"")).unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    for name in support::fleet::NAMES {
        assert!(
            !b.contains(&format!("oat01-{name}-")) && !b.contains(&format!("ort01-{name}")),
            "no token of {name} on the page"
        );
    }
}

#[tokio::test]
async fn the_dashboards_filters_and_order_live_in_the_query_string() {
    let e = support::fleet::env().await;
    let mut c = e.client();
    c.sign_in().await;
    let cards = |body: &str| -> Vec<String> {
        body.match_indices("<section class=\"card\" id=\"account-")
            .map(|(i, m)| {
                let rest = &body[i + m.len()..];
                rest[..rest.find('"').unwrap()].to_owned()
            })
            .collect()
    };
    let page = c.get("/?level=needs-login").await.body;
    assert_eq!(cards(&page), ["lapsed"]);
    assert_eq!(support::inner_text(&page, "shown"), "Showing 1 of 6 accounts.");
    assert!(page.contains("<option value=\"needs-login\" selected>"), "the form shows the filter");
    assert!(
        support::element(&page, "count-healthy").contains("<span class=\"n\">3</span>"),
        "counts cover every account"
    );

    assert_eq!(cards(&c.get("/?level=attention").await.body), ["lapsed", "deploy"]);
    assert_eq!(cards(&c.get("/?pool=default&sort=name").await.body), ["cooling", "expiring", "healthy"]);
    assert_eq!(cards(&c.get("/?q=LAP").await.body), ["lapsed", "laptop"], "any case, name or email");
    assert_eq!(
        cards(&c.get("/?q=example.com&sort=time-left").await.body),
        ["expiring", "lapsed", "deploy", "healthy", "laptop", "cooling"]
    );
    let none = c.get("/?provider=nobody").await.body;
    assert!(cards(&none).is_empty());
    assert!(none.contains("No account matches these filters."), "{none}");
    // An unknown order falls back to the default rather than failing.
    assert_eq!(c.get("/?sort=sideways").await.status, StatusCode::OK);
}
