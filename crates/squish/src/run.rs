//! `squish run`: one streamed completion (`--prompt`), or an interactive terminal chat that
//! keeps its history (and its KV cache) between turns.

use crate::model_arg;
use anyhow::{Context, Result};
use clap::Args;
use squish_engine::{FinishReason, Generation, Session};
use squish_model::{Message, Model, SamplingParams};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(Args)]
#[command(after_help = "Examples:
  squish run --prompt \"Write a haiku about Rust\"     (the default model, SmolLM2-135M-Instruct)
  squish run ./Qwen2.5-0.5B-Instruct                  (chat; /exit or Ctrl-D to leave)
  squish run model.gguf --raw --prompt \"Once upon a time\" --temperature 0")]
pub struct RunArgs {
    /// A model: a path (squish or Hugging Face directory, .gguf file) or a pulled name (qwen2.5:7b, org/repo, either with @int8) [default: SmolLM2-135M-Instruct, fetched by scripts/fetch-models.sh]
    pub model: Option<PathBuf>,
    /// Generate once from this prompt and exit; without it, start an interactive chat
    #[arg(short, long)]
    pub prompt: Option<String>,
    /// A system message put before the conversation
    #[arg(long)]
    pub system: Option<String>,
    /// Complete the prompt as plain text, without the chat template (the default for models without one)
    #[arg(long)]
    pub raw: bool,
    /// Most tokens to generate per answer
    #[arg(short = 'n', long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy (always the most likely token)
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Sample only from the k most likely tokens (0: no limit)
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Sample only from the most likely tokens whose probabilities add up to p
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than min-p times the most likely one
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalise tokens seen in the last 64 (1.0: off)
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Random seed, for reproducible sampling [default: from the clock]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Context size in tokens [default: the model's, at most 4096]
    #[arg(long)]
    pub ctx: Option<usize>,
    /// What the KV cache stores (`squish serve` defaults to f16)
    #[arg(long, value_enum, default_value_t = crate::setup::KvCache::F32)]
    pub kv_cache: crate::setup::KvCache,
    /// Where to run: auto, cpu, cuda, cuda:N, metal
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// CPU threads [default: all cores]
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// A LoRA adapter directory (PEFT layout: `squish lora train` or Hugging Face peft) to run with
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// Print load time and prompt/decode speed to stderr
    #[arg(short, long)]
    pub verbose: bool,
}

/// Set while an answer is being generated; Ctrl-C then stops the answer instead of the program.
static GENERATING: AtomicBool = AtomicBool::new(false);

pub fn run(args: RunArgs) -> Result<()> {
    let (device, threads) = crate::setup::device(&args.device, args.threads)?;
    let path = model_arg::resolve(args.model.clone())?;

    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    ctrlc::set_handler(move || {
        if GENERATING.load(Ordering::SeqCst) {
            flag.store(true, Ordering::SeqCst);
        } else {
            println!();
            std::process::exit(130);
        }
    })
    .context("cannot install the Ctrl-C handler")?;

    let t0 = Instant::now();
    let mut model = Model::load(&path, &device, args.ctx)?;
    args.kv_cache.apply(&mut model)?;
    if let Some(dir) = &args.lora {
        crate::lora::attach(&mut model, &[format!("lora={}", dir.display())], &device)?;
        model.decoder.set_default_adapter(Some(0));
    }
    if args.verbose {
        let cfg = model.decoder.config();
        eprintln!(
            "loaded {} ({}, {} layers, hidden {}, ctx {}) on {:?} with {threads} threads in {:.2} s",
            path.display(),
            cfg.arch.name(),
            cfg.layers,
            cfg.hidden,
            model.context_size(),
            device,
            t0.elapsed().as_secs_f64()
        );
    }
    let raw = args.raw || model.chat_template().is_none();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
    });
    let params = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repeat_penalty: args.repeat_penalty,
        repeat_last_n: 64,
        seed,
    };
    let mut chat = Chat { model: &model, session: Session::new(&model)?, args: &args, params, raw, cancel, history: Vec::new() };
    match &args.prompt {
        Some(p) => {
            chat.answer(p)?;
            Ok(())
        }
        None => chat.interactive(),
    }
}

struct Chat<'a> {
    model: &'a Model,
    session: Session<'a>,
    args: &'a RunArgs,
    params: SamplingParams,
    raw: bool,
    cancel: Arc<AtomicBool>,
    history: Vec<Message>,
}

impl Chat<'_> {
    fn interactive(&mut self) -> Result<()> {
        let mode = if self.raw { "completion mode: each line is a prompt" } else { "chat" };
        eprintln!("{mode}; /exit or Ctrl-D to leave, Ctrl-C stops an answer");
        let stdin = std::io::stdin();
        let show_prompt = stdin.is_terminal();
        let mut line = String::new();
        loop {
            if show_prompt {
                eprint!("> ");
            }
            line.clear();
            if stdin.lock().read_line(&mut line)? == 0 {
                eprintln!();
                return Ok(());
            }
            let input = line.trim_end_matches(['\n', '\r']);
            match input.trim() {
                "" => continue,
                "/exit" | "/quit" | "/bye" => return Ok(()),
                _ => {}
            }
            self.answer(input)?;
        }
    }

    /// Streams one answer to stdout; in chat mode the turn joins the history.
    fn answer(&mut self, user: &str) -> Result<Generation> {
        let tok = &self.model.tokenizer;
        let prompt = if self.raw {
            tok.encode(user, true)?
        } else {
            let template = self.model.chat_template().expect("chat mode implies a template");
            let mut messages = Vec::new();
            if let Some(sys) = &self.args.system {
                messages.push(Message::new("system", sys));
            }
            messages.extend(self.history.iter().cloned());
            messages.push(Message::new("user", user));
            tok.encode(&template.render(&messages, true)?, false)?
        };
        self.cancel.store(false, Ordering::SeqCst);
        GENERATING.store(true, Ordering::SeqCst);
        let mut stdout = std::io::stdout();
        let result = self.session.generate(&prompt, &self.params, self.args.max_tokens, &self.cancel, |piece| {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        });
        GENERATING.store(false, Ordering::SeqCst);
        let gen = result?;
        println!();
        if gen.finish == FinishReason::Cancelled {
            eprintln!("[stopped]");
        }
        if !self.raw {
            self.history.push(Message::new("user", user));
            self.history.push(Message::new("assistant", &gen.text));
        }
        if self.args.verbose {
            let s = &gen.stats;
            eprintln!(
                "prompt: {} tokens ({} reused) at {:.1} tokens/s | output: {} tokens at {:.1} tokens/s | finish: {:?} | seed {}",
                s.prompt_tokens,
                s.reused_tokens,
                s.prefill_tokens_per_s(),
                s.generated_tokens,
                s.decode_tokens_per_s(),
                gen.finish,
                self.params.seed
            );
        }
        Ok(gen)
    }
}
