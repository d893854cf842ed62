//! POST /v1/completions: plain-text prompts (one or a list, text or token ids), with `echo`
//! and `logprobs` so evaluation harnesses can score text; whole JSON or SSE chunks.

use super::choices::{self, Choice};
use super::params::{token_inputs, token_text, Sampling};
use crate::chat::new_id;
use crate::error::{parse_json, ApiError};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use squish_engine::{Event, TokenLogprob, Tokenizer};
use std::sync::Arc;
use std::time::Instant;

/// OpenAI's default for this legacy endpoint.
const DEFAULT_MAX_TOKENS: usize = 16;

#[derive(Deserialize)]
struct CompletionRequest {
    prompt: Value,
    #[serde(flatten)]
    sampling: Sampling,
    #[serde(default)]
    echo: bool,
    logprobs: Option<usize>,
    suffix: Option<String>,
}

pub async fn handle(State(s): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let start = Instant::now();
    let r: CompletionRequest = parse_json(&body)?;
    let adapter = s.check_model(r.sampling.model.as_deref())?;
    if r.suffix.as_deref().is_some_and(|x| !x.is_empty()) {
        return Err(ApiError::bad_request("`suffix` (fill-in-the-middle) is not supported", Some("suffix")));
    }
    if r.logprobs.is_some_and(|k| k > 5) {
        return Err(ApiError::bad_request("`logprobs` must be at most 5", Some("logprobs")));
    }
    let tok = &s.engine.model().tokenizer;
    let n = r.sampling.n()?;
    let ctx = s.engine.model().context_size();
    let mut runs = Vec::new();
    let mut prompt_ids = Vec::new();
    for p in token_inputs(tok, &r.prompt, "prompt")? {
        let mut req = r.sampling.request(p.clone(), Some(DEFAULT_MAX_TOKENS), ctx)?;
        req.logprobs = r.logprobs;
        req.adapter = adapter;
        req.prompt_logprobs = r.echo && r.logprobs.is_some();
        runs.extend(choices::submit(&s, req, n, "completions", start)?);
        prompt_ids.extend(std::iter::repeat_n(p, n));
    }
    let id = new_id("cmpl");
    if r.sampling.stream {
        return Ok(stream(s, id, runs, prompt_ids, r.echo, r.sampling.include_usage()).into_response());
    }
    let done = choices::collect_all(runs).await?;
    let usages: Vec<_> = done.iter().map(|c| c.usage.clone()).collect();
    let list: Vec<Value> = done
        .into_iter()
        .zip(prompt_ids)
        .enumerate()
        .map(|(i, (c, p))| choice_json(tok, i, c, &p, r.echo, r.logprobs.is_some()))
        .collect();
    Ok(Json(json!({
        "id": id, "object": "text_completion", "created": s.started, "model": s.model_id,
        "choices": list, "usage": choices::total_usage(&usages),
    }))
    .into_response())
}

fn choice_json(tok: &Tokenizer, i: usize, c: Choice, prompt: &[u32], echo: bool, logprobs: bool) -> Value {
    let prompt_text = if echo { tok.decode(prompt, false).unwrap_or_default() } else { String::new() };
    let lp = logprobs.then(|| {
        let mut entries: Vec<(u32, Option<&TokenLogprob>)> = Vec::new();
        if echo {
            let pl: Vec<Option<&TokenLogprob>> = c.prompt_logprobs.iter().map(Option::as_ref).collect();
            entries.extend(prompt.iter().enumerate().map(|(j, &t)| (t, pl.get(j).copied().flatten())));
        }
        entries.extend(c.logprobs.iter().map(|l| (l.token, Some(l))));
        logprobs_json(tok, &entries)
    });
    json!({"index": i, "text": prompt_text + &c.text, "logprobs": lp, "finish_reason": choices::finish_reason(c.finish)})
}

/// The legacy logprobs object: parallel lists of tokens, their log-probabilities, the top
/// alternatives as {token: logprob}, and each token's character offset in the text.
fn logprobs_json(tok: &Tokenizer, entries: &[(u32, Option<&TokenLogprob>)]) -> Value {
    let (mut tokens, mut lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    let mut offset = 0;
    for &(id, lp) in entries {
        let text = token_text(tok, id);
        offsets.push(offset);
        offset += text.chars().count();
        tokens.push(text);
        lps.push(lp.map(|l| l.logprob));
        tops.push(lp.map(|l| {
            let mut m = Map::new();
            for &(t, v) in &l.top {
                m.insert(token_text(tok, t), json!(v));
            }
            Value::Object(m)
        }));
    }
    json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
}

fn stream(
    s: Arc<AppState>,
    id: String,
    runs: Vec<crate::tracked::Tracked>,
    prompts: Vec<Vec<u32>>,
    echo: bool,
    include_usage: bool,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, std::convert::Infallible>>> {
    let n = runs.len();
    let (created, model) = (s.started, s.model_id.clone());
    let chunk = move |choices: Value, usage: Option<Value>| {
        let mut v = json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": choices});
        if let Some(u) = usage {
            v["usage"] = u;
        }
        SseEvent::default().data(v.to_string())
    };
    let mut echoed = vec![!echo; n];
    let mut usages = Vec::new();
    let body = choices::merged(runs).flat_map(move |(i, ev)| {
        let tok = &s.engine.model().tokenizer;
        let mut out = Vec::new();
        let mut text = String::new();
        if !echoed[i] {
            echoed[i] = true;
            text = tok.decode(&prompts[i], false).unwrap_or_default();
        }
        match ev {
            Event::Token { text: t, .. } => {
                text += &t;
                if !text.is_empty() {
                    out.push(chunk(json!([{"index": i, "text": text, "logprobs": null, "finish_reason": null}]), None));
                }
            }
            Event::Done { finish, text_tail, usage } => {
                let f = choices::finish_reason(Some(finish));
                out.push(chunk(json!([{"index": i, "text": text + &text_tail, "logprobs": null, "finish_reason": f}]), None));
                usages.push(usage);
                if usages.len() == n && include_usage {
                    out.push(chunk(json!([]), Some(choices::total_usage(&usages))));
                }
            }
            Event::Error(msg) => out.push(SseEvent::default().data(json!({"error": {"message": msg}}).to_string())),
            Event::PromptLogprobs(_) => {}
        }
        futures_util::stream::iter(out)
    });
    let events = body.chain(futures_util::stream::once(async { SseEvent::default().data("[DONE]") })).map(Ok);
    Sse::new(events).keep_alive(KeepAlive::default())
}
