//! The real model: SmolLM2-135M-Instruct from its Q4_1 GGUF (fetched by
//! scripts/fetch-models.sh) must give transformers' greedy tokens and last-position logits,
//! and its tokenizer (built by squish from GGUF metadata) must match the reference ids.
//! References: tests/fixtures/make_smollm2_reference.py.
//!
//! Logit tolerance: max |diff| <= 5e-4 (measured: about 1e-5) over the 64 largest logits and the probe ids (logits
//! here reach ~20; both sides compute in f32 from identically dequantized weights).

use candle_core::Device;
use serde_json::Value;
use squish_model::{argmax, Message, Model};
use std::path::PathBuf;
use std::sync::OnceLock;

const TOLERANCE: f32 = 5e-4;

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        let cache = std::env::var_os("SQUISH_CACHE").map(PathBuf::from).unwrap_or(home.join(".cache/squish"));
        let path = cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(path.is_file(), "{} is missing: run scripts/fetch-models.sh", path.display());
        Model::load(&path, &Device::Cpu, Some(512)).unwrap()
    })
}

fn reference() -> Value {
    let p = PathBuf::from(&*std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo test")).join("../../tests/fixtures/smollm2/reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn greedy_tokens_and_logits_match_transformers() {
    let m = model();
    for p in reference()["prompts"].as_array().unwrap() {
        let text = p["text"].as_str().unwrap();
        let prompt = ids(&p["ids"]);
        assert_eq!(m.tokenizer.encode(text, p["kind"] == "raw").unwrap(), prompt, "prompt ids of {text:?}");
        if p["kind"] == "chat" {
            let msgs: Vec<Message> = p["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| Message::new(x["role"].as_str().unwrap(), x["content"].as_str().unwrap()))
                .collect();
            assert_eq!(m.chat_template().unwrap().render(&msgs, true).unwrap(), text);
        }

        let mut cache = m.new_cache().unwrap();
        let mut logits = m.decoder.last_logits(&m.decoder.forward(&prompt, &mut cache).unwrap()).unwrap();
        let pairs = p["top"].as_array().unwrap().iter().chain(p["probe"].as_array().unwrap());
        for pair in pairs {
            let (id, want) = (pair[0].as_u64().unwrap() as usize, pair[1].as_f64().unwrap() as f32);
            let d = (logits[id] - want).abs();
            assert!(d <= TOLERANCE, "{text:?}: logit of {id}: {} vs {want} (|diff| {d})", logits[id]);
        }
        let mut greedy = Vec::new();
        for _ in 0..16 {
            let t = argmax(&logits);
            greedy.push(t);
            logits = m.decoder.last_logits(&m.decoder.forward(&[t], &mut cache).unwrap()).unwrap();
        }
        assert_eq!(greedy, ids(&p["greedy"]), "greedy tokens after {text:?}");
        assert_eq!(m.tokenizer.decode(&greedy, false).unwrap(), p["greedy_text"].as_str().unwrap());
    }
}

#[test]
fn tokenizer_matches_reference() {
    let m = model();
    for case in reference()["tokenizer"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let got = m.tokenizer.encode(text, false).unwrap();
        assert_eq!(got, ids(&case["ids"]), "encode {text:?}");
        assert_eq!(m.tokenizer.decode(&got, false).unwrap(), case["decoded"].as_str().unwrap(), "decode {text:?}");
    }
}

#[test]
fn special_tokens_come_from_the_gguf() {
    let r = reference();
    let m = model();
    assert_eq!(m.tokenizer.bos(), Some(r["bos"]["id"].as_u64().unwrap() as u32));
    assert!(m.tokenizer.eos().contains(&(r["eos"]["id"].as_u64().unwrap() as u32)));
    assert_eq!(m.tokenizer.chat_template(), r["chat_template"].as_str());
}

#[test]
fn streamed_text_never_splits_a_character() {
    let tok = &model().tokenizer;
    let text = "Emoji 👍🏽 and 👨‍👩‍👧, 中文 and 日本語, café, naïve — done.";
    let ids = tok.encode(text, false).unwrap();
    let mut stream = squish_model::TextStream::new(tok);
    let mut pieces = Vec::new();
    for &id in &ids {
        pieces.extend(stream.push(id).unwrap());
    }
    pieces.extend(stream.finish().unwrap());
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    assert_eq!(pieces.concat(), text);
    // Multi-byte characters span several byte-level tokens, so some pushes yield nothing.
    assert!(pieces.len() < ids.len());
}
