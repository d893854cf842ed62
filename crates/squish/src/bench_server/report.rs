//! The serving benchmark's numbers: per concurrency level, time to first token and
//! inter-token latency percentiles, aggregate and per-stream decode speed; printed as one
//! markdown table (a column group per server) or as JSON. Pure arithmetic, no I/O but stdout.

use super::client::Sample;
use serde_json::{json, Value};

/// One server at one concurrency level.
pub struct Level {
    pub concurrency: usize,
    /// From the first request sent to the last stream finished.
    pub wall_s: f64,
    pub samples: Vec<Sample>,
}

/// The summary of a level.
pub struct Stats {
    pub concurrency: usize,
    pub requests: usize,
    pub wall_s: f64,
    pub ttft_ms: [f64; 3],
    pub itl_ms: [f64; 3],
    pub tokens: Vec<usize>,
    pub aggregate_tps: f64,
    pub per_stream_tps: f64,
    /// Text chunks per second while all `concurrency` streams were decoding at once.
    pub decode_tps: Option<f64>,
    pub counted_by_server: bool,
    pub prompt_tokens: Option<f64>,
    pub cached_tokens: Option<f64>,
}

/// p50, p95 and the mean, nearest-rank; zeros when empty.
fn summary(mut v: Vec<f64>) -> [f64; 3] {
    if v.is_empty() {
        return [0.0; 3];
    }
    v.sort_by(f64::total_cmp);
    let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    [rank(0.50), rank(0.95), v.iter().sum::<f64>() / v.len() as f64]
}

fn mean_of(v: impl Iterator<Item = Option<usize>>) -> Option<f64> {
    let v: Option<Vec<usize>> = v.collect();
    v.filter(|v| !v.is_empty()).map(|v| v.iter().sum::<usize>() as f64 / v.len() as f64)
}

impl Level {
    pub fn stats(&self) -> Stats {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        let s = &self.samples;
        let ttft = s.iter().filter_map(|x| Some(ms(*x.chunks.first()? - x.sent))).collect();
        let itl = s.iter().flat_map(|x| x.chunks.windows(2).map(|w| ms(w[1] - w[0]))).collect();
        let tokens: Vec<usize> = s.iter().map(Sample::tokens).collect();
        // A stream's decode speed: the tokens after the first over the time they took.
        let streams: Vec<f64> = s
            .iter()
            .filter(|x| x.chunks.len() >= 2 && x.tokens() >= 2)
            .map(|x| (x.tokens() - 1) as f64 / (*x.chunks.last().unwrap() - x.chunks[0]).as_secs_f64().max(1e-9))
            .collect();
        Stats {
            concurrency: self.concurrency,
            requests: s.len(),
            wall_s: self.wall_s,
            ttft_ms: summary(ttft),
            itl_ms: summary(itl),
            aggregate_tps: tokens.iter().sum::<usize>() as f64 / self.wall_s.max(1e-9),
            per_stream_tps: summary(streams)[2],
            decode_tps: all_decoding_tps(s, self.concurrency),
            tokens,
            counted_by_server: s.iter().all(|x| x.completion_tokens.is_some()),
            prompt_tokens: mean_of(s.iter().map(|x| x.prompt_tokens)),
            cached_tokens: mean_of(s.iter().map(|x| x.cached_tokens)),
        }
    }
}

/// Text chunks per second over the times when exactly `c` streams were between their first
/// and last chunk: the level's steady state, every stream decoding and none waiting or
/// prefilling. A chunk counts when it arrives inside such a window (its opening chunk, the
/// first of the stream that completed the set, does not). None when that never held.
fn all_decoding_tps(samples: &[Sample], c: usize) -> Option<f64> {
    let mut edges: Vec<(std::time::Instant, i32)> = samples
        .iter()
        .filter(|s| s.chunks.len() >= 2)
        .flat_map(|s| [(s.chunks[0], 1), (*s.chunks.last().expect("two chunks"), -1)])
        .collect();
    edges.sort_by_key(|&(t, d)| (t, d)); // an end before a start at the same instant
    let (mut active, mut windows) = (0i32, Vec::new());
    for (i, &(t, d)) in edges.iter().enumerate() {
        active += d;
        if active == c as i32 && d == 1 {
            let close = edges[i + 1..].iter().find(|e| e.1 == -1).map(|e| e.0);
            windows.extend(close.map(|close| (t, close)));
        }
    }
    let seconds: f64 = windows.iter().map(|(a, b)| (*b - *a).as_secs_f64()).sum();
    if seconds <= 0.0 {
        return None;
    }
    let inside = |t: &std::time::Instant| windows.iter().any(|(a, b)| t > a && t <= b);
    let chunks = samples.iter().flat_map(|s| &s.chunks).filter(|t| inside(t)).count();
    Some(chunks as f64 / seconds)
}

/// What every server was asked, for the report's head.
pub struct Setup {
    pub prompt_tokens: usize,
    pub prompt_chars: usize,
    /// The first server's count of the prompt, when it reported one.
    pub counted: Option<usize>,
    pub max_tokens: usize,
}

fn stats_json(s: &Stats) -> Value {
    let p = |a: [f64; 3]| json!({"p50": a[0], "p95": a[1], "mean": a[2]});
    json!({
        "concurrency": s.concurrency, "requests": s.requests, "wall_s": s.wall_s,
        "ttft_ms": p(s.ttft_ms), "itl_ms": p(s.itl_ms),
        "tokens_per_request": s.tokens, "total_tokens": s.tokens.iter().sum::<usize>(),
        "tokens_counted_by": if s.counted_by_server { "server usage" } else { "text chunks" },
        "aggregate_tokens_per_s": s.aggregate_tps, "per_stream_tokens_per_s": s.per_stream_tps,
        "all_streams_decoding_tokens_per_s": s.decode_tps,
        "prompt_tokens": s.prompt_tokens, "cached_prompt_tokens": s.cached_tokens,
    })
}

pub fn json(setup: &Setup, urls: &[String], results: &[Vec<Stats>]) -> Value {
    let servers: Vec<Value> = urls
        .iter()
        .zip(results)
        .map(|(u, levels)| json!({"url": u, "levels": levels.iter().map(stats_json).collect::<Vec<_>>()}))
        .collect();
    json!({
        "endpoint": "/v1/completions", "stream": true, "temperature": 0, "ignore_eos": true,
        "prompt_tokens_target": setup.prompt_tokens, "prompt_chars": setup.prompt_chars,
        "prompt_tokens_counted_by": if setup.counted.is_some() { "server usage" } else { "estimate: 4 chars/token" },
        "max_tokens": setup.max_tokens, "servers": servers,
    })
}

fn letter(i: usize) -> char {
    (b'A' + (i % 26) as u8) as char
}

pub fn print_table(setup: &Setup, urls: &[String], results: &[Vec<Stats>]) {
    let prompt = match setup.counted {
        Some(n) => format!("{n} tokens as the first server counts them"),
        None => format!("~{} tokens (estimated at 4 chars/token: the server reports no usage)", setup.prompt_tokens),
    };
    println!(
        "POST /v1/completions, stream, temperature 0, ignore_eos, max_tokens {}; prompt {} chars, {prompt}",
        setup.max_tokens, setup.prompt_chars
    );
    for (i, (u, levels)) in urls.iter().zip(results).enumerate() {
        let f = |v: Option<f64>| v.map_or("?".into(), |x| format!("{x:.0}"));
        let prompt = f(levels.iter().find_map(|s| s.prompt_tokens));
        let cached = f(levels.iter().find_map(|s| s.cached_tokens));
        let short = levels.iter().flat_map(|s| &s.tokens).filter(|&&t| t < setup.max_tokens).count();
        let mut line = format!("{} = {u} (prompt {prompt} tokens, {cached} cached, by its count)", letter(i));
        if short > 0 {
            line += &format!("; {short} requests stopped before max_tokens (the server may ignore ignore_eos)");
        }
        println!("{line}");
    }
    println!();
    let mut head = "| c | requests |".to_string();
    let mut rule = "| ---: | ---: |".to_string();
    for i in 0..urls.len() {
        let l = letter(i);
        head += &format!(" {l} TTFT p50/p95 ms | {l} ITL p50/p95 ms | {l} tok/s | {l} tok/s/stream | {l} decode tok/s |");
        rule += " ---: | ---: | ---: | ---: | ---: |";
    }
    for i in 1..urls.len() {
        head += &format!(" {}/A tok/s |", letter(i));
        rule += " ---: |";
    }
    println!("{head}\n{rule}");
    for (row, first) in results[0].iter().enumerate() {
        let mut line = format!("| {} | {} |", first.concurrency, first.requests);
        for levels in results {
            let s = &levels[row];
            let decode = s.decode_tps.map_or("-".into(), |d| format!("{d:.1}"));
            line += &format!(
                " {:.0} / {:.0} | {:.1} / {:.1} | {:.1} | {:.1} | {decode} |",
                s.ttft_ms[0], s.ttft_ms[1], s.itl_ms[0], s.itl_ms[1], s.aggregate_tps, s.per_stream_tps
            );
        }
        for levels in &results[1..] {
            line += &format!(" {:.2}x |", levels[row].aggregate_tps / first.aggregate_tps.max(1e-9));
        }
        println!("{line}");
    }
    println!();
    println!("TTFT: request sent to the first chunk with text. ITL: gaps between text chunks, all streams pooled.");
    println!("tok/s: all generated tokens / the level's wall time.");
    println!("tok/s/stream: (tokens - 1) / first-to-last text chunk, the mean over requests.");
    println!("decode tok/s: text chunks / time while all c streams were decoding at once (none waiting or prefilling).");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks every 10 ms from `first` ms to `last` ms after t0.
    fn sample(t0: std::time::Instant, first: u64, last: u64) -> Sample {
        let at = |ms| t0 + std::time::Duration::from_millis(ms);
        Sample {
            sent: t0,
            chunks: (first..=last).step_by(10).map(at).collect(),
            end: at(last),
            completion_tokens: None,
            prompt_tokens: None,
            cached_tokens: None,
        }
    }

    #[test]
    fn decode_rate_counts_only_while_every_stream_decodes() {
        let t0 = std::time::Instant::now();
        // Two streams overlap from 100 to 500 ms; each sends a chunk every 10 ms.
        let s = [sample(t0, 0, 500), sample(t0, 100, 900)];
        let tps = all_decoding_tps(&s, 2).unwrap();
        // (100, 500]: 40 chunks of each stream in 0.4 s.
        assert!((tps - 200.0).abs() < 1e-6, "{tps}");
        assert!((all_decoding_tps(&s[..1], 1).unwrap() - 100.0).abs() < 1e-6);
        assert_eq!(all_decoding_tps(&s, 3), None);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(summary(v), [50.0, 95.0, 50.5]);
        assert_eq!(summary(vec![7.0]), [7.0, 7.0, 7.0]);
        assert_eq!(summary(vec![]), [0.0; 3]);
    }
}
