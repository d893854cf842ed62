//! Structured output: a JSON schema, "any JSON object" or a Lark grammar turned into a mask over
//! the next token's logits, by llguidance. One `ConstraintFactory` per model indexes the
//! vocabulary as bytes (a token trie); each sequence gets its own `Constraint`, which masks,
//! then accepts the sampled token. It samples nothing and knows nothing of HTTP: a bad schema
//! is an error value whose one-line message the server can pass on.

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, InferenceCapabilities, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};
use std::sync::Arc;

/// What the output must look like.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputFormat {
    /// Any JSON object (the schema `{"type": "object"}`).
    JsonObject,
    /// A value valid under this JSON schema (local `$ref`s like `#/$defs/x` resolve; remote ones do not).
    JsonSchema(Value),
    /// Text matching this grammar in llguidance's Lark dialect (whose rules may embed `%json{...}`).
    Lark(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ConstraintError {
    #[error("structured output needs an end-of-sequence token, and the tokenizer names none")]
    NoEos,
    #[error("cannot index the vocabulary for structured output: {0}")]
    Vocabulary(String),
    /// The schema or grammar a request gave: its message is one line, fit for an HTTP 400.
    #[error("invalid {what}: {message}")]
    Invalid { what: &'static str, message: String },
    /// The caller sampled a token the mask forbade; the constraint is unchanged.
    #[error("token {token} does not fit the output format here")]
    Rejected { token: u32 },
    #[error("structured output failed: {0}")]
    Matcher(String),
}

/// Built once per model (it indexes the whole vocabulary); shared by every sequence.
pub struct ConstraintFactory {
    parser_factory: ParserFactory,
}

impl ConstraintFactory {
    pub fn new(tokenizer: &squish_model::Tokenizer) -> Result<Self, ConstraintError> {
        let words = tokenizer.token_bytes();
        let vocab = words.len() as u32;
        let eos: Vec<u32> = tokenizer.eos().iter().copied().filter(|&t| t < vocab).collect();
        let first = *eos.first().ok_or(ConstraintError::NoEos)?;
        let info = TokRxInfo { tok_bos: tokenizer.bos().filter(|&b| b < vocab), ..TokRxInfo::new(vocab, first) };
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&eos);
        // llguidance needs a tokenizer only to force tokens ahead of the model, which squish
        // does not do; the trie's greedy tokenization stands in for it.
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut parser_factory = ParserFactory::new(
            &env,
            InferenceCapabilities::default(),
            &llguidance::earley::SlicedBiasComputer::general_slices(),
        )
        .map_err(|e| ConstraintError::Vocabulary(first_line(&e.to_string())))?;
        // No printing to stderr, and errors without the parser's state and grammar dumped in.
        parser_factory.quiet();
        parser_factory.limits_mut().verbose_errors = false;
        Ok(Self { parser_factory })
    }

    /// A fresh matcher for one sequence. A bad schema or grammar is `ConstraintError::Invalid`.
    pub fn start(&self, format: &OutputFormat) -> Result<Constraint, ConstraintError> {
        let (grammar, what) = match format {
            OutputFormat::JsonObject => (TopLevelGrammar::from_json_schema(compact(json!({"type": "object"}))), "JSON schema"),
            OutputFormat::JsonSchema(schema) => (TopLevelGrammar::from_json_schema(compact(schema.clone())), "JSON schema"),
            OutputFormat::Lark(grammar) => (TopLevelGrammar::from_lark(grammar.clone()), "grammar"),
        };
        let parser = self
            .parser_factory
            .create_parser(grammar)
            .map_err(|e| ConstraintError::Invalid { what, message: first_line(&e.to_string()) })?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(ConstraintError::Invalid { what, message: first_line(&e) });
        }
        Ok(Constraint { matcher, vocab: self.parser_factory.tok_env().tok_trie().vocab_size() })
    }
}

/// JSON laid out one way (`{"a": 1, "b": [2, 3]}`): with free whitespace a small model can
/// pad forever between tokens, and a fixed layout lets the grammar end right at the closing
/// brace. A schema that sets its own `x-guidance` options keeps them.
fn compact(mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(obj) = schema.as_object_mut() {
        obj.entry("x-guidance")
            .or_insert_with(|| json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}));
    }
    schema
}

/// One sequence's position in the grammar.
pub struct Constraint {
    matcher: Matcher,
    vocab: usize,
}

impl Constraint {
    /// Sets the logit of every token the grammar forbids next to `f32::NEG_INFINITY` (EOS
    /// tokens are allowed exactly when the grammar can end here; once it is complete, only
    /// they are). Logits past the tokenizer's vocabulary (padded embeddings) are forbidden.
    pub fn mask_logits(&mut self, logits: &mut [f32]) -> Result<(), ConstraintError> {
        let mask = self.matcher.compute_mask_or_eos().map_err(matcher_error)?;
        for (id, logit) in logits.iter_mut().enumerate() {
            if id >= self.vocab || !mask.is_allowed(id as u32) {
                *logit = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Advances past the sampled token. A token the grammar forbids is `Rejected`, leaving the
    /// constraint as it was.
    pub fn accept(&mut self, token: u32) -> Result<(), ConstraintError> {
        if token as usize >= self.vocab {
            return Err(ConstraintError::Rejected { token });
        }
        match self.matcher.try_consume_tokens(&[token]) {
            Ok(1) => Ok(()),
            Ok(_) => Err(ConstraintError::Rejected { token }),
            Err(e) => Err(matcher_error(e)),
        }
    }

    /// True when the grammar is complete and nothing but EOS may follow (generation should stop).
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped() && !self.matcher.is_error()
    }
}

/// llguidance's errors can run to several lines; a user sees the first.
fn first_line(message: &str) -> String {
    message.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("unknown error").to_string()
}

fn matcher_error(e: impl std::fmt::Display) -> ConstraintError {
    ConstraintError::Matcher(first_line(&e.to_string()))
}
