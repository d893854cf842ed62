//! POST /v1/embeddings: the mean of the model's final hidden states over the input's tokens,
//! L2-normalised; as float lists or base64 (the `openai` client asks for base64 by default).

use crate::error::{parse_json, ApiError};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

#[derive(Deserialize)]
struct EmbeddingRequest {
    model: Option<String>,
    input: Value,
    encoding_format: Option<String>,
    dimensions: Option<usize>,
}

/// Texts (or token lists) to embed.
pub fn inputs(s: &AppState, v: &Value) -> Result<Vec<Vec<u32>>, ApiError> {
    super::params::token_inputs(&s.engine.model().tokenizer, v, "input")
}

/// Embeds each input in turn on the engine.
pub async fn embed_all(s: &AppState, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, ApiError> {
    let mut out = Vec::with_capacity(inputs.len());
    for tokens in inputs {
        let rx = s.engine.embed(tokens)?;
        out.push(rx.await.map_err(|_| ApiError::internal("the engine stopped"))?.map_err(ApiError::internal)?);
    }
    Ok(out)
}

pub async fn handle(State(s): State<Arc<AppState>>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let r: EmbeddingRequest = parse_json(&body)?;
    if s.check_model(r.model.as_deref())?.is_some() {
        return Err(ApiError::bad_request("embeddings come from the base model: send its name as `model`", Some("model")));
    }
    if r.dimensions.is_some() {
        return Err(ApiError::bad_request("`dimensions` is not supported: embeddings have the model's hidden size", Some("dimensions")));
    }
    let base64 = match r.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(f) => return Err(ApiError::bad_request(format!("`encoding_format` must be float or base64, got {f}"), Some("encoding_format"))),
    };
    let inputs = inputs(&s, &r.input)?;
    let tokens: usize = inputs.iter().map(Vec::len).sum();
    let vectors = embed_all(&s, inputs).await?;
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(&bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data, "model": s.model_id,
                   "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})))
}
