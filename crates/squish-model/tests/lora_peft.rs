//! squish's LoRA adapters are PEFT's, both ways, on the committed tiny Llama
//! (tests/fixtures/tiny/llama): an adapter squish trains gives the same logits in squish's
//! decoder as in Hugging Face `peft` + `transformers`, and an adapter `peft` makes gives the
//! same logits in squish, and `merge` folds it into a model transformers reads with the same
//! logits again. tests/lora/peft_compat.py is the Python side.

use candle_core::Device;
use squish_model::lora::data::Example;
use squish_model::lora::trainer::{make_batch, Trainer};
use squish_model::lora::{Adapter, AdapterConfig, DType, Target, TrainModel};
use squish_model::{Model, Source};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(&*std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../..")
}

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const TOKENS: [u32; 10] = [5, 17, 42, 99, 3, 250, 31, 7, 64, 128];

fn python(args: &[&str]) {
    let script = root().join("tests/lora/peft_compat.py");
    let o = Command::new("python3").arg(script).args(args).output().expect("python3 runs");
    assert!(o.status.success(), "peft_compat.py {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

/// squish's logits at every position of TOKENS, with `adapter` applied by the decoder.
fn squish_logits(base: &Path, adapter: &Path) -> Vec<Vec<f32>> {
    let mut model = Model::load(base, &Device::Cpu, Some(64)).unwrap();
    let a = Adapter::load(adapter, model.decoder.config(), &Device::Cpu).unwrap();
    let i = model.decoder.add_adapter("a", &a).unwrap();
    model.decoder.set_default_adapter(Some(i));
    let mut cache = model.new_cache().unwrap();
    let h = model.decoder.forward(&TOKENS, &mut cache).unwrap();
    model.decoder.logits_at(&h, &(0..TOKENS.len()).collect::<Vec<_>>()).unwrap()
}

fn peft_logits(base: &Path, adapter: &Path, out: &Path) -> Vec<Vec<f32>> {
    let tokens = TOKENS.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(",");
    python(&["logits", &base.to_string_lossy(), &adapter.to_string_lossy(), &tokens, &out.to_string_lossy()]);
    serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!((a.len(), a[0].len()), (b.len(), b[0].len()));
    a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn an_adapter_squish_trains_loads_in_peft() {
    let base = root().join("tests/fixtures/tiny/llama");
    let source = Source::open(&base).unwrap();
    let config = AdapterConfig { rank: 4, alpha: 8.0, targets: vec![Target::Q, Target::K, Target::V, Target::O, Target::Gate], rslora: false, base: base.display().to_string() };
    let adapter = Adapter::init(&source.config, config, 5, &Device::Cpu).unwrap();
    let model = TrainModel::new(&source, &adapter, 64, DType::F32, &Device::Cpu).unwrap();
    let mut trainer = Trainer::new(model, 5e-2, 2, 5).unwrap();
    let rows: Vec<Example> = (0..4).map(|r| Example { tokens: (0..12).map(|i| (r * 31 + i * 7) % 300).collect(), scored: vec![true; 12], line: 1 }).collect();
    for _ in 0..3 {
        trainer.step(&make_batch(&rows.iter().collect::<Vec<_>>(), &Device::Cpu).unwrap()).unwrap();
    }
    let dir = scratch("lora-peft-from-squish");
    let trained = trainer.model.adapter().unwrap();
    let b_norm: f32 = trained.pairs.values().map(|p| p.b.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()).sum();
    assert!(b_norm > 1e-6, "training left B at zero");
    trained.save(&dir.join("adapter")).unwrap();
    let ours = squish_logits(&base, &dir.join("adapter"));
    let theirs = peft_logits(&base, &dir.join("adapter"), &dir.join("peft.json"));
    let without = squish_logits_without(&base);
    assert!(max_diff(&ours, &without) > 1e-3, "the adapter changes nothing");
    let d = max_diff(&ours, &theirs);
    assert!(d < 1e-4, "squish vs peft logits differ by {d}");

    // Merged into the base (f32), transformers alone gives the same logits again.
    let merged = dir.join("merged");
    let changed = squish_model::lora::merge::merge(&source, &trained, &merged, squish_format::StoredDtype::F32).unwrap();
    assert_eq!(changed, 2 * 5, "2 layers x 5 targets");
    let plain = peft_logits(&merged, Path::new("-"), &dir.join("merged.json"));
    let d = max_diff(&plain, &theirs);
    assert!(d < 1e-4, "merged model vs base + adapter differ by {d}");
}

#[test]
fn an_adapter_peft_makes_loads_in_squish() {
    let base = root().join("tests/fixtures/tiny/llama");
    let dir = scratch("lora-squish-from-peft");
    python(&["make", &base.to_string_lossy(), &dir.join("adapter").to_string_lossy()]);
    let theirs = peft_logits(&base, &dir.join("adapter"), &dir.join("peft.json"));
    let ours = squish_logits(&base, &dir.join("adapter"));
    assert!(max_diff(&ours, &squish_logits_without(&base)) > 1e-3, "the adapter changes nothing");
    let d = max_diff(&ours, &theirs);
    assert!(d < 1e-4, "squish vs peft logits differ by {d}");
}

fn squish_logits_without(base: &Path) -> Vec<Vec<f32>> {
    let model = Model::load(base, &Device::Cpu, Some(64)).unwrap();
    let mut cache = model.new_cache().unwrap();
    let h = model.decoder.forward(&TOKENS, &mut cache).unwrap();
    model.decoder.logits_at(&h, &(0..TOKENS.len()).collect::<Vec<_>>()).unwrap()
}
