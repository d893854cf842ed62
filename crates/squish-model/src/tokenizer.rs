//! Text to token ids and back, for both sources: a Hugging Face `tokenizer.json` (with
//! `tokenizer_config.json` for special tokens and the chat template), or a tokenizer built
//! from GGUF metadata (see `gguf_tokenizer`). Also the incremental detokenizer for streaming.

use crate::config::token_ids;
use crate::ModelError;
use serde_json::Value;
use squish_format::HfDir;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Prepend BOS to plain prompts ourselves (GGUF); HF tokenizers do it in their post-processor.
    add_bos: bool,
    /// Whether plain prompts start with BOS either way: decided once, at construction.
    starts_with_bos: bool,
    bos: Option<u32>,
    eos: Vec<u32>,
    chat_template: Option<String>,
}

impl Tokenizer {
    pub(crate) fn new(
        inner: tokenizers::Tokenizer,
        add_bos: bool,
        bos: Option<u32>,
        eos: Vec<u32>,
        chat_template: Option<String>,
    ) -> Self {
        let post_processor_adds =
            bos.is_some_and(|b| inner.encode("a", true).is_ok_and(|e| e.get_ids().first() == Some(&b)));
        Self { starts_with_bos: add_bos && bos.is_some() || post_processor_adds, inner, add_bos, bos, eos, chat_template }
    }

    /// From `tokenizer.json` + `tokenizer_config.json`; `config_eos` are the ids from config.json
    /// and generation_config.json, all of which end generation.
    pub fn from_hf_dir(dir: &HfDir, config_eos: &[u32], config_bos: Option<u32>) -> Result<Self, ModelError> {
        let path = dir.root().join("tokenizer.json");
        if !path.is_file() {
            return Err(ModelError::unsupported(dir.root(), "missing tokenizer.json"));
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| ModelError::unsupported(&path, format!("invalid tokenizer ({e})")))?;
        let tc: Value = match dir.read_optional("tokenizer_config.json")? {
            Some(text) => serde_json::from_str(&text).map_err(|e| {
                ModelError::unsupported(&dir.root().join("tokenizer_config.json"), format!("invalid JSON: {e}"))
            })?,
            None => Value::Null,
        };
        let special = |key: &str| -> Option<u32> {
            let v = tc.get(key)?;
            let s = v.as_str().or_else(|| v.get("content").and_then(Value::as_str))?;
            inner.token_to_id(s)
        };
        let bos = special("bos_token").or(config_bos);
        let mut eos = config_eos.to_vec();
        eos.extend(special("eos_token"));
        if let Some(gen) = dir.read_optional("generation_config.json")? {
            if let Ok(g) = serde_json::from_str::<Value>(&gen) {
                eos.extend(token_ids(g.get("eos_token_id")));
            }
        }
        eos.sort_unstable();
        eos.dedup();
        let chat_template = match tc.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            // A list of named templates: take the default one.
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .or(list.first())
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(String::from),
            _ => dir.read_optional("chat_template.jinja")?,
        };
        let add_bos = tc.get("add_bos_token").and_then(Value::as_bool).unwrap_or(false);
        Ok(Self::new(inner, add_bos, bos, eos, chat_template))
    }

    /// Token ids for `text`. With `add_special`, the model's BOS is prepended where it uses one
    /// (plain prompts); rendered chat templates already contain their special tokens.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, ModelError> {
        let enc = self.inner.encode(text, add_special).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let mut ids = enc.get_ids().to_vec();
        if add_special && self.add_bos {
            if let Some(bos) = self.bos {
                if ids.first() != Some(&bos) {
                    ids.insert(0, bos);
                }
            }
        }
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, ModelError> {
        self.inner.decode(ids, skip_special).map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// Whether plain prompts start with BOS (it is prepended by `encode(.., true)`).
    pub fn adds_bos(&self) -> bool {
        self.starts_with_bos
    }

    /// The tokenizer in `tokenizer.json` form.
    pub fn to_json(&self) -> Result<String, ModelError> {
        self.inner.to_string(true).map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    pub fn eos(&self) -> &[u32] {
        &self.eos
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Turns generated ids into text piece by piece, never emitting half of a UTF-8 character or
/// a piece whose spelling depends on the next token.
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl<'a> TextStream<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self { tokenizer, ids: Vec::new(), prefix: 0, read: 0 }
    }

    /// Adds a token; returns the text it completes, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>, ModelError> {
        self.ids.push(id);
        let before = self.tokenizer.decode(&self.ids[self.prefix..self.read], true)?;
        let now = self.tokenizer.decode(&self.ids[self.prefix..], true)?;
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') {
            if let Some(new) = now.get(before.len()..) {
                let new = new.to_string();
                self.prefix = self.read;
                self.read = self.ids.len();
                return Ok(Some(new));
            }
        }
        Ok(None)
    }

    /// Whatever is left undecoded at the end of generation.
    pub fn finish(&mut self) -> Result<Option<String>, ModelError> {
        let before = self.tokenizer.decode(&self.ids[self.prefix..self.read], true)?;
        let now = self.tokenizer.decode(&self.ids[self.prefix..], true)?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok(now.get(before.len()..).filter(|s| !s.is_empty()).map(String::from))
    }
}
