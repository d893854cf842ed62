//! The sampling and stopping fields OpenAI's chat and completions requests share, validated
//! into an engine request.

use crate::chat::random_seed;
use crate::error::ApiError;
use serde::Deserialize;
use serde_json::Value;
use squish_engine::{Request, SamplingParams, TokenLogprob, Tokenizer};

#[derive(Debug, Deserialize, Default)]
pub struct Sampling {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Extensions many servers accept.
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<Value>,
    pub n: Option<usize>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    /// Extension (vLLM, llama.cpp): generate past end-of-sequence tokens.
    #[serde(default)]
    pub ignore_eos: bool,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
}

#[derive(Debug, Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

fn range(v: Option<f32>, lo: f32, hi: f32, name: &'static str) -> Result<(), ApiError> {
    match v {
        Some(x) if !(lo..=hi).contains(&x) || x.is_nan() => {
            Err(ApiError::bad_request(format!("`{name}` must be between {lo} and {hi}, got {x}"), Some(name)))
        }
        _ => Ok(()),
    }
}

impl Sampling {
    /// How many choices (1..=16).
    pub fn n(&self) -> Result<usize, ApiError> {
        match self.n.unwrap_or(1) {
            n @ 1..=16 => Ok(n),
            n => Err(ApiError::bad_request(format!("`n` must be between 1 and 16, got {n}"), Some("n"))),
        }
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options.as_ref().is_some_and(|o| o.include_usage)
    }

    /// The engine request for `prompt`; choice `i` of `n` gets seed + i. `default_max` applies
    /// when the client sets no limit (None: up to the end of the context).
    pub fn request(&self, prompt: Vec<u32>, default_max: Option<usize>, ctx: usize) -> Result<Request, ApiError> {
        range(self.temperature, 0.0, 2.0, "temperature")?;
        range(self.top_p, 0.0, 1.0, "top_p")?;
        range(self.min_p, 0.0, 1.0, "min_p")?;
        range(self.presence_penalty, -2.0, 2.0, "presence_penalty")?;
        range(self.frequency_penalty, -2.0, 2.0, "frequency_penalty")?;
        range(self.repetition_penalty, 0.0, 10.0, "repetition_penalty")?;
        let room = ctx.saturating_sub(prompt.len());
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            Some(m) if m < 0 => {
                return Err(ApiError::bad_request(format!("`max_tokens` must be at least 0, got {m}"), Some("max_tokens")))
            }
            Some(m) => (m as usize).min(room),
            None => default_max.unwrap_or(room).min(room),
        };
        let sampling = SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_k: self.top_k.unwrap_or(0),
            top_p: self.top_p.unwrap_or(1.0),
            min_p: self.min_p.unwrap_or(0.0),
            repeat_penalty: self.repetition_penalty.unwrap_or(1.0),
            repeat_last_n: 64,
            seed: self.seed.unwrap_or_else(random_seed),
        };
        let mut req = Request::new(prompt, sampling, max_tokens);
        req.presence_penalty = self.presence_penalty.unwrap_or(0.0);
        req.frequency_penalty = self.frequency_penalty.unwrap_or(0.0);
        req.stop = stop_list(self.stop.as_ref())?;
        req.ignore_eos = self.ignore_eos;
        Ok(req)
    }
}

/// `stop`: a string or up to 4 strings.
pub fn stop_list(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let bad = || ApiError::bad_request("`stop` must be a string or a list of at most 4 strings", Some("stop"));
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) if a.len() <= 4 => a.iter().map(|s| s.as_str().map(String::from).ok_or_else(bad)).collect(),
        Some(_) => Err(bad()),
    }
}

/// A token's text for logprob listings (lossy when it is part of a multi-byte character).
pub fn token_text(tok: &Tokenizer, id: u32) -> String {
    tok.decode(&[id], false).unwrap_or_default()
}

/// One entry of chat `logprobs.content`.
pub fn chat_logprob(tok: &Tokenizer, lp: &TokenLogprob) -> Value {
    let entry = |id: u32, logprob: f32| {
        let text = token_text(tok, id);
        serde_json::json!({"token": text, "logprob": logprob, "bytes": text.as_bytes()})
    };
    let mut v = entry(lp.token, lp.logprob);
    v["top_logprobs"] = lp.top.iter().map(|&(id, l)| entry(id, l)).collect();
    v
}

/// Text inputs as token lists: a string, a list of strings, a list of token ids, or a list of
/// those (`prompt` of completions, `input` of embeddings; `param` names it in errors).
pub fn token_inputs(tok: &Tokenizer, v: &Value, param: &'static str) -> Result<Vec<Vec<u32>>, ApiError> {
    let bad = || ApiError::bad_request(format!("`{param}` must be a string, a list of strings, or token ids"), Some(param));
    let text = |s: &str| tok.encode(s, true).map_err(|e| ApiError::internal(e.to_string()));
    let ids = |a: &[Value]| a.iter().map(|x| x.as_u64().map(|i| i as u32).ok_or_else(bad)).collect::<Result<Vec<_>, _>>();
    match v {
        Value::String(s) => Ok(vec![text(s)?]),
        Value::Array(a) if a.is_empty() => Err(bad()),
        Value::Array(a) if a[0].is_number() => Ok(vec![ids(a)?]),
        Value::Array(a) => a
            .iter()
            .map(|p| match p {
                Value::String(s) => text(s),
                Value::Array(t) => ids(t),
                _ => Err(bad()),
            })
            .collect(),
        _ => Err(bad()),
    }
}
