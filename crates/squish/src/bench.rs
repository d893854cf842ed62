//! `squish bench`: load time, prefill and decode speed, peak memory; llama-bench-style table.
//! With `--server URL` it hands over to `bench_server`, which measures running servers instead.

use crate::{model_arg, setup};
use anyhow::Result;
use clap::Args;
use squish_engine::{bench_run, bench_streams};
use squish_model::Model;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
#[command(after_help = "Compare with llama.cpp on the same machine in the same session:
  squish bench smollm2-int4 -p 512 -n 128 -t 2
  llama-bench -m model.gguf -p 512 -n 128 -t 2

Serving: each request is a streamed POST /v1/completions (temperature 0, ignore_eos) whose
prompt starts with a per-request and a per-run number, so no prefix cache can answer it, then
English prose (or --prompt-file) sized to --prompt-tokens. Per concurrency level:
time to first token (request sent to the first chunk with text) and inter-token latency
(gaps between text chunks) p50/p95, aggregate tokens/s (all tokens / the level's wall time)
and per-stream tokens/s. Servers take turns level by level, after one warm-up each:
  squish serve --port 18101 &
  llama-server -m model.gguf --port 18102 -np 8 &
  squish bench --server http://127.0.0.1:18101 --server http://127.0.0.1:18102 --concurrency 1,8")]
pub struct BenchArgs {
    /// A model: a path (squish or Hugging Face directory, .gguf file) or a pulled name (qwen2.5:7b, org/repo, either with @int8) [default: SmolLM2-135M-Instruct, fetched by scripts/fetch-models.sh]
    pub model: Option<PathBuf>,
    /// Prompt tokens to prefill
    #[arg(short, default_value_t = 512)]
    pub p: usize,
    /// Tokens to decode after the prompt
    #[arg(short, default_value_t = 128)]
    pub n: usize,
    /// Repetitions of each test
    #[arg(short, default_value_t = 5)]
    pub r: usize,
    /// CPU threads [default: all cores]
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// Print JSON instead of a markdown table
    #[arg(long)]
    pub json: bool,
    /// Print the llama-bench-style markdown table (the default)
    #[arg(long, conflicts_with = "json")]
    pub markdown: bool,
    /// Where to run: auto, cpu, cuda, cuda:N, metal
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Also measure batched decode: for each count S, S sequences (each after its own
    /// -p-token prompt) decode -n tokens together, one forward per step as `squish serve`
    /// batches them; reports all their tokens / decode time (rows `tgN xS`; rounds alternate
    /// between the counts)
    #[arg(long, value_delimiter = ',', value_name = "S,S,...")]
    pub streams: Vec<usize>,
    /// What the KV caches store (`squish serve` defaults to f16)
    #[arg(long, value_enum, default_value_t = crate::setup::KvCache::F32)]
    pub kv_cache: crate::setup::KvCache,
    #[command(flatten)]
    pub serving: crate::bench_server::ServerArgs,
}

pub fn run(args: BenchArgs) -> Result<()> {
    if !args.serving.servers.is_empty() {
        return crate::bench_server::run(&args.serving, args.json);
    }
    if args.p == 0 && args.n == 0 {
        anyhow::bail!("nothing to measure: -p and -n are both 0 (as in llama-bench, 0 skips that test)");
    }
    let (device, threads) = setup::device(&args.device, args.threads)?;
    let path = model_arg::resolve(args.model.clone())?;
    let ctx = Some(args.p.max(args.n + 1).max(8) + if args.streams.is_empty() { 0 } else { args.n + 1 });
    let evicted = evict_from_page_cache(&path);
    let t0 = Instant::now();
    let mut model = Model::load(&path, &device, ctx)?;
    args.kv_cache.apply(&mut model)?;
    let load_cold = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    drop(Model::load(&path, &device, ctx)?);
    let load_warm = t1.elapsed().as_secs_f64();

    bench_run(&model, args.p.min(16), 4)?; // warm-up: pages, caches, thread pool
    let mut pp = Vec::new();
    let mut tg = Vec::new();
    let mut ttft = Vec::new();
    for _ in 0..args.r.max(1) {
        let run = bench_run(&model, args.p, args.n)?;
        pp.push(args.p as f64 / run.prefill_s);
        tg.push(args.n as f64 / run.decode_s);
        ttft.push(run.prefill_s);
    }
    // Rounds alternate between the stream counts, so a machine whose speed drifts (a VM)
    // shifts every count alike and their ratios stay fair.
    let counts: Vec<usize> = args.streams.iter().copied().filter(|&s| s > 0 && args.n > 0).collect();
    let mut batched: Vec<(usize, Vec<f64>)> = counts.iter().map(|&s| (s, Vec::new())).collect();
    for &s in &counts {
        bench_streams(&model, s, 16, 4)?; // warm-up at this batch size
    }
    for _ in 0..args.r.max(1) {
        for (s, runs) in batched.iter_mut() {
            runs.push((*s * args.n) as f64 / bench_streams(&model, *s, args.p, args.n)?);
        }
    }
    let (size, bpw, params) = model_size(&path);
    let rss_mb = crate::setup::peak_rss_kb() as f64 / 1024.0;
    let name = path.file_name().map_or(path.display().to_string(), |n| n.to_string_lossy().into_owned());
    let (pp_m, pp_s) = mean_std(&pp);
    let (tg_m, tg_s) = mean_std(&tg);
    let (ttft_m, _) = mean_std(&ttft);
    if args.json {
        let report = serde_json::json!({
            "model": path.display().to_string(), "size_mb": size / 1e6, "bits_per_weight": bpw,
            "parameters": params, "threads": threads, "device": format!("{device:?}"),
            "load_cold_s": load_cold, "load_cold_evicted": evicted, "load_warm_s": load_warm,
            "prompt_tokens": args.p, "prefill_tokens_per_s": (args.p > 0).then_some(pp_m), "prefill_stddev": (args.p > 0).then_some(pp_s),
            "decode_tokens": args.n, "decode_tokens_per_s": (args.n > 0).then_some(tg_m), "decode_stddev": (args.n > 0).then_some(tg_s),
            "time_to_first_token_s": ttft_m, "peak_rss_mb": rss_mb, "repetitions": args.r,
            "streams": batched.iter().map(|(s, runs)| {
                let (m, sd) = mean_std(runs);
                serde_json::json!({"streams": s, "decode_tokens_per_s": m, "decode_stddev": sd})
            }).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let bits = bpw.map_or("-".to_string(), |b| format!("{b:.2}"));
    println!("| model | size | bits/weight | threads | test | t/s |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let row = |test: String, m: f64, s: f64| {
        println!("| {name} | {:.1} MB | {bits} | {threads} | {test} | {m:.2} ± {s:.2} |", size / 1e6)
    };
    // A test of 0 tokens is skipped, as llama-bench does, rather than shown as 0 t/s.
    if args.p > 0 {
        row(format!("pp{}", args.p), pp_m, pp_s);
    }
    if args.n > 0 {
        row(format!("tg{}", args.n), tg_m, tg_s);
    }
    for (s, runs) in &batched {
        let (m, sd) = mean_std(runs);
        row(format!("tg{} x{s}", args.n), m, sd);
    }
    println!();
    let cold = if evicted { "cold: files dropped from the page cache" } else { "first" };
    println!(
        "load {load_cold:.3} s ({cold}) / {load_warm:.3} s (warm); time to first token after a {}-token prompt {ttft_m:.3} s; peak RSS {rss_mb:.0} MB",
        args.p
    );
    Ok(())
}

/// Bytes of weights, bits/weight (squish models) and parameters, as far as the files tell.
fn model_size(path: &std::path::Path) -> (f64, Option<f64>, Option<u64>) {
    if let Ok(m) = squish_format::read_manifest(path) {
        return (m.shards.iter().map(|s| s.bytes).sum::<u64>() as f64, Some(m.bits_per_weight), Some(m.parameters));
    }
    let bytes = if path.is_dir() {
        std::fs::read_dir(path)
            .map(|d| d.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum::<u64>())
            .unwrap_or(0)
    } else {
        std::fs::metadata(path).map_or(0, |m| m.len())
    };
    (bytes as f64, None, None)
}

/// Asks the kernel to drop the model's files from the page cache, so the first load reads
/// them from disk. Returns whether every file was dropped (Linux only; clean pages only).
fn evict_from_page_cache(path: &std::path::Path) -> bool {
    let files: Vec<PathBuf> = if path.is_dir() {
        std::fs::read_dir(path).map(|d| d.filter_map(|e| Some(e.ok()?.path())).filter(|p| p.is_file()).collect()).unwrap_or_default()
    } else {
        vec![path.to_path_buf()]
    };
    files.iter().all(|f| evict_file(f))
}

#[cfg(target_os = "linux")]
fn evict_file(path: &std::path::Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::File::open(path) else { return false };
    // SAFETY: a valid open descriptor; the call only advises the kernel.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn evict_file(_: &std::path::Path) -> bool {
    false
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

