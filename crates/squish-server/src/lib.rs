//! The HTTP front of squish: OpenAI routes under /v1 (SSE streaming), Ollama routes under
//! /api (NDJSON streaming), /health and /metrics. Handlers parse, validate, template and
//! submit to the engine; they never touch the model's tensors.

mod auth;
mod chat;
mod error;
mod metrics;
mod ollama;
mod openai;
mod tracked;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use squish_engine::Engine;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use error::ApiError;
pub use ollama::{PullFailure, PullStatus, Puller};

pub struct ServerOptions {
    pub addr: SocketAddr,
    /// Every route but /health requires it when set.
    pub api_key: Option<String>,
    /// The name clients use for the model (`model` field, /v1/models, /api/tags).
    pub model_id: String,
    /// LoRA adapters loaded into the model, in index order: `model: "<model_id>:<name>"` picks one.
    pub adapters: Vec<String>,
    /// Request bodies above this many bytes get 413.
    pub max_body: usize,
    /// After a shutdown signal, how long in-flight requests may take to finish.
    pub grace: Duration,
    pub details: ModelDetails,
    /// What `/api/pull` runs; None: it answers 501.
    pub puller: Option<Puller>,
}

/// What /api/tags and /api/show report about the model.
#[derive(Debug, Clone, Default)]
pub struct ModelDetails {
    /// squish, gguf or safetensors.
    pub format: String,
    /// The architecture, e.g. llama or qwen2.
    pub family: String,
    pub parameters: u64,
    /// Short form, e.g. "135M".
    pub parameter_size: String,
    /// e.g. INT4 (squish), Q4_1 (GGUF), BF16.
    pub quantization: String,
    pub size_bytes: u64,
    pub digest: String,
    /// Unix seconds the model files were last changed.
    pub modified: u64,
    /// The quality block `squish eval` wrote into a squish model's manifest.
    pub quality: Option<serde_json::Value>,
}

pub(crate) struct AppState {
    pub engine: Arc<Engine>,
    pub model_id: String,
    pub adapters: Vec<String>,
    pub api_key: Option<String>,
    pub metrics: Arc<metrics::Metrics>,
    /// Unix seconds at start, for `created` fields.
    pub started: u64,
    pub details: ModelDetails,
    pub puller: Option<Puller>,
}

impl AppState {
    /// Accepts the served name (and no name at all), or `<served name>:<adapter>` for a LoRA
    /// adapter, whose index it returns; anything else is 404.
    pub fn check_model(&self, name: Option<&str>) -> Result<Option<usize>, ApiError> {
        match name {
            None | Some("") => Ok(None),
            Some(n) if n == self.model_id || n.strip_suffix(":latest") == Some(&self.model_id) => Ok(None),
            Some(n) => {
                let adapter = n.strip_prefix(self.model_id.as_str()).and_then(|r| r.strip_prefix(':'));
                match adapter.and_then(|a| self.adapters.iter().position(|x| x == a)) {
                    Some(i) => Ok(Some(i)),
                    None => Err(ApiError::model_not_found(n, &self.model_ids().join("`, `"))),
                }
            }
        }
    }

    /// The base model's name, then one `<base>:<adapter>` per adapter.
    pub fn model_ids(&self) -> Vec<String> {
        std::iter::once(self.model_id.clone()).chain(self.adapters.iter().map(|a| format!("{}:{a}", self.model_id))).collect()
    }
}

pub fn router(engine: Arc<Engine>, opts: &ServerOptions) -> Result<Router, prometheus::Error> {
    let state = Arc::new(AppState {
        engine,
        model_id: opts.model_id.clone(),
        adapters: opts.adapters.clone(),
        api_key: opts.api_key.clone(),
        metrics: Arc::new(metrics::Metrics::new()?),
        started: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        details: opts.details.clone(),
        puller: opts.puller.clone(),
    });
    Ok(Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .merge(openai::routes())
        .merge(ollama::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_key))
        .layer(DefaultBodyLimit::max(opts.max_body))
        .layer(axum::middleware::from_fn(error::shape_plain_errors))
        .with_state(state))
}

/// Serves until Ctrl-C or SIGTERM; then stops accepting, lets in-flight requests finish for up
/// to `opts.grace`, and returns.
pub async fn serve(engine: Arc<Engine>, opts: ServerOptions, on_ready: impl FnOnce(SocketAddr)) -> std::io::Result<()> {
    let app = router(engine.clone(), &opts).map_err(std::io::Error::other)?;
    let listener = tokio::net::TcpListener::bind(opts.addr).await?;
    on_ready(listener.local_addr()?);
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: no new requests; waiting for those in flight");
        let _ = stopped_tx.send(());
    });
    let grace = opts.grace;
    tokio::select! {
        r = server => r?,
        _ = async { let _ = stopped_rx.await; tokio::time::sleep(grace).await } => {
            tracing::warn!("in-flight requests did not finish within {grace:?}; exiting anyway");
        }
    }
    engine.stop_accepting();
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

async fn health(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    let load = s.engine.load();
    Json(serde_json::json!({
        "status": "ok",
        "model": s.model_id,
        "requests_running": load.running,
        "queue_depth": load.waiting,
    }))
}

async fn metrics_text(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    ([("content-type", "text/plain; version=0.0.4")], s.metrics.render(s.engine.load()))
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError { status: StatusCode::NOT_FOUND, message: format!("No route for {}", uri.path()), param: None, code: None }
}
