//! `squish serve`: load one model, start the batching engine, and serve the OpenAI- and
//! Ollama-compatible HTTP APIs until Ctrl-C or SIGTERM.

use crate::model_arg;
use anyhow::{bail, Context, Result};
use clap::Args;
use squish_engine::{Engine, EngineConfig, Model};
use squish_format::{read_manifest, ModelFiles};
use squish_server::{ModelDetails, ServerOptions};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

#[derive(Args)]
#[command(after_help = "Endpoints: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models (OpenAI);
/api/chat, /api/generate, /api/embed, /api/tags, /api/show, /api/ps, /api/version, /api/pull (Ollama;
pull converts into the store, served after a restart with --model NAME);
/health, /metrics (Prometheus).

Examples:
  squish serve                                   (the default model on 127.0.0.1:11435)
  squish serve --model ./smol-int4 --max-batch 16
  SQUISH_API_KEY=secret squish serve --model model.gguf --host 0.0.0.0
  curl localhost:11435/v1/chat/completions -d '{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}'")]
pub struct ServeArgs {
    /// A model: a path (squish or Hugging Face directory, .gguf file) or a pulled name (qwen2.5:7b, org/repo, either with @int8) [default: SmolLM2-135M-Instruct, fetched by scripts/fetch-models.sh]
    #[arg(long, env = "SQUISH_MODEL")]
    pub model: Option<PathBuf>,
    /// Address to listen on; 0.0.0.0 exposes the server to the network
    #[arg(long, env = "SQUISH_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on (0: any free one; the address is printed once listening)
    #[arg(long, env = "SQUISH_PORT", default_value_t = 11435)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on every route but /health
    #[arg(long, env = "SQUISH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The model's name in the APIs [default: the file or directory name]
    #[arg(long)]
    pub name: Option<String>,
    /// Sequences decoded together in one batched forward (each holds a KV cache of --ctx tokens;
    /// on a GPU, lowered to as many as fit in its free memory)
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// Requests that may wait for a free sequence; more get 429 with Retry-After
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Context size in tokens per sequence [default: the model's, at most 4096]
    #[arg(long)]
    pub ctx: Option<usize>,
    /// What the KV caches store: f16 (as llama-server does) halves their memory and what a
    /// batched decode step reads; f32 is exact
    #[arg(long, value_enum, default_value_t = crate::setup::KvCache::F16)]
    pub kv_cache: crate::setup::KvCache,
    /// Largest request body in bytes; larger ones get 413
    #[arg(long, default_value_t = 8 << 20)]
    pub max_body: usize,
    /// Seconds in-flight requests get to finish after Ctrl-C or SIGTERM
    #[arg(long, default_value_t = 30)]
    pub grace: u64,
    /// Where to run: auto, cpu, cuda, cuda:N, metal
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// CPU threads [default: all cores]
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// A LoRA adapter (PEFT layout) served as `<model>:NAME`; repeat for more. Requests pick one
    /// with `"model": "<model name>:NAME"`; the plain name is the base model
    #[arg(long, value_name = "NAME=DIR")]
    pub lora: Vec<String>,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let (device, threads) = crate::setup::device(&args.device, args.threads)?;
    let arg = model_arg::resolve_arg(args.model.clone())?;
    let path = arg.path;
    let t0 = Instant::now();
    let mut model = Model::load(&path, &device, args.ctx)?;
    args.kv_cache.apply(&mut model)?;
    let adapters = crate::lora::attach(&mut model, &args.lora, &device)?;
    let details = details(&path, &model);
    let model_id = args.name.clone().or(arg.stored.map(|(name, _)| name)).unwrap_or_else(|| default_name(&path));
    tracing::info!(
        "loaded {} ({}, ctx {}) on {device:?} with {threads} threads in {:.2} s",
        path.display(),
        details.family,
        model.context_size(),
        t0.elapsed().as_secs_f64()
    );
    // Every sequence slot holds a whole context's KV cache: on a GPU, as many as fit.
    let max_batch = model.caches_that_fit(args.max_batch.max(1));
    let gib = |b: usize| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64);
    if max_batch == 0 {
        bail!("no {}-token KV cache ({}) fits beside the model on {}; use a smaller --ctx", model.context_size(), gib(model.kv_cache_bytes()), squish_backend::describe(&device));
    }
    if max_batch < args.max_batch {
        tracing::warn!(
            "--max-batch {} lowered to {max_batch}: that many {}-token KV caches ({} each) fit in the free memory; a smaller --ctx fits more",
            args.max_batch,
            model.context_size(),
            gib(model.kv_cache_bytes())
        );
    }
    let engine = Arc::new(Engine::start(Arc::new(model), EngineConfig { max_batch, max_queue: args.max_queue })?);
    let opts = ServerOptions {
        addr: SocketAddr::new(args.host, args.port),
        api_key: args.api_key.filter(|k| !k.is_empty()),
        model_id,
        adapters,
        max_body: args.max_body,
        grace: Duration::from_secs(args.grace),
        details,
        puller: Some(crate::pull::server_puller()),
    };
    let auth = if opts.api_key.is_some() { "required" } else { "off" };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let name = opts.model_id.clone();
    rt.block_on(squish_server::serve(engine.clone(), opts, |addr| {
        tracing::info!("serving `{name}` on http://{addr} (API key {auth})");
        // A line on stdout that scripts can wait for.
        println!("squish: listening on http://{addr}");
    }))
    .with_context(|| format!("cannot serve on {}:{}", args.host, args.port))?;
    engine.join();
    tracing::info!("stopped");
    Ok(())
}

fn default_name(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    name.strip_suffix(".gguf").map(String::from).unwrap_or(name)
}

/// Format, family, size and quantization for the Ollama listing routes.
fn details(path: &Path, model: &Model) -> ModelDetails {
    let cfg = model.decoder.config();
    let has = |_: &str| false;
    let parameters: u64 = squish_engine::tensor_plan(cfg, &has).iter().map(|t| t.shape.iter().product::<usize>() as u64).sum();
    let size_bytes = dir_size(path);
    let modified = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let manifest = matches!(ModelFiles::open(path), Ok(ModelFiles::Squish(_))).then(|| read_manifest(path).ok()).flatten();
    let (format, quantization) = match (&manifest, path.extension().is_some_and(|e| e == "gguf")) {
        (Some(m), _) => ("squish", m.scheme.to_uppercase()),
        (None, true) => ("gguf", gguf_quantization(path)),
        (None, false) => ("safetensors", String::new()),
    };
    ModelDetails {
        format: format.into(),
        family: cfg.arch.name().into(),
        parameters,
        parameter_size: if parameters >= 1_000_000_000 {
            format!("{:.1}B", parameters as f64 / 1e9)
        } else {
            format!("{}M", (parameters as f64 / 1e6).round())
        },
        quantization,
        size_bytes,
        digest: format!("{size_bytes:x}-{modified}"),
        modified,
        quality: manifest.and_then(|m| m.quality),
    }
}

/// The quantization named in a GGUF file's name (e.g. Q4_1), as Ollama shows it.
fn gguf_quantization(path: &Path) -> String {
    let name = path.file_stem().map(|s| s.to_string_lossy().to_uppercase()).unwrap_or_default();
    name.rsplit(['.', '-']).next().filter(|q| q.starts_with('Q') || q.starts_with("F") || q.starts_with("BF")).unwrap_or("").to_string()
}

fn dir_size(path: &Path) -> u64 {
    match std::fs::read_dir(path) {
        Ok(entries) => entries.flatten().filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum(),
        Err(_) => std::fs::metadata(path).map_or(0, |m| m.len()),
    }
}
