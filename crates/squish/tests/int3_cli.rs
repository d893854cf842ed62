//! Issue 6, INT3: SmolLM2 converted with `--to int3` stays coherent and inside a perplexity
//! bound derived from the measured value, with and without calibration, and the summary
//! reports its true bits per weight.

mod common;
use common::*;
use std::path::{Path, PathBuf};

fn corpus() -> PathBuf {
    // CI lays shared/ beside the clone, as on the development machines.
    let p = Path::new(&*std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo test")).join("../../../shared/corpora/dev-corpus.txt");
    assert!(p.is_file(), "{} is missing", p.display());
    p
}

/// The corpus' second half (`tail -c +128167`), which the scored windows do not reach.
fn calibration_text() -> PathBuf {
    let text = std::fs::read(corpus()).unwrap();
    let path = scratch("int3_calib_text").join("calib.txt");
    std::fs::write(&path, &text[128166..]).unwrap();
    path
}

fn convert_int3(name: &str, extra: &[&str]) -> (PathBuf, String) {
    let out = scratch(name).join("m");
    let o = squish()
        .env("RAYON_NUM_THREADS", "2")
        .arg("convert")
        .arg(smollm2())
        .args(["--to", "int3", "-o"])
        .arg(&out)
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    (out, stdout(&o))
}

fn bits_per_weight(summary: &str) -> f64 {
    let line = summary.lines().find(|l| l.trim_start().starts_with("bits/weight")).expect("a bits/weight line");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn greedy(model: &Path, prompt: &str, n: &str) -> String {
    let o = squish().args(["run", "--raw", "--temperature", "0", "-n", n, "--prompt", prompt]).arg(model).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
}

fn ppl_4_windows(model: &Path) -> f64 {
    let o = squish().env("RAYON_NUM_THREADS", "2").args(["eval", "--ctx", "512", "--chunks", "4", "--json", "--text"]).arg(corpus()).arg(model).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    r["ppl"].as_f64().unwrap()
}

/// The base scores 15.53 on these 4 windows (`eval_cli`).
#[test]
fn issue6_int3_calibrated_is_coherent_and_within_its_perplexity_bound() {
    let calib = calibration_text();
    let (dir, summary) = convert_int3("int3_calibrated", &["--calib", calib.to_str().unwrap(), "--calib-tokens", "8192"]);
    let bpw = bits_per_weight(&summary);
    assert!(bpw <= 3.6, "{bpw}\n{summary}");
    let out = greedy(&dir, "The capital of France is", "8");
    assert!(out.contains("Paris"), "{out}");
    let ppl = ppl_4_windows(&dir);
    eprintln!("int3 --calib (8192 tokens): {bpw} bits/weight, PPL {ppl} on 4 windows");
    assert!(ppl < INT3_CALIB_PPL4_BOUND, "{ppl}");
}

#[test]
fn issue6_int3_data_free_converts_runs_and_stays_within_its_bound() {
    let (dir, summary) = convert_int3("int3_data_free", &[]);
    let bpw = bits_per_weight(&summary);
    assert!(bpw <= 3.6, "{bpw}\n{summary}");
    assert!(!greedy(&dir, "The capital of France is", "8").trim().is_empty());
    let ppl = ppl_4_windows(&dir);
    eprintln!("int3 data-free: {bpw} bits/weight, PPL {ppl} on 4 windows");
    assert!(ppl < INT3_DATA_FREE_PPL4_BOUND, "{ppl}");
}

/// Measured on these 4 windows (base 15.53): 20.29 with 8192 calibration tokens, 40.00
/// data-free (3.592 bits/weight); bounds 6% above. (On 40 windows with all 32k calibration
/// tokens: 11.90 against the base's 9.81.)
const INT3_CALIB_PPL4_BOUND: f64 = 21.5;
const INT3_DATA_FREE_PPL4_BOUND: f64 = 42.5;
