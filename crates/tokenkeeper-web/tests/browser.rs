//! The page in a real browser: headless Chromium driven over WebDriver (fantoccini and Debian's
//! chromedriver). Signs in, sees the dashboard, logs an account in through the wizard and the
//! mock provider's authorize page, pastes a credential, refreshes one account and removes
//! another through the confirm page; saves screenshots at phone and desktop widths to
//! `target/screenshots/` and checks that no page scrolls sideways at 375 px.
//!
//! Chromium and chromedriver must be installed (`scripts/test-deps` does it); without them the
//! test fails rather than skipping, so CI cannot pass without having run it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

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
        rx.recv_timeout(WAIT).expect("chromedriver did not report that it started");
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
        testing::log_in(&self.keeper, &self.mock, name, None, None).await;
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
        self.mock.stop().await;
    }
}

fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shoot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(screenshot_dir().join(format!("{name}.png")), png).unwrap();
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

async fn fill(c: &Client, css: &str, value: &str) {
    with_element(c, css, |e| async move {
        e.clear().await?;
        e.send_keys(value).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_manages_accounts_from_a_phone_browser() {
    let (Some(chromium), Some(chromedriver)) = (which("chromium"), which("chromedriver")) else {
        panic!(
            "the browser test needs `chromium` and `chromedriver` on PATH: run scripts/test-deps \
             (installs Debian's chromium and chromium-driver)"
        );
    };
    let site = serve().await;
    site.seed("main").await;
    site.seed("spare").await;
    let driver = Driver::start(&chromedriver);
    let profile = tempfile::tempdir().unwrap();

    let mut caps = Capabilities::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=375,800",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let c = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session with headless Chromium");
    set_viewport(&c, 375, 800).await;
    let base = site.base.clone();

    // Sign in.
    c.goto(&format!("{base}/")).await.unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/login"), "signed out: sent to the sign-in page");
    assert_no_overflow(&c, "login").await;
    shoot(&c, "login-375").await;
    fill(&c, "#token", "wrong token").await;
    click(&c, "#sign-in").await;
    assert!(text(&c, "#error").await.contains("That is not the admin token"));
    fill(&c, "#token", ADMIN_TOKEN).await;
    click(&c, "#sign-in").await;

    // The dashboard.
    assert_eq!(text(&c, "#flash").await, "Signed in.");
    let main = text(&c, "#account-main").await;
    assert!(main.contains("Healthy") && fresh(&main), "{main}");
    assert!(text(&c, "#account-spare").await.contains("spare@example.com") || main.contains("main"));
    assert_no_overflow(&c, "dashboard").await;

    // The login wizard: the authorize link opens the provider in a new tab.
    click(&c, "a[href='/wizard']").await;
    assert_no_overflow(&c, "wizard").await;
    shoot(&c, "wizard-375").await;
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
    click(&c, "#finish-login").await;
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
    shoot(&c, "paste-375").await;
    assert!(text(&c, "#curl-command").await.contains(&format!("curl -X POST {base}/api/push")));
    fill(&c, "#credential", &json).await;
    fill(&c, "#account", "pasted").await;
    click(&c, "#store").await;
    let flash = text(&c, "#flash").await;
    assert!(flash.starts_with("Added pasted: valid for ") && fresh(&flash), "{flash}");
    assert!(!c.source().await.unwrap().contains(&pasted.access_token), "no token on the page");

    // Refresh one account.
    let before = site.mock.counts().refresh_ok;
    click(&c, "#refresh-main").await;
    let flash = text(&c, "#flash").await;
    assert!(flash.starts_with("Refreshed main: valid for"), "{flash}");
    assert_eq!(site.mock.counts().refresh_ok, before + 1);
    assert_no_overflow(&c, "dashboard with four accounts").await;
    shoot(&c, "dashboard-375").await;

    // Remove another, through the confirm page.
    click(&c, "#remove-spare").await;
    assert!(text(&c, "h1").await.contains("Remove spare?"));
    assert_no_overflow(&c, "confirm").await;
    shoot(&c, "remove-375").await;
    click(&c, "#confirm-remove").await;
    assert_eq!(text(&c, "#flash").await, "Removed spare. Its sinks keep their last written token.");
    assert!(c.find(Locator::Css("#account-spare")).await.is_err(), "gone from the dashboard");
    assert!(site.keeper.store().get_account("spare").await.unwrap().is_none());

    // The desktop view.
    set_viewport(&c, 1280, 900).await;
    c.goto(&format!("{base}/")).await.unwrap();
    text(&c, "#account-main").await;
    shoot(&c, "dashboard-1280").await;

    // Sign out.
    click(&c, "#logout").await;
    find(&c, "#sign-in").await;
    assert!(c.current_url().await.unwrap().path().ends_with("/login"));
    c.goto(&format!("{base}/")).await.unwrap();
    find(&c, "#sign-in").await;

    c.close().await.unwrap();
    drop(driver);
    site.stop().await;
}
