//! Test helper for `tests/crash.rs`, not a user tool: writes one sink file in a loop, switching
//! between two contents, until it is killed. Prints `ready` once the first write is done.
//!
//! Usage: `tk-sync-crashtest atomic|in_place|env_file <path>`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use tokenkeeper_core::config::{SinkConfig, WriteMode};
use tokenkeeper_sync::fs::{read_optional, write_file, WriteOptions};
use tokenkeeper_sync::sink::write_file_sink;
use tokenkeeper_sync::testing::account;

/// The two contents of the plain modes, of different lengths so in-place writes also truncate.
fn contents() -> (Vec<u8>, Vec<u8>) {
    (vec![b'A'; 256 * 1024], vec![b'B'; 160 * 1024])
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(path)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: tk-sync-crashtest atomic|in_place|env_file <path>");
        return ExitCode::from(2);
    };
    let path = PathBuf::from(path);
    let (a, b) = contents();
    let mut ready = false;
    let mut i: u64 = 0;
    loop {
        let result = match mode.as_str() {
            "env_file" => {
                // Two tokens of different lengths, set through the real env_file sink path.
                let token =
                    if i % 2 == 0 { "sk-ant-oat01-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" } else { "sk-ant-oat01-BBBB" };
                let Ok(cfg) = serde_json::from_value::<SinkConfig>(serde_json::json!({
                    "account": "main",
                    "kind": "env_file",
                    "path": path,
                    "key": "CLAUDE_CODE_OAUTH_TOKEN",
                })) else {
                    eprintln!("bad sink config");
                    return ExitCode::from(2);
                };
                write_file_sink(&cfg, &account("main", token)).map(drop)
            }
            m @ ("atomic" | "in_place") => {
                let write = if m == "atomic" { WriteMode::Atomic } else { WriteMode::InPlace };
                let current = read_optional(&path).ok().flatten().map(String::into_bytes);
                let next = if current.as_deref() == Some(a.as_slice()) { &b } else { &a };
                write_file(&path, next, &WriteOptions { write, ..WriteOptions::default() }).map(drop)
            }
            other => {
                eprintln!("unknown mode {other}");
                return ExitCode::from(2);
            }
        };
        if let Err(e) = result {
            eprintln!("write failed: {e}");
            return ExitCode::FAILURE;
        }
        if !ready {
            ready = true;
            let mut out = std::io::stdout();
            let _ = writeln!(out, "ready");
            let _ = out.flush();
        }
        i += 1;
    }
}
