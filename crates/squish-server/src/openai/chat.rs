//! POST /v1/chat/completions: messages through the chat template, tools and response formats,
//! n choices, logprobs; whole JSON or SSE chunks.

use super::choices::{self, Choice};
use super::params::{chat_logprob, Sampling};
use crate::chat::{new_id, parse_tool_calls, prompt_tokens, ToolMode};
use crate::error::{parse_json, ApiError};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use squish_engine::{Event, OutputFormat};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

#[derive(Deserialize)]
struct ChatRequest {
    messages: Vec<Value>,
    #[serde(flatten)]
    sampling: Sampling,
    #[serde(default)]
    logprobs: bool,
    top_logprobs: Option<usize>,
    tools: Option<Value>,
    tool_choice: Option<Value>,
    response_format: Option<Value>,
}

/// `response_format`: text, json_object, or json_schema (its `schema`).
fn output_format(v: Option<&Value>) -> Result<Option<OutputFormat>, ApiError> {
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(None) };
    match v.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(OutputFormat::JsonObject)),
        Some("json_schema") => {
            let schema = v.pointer("/json_schema/schema").cloned().ok_or_else(|| {
                ApiError::bad_request("`response_format.json_schema.schema` is required", Some("response_format"))
            })?;
            Ok(Some(OutputFormat::JsonSchema(schema)))
        }
        _ => Err(ApiError::bad_request(
            "`response_format.type` must be text, json_object or json_schema",
            Some("response_format"),
        )),
    }
}

pub async fn handle(State(s): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let start = Instant::now();
    let r: ChatRequest = parse_json(&body)?;
    let adapter = s.check_model(r.sampling.model.as_deref())?;
    let tools = ToolMode::from_request(r.tools.as_ref(), r.tool_choice.as_ref())?;
    let prompt = prompt_tokens(&s.engine, &r.messages, &tools)?;
    let mut req = r.sampling.request(prompt, None, s.engine.model().context_size())?;
    req.adapter = adapter;
    req.logprobs = match (r.logprobs, r.top_logprobs) {
        (false, Some(_)) => return Err(ApiError::bad_request("`top_logprobs` needs `logprobs: true`", Some("top_logprobs"))),
        (true, Some(k)) if k > 20 => return Err(ApiError::bad_request("`top_logprobs` must be at most 20", Some("top_logprobs"))),
        (true, k) => Some(k.unwrap_or(0)),
        (false, None) => None,
    };
    req.format = match tools.output_format() {
        Some(f) => Some(f),
        None => output_format(r.response_format.as_ref())?,
    };
    let n = r.sampling.n()?;
    let runs = choices::submit(&s, req, n, "chat", start)?;
    let head = Head { id: new_id("chatcmpl"), created: s.started, model: s.model_id.clone() };
    if r.sampling.stream {
        return Ok(stream(s, head, runs, tools, r.sampling.include_usage()).into_response());
    }
    let done = choices::collect_all(runs).await?;
    let usages: Vec<_> = done.iter().map(|c| c.usage.clone()).collect();
    let list: Vec<Value> = done.into_iter().enumerate().map(|(i, c)| choice_json(&s, i, c, &tools)).collect();
    Ok(Json(json!({
        "id": head.id, "object": "chat.completion", "created": head.created, "model": head.model,
        "choices": list, "usage": choices::total_usage(&usages),
    }))
    .into_response())
}

struct Head {
    id: String,
    created: u64,
    model: String,
}

fn message_and_finish(text: String, finish: &'static str, tools: &ToolMode) -> (Value, &'static str) {
    if let Some(calls) = parse_tool_calls(&text, tools) {
        let calls: Vec<Value> = calls
            .into_iter()
            .map(|c| {
                json!({"id": new_id("call"), "type": "function",
                       "function": {"name": c.name, "arguments": c.arguments.to_string()}})
            })
            .collect();
        return (json!({"role": "assistant", "content": null, "tool_calls": calls}), "tool_calls");
    }
    (json!({"role": "assistant", "content": text}), finish)
}

fn choice_json(s: &AppState, i: usize, c: Choice, tools: &ToolMode) -> Value {
    let logprobs = (!c.logprobs.is_empty()).then(|| {
        let tok = &s.engine.model().tokenizer;
        json!({"content": c.logprobs.iter().map(|lp| chat_logprob(tok, lp)).collect::<Vec<_>>()})
    });
    let (message, finish) = message_and_finish(c.text, choices::finish_reason(c.finish), tools);
    json!({"index": i, "message": message, "logprobs": logprobs, "finish_reason": finish})
}

/// SSE: a role delta, content deltas as tokens come, a final delta with the finish reason per
/// choice, the usage chunk when asked, then `[DONE]`. With tools, each choice's text is held
/// until it ends, since it may turn out to be a call.
fn stream(
    s: Arc<AppState>,
    head: Head,
    runs: Vec<crate::tracked::Tracked>,
    tools: ToolMode,
    include_usage: bool,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let n = runs.len();
    let chunk = move |choices: Value, usage: Option<Value>| {
        let mut v = json!({"id": head.id, "object": "chat.completion.chunk", "created": head.created,
                           "model": head.model, "choices": choices});
        if let Some(u) = usage {
            v["usage"] = u;
        }
        SseEvent::default().data(v.to_string())
    };
    let first: Vec<SseEvent> = (0..n)
        .map(|i| chunk(json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]), None))
        .collect();
    let buffer_text = tools.tools().is_some();
    let mut held = vec![String::new(); n];
    let mut usages = Vec::new();
    let tok_state = s.clone();
    let body = choices::merged(runs).flat_map(move |(i, ev)| {
        let tok = &tok_state.engine.model().tokenizer;
        let mut out = Vec::new();
        match ev {
            Event::Token { text, logprob, .. } => {
                let logprobs = logprob.map(|lp| json!({"content": [chat_logprob(tok, &lp)]}));
                if buffer_text {
                    held[i].push_str(&text);
                } else if !text.is_empty() || logprobs.is_some() {
                    out.push(chunk(json!([{"index": i, "delta": {"content": text}, "logprobs": logprobs, "finish_reason": null}]), None));
                }
            }
            Event::Done { finish, text_tail, usage } => {
                let finish = choices::finish_reason(Some(finish));
                let (delta, finish) = if buffer_text {
                    let text = std::mem::take(&mut held[i]) + &text_tail;
                    let (mut msg, f) = message_and_finish(text, finish, &tools);
                    if let Some(calls) = msg.get_mut("tool_calls").and_then(Value::as_array_mut) {
                        calls.iter_mut().enumerate().for_each(|(k, c)| c["index"] = json!(k));
                    }
                    (msg, f)
                } else {
                    (json!({"content": text_tail}), finish)
                };
                out.push(chunk(json!([{"index": i, "delta": delta, "logprobs": null, "finish_reason": finish}]), None));
                usages.push(usage);
                if usages.len() == n && include_usage {
                    out.push(chunk(json!([]), Some(choices::total_usage(&usages))));
                }
            }
            Event::Error(msg) => {
                out.push(SseEvent::default().data(json!({"error": {"message": msg, "type": "server_error"}}).to_string()));
            }
            Event::PromptLogprobs(_) => {}
        }
        futures_util::stream::iter(out)
    });
    let events = futures_util::stream::iter(first)
        .chain(body)
        .chain(futures_util::stream::once(async { SseEvent::default().data("[DONE]") }))
        .map(Ok);
    Sse::new(events).keep_alive(KeepAlive::default())
}
