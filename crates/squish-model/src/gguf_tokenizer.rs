//! Builds a real `tokenizers` tokenizer from a GGUF's `tokenizer.ggml.*` metadata: byte-level
//! BPE vocabularies (`gpt2` model, with the pre-tokenizer its `pre` key names) and
//! SentencePiece vocabularies (`llama` model: BPE with byte fallback and merges derived from
//! the piece scores, as Hugging Face's converter derives them).

use crate::tokenizer::Tokenizer;
use crate::ModelError;
use squish_format::{GgufFile, GgufValue};
use std::collections::HashMap;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

const TYPE_UNKNOWN: i64 = 2;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

// The pre-tokenizer regexes of the BPE families llama.cpp names in `tokenizer.ggml.pre`.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub fn tokenizer_from_gguf(g: &GgufFile, eos: &[u32]) -> Result<Tokenizer, ModelError> {
    let bad = |msg: String| ModelError::unsupported(g.path(), msg);
    let tokens: Vec<String> = g
        .meta_array("tokenizer.ggml.tokens")
        .ok_or_else(|| bad("no tokenizer in the file (tokenizer.ggml.tokens is missing)".into()))?
        .iter()
        .map(|v| v.to_string().cloned().map_err(|_| bad("tokenizer.ggml.tokens holds a non-string".into())))
        .collect::<Result<_, _>>()?;
    let types: Vec<i64> = match g.meta_array("tokenizer.ggml.token_type") {
        Some(a) => a.iter().map(int_of).collect(),
        None => vec![1; tokens.len()],
    };
    let kind = g.meta_str("tokenizer.ggml.model").unwrap_or("gpt2");
    let pre = g.meta_str("tokenizer.ggml.pre").unwrap_or("default");
    let vocab: HashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();

    let mut inner = match kind {
        "gpt2" => {
            let merges = g
                .meta_array("tokenizer.ggml.merges")
                .ok_or_else(|| bad("BPE tokenizer without tokenizer.ggml.merges".into()))?
                .iter()
                .filter_map(|v| v.to_string().ok())
                .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
                .collect();
            let bpe = BPE::builder()
                .vocab_and_merges(vocab.into_iter().collect::<Vocab>(), merges)
                .ignore_merges(pre == "llama-bpe" || pre == "llama3")
                .build()
                .map_err(|e| bad(format!("invalid BPE vocabulary: {e}")))?;
            let mut t = tokenizers::Tokenizer::new(bpe);
            t.with_pre_tokenizer(Some(byte_level_pre_tokenizer(pre).map_err(bad)?));
            t.with_decoder(Some(ByteLevel::default()));
            t
        }
        "llama" => {
            let scores: Vec<f64> = match g.meta_array("tokenizer.ggml.scores") {
                Some(a) => a.iter().map(float_of).collect(),
                None => (0..tokens.len()).map(|i| -(i as f64)).collect(),
            };
            let merges = merges_from_scores(&tokens, &scores, &vocab);
            let unk = g.meta_u64("tokenizer.ggml.unknown_token_id").and_then(|i| tokens.get(i as usize)).cloned();
            let mut builder = BPE::builder().vocab_and_merges(vocab.into_iter().collect::<Vocab>(), merges).byte_fallback(true).fuse_unk(true);
            if let Some(unk) = unk {
                builder = builder.unk_token(unk);
            }
            let bpe = builder.build().map_err(|e| bad(format!("invalid SentencePiece vocabulary: {e}")))?;
            let mut t = tokenizers::Tokenizer::new(bpe);
            let replace = Replace::new(" ", "▁").map_err(|e| bad(e.to_string()))?;
            let normalizer: Vec<NormalizerWrapper> = vec![Prepend::new("▁".into()).into(), replace.into()];
            t.with_normalizer(Some(NormalizerSequence::new(normalizer))).map_err(|e| bad(e.to_string()))?;
            let decoders: Vec<DecoderWrapper> = vec![
                Replace::new("▁", " ").map_err(|e| bad(e.to_string()))?.into(),
                ByteFallback::new().into(),
                Fuse::new().into(),
                Strip::new(' ', 1, 0).into(),
            ];
            t.with_decoder(Some(DecoderSequence::new(decoders)));
            t
        }
        other => return Err(bad(format!("unsupported tokenizer model `{other}` (supported: gpt2, llama)"))),
    };

    // Unknown, control and user-defined tokens are matched whole in the text, never split.
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &ty)| matches!(ty, TYPE_UNKNOWN | TYPE_CONTROL | TYPE_USER_DEFINED))
        .map(|(t, &ty)| AddedToken::from(t.clone(), ty != TYPE_USER_DEFINED))
        .collect();
    inner.add_special_tokens(special).map_err(|e| bad(format!("invalid special tokens: {e}")))?;

    let bos = g.meta_u64("tokenizer.ggml.bos_token_id").map(|v| v as u32);
    let add_bos = g.meta_bool("tokenizer.ggml.add_bos_token").unwrap_or(kind == "llama");
    let template = g.meta_str("tokenizer.chat_template").map(String::from);
    Ok(Tokenizer::new(inner, add_bos, bos, eos.to_vec(), template))
}

/// The byte-level pre-tokenizer a `tokenizer.ggml.pre` name stands for.
fn byte_level_pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper, String> {
    let split = |regex: &str| -> Result<PreTokenizerWrapper, String> {
        let s = Split::new(SplitPattern::Regex(regex.into()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| e.to_string())?;
        Ok(PreSequence::new(vec![s.into(), ByteLevel::new(false, true, false).into()]).into())
    };
    match pre {
        // GPT-2's own regex, inside ByteLevel.
        "default" | "gpt2" | "gpt-2" => Ok(ByteLevel::new(false, true, true).into()),
        // SmolLM: every digit alone, then GPT-2's regex.
        "smollm" => Ok(PreSequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]).into()),
        "llama-bpe" | "llama3" | "smaug-bpe" => split(LLAMA3_REGEX),
        "qwen2" | "deepseek-r1-qwen" => split(QWEN2_REGEX),
        other => Err(format!("unsupported BPE pre-tokenizer `{other}` (supported: gpt2, smollm, llama-bpe, qwen2)")),
    }
}

/// SentencePiece has scores, not merges: a pair (l, r) merges when l + r is a piece, and
/// merges rank by the merged piece's score (ties: by the ids of l, then r).
fn merges_from_scores(tokens: &[String], scores: &[f64], vocab: &HashMap<String, u32>) -> Vec<(String, String)> {
    let mut merges: Vec<(f64, u32, u32, String, String)> = Vec::new();
    for (piece, score) in tokens.iter().zip(scores) {
        let mut local = Vec::new();
        for (i, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(i);
            if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                local.push((*score, li, ri, l.to_string(), r.to_string()));
            }
        }
        local.sort_by_key(|m| (m.1, m.2));
        merges.extend(local);
    }
    // Stable: keeps the per-piece order among equal scores.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0));
    merges.into_iter().map(|m| (m.3, m.4)).collect()
}

fn int_of(v: &GgufValue) -> i64 {
    v.to_i32().map(i64::from).or_else(|_| v.to_u32().map(i64::from)).or_else(|_| v.to_i64()).unwrap_or(1)
}

fn float_of(v: &GgufValue) -> f64 {
    v.to_f32().map(f64::from).or_else(|_| v.to_f64()).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentencepiece_merges_follow_piece_scores() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"].iter().map(|s| s.to_string()).collect();
        let scores = [0.0, 0.0, 0.0, -1.0, -2.0, -3.0];
        let vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let merges = merges_from_scores(&tokens, &scores, &vocab);
        let pairs: Vec<(&str, &str)> = merges.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(pairs, vec![("a", "b"), ("b", "c"), ("a", "bc"), ("ab", "c")]);
    }
}
