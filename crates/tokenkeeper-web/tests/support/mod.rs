//! Test support: a keeper over a temp store and the mock provider, the page's router, and a
//! tiny cookie-keeping client for `Router::oneshot`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod fleet;

use std::net::SocketAddr;
use std::ops::Deref;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use tower::ServiceExt as _;

use tokenkeeper_core::{ManualClock, Secret};
use tokenkeeper_keeper::testing;
use tokenkeeper_mock::IssuedTokens;
use tokenkeeper_web::{router, WebState};

#[allow(unused_imports)]
pub use tokenkeeper_keeper::testing::{claude_json, start};

pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789abcdef";
pub const HOST: &str = "keeper.test:8377";

/// The keeper's test environment (reached through `Deref`) plus the page's state and router.
pub struct Env {
    pub base: testing::Env,
    pub state: WebState,
    pub app: Router,
}

impl Deref for Env {
    type Target = testing::Env;

    fn deref(&self) -> &testing::Env {
        &self.base
    }
}

/// A keeper over the mock on a manual clock, and the page with `secure_cookies`.
pub async fn env_with(secure_cookies: bool, clock: Option<ManualClock>) -> Env {
    let base = testing::env_at(clock.unwrap_or_else(|| ManualClock::new(start())), |_| {}).await;
    let state = WebState::new(base.keeper.clone(), None, Secret::new(ADMIN_TOKEN), secure_cookies);
    let app = router(state.clone());
    Env { base, state, app }
}

/// As [`env`], with the keeper's configuration changed by `tweak` first.
pub async fn env_configured(tweak: impl FnOnce(&mut tokenkeeper_core::Config)) -> Env {
    let base = testing::env_at(ManualClock::new(start()), tweak).await;
    let state = WebState::new(base.keeper.clone(), None, Secret::new(ADMIN_TOKEN), false);
    let app = router(state.clone());
    Env { base, state, app }
}

pub async fn env() -> Env {
    env_with(false, None).await
}

impl Env {
    /// Logs in at the mock as `name@example.com` and stores the account with that email (its
    /// mode left to the keeper), as the login wizard does.
    pub async fn seed(&self, name: &str) -> IssuedTokens {
        log_in(&self.base.keeper, &self.base.mock, name).await
    }

    pub fn client(&self) -> Client {
        Client { app: self.app.clone(), cookies: Vec::new(), ip: None }
    }
}

/// The HTML from the element with `id` to the end of that element's line of markup: the
/// start tag and what the template writes after it up to the next newline (every chart and
/// label is written on one line).
pub fn element<'a>(body: &'a str, id: &str) -> &'a str {
    let marker = format!("id=\"{id}\"");
    let at = body.find(&marker).unwrap_or_else(|| panic!("no #{id} in:\n{body}"));
    let start = body[..at].rfind('<').unwrap();
    let end = body[at..].find('\n').map_or(body.len(), |e| at + e);
    &body[start..end]
}

/// The text inside the element with `id` (up to its first closing tag).
pub fn inner_text(body: &str, id: &str) -> String {
    let e = element(body, id);
    let open_end = e.find('>').unwrap() + 1;
    let close = e[open_end..].find("</").map_or(e.len(), |c| open_end + c);
    e[open_end..close].to_owned()
}

/// Logs in at `mock` as `name@example.com` and has `keeper` store the account `name` with
/// that email. (`testing::log_in` leaves the email unknown, as an import of a bare token
/// would; the dashboard shows the email, so its tests need one.)
pub async fn log_in(
    keeper: &tokenkeeper_keeper::Keeper,
    mock: &tokenkeeper_mock::MockProvider,
    name: &str,
) -> IssuedTokens {
    let email = format!("{name}@example.com");
    let t = mock.issue_login(&email);
    let parsed = tokenkeeper_core::formats::ParsedCredential {
        credential: testing::Env::credential(&t),
        format: tokenkeeper_core::formats::Format::ClaudeJson,
        email: Some(email),
    };
    keeper
        .ingest(tokenkeeper_keeper::Ingest {
            account: Some(name.into()),
            parsed,
            mode: None,
            binding: None,
            change: tokenkeeper_core::store::CredentialChange::LoggedIn,
            organization: None,
            provider: None,
        })
        .await
        .unwrap();
    t
}

/// A response, read whole.
#[derive(Debug)]
pub struct Page {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    pub fn location(&self) -> &str {
        self.headers.get(header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    pub fn set_cookies(&self) -> Vec<String> {
        self.headers.get_all(header::SET_COOKIE).iter().map(|v| v.to_str().unwrap().to_owned()).collect()
    }

    /// The value of the first hidden `csrf` field.
    pub fn csrf(&self) -> String {
        hidden(&self.body, "csrf").unwrap_or_else(|| panic!("no csrf field in:\n{}", self.body))
    }

    /// The `href` of the element with this id (HTML entities of URLs undone).
    pub fn href_of(&self, id: &str) -> String {
        let at = self.body.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in:\n{}", self.body));
        let tag_start = self.body[..at].rfind('<').unwrap();
        let tag = &self.body[tag_start..];
        let href = tag.find("href=\"").unwrap() + 6;
        let end = tag[href..].find('"').unwrap();
        unescape(&tag[href..href + end])
    }
}

pub fn unescape(s: &str) -> String {
    s.replace("&amp;", "&").replace("&#x2f;", "/").replace("&#x3d;", "=").replace("&quot;", "\"").replace("&#x27;", "'")
}

pub fn hidden(body: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let at = body.find(&marker)? + marker.len();
    let end = body[at..].find('"')?;
    Some(unescape(&body[at..at + end]))
}

/// Keeps cookies between requests, like a browser on this one site.
pub struct Client {
    pub app: Router,
    pub cookies: Vec<(String, String)>,
    pub ip: Option<SocketAddr>,
}

impl Client {
    pub fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    fn remember(&mut self, page: &Page) {
        for c in page.set_cookies() {
            let first = c.split(';').next().unwrap();
            let (k, v) = first.split_once('=').unwrap();
            self.cookies.retain(|(n, _)| n != k);
            if !v.is_empty() && !c.contains("Max-Age=0") {
                self.cookies.push((k.to_owned(), v.to_owned()));
            }
        }
    }

    pub fn cookie(&self, name: &str) -> Option<String> {
        self.cookies.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    pub async fn send(&mut self, mut req: Request<Body>) -> Page {
        if !self.cookies.is_empty() {
            req.headers_mut().insert(header::COOKIE, self.cookie_header().parse().unwrap());
        }
        if let Some(ip) = self.ip {
            req.extensions_mut().insert(ConnectInfo(ip));
        }
        let res = self.app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
        let page = Page { status, headers, body: String::from_utf8(bytes.to_vec()).unwrap() };
        self.remember(&page);
        page
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let req = Request::builder().uri(path).header(header::HOST, HOST).body(Body::empty()).unwrap();
        self.send(req).await
    }

    /// A same-origin form post, as a browser sends it from the page.
    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        self.post_with(path, fields, &[("origin", &format!("http://{HOST}")), ("sec-fetch-site", "same-origin")]).await
    }

    pub async fn post_with(&mut self, path: &str, fields: &[(&str, &str)], extra: &[(&str, &str)]) -> Page {
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
        let mut b = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::HOST, HOST)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        self.send(b.body(Body::from(body)).unwrap()).await
    }

    /// Signs in with `token`; returns the answer to the POST.
    pub async fn sign_in_with(&mut self, token: &str) -> Page {
        let form = self.get("/login").await;
        assert_eq!(form.status, StatusCode::OK, "{}", form.body);
        let csrf = form.csrf();
        self.post("/login", &[("token", token), ("csrf", &csrf)]).await
    }

    /// Signs in with the admin token and returns the dashboard's CSRF token.
    pub async fn sign_in(&mut self) -> String {
        let res = self.sign_in_with(ADMIN_TOKEN).await;
        assert_eq!(res.status, StatusCode::SEE_OTHER, "{}", res.body);
        assert_eq!(res.location(), "/");
        let dash = self.get("/").await;
        assert_eq!(dash.status, StatusCode::OK, "{}", dash.body);
        dash.csrf()
    }
}
