//! The Ollama-compatible routes: chat and generate (NDJSON streaming by default, as Ollama
//! does), embed, the model listing routes (tags, show, ps, version), and pull.

mod generate;
mod pull;

pub use pull::{PullFailure, PullStatus, Puller};

use crate::error::{parse_json, ApiError, OllamaError};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;

/// The Ollama release whose API these routes follow.
const OLLAMA_API_VERSION: &str = "0.12.0";

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/chat", post(generate::chat))
        .route("/api/generate", post(generate::generate))
        .route("/api/embed", post(embed))
        .route("/api/embeddings", post(embeddings_legacy))
        .route("/api/tags", get(tags))
        .route("/api/show", post(show))
        .route("/api/ps", get(ps))
        .route("/api/version", get(version))
        .route("/api/pull", post(pull::pull))
}

/// Now as RFC 3339 UTC, Ollama's `created_at`.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

fn rfc3339(secs: u64) -> String {
    let (days, rem) = (secs / 86400, secs % 86400);
    let (y, m, d) = squish_engine::civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn model_entry(s: &AppState) -> Value {
    let d = &s.details;
    json!({
        "name": s.model_id, "model": s.model_id,
        "modified_at": rfc3339(d.modified), "size": d.size_bytes, "digest": d.digest,
        "details": details_json(s),
    })
}

fn details_json(s: &AppState) -> Value {
    let d = &s.details;
    json!({
        "parent_model": "", "format": d.format, "family": d.family, "families": [d.family],
        "parameter_size": d.parameter_size, "quantization_level": d.quantization,
    })
}

async fn tags(State(s): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"models": [model_entry(&s)]}))
}

async fn ps(State(s): State<Arc<AppState>>) -> Json<Value> {
    let mut m = model_entry(&s);
    m["expires_at"] = json!("9999-12-31T23:59:59Z"); // loaded for the server's lifetime
    m["size_vram"] = json!(0);
    Json(json!({"models": [m]}))
}

async fn version() -> Json<Value> {
    Json(json!({"version": OLLAMA_API_VERSION}))
}

#[derive(Deserialize)]
struct ShowRequest {
    model: Option<String>,
    name: Option<String>,
}

async fn show(State(s): State<Arc<AppState>>, body: Bytes) -> Result<Json<Value>, OllamaError> {
    let r: ShowRequest = parse_json(&body).map_err(ApiError::ollama)?;
    let name = r.model.or(r.name).ok_or_else(|| ApiError::bad_request("`model` is required", Some("model")).ollama())?;
    s.check_model(Some(&name)).map_err(ApiError::ollama)?;
    let model = s.engine.model();
    let cfg = model.decoder.config();
    let arch = &s.details.family;
    let mut capabilities = vec!["completion", "embedding"];
    if model.chat_template().is_some_and(|t| t.knows_tools()) {
        capabilities.push("tools");
    }
    let mut shown = json!({
        "modelfile": format!("FROM {}\n", model.path.display()),
        "parameters": "",
        "template": model.tokenizer.chat_template().unwrap_or_default(),
        "details": details_json(&s),
        "model_info": {
            "general.architecture": arch,
            "general.parameter_count": s.details.parameters,
            format!("{arch}.context_length"): model.context_size(),
            format!("{arch}.embedding_length"): cfg.hidden,
            format!("{arch}.block_count"): cfg.layers,
            format!("{arch}.attention.head_count"): cfg.heads,
            format!("{arch}.attention.head_count_kv"): cfg.kv_heads,
        },
        "capabilities": capabilities,
        "modified_at": rfc3339(s.details.modified),
    });
    if let Some(q) = &s.details.quality {
        shown["quality"] = q.clone(); // squish eval's measured perplexity, KLD, ...
    }
    Ok(Json(shown))
}

#[derive(Deserialize)]
struct EmbedRequest {
    model: Option<String>,
    input: Option<Value>,
    /// The legacy /api/embeddings field.
    prompt: Option<String>,
}

async fn embed(State(s): State<Arc<AppState>>, body: Bytes) -> Result<Json<Value>, OllamaError> {
    let start = Instant::now();
    let r: EmbedRequest = parse_json(&body).map_err(ApiError::ollama)?;
    if s.check_model(r.model.as_deref()).map_err(ApiError::ollama)?.is_some() {
        return Err(ApiError::bad_request("embeddings come from the base model: send its name as `model`", Some("model")).ollama());
    }
    let input = r.input.ok_or_else(|| ApiError::bad_request("`input` is required", Some("input")).ollama())?;
    let inputs = crate::openai::embedding_inputs(&s, &input).map_err(ApiError::ollama)?;
    let count: usize = inputs.iter().map(Vec::len).sum();
    let vectors = crate::openai::embed_all(&s, inputs).await.map_err(ApiError::ollama)?;
    Ok(Json(json!({
        "model": s.model_id, "embeddings": vectors,
        "total_duration": start.elapsed().as_nanos() as u64, "load_duration": 0, "prompt_eval_count": count,
    })))
}

async fn embeddings_legacy(State(s): State<Arc<AppState>>, body: Bytes) -> Result<Json<Value>, OllamaError> {
    let r: EmbedRequest = parse_json(&body).map_err(ApiError::ollama)?;
    if s.check_model(r.model.as_deref()).map_err(ApiError::ollama)?.is_some() {
        return Err(ApiError::bad_request("embeddings come from the base model: send its name as `model`", Some("model")).ollama());
    }
    let prompt = r.prompt.ok_or_else(|| ApiError::bad_request("`prompt` is required", Some("prompt")).ollama())?;
    let inputs = crate::openai::embedding_inputs(&s, &Value::String(prompt)).map_err(ApiError::ollama)?;
    let mut vectors = crate::openai::embed_all(&s, inputs).await.map_err(ApiError::ollama)?;
    Ok(Json(json!({"embedding": vectors.pop().unwrap_or_default()})))
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
    }
}
