//! A fleet's worth of accounts, through the real `tokenkeeper serve` (release build):
//!
//! 1. idle memory (VmRSS), time to ready (spawn → `READY=1` on a `NOTIFY_SOCKET` of ours) and
//!    idle CPU over 10 s, with 100 and with 10,000 accounts;
//! 2. 10,000 accounts expiring within a compressed hour (spread over `BENCH_SPREAD` seconds,
//!    default 60) against a mock answering every token request in 50 ms, with a 30 s lead:
//!    whether every account was refreshed before its lead ran out, and the peak refresh rate.
//!
//! ```text
//! cargo bench -p tokenkeeper --bench fleet
//! ```
//!
//! Accounts are written straight into the store (`SqliteStore`), not imported one CLI process
//! at a time. `BENCH_FLEET` (default 10000) sets the large fleet; `BENCH_IDLE_ONLY=1` stops
//! after the idle figures; `BENCH_BINARY` and `BENCH_SERVE_ENV` (see `support`) run another
//! binary or add variables. Figures are in docs/BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokenkeeper_core::store::Store;
use tokenkeeper_mock::Fault;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Idle figures for a fleet of `n`; returns how long seeding took.
async fn idle(n: usize) -> Duration {
    let install = support::Install::new().await;
    install.write_config(&format!("[server]\nlisten = \"127.0.0.1:{}\"\n", support::free_port()));
    let seeding = Instant::now();
    install.seed(n, |_| None).await;
    let seeded = seeding.elapsed();
    let served = support::spawn_serve(&install, Duration::from_secs(300));
    let pid = served.pid();
    let rss_ready = support::proc_status_kb(pid, "VmRSS");
    std::thread::sleep(Duration::from_secs(3));
    let rss_idle = support::proc_status_kb(pid, "VmRSS");
    let hwm = support::proc_status_kb(pid, "VmHWM");
    let ticks = support::cpu_ticks_per_second();
    let before = support::cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(10));
    let cpu = support::cpu_ticks(pid) - before;
    let rss_after = support::proc_status_kb(pid, "VmRSS");
    // VmRSS counts the executable's pages mapped from the page cache (shared, clean, dropped
    // first under memory pressure) as well as the heap: show both parts.
    let (anon, file) = (support::proc_status_kb(pid, "RssAnon"), support::proc_status_kb(pid, "RssFile"));
    println!(
        "{n:>6} accounts: VmRSS after 10 s idle {:.1} MB = RssAnon {:.1} MB (heap, stacks) + RssFile {:.1} MB (mapped executable and libraries)",
        rss_after as f64 / 1024.0,
        anon as f64 / 1024.0,
        file as f64 / 1024.0
    );
    println!(
        "{n:>6} accounts: seeded in {:.1} s; ready in {:.0} ms; VmRSS at ready {:.1} MB, idle {:.1} MB, after 10 s idle {:.1} MB, peak (VmHWM) {:.1} MB; idle CPU over 10 s {} ms",
        seeded.as_secs_f64(),
        served.time_to_ready.as_secs_f64() * 1000.0,
        rss_ready as f64 / 1024.0,
        rss_idle as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        hwm as f64 / 1024.0,
        cpu * 1000 / ticks
    );
    served.stop();
    seeded
}

/// `n` accounts due within `spread` against a slow mock.
async fn expiring(n: usize, spread: Duration, seed_estimate: Duration) {
    let install = support::Install::new().await;
    let lead = Duration::from_secs(30);
    install.write_config(&format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\n\n[keeper]\nlead = \"30s\"\njitter = \"1s\"\n",
        support::free_port()
    ));
    install.mock.set_persistent_fault(Some(Fault::Slow(Duration::from_millis(50))));
    // The first account is due (expiry − lead) a little after the daemon is up.
    let margin = seed_estimate + Duration::from_secs(20);
    let base = Utc::now() + chrono::Duration::from_std(lead + margin).unwrap();
    let expiry_of =
        |i: usize| -> DateTime<Utc> { base + chrono::Duration::from_std(spread.mul_f64(i as f64 / n as f64)).unwrap() };
    let names = install.seed(n, |i| Some(expiry_of(i))).await;
    let expiries: HashMap<String, DateTime<Utc>> =
        names.iter().enumerate().map(|(i, name)| (name.clone(), expiry_of(i))).collect();
    let first_due = base - chrono::Duration::from_std(lead).unwrap();
    let served = support::spawn_serve(&install, Duration::from_secs(300));
    assert!(
        Utc::now() < first_due,
        "seeding took longer than estimated: the first account was due before the daemon was up"
    );
    println!(
        "{n} accounts due from {first_due} over {} s (lead 30 s, max_concurrent_refreshes 8, mock answers in 50 ms)",
        spread.as_secs()
    );

    // Sample the mock's count of refreshes every second until all are done (or it is hopeless).
    let deadline = Instant::now() + lead + margin + spread + Duration::from_secs(60);
    let mut per_second = Vec::new();
    let mut last = install.mock.counts().refresh_ok;
    let started = install.mock.counts().refresh_ok;
    let mut peak_cpu = 0u64;
    let ticks = support::cpu_ticks_per_second();
    let mut cpu_before = support::cpu_ticks(served.pid());
    while install.mock.counts().refresh_ok - started < n as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = install.mock.counts().refresh_ok;
        let cpu = support::cpu_ticks(served.pid());
        if now > last || !per_second.is_empty() {
            per_second.push(now - last);
            peak_cpu = peak_cpu.max((cpu - cpu_before) * 100 / ticks);
        }
        cpu_before = cpu;
        last = now;
    }
    let rss = support::proc_status_kb(served.pid(), "VmHWM");
    served.stop();
    let counts = install.mock.counts();

    let store = install.store().await;
    let accounts = store.list_accounts().await.unwrap();
    let (mut refreshed, mut in_time) = (0usize, 0usize);
    let mut worst_left = chrono::Duration::MAX;
    let mut worst_late = chrono::Duration::zero();
    for a in &accounts {
        let (Some(at), Some(expiry)) = (a.last_refreshed_at, expiries.get(&a.name)) else { continue };
        refreshed += 1;
        if at < *expiry {
            in_time += 1;
        }
        worst_left = worst_left.min(*expiry - at);
        worst_late = worst_late.max(at - (*expiry - chrono::Duration::from_std(lead).unwrap()));
    }
    store.close().await;
    let peak = per_second.iter().copied().max().unwrap_or(0);
    let busy: Vec<u64> = per_second.iter().copied().filter(|c| *c > 0).collect();
    let mean = busy.iter().sum::<u64>() as f64 / busy.len().max(1) as f64;
    println!(
        "refreshed {refreshed} of {n}; {in_time} before their expiry (the end of their lead); least time left at refresh {:.1} s; latest refresh after its due time {:.1} s",
        worst_left.num_milliseconds() as f64 / 1000.0,
        worst_late.num_milliseconds() as f64 / 1000.0
    );
    println!(
        "refresh rate: peak {peak}/s, mean {mean:.0}/s over {} busy seconds; token requests {}, invalid_grant {}; server peak CPU {peak_cpu} % of a core; VmHWM {:.1} MB",
        busy.len(),
        counts.token_requests,
        counts.refresh_invalid_grant,
        rss as f64 / 1024.0
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let fleet = setting("BENCH_FLEET", 10_000);
    let spread = Duration::from_secs(setting("BENCH_SPREAD", 60) as u64);
    idle(100).await;
    let seeded = idle(fleet).await;
    if setting("BENCH_IDLE_ONLY", 0) == 1 {
        return;
    }
    expiring(fleet, spread, seeded + seeded / 2).await;
}
