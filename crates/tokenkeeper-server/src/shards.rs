//! The threads that serve HTTP connections: one single-threaded tokio runtime per core, each
//! connection handed to one of them (in turn) when it is accepted and served there until it
//! ends, request handlers and the proxy's upstream connections included.
//!
//! Why not the process's multi-threaded runtime: its workers steal work from each other, and
//! on a small machine under a proxy's load (many short requests, each a few wake-ups) that
//! means a sleeping worker woken for almost every request and tasks moved between cores. On
//! the 2-core benchmark machine that cost about 9 µs of kernel time per proxied request, as
//! much as all of tokenkeeper's own work (docs/BENCHMARKS.md, "connections served per core").
//! A connection that stays on one thread, with its socket on that thread's reactor, is what
//! nginx's workers do. The keeper, the daemon and everything else stay on the main runtime;
//! the handlers reach them through the same `Arc`s as before.
//!
//! The threads start on first use and live as long as the process (a server that stops
//! leaves them idle, parked in `epoll_wait`). Their number is the machine's available
//! parallelism (which honours a container's CPU quota).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use tokio::runtime::Handle;

/// The connection threads' runtimes, handed out in turn.
struct Shards {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

static SHARDS: OnceLock<Shards> = OnceLock::new();

fn start() -> Shards {
    let n = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
        let runtime = match runtime {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a connection thread; serving on fewer");
                continue;
            }
        };
        let handle = runtime.handle().clone();
        let spawned = std::thread::Builder::new()
            .name(format!("tokenkeeper-conn-{i}"))
            .spawn(move || runtime.block_on(std::future::pending::<()>()));
        match spawned {
            Ok(_) => handles.push(handle),
            Err(e) => tracing::warn!(error = %e, "cannot start a connection thread; serving on fewer"),
        }
    }
    Shards { handles, next: AtomicUsize::new(0) }
}

/// Runs `connection` on the next connection thread, or on the current runtime when none
/// could be started (then the server works as it would without them).
pub(crate) fn spawn<F>(connection: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let shards = SHARDS.get_or_init(start);
    if shards.handles.is_empty() {
        tokio::spawn(connection);
        return;
    }
    let i = shards.next.fetch_add(1, Ordering::Relaxed) % shards.handles.len();
    shards.handles[i].spawn(connection);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_go_to_the_connection_threads_in_turn() {
        let n = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..n * 2 {
            let (tx, rx) = tokio::sync::oneshot::channel();
            spawn(async move {
                let flavor = Handle::current().runtime_flavor();
                let _ = tx.send((std::thread::current().name().map(str::to_owned), flavor));
            });
            let (name, flavor) = rx.await.unwrap();
            assert_eq!(flavor, tokio::runtime::RuntimeFlavor::CurrentThread);
            let name = name.unwrap();
            assert!(name.starts_with("tokenkeeper-conn-"), "{name}");
            seen.insert(name);
        }
        assert_eq!(seen.len(), n, "every connection thread gets connections");
    }
}
