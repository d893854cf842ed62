//! LoRA on the committed tiny random models (tests/fixtures/tiny), as they are and converted
//! to INT4 (a quantized base stays quantized in training): the training model's forward
//! equals the inference decoder's, its adapter gradients equal finite differences (in f64),
//! adapters survive a save/load round trip in PEFT's layout and misfits are named,
//! and JSONL data gets line-numbered errors and assistant-only targets.

use candle_core::{DType, Device, Tensor};
use squish_model::lora::data::load_jsonl;
use squish_model::lora::trainer::make_batch;
use squish_model::convert::{convert, ConvertOptions, Scheme};
use squish_model::lora::{Adapter, AdapterConfig, LoraPair, Target, TrainModel};
use squish_model::{Model, Source};
use std::path::{Path, PathBuf};

fn tiny(name: &str) -> PathBuf {
    Path::new(&*std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../../tests/fixtures/tiny").join(name)
}

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The tiny model `name` converted to INT4, embeddings and head included, into `scratch(dir)`.
fn int4(name: &str, dir: &str) -> PathBuf {
    let out = scratch(dir);
    let opts = ConvertOptions { scheme: Scheme::Int4, group_size: None, embedding_scheme: None, calib: None, calib_tokens: 0, tune_epochs: 0, force: true };
    let summary = convert(&tiny(name), &out, &opts, &mut |_| {}).unwrap();
    assert!(summary.fallbacks.is_empty(), "{name}: {:?}", summary.fallbacks);
    out
}

fn config(targets: &[Target]) -> AdapterConfig {
    AdapterConfig { rank: 4, alpha: 8.0, targets: targets.to_vec(), rslora: false, base: "tiny".into() }
}

/// An adapter whose B is random too, so both factors get gradients and change the output.
fn random_adapter(source: &Source, targets: &[Target], seed: u64) -> Adapter {
    let mut a = Adapter::init(&source.config, config(targets), seed, &Device::Cpu).unwrap();
    for p in a.pairs.values_mut() {
        let b = Tensor::randn(0f32, 0.2, p.b.dims(), &Device::Cpu).unwrap();
        *p = LoraPair { a: p.a.clone(), b };
    }
    a
}

/// The last position's logits of `tokens` from the training model (zero adapter) and from the
/// inference decoder: their largest difference.
fn logits_gap(path: &Path, tokens: &[&[u32]]) -> Vec<f32> {
    let source = Source::open(path).unwrap();
    let adapter = Adapter::init(&source.config, config(&Target::ALL), 1, &Device::Cpu).unwrap();
    let train = TrainModel::new(&source, &adapter, 64, DType::F32, &Device::Cpu).unwrap();
    let model = Model::load(path, &Device::Cpu, Some(64)).unwrap();
    let mut gaps = Vec::new();
    for t in tokens {
        let ours = train.logits(&Tensor::new(*t, &Device::Cpu).unwrap().unsqueeze(0).unwrap()).unwrap();
        let ours: Vec<f32> = ours.get(0).unwrap().get(t.len() - 1).unwrap().to_vec1().unwrap();
        let mut cache = model.new_cache().unwrap();
        let h = model.decoder.forward(t, &mut cache).unwrap();
        let theirs = model.decoder.last_logits(&h).unwrap();
        gaps.push(ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max));
    }
    gaps
}

#[test]
fn zero_adapter_gives_the_decoders_logits() {
    for name in ["llama", "qwen2", "qwen3"] {
        let tokens: Vec<u32> = (0..12).map(|i| (i * 7 + 3) % 300).collect();
        let gap = logits_gap(&tiny(name), &[&tokens])[0];
        assert!(gap < 1e-4, "{name}: training forward differs from the decoder by {gap}");
    }
}

/// Over an INT4 base, training runs the decoder's kernels (INT4 x int8 activations). The ops
/// around them run in another order, so an activation can differ in its last bits and round
/// to the neighbouring int8 code: that moves its position's logits and those after it by up
/// to a few 1e-2 on these random weights (measured: 1 in 5 prefixes or fewer, at most 4.8e-2).
/// Elsewhere the two agree to f32 rounding (1e-6), which an exact f32 product instead of the
/// kernels would not (it differs by ~1e-2 everywhere): hence a median and a maximum.
#[test]
fn int4_base_gives_the_decoders_logits() {
    let rows: Vec<Vec<u32>> = (0..4u32).map(|s| (0..12).map(|i| (i * 7 + 3 + s * 11) % 300).collect()).collect();
    let prefixes: Vec<&[u32]> = rows.iter().flat_map(|r| (1..=r.len()).map(move |n| &r[..n])).collect();
    for name in ["llama", "qwen2", "qwen3"] {
        let mut gaps = logits_gap(&int4(name, &format!("lora-logits-int4-{name}")), &prefixes);
        gaps.sort_by(f32::total_cmp);
        let (median, max) = (gaps[gaps.len() / 2], gaps[gaps.len() - 1]);
        eprintln!("{name} int4: training forward vs decoder over {} prefixes: median {median:.1e}, max {max:.1e}", gaps.len());
        assert!(median < 1e-5 && max < 0.1, "{name} int4: training forward vs decoder: median {median}, max {max}");
    }
}

#[test]
fn adapter_gradients_match_finite_differences() {
    check_gradients(&tiny("qwen2"), 1e-4);
}

/// Over an INT4 base: in f64 the frozen products are exact with the dequantized weights, so
/// finite differences hold as tightly; in f32 the forward's int8 activations (which the
/// backward passes straight through) move the gradients by up to 3.3e-2 relative (per tensor, L2).
#[test]
fn adapter_gradients_over_an_int4_base_match_finite_differences() {
    check_gradients(&int4("qwen2", "lora-grad-int4"), 0.08);
}

/// Adapter gradients in f64 against central differences of the loss, then the f32 model's
/// gradients against the f64 ones within `f32_tol` (relative L2 per tensor).
fn check_gradients(path: &Path, f32_tol: f64) {
    let source = Source::open(path).unwrap();
    let adapter = random_adapter(&source, &[Target::Q, Target::V, Target::O, Target::Down], 7);
    let model = TrainModel::new(&source, &adapter, 64, DType::F64, &Device::Cpu).unwrap();
    let rows: Vec<squish_model::lora::data::Example> = [(0..9).collect::<Vec<u32>>(), (20..26).collect()]
        .into_iter()
        .map(|tokens: Vec<u32>| squish_model::lora::data::Example { scored: (0..tokens.len()).map(|i| i > 1).collect(), tokens, line: 1 })
        .collect();
    let batch = make_batch(&rows.iter().collect::<Vec<_>>(), &Device::Cpu).unwrap();
    let loss = model.loss(&batch).unwrap();
    let grads = model.backward(&loss).unwrap();
    let mut checked = 0;
    for (name, var) in model.vars().into_iter().step_by(3) {
        let g = grads.get(&name).unwrap_or_else(|| panic!("no gradient for {name}")).flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let w0 = var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for idx in [0, w0.len() / 2, w0.len() - 1] {
            // Central differences err by about eps² (truncation) plus the loss's f64 rounding
            // over eps: at 1e-6 that rounding alone reached the 1e-5 bound on a gradient of
            // 8e-6 in one CI run; at 1e-5 it is ten times smaller and truncation still ~1e-10.
            let eps = 1e-5;
            let at = |delta: f64| {
                let mut w = w0.clone();
                w[idx] += delta;
                var.set(&Tensor::from_vec(w, var.as_tensor().dims(), &Device::Cpu).unwrap()).unwrap();
                model.loss(&batch).unwrap().to_scalar::<f64>().unwrap()
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            at(0.0);
            let err = (numeric - g[idx]).abs() / (numeric.abs() + g[idx].abs()).max(1e-6);
            assert!(err < 1e-5, "{name}[{idx}]: backprop {} vs finite difference {numeric}", g[idx]);
            checked += 1;
        }
    }
    assert!(checked >= 12, "{checked}");

    // The f32 model (squish's vectorized softmax in attention and loss) gives the same gradients.
    let model32 = TrainModel::new(&source, &adapter, 64, DType::F32, &Device::Cpu).unwrap();
    let batch32 = make_batch(&rows.iter().collect::<Vec<_>>(), &Device::Cpu).unwrap();
    let grads32 = model32.backward(&model32.loss(&batch32).unwrap()).unwrap();
    assert_eq!(grads32.len(), model32.vars().len(), "every adapter tensor gets a gradient");
    for (name, _) in model.vars() {
        let g64 = grads[&name].flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let g32 = grads32[&name].to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let norm = g64.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
        let diff = g64.iter().zip(&g32).map(|(a, b)| (a - b) * (a - b)).sum::<f64>().sqrt();
        eprintln!("{}: {name}: f32 gradient off by {:.2e} relative", path.display(), diff / norm);
        assert!(diff / norm < f32_tol, "{name}: f32 gradient off by {} relative", diff / norm);
    }
}

#[test]
fn adapters_round_trip_and_misfits_are_named() {
    let source = Source::open(&tiny("llama")).unwrap();
    let adapter = random_adapter(&source, &[Target::Q, Target::Up], 3);
    let dir = scratch("lora-round-trip");
    adapter.save(&dir).unwrap();
    let back = Adapter::load(&dir, &source.config, &Device::Cpu).unwrap();
    assert_eq!(back.config, adapter.config);
    for (k, p) in &adapter.pairs {
        let q = &back.pairs[k];
        let d = (&p.b - &q.b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0);
    }
    // A factor shaped for another model, then one for a layer the model lacks: each is named.
    let weights = dir.join("adapter_model.safetensors");
    let saved = candle_core::safetensors::load(&weights, &Device::Cpu).unwrap();
    let bad = "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight";
    let h = source.config.hidden;
    for (name, shape) in [(bad, vec![4, h + 1]), ("base_model.model.model.layers.9.mlp.up_proj.lora_A.weight", vec![4, h])] {
        let mut t = saved.clone();
        t.insert(name.to_string(), Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap());
        t.insert(name.replace("lora_A", "lora_B"), saved[&bad.replace("lora_A", "lora_B")].clone());
        candle_core::safetensors::save(&t, &weights).unwrap();
        let e = Adapter::load(&dir, &source.config, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("adapter_model.safetensors") && e.contains(&format!("tensor `{name}`")), "{e}");
    }
    candle_core::safetensors::save(&saved, &weights).unwrap();
    // A config that is not LoRA, or uses what squish does not read.
    let cfg_path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(&cfg_path, text.replace("\"use_dora\": false", "\"use_dora\": true")).unwrap();
    let e = Adapter::load(&dir, &source.config, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("adapter_config.json") && e.contains("DoRA"), "{e}");
}

#[test]
fn jsonl_lines_are_checked_and_only_assistant_tokens_are_targets() {
    let source = Source::open(&tiny("llama")).unwrap();
    let model = Model::load(&tiny("llama"), &Device::Cpu, Some(64)).unwrap();
    let template = model.chat_template().unwrap();
    let dir = scratch("lora-data");
    let path = dir.join("train.jsonl");
    let lines = [
        r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}"#,
        r#"{"text": "plain text to learn"}"#,
        r#"{"messages": [{"role": "user"}]}"#,
        "not json",
        r#"{"messages": [{"role": "user", "content": "only a question"}]}"#,
        r#"{"text": "a long line that will be cut to the maximum length, a long line that will be cut to the maximum length, and longer"}"#,
    ];
    std::fs::write(&path, lines.join("\n")).unwrap();
    let (examples, report) = load_jsonl(&path, &source.tokenizer, Some(&template), 48, false).unwrap();
    assert_eq!(examples.len(), 3, "{:?}", report.skipped);
    assert_eq!(examples[2].tokens.len(), 48);
    assert_eq!(report.skipped.iter().map(|(l, _)| *l).collect::<Vec<_>>(), vec![3, 4, 5]);
    assert!(report.skipped[0].1.contains("content"), "{:?}", report.skipped);
    assert!(report.truncated >= 1);
    // The chat example scores exactly the assistant's turn.
    let chat = &examples[0];
    let prompt = source.tokenizer.encode(&template.render(&[squish_model::Message::new("user", "hi")], true).unwrap(), false).unwrap();
    assert!(chat.scored[..prompt.len()].iter().all(|s| !s));
    assert!(chat.scored[prompt.len()..].iter().all(|&s| s));
    let e = load_jsonl(&path, &source.tokenizer, Some(&template), 48, true).unwrap_err().to_string();
    assert!(e.contains("train.jsonl: line 3:"), "{e}");
}
