//! One streamed completion against an OpenAI-compatible server over plain HTTP/1.1: connect,
//! POST `/v1/completions`, read the server-sent events, and time every chunk that carries text.
//! Owns the wire only: no statistics, no retries, no connection pooling, no TLS.

use anyhow::{anyhow, bail, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST};
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A server to measure: `http://host[:port][/base]`.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    host: String,
    port: u16,
    authority: String,
    base: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target> {
        let url = url.trim_end_matches('/').to_string();
        if url.starts_with("https://") {
            bail!("{url}: https is not supported, `squish bench --server` speaks plain http only");
        }
        let rest =
            url.strip_prefix("http://").ok_or_else(|| anyhow!("{url}: expected a URL like http://127.0.0.1:8080"))?;
        let (authority, base) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let bad = || anyhow!("{url}: expected a URL like http://127.0.0.1:8080");
        // An IPv6 literal is bracketed: [::1]:8080.
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => v6.split_once(']').map(|(h, p)| (h, p.strip_prefix(':'))).ok_or_else(bad)?,
            None => authority.split_once(':').map_or((authority, None), |(h, p)| (h, Some(p))),
        };
        let port = port.map_or(Ok(80), |p| p.parse::<u16>()).map_err(|_| bad())?;
        if host.is_empty() {
            return Err(bad());
        }
        let host = host.to_string();
        Ok(Target { authority: authority.to_string(), base: base.to_string(), host, port, url })
    }
}

/// What one request saw. Instants are absolute so a level can line requests up.
#[derive(Debug)]
pub struct Sample {
    pub sent: Instant,
    /// Arrival of each SSE chunk that carried non-empty text.
    pub chunks: Vec<Instant>,
    pub end: Instant,
    /// From the final chunk's `usage`, when the server sends one.
    pub completion_tokens: Option<usize>,
    pub prompt_tokens: Option<usize>,
    pub cached_tokens: Option<usize>,
}

impl Sample {
    /// Generated tokens: the server's own count when it gave one, else one per text chunk.
    pub fn tokens(&self) -> usize {
        self.completion_tokens.unwrap_or(self.chunks.len())
    }
}

/// POSTs `body` (a JSON completion request with `stream: true`) and reads the stream to its end.
pub async fn complete(t: &Target, body: String, api_key: Option<&str>) -> Result<Sample> {
    let unreachable = |e: &dyn std::fmt::Display| anyhow!("cannot reach {}: {e}", t.url);
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((t.host.as_str(), t.port))).await {
        Err(_) => return Err(unreachable(&"connection timed out")),
        Ok(r) => r.map_err(|e| unreachable(&e))?,
    };
    tcp.set_nodelay(true).ok();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.map_err(|e| unreachable(&e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = hyper::Request::post(format!("{}/v1/completions", t.base))
        .header(HOST, &t.authority)
        .header(CONTENT_TYPE, "application/json")
        .header(ACCEPT, "text/event-stream");
    if let Some(k) = api_key {
        req = req.header(AUTHORIZATION, format!("Bearer {k}"));
    }
    let req = req.body(Full::new(Bytes::from(body)))?;
    let sent = Instant::now();
    let resp = sender.send_request(req).await.map_err(|e| anyhow!("{}: request failed: {e}", t.url))?;
    let status = resp.status();
    if !status.is_success() {
        let bytes = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        bail!("{}: HTTP {status}: {}", t.url, error_message(&bytes));
    }
    let mut sample = Sample {
        sent,
        chunks: Vec::new(),
        end: sent,
        completion_tokens: None,
        prompt_tokens: None,
        cached_tokens: None,
    };
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| anyhow!("{}: stream broken: {e}", t.url))?;
        let Ok(data) = frame.into_data() else { continue };
        let now = Instant::now();
        buf.extend_from_slice(&data);
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            if on_line(&line, now, &mut sample).map_err(|e| anyhow!("{}: {e}", t.url))? {
                sample.end = now;
                return Ok(sample);
            }
        }
    }
    bail!("{}: the stream ended without `data: [DONE]`", t.url)
}

/// Handles one SSE line; true at `[DONE]`. Comments, `event:` and blank lines are skipped.
fn on_line(line: &[u8], now: Instant, s: &mut Sample) -> Result<bool> {
    let line = String::from_utf8_lossy(line);
    let Some(data) = line.trim_end().strip_prefix("data:") else { return Ok(false) };
    let data = data.trim_start();
    if data == "[DONE]" {
        return Ok(true);
    }
    let v: Value = serde_json::from_str(data).map_err(|e| anyhow!("bad SSE chunk ({e}): {data:.200}"))?;
    if v.get("error").is_some() {
        bail!("error in the stream: {}", error_message(data.as_bytes()));
    }
    // OpenAI: choices[0].text; llama.cpp's native /completion: content.
    let text = v["choices"][0]["text"].as_str().or_else(|| v["content"].as_str()).unwrap_or("");
    if !text.is_empty() {
        s.chunks.push(now);
    }
    let u = &v["usage"];
    let n = |x: &Value| x.as_u64().map(|n| n as usize);
    s.completion_tokens = n(&u["completion_tokens"]).or(s.completion_tokens);
    s.prompt_tokens = n(&u["prompt_tokens"]).or(s.prompt_tokens);
    s.cached_tokens = n(&u["prompt_tokens_details"]["cached_tokens"]).or(s.cached_tokens);
    Ok(false)
}

/// The server's error message from an OpenAI-style `{"error": {"message": ...}}` body, or the
/// body itself, on one line.
fn error_message(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let msg = match &v["error"] {
        Value::String(s) => s.clone(),
        e => e["message"].as_str().map(str::to_string).unwrap_or_else(|| String::from_utf8_lossy(body).into_owned()),
    };
    let msg = msg.split_whitespace().collect::<Vec<_>>().join(" ");
    if msg.is_empty() {
        "(empty body)".into()
    } else {
        msg.chars().take(300).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let t = Target::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.base.as_str(), t.url.as_str()),
            ("127.0.0.1", 8080, "", "http://127.0.0.1:8080")
        );
        let t = Target::parse("http://localhost/api").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.base.as_str()), ("localhost", 80, "/api"));
        let t = Target::parse("http://[::1]:9000").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9000));
        assert!(Target::parse("https://x").unwrap_err().to_string().contains("plain http"));
        assert!(Target::parse("127.0.0.1:80").is_err());
        assert!(Target::parse("http://h:port").is_err());
    }

    #[test]
    fn reads_sse_lines() {
        let now = Instant::now();
        let mut s = Sample {
            sent: now,
            chunks: vec![],
            end: now,
            completion_tokens: None,
            prompt_tokens: None,
            cached_tokens: None,
        };
        assert!(!on_line(b"data: {\"choices\":[{\"text\":\" a\"}]}\r\n", now, &mut s).unwrap());
        assert!(!on_line(
            b"data: {\"choices\":[{\"text\":\"\"}],\"usage\":{\"completion_tokens\":3,\"prompt_tokens\":9}}\n",
            now,
            &mut s
        )
        .unwrap());
        assert!(!on_line(b": keep-alive\n", now, &mut s).unwrap());
        assert!(on_line(b"data: [DONE]\n", now, &mut s).unwrap());
        assert_eq!((s.chunks.len(), s.tokens(), s.prompt_tokens), (1, 3, Some(9)));
        assert!(on_line(b"data: {\"error\":{\"message\":\"boom\"}}\n", now, &mut s)
            .unwrap_err()
            .to_string()
            .contains("boom"));
    }
}
