//! `squish eval`: perplexity over a text file, comparable with llama.cpp's llama-perplexity.

use crate::{model_arg, setup};
use anyhow::{Context, Result};
use clap::Args;
use squish_engine::perplexity;
use squish_format::{read_manifest, write_manifest, MANIFEST_FILE};
use squish_model::Model;
use std::path::PathBuf;

#[derive(Args)]
#[command(after_help = "Scoring follows llama-perplexity: consecutive windows of --ctx tokens, BOS first where the
model uses one, the second half of each window scored (--stride N: sliding windows instead,
as Hugging Face's recipe). Example:
  squish eval smollm2-int4 --text ../shared/corpora/dev-corpus.txt --ctx 512 --chunks 40")]
pub struct EvalArgs {
    /// A model: a path (squish or Hugging Face directory, .gguf file) or a pulled name (qwen2.5:7b, org/repo, either with @int8) [default: SmolLM2-135M-Instruct, fetched by scripts/fetch-models.sh]
    pub model: Option<PathBuf>,
    /// The text to score
    #[arg(long)]
    pub text: PathBuf,
    /// Also run the text through this base model (e.g. the unquantized source) and report
    /// ΔPPL, the mean KL divergence of the model's next-token distribution from the base's,
    /// and how often their top tokens agree
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Tokens per window
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Score at most this many windows [default: all the text holds]
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Sliding windows instead: a window of --ctx tokens every N tokens, each scoring its
    /// last N (every token scored once, with at least ctx - N tokens of context)
    #[arg(long)]
    pub stride: Option<usize>,
    /// Print a JSON report
    #[arg(long)]
    pub json: bool,
    /// CPU threads [default: all cores]
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// Where to run: auto, cpu, cuda, cuda:N, metal
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// What the KV cache stores (the model's and --base's; `squish serve` defaults to f16)
    #[arg(long, value_enum, default_value_t = crate::setup::KvCache::F32)]
    pub kv_cache: crate::setup::KvCache,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let (device, _) = setup::device(&args.device, args.threads)?;
    let path = model_arg::resolve(args.model.clone())?;
    let text = std::fs::read_to_string(&args.text).with_context(|| format!("{}", args.text.display()))?;
    let load = |path: &std::path::Path| -> Result<Model> {
        let mut model = Model::load(path, &device, Some(args.ctx.max(8)))?;
        args.kv_cache.apply(&mut model)?;
        Ok(model)
    };
    let model = load(&path)?;
    let base = match &args.base {
        Some(b) => Some(load(&model_arg::resolve(Some(b.clone()))?)?),
        None => None,
    };
    let bar = setup::progress_bar(0, "{bar:30} {pos}/{len} windows {elapsed}<{eta}");
    let r = perplexity(&model, base.as_ref(), &text, args.ctx, args.stride, args.chunks, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    let r = r?;
    let mut report = serde_json::json!({
        "model": path.display().to_string(),
        "text": args.text.display().to_string(),
        "text_sha256": squish_format::sha256_file(&args.text)?,
        "ctx": r.ctx,
        "scoring": match args.stride { None => "llama-perplexity".to_string(), Some(st) => format!("sliding, stride {st}") },
        "windows": r.windows,
        "tokens_scored": r.tokens_scored,
        "ppl": r.ppl,
        "ppl_stderr": r.ppl_stderr,
        "seconds": r.seconds,
    });
    if let (Some(b), Some(path)) = (&r.base, &args.base) {
        report["base"] = path.display().to_string().into();
        report["base_ppl"] = b.base_ppl.into();
        report["delta_ppl"] = (r.ppl - b.base_ppl).into();
        report["kld"] = b.kld_mean.into();
        report["top1_agreement"] = b.top1_agreement.into();
    }
    if path.join(MANIFEST_FILE).is_file() {
        let mut manifest = read_manifest(&path)?;
        manifest.quality = Some(report.clone());
        write_manifest(&path, &manifest)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "PPL {:.4} +/- {:.4} over {} tokens ({} windows of {}) in {:.1} s",
            r.ppl, r.ppl_stderr, r.tokens_scored, r.windows, r.ctx, r.seconds
        );
        if let Some(b) = &r.base {
            println!(
                "base PPL {:.4}: ΔPPL {:+.4}, KLD {:.5}, top-1 agreement {:.2}%",
                b.base_ppl,
                r.ppl - b.base_ppl,
                b.kld_mean,
                100.0 * b.top1_agreement
            );
        }
    }
    Ok(())
}
