//! `squish bench --server URL`: a serving benchmark against running OpenAI-compatible servers
//! (squish serve, llama.cpp's llama-server, ...): a concurrency sweep of streamed completions,
//! servers measured level by level in turn. Owns the flags, the warm-up and the sweep; the
//! wire is in `client`, the arithmetic and output in `report`. Loads no model.

mod client;
mod prompt;
mod report;

use anyhow::{bail, Context, Result};
use clap::Args;
use client::{complete, Target};
use report::{Level, Setup};
use serde_json::json;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

#[derive(Args)]
#[command(next_help_heading = "Serving benchmark (--server)")]
pub struct ServerArgs {
    /// Measure a running server instead of a local model: its base URL, plain http only (no
    /// TLS), e.g. http://127.0.0.1:8080. Repeat to compare servers side by side
    #[arg(long = "server", value_name = "URL", conflicts_with_all = ["model", "p", "n", "r", "threads", "device"])]
    pub servers: Vec<String>,
    /// Concurrency levels: requests in flight at once
    #[arg(
        long,
        value_name = "C,C,...",
        value_delimiter = ',',
        default_value = "1,2,4,8",
        requires = "servers",
        conflicts_with = "model"
    )]
    pub concurrency: Vec<usize>,
    /// Requests per level [default: max(C, 8)]
    #[arg(long, value_name = "N", requires = "servers", conflicts_with = "model")]
    pub requests: Option<usize>,
    /// Prompt length in tokens, sized by the first server's count (else 4 characters/token)
    #[arg(long, value_name = "N", default_value_t = 128, requires = "servers", conflicts_with = "model")]
    pub prompt_tokens: usize,
    /// Tokens to generate per request (sent with ignore_eos)
    #[arg(long, value_name = "N", default_value_t = 128, requires = "servers", conflicts_with = "model")]
    pub max_tokens: usize,
    /// Prompt text [default: the first chapter of Pride and Prejudice, built in]
    #[arg(long, value_name = "FILE", requires = "servers", conflicts_with = "model")]
    pub prompt_file: Option<PathBuf>,
    /// Sent as `Authorization: Bearer KEY`
    #[arg(long, value_name = "KEY", requires = "servers", conflicts_with = "model")]
    pub api_key: Option<String>,
}

pub fn run(args: &ServerArgs, json_out: bool) -> Result<()> {
    if args.concurrency.is_empty() || args.concurrency.contains(&0) {
        bail!("--concurrency needs levels of at least 1, e.g. 1,2,4,8");
    }
    if args.max_tokens == 0 || args.prompt_tokens == 0 || args.requests == Some(0) {
        bail!("--max-tokens, --prompt-tokens and --requests must be at least 1");
    }
    let targets = args.servers.iter().map(|u| Target::parse(u)).collect::<Result<Vec<_>>>()?;
    let prompts = prompt::Prompts::new(args.prompt_file.as_deref())?;
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    rt.block_on(sweep(args, &targets, &prompts, json_out))
}

/// The request body: a streamed, greedy completion that runs to max_tokens.
fn body(prompt: String, max_tokens: usize) -> String {
    json!({
        "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": true,
        "ignore_eos": true, "stream_options": {"include_usage": true},
    })
    .to_string()
}

fn progress(msg: &str) {
    if std::io::stderr().is_terminal() {
        eprintln!("{msg}");
    }
}

async fn sweep(args: &ServerArgs, targets: &[Target], prompts: &prompt::Prompts, json_out: bool) -> Result<()> {
    let key = args.api_key.as_deref();
    // Size the prompt with the first server's own count (these requests warm it up too).
    let target = args.prompt_tokens;
    let mut chars = target * prompt::CHARS_PER_TOKEN;
    let mut counted = None;
    for attempt in 0..4 {
        progress(&format!("warming up {}", targets[0].url));
        let s = complete(&targets[0], body(prompts.prompt(0, chars), 2), key).await?;
        counted = s.prompt_tokens.filter(|&p| p > 0);
        let Some(p) = counted else { break };
        if p.abs_diff(target) <= (target / 50).max(1) || attempt == 3 {
            break;
        }
        chars = (chars * target).div_ceil(p);
    }
    for t in &targets[1..] {
        progress(&format!("warming up {}", t.url));
        complete(t, body(prompts.prompt(0, chars), 2), key).await?;
    }

    let mut results: Vec<Vec<report::Stats>> = targets.iter().map(|_| Vec::new()).collect();
    let mut next_id = 1;
    for &c in &args.concurrency {
        let n = args.requests.unwrap_or(c.max(8));
        // Every server gets the same prompts; ids never repeat within a run.
        let bodies: Vec<String> = (0..n).map(|k| body(prompts.prompt(next_id + k, chars), args.max_tokens)).collect();
        next_id += n;
        for (i, t) in targets.iter().enumerate() {
            progress(&format!("{}: concurrency {c}, {n} requests", t.url));
            let level = level(t, &bodies, c, key).await?;
            results[i].push(level.stats());
        }
    }
    let prompt_chars = prompts.prompt(1, chars).len();
    let urls: Vec<String> = targets.iter().map(|t| t.url.clone()).collect();
    let setup = Setup { prompt_tokens: target, prompt_chars, counted, max_tokens: args.max_tokens };
    if json_out {
        println!("{}", serde_json::to_string_pretty(&report::json(&setup, &urls, &results))?);
    } else {
        report::print_table(&setup, &urls, &results);
    }
    Ok(())
}

/// Sends every body to `t`, at most `c` in flight, in order; fails on the first error.
async fn level(t: &Target, bodies: &[String], c: usize, key: Option<&str>) -> Result<Level> {
    let permits = Arc::new(Semaphore::new(c));
    let mut set = tokio::task::JoinSet::new();
    let start = Instant::now();
    for b in bodies {
        let (t, b, key, permits) = (t.clone(), b.clone(), key.map(str::to_string), permits.clone());
        set.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            complete(&t, b, key.as_deref()).await
        });
    }
    let mut samples = Vec::with_capacity(bodies.len());
    while let Some(r) = set.join_next().await {
        match r.context("a request task failed").and_then(|r| r) {
            Ok(s) => samples.push(s),
            Err(e) => {
                set.abort_all();
                return Err(e);
            }
        }
    }
    let wall_s = start.elapsed().as_secs_f64();
    samples.sort_by_key(|s| s.sent);
    Ok(Level { concurrency: c, wall_s, samples })
}
