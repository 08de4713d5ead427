//! `tokenkeeper serve` as a replica of a PostgreSQL installation: the HTTP API and the web page
//! on a free loopback port, the admin token from the environment, the log kept in the world's
//! directory. Stopped with SIGTERM by [`Replica::stop`], killed on drop.

use std::path::PathBuf;
use std::process::{Child, Stdio};

use tokenkeeper_mock::MockProvider;

use super::World;

/// The admin token every replica of a test installation is given.
pub const ADMIN: &str = "tka_replica-test-admin-token-0123456789";

/// A free loopback port (bound and released: a race with another test is unlikely and fails loudly).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One running `serve`.
pub struct Replica {
    /// Its id, `[replica] id`.
    pub id: String,
    /// Where its HTTP API and page listen.
    pub port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl Replica {
    /// Starts `serve` in `w` on the database at `url` as replica `id`, with `more_config`
    /// appended to the config file, and waits until it is ready. Every replica of a test talks
    /// to `provider` (one mock for the installation, as there is one real provider).
    pub fn start(w: &World, provider: &MockProvider, url: &str, id: &str, more_config: &str) -> Replica {
        let port = free_port();
        w.write_config(&format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[replica]\nid = \"{id}\"\nleader_retry = \"2s\"\n{more_config}"
        ));
        let log = w.dir.path().join(format!("serve-{id}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let ready = super::Ready::new();
        let child = ready
            .attach(&mut w.cmd(&["serve"]))
            .env("TOKENKEEPER_STORE_URL", url)
            .env("TOKENKEEPER_ADMIN_TOKEN", ADMIN)
            .env("TOKENKEEPER_ANTHROPIC_TOKEN_URL", provider.token_url())
            .env("TOKENKEEPER_ANTHROPIC_AUTHORIZE_URL", provider.authorize_url())
            .env("TOKENKEEPER_ANTHROPIC_REDIRECT_URI", provider.redirect_uri())
            .env("TOKENKEEPER_ANTHROPIC_API_BASE_URL", provider.api_base_url())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        let r = Replica { id: id.to_owned(), port, log, child: Some(child) };
        ready.wait(&format!("replica {id}"));
        r
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and asserts a clean exit.
    pub fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
            let status = child.wait().unwrap();
            assert!(status.success(), "replica {} exited with {status:?}:\n{}", self.id, self.log());
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
