//! `squish lora train`: fine-tune LoRA adapters on JSONL over a frozen base (Hugging Face
//! dir or GGUF in f32, or a squish INT8/INT4/INT3 model kept quantized), with a progress bar,
//! evaluation per epoch, checkpoints and resume; adapters are written in PEFT's layout.

use crate::{model_arg, setup};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use squish_model::lora::data::{load_jsonl, DataReport, Example};
use squish_model::lora::trainer::{make_batch, Trainer};
use squish_model::lora::{Adapter, AdapterConfig, Target, TrainModel};
use squish_format::StoredDtype;
use squish_model::{Model, Source};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args)]
pub struct LoraArgs {
    #[command(subcommand)]
    command: LoraCommand,
}

#[derive(Subcommand)]
enum LoraCommand {
    /// Train an adapter on JSONL ({"messages": [...]} or {"text": ...} per line)
    Train(TrainArgs),
    /// Fold an adapter into its base: a Hugging Face directory that `squish convert` and transformers read
    Merge(MergeArgs),
}

#[derive(Args)]
#[command(after_help = "Example:
  squish lora merge smollm2:135m my-adapter -o smollm2-styled && squish convert smollm2-styled --to int4 -o styled-int4")]
pub struct MergeArgs {
    /// The base model the adapter was trained on
    pub model: PathBuf,
    /// The adapter directory (PEFT layout)
    pub adapter: PathBuf,
    /// The merged model's directory (must not exist)
    #[arg(short, long)]
    pub output: PathBuf,
    /// Stored dtype of the merged weights: bf16, f16 or f32
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
}

#[derive(Args)]
#[command(after_help = "Data: one JSON object per line, either {\"messages\": [{\"role\": \"user\", \"content\": ...},
{\"role\": \"assistant\", \"content\": ...}]} (rendered with the model's chat template; only the assistant's
tokens are learned) or {\"text\": \"...\"} (every token learned).

Base: frozen; gradients reach only the adapters. A squish INT8/INT4/INT3 model stays quantized
(its forward runs the kernels `run` and `serve` use; the backward dequantizes 256 rows at a time),
so the weights cost their quantized size; a Hugging Face or GGUF base is converted to f32 at load.
On a GPU (--device cuda) the base stays in bf16, or packed INT4/INT8, and its products run in bf16;
adapters, activations, attention and the loss are f32.

Output: DIR/adapter_config.json and DIR/adapter_model.safetensors (Hugging Face PEFT's layout, loadable by
peft.PeftModel.from_pretrained), DIR/checkpoint-STEP/ every --checkpoint-every steps.

Examples:
  squish lora train smollm2:135m --data train.jsonl --eval-data val.jsonl -o my-adapter
  squish lora train ./smol-int4 --data train.jsonl --rank 16 --targets q_proj,v_proj,gate_proj -o a
  squish lora train ./smol-int4 --data train.jsonl -o a --resume a/checkpoint-200
  squish run smollm2:135m --lora my-adapter --prompt \"Hello\"")]
pub struct TrainArgs {
    /// The base model: a path (squish, Hugging Face dir, .gguf) or a pulled name
    pub model: Option<PathBuf>,
    /// Training data, JSONL
    #[arg(long)]
    pub data: PathBuf,
    /// Held-out data, JSONL: its loss is printed after every epoch
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Where the adapter goes
    #[arg(short, long)]
    pub output: PathBuf,
    /// Rank of the adapters
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// Scale numerator: the update is alpha / rank · B A
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f64,
    /// Layers to adapt, comma-separated: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj
    #[arg(long, default_value = "q_proj,k_proj,v_proj,o_proj", value_delimiter = ',')]
    pub targets: Vec<String>,
    /// Learning rate (AdamW)
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    /// Passes over the training data
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Rows per step
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Rows longer than this are cut (and counted in the summary)
    #[arg(long, default_value_t = 512)]
    pub max_seq: usize,
    /// Seed of the adapter's initialisation and the data order
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write DIR/checkpoint-STEP every N steps (0: never)
    #[arg(long, default_value_t = 0)]
    pub checkpoint_every: usize,
    /// Continue from a checkpoint directory
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Skip malformed lines (reported by number) instead of stopping at the first
    #[arg(long)]
    pub skip_bad_lines: bool,
    /// Where to train: auto, cpu, cuda, cuda:N (a GPU keeps an INT4/INT8 base packed, computes in f32 with bf16 base products)
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// CPU threads [default: all cores]
    #[arg(short, long)]
    pub threads: Option<usize>,
}

pub fn run(args: LoraArgs) -> Result<()> {
    match args.command {
        LoraCommand::Train(a) => train(a),
        LoraCommand::Merge(a) => merge(a),
    }
}

/// Loads `NAME=DIR` adapters into `model` (each checked against its config); returns the names
/// in index order.
pub fn attach(model: &mut Model, specs: &[String], device: &squish_backend::Device) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for spec in specs {
        let Some((name, dir)) = spec.split_once('=').filter(|(n, d)| !n.is_empty() && !d.is_empty()) else {
            bail!("--lora {spec}: expected NAME=DIR");
        };
        let adapter = Adapter::load(Path::new(dir), model.decoder.config(), device)?;
        model.decoder.add_adapter(name, &adapter)?;
        names.push(name.to_string());
    }
    Ok(names)
}

fn merge(args: MergeArgs) -> Result<()> {
    let dtype = match args.dtype.as_str() {
        "bf16" => StoredDtype::BF16,
        "f16" => StoredDtype::F16,
        "f32" => StoredDtype::F32,
        other => bail!("--dtype {other}: expected bf16, f16 or f32"),
    };
    let (device, _) = setup::device("cpu", None)?;
    let path = model_arg::resolve(Some(args.model))?;
    let source = Source::open(&path)?;
    let adapter = Adapter::load(&args.adapter, &source.config, &device)?;
    let t0 = Instant::now();
    let changed = squish_model::lora::merge::merge(&source, &adapter, &args.output, dtype)?;
    println!("merged {} into {} -> {} ({changed} weights changed, {:.1} s)", args.adapter.display(), path.display(), args.output.display(), t0.elapsed().as_secs_f64());
    Ok(())
}

fn targets(names: &[String]) -> Result<Vec<Target>> {
    let mut out = Vec::new();
    for n in names {
        match Target::parse(n.trim()) {
            Some(t) => out.push(t),
            None => bail!("--targets: `{n}` is not one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"),
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn load_data(path: &Path, source: &Source, args: &TrainArgs, what: &str) -> Result<Vec<Example>> {
    let template = source.tokenizer.template();
    let (examples, report) = load_jsonl(path, &source.tokenizer, template.as_ref(), args.max_seq, !args.skip_bad_lines)?;
    print_report(what, path, &report, examples.len(), args.max_seq);
    Ok(examples)
}

fn print_report(what: &str, path: &Path, r: &DataReport, used: usize, max_seq: usize) {
    println!("{what:<6} {}: {used} examples, {} tokens, {} of them learned", path.display(), r.tokens, r.targets);
    if r.truncated > 0 {
        println!("       {} rows cut to --max-seq {max_seq} tokens", r.truncated);
    }
    for (line, why) in r.skipped.iter().take(5) {
        println!("       skipped line {line}: {why}");
    }
    if r.skipped.len() > 5 {
        println!("       ... and {} more skipped lines", r.skipped.len() - 5);
    }
}

fn train(args: TrainArgs) -> Result<()> {
    let (device, threads) = setup::device(&args.device, args.threads)?;
    let path = model_arg::resolve(args.model.clone())?;
    let source = Source::open(&path)?;
    let data = load_data(&args.data, &source, &args, "train")?;
    let eval = args.eval_data.as_ref().map(|p| load_data(p, &source, &args, "eval")).transpose()?;
    if args.rank == 0 {
        bail!("--rank must be at least 1");
    }
    let config = AdapterConfig { rank: args.rank, alpha: args.alpha, targets: targets(&args.targets)?, rslora: false, base: path.display().to_string() };
    let adapter = match &args.resume {
        Some(dir) => {
            let a = Adapter::load(dir, &source.config, &device)?;
            if a.config.rank != config.rank || a.config.targets != config.targets {
                bail!("{}: the checkpoint has rank {} and targets {:?}; give the same --rank and --targets", dir.display(), a.config.rank, a.config.targets.iter().map(|t| t.name()).collect::<Vec<_>>());
            }
            a
        }
        None => Adapter::init(&source.config, config, args.seed, &device)?,
    };
    let t0 = Instant::now();
    let model = TrainModel::new(&source, &adapter, args.max_seq, squish_model::lora::DType::F32, &device)?;
    let trainable: usize = model.vars().iter().map(|(_, v)| v.elem_count()).sum();
    let form = match model.quantized_matrices() {
        (0, _) if device.is_cpu() => "f32".to_string(),
        (0, _) => "bf16".to_string(),
        (q, all) => format!("{q} of {all} matrices quantized, used packed"),
    };
    println!(
        "base   {} (frozen, {form}), loaded in {:.1} s; adapters: rank {}, alpha {}, {} ({:.2} M trainable), {threads} threads",
        path.display(),
        t0.elapsed().as_secs_f64(),
        args.rank,
        args.alpha,
        adapter.config.targets.iter().map(|t| t.name()).collect::<Vec<_>>().join(","),
        trainable as f64 / 1e6
    );
    let mut trainer = match &args.resume {
        Some(dir) => Trainer::resume(model, dir, &device).with_context(|| format!("resuming from {}", dir.display()))?,
        None => Trainer::new(model, args.lr, args.batch, args.seed)?,
    };
    std::fs::create_dir_all(&args.output).with_context(|| format!("creating {}", args.output.display()))?;
    if let (Some(eval), 0) = (&eval, trainer.state.step) {
        let l = trainer.eval_loss(eval, &device)?;
        trainer.state.eval_losses.push((0, l));
        println!("epoch 0: eval loss {l:.4} (before training)");
    }
    let per_epoch = trainer.batches(data.len(), 0).len();
    let bar = setup::progress_bar((per_epoch * args.epochs) as u64, "{prefix} [{bar:30}] {pos}/{len} steps {msg} ({elapsed} < {eta})");
    bar.set_position(trainer.state.step as u64);
    let (t_train, mut tokens_seen) = (Instant::now(), 0usize);
    // The GPU's least free memory, sampled after every step: what training took at its peak.
    let mut least_free = squish_backend::free_memory(&device);
    while trainer.state.epoch < args.epochs {
        let epoch = trainer.state.epoch;
        bar.set_prefix(format!("epoch {}/{}", epoch + 1, args.epochs));
        let batches = trainer.batches(data.len(), epoch);
        let mut epoch_losses = Vec::new();
        for idx in batches.iter().skip(trainer.state.batch_in_epoch) {
            let rows: Vec<&Example> = idx.iter().map(|&i| &data[i]).collect();
            let batch = make_batch(&rows, &device)?;
            let loss = trainer.step(&batch)?;
            trainer.state.batch_in_epoch += 1;
            tokens_seen += rows.iter().map(|e| e.tokens.len()).sum::<usize>();
            epoch_losses.push(loss);
            least_free = least_free.min(squish_backend::free_memory(&device));
            let rate = tokens_seen as f64 / t_train.elapsed().as_secs_f64();
            bar.set_message(format!("loss {loss:.3}, {rate:.0} tokens/s"));
            bar.inc(1);
            let step = trainer.state.step;
            if args.checkpoint_every > 0 && step % args.checkpoint_every == 0 {
                let dir = args.output.join(format!("checkpoint-{step}"));
                trainer.save_checkpoint(&dir)?;
                bar.suspend(|| println!("checkpoint {}", dir.display()));
            }
        }
        let mean = epoch_losses.iter().sum::<f32>() / epoch_losses.len().max(1) as f32;
        let mut line = format!("epoch {}: train loss {mean:.4}", epoch + 1);
        if let Some(eval) = &eval {
            let l = trainer.eval_loss(eval, &device)?;
            trainer.state.eval_losses.push((epoch + 1, l));
            line += &format!(", eval loss {l:.4}");
        }
        bar.suspend(|| println!("{line}"));
        trainer.state.epoch += 1;
        trainer.state.batch_in_epoch = 0;
    }
    bar.finish_and_clear();
    trainer.save_checkpoint(&args.output)?;
    let secs = t_train.elapsed().as_secs_f64();
    let gpu = match (least_free, squish_backend::gpu_memory(&device)) {
        (Some(free), Some((_, total))) => format!(", GPU memory in use at most {:.2} GB of {:.1}", (total - free) as f64 / 1e9, total as f64 / 1e9),
        _ => String::new(),
    };
    println!(
        "saved  {} after {} steps: {:.0} s, {:.0} tokens/s, peak memory {:.2} GB{gpu}",
        args.output.display(),
        trainer.state.step,
        secs,
        tokens_seen as f64 / secs.max(1e-9),
        setup::peak_rss_kb() as f64 / 1e6
    );
    Ok(())
}
