//! The one error type of squish-model.

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Format(#[from] squish_format::FormatError),
    #[error(transparent)]
    Backend(#[from] squish_backend::BackendError),
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
    /// A model whose files are readable but whose contents squish cannot use.
    #[error("{path}: {msg}")]
    Unsupported { path: String, msg: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("LoRA adapter: {0}")]
    Adapter(String),
    #[error("the prompt is {prompt} tokens but the context holds {ctx}; shorten it or raise --ctx")]
    PromptTooLong { prompt: usize, ctx: usize },
}

impl ModelError {
    pub fn unsupported(path: &std::path::Path, msg: impl std::fmt::Display) -> Self {
        Self::Unsupported { path: path.display().to_string(), msg: msg.to_string() }
    }

    /// A file that could not be read or written.
    pub fn io(path: &std::path::Path, e: std::io::Error) -> Self {
        Self::unsupported(path, e)
    }
}
