//! POST /api/chat and /api/generate: Ollama's options mapped onto the engine's sampling, the
//! reply as NDJSON lines (the default) or one object, with Ollama's timing fields.

use super::now_rfc3339;
use crate::chat::{prompt_tokens, random_seed, ToolMode};
use crate::error::{parse_json, ApiError, OllamaError};
use crate::tracked::Tracked;
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use squish_engine::{Event, FinishReason, OutputFormat, Request, SamplingParams, Usage};
use std::sync::Arc;
use std::time::Instant;

#[derive(Deserialize, Default)]
struct Options {
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
    min_p: Option<f32>,
    seed: Option<u64>,
    num_predict: Option<i64>,
    stop: Option<Vec<String>>,
    repeat_penalty: Option<f32>,
    repeat_last_n: Option<usize>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
}

#[derive(Deserialize)]
struct Common {
    model: Option<String>,
    /// Ollama streams unless told not to.
    stream: Option<bool>,
    format: Option<Value>,
    #[serde(default)]
    options: Options,
}

#[derive(Deserialize)]
struct ChatRequest {
    #[serde(flatten)]
    common: Common,
    #[serde(default)]
    messages: Vec<Value>,
    tools: Option<Value>,
}

#[derive(Deserialize)]
struct GenerateRequest {
    #[serde(flatten)]
    common: Common,
    #[serde(default)]
    prompt: String,
    system: Option<String>,
    #[serde(default)]
    raw: bool,
}

impl Common {
    fn request(&self, prompt: Vec<u32>, ctx: usize) -> Result<Request, ApiError> {
        let o = &self.options;
        let d = SamplingParams::default(); // llama.cpp's defaults, which Ollama shares
        let sampling = SamplingParams {
            temperature: o.temperature.unwrap_or(d.temperature),
            top_k: o.top_k.unwrap_or(d.top_k),
            top_p: o.top_p.unwrap_or(d.top_p),
            min_p: o.min_p.unwrap_or(0.0),
            repeat_penalty: o.repeat_penalty.unwrap_or(1.1),
            repeat_last_n: o.repeat_last_n.unwrap_or(d.repeat_last_n),
            seed: o.seed.unwrap_or_else(random_seed),
        };
        let room = ctx.saturating_sub(prompt.len());
        let max = match o.num_predict {
            Some(n) if n >= 0 => (n as usize).min(room),
            _ => room, // -1 (or unset): until the model stops or the context ends
        };
        let mut req = Request::new(prompt, sampling, max);
        req.stop = o.stop.clone().unwrap_or_default();
        req.presence_penalty = o.presence_penalty.unwrap_or(0.0);
        req.frequency_penalty = o.frequency_penalty.unwrap_or(0.0);
        req.format = match &self.format {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) if s == "json" => Some(OutputFormat::JsonObject),
            Some(schema @ Value::Object(_)) => Some(OutputFormat::JsonSchema(schema.clone())),
            Some(_) => return Err(ApiError::bad_request("`format` must be \"json\" or a JSON schema", Some("format"))),
        };
        Ok(req)
    }
}

pub async fn chat(State(s): State<Arc<AppState>>, body: Bytes) -> Result<Response, OllamaError> {
    let start = Instant::now();
    let r: ChatRequest = parse_json(&body).map_err(ApiError::ollama)?;
    let adapter = s.check_model(r.common.model.as_deref()).map_err(ApiError::ollama)?;
    let tools = ToolMode::from_request(r.tools.as_ref(), None).map_err(ApiError::ollama)?;
    let prompt = prompt_tokens(&s.engine, &r.messages, &tools).map_err(ApiError::ollama)?;
    let mut req = r.common.request(prompt, s.engine.model().context_size()).map_err(ApiError::ollama)?;
    req.adapter = adapter;
    let run = Tracked::new(s.engine.submit(req)?, s.metrics.clone(), "ollama_chat", start);
    Ok(reply(s, run, r.common.stream.unwrap_or(true), Kind::Chat(tools), start).await)
}

pub async fn generate(State(s): State<Arc<AppState>>, body: Bytes) -> Result<Response, OllamaError> {
    let start = Instant::now();
    let r: GenerateRequest = parse_json(&body).map_err(ApiError::ollama)?;
    let adapter = s.check_model(r.common.model.as_deref()).map_err(ApiError::ollama)?;
    if r.prompt.is_empty() {
        // Ollama's way to load a model: the model is always loaded here.
        return Ok(Json(json!({"model": s.model_id, "created_at": now_rfc3339(), "response": "",
                              "done": true, "done_reason": "load"}))
        .into_response());
    }
    let model = s.engine.model();
    let prompt = if r.raw || model.chat_template().is_none() {
        model.tokenizer.encode(&r.prompt, true).map_err(|e| ApiError::internal(e.to_string()).ollama())?
    } else {
        let mut messages = Vec::new();
        if let Some(sys) = &r.system {
            messages.push(json!({"role": "system", "content": sys}));
        }
        messages.push(json!({"role": "user", "content": r.prompt}));
        prompt_tokens(&s.engine, &messages, &ToolMode::None).map_err(ApiError::ollama)?
    };
    let mut req = r.common.request(prompt, model.context_size()).map_err(ApiError::ollama)?;
    req.adapter = adapter;
    let run = Tracked::new(s.engine.submit(req)?, s.metrics.clone(), "ollama_generate", start);
    Ok(reply(s, run, r.common.stream.unwrap_or(true), Kind::Generate, start).await)
}

enum Kind {
    Chat(ToolMode),
    Generate,
}

impl Kind {
    /// One reply object carrying `text`.
    fn object(&self, s: &AppState, text: &str, done: bool) -> Value {
        match self {
            Kind::Chat(_) => json!({"model": s.model_id, "created_at": now_rfc3339(),
                                    "message": {"role": "assistant", "content": text}, "done": done}),
            Kind::Generate => json!({"model": s.model_id, "created_at": now_rfc3339(), "response": text, "done": done}),
        }
    }

    /// The closing object: the rest of the text (or tool calls) and the timings.
    fn last(&self, s: &AppState, text: &str, finish: FinishReason, usage: &Usage, t: &Timing) -> Value {
        let mut v = self.object(s, text, true);
        if let Kind::Chat(tools) = self {
            if let Some(calls) = crate::chat::parse_tool_calls(text, tools) {
                v["message"]["content"] = json!("");
                v["message"]["tool_calls"] = calls
                    .into_iter()
                    .map(|c| json!({"function": {"name": c.name, "arguments": c.arguments}}))
                    .collect();
            }
        }
        let ns = |d: std::time::Duration| d.as_nanos() as u64;
        v["done_reason"] = json!(if finish == FinishReason::Length { "length" } else { "stop" });
        v["total_duration"] = json!(ns(t.start.elapsed()));
        v["load_duration"] = json!(0);
        v["prompt_eval_count"] = json!(usage.prompt_tokens);
        v["prompt_eval_duration"] = json!(ns(t.first.unwrap_or_else(Instant::now) - t.start));
        v["eval_count"] = json!(usage.completion_tokens);
        v["eval_duration"] = json!(t.first.map_or(0, |f| ns(f.elapsed())));
        v
    }

    /// Chat with tools holds its text until the end, since it may be a call.
    fn holds_text(&self) -> bool {
        matches!(self, Kind::Chat(t) if t.tools().is_some())
    }
}

struct Timing {
    start: Instant,
    first: Option<Instant>,
}

async fn reply(s: Arc<AppState>, run: Tracked, stream: bool, kind: Kind, start: Instant) -> Response {
    if !stream {
        return whole(s, run, kind, start).await.into_response();
    }
    let state = (run, s, kind, Timing { start, first: None }, String::new(), false);
    let lines = futures_util::stream::unfold(state, |(mut run, s, kind, mut t, mut held, done)| async move {
        if done {
            return None;
        }
        loop {
            let line = match run.next().await? {
                Event::Token { text, .. } => {
                    t.first.get_or_insert_with(Instant::now);
                    if kind.holds_text() {
                        held.push_str(&text);
                        continue;
                    }
                    if text.is_empty() {
                        continue;
                    }
                    (kind.object(&s, &text, false), false)
                }
                Event::Done { finish, text_tail, usage } => {
                    held.push_str(&text_tail);
                    (kind.last(&s, &held, finish, &usage, &t), true)
                }
                Event::Error(msg) => (json!({"error": msg}), true),
                Event::PromptLogprobs(_) => continue,
            };
            let mut bytes = line.0.to_string().into_bytes();
            bytes.push(b'\n');
            let last = line.1;
            let held = if last { String::new() } else { held };
            return Some((Ok::<_, std::convert::Infallible>(Bytes::from(bytes)), (run, s, kind, t, held, last)));
        }
    });
    ([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines.boxed())).into_response()
}

async fn whole(s: Arc<AppState>, mut run: Tracked, kind: Kind, start: Instant) -> Result<Json<Value>, OllamaError> {
    let mut t = Timing { start, first: None };
    let mut text = String::new();
    while let Some(ev) = run.next().await {
        match ev {
            Event::Token { text: piece, .. } => {
                t.first.get_or_insert_with(Instant::now);
                text.push_str(&piece);
            }
            Event::Done { finish, text_tail, usage } => {
                text.push_str(&text_tail);
                return Ok(Json(kind.last(&s, &text, finish, &usage, &t)));
            }
            Event::Error(msg) => return Err(ApiError::internal(msg).ollama()),
            Event::PromptLogprobs(_) => {}
        }
    }
    Err(ApiError::internal("the engine stopped").ollama())
}
