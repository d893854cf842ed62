//! Errors as clients expect them: OpenAI's `{"error": {message, type, param, code}}` on /v1
//! routes, Ollama's `{"error": "..."}` on /api routes.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use squish_engine::SubmitError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, message: message.into(), param, code: None }
    }

    pub fn model_not_found(name: &str, served: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!("The model `{name}` does not exist; this server serves `{served}`"),
            param: Some("model"),
            code: Some("model_not_found"),
        }
    }

    pub fn unauthorized() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            message: "Incorrect or missing API key: send it as `Authorization: Bearer <key>`".into(),
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self { status: StatusCode::INTERNAL_SERVER_ERROR, message: message.into(), param: None, code: None }
    }

    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// The same error in Ollama's shape.
    pub fn ollama(self) -> OllamaError {
        OllamaError(self)
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        let message = e.to_string();
        match e {
            SubmitError::QueueFull(_) => {
                Self { status: StatusCode::TOO_MANY_REQUESTS, message, param: None, code: Some("queue_full") }
            }
            SubmitError::ShuttingDown => {
                Self { status: StatusCode::SERVICE_UNAVAILABLE, message, param: None, code: Some("shutting_down") }
            }
            SubmitError::PromptTooLong { .. } => {
                Self { status: StatusCode::BAD_REQUEST, message, param: Some("messages"), code: Some("context_length_exceeded") }
            }
            SubmitError::EmptyPrompt => Self::bad_request(message, Some("prompt")),
            SubmitError::BadFormat(_) => Self::bad_request(message, Some("response_format")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.message, "type": self.kind(), "param": self.param, "code": self.code}});
        with_retry_after(self.status, Json(body).into_response())
    }
}

/// An error on an Ollama route.
#[derive(Debug)]
pub struct OllamaError(pub ApiError);

impl From<SubmitError> for OllamaError {
    fn from(e: SubmitError) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        with_retry_after(self.0.status, Json(json!({"error": self.0.message})).into_response())
    }
}

/// A full queue tells the client when to try again.
fn with_retry_after(status: StatusCode, mut r: Response) -> Response {
    *r.status_mut() = status;
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

/// Parses a JSON body, turning serde's complaint into a 400 that names the problem.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request("The request body is empty; send a JSON object", None));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("Invalid JSON body: {e}"), None))
}

/// Errors axum produces itself (413 for a body over the limit, 405, 415, ...) come as plain
/// text; this rewrites them into the route family's JSON shape, keeping the status.
pub async fn shape_plain_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let ollama = req.uri().path().starts_with("/api/");
    let r = next.run(req).await;
    let status = r.status();
    let is_json = r.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return r;
    }
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "The request body is larger than this server accepts (see --max-body)".to_string(),
        s => s.canonical_reason().unwrap_or("error").to_string(),
    };
    let err = ApiError { status, message, param: None, code: None };
    if ollama {
        err.ollama().into_response()
    } else {
        err.into_response()
    }
}
