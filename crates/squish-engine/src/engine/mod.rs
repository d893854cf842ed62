//! The serving engine: one owner thread holds every sequence and its KV cache and runs them
//! with continuous batching (see `scheduler`). Callers (the HTTP server) submit a `Request`
//! and get back a channel of `Event`s; dropping that channel cancels the request at the next
//! step. Nothing here knows of HTTP or JSON.

mod scheduler;
mod sequence;
mod stop;

use crate::{Constraint, ConstraintFactory, FinishReason, OutputFormat};
use squish_model::{Model, SamplingParams};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use tokio::sync::{mpsc as async_mpsc, oneshot};

use stop::StopMatcher;

/// One generation to run.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    /// OpenAI's penalties on tokens already generated: presence once, frequency per use.
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// Clipped to what the context leaves after the prompt.
    pub max_tokens: usize,
    /// Generation ends before any of these strings; the string itself is not returned.
    pub stop: Vec<String>,
    /// Log-probabilities of generated tokens, with this many top alternatives each.
    pub logprobs: Option<usize>,
    /// Also the log-probability of every prompt token given the ones before it.
    pub prompt_logprobs: bool,
    /// Output constrained to a JSON schema or grammar.
    pub format: Option<OutputFormat>,
    /// The LoRA adapter to run with (`Decoder::add_adapter`'s index), if any.
    pub adapter: Option<usize>,
    /// Generate past end-of-sequence tokens, up to `max_tokens` or a stop string (for
    /// benchmarks that need a fixed length; structured output still ends at its end).
    pub ignore_eos: bool,
}

impl Request {
    pub fn new(prompt: Vec<u32>, sampling: SamplingParams, max_tokens: usize) -> Self {
        Self {
            prompt,
            sampling,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            max_tokens,
            stop: Vec::new(),
            logprobs: None,
            prompt_logprobs: false,
            format: None,
            adapter: None,
            ignore_eos: false,
        }
    }
}

/// A token's log-probability and the most likely alternatives at its position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    /// Best first.
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values were reused from an earlier request.
    pub cached_tokens: usize,
    pub completion_tokens: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Sent once, after the prompt ran, when `prompt_logprobs` was asked: one entry per prompt
    /// token (None for the first).
    PromptLogprobs(Vec<Option<TokenLogprob>>),
    /// A generated token and the text it completes (empty while a multi-byte character or a
    /// possible stop string is held back).
    Token { id: u32, text: String, logprob: Option<TokenLogprob> },
    /// The last event of a request.
    Done { finish: FinishReason, text_tail: String, usage: Usage },
    /// The request failed inside the engine; also the last event.
    Error(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the server is busy: {0} requests are already waiting")]
    QueueFull(usize),
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the prompt has {prompt} tokens, but the context holds {ctx} (prompt and output together)")]
    PromptTooLong { prompt: usize, ctx: usize },
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    BadFormat(String),
}

#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Sequences decoded together in one forward.
    pub max_batch: usize,
    /// Requests that may wait for a free sequence slot before new ones are refused.
    pub max_queue: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self { max_batch: 8, max_queue: 64 }
    }
}

/// What the engine is doing now, for metrics and health.
#[derive(Debug, Clone, Copy, Default)]
pub struct Load {
    pub waiting: usize,
    pub running: usize,
    /// Tokens held in KV caches by running sequences, and what all slots can hold.
    pub kv_tokens: usize,
    pub kv_capacity: usize,
}

enum Command {
    Generate(Box<Request>, Option<Constraint>, async_mpsc::UnboundedSender<Event>),
    Embed(Vec<u32>, oneshot::Sender<Result<Vec<f32>, String>>),
}

/// Counters the owner thread updates and anyone may read.
#[derive(Default)]
struct Shared {
    waiting: AtomicUsize,
    running: AtomicUsize,
    kv_tokens: AtomicUsize,
    stopping: AtomicBool,
}

pub struct Engine {
    model: Arc<Model>,
    /// Built on first use: it indexes the whole vocabulary.
    constraints: std::sync::OnceLock<Result<ConstraintFactory, String>>,
    config: EngineConfig,
    shared: Arc<Shared>,
    commands: Mutex<Option<mpsc::Sender<Command>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Engine {
    /// Starts the owner thread. Every sequence slot's KV cache is allocated here, up front.
    pub fn start(model: Arc<Model>, config: EngineConfig) -> Result<Self, squish_model::ModelError> {
        let config = EngineConfig { max_batch: config.max_batch.max(1), ..config };
        let shared = Arc::new(Shared::default());
        let caches = (0..config.max_batch).map(|_| model.new_cache()).collect::<Result<Vec<_>, _>>()?;
        let (tx, rx) = mpsc::channel();
        let thread = {
            let (model, shared) = (model.clone(), shared.clone());
            std::thread::Builder::new()
                .name("squish-engine".into())
                // The whole loop lives on a compute-pool worker: each step's kernels fork from
                // there (see `on_compute_pool`), with no hand-over per step.
                .spawn(move || squish_backend::on_compute_pool(|| scheduler::run(&model, caches, rx, &shared)))
                .map_err(|e| squish_model::ModelError::Tokenizer(format!("cannot start the engine thread: {e}")))?
        };
        Ok(Self { model, constraints: Default::default(), config, shared, commands: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)) })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn config(&self) -> EngineConfig {
        self.config
    }

    /// Queues a generation. Errors are the caller's (bad prompt) or a full queue.
    pub fn submit(&self, req: Request) -> Result<async_mpsc::UnboundedReceiver<Event>, SubmitError> {
        let ctx = self.model.context_size();
        if req.prompt.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        if req.prompt.len() >= ctx {
            return Err(SubmitError::PromptTooLong { prompt: req.prompt.len(), ctx });
        }
        let constraint = match &req.format {
            None => None,
            Some(f) => Some(self.constraint_factory()?.start(f).map_err(|e| SubmitError::BadFormat(e.to_string()))?),
        };
        let waiting = self.shared.waiting.fetch_add(1, Ordering::SeqCst);
        if waiting >= self.config.max_queue {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::QueueFull(waiting));
        }
        let (tx, rx) = async_mpsc::unbounded_channel();
        self.send(Command::Generate(Box::new(req), constraint, tx)).inspect_err(|_| {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
        })?;
        Ok(rx)
    }

    fn constraint_factory(&self) -> Result<&ConstraintFactory, SubmitError> {
        let f = self.constraints.get_or_init(|| ConstraintFactory::new(&self.model.tokenizer).map_err(|e| e.to_string()));
        f.as_ref().map_err(|e| SubmitError::BadFormat(format!("structured output is unavailable for this model: {e}")))
    }

    /// The mean of the final hidden states of `tokens`, L2-normalised.
    pub fn embed(&self, tokens: Vec<u32>) -> Result<oneshot::Receiver<Result<Vec<f32>, String>>, SubmitError> {
        let ctx = self.model.context_size();
        if tokens.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        if tokens.len() > ctx {
            return Err(SubmitError::PromptTooLong { prompt: tokens.len(), ctx });
        }
        let (tx, rx) = oneshot::channel();
        self.send(Command::Embed(tokens, tx))?;
        Ok(rx)
    }

    fn send(&self, cmd: Command) -> Result<(), SubmitError> {
        if self.shared.stopping.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        let guard = self.commands.lock().map_err(|_| SubmitError::ShuttingDown)?;
        guard.as_ref().ok_or(SubmitError::ShuttingDown)?.send(cmd).map_err(|_| SubmitError::ShuttingDown)
    }

    pub fn load(&self) -> Load {
        Load {
            waiting: self.shared.waiting.load(Ordering::Relaxed),
            running: self.shared.running.load(Ordering::Relaxed),
            kv_tokens: self.shared.kv_tokens.load(Ordering::Relaxed),
            kv_capacity: self.config.max_batch * self.model.context_size(),
        }
    }

    /// Refuses new work; the owner thread finishes what it holds, then exits. Returns at once.
    pub fn stop_accepting(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Ok(mut g) = self.commands.lock() {
            g.take(); // closing the channel tells the loop to drain and end
        }
    }

    /// Waits for the owner thread to finish (after `stop_accepting`).
    pub fn join(&self) {
        let handle = self.thread.lock().ok().and_then(|mut g| g.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop_accepting();
        self.join();
    }
}
