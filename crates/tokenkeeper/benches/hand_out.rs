//! Token hand-out against `/health`: the real `tokenkeeper serve` (release build) with 100
//! accounts, `GET /api/token?account=NAME` with a `token:read` key against `GET /health` of
//! the same server in the same run, alternating phases (health, token, health, token, …) so
//! neither gets a warmer machine.
//!
//! ```text
//! cargo bench -p tokenkeeper --bench hand_out
//! ```
//!
//! Settings through the environment: `BENCH_CONNECTIONS` (default 16 keep-alive
//! connections), `BENCH_SECONDS` (per phase, default 5), `BENCH_ROUNDS` (default 3),
//! `BENCH_ACCOUNTS` (default 100). Figures are in docs/BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use tokenkeeper_bench::{run, run_rotating, LoadConfig, Report, Target};

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn ms(r: &Report, q: f64) -> f64 {
    r.latency.value_at_quantile(q) as f64 / 1000.0
}

fn line(label: &str, r: &Report) {
    println!(
        "{label:<8} {:>9.0} req/s  ok {:>8}  errors {:>3}  p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms",
        r.throughput(),
        r.ok,
        r.errors + r.non_2xx,
        ms(r, 0.50),
        ms(r, 0.99),
        ms(r, 0.999),
        r.latency.max() as f64 / 1000.0
    );
}

/// The phases of one endpoint as one run: counts and histograms added, wall times summed.
fn merge(runs: &[Report]) -> Report {
    let mut all = runs[0].clone();
    for r in &runs[1..] {
        all.ok += r.ok;
        all.non_2xx += r.non_2xx;
        all.errors += r.errors;
        all.bytes += r.bytes;
        all.elapsed += r.elapsed;
        all.latency.add(&r.latency).unwrap();
        all.ttfb.add(&r.ttfb).unwrap();
    }
    all
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; this binary has nothing to filter.
    let connections = setting("BENCH_CONNECTIONS", 16);
    let seconds = setting("BENCH_SECONDS", 5) as u64;
    let rounds = setting("BENCH_ROUNDS", 3);
    let accounts = setting("BENCH_ACCOUNTS", 100);

    let install = support::Install::new().await;
    let port = support::free_port();
    install.write_config(&format!("[server]\nlisten = \"127.0.0.1:{port}\"\n"));
    let names = install.seed(accounts, |_| None).await;
    let key = install.ok(&["keys", "create", "--name", "bench", "--scope", "token:read"]).trim().to_owned();
    let served = support::spawn_serve(&install, Duration::from_secs(60));
    println!(
        "tokenkeeper serve (pid {}) ready in {:.0} ms with {accounts} accounts; {connections} connections, {rounds} rounds of {seconds} s per endpoint",
        served.pid(),
        served.time_to_ready.as_secs_f64() * 1000.0
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let tokens: Vec<String> = names.iter().map(|n| format!("/api/token?account={n}")).collect();
    let health = |d: Duration| LoadConfig::closed(Target::get(addr, "/health"), connections, d);
    let token = |d: Duration| {
        let target = Target::get(addr, &tokens[0]).header("authorization", &format!("Bearer {key}"));
        LoadConfig::closed(target, connections, d)
    };

    // Warm-up: connections, the key cache and the lease cache.
    let _ = run(&health(Duration::from_secs(1))).await.unwrap();
    let warm = run_rotating(&token(Duration::from_secs(1)), &tokens).await.unwrap();
    assert!(
        warm.ok > 0 && warm.errors + warm.non_2xx == 0,
        "token requests fail; log:\n{}",
        support::read_log(&install)
    );

    // The server's own CPU time (utime + stime) per answered request, per endpoint: unlike
    // latency, it hardly depends on what else the shared machine is doing, so it is the figure
    // to compare binaries and endpoints by.
    let pid = served.pid();
    let tick_us = 1_000_000.0 / support::cpu_ticks_per_second() as f64;
    let phase = Duration::from_secs(seconds);
    let (mut h_runs, mut t_runs) = (Vec::new(), Vec::new());
    let (mut h_cpu, mut t_cpu) = (0u64, 0u64);
    for round in 1..=rounds {
        let c0 = support::cpu_ticks(pid);
        let h = run(&health(phase)).await.unwrap();
        let c1 = support::cpu_ticks(pid);
        line(&format!("health {round}"), &h);
        let t = run_rotating(&token(phase), &tokens).await.unwrap();
        let c2 = support::cpu_ticks(pid);
        line(&format!("token {round}"), &t);
        h_cpu += c1 - c0;
        t_cpu += c2 - c1;
        h_runs.push(h);
        t_runs.push(t);
    }
    let (h, t) = (merge(&h_runs), merge(&t_runs));
    println!("--- all rounds");
    line("health", &h);
    line("token", &t);
    let per_request = |ticks: u64, r: &Report| ticks as f64 * tick_us / (r.ok + r.non_2xx).max(1) as f64;
    let (h_us, t_us) = (per_request(h_cpu, &h), per_request(t_cpu, &t));
    println!(
        "token/health throughput ratio {:.2} (target >= 0.5); token p99 {:.3} ms (target < 2 ms); p99 ratio token/health {:.2}",
        t.throughput() / h.throughput(),
        ms(&t, 0.99),
        ms(&t, 0.99) / ms(&h, 0.99)
    );
    println!("server CPU per request: health {h_us:.1} us, token {t_us:.1} us (token/health {:.2})", t_us / h_us);
    let rss = support::proc_status_kb(served.pid(), "VmRSS");
    println!("server VmRSS after the run: {:.1} MB", rss as f64 / 1024.0);
    served.stop();
}
