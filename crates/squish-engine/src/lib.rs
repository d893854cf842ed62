//! Generation: one sequence at a time for the CLI (`Session`), and the serving engine that
//! batches many (`Engine`); perplexity and speed measurement. It owns no I/O: text goes to a
//! callback or a channel.

mod bench;
mod constraint;
mod engine;
mod perplexity;

pub use bench::{bench_run, bench_streams, BenchRun};
pub use engine::{Engine, EngineConfig, Event, Load, Request, SubmitError, TokenLogprob, Usage};
pub use constraint::{Constraint, ConstraintError, ConstraintFactory, OutputFormat};
pub use perplexity::{perplexity, BaseComparison, PerplexityReport};
/// What callers of the engine need of the model, so they need not depend on squish-model.
pub use squish_model::{civil_from_days, tensor_plan, ChatTemplate, Message, Model, ModelError, SamplingParams, Tokenizer};
use squish_model::{KvCache, Sampler, TextStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Prompt tokens go through the model in chunks of this many, bounding attention's memory.
const PREFILL_CHUNK: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token.
    Stop,
    /// `max_tokens` or the end of the context.
    Length,
    Cancelled,
}

#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values were already in the cache.
    pub reused_tokens: usize,
    pub prefill_time: Duration,
    pub generated_tokens: usize,
    /// From the first generated token to the last.
    pub decode_time: Duration,
}

impl Stats {
    pub fn prefill_tokens_per_s(&self) -> f64 {
        (self.prompt_tokens - self.reused_tokens) as f64 / self.prefill_time.as_secs_f64().max(1e-9)
    }

    /// Tokens after the first (the first one comes out of the prefill).
    pub fn decode_tokens_per_s(&self) -> f64 {
        self.generated_tokens.saturating_sub(1) as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
    pub stats: Stats,
}

/// One conversation's state: the model and a KV cache that persists between turns.
pub struct Session<'m> {
    model: &'m Model,
    cache: KvCache,
}

impl<'m> Session<'m> {
    pub fn new(model: &'m Model) -> Result<Self, ModelError> {
        Ok(Self { model, cache: model.new_cache()? })
    }

    /// Generates after `prompt`, calling `on_text` with each new piece of text.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &SamplingParams,
        max_tokens: usize,
        cancel: &AtomicBool,
        on_text: impl FnMut(&str) + Send,
    ) -> Result<Generation, ModelError> {
        squish_backend::on_compute_pool(|| self.generate_here(prompt, params, max_tokens, cancel, on_text))
    }

    fn generate_here(
        &mut self,
        prompt: &[u32],
        params: &SamplingParams,
        max_tokens: usize,
        cancel: &AtomicBool,
        mut on_text: impl FnMut(&str),
    ) -> Result<Generation, ModelError> {
        let ctx = self.model.context_size();
        if prompt.is_empty() {
            return Err(ModelError::Tokenizer("the prompt is empty".into()));
        }
        if prompt.len() >= ctx {
            return Err(ModelError::PromptTooLong { prompt: prompt.len(), ctx });
        }
        let mut stats = Stats { prompt_tokens: prompt.len(), ..Stats::default() };
        let start = Instant::now();
        // Reuse the cached prefix, but always run at least one token to get logits.
        let reused = common_prefix(self.cache.tokens(), prompt).min(prompt.len() - 1);
        self.cache.truncate(reused);
        stats.reused_tokens = reused;
        let decoder = &self.model.decoder;
        let mut hidden = None;
        for chunk in prompt[reused..].chunks(PREFILL_CHUNK) {
            hidden = Some(decoder.forward(chunk, &mut self.cache)?);
        }
        let mut logits = decoder.last_logits(&hidden.expect("prompt has at least one new token"))?;
        stats.prefill_time = start.elapsed();

        let tokenizer = &self.model.tokenizer;
        let mut sampler = Sampler::new(params.clone());
        let mut history = prompt.to_vec();
        let mut stream = TextStream::new(tokenizer);
        let mut out = Generation { tokens: Vec::new(), text: String::new(), finish: FinishReason::Length, stats };
        let decode_start = Instant::now();
        let mut emit = |piece: Option<String>, out: &mut Generation| {
            if let Some(p) = piece {
                on_text(&p);
                out.text.push_str(&p);
            }
        };
        while out.tokens.len() < max_tokens {
            if cancel.load(Ordering::Relaxed) {
                out.finish = FinishReason::Cancelled;
                break;
            }
            let token = sampler.sample(&mut logits, &history);
            if tokenizer.eos().contains(&token) {
                out.finish = FinishReason::Stop;
                break;
            }
            out.tokens.push(token);
            history.push(token);
            emit(stream.push(token)?, &mut out);
            if out.tokens.len() >= max_tokens || self.cache.len() + 1 > ctx {
                break;
            }
            let h = decoder.forward(&[token], &mut self.cache)?;
            logits = decoder.last_logits(&h)?;
        }
        emit(stream.finish()?, &mut out);
        out.stats.generated_tokens = out.tokens.len();
        out.stats.decode_time = decode_start.elapsed();
        Ok(out)
    }
}

pub(crate) fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
