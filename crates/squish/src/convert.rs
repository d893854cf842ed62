//! `squish convert`: compress a model into a squish directory.

use crate::setup;
use anyhow::Result;
use clap::{Args, ValueEnum};
use squish_model::convert::{self, ConvertOptions, Progress, Scheme, Summary};
use std::path::PathBuf;

#[derive(Clone, Copy, ValueEnum)]
pub enum To {
    /// 4-bit codes, a scale and a min per group (default group 64: 4.5 bits/weight)
    Int4,
    /// 3-bit codes, an 8-bit scale and min per group (default group 64: 3.3 bits/weight),
    /// with the embeddings, attention k/v and the outer layers' down projections kept at 4
    /// bits (3.59 bits/weight on SmolLM2-135M)
    Int3,
    /// A 16-entry codebook of weight pairs learned per matrix (4-bit code per pair) and an
    /// 8-bit scale per group (default group 64: 2.16 bits/weight), with the embeddings and
    /// the outer layers' down projections at 3 bits and attention k/v at 4 (2.6 bits/weight
    /// on SmolLM2-135M); use --calib (data-free INT2 is far worse)
    Int2,
    /// 8-bit symmetric codes, a scale per group (default group 32: 8.5 bits/weight)
    Int8,
    F16,
    Bf16,
    F32,
}

impl To {
    pub fn scheme(self) -> Scheme {
        match self {
            To::Int4 => Scheme::Int4,
            To::Int3 => Scheme::Int3,
            To::Int2 => Scheme::Int2,
            To::Int8 => Scheme::Int8,
            To::F16 => Scheme::F16,
            To::Bf16 => Scheme::Bf16,
            To::F32 => Scheme::F32,
        }
    }
}

#[derive(Args)]
#[command(after_help = "Examples:
  squish convert ~/.cache/squish/models/SmolLM2-135M-Instruct.Q4_1.gguf --to int4 -o smollm2-int4
  squish convert ./Qwen2.5-0.5B-Instruct --to int4 --calib notes.txt -o qwen-int4
  squish run smollm2-int4")]
pub struct ConvertArgs {
    /// A Hugging Face model directory or a .gguf file
    pub source: PathBuf,
    /// The scheme for weight matrices (norms and biases stay f32)
    #[arg(long, value_enum)]
    pub to: To,
    /// Inputs per scale (and min); a multiple of 32 [default: 64 for int4, 32 for int8]
    #[arg(long)]
    pub group_size: Option<usize>,
    /// Scheme for the token embeddings and LM head [default: the same as --to]
    #[arg(long, value_enum)]
    pub embedding: Option<To>,
    /// Calibration text (activation-aware): int4, int3 and int2 run GPTQ error feedback (int2 also learns its codebooks weighted by it) through each layer's input statistics, int8 weighs rounding errors by how strongly each input channel fires; without it, a data-free search (clipping; int2: k-means codebooks) where all channels weigh the same
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// Most calibration tokens to use (more is better and slower: on SmolLM2-135M, 30k tokens
    /// gave ΔPPL +0.64 where 8k gave +0.71)
    #[arg(long, default_value_t = 32768)]
    pub calib_tokens: usize,
    /// int2 with --calib: passes over the calibration text that then tune the group scales and
    /// norm weights (every code fixed) so the model's next-token distribution follows the
    /// source's; 0 skips it
    #[arg(long, default_value_t = convert::DEFAULT_TUNE_EPOCHS)]
    pub tune_epochs: usize,
    /// The output directory
    #[arg(short, long)]
    pub output: PathBuf,
    /// Replace the output directory if it exists
    #[arg(long)]
    pub force: bool,
    /// CPU threads [default: all cores]
    #[arg(short, long)]
    pub threads: Option<usize>,
}

pub fn run(args: ConvertArgs) -> Result<()> {
    setup::device("cpu", args.threads)?;
    let scheme = args.to.scheme();
    let opts = ConvertOptions {
        scheme,
        group_size: args.group_size,
        embedding_scheme: args.embedding.map(To::scheme),
        calib: args.calib.clone(),
        calib_tokens: args.calib_tokens,
        tune_epochs: args.tune_epochs,
        force: args.force,
    };
    let bars = ConvertBars::new();
    let summary = convert::convert(&args.source, &args.output, &opts, &mut |p| bars.update(p));
    bars.finish();
    let s = summary?;
    println!("converted {} -> {} ({})", args.source.display(), args.output.display(), scheme.name());
    print_summary(&s);
    Ok(())
}

/// The lines after "converted ...", shared with `squish pull`.
pub fn print_summary(s: &Summary) {
    let mb = |b: u64| b as f64 / 1e6;
    println!("  tensors          {}", s.tensors);
    println!("  parameters       {:.1} M", s.parameters as f64 / 1e6);
    println!("  bits/weight      {:.3} (codes, scales, mins and dense tensors over all parameters)", s.bits_per_weight);
    println!("  size             {:.1} MB -> {:.1} MB", mb(s.source_bytes), mb(s.output_bytes));
    if s.calib_tokens > 0 {
        println!("  calibration      {} tokens", s.calib_tokens);
    }
    if !s.tune_kl.is_empty() {
        let kl: Vec<String> = s.tune_kl.iter().map(|k| format!("{k:.3}")).collect();
        println!("  tuning           KL from the source per pass over the calibration text: {}", kl.join(", "));
    }
    for (name, note) in &s.fallbacks {
        println!("  note             {name}: {note}");
    }
    println!("  time             {:.1} s", s.seconds);
}

/// The per-tensor bar of a conversion, fed from its progress events. Where stderr is not a
/// terminal (logs, CI, containers) the bar draws nothing, so a line goes there at every
/// tenth of each phase instead: a calibrated INT2 conversion runs for about 45 minutes on 2 cores.
pub struct ConvertBars {
    tensors: indicatif::ProgressBar,
    /// The phase and tenth last logged, when logging lines.
    logged: Option<std::cell::Cell<(bool, usize)>>,
}

impl ConvertBars {
    pub fn new() -> Self {
        let lines = !std::io::IsTerminal::is_terminal(&std::io::stderr());
        Self {
            tensors: setup::progress_bar(0, "{bar:30} {pos}/{len} tensors {elapsed}<{eta} {msg}"),
            logged: lines.then(|| std::cell::Cell::new((false, 0))),
        }
    }

    pub fn update(&self, p: Progress) {
        let tuning = matches!(p, Progress::Tune { .. });
        let (index, total, message) = match p {
            Progress::Tensor { index, total, name } => (index, total, name.to_string()),
            Progress::Tune { step, total, kl } => (step, total, format!("tuning: KL {kl:.4}")),
        };
        self.tensors.set_length(total as u64);
        self.tensors.set_position(index as u64);
        self.tensors.set_message(message);
        if let Some(logged) = &self.logged {
            let tenth = index * 10 / total.max(1);
            if logged.get() != (tuning, tenth) && (tenth > 0 || tuning != logged.get().0) {
                logged.set((tuning, tenth));
                let elapsed = self.tensors.elapsed().as_secs();
                let what = if tuning { "tuning steps" } else { "tensors" };
                eprintln!("convert: {index}/{total} {what}, {}:{:02} elapsed ({})", elapsed / 60, elapsed % 60, self.tensors.message());
            }
        }
    }

    pub fn finish(&self) {
        self.tensors.finish_and_clear();
    }
}
