//! `squish lora train`, `run --lora` and `serve --lora` end to end: SmolLM2 converted to INT4
//! (the base stays quantized in training, QLoRA-style) learns the fixed answer style of
//! tests/fixtures/lora (its held-out loss drops and `run --lora` answers in that style), a resumed run equals an uninterrupted one, and bad data or a mismatched
//! adapter get one clear line.

mod common;
use common::*;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(&*std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../../tests/fixtures/lora").join(name)
}

/// The first `n` lines of a fixture, as a file of the test's own.
fn head(name: &str, n: usize, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    let out = dir.join(name);
    std::fs::write(&out, text.lines().take(n).collect::<Vec<_>>().join("\n")).unwrap();
    out
}

fn losses(out: &str, what: &str) -> Vec<f64> {
    out.lines()
        .filter_map(|l| l.split(&format!("{what} loss ")).nth(1))
        .map(|v| v.split([',', ' ']).next().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn smollm2_learns_the_style_and_run_shows_it() {
    let dir = scratch("lora-smollm2");
    let base = smollm2_converted("int4");
    let (train, val) = (head("train.jsonl", 48, &dir), head("val.jsonl", 16, &dir));
    let o = squish()
        .args(["lora", "train"])
        .arg(&base)
        .arg("--data")
        .arg(&train)
        .arg("--eval-data")
        .arg(&val)
        .args(["--lr", "2e-3", "--batch", "8", "--epochs", "2", "--seed", "1", "-o"])
        .arg(dir.join("adapter"))
        .output()
        .unwrap();
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert!(out.contains("(frozen, 211 of 211 matrices quantized, used packed)"), "{out}");
    let eval = losses(&out, "eval");
    assert_eq!(eval.len(), 3, "{out}");
    // Measured over the INT4 base: 3.41 -> 0.44 -> 0.21 in two epochs of 6 steps; the bound
    // leaves room for noise.
    assert!(eval[2] < eval[0] * 0.6, "held-out loss {eval:?}\n{out}");
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        assert!(dir.join("adapter").join(f).is_file(), "{f}");
    }
    let run = |lora: bool| {
        let mut c = squish();
        c.arg("run").arg(&base).args(["--prompt", "What is the capital of Italy?", "-n", "24", "--temperature", "0"]);
        if lora {
            c.arg("--lora").arg(dir.join("adapter"));
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    let (plain, styled) = (run(false), run(true));
    assert!(!plain.contains("Ahoy"), "{plain}");
    assert!(styled.starts_with("Ahoy!") && styled.contains("Rome"), "{styled}");

    // Served: the adapter by `model: "<name>:pirate"`, the base by its own name, both at once.
    let lora = format!("pirate={}", dir.join("adapter").display());
    let server = Server::start(&base, &["--name", "smol", "--lora", &lora], &[]);
    let models = post(&server, "GET", "/v1/models", "");
    assert!(models.contains("\"smol\"") && models.contains("\"smol:pirate\""), "{models}");
    let ask = |model: &str| {
        let body = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"What is the capital of Italy?"}}],"max_tokens":24,"temperature":0}}"#);
        std::thread::spawn({
            let addr = server.addr().to_string();
            move || request(&addr, "POST", "/v1/chat/completions", &body)
        })
    };
    let (base, pirate) = (ask("smol"), ask("smol:pirate"));
    let (base, pirate) = (base.join().unwrap(), pirate.join().unwrap());
    assert!(pirate.contains("Ahoy!") && !base.contains("Ahoy"), "base: {base}\npirate: {pirate}");
    let missing = post(&server, "POST", "/v1/chat/completions", r#"{"model":"smol:nope","messages":[{"role":"user","content":"hi"}]}"#);
    assert!(missing.contains("model_not_found") && missing.contains("smol:pirate"), "{missing}");
}

fn post(server: &Server, method: &str, path: &str, body: &str) -> String {
    request(server.addr(), method, path, body)
}

/// One HTTP/1.1 request; the response's body.
fn request(addr: &str, method: &str, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

#[test]
fn a_resumed_run_ends_where_an_uninterrupted_one_does() {
    let dir = scratch("lora-resume");
    let model = tiny("llama");
    let train = |out: &str, extra: &[&str]| {
        let o = squish()
            .args(["lora", "train"])
            .arg(&model)
            .arg("--data")
            .arg(fixture("train.jsonl"))
            .args(["--max-seq", "48", "--batch", "16", "--lr", "1e-2", "--epochs", "2", "--checkpoint-every", "10", "--seed", "3", "-o"])
            .arg(dir.join(out))
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    };
    train("straight", &[]);
    let checkpoint = dir.join("straight/checkpoint-10");
    assert!(checkpoint.join("trainer_state.json").is_file());
    train("resumed", &["--resume", &checkpoint.to_string_lossy()]);
    let read = |d: &str| std::fs::read(dir.join(d).join("adapter_model.safetensors")).unwrap();
    assert!(read("straight") == read("resumed"), "the resumed adapter differs");
    let state = |d: &str| std::fs::read_to_string(dir.join(d).join("trainer_state.json")).unwrap();
    assert_eq!(state("straight"), state("resumed"));
}

#[test]
fn bad_data_and_mismatched_adapters_get_one_clear_line() {
    let dir = scratch("lora-bad");
    let data = dir.join("bad.jsonl");
    std::fs::write(&data, "{\"text\": \"fine\"}\n{\"messages\": \"oops\"}\n{\"text\": \"also fine\"}\n").unwrap();
    let train = |extra: &[&str]| {
        squish().args(["lora", "train"]).arg(tiny("llama")).arg("--data").arg(&data).arg("-o").arg(dir.join("a")).args(extra).output().unwrap()
    };
    assert_clean_failure(&train(&[]), "bad.jsonl: line 2: `messages` must be a list");
    let o = train(&["--skip-bad-lines"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("skipped line 2: `messages` must be a list"), "{}", stdout(&o));

    // An adapter for tiny llama on tiny qwen3: the first tensor that does not fit is named.
    let o = squish().args(["run"]).arg(tiny("qwen3")).args(["--prompt", "hi", "-n", "1", "--lora"]).arg(dir.join("a")).output().unwrap();
    assert_clean_failure(&o, "adapter_model.safetensors: tensor `base_model.model.model.layers.0.self_attn.");
    let o = squish().args(["run"]).arg(tiny("llama")).args(["--prompt", "hi", "-n", "1", "--lora"]).arg(dir.join("missing")).output().unwrap();
    assert_clean_failure(&o, "adapter_config.json: cannot read the adapter config");
}

#[test]
fn merge_writes_a_model_that_runs_and_converts() {
    let dir = scratch("lora-merge");
    let data = head("train.jsonl", 16, &dir);
    let o = squish().args(["lora", "train"]).arg(tiny("llama")).arg("--data").arg(&data).args(["--max-seq", "48", "-o"]).arg(dir.join("a")).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let merged = dir.join("merged");
    let o = squish().args(["lora", "merge"]).arg(tiny("llama")).arg(dir.join("a")).arg("-o").arg(&merged).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("(8 weights changed"), "{}", stdout(&o));
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert!(merged.join(f).is_file(), "{f}");
    }
    let o = squish().arg("run").arg(&merged).args(["--raw", "--prompt", "hello", "-n", "4", "--temperature", "0"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = squish().arg("convert").arg(&merged).args(["--to", "int8", "-o"]).arg(dir.join("merged-int8")).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = squish().args(["lora", "merge"]).arg(tiny("llama")).arg(dir.join("a")).arg("-o").arg(&merged).output().unwrap();
    assert_clean_failure(&o, "merged: already exists");
}
