//! `squish serve` driven by real clients: the `openai` and `ollama` Python packages (scripts
//! in tests/server/, installed from tests/server/requirements.txt) against the real SmolLM2
//! model, full precision (its GGUF, computed in f32) and INT4, on 127.0.0.1. Plus limits,
//! auth, and a clean shutdown on SIGTERM that lets the request in flight finish.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;

/// Runs one script of tests/server/ against `server`; its unittest report shows on failure.
fn python(script: &str, server: &Server, env: &[(&str, &str)]) {
    let dir = PathBuf::from(&*std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo test")).join("../../tests/server");
    let o = Command::new("python3")
        .arg(script)
        .current_dir(&dir)
        .env("SQUISH_URL", &server.url)
        .envs(env.iter().copied())
        .output()
        .expect("python3 runs (scripts/test.sh installs tests/server/requirements.txt)");
    let report = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    eprintln!("{report}");
    assert!(o.status.success(), "{script} failed:\n{report}");
}

#[test]
fn openai_client_full_precision() {
    let s = Server::start(&smollm2(), &["--ctx", "2048"], &[]);
    python("test_openai.py", &s, &[]);
}

#[test]
fn openai_client_int4() {
    let s = Server::start(&smollm2_converted("int4"), &["--ctx", "2048"], &[]);
    python("test_openai.py", &s, &[]);
}

#[test]
fn ollama_client() {
    let s = Server::start(&smollm2(), &["--ctx", "2048"], &[]);
    python("test_ollama.py", &s, &[]);
}

#[test]
fn sixteen_streams_and_disconnects() {
    // INT4: its int8 activation rounding would show any batch-dependence as different text.
    let s = Server::start(&smollm2_converted("int4"), &["--ctx", "1024", "--max-batch", "8"], &[]);
    python("test_concurrency.py", &s, &[]);
}

#[test]
fn queue_limits_and_bad_requests() {
    let s = Server::start(&smollm2(), &["--ctx", "2048", "--max-batch", "1", "--max-queue", "1", "--max-body", "65536"], &[]);
    python("test_limits.py", &s, &[]);
}

#[test]
fn api_key_guards_every_route_but_health() {
    let key = [("SQUISH_API_KEY", "test-key-123")];
    let s = Server::start(&smollm2(), &["--ctx", "512"], &key);
    python("test_auth.py", &s, &key);
}

#[test]
fn sigterm_finishes_the_request_in_flight_then_exits_0() {
    let mut s = Server::start(&smollm2(), &["--ctx", "512"], &[]);
    let body = r#"{"messages":[{"role":"user","content":"Count to fifty."}],"max_tokens":40,"temperature":0,"stream":true}"#;
    let mut conn = TcpStream::connect(s.addr()).unwrap();
    write!(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut reader = BufReader::new(conn);
    let mut first = String::new();
    while !first.starts_with("data: ") {
        first.clear();
        reader.read_line(&mut first).unwrap();
    }
    let term = Command::new("kill").args(["-TERM", &s.child.id().to_string()]).status().unwrap();
    assert!(term.success());
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("\"finish_reason\":\"length\""), "the stream was cut: {rest}");
    assert!(rest.contains("data: [DONE]"), "{rest}");
    let status = s.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    assert!(TcpStream::connect(s.addr()).is_err(), "still accepting after shutdown");
}
