//! The OpenAI-compatible routes.

mod chat;
mod choices;
mod completions;
mod embeddings;
mod params;

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

pub use embeddings::{embed_all, inputs as embedding_inputs};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/chat/completions", post(chat::handle))
        .route("/v1/completions", post(completions::handle))
        .route("/v1/embeddings", post(embeddings::handle))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
}

fn model_json(s: &AppState, id: &str) -> Value {
    json!({"id": id, "object": "model", "created": s.started, "owned_by": "squish"})
}

async fn models(State(s): State<Arc<AppState>>) -> Json<Value> {
    let data: Vec<Value> = s.model_ids().iter().map(|id| model_json(&s, id)).collect();
    Json(json!({"object": "list", "data": data}))
}

async fn model(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    s.check_model(Some(&id))?;
    Ok(Json(model_json(&s, &id)))
}
