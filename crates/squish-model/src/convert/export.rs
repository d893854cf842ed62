//! The non-weight files of a converted model: the source's own `config.json`, tokenizer and
//! generation files when it is a Hugging Face directory; for a GGUF source, equivalents
//! written from its metadata (the config from `ModelConfig`, `tokenizer.json` from the
//! tokenizer squish built, the chat template and special tokens in `tokenizer_config.json`).

use crate::config::{ModelConfig, RopeScaling};
use crate::{ModelError, Source};
use serde_json::{json, Value};
use std::path::Path;

/// A Hugging Face directory's files besides the weights that a conversion keeps (and so the
/// files `squish pull` fetches).
pub const SIDE_FILES: [&str; 6] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

pub fn write_side_files(src: &Source, out: &Path) -> Result<(), ModelError> {
    let write = |name: &str, text: String| -> Result<(), ModelError> {
        let p = out.join(name);
        std::fs::write(&p, text).map_err(|e| squish_format::FormatError::io(&p, e).into())
    };
    if let Some(dir) = src.files.hf_dir() {
        for name in SIDE_FILES {
            if let Some(text) = dir.read_optional(name)? {
                write(name, text)?;
            }
        }
        return Ok(());
    }
    let cfg = &src.config;
    write("config.json", serde_json::to_string_pretty(&hf_config(cfg)).expect("plain JSON"))?;
    let tok = &src.tokenizer;
    write("tokenizer.json", tok.to_json()?)?;
    let text = |id: Option<u32>| id.and_then(|i| tok.token_text(i)).map_or(Value::Null, Value::from);
    let mut tc = json!({
        "bos_token": text(tok.bos()),
        "eos_token": text(tok.eos().first().copied()),
        "add_bos_token": tok.adds_bos(),
    });
    if let Some(t) = tok.chat_template() {
        tc["chat_template"] = t.into();
    }
    write("tokenizer_config.json", serde_json::to_string_pretty(&tc).expect("plain JSON"))
}

/// A Hugging Face `config.json` describing `cfg` (for sources that have none).
fn hf_config(cfg: &ModelConfig) -> Value {
    let (arch, model_type) = match cfg.arch {
        crate::Arch::Llama => ("LlamaForCausalLM", "llama"),
        crate::Arch::Mistral => ("MistralForCausalLM", "mistral"),
        crate::Arch::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
        crate::Arch::Qwen3 => ("Qwen3ForCausalLM", "qwen3"),
    };
    let rope_scaling = match &cfg.rope_scaling {
        RopeScaling::Linear { factor } => json!({ "rope_type": "linear", "factor": factor }),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_pos } => json!({
            "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor, "original_max_position_embeddings": original_max_pos,
        }),
        // Stored as the `rope_freqs.weight` tensor, as the GGUF had it.
        RopeScaling::None | RopeScaling::FreqFactors(_) => Value::Null,
    };
    json!({
        "architectures": [arch],
        "model_type": model_type,
        "hidden_size": cfg.hidden,
        "intermediate_size": cfg.intermediate,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab,
        "rms_norm_eps": cfg.rms_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": rope_scaling,
        "max_position_embeddings": cfg.max_pos,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": cfg.bos,
        "eos_token_id": cfg.eos,
        "use_sliding_window": false,
    })
}
