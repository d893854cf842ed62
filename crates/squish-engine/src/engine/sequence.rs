//! One running request inside the engine: where its prompt is, how it samples (penalties,
//! seeded sampler, log-probabilities), and how its text streams out past stop strings.

use super::{Event, Request, StopMatcher, TokenLogprob, Usage};
use crate::{Constraint, FinishReason};
use squish_model::{ModelError, Sampler, TextStream, Tokenizer};
use std::collections::HashMap;
use tokio::sync::mpsc::UnboundedSender;

pub(super) struct Sequence<'m> {
    pub req: Request,
    pub reply: UnboundedSender<Event>,
    /// The KV-cache slot it runs in.
    pub slot: usize,
    /// Prompt tokens whose keys and values are in the cache.
    pub prefilled: usize,
    pub cached: usize,
    /// A sampled token not yet run through the model.
    pub next: Option<u32>,
    generated: usize,
    history: Vec<u32>,
    counts: HashMap<u32, u32>,
    sampler: Sampler,
    stream: TextStream<'m>,
    stop: StopMatcher,
    /// A stop string ended the text: nothing held back is sent.
    cut: bool,
    tok: &'m Tokenizer,
    constraint: Option<Constraint>,
    prompt_logprobs: Vec<Option<TokenLogprob>>,
}

impl<'m> Sequence<'m> {
    pub fn new(req: Request, constraint: Option<Constraint>, reply: UnboundedSender<Event>, slot: usize, cached: usize, tok: &'m Tokenizer) -> Self {
        let mut prompt_logprobs = Vec::new();
        if req.prompt_logprobs {
            prompt_logprobs.push(None);
        }
        Self {
            sampler: Sampler::new(req.sampling.clone()),
            stop: StopMatcher::new(&req.stop),
            cut: false,
            tok,
            constraint,
            history: req.prompt.clone(),
            stream: TextStream::new(tok),
            counts: HashMap::new(),
            generated: 0,
            next: None,
            prefilled: cached,
            cached,
            slot,
            reply,
            req,
            prompt_logprobs,
        }
    }

    pub fn prefilling(&self) -> bool {
        self.prefilled < self.req.prompt.len()
    }

    /// Whoever asked has gone away (the HTTP client disconnected).
    pub fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }

    pub fn usage(&self) -> Usage {
        Usage { prompt_tokens: self.req.prompt.len(), cached_tokens: self.cached, completion_tokens: self.generated }
    }

    /// Logits at prompt position `pos` (predicting the token after it), kept when asked for.
    pub fn prompt_row(&mut self, pos: usize, logits: &[f32]) {
        if let Some(&next) = self.req.prompt.get(pos + 1) {
            self.prompt_logprobs.push(Some(logprob_of(logits, next, self.req.logprobs.unwrap_or(0))));
        }
    }

    /// Whether the next token is the plain argmax of the logits (greedy sampling, no
    /// penalties, constraint or log-probabilities): then the model picks it where the logits
    /// are (`Decoder::greedy_at`) and `on_token` takes it.
    pub fn greedy(&self) -> bool {
        self.sampler.is_greedy()
            && self.constraint.is_none()
            && self.req.logprobs.is_none()
            && !self.req.prompt_logprobs
            && self.req.presence_penalty == 0.0
            && self.req.frequency_penalty == 0.0
    }

    /// Chooses the next token from the logits after the last one run, and streams it.
    /// `cache_len` is what the cache holds now. Returns how the request ended, if it did.
    pub fn on_logits(&mut self, mut logits: Vec<f32>, cache_len: usize, ctx: usize) -> Result<Option<FinishReason>, ModelError> {
        if !self.prompt_logprobs.is_empty() {
            let _ = self.reply.send(Event::PromptLogprobs(std::mem::take(&mut self.prompt_logprobs)));
        }
        if self.req.max_tokens == 0 {
            return Ok(Some(FinishReason::Length)); // only the prompt was to be scored
        }
        if let Some(c) = &mut self.constraint {
            c.mask_logits(&mut logits).map_err(|e| ModelError::Tokenizer(format!("structured output: {e}")))?;
        }
        for (&id, &n) in &self.counts {
            if let Some(l) = logits.get_mut(id as usize) {
                *l -= self.req.presence_penalty + self.req.frequency_penalty * n as f32;
            }
        }
        let lp_of = |logits: &[f32], token| self.req.logprobs.map(|top| logprob_of(logits, token, top));
        let before = self.req.logprobs.map(|_| logits.clone());
        let token = self.sampler.sample(&mut logits, &self.history);
        let logprob = before.and_then(|l| lp_of(&l, token));
        self.take(token, logprob, cache_len, ctx)
    }

    /// `on_logits` for a `greedy` sequence, given the token the model picked.
    pub fn on_token(&mut self, token: u32, cache_len: usize, ctx: usize) -> Result<Option<FinishReason>, ModelError> {
        if self.req.max_tokens == 0 {
            return Ok(Some(FinishReason::Length));
        }
        self.take(token, None, cache_len, ctx)
    }

    /// Streams the chosen token (or ends at it).
    fn take(&mut self, token: u32, logprob: Option<TokenLogprob>, cache_len: usize, ctx: usize) -> Result<Option<FinishReason>, ModelError> {
        if self.tok.eos().contains(&token) && (!self.req.ignore_eos || self.constraint.is_some()) {
            return Ok(Some(FinishReason::Stop));
        }
        if let Some(c) = &mut self.constraint {
            c.accept(token).map_err(|e| ModelError::Tokenizer(format!("structured output: {e}")))?;
        }
        self.generated += 1;
        self.history.push(token);
        *self.counts.entry(token).or_default() += 1;
        let piece = self.stream.push(token)?.unwrap_or_default();
        let (text, hit) = self.stop.push(&piece);
        let _ = self.reply.send(Event::Token { id: token, text, logprob });
        if hit {
            self.cut = true;
            return Ok(Some(FinishReason::Stop));
        }
        if self.constraint.as_ref().is_some_and(Constraint::is_finished) {
            return Ok(Some(FinishReason::Stop));
        }
        if self.generated >= self.req.max_tokens || cache_len + 1 >= ctx {
            return Ok(Some(FinishReason::Length));
        }
        self.next = Some(token);
        Ok(None)
    }

    /// Sends the last event: the held-back text (unless a stop string cut it) and the usage.
    pub fn finish(mut self, finish: FinishReason) {
        let mut tail = String::new();
        if !self.cut {
            if let Ok(Some(rest)) = self.stream.finish() {
                tail = self.stop.push(&rest).0;
            }
            tail += &self.stop.finish();
        }
        let usage = self.usage();
        let _ = self.reply.send(Event::Done { finish, text_tail: tail, usage });
    }
}

/// Log-softmax at `token`, with the `top` most likely tokens.
fn logprob_of(logits: &[f32], token: u32, top: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
    let mut best: Vec<(u32, f32)> = Vec::new();
    if top > 0 {
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let k = top.min(idx.len());
        idx.select_nth_unstable_by(k - 1, |&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        idx.truncate(k);
        idx.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
        best = idx.into_iter().map(|i| (i, logits[i as usize] - lse)).collect();
    }
    TokenLogprob { token, logprob: logits.get(token as usize).map_or(f32::NEG_INFINITY, |l| l - lse), top: best }
}
