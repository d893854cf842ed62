//! `squish convert` end to end: the real model through INT8 and INT4 and back out through
//! `run`; atomic output; and every kind of damage to a squish directory reported as one line
//! naming the file.

mod common;
use common::*;
use std::path::{Path, PathBuf};

fn convert(src: &Path, to: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    squish().arg("convert").arg(src).args(["--to", to, "-o"]).arg(out).args(extra).output().unwrap()
}


#[test]
fn int8_keeps_the_greedy_text_of_the_base() {
    let q = smollm2_converted("int8");
    for prompt in ["The capital of France is", "def fibonacci(n):"] {
        assert_eq!(greedy(&q, prompt, "24"), greedy(&smollm2(), prompt, "24"), "{prompt}");
    }
}

#[test]
fn int4_writes_coherent_text() {
    let out = greedy(&smollm2_converted("int4"), "The capital of France is", "8");
    assert!(out.contains("Paris"), "{out}");
}

#[test]
fn summary_and_info_report_honest_bits_per_weight() {
    let dir = scratch("info_json").join("m");
    let o = convert(&tiny("llama"), "int4", &dir, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("bits/weight"), "{}", stdout(&o));
    let o = squish().args(["info", "--json"]).arg(&dir).output().unwrap();
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let t = &m["tensors"]["model.layers.0.mlp.up_proj.weight"];
    assert_eq!(t["scheme"], "int4");
    assert_eq!(t["bits_per_weight"], 4.5);
    assert_eq!(m["tensors"]["model.norm.weight"]["scheme"], "f32");
    let bpw = m["bits_per_weight"].as_f64().unwrap();
    assert!(bpw > 4.5 && bpw < 4.6, "{bpw}");
    let o = squish().args(["info", "--verify"]).arg(&dir).output().unwrap();
    assert!(o.status.success() && stdout(&o).contains("verified"), "{}", stderr(&o));
}

#[test]
fn existing_output_is_refused_without_force() {
    let dir = scratch("existing_output").join("m");
    std::fs::create_dir_all(&dir).unwrap();
    assert_clean_failure(&convert(&tiny("llama"), "int8", &dir, &[]), "already exists (use --force");
    let o = convert(&tiny("llama"), "int8", &dir, &["--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn interrupted_convert_leaves_nothing_run_accepts() {
    let base = scratch("interrupted");
    let out = base.join("m");
    let mut child = squish().arg("convert").arg(smollm2()).args(["--to", "int4", "-o"]).arg(&out).spawn().unwrap();
    // Kill it while it writes tensors (the whole conversion takes seconds).
    let partial = base.join(".m.partial");
    let t0 = std::time::Instant::now();
    while !partial.join("tokenizer.json").exists() && t0.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.exists(), "the output appeared although convert was killed");
    let o = squish().args(["run", "--prompt", "hi"]).arg(&partial).output().unwrap();
    assert_clean_failure(&o, "incomplete conversion");
    let o = convert(&smollm2(), "int4", &out, &[]);
    assert!(o.status.success(), "re-running after an interruption: {}", stderr(&o));
    assert!(!partial.exists());
}

fn converted_tiny(test: &str) -> PathBuf {
    let dir = scratch(test).join("m");
    let o = convert(&tiny("llama"), "int4", &dir, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    dir
}

#[test]
fn truncated_shard_is_named() {
    let dir = converted_tiny("truncated_shard");
    let shard = dir.join("model.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 10]).unwrap();
    let o = squish().args(["run", "--prompt", "hi"]).arg(&dir).output().unwrap();
    assert_clean_failure(&o, "model.safetensors: ");
    assert!(stderr(&o).contains("truncated or modified"));
}

#[test]
fn checksum_mismatch_is_found_by_verify() {
    let dir = converted_tiny("checksum");
    let shard = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0xff;
    std::fs::write(&shard, &bytes).unwrap();
    let o = squish().args(["info", "--verify"]).arg(&dir).output().unwrap();
    assert_clean_failure(&o, "model.safetensors: checksum mismatch");
}

#[test]
fn unknown_format_version_is_refused() {
    let dir = converted_tiny("format_version");
    let path = dir.join("squish.json");
    let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(m["version"], 1, "int4 stores nothing rotated: version 1 readers open it");
    m["version"] = 99.into();
    std::fs::write(&path, m.to_string()).unwrap();
    let o = squish().args(["run", "--prompt", "hi"]).arg(&dir).output().unwrap();
    assert_clean_failure(&o, "squish.json: format version 99; this squish reads versions 1 to 2");
}

#[test]
fn tiny_models_of_every_architecture_convert_and_run() {
    for name in ["llama", "llama3", "mistral", "qwen2", "qwen3", "sharded"] {
        for to in ["int4", "int3", "int2", "int8", "bf16"] {
            let dir = scratch(&format!("arch_{name}_{to}")).join("m");
            let o = convert(&tiny(name), to, &dir, &[]);
            assert!(o.status.success(), "{name} {to}: {}", stderr(&o));
            let o = squish().args(["run", "--raw", "-n", "4", "--prompt", "hello"]).arg(&dir).output().unwrap();
            assert!(o.status.success(), "{name} {to}: {}", stderr(&o));
        }
    }
}

#[test]
fn eval_and_bench_report_machine_readable_results() {
    let dir = converted_tiny("eval_bench");
    let text = scratch("eval_bench_text").join("text.txt");
    std::fs::write(&text, std::fs::read_to_string(Path::new(&*std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo test")).join("../../README.md")).unwrap()).unwrap();
    let o = squish().args(["eval", "--ctx", "64", "--chunks", "2", "--json", "--text"]).arg(&text).arg(&dir).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["windows"], 2);
    assert_eq!(r["tokens_scored"], 2 * (64 - 32 - 1));
    assert!(r["ppl"].as_f64().unwrap() > 1.0);
    // The result is kept with the model.
    let o = squish().args(["info", "--json"]).arg(&dir).output().unwrap();
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m["quality"]["ppl"], r["ppl"]);

    let o = squish().args(["bench", "-p", "16", "-n", "8", "-r", "2", "--json"]).arg(&dir).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let b: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for field in ["load_cold_s", "prefill_tokens_per_s", "decode_tokens_per_s", "time_to_first_token_s", "peak_rss_mb"] {
        assert!(b[field].as_f64().unwrap() > 0.0, "{field}: {b}");
    }
}

#[test]
fn eval_on_too_short_a_text_is_a_clear_error() {
    let text = scratch("short_text").join("short.txt");
    std::fs::write(&text, "Too short.").unwrap();
    let o = squish().args(["eval", "--ctx", "64", "--text"]).arg(&text).arg(tiny("llama")).output().unwrap();
    assert_clean_failure(&o, "perplexity needs at least one window of --ctx 64");
    std::fs::write(&text, "").unwrap();
    let o = squish().args(["eval", "--ctx", "64", "--text"]).arg(&text).arg(tiny("llama")).output().unwrap();
    assert_clean_failure(&o, "the text has 0 tokens");
}

#[test]
fn calibrated_conversion_records_its_calibration() {
    let dir = scratch("calibrated").join("m");
    let text = Path::new(&*std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo test")).join("../../README.md");
    let o = convert(&tiny("qwen2"), "int4", &dir, &["--calib", text.to_str().unwrap(), "--calib-tokens", "600"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("calibration"), "{}", stdout(&o));
    let o = squish().args(["info", "--json"]).arg(&dir).output().unwrap();
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let tokens = m["calibration"]["tokens"].as_u64().unwrap();
    assert!((600..=602).contains(&tokens), "{tokens}");
    assert_eq!(m["calibration"]["sha256"].as_str().unwrap().len(), 64);
    let o = squish().args(["run", "--raw", "-n", "4", "--prompt", "hello"]).arg(&dir).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}
