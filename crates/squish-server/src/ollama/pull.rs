//! `/api/pull`: runs the pull the binary hands in as a [`Puller`] (the server knows neither
//! the Hub nor the converter) on a blocking thread, and streams its status lines as Ollama
//! does (`pulling manifest`, per-file `completed`/`total`, ..., `success`), or answers once
//! with `stream: false`.

use crate::error::{parse_json, ApiError, OllamaError};
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One status line of a pull, in Ollama's shape.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PullStatus {
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed: Option<u64>,
}

impl PullStatus {
    pub fn new(status: impl Into<String>) -> Self {
        Self { status: status.into(), ..Self::default() }
    }
}

/// Why a pull failed: the HTTP status that fits (404 unknown model, 401 gated, 502 network,
/// ...) and a message.
pub struct PullFailure {
    pub status: u16,
    pub message: String,
}

/// Pulls a model by name, reporting statuses as it goes; blocking.
pub type Puller = Arc<dyn Fn(&str, &mut dyn FnMut(PullStatus)) -> Result<(), PullFailure> + Send + Sync>;

#[derive(Deserialize)]
struct PullRequest {
    model: Option<String>,
    name: Option<String>,
    stream: Option<bool>,
}

pub async fn pull(State(s): State<Arc<AppState>>, body: Bytes) -> Result<Response, OllamaError> {
    let req: PullRequest = parse_json(&body).map_err(ApiError::ollama)?;
    let Some(name) = req.model.or(req.name).filter(|n| !n.trim().is_empty()) else {
        return Err(ApiError::bad_request("`model` is required: the catalog name or Hugging Face repo to pull", Some("model")).ollama());
    };
    let Some(puller) = s.puller.clone() else {
        let e = ApiError { status: StatusCode::NOT_IMPLEMENTED, message: "this server cannot pull models".into(), param: None, code: None };
        return Err(e.ollama());
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<PullStatus, PullFailure>>();
    tokio::task::spawn_blocking(move || {
        let sent = tx.clone();
        let result = puller(&name, &mut |status| {
            let _ = sent.send(Ok(status));
        });
        let _ = tx.send(result.map(|()| PullStatus::new("success")));
    });
    if req.stream == Some(false) {
        while let Some(item) = rx.recv().await {
            match item {
                Ok(status) if status.status == "success" => return Ok(Json(status).into_response()),
                Ok(_) => continue,
                Err(f) => return Err(failure(f)),
            }
        }
        return Err(failure(PullFailure { status: 500, message: "the pull stopped without a result".into() }));
    }
    // Streaming: the statuses as NDJSON; a failure is a last `{"error": ...}` line.
    let lines = futures_util::stream::unfold((rx, false), |(mut rx, done)| async move {
        if done {
            return None;
        }
        let (value, last) = match rx.recv().await? {
            Ok(status) => {
                let last = status.status == "success";
                (serde_json::to_value(status).expect("plain JSON"), last)
            }
            Err(f) => (serde_json::json!({"error": f.message}), true),
        };
        let mut bytes = value.to_string().into_bytes();
        bytes.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(bytes)), (rx, last)))
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines.boxed())).into_response())
}

fn failure(f: PullFailure) -> OllamaError {
    let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    ApiError { status, message: f.message, param: None, code: None }.ollama()
}
