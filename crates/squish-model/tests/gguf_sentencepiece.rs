//! A GGUF with a SentencePiece ("llama") vocabulary, written the way llama.cpp's converter
//! writes one (tests/fixtures/make_tiny_gguf.py): the tiny Llama's f32 weights with Q/K rows
//! permuted, and a 320-piece byte-fallback BPE vocabulary trained by sentencepiece.
//! squish must un-permute to the reference logits and tokenize like Hugging Face's
//! LlamaTokenizerFast (which equals sentencepiece itself except where text spells a special
//! token, which HF and squish match whole).

use candle_core::Device;
use serde_json::Value;
use squish_model::Model;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(&*std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo test")).join("../../tests/fixtures/tiny")
}

fn json(path: PathBuf) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn logits_equal_the_safetensors_reference() {
    let model = Model::load(&fixtures().join("llama-spm.gguf"), &Device::Cpu, None).unwrap();
    let r = json(fixtures().join("llama/reference.json"));
    let mut cache = model.new_cache().unwrap();
    let hidden = model.decoder.forward(&ids(&r["tokens"]), &mut cache).unwrap();
    let logits = model.decoder.logits(&hidden).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap();
    for (ours, theirs) in logits.iter().zip(r["logits"].as_array().unwrap()) {
        for (a, b) in ours.iter().zip(theirs.as_array().unwrap()) {
            assert!((a - b.as_f64().unwrap() as f32).abs() <= 1e-4);
        }
    }
}

#[test]
fn tokenizer_matches_hf_llama_tokenizer() {
    let model = Model::load(&fixtures().join("llama-spm.gguf"), &Device::Cpu, None).unwrap();
    let r = json(fixtures().join("llama-spm.json"));
    let tok = &model.tokenizer;
    for case in r["encode"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let got = tok.encode(text, false).unwrap();
        assert_eq!(got, ids(&case["ids_hf"]), "encode {text:?}");
        assert_eq!(tok.decode(&got, false).unwrap(), case["decoded_hf"].as_str().unwrap(), "decode {text:?}");
    }
    // Plain prompts get BOS, as tokenizer.ggml.add_bos_token says.
    assert_eq!(tok.encode("Hello world", true).unwrap()[0], r["bos_id"].as_u64().unwrap() as u32);
    assert_eq!(tok.eos(), &[r["eos_id"].as_u64().unwrap() as u32]);
}
