//! The owner loop. Each turn it takes in new requests, drops abandoned ones, admits waiting
//! requests into free KV-cache slots (the slot whose cache already holds the longest prefix
//! of the prompt, so a repeated system prompt or few-shot preamble is not recomputed), then
//! runs ONE batched forward holding every decoding sequence's next token plus chunks of
//! prompt tokens, samples each sequence that produced logits, and streams the results.
//!
//! A request computes the same numbers whatever else runs and whatever the cache held: its
//! prompt always runs in the same chunks (multiples of PREFILL_CHUNK from its start), the
//! decoder keeps each sequence's rows apart from the batch's (see `Decoder::forward_batch`),
//! and a cached prefix is reused only in whole chunks that were computed exactly that way.
//! (Quantized models round activations to int8, which would turn any difference in float
//! rounding into visibly different text.) The price: reuse happens in steps of
//! PREFILL_CHUNK tokens, and generated tokens are recomputed when a chat's next turn
//! includes them.

use super::sequence::Sequence;
use super::{Command, Event, Request, Shared};
use crate::{common_prefix, Constraint, FinishReason};
use squish_model::{KvCache, Model, ModelError, Step};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, TryRecvError};
use tokio::sync::mpsc::UnboundedSender;

/// Prompts run in chunks of this many tokens. Chunk boundaries depend only on the prompt
/// and its cached prefix, never on what else is running, so a request computes the same
/// numbers alone or in a crowd.
const PREFILL_CHUNK: usize = 128;
/// Prompt tokens one step may run when no sequence is decoding; while others decode, one
/// chunk, so a long prompt delays their next token only a little.
const PREFILL_BUDGET_IDLE: usize = 2 * PREFILL_CHUNK;

type Waiting = (Box<Request>, Option<Constraint>, UnboundedSender<Event>);

pub(super) fn run(model: &Model, mut caches: Vec<KvCache>, rx: mpsc::Receiver<Command>, shared: &Shared) {
    // Per slot: how many leading cached tokens were computed by whole prompt chunks.
    let mut exact = vec![0usize; caches.len()];
    // Per slot: the LoRA adapter its cached tokens were computed with.
    let mut adapters: Vec<Option<usize>> = vec![None; caches.len()];
    let mut queue: VecDeque<Waiting> = VecDeque::new();
    let mut running: Vec<Sequence<'_>> = Vec::new();
    let mut open = true;
    loop {
        if running.is_empty() && queue.is_empty() {
            if !open {
                return;
            }
            match rx.recv() {
                Ok(cmd) => take(model, cmd, &mut queue),
                Err(_) => open = false,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(cmd) => take(model, cmd, &mut queue),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        let before = queue.len();
        queue.retain(|(_, _, reply)| !reply.is_closed());
        shared.waiting.fetch_sub(before - queue.len(), Ordering::SeqCst);
        running.retain(|s| !s.abandoned());
        admit(model, &mut caches, &mut exact, &mut adapters, &mut queue, &mut running, shared);
        if !running.is_empty() {
            let finished = step(model, &mut caches, &mut exact, &mut running);
            for (i, end) in finished.into_iter().rev() {
                let seq = running.remove(i);
                match end {
                    Ok(reason) => seq.finish(reason),
                    Err(msg) => {
                        let _ = seq.reply.send(Event::Error(msg));
                    }
                }
            }
        }
        shared.running.store(running.len(), Ordering::Relaxed);
        shared.kv_tokens.store(running.iter().map(|s| caches[s.slot].len()).sum(), Ordering::Relaxed);
    }
}

fn take(model: &Model, cmd: Command, queue: &mut VecDeque<Waiting>) {
    match cmd {
        Command::Generate(req, constraint, reply) => queue.push_back((req, constraint, reply)),
        Command::Embed(tokens, reply) => {
            let _ = reply.send(embed(model, &tokens).map_err(|e| e.to_string()));
        }
    }
}

/// Moves waiting requests into free slots, each into the slot that already holds the longest
/// reusable prefix of its prompt.
fn admit<'m>(
    model: &'m Model,
    caches: &mut [KvCache],
    exact: &mut [usize],
    adapters: &mut [Option<usize>],
    queue: &mut VecDeque<Waiting>,
    running: &mut Vec<Sequence<'m>>,
    shared: &Shared,
) {
    while running.len() < caches.len() {
        let Some((req, constraint, reply)) = queue.pop_front() else { return };
        shared.waiting.fetch_sub(1, Ordering::SeqCst);
        let busy: Vec<usize> = running.iter().map(|s| s.slot).collect();
        // Whole chunks computed as prompt chunks, shared with this prompt, leaving at least its
        // last token to run (for logits); prompt log-probabilities need every position's.
        let reusable = |i: usize| {
            if adapters[i] != req.adapter {
                return 0; // keys and values depend on the adapter
            }
            let common = common_prefix(caches[i].tokens(), &req.prompt).min(exact[i]).min(req.prompt.len() - 1);
            if req.prompt_logprobs { 0 } else { common / PREFILL_CHUNK * PREFILL_CHUNK }
        };
        let (slot, reuse) = (0..caches.len())
            .filter(|i| !busy.contains(i))
            .map(|i| (i, reusable(i)))
            .max_by_key(|&(i, r)| (r, std::cmp::Reverse(i)))
            .expect("a slot is free");
        caches[slot].truncate(reuse);
        exact[slot] = reuse;
        adapters[slot] = req.adapter;
        running.push(Sequence::new(*req, constraint, reply, slot, reuse, &model.tokenizer));
    }
}

/// What one sequence contributes to a step: rows `row..row + len` of the batch.
struct Planned {
    seq: usize,
    row: usize,
    len: usize,
}

/// One batched forward and the sampling after it. Returns the sequences that ended (index
/// into `running`, ascending) with how.
fn step(
    model: &Model,
    caches: &mut [KvCache],
    exact: &mut [usize],
    running: &mut [Sequence<'_>],
) -> Vec<(usize, Result<FinishReason, String>)> {
    let decoding = running.iter().any(|s| s.next.is_some());
    let budget = if decoding { PREFILL_CHUNK } else { PREFILL_BUDGET_IDLE };
    let mut plan = Vec::new();
    let (mut rows, mut prefill) = (0, 0);
    for (i, s) in running.iter().enumerate() {
        let len = match s.next {
            Some(_) => 1,
            None => {
                let chunk = (s.req.prompt.len() - s.prefilled).min(PREFILL_CHUNK);
                // Whole chunks only; the first always runs.
                if prefill > 0 && prefill + chunk > budget {
                    continue;
                }
                prefill += chunk;
                chunk
            }
        };
        plan.push(Planned { seq: i, row: rows, len });
        rows += len;
    }
    let hidden = {
        let mut slots: Vec<Option<&mut KvCache>> = caches.iter_mut().map(Some).collect();
        let mut steps: Vec<Step<'_>> = Vec::with_capacity(plan.len());
        for p in &plan {
            let s = &running[p.seq];
            let tokens = match &s.next {
                Some(t) => std::slice::from_ref(t),
                None => &s.req.prompt[s.prefilled..s.prefilled + p.len],
            };
            steps.push(Step { tokens, cache: slots[s.slot].take().expect("one sequence per slot"), adapter: s.req.adapter });
        }
        model.decoder.forward_batch(&mut steps)
    };
    let hidden = match hidden {
        Ok(h) => h,
        Err(e) => return plan.iter().map(|p| (p.seq, Err(format!("the model failed: {e}")))).collect(),
    };
    // Rows whose logits are needed: each decode, the last prompt row, every prompt row when
    // prompt log-probabilities were asked; greedy sequences' rows only need the argmax.
    let (mut wanted, mut greedy_rows) = (Vec::new(), Vec::new());
    for p in &plan {
        let s = &running[p.seq];
        let finishes_prompt = s.next.is_none() && s.prefilled + p.len == s.req.prompt.len();
        if s.next.is_none() && s.req.prompt_logprobs {
            wanted.extend(p.row..p.row + p.len);
        } else if s.next.is_some() || finishes_prompt {
            match s.greedy() {
                true => greedy_rows.push(p.row + p.len - 1),
                false => wanted.push(p.row + p.len - 1),
            }
        }
    }
    let picked = model.decoder.logits_at(&hidden, &wanted).and_then(|l| Ok((l, model.decoder.greedy_at(&hidden, &greedy_rows)?)));
    let (logits, tokens) = match picked {
        Ok(p) => p,
        Err(e) => return plan.iter().map(|p| (p.seq, Err(format!("the model failed: {e}")))).collect(),
    };
    let (mut logits, mut tokens) = (wanted.into_iter().zip(logits), tokens.into_iter());
    let mut ended = Vec::new();
    for p in &plan {
        let s = &mut running[p.seq];
        let mut last = None;
        if s.next.is_none() {
            if s.req.prompt_logprobs {
                for j in 0..p.len {
                    let (_, l) = logits.next().expect("a row per prompt token");
                    s.prompt_row(s.prefilled + j, &l);
                    last = Some(l);
                }
            }
            s.prefilled += p.len;
            if s.prefilled % PREFILL_CHUNK == 0 {
                exact[s.slot] = s.prefilled;
            }
            if s.prefilling() {
                continue;
            }
        }
        let (len, ctx) = (caches[s.slot].len(), caches[s.slot].capacity());
        s.next = None;
        let taken = match last {
            Some(l) => s.on_logits(l, len, ctx),
            None if s.greedy() => s.on_token(tokens.next().expect("a token for every greedy sequence"), len, ctx),
            None => s.on_logits(logits.next().expect("a row for every sampling sequence").1, len, ctx),
        };
        match taken {
            Ok(None) => {}
            Ok(Some(reason)) => ended.push((p.seq, Ok(reason))),
            Err(e) => ended.push((p.seq, Err(e.to_string()))),
        }
    }
    ended
}

/// The mean of the final hidden states over `tokens`, L2-normalised.
fn embed(model: &Model, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
    let mut cache = model.decoder.new_cache(tokens.len(), model.kv_dtype())?;
    let mut sum = vec![0f32; model.decoder.config().hidden];
    for chunk in tokens.chunks(PREFILL_CHUNK) {
        let h = model.decoder.forward(chunk, &mut cache)?.squeeze(0)?.to_dtype(candle_core::DType::F32)?.sum(0)?.to_vec1::<f32>()?;
        sum.iter_mut().zip(h).for_each(|(s, x)| *s += x);
    }
    let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    Ok(sum.into_iter().map(|x| x / norm).collect())
}
