//! The page in a real browser: headless Chromium driven over WebDriver (fantoccini and Debian's
//! chromedriver).
//!
//! - A person signs in, sees the dashboard, logs an account in through the wizard and the mock
//!   provider's authorize page, pastes a credential, refreshes one account and removes another
//!   through the confirm page.
//! - The dashboard of a six-account fleet at a fixed instant (`support::fleet`): the bars,
//!   strips and pool states the browser lays out have the widths and labels the known expiries
//!   and events give; no sideways scroll at 375 px; axe-core finds no serious or critical
//!   accessibility problem at 375 and 1280 px; the optional script updates numbers in place;
//!   and the page works with JavaScript disabled.
//!
//! Screenshots (375 and 1280 px) go to a temporary directory, or to `$TOKENKEEPER_SCREENSHOTS`
//! when set (that is how `docs/img/` was made).
//!
//! Chromium, chromedriver and axe-core must be installed (`scripts/test-deps` does it); without
//! them the tests fail with a message that says so rather than skipping, so CI cannot pass
//! without having run them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use tokenkeeper_core::ManualClock;
use tokenkeeper_core::Secret;
use tokenkeeper_keeper::{testing, Keeper};
use tokenkeeper_mock::MockProvider;
use tokenkeeper_web::{router, WebState};

const ADMIN_TOKEN: &str = "browser-test-admin-token-0123456789";
const WAIT: Duration = Duration::from_secs(20);

/// Finds a program on `PATH`.
fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|d| d.join(program)).find(|p| p.is_file()))
        .unwrap_or_default()
}

/// chromedriver in its own process group, killed with everything it started when dropped
/// (also when the test panics).
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start(chromedriver: &Path) -> Driver {
        // A free port: the system picks one, then chromedriver takes it over.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut child = std::os::unix::process::CommandExt::process_group(
            Command::new(chromedriver).arg(format!("--port={port}")).arg("--allowed-ips=127.0.0.1"),
            0,
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}; run scripts/test-deps", chromedriver.display()));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("started successfully") {
                    let _ = tx.send(());
                }
            }
        });
        let driver = Driver { child, port };
        if rx.recv_timeout(WAIT).is_err() {
            panic!(
                "chromedriver ({}) did not report that it started within {WAIT:?}; run scripts/test-deps \
                 (installs Debian's chromium and chromium-driver, whose versions must match)",
                chromedriver.display()
            );
        }
        driver
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group holds chromedriver and any Chromium it launched; its id is chromedriver's
        // pid, which stays reserved until the `wait` below reaps it.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Site {
    base: String,
    mock: MockProvider,
    keeper: Arc<Keeper>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// The page's router plus a stand-in for the rest of the server, on a free loopback port, over
/// a keeper on the mock provider (real time: the browser lives in it too).
async fn serve() -> Site {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockProvider::start().await.unwrap();
    let config = Arc::new(testing::mock_config(&mock));
    let (_, keeper) = testing::open_keeper(dir.path(), config, tokenkeeper_core::system_clock_handle()).await;
    let state = WebState::new(keeper.clone(), None, Secret::new(ADMIN_TOKEN), false);
    let app = router(state).route("/health", axum::routing::get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    Site { base: format!("http://{addr}"), mock, keeper, shutdown: Some(tx), task, _dir: dir }
}

impl Site {
    async fn seed(&self, name: &str) {
        support::log_in(&self.keeper, &self.mock, name).await;
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
        self.mock.stop().await;
    }
}

/// Where screenshots go: `$TOKENKEEPER_SCREENSHOTS` when set, else a temporary directory that
/// lives as long as the value.
struct Shots {
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Shots {
    fn new() -> Shots {
        match std::env::var_os("TOKENKEEPER_SCREENSHOTS") {
            Some(dir) => {
                std::fs::create_dir_all(&dir).unwrap();
                Shots { dir: dir.into(), _temp: None }
            }
            None => {
                let temp = tempfile::tempdir().unwrap();
                Shots { dir: temp.path().to_owned(), _temp: Some(temp) }
            }
        }
    }

    async fn shoot(&self, c: &Client, name: &str) {
        let png = c.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(self.dir.join(format!("{name}.png")), png).unwrap();
    }
}

/// Sizes the window so that the page itself (the viewport) is `width` × `height`: the window
/// also holds browser parts, which differ between versions.
async fn set_viewport(c: &Client, width: u32, height: u32) {
    c.set_window_size(width, height).await.unwrap();
    let v = c.execute("return [window.innerWidth, window.innerHeight];", vec![]).await.unwrap();
    let (w, h) = (v[0].as_u64().unwrap(), v[1].as_u64().unwrap());
    let (w, h) = (u32::try_from(w).unwrap(), u32::try_from(h).unwrap());
    c.set_window_size(2 * width - w, 2 * height - h).await.unwrap();
}

/// At phone width nothing may stick out sideways.
async fn assert_no_overflow(c: &Client, page: &str) {
    let v = c
        .execute("return [document.documentElement.scrollWidth, window.innerWidth, document.body.scrollWidth];", vec![])
        .await
        .unwrap();
    let (scroll, inner) = (v[0].as_i64().unwrap(), v[1].as_i64().unwrap());
    assert!(inner <= 375, "{page}: the viewport is {inner} px wide, expected a phone's 375");
    assert!(scroll <= inner, "{page}: scrollWidth {scroll} > innerWidth {inner}: the page overflows at phone width");
}

/// A token issued a moment ago: 8 hours less the seconds the test took.
fn fresh(s: &str) -> bool {
    s.contains("valid for 7h 59m") || s.contains("valid for 8h 00m")
}

/// Waits for an element; on failure says where the browser was and what it showed.
async fn find(c: &Client, css: &str) -> fantoccini::elements::Element {
    match c.wait().at_most(WAIT).for_element(Locator::Css(css)).await {
        Ok(e) => e,
        Err(e) => {
            let url = c.current_url().await.map(|u| u.to_string()).unwrap_or_default();
            let source = c.source().await.unwrap_or_default();
            panic!("no `{css}` at {url} ({e}); the page was:\n{source}");
        }
    }
}

/// Runs `act` on the element, finding it again if the page was replaced between the find and
/// the action (a form's answer arriving just then).
async fn with_element<T, F, Fut>(c: &Client, css: &str, act: F) -> T
where
    F: Fn(fantoccini::elements::Element) -> Fut,
    Fut: std::future::Future<Output = Result<T, fantoccini::error::CmdError>>,
{
    let mut attempts = 0;
    loop {
        match act(find(c, css).await).await {
            Ok(v) => return v,
            Err(e) if e.is_stale_element_reference() && attempts < 5 => attempts += 1,
            Err(e) => panic!("acting on `{css}` failed: {e}"),
        }
    }
}

async fn text(c: &Client, css: &str) -> String {
    with_element(c, css, |e| async move { e.text().await }).await
}

async fn click(c: &Client, css: &str) {
    with_element(c, css, |e| async move { e.click().await }).await
}

/// Clicks what submits a form or follows a link, and returns once the browser has replaced
/// the page: chromedriver's click can return before the answer arrives, and reading the
/// flash then would read the previous page's.
async fn submit(c: &Client, css: &str) {
    let old = c.find(Locator::Css("html")).await.unwrap();
    click(c, css).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match old.tag_name().await {
            Err(e) if e.is_stale_element_reference() => return,
            Err(e) => panic!("waiting for `{css}` to load a page failed: {e}"),
            Ok(_) if tokio::time::Instant::now() > deadline => panic!("`{css}` loaded no new page within {WAIT:?}"),
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn fill(c: &Client, css: &str, value: &str) {
    with_element(c, css, |e| async move {
        e.clear().await?;
        e.send_keys(value).await
    })
    .await
}

/// Headless Chromium under its own chromedriver, with a throwaway profile.
struct Browser {
    client: Client,
    driver: Driver,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium (with JavaScript on or off) at a 375 × 800 viewport.
    async fn start(javascript: bool) -> Browser {
        let (Some(chromium), Some(chromedriver)) = (which("chromium"), which("chromedriver")) else {
            panic!(
                "the browser test needs `chromium` and `chromedriver` on PATH: run scripts/test-deps \
                 (installs Debian's chromium and chromium-driver)"
            );
        };
        let driver = Driver::start(&chromedriver);
        let profile = tempfile::tempdir().unwrap();
        let mut options = json!({
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=375,800",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        });
        if !javascript {
            // The content setting a person uses to turn JavaScript off (2 = block).
            options["prefs"] = json!({"profile.managed_default_content_settings.javascript": 2});
        }
        let mut caps = Capabilities::new();
        caps.insert("goog:chromeOptions".into(), options);
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .unwrap_or_else(|e| panic!("no WebDriver session with headless Chromium ({e}); run scripts/test-deps"));
        if javascript {
            set_viewport(&client, 375, 800).await;
        } else {
            // Without JavaScript the viewport cannot be measured; the window is sized as with it.
            client.set_window_size(375, 800).await.unwrap();
        }
        Browser { client, driver, _profile: profile }
    }

    async fn close(self) {
        self.client.close().await.unwrap();
        drop(self.driver);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_manages_accounts_from_a_phone_browser() {
    let site = serve().await;
    site.seed("main").await;
    site.seed("spare").await;
    let browser = Browser::start(true).await;
    let c = browser.client.clone();
    let shots = Shots::new();
    set_viewport(&c, 375, 800).await;
    let base = site.base.clone();

    // Sign in.
    c.goto(&format!("{base}/")).await.unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/login"), "signed out: sent to the sign-in page");
    assert_no_overflow(&c, "login").await;
    shots.shoot(&c, "login-375").await;
    fill(&c, "#token", "wrong token").await;
    submit(&c, "#sign-in").await;
    assert!(text(&c, "#error").await.contains("That is not the admin token"));
    fill(&c, "#token", ADMIN_TOKEN).await;
    submit(&c, "#sign-in").await;

    // The dashboard.
    assert_eq!(text(&c, "#flash").await, "Signed in.");
    let main = text(&c, "#account-main").await;
    assert!(main.contains("Healthy") && fresh(&main), "{main}");
    let spare = text(&c, "#account-spare").await;
    assert!(spare.contains("spare@example.com"), "the email is shown: {spare}");
    assert_no_overflow(&c, "dashboard").await;

    // The login wizard: the authorize link opens the provider in a new tab.
    submit(&c, "a[href='/wizard']").await;
    assert_no_overflow(&c, "wizard").await;
    shots.shoot(&c, "wizard-375").await;
    let page_tab = c.window().await.unwrap();
    click(&c, "#authorize").await;
    let provider_tab = c.windows().await.unwrap().into_iter().find(|w| *w != page_tab).expect("a new tab");
    c.switch_to_window(provider_tab).await.unwrap();
    click(&c, "#approve").await;
    let code = text(&c, "#code").await;
    assert!(code.contains('#'), "CODE#STATE: {code}");
    c.close_window().await.unwrap();
    c.switch_to_window(page_tab).await.unwrap();
    fill(&c, "#code", &code).await;
    fill(&c, "#account", "browser").await;
    submit(&c, "#finish-login").await;
    let result = text(&c, "#result").await;
    assert!(result.contains("Added browser (browser@example.com): valid for ") && fresh(&result), "{result}");
    assert!(site.keeper.store().get_account("browser").await.unwrap().is_some());

    // Paste a credential.
    let pasted = site.mock.issue_login("pasted@example.com");
    let json = json!({"claudeAiOauth": {
        "accessToken": pasted.access_token, "refreshToken": pasted.refresh_token,
        "expiresAt": pasted.expires_at_ms, "scopes": ["user:inference", "user:profile"]
    }})
    .to_string();
    c.goto(&format!("{base}/paste")).await.unwrap();
    assert_no_overflow(&c, "paste").await;
    shots.shoot(&c, "paste-375").await;
    assert!(text(&c, "#curl-command").await.contains(&format!("curl -X POST {base}/api/push")));
    fill(&c, "#credential", &json).await;
    fill(&c, "#account", "pasted").await;
    submit(&c, "#store").await;
    let flash = text(&c, "#flash").await;
    assert!(flash.starts_with("Added pasted: valid for ") && fresh(&flash), "{flash}");
    assert!(!c.source().await.unwrap().contains(&pasted.access_token), "no token on the page");

    // Refresh one account.
    let before = site.mock.counts().refresh_ok;
    submit(&c, "#refresh-main").await;
    let flash = text(&c, "#flash").await;
    assert!(flash.starts_with("Refreshed main: valid for"), "{flash}");
    assert_eq!(site.mock.counts().refresh_ok, before + 1);
    assert_no_overflow(&c, "dashboard with four accounts").await;
    shots.shoot(&c, "dashboard-375").await;

    // Remove another, through the confirm page.
    submit(&c, "#remove-spare").await;
    assert!(text(&c, "h1").await.contains("Remove spare?"));
    assert_no_overflow(&c, "confirm").await;
    shots.shoot(&c, "remove-375").await;
    submit(&c, "#confirm-remove").await;
    assert_eq!(text(&c, "#flash").await, "Removed spare. Its sinks keep their last written token.");
    assert!(c.find(Locator::Css("#account-spare")).await.is_err(), "gone from the dashboard");
    assert!(site.keeper.store().get_account("spare").await.unwrap().is_none());

    // The desktop view.
    set_viewport(&c, 1280, 900).await;
    c.goto(&format!("{base}/")).await.unwrap();
    text(&c, "#account-main").await;
    shots.shoot(&c, "dashboard-1280").await;

    // Sign out.
    submit(&c, "#logout").await;
    find(&c, "#sign-in").await;
    assert!(c.current_url().await.unwrap().path().ends_with("/login"));
    c.goto(&format!("{base}/")).await.unwrap();
    find(&c, "#sign-in").await;

    browser.close().await;
    site.stop().await;
}

/// `app` on a free loopback port until the sender is dropped or fired.
async fn serve_app(app: axum::Router) -> (String, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    (format!("http://{addr}"), tx, task)
}

async fn sign_in(c: &Client, base: &str) {
    c.goto(&format!("{base}/")).await.unwrap();
    fill(c, "#token", support::ADMIN_TOKEN).await;
    submit(c, "#sign-in").await;
    find(c, "#summary").await;
}

/// axe-core's `axe.min.js`, installed by `scripts/test-deps`.
fn axe_source() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/axe/node_modules/axe-core/axe.min.js");
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("axe-core is missing ({}: {e}): run scripts/test-deps, which installs it from npm", path.display())
    })
}

/// Runs axe-core in the page and fails on any serious or critical finding.
async fn assert_accessible(c: &Client, axe: &str, page: &str) {
    c.execute(axe, vec![]).await.unwrap();
    let found = c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document, {resultTypes: ['violations']})
               .then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                    nodes: v.nodes.slice(0, 5).map(n => n.target.join(' '))}))))
               .catch(e => done([{id: 'axe-error', impact: 'critical', help: String(e), nodes: []}]));",
            vec![],
        )
        .await
        .unwrap();
    let bad: Vec<_> = found
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
        .collect();
    assert!(bad.is_empty(), "{page}: axe-core found serious or critical problems: {bad:#?}");
}

/// The share of its chart a bar's fill covers, as laid out by the browser.
async fn laid_out_fraction(c: &Client, svg_id: &str) -> f64 {
    let v = c
        .execute(
            "const s = document.getElementById(arguments[0]);
             return s.querySelector('rect.fill').getBoundingClientRect().width / s.getBoundingClientRect().width;",
            vec![json!(svg_id)],
        )
        .await
        .unwrap();
    v.as_f64().unwrap()
}

/// Each strip mark's centre as a share of the strip's width, as laid out, with its kind.
async fn laid_out_marks(c: &Client, svg_id: &str) -> Vec<(f64, String)> {
    let v = c
        .execute(
            "const s = document.getElementById(arguments[0]); const box = s.getBoundingClientRect();
             return Array.from(s.querySelectorAll('rect.mark')).map(m => {
               const r = m.getBoundingClientRect();
               return [(r.left + r.width / 2 - box.left) / box.width, m.dataset.kind];
             });",
            vec![json!(svg_id)],
        )
        .await
        .unwrap();
    v.as_array().unwrap().iter().map(|m| (m[0].as_f64().unwrap(), m[1].as_str().unwrap().to_owned())).collect()
}

fn close_to(actual: f64, expected: f64) -> bool {
    (actual - expected).abs() < 0.01
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_fleet_at_a_glance_on_a_phone_a_desktop_and_without_javascript() {
    let axe = axe_source();
    let e = support::fleet::env().await;
    let clock: ManualClock = e.clock.clone();
    let (base, stop, task) = serve_app(e.app.clone()).await;
    let shots = Shots::new();
    let browser = Browser::start(true).await;
    let c = browser.client.clone();
    sign_in(&c, &base).await;

    // Six accounts in six situations.
    for name in support::fleet::NAMES {
        find(&c, &format!("#account-{name}")).await;
    }
    assert_eq!(text(&c, "#level-lapsed").await, "Needs login");
    assert_eq!(text(&c, "#level-expiring").await, "Refreshing soon");
    assert_eq!(text(&c, "#level-deploy").await, "Warning");
    assert_eq!(text(&c, "#follows-laptop").await, "Follows Claude Code");
    assert_eq!(text(&c, "#pool-cooling-default").await, "Cooling down until 13:30 UTC");
    assert!(text(&c, "#attention-lapsed").await.contains("Log in lapsed again"));
    assert!(text(&c, "#attention-deploy").await.contains("Fix the sink bot-env"));

    // The bars as laid out: width over the lifetime, and the label that says the same.
    for (name, fraction, label) in [
        ("healthy", 0.625, "5h 00m left of 8h 00m"),
        ("expiring", 0.021, "10m left of 8h 00m"),
        ("lapsed", 0.25, "2h 00m left of 8h 00m"),
        ("cooling", 0.875, "7h 00m left of 8h 00m"),
        ("laptop", 0.75, "6h 00m left of 8h 00m"),
        ("deploy", 0.5, "4h 00m left of 8h 00m"),
    ] {
        let laid = laid_out_fraction(&c, &format!("left-bar-{name}")).await;
        assert!(close_to(laid, fraction), "{name}: the bar covers {laid}, expected {fraction}");
        assert_eq!(text(&c, &format!("#left-{name}")).await, label, "{name}");
    }
    assert!(close_to(laid_out_fraction(&c, "rt-bar-healthy").await, 0.2), "6 of 30 days");
    assert!(close_to(laid_out_fraction(&c, "pool-healthy-default-share-bar").await, 0.8), "80 % of the pool");
    // The strips: each mark where its event falls on the last 24 hours.
    let marks = laid_out_marks(&c, "strip-lapsed").await;
    assert_eq!(marks.len(), 2, "{marks:?}");
    assert!(close_to(marks[0].0, 0.75) && marks[0].1 == "refresh", "{marks:?}");
    assert!(close_to(marks[1].0, 23.0 / 24.0) && marks[1].1 == "failure", "{marks:?}");
    let marks = laid_out_marks(&c, "strip-healthy").await;
    assert!(close_to(marks[0].0, 13.0 / 24.0) && close_to(marks[1].0, 21.0 / 24.0), "{marks:?}");
    assert_eq!(
        text(&c, "#strip-text-lapsed").await,
        "1 refresh, 1 failure in the last 24 hours; last failure 1h 00m ago (11:00 UTC)."
    );

    assert_no_overflow(&c, "dashboard of six accounts").await;
    shots.shoot(&c, "dashboard-fleet-375").await;
    c.execute("document.getElementById('account-lapsed').scrollIntoView();", vec![]).await.unwrap();
    shots.shoot(&c, "dashboard-fleet-card-375").await;
    assert_accessible(&c, &axe, "dashboard at 375 px").await;

    // The optional script updates the numbers in place: a minute later, without a reload, and
    // without replacing what did not change (the card's buttons stay the same elements).
    let on = c.execute("return document.documentElement.dataset.liveScript || null;", vec![]).await.unwrap();
    assert_eq!(on, json!("on"), "the script from /assets/dashboard.js ran under the page's policy");
    c.execute("document.getElementById('refresh-healthy').dataset.marker = 'kept';", vec![]).await.unwrap();
    clock.advance(chrono::Duration::minutes(1));
    let changed = c
        .execute_async(
            "const done = arguments[arguments.length - 1]; window.tokenkeeperLive.refresh().then(done);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(changed, json!(6), "each of the six cards changed, nothing else did");
    assert_eq!(text(&c, "#left-healthy").await, "4h 59m left of 8h 00m");
    assert_eq!(text(&c, "#left-expiring").await, "9m left of 8h 00m");
    let marker =
        c.execute("return document.getElementById('refresh-healthy').dataset.marker || null;", vec![]).await.unwrap();
    assert_eq!(marker, json!("kept"), "updated in place, not reloaded or rebuilt");
    clock.set(support::fleet::now());

    // The desktop view.
    set_viewport(&c, 1280, 900).await;
    c.goto(&format!("{base}/")).await.unwrap();
    find(&c, "#account-healthy").await;
    shots.shoot(&c, "dashboard-fleet-1280").await;
    c.execute("document.getElementById('accounts').scrollIntoView();", vec![]).await.unwrap();
    shots.shoot(&c, "dashboard-fleet-cards-1280").await;
    c.execute("window.scrollTo(0, 0);", vec![]).await.unwrap();
    assert_accessible(&c, &axe, "dashboard at 1280 px").await;
    // Filters live in the query string: a count links to its level.
    submit(&c, "#count-needs-login").await;
    find(&c, "#shown").await;
    assert!(c.current_url().await.unwrap().query().unwrap_or_default().contains("level=needs-login"));
    assert_eq!(text(&c, "#shown").await, "Showing 1 of 6 accounts.");
    browser.close().await;

    // With JavaScript disabled: the same page, the same numbers, plain links and forms.
    let browser = Browser::start(false).await;
    let c = browser.client.clone();
    sign_in(&c, &base).await;
    assert_eq!(text(&c, "#left-healthy").await, "5h 00m left of 8h 00m");
    assert_eq!(text(&c, "#pool-cooling-default").await, "Cooling down until 13:30 UTC");
    let html = c.find(Locator::Css("html")).await.unwrap();
    assert_eq!(html.attr("data-live-script").await.unwrap(), None, "the script did not run");
    let bar = c.find(Locator::Css("#left-bar-healthy rect.fill")).await.unwrap();
    assert_eq!(bar.attr("width").await.unwrap().as_deref(), Some("625"));
    // The filter form is a plain GET form.
    fill(&c, "#f-q", "lap").await;
    submit(&c, "#apply-filters").await;
    find(&c, "#clear-filters").await;
    assert!(c.current_url().await.unwrap().query().unwrap_or_default().contains("q=lap"));
    assert_eq!(text(&c, "#shown").await, "Showing 2 of 6 accounts.");
    assert!(c.find(Locator::Css("#account-healthy")).await.is_err());
    browser.close().await;

    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    e.base.mock.stop().await;
}
