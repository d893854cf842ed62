//! Bad input to `squish run`: every case is one clear line naming the file and the problem,
//! exit code 2, no panic.

mod common;
use common::*;
use std::io::Write;

/// With RUST_BACKTRACE set, as on many developers' machines: candle then attaches a backtrace
/// to its errors, which must not reach the one line.
fn run_model(path: &std::path::Path) -> std::process::Output {
    squish().args(["run", "--prompt", "hi", "-n", "1"]).arg(path).env("RUST_BACKTRACE", "1").output().unwrap()
}

#[test]
fn missing_path() {
    let o = run_model(std::path::Path::new("/nonexistent/model.gguf"));
    assert_clean_failure(&o, "/nonexistent/model.gguf");
}

#[test]
fn truncated_gguf() {
    let dir = scratch("truncated_gguf");
    let bytes = std::fs::read(smollm2()).unwrap();
    let cut = dir.join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert_clean_failure(&run_model(&cut), "cut.gguf: truncated: tensor");
}

#[test]
fn gguf_with_garbage_header() {
    let dir = scratch("garbage_gguf");
    let p = dir.join("garbage.gguf");
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(b"GGUF\x03\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff").unwrap();
    assert_clean_failure(&run_model(&p), "garbage.gguf: not a readable GGUF file");
}

#[test]
fn not_a_model_file() {
    let dir = scratch("not_a_model");
    let p = dir.join("notes.txt");
    std::fs::write(&p, "hello").unwrap();
    assert_clean_failure(&run_model(&p), "notes.txt: not a model");
}

/// Copies a tiny model dir so a test can damage its copy.
fn copy_tiny(name: &str, test: &str) -> std::path::PathBuf {
    let dst = scratch(test).join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(tiny(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

#[test]
fn truncated_safetensors() {
    let dir = copy_tiny("llama", "truncated_safetensors");
    let st = dir.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() - 100]).unwrap();
    assert_clean_failure(&run_model(&dir), "model.safetensors: not a valid safetensors file");
}

#[test]
fn missing_shard() {
    let dir = copy_tiny("sharded", "missing_shard");
    let index = std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&index).unwrap();
    let shard = v["weight_map"].as_object().unwrap().values().next().unwrap().as_str().unwrap().to_string();
    std::fs::remove_file(dir.join(&shard)).unwrap();
    assert_clean_failure(&run_model(&dir), &format!("{shard}: shard listed in model.safetensors.index.json is missing"));
}

#[test]
fn unknown_architecture() {
    let dir = copy_tiny("llama", "unknown_arch");
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(dir.join("config.json"), cfg.replace("LlamaForCausalLM", "FalconForCausalLM")).unwrap();
    assert_clean_failure(&run_model(&dir), "unknown architecture `FalconForCausalLM`");
}

#[test]
fn missing_tokenizer() {
    let dir = copy_tiny("llama", "missing_tokenizer");
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    assert_clean_failure(&run_model(&dir), "missing tokenizer.json");
}

#[test]
fn wrong_dtype() {
    // A norm weight relabelled u32: the same bytes per element as f32, so only the dtype is wrong.
    let dir = copy_tiny("llama", "wrong_dtype");
    let st = dir.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(header).unwrap();
    let (name, entry) = json.as_object_mut().unwrap().iter_mut().find(|(k, _)| k.ends_with("input_layernorm.weight")).unwrap();
    let name = name.clone();
    assert_eq!(entry["dtype"], "F32", "fixture is expected to be f32");
    entry["dtype"] = "U32".into();
    let mut new_header = serde_json::to_string(&json).unwrap();
    while new_header.len() < n {
        new_header.push(' ');
    }
    assert_eq!(new_header.len(), n);
    let mut out = bytes[..8].to_vec();
    out.extend_from_slice(new_header.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&st, out).unwrap();
    assert_clean_failure(&run_model(&dir), &format!("tensor `{name}` has dtype U32"));
}

#[test]
fn cuda_without_cuda_build() {
    let o = squish().args(["run", "--device", "cuda", "--prompt", "hi"]).arg(smollm2()).output().unwrap();
    assert_clean_failure(&o, "built without cuda support");
}

/// `info --devices` names the build's backends and the CPU (CI's build: the CPU alone).
#[test]
fn info_lists_the_build_and_its_devices() {
    let o = squish().args(["info", "--devices"]).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(out.starts_with("squish ") && out.contains("built with: cpu"), "{out}");
    let cores = std::thread::available_parallelism().unwrap().get();
    assert!(out.contains(&format!("  cpu ({cores} cores)")), "{out}");
}

#[test]
fn bad_device_name() {
    let o = squish().args(["run", "--device", "tpu", "--prompt", "hi"]).arg(smollm2()).output().unwrap();
    assert_clean_failure(&o, "invalid device `tpu`");
}

#[test]
fn prompt_longer_than_context() {
    let prompt = "word ".repeat(200);
    let o = squish().args(["run", "--raw", "--ctx", "64", "--prompt", &prompt]).arg(smollm2()).output().unwrap();
    assert_clean_failure(&o, "context holds 64");
}
