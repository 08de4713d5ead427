//! `tk-load`: the workspace's load generator from the command line.
//!
//! ```text
//! tk-load http://127.0.0.1:8377/health -c 50 -d 10s
//! tk-load http://127.0.0.1:8377/api/token -c 50 -d 10s -H 'authorization: Bearer …'
//! ```
//! Prints one line: throughput, latency and time-to-first-byte percentiles.

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokenkeeper_bench::{run, LoadConfig, Stop, Target};

/// Keep-alive HTTP/1.1 load against one URL (http only, loopback benchmarks).
#[derive(Parser)]
struct Args {
    /// The URL, e.g. http://127.0.0.1:8377/health.
    url: String,
    /// Connections, each with one request in flight.
    #[arg(short, long, default_value_t = 50)]
    connections: usize,
    /// How long to measure (e.g. 10s); ignored with --requests.
    #[arg(short, long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Stop after this many requests instead of after --duration.
    #[arg(short = 'n', long)]
    requests: Option<u64>,
    /// Total requests per second (paced); unpaced when absent.
    #[arg(short, long)]
    rate: Option<f64>,
    /// A header, `name: value`; repeatable. Read from the environment variable named by
    /// `@NAME` (e.g. `-H 'authorization: @AUTH'`) so secrets stay out of argv.
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Send a POST with this body.
    #[arg(long)]
    body: Option<String>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("not a duration: {s} (use 10s, 500ms, 2m)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("not a duration: {s} (use 10s, 500ms, 2m)")),
    }
}

fn split_url(url: &str) -> Option<(SocketAddr, String, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    let addr = authority.to_socket_addrs().ok()?.next()?;
    Some((addr, authority.to_owned(), path))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let Some((addr, host, path)) = split_url(&args.url) else {
        eprintln!("tk-load: {} is not an http://host:port/path URL", args.url);
        return ExitCode::from(2);
    };
    let mut target = match &args.body {
        Some(body) => Target::post(addr, &path, body.clone().into_bytes()),
        None => Target::get(addr, &path),
    };
    target.host = host;
    for header in &args.headers {
        let Some((name, value)) = header.split_once(':') else {
            eprintln!("tk-load: header {name:?} is not `name: value`", name = header);
            return ExitCode::from(2);
        };
        let value = value.trim();
        let value = match value.strip_prefix('@') {
            Some(var) => match std::env::var(var) {
                Ok(v) => v,
                Err(_) => {
                    eprintln!("tk-load: environment variable {var} (for header {name}) is not set");
                    return ExitCode::from(2);
                }
            },
            None => value.to_owned(),
        };
        let (Ok(name), Ok(value)) =
            (name.trim().parse::<hyper::header::HeaderName>(), value.parse::<hyper::header::HeaderValue>())
        else {
            eprintln!("tk-load: header {name:?} is not a valid HTTP header");
            return ExitCode::from(2);
        };
        target.headers.push((name, value));
    }
    let config = LoadConfig {
        target,
        connections: args.connections,
        stop: args.requests.map_or(Stop::Duration(args.duration), Stop::Count),
        rate: args.rate,
        warmup_requests: 10,
    };
    match run(&config).await {
        Ok(report) => {
            println!("{}", report.summary());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tk-load: {e}");
            ExitCode::FAILURE
        }
    }
}
