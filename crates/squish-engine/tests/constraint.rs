//! Structured output on the real model: SmolLM2-135M-Instruct (fetched by
//! scripts/fetch-models.sh), greedy decoding with the constraint's mask, must give JSON that
//! parses and fits the schema, whatever the small model would have said unconstrained. Also:
//! the vocabulary's bytes (byte-level BPE here, SentencePiece on the tiny GGUF fixture) and
//! the one-line errors a bad schema or grammar gives.

use candle_core::Device;
use serde_json::{json, Value};
use squish_engine::{Constraint, ConstraintError, ConstraintFactory, OutputFormat};
use squish_model::{argmax, Message, Model};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

const MAX_TOKENS: usize = 200;

fn smollm2() -> &'static (Model, ConstraintFactory) {
    static MODEL: OnceLock<(Model, ConstraintFactory)> = OnceLock::new();
    MODEL.get_or_init(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        let cache = std::env::var_os("SQUISH_CACHE").map(PathBuf::from).unwrap_or(home.join(".cache/squish"));
        let path = cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(path.is_file(), "{} is missing: run scripts/fetch-models.sh", path.display());
        let model = Model::load(&path, &Device::Cpu, Some(512)).unwrap();
        let start = Instant::now();
        let factory = ConstraintFactory::new(&model.tokenizer).unwrap();
        eprintln!("ConstraintFactory::new: {:?} for {} tokens", start.elapsed(), model.tokenizer.vocab_size());
        (model, factory)
    })
}

struct Output {
    text: String,
    /// Stopped by EOS or by the grammar's end, not by the token limit.
    complete: bool,
}

/// Greedy decoding of the chat reply to `user`, every step masked by `format`.
fn generate(format: &OutputFormat, user: &str) -> Output {
    let (model, factory) = smollm2();
    let tok = &model.tokenizer;
    let mut constraint: Constraint = factory.start(format).unwrap();
    let prompt = model.chat_template().unwrap().render(&[Message::new("user", user)], true).unwrap();
    let mut cache = model.new_cache().unwrap();
    let hidden = model.decoder.forward(&tok.encode(&prompt, false).unwrap(), &mut cache).unwrap();
    let mut logits = model.decoder.last_logits(&hidden).unwrap();
    let (mut out, mut complete) = (Vec::new(), false);
    while out.len() < MAX_TOKENS {
        constraint.mask_logits(&mut logits).unwrap();
        let next = argmax(&logits);
        constraint.accept(next).unwrap();
        if tok.eos().contains(&next) {
            complete = true;
            break;
        }
        out.push(next);
        if constraint.is_finished() {
            complete = true;
            break;
        }
        logits = model.decoder.last_logits(&model.decoder.forward(&[next], &mut cache).unwrap()).unwrap();
    }
    let text = tok.decode(&out, true).unwrap();
    eprintln!("{user:?} -> {text:?} ({} tokens, complete: {complete})", out.len());
    Output { text, complete }
}

fn parse(out: &Output) -> Value {
    assert!(out.complete, "no end within {MAX_TOKENS} tokens: {:?}", out.text);
    serde_json::from_str(&out.text).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", out.text))
}

#[test]
fn factory_is_shared_and_constraints_move_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<ConstraintFactory>();
    send::<Constraint>();
    send_sync::<ConstraintError>();
}

#[test]
fn json_schema_gives_exactly_its_keys_and_types() {
    let schema = json!({
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": false
    });
    let user = "Describe a person named Alice who is 30 years old, as JSON.";
    let v = parse(&generate(&OutputFormat::JsonSchema(schema), user));
    let obj = v.as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["age", "name"]);
    assert!(obj["name"].is_string(), "{v}");
    assert!(obj["age"].is_i64() || obj["age"].is_u64(), "{v}");
}

#[test]
fn json_object_gives_an_object() {
    let v = parse(&generate(&OutputFormat::JsonObject, "List three colors as a JSON object."));
    assert!(v.is_object(), "{v}");
}

#[test]
fn tool_call_schema_picks_a_named_tool() {
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"enum": ["get_weather", "get_time"]},
            "arguments": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "additionalProperties": false
            }
        },
        "required": ["name", "arguments"],
        "additionalProperties": false
    });
    let v = parse(&generate(&OutputFormat::JsonSchema(schema), "What is the weather in Paris? Call a tool."));
    assert!(["get_weather", "get_time"].contains(&v["name"].as_str().unwrap()), "{v}");
    assert!(v["arguments"]["city"].is_string(), "{v}");
    assert_eq!(v["arguments"].as_object().unwrap().len(), 1, "{v}");
}

#[test]
fn lark_grammar_ends_where_the_grammar_does() {
    let out = generate(&OutputFormat::Lark(r#"start: "yes" | "no""#.into()), "Is the sky blue? Answer yes or no.");
    assert!(out.complete);
    assert!(out.text == "yes" || out.text == "no", "{:?}", out.text);
}

#[test]
fn bad_schemas_and_grammars_are_one_line_errors() {
    let (_, factory) = smollm2();
    let cases = [
        OutputFormat::JsonSchema(json!({"type": 12})),
        OutputFormat::JsonSchema(json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}})),
        OutputFormat::Lark("start: undefined_rule".into()),
        OutputFormat::Lark("start: (".into()),
    ];
    for format in &cases {
        let err = factory.start(format).err().unwrap_or_else(|| panic!("{format:?} was accepted"));
        let msg = err.to_string();
        eprintln!("{format:?}: {msg}");
        assert!(matches!(err, ConstraintError::Invalid { .. }), "{err:?}");
        assert!(!msg.contains('\n') && msg.len() < 300, "{msg:?}");
    }
    // Local references resolve.
    let schema = json!({
        "$defs": {"n": {"type": "integer"}},
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/n"}}
    });
    factory.start(&OutputFormat::JsonSchema(schema)).unwrap();
}

#[test]
fn forbidden_tokens_are_masked_and_rejected() {
    let (model, factory) = smollm2();
    let tok = &model.tokenizer;
    let mut c = factory.start(&OutputFormat::JsonObject).unwrap();
    let mut logits = vec![0.0f32; tok.vocab_size() + 64];
    c.mask_logits(&mut logits).unwrap();
    let hello = tok.encode("hello", false).unwrap()[0];
    let brace = tok.encode("{", false).unwrap()[0];
    assert_eq!(logits[hello as usize], f32::NEG_INFINITY);
    assert_eq!(logits[brace as usize], 0.0);
    assert!(logits[tok.vocab_size()..].iter().all(|&l| l == f32::NEG_INFINITY), "padding ids are never allowed");
    for &eos in tok.eos() {
        assert_eq!(logits[eos as usize], f32::NEG_INFINITY, "nothing is complete yet");
    }
    assert!(matches!(c.accept(hello), Err(ConstraintError::Rejected { .. })));
    // Still usable after a rejection: `{}` completes the object, then EOS is allowed.
    c.accept(brace).unwrap();
    c.accept(tok.encode("}", false).unwrap()[0]).unwrap();
    let mut logits = vec![0.0f32; tok.vocab_size()];
    c.mask_logits(&mut logits).unwrap();
    for &eos in tok.eos() {
        assert_eq!(logits[eos as usize], 0.0, "EOS is allowed once the object is closed");
    }
}

#[test]
fn byte_level_vocabulary_maps_to_bytes() {
    let (model, _) = smollm2();
    let tok = &model.tokenizer;
    let bytes = tok.token_bytes();
    assert_eq!(bytes.len(), tok.vocab_size());
    let the = tok.encode(" the", false).unwrap();
    assert_eq!(the.len(), 1);
    assert_eq!(bytes[the[0] as usize], b" the");
    let newline = tok.encode("\n", false).unwrap();
    assert_eq!(bytes[newline[0] as usize], b"\n");
    let im_end = tok.encode("<|im_end|>", false).unwrap();
    assert_eq!(bytes[im_end[0] as usize], b"\xFF<|im_end|>");
    // Every token whose bytes are text decodes to that text.
    let mut checked = 0;
    for (id, b) in bytes.iter().enumerate() {
        if let (Ok(s), false) = (std::str::from_utf8(b), b.first() == Some(&0xFF)) {
            assert_eq!(tok.decode(&[id as u32], false).unwrap(), s, "token {id}");
            checked += 1;
        }
    }
    assert!(checked > 45_000, "{checked}");
}

#[test]
fn sentencepiece_vocabulary_maps_to_bytes() {
    let path = PathBuf::from(&*std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo test")).join("../../tests/fixtures/tiny/llama-spm.gguf");
    let model = Model::load(&path, &Device::Cpu, None).unwrap();
    let tok = &model.tokenizer;
    let bytes = tok.token_bytes();
    let ids = 0..tok.vocab_size() as u32;
    let id = |piece: &str| ids.clone().find(|&i| tok.token_text(i).as_deref() == Some(piece)).unwrap() as usize;
    assert_eq!(bytes[id("<0x0A>")], b"\n");
    assert_eq!(bytes[id("<0xFF>")], [0xFF]);
    assert_eq!(bytes[id("▁▁")], b"  ");
    assert_eq!(bytes[id("<s>")], b"\xFF<s>");
    assert_eq!(bytes[id("</s>")], b"\xFF</s>");
    let words = ids.clone().filter_map(|i| tok.token_text(i)).filter(|p| p.starts_with('▁') && p.len() > 4);
    for piece in words {
        assert_eq!(bytes[id(&piece)], piece.replace('▁', " ").as_bytes());
    }
    // And the trie built from them drives a grammar on this vocabulary too.
    let factory = ConstraintFactory::new(tok).unwrap();
    let mut c = factory.start(&OutputFormat::JsonObject).unwrap();
    let mut logits = vec![0.0f32; tok.vocab_size()];
    c.mask_logits(&mut logits).unwrap();
    assert_eq!(logits[id("<0x7B>")], 0.0, "`{{` as a byte token");
    assert_eq!(logits[id("<s>")], f32::NEG_INFINITY);
}
