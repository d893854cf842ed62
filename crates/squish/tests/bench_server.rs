//! `squish bench --server`: a concurrency sweep against a real `squish serve` on SmolLM2, read
//! back as JSON; and the one-line failure when nothing listens at the URL.

mod common;

use common::{assert_clean_failure, smollm2, squish, stdout};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

/// A running `squish serve`, killed when dropped.
struct Server {
    child: Child,
    url: String,
    // Held open so a later line on stdout never meets a closed pipe.
    _stdout: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Server {
    fn start() -> Server {
        let mut child = squish()
            .args(["serve", "--port", "0", "--max-batch", "4", "--ctx", "512", "--model"])
            .arg(smollm2())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start squish serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(u) = l.strip_prefix("squish: listening on ") {
                        break u.trim().to_string();
                    }
                }
                _ => {
                    let _ = child.kill();
                    panic!("squish serve exited before listening");
                }
            }
        };
        Server { child, url, _stdout: lines }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sweeps_concurrency_against_squish_serve() {
    let server = Server::start();
    let out = squish()
        .args(["bench", "--server", &server.url, "--concurrency", "1,2", "--requests", "2"])
        .args(["--prompt-tokens", "32", "--max-tokens", "8", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "stderr: {}", common::stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).expect("JSON on stdout");
    assert_eq!(v["prompt_tokens_counted_by"], "server usage", "{v}");
    let servers = v["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0]["url"], server.url.as_str());
    let levels = servers[0]["levels"].as_array().unwrap();
    assert_eq!(levels.iter().map(|l| l["concurrency"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2]);
    for l in levels {
        assert_eq!(l["requests"], 2, "{l}");
        assert_eq!(l["tokens_per_request"], serde_json::json!([8, 8]), "{l}");
        assert_eq!(l["tokens_counted_by"], "server usage", "{l}");
        for key in ["ttft_ms", "itl_ms"] {
            for p in ["p50", "p95"] {
                assert!(l[key][p].as_f64().unwrap() > 0.0, "{key}.{p}: {l}");
            }
            assert!(l[key]["p95"].as_f64() >= l[key]["p50"].as_f64(), "{l}");
        }
        for key in ["aggregate_tokens_per_s", "per_stream_tokens_per_s", "wall_s"] {
            assert!(l[key].as_f64().unwrap() > 0.0, "{key}: {l}");
        }
        if l["concurrency"] == 1 {
            // One stream at a time: decoding all the time between its first and last chunk, so
            // the decode rate pools the streams' own rates: tokens over their summed decode
            // times, the harmonic mean of the rates for equal token counts. That is never
            // above their arithmetic mean (the per-stream figure) and near it unless the
            // requests' speeds differ a lot (a loaded CI machine: 18.5 against 18.9).
            let (decode, per_stream) = (l["all_streams_decoding_tokens_per_s"].as_f64().unwrap(), l["per_stream_tokens_per_s"].as_f64().unwrap());
            assert!(decode <= per_stream * 1.001 && decode >= per_stream * 0.8, "{l}");
        }
        // The prompt was sized by the server's own count to about --prompt-tokens.
        let p = l["prompt_tokens"].as_f64().unwrap();
        assert!((28.0..=36.0).contains(&p), "prompt tokens {p}");
        // Each prompt is new to the server: only its first word or so can come from a cache.
        assert!(l["cached_prompt_tokens"].as_f64().unwrap() < 6.0, "{l}");
    }

    // The table names the server and has one row per level.
    let out = squish()
        .args(["bench", "--server", &server.url, "--concurrency", "1", "--requests", "1"])
        .args(["--prompt-tokens", "16", "--max-tokens", "4"])
        .output()
        .unwrap();
    assert!(out.status.success(), "stderr: {}", common::stderr(&out));
    let table = stdout(&out);
    assert!(table.contains(&format!("A = {}", server.url)), "{table}");
    assert!(table.lines().any(|l| l.starts_with("| 1 | 1 |")), "{table}");
}

#[test]
fn unreachable_server_is_one_line_naming_the_url() {
    // Port 1 (tcpmux) has no listener on a development machine or in CI.
    let out = squish().args(["bench", "--server", "http://127.0.0.1:1", "--max-tokens", "4"]).output().unwrap();
    assert_clean_failure(&out, "cannot reach http://127.0.0.1:1");
}

#[test]
fn server_and_model_are_exclusive() {
    let out = squish().args(["bench", "some-model", "--server", "http://127.0.0.1:1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(common::stderr(&out).contains("cannot be used with"), "{}", common::stderr(&out));
}
