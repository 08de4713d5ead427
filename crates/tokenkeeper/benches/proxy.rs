//! The API proxy against nginx: in one run, against one fast loopback upstream (nginx from
//! Debian serving a fixed JSON answer and a fixed SSE stream), requests sent directly to the
//! upstream, through `tokenkeeper serve`'s proxy (release build, one pooled account, a proxy
//! key), through nginx configured as a plain keep-alive reverse proxy (the practical ceiling
//! of any proxy on this machine), and through the floor proxy of tokenkeeper's own stack
//! (`tokenkeeper_bench::serve_floor_proxy`: tokio and hyper, nothing else, on a runtime of
//! its own with two workers, like `serve`'s): between nginx and the floor lies what the stack
//! costs, between the floor and tokenkeeper what tokenkeeper's own work per request costs.
//! The load generator is `tokenkeeper-bench`.
//!
//! ```text
//! scripts/test-deps                      # installs nginx
//! cargo bench -p tokenkeeper --bench proxy
//! ```
//!
//! The bench writes nginx's configuration into a temp dir and runs it unprivileged (high
//! ports, its own pid, log and temp paths), and stops it at the end. Settings:
//! `BENCH_CONNECTIONS` (closed-loop connections, default 16), `BENCH_SECONDS` (per phase,
//! default 5), `BENCH_RATE` (requests/s of the moderate-load phase, default 500),
//! `BENCH_STREAMS` (concurrent streams of the memory phase, default 200). Figures are in
//! docs/BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokenkeeper_bench::{ms, run, serve_floor_proxy, LoadConfig, Report, Stop, Target};

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

const JSON: &str = r#"{"id":"msg_bench","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Hello from nginx."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":8,"output_tokens":4,"cache_creation_input_tokens":0,"cache_read_input_tokens":0}}"#;

/// A fixed stream in nginx's config syntax (`\n` is a newline inside nginx strings).
const SSE: &str = r#"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_bench\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":8,\"output_tokens\":1}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":4}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"#;

/// nginx, stopped (SIGTERM, its fast shutdown) when dropped, a panicking bench included.
struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        support::terminate(&mut self.0);
    }
}

/// nginx, unprivileged: the upstream on `up`, a plain reverse proxy to it on `rp`.
fn start_nginx(dir: &std::path::Path, up: u16, rp: u16) -> Nginx {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| std::path::Path::new(p).exists());
    let nginx = nginx.expect("nginx is not installed: run scripts/test-deps (it installs Debian's nginx)");
    let json = JSON.replace('"', "\\\"");
    let d = dir.display();
    let conf = format!(
        r#"worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{up};
    location /v1/messages {{ default_type application/json; return 200 "{json}"; }}
    location /v1/stream {{ default_type text/event-stream; return 200 "{SSE}"; }}
  }}
  upstream up {{ server 127.0.0.1:{up}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{rp};
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"#
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new(nginx)
        .args(["-p", &dir.display().to_string(), "-c", &dir.join("nginx.conf").display().to_string()])
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let nginx = Nginx(child);
    for port in [up, rp] {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "nginx did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    nginx
}

/// The floor proxy to `upstream`, on a runtime of its own (two workers, as `serve` has) in a
/// thread of its own, for the rest of the bench.
fn start_floor(upstream: SocketAddr) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            serve_floor_proxy(tokio::net::TcpListener::from_std(listener).unwrap(), upstream).await;
        });
    });
    addr
}

fn target(addr: SocketAddr, path: &str, key: Option<&str>) -> Target {
    let body = r#"{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut t = Target::post(addr, path, body)
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01");
    if let Some(k) = key {
        t = t.header("x-api-key", k);
    }
    t
}

fn line(label: &str, r: &Report) {
    println!("{label:<28} {}", r.summary());
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let connections = setting("BENCH_CONNECTIONS", 16);
    let seconds = setting("BENCH_SECONDS", 5) as u64;
    let rate = setting("BENCH_RATE", 500) as f64;
    let streams = setting("BENCH_STREAMS", 200);
    let phase = Duration::from_secs(seconds);

    let nginx_dir = tempfile::tempdir().unwrap();
    let (up, rp) = (support::free_port(), support::free_port());
    let nginx = start_nginx(nginx_dir.path(), up, rp);

    let install = support::Install::new().await;
    let port = support::free_port();
    install.write_config(&format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nmax_connections = 4096\n\n[proxy]\nupstream = \"http://127.0.0.1:{up}\"\n"
    ));
    install.seed(1, |_| None).await;
    let key = install.ok(&["keys", "create", "--name", "bench", "--scope", "proxy"]).trim().to_owned();
    let served = support::spawn_serve(&install, Duration::from_secs(60));

    let at = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
    let floor = start_floor(at(up));
    let ways: [(&str, SocketAddr, Option<&str>); 4] = [
        ("direct", at(up), None),
        ("nginx proxy", at(rp), None),
        ("floor proxy", floor, None),
        ("tokenkeeper proxy", at(port), Some(&key)),
    ];

    // Warm-up of every path (connections, key cache, upstream pool).
    for (name, addr, key) in ways {
        let warm = run(&LoadConfig::closed(target(addr, "/v1/messages", key), connections, Duration::from_secs(1)))
            .await
            .unwrap();
        assert!(
            warm.ok > 0 && warm.errors == 0 && warm.non_2xx == 0,
            "{name} fails: {}\n{}",
            warm.summary(),
            support::read_log(&install)
        );
    }

    println!(
        "--- throughput, JSON, {connections} connections, {seconds} s each (direct, nginx, floor, tokenkeeper; twice)"
    );
    let mut tput = [0.0f64; 4];
    for round in 0..2 {
        for (i, (name, addr, key)) in ways.iter().enumerate() {
            let r = run(&LoadConfig::closed(target(*addr, "/v1/messages", *key), connections, phase)).await.unwrap();
            line(&format!("{name} {}", round + 1), &r);
            tput[i] += r.throughput() / 2.0;
        }
    }
    println!(
        "tokenkeeper / nginx-proxy throughput ratio: {:.2} (target >= 0.9); floor / nginx-proxy {:.2}; tokenkeeper / floor {:.2}",
        tput[3] / tput[1],
        tput[2] / tput[1],
        tput[3] / tput[2]
    );

    println!("--- moderate load, {rate} req/s on 8 connections, {seconds} s each");
    let mut p = Vec::new();
    for (name, addr, key) in ways {
        let mut c = LoadConfig::closed(target(addr, "/v1/messages", key), 8, phase);
        c.rate = Some(rate);
        let r = run(&c).await.unwrap();
        line(&format!("json {name}"), &r);
        p.push((ms(r.latency_at(0.5)), ms(r.latency_at(0.99))));
    }
    println!(
        "added latency over direct: tokenkeeper p50 +{:.3} ms, p99 +{:.3} ms (target < 1 ms); nginx p50 +{:.3} ms, p99 +{:.3} ms; floor p50 +{:.3} ms, p99 +{:.3} ms",
        p[3].0 - p[0].0, p[3].1 - p[0].1, p[1].0 - p[0].0, p[1].1 - p[0].1, p[2].0 - p[0].0, p[2].1 - p[0].1
    );
    let mut t = Vec::new();
    for (name, addr, key) in ways {
        let mut c = LoadConfig::closed(target(addr, "/v1/stream", key), 8, phase);
        c.rate = Some(rate);
        let r = run(&c).await.unwrap();
        line(&format!("sse {name}"), &r);
        t.push((ms(r.ttfb_at(0.5)), ms(r.ttfb_at(0.99))));
    }
    println!(
        "time to first SSE byte added: tokenkeeper p50 +{:.3} ms, p99 +{:.3} ms (target < 1 ms); nginx p50 +{:.3} ms, p99 +{:.3} ms; floor p50 +{:.3} ms, p99 +{:.3} ms",
        t[3].0 - t[0].0, t[3].1 - t[0].1, t[1].0 - t[0].0, t[1].1 - t[0].1, t[2].0 - t[0].0, t[2].1 - t[0].1
    );

    println!("--- memory: {streams} concurrent streams through tokenkeeper for {seconds} s");
    let before = support::proc_status_kb(served.pid(), "VmRSS");
    let mut c = LoadConfig::closed(target(at(port), "/v1/stream", Some(&key)), streams, phase);
    c.stop = Stop::Duration(phase);
    let r = run(&c).await.unwrap();
    line("sse tokenkeeper", &r);
    let (after, hwm) = (support::proc_status_kb(served.pid(), "VmRSS"), support::proc_status_kb(served.pid(), "VmHWM"));
    println!(
        "tokenkeeper VmRSS {:.1} MB before, {:.1} MB after, peak (VmHWM) {:.1} MB",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        hwm as f64 / 1024.0
    );

    served.stop();
    drop(nginx);
}
