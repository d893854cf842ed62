//! Running a request's choices on the engine: submitting them, and either collecting each
//! one whole or merging their event streams for SSE.

use crate::error::ApiError;
use crate::tracked::Tracked;
use crate::AppState;
use futures_util::stream::{self, Stream};
use squish_engine::{Event, FinishReason, Request, TokenLogprob, Usage};
use std::time::Instant;

/// Submits `n` copies of `req`, choice i with seed + i. If one is refused, the others are
/// dropped (which cancels them) and the error is returned.
pub fn submit(state: &AppState, req: Request, n: usize, route: &'static str, start: Instant) -> Result<Vec<Tracked>, ApiError> {
    (0..n)
        .map(|i| {
            let mut r = req.clone();
            r.sampling.seed = r.sampling.seed.wrapping_add(i as u64);
            let rx = state.engine.submit(r)?;
            Ok(Tracked::new(rx, state.metrics.clone(), route, start))
        })
        .collect()
}

#[derive(Debug, Default)]
pub struct Choice {
    pub text: String,
    pub tokens: Vec<u32>,
    pub logprobs: Vec<TokenLogprob>,
    pub prompt_logprobs: Vec<Option<TokenLogprob>>,
    pub finish: Option<FinishReason>,
    pub usage: Usage,
}

pub async fn collect(mut t: Tracked) -> Result<Choice, ApiError> {
    let mut c = Choice::default();
    while let Some(ev) = t.next().await {
        match ev {
            Event::PromptLogprobs(p) => c.prompt_logprobs = p,
            Event::Token { id, text, logprob } => {
                c.tokens.push(id);
                c.text.push_str(&text);
                c.logprobs.extend(logprob);
            }
            Event::Done { finish, text_tail, usage } => {
                c.text.push_str(&text_tail);
                c.finish = Some(finish);
                c.usage = usage;
            }
            Event::Error(msg) => return Err(ApiError::internal(msg)),
        }
    }
    Ok(c)
}

pub async fn collect_all(runs: Vec<Tracked>) -> Result<Vec<Choice>, ApiError> {
    futures_util::future::join_all(runs.into_iter().map(collect)).await.into_iter().collect()
}

/// Every choice's events as they come, tagged with the choice's index.
pub fn merged(runs: Vec<Tracked>) -> impl Stream<Item = (usize, Event)> + Send {
    let streams = runs.into_iter().enumerate().map(|(i, t)| {
        Box::pin(stream::unfold(t, move |mut t| async move { t.next().await.map(|ev| ((i, ev), t)) }))
    });
    stream::select_all(streams)
}

/// Usage summed over choices (the prompt counted once).
pub fn total_usage(usages: &[Usage]) -> serde_json::Value {
    let prompt = usages.first().map_or(0, |u| u.prompt_tokens);
    let cached = usages.first().map_or(0, |u| u.cached_tokens);
    let completion: usize = usages.iter().map(|u| u.completion_tokens).sum();
    serde_json::json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

pub fn finish_reason(f: Option<FinishReason>) -> &'static str {
    match f {
        Some(FinishReason::Length) => "length",
        _ => "stop",
    }
}
