//! API-key check for every route but /health: `Authorization: Bearer <key>` (Ollama clients
//! send the same header), compared in constant time.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use subtle::ConstantTimeEq;

pub async fn require_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(key) = state.api_key.as_deref() else { return next.run(req).await };
    if req.uri().path() == "/health" {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(key.as_bytes())) {
        return next.run(req).await;
    }
    let err = ApiError::unauthorized();
    if req.uri().path().starts_with("/api/") {
        err.ollama().into_response()
    } else {
        err.into_response()
    }
}
