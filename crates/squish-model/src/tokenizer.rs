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

    /// The chat template, ready to render with this tokenizer's BOS and EOS texts.
    pub fn template(&self) -> Option<crate::ChatTemplate> {
        let text = |id: Option<u32>| id.and_then(|i| self.token_text(i)).unwrap_or_default();
        self.chat_template().map(|src| crate::ChatTemplate::new(src, &text(self.bos()), &text(self.eos().first().copied())))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The bytes each token id stands for, indexed by id (`vocab_size()` entries; an id with no
    /// token is empty): byte-level BPE pieces through GPT-2's byte-to-unicode map ('Ġ' is a
    /// space), SentencePiece pieces with '▁' as a space and `<0xNN>` as that byte. Special
    /// tokens (added tokens marked special, or spelled `<...>`) come back as 0xFF followed by
    /// their text: 0xFF never occurs in UTF-8, so no text can spell them (toktrie's convention).
    pub fn token_bytes(&self) -> Vec<Vec<u8>> {
        use tokenizers::DecoderWrapper;
        fn byte_level(d: &DecoderWrapper) -> bool {
            match d {
                DecoderWrapper::ByteLevel(_) => true,
                DecoderWrapper::Sequence(s) => s.get_decoders().iter().any(byte_level),
                _ => false,
            }
        }
        let byte_level = self.inner.get_decoder().is_some_and(byte_level);
        // GPT-2's map: printable bytes stand for themselves, the rest for U+0100 onwards in order.
        let mut unicode_to_byte = std::collections::HashMap::new();
        let mut next = 0x100u32;
        for b in 0..=255u8 {
            let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
            let c = if printable { Some(char::from(b)) } else { char::from_u32(next) };
            if !printable {
                next += 1;
            }
            if let Some(c) = c {
                unicode_to_byte.insert(c, b);
            }
        }
        let added = self.inner.get_added_tokens_decoder();
        (0..self.vocab_size() as u32)
            .map(|id| {
                if let Some(t) = added.get(&id) {
                    if t.special || (t.content.starts_with('<') && t.content.ends_with('>')) {
                        return [&[0xFF], t.content.as_bytes()].concat();
                    }
                    return t.content.clone().into_bytes();
                }
                let Some(piece) = self.inner.id_to_token(id) else { return Vec::new() };
                if byte_level {
                    let mapped: Option<Vec<u8>> = piece.chars().map(|c| unicode_to_byte.get(&c).copied()).collect();
                    return mapped.unwrap_or_else(|| piece.into_bytes());
                }
                let hex = piece.strip_prefix("<0x").and_then(|h| h.strip_suffix('>'));
                match hex.filter(|h| h.len() == 2).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => vec![b],
                    None => piece.replace('\u{2581}', " ").into_bytes(),
                }
            })
            .collect()
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
