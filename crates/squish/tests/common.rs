//! Shared by the CLI tests: the built binary, the cached real model, and scratch dirs.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub fn squish() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_squish"));
    c.env("RAYON_NUM_THREADS", "1");
    c
}

/// The real SmolLM2 GGUF, fetched once by scripts/fetch-models.sh and shared by every test.
pub fn smollm2() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let cache = std::env::var_os("SQUISH_CACHE").map(PathBuf::from).unwrap_or(home.join(".cache/squish"));
    let p = cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.is_file(), "{} is missing: run scripts/fetch-models.sh (scripts/test.sh does)", p.display());
    p
}

/// The committed tiny models made by tests/fixtures/make_tiny_models.py.
pub fn tiny(name: &str) -> PathBuf {
    Path::new(&*std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo test")).join("../../tests/fixtures/tiny").join(name)
}

/// A fresh empty directory under the target dir, named after the test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts the run failed the way squish promises: exit 2, one line on stderr naming `needle`.
pub fn assert_clean_failure(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "exit code; stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line expected, got: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(needle), "`{needle}` not in: {err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "{err}");
}

/// SmolLM2 converted to `to` (int4, int8) once per build of the binary and shared by every
/// test binary: the first caller converts, later ones reuse it. Keyed by the binary's mtime,
/// so a rebuilt converter never meets a stale fixture.
pub fn smollm2_converted(to: &str) -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let bin = Path::new(env!("CARGO_BIN_EXE_squish"));
    let stamp = std::fs::metadata(bin)
        .and_then(|m| m.modified())
        .map(|t| t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos())
        .unwrap_or(0);
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("shared-models");
    let out = root.join(format!("smollm2-{to}-{stamp:x}"));
    if !out.join("squish.json").is_file() {
        // Fixtures of earlier builds go.
        for old in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            if old.file_name().to_string_lossy().starts_with(&format!("smollm2-{to}-")) {
                let _ = std::fs::remove_dir_all(old.path());
            }
        }
        std::fs::create_dir_all(&root).unwrap();
        let o = squish().arg("convert").arg(smollm2()).args(["--to", to, "-o"]).arg(&out).output().unwrap();
        assert!(o.status.success(), "converting the shared fixture: {}", stderr(&o));
    }
    out
}

/// A running fake Hub; killed when dropped.
pub struct FakeHub {
    pub child: Child,
    pub url: String,
}

impl FakeHub {
    pub fn start(args: &[&str]) -> Self {
        let script = Path::new(&*std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo test")).join("../../tests/hub/fake_hub.py");
        let mut child = Command::new("python3").arg(script).args(args).stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("fake hub said: {line:?}")).to_string();
        Self { child, url }
    }

    /// Every request the hub has seen: (path, Range header).
    pub fn log(&self) -> Vec<(String, Option<String>)> {
        let addr = self.url.trim_start_matches("http://");
        let body = http_get(addr, "/_log");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v.as_array().unwrap().iter().map(|r| (r["path"].as_str().unwrap().to_string(), r["range"].as_str().map(String::from))).collect()
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

/// SmolLM2 as a Hugging Face repo would hold it: bf16 safetensors, config and tokenizer (made
/// from the shared bf16 conversion, its manifest left out).
pub fn smollm2_repo() -> PathBuf {
    let bf16 = smollm2_converted("bf16");
    let repo = bf16.with_file_name(format!("{}-hub-repo", bf16.file_name().unwrap().to_string_lossy()));
    if !repo.join("model.safetensors").exists() {
        std::fs::create_dir_all(&repo).unwrap();
        for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"] {
            let _ = std::fs::remove_file(repo.join(f));
            std::os::unix::fs::symlink(bf16.join(f), repo.join(f)).unwrap();
        }
    }
    repo
}

pub fn repo_arg(id: &str, dir: &Path) -> String {
    format!("{id}={}", dir.display())
}

/// A running `squish serve` on a free port; killed when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Server {
    pub fn start(model: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = squish();
        cmd.args(["serve", "--port", "0", "--model"]).arg(model).args(args);
        cmd.envs(env.iter().copied()).env("RUST_LOG", "warn").stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line.trim().strip_prefix("squish: listening on ").unwrap_or_else(|| panic!("server said: {line:?}")).to_string();
        Self { child, url }
    }

    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real English text the quality tests score (`../shared/corpora/dev-corpus.txt`; CI
/// lays shared/ beside the clone, as on the development machines).
pub fn corpus() -> PathBuf {
    let p = Path::new(&*std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo test")).join("../../../shared/corpora/dev-corpus.txt");
    assert!(p.is_file(), "{} is missing", p.display());
    p
}

/// The corpus' second half (`tail -c +128167`), which the scored windows do not reach, as a
/// calibration file in scratch dir `name`.
pub fn calibration_text(name: &str) -> PathBuf {
    let text = std::fs::read(corpus()).unwrap();
    let path = scratch(name).join("calib.txt");
    std::fs::write(&path, &text[128166..]).unwrap();
    path
}

/// The `bits/weight` figure of a convert summary.
pub fn bits_per_weight(summary: &str) -> f64 {
    let line = summary.lines().find(|l| l.trim_start().starts_with("bits/weight")).expect("a bits/weight line");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `squish run --raw` greedy text of `n` tokens after `prompt`.
pub fn greedy(model: &Path, prompt: &str, n: &str) -> String {
    let o = squish().args(["run", "--raw", "--temperature", "0", "-n", n, "--prompt", prompt]).arg(model).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
}

/// Perplexity on the corpus' first 4 windows of 512 tokens.
pub fn ppl_4_windows(model: &Path) -> f64 {
    let o = squish().env("RAYON_NUM_THREADS", "2").args(["eval", "--ctx", "512", "--chunks", "4", "--json", "--text"]).arg(corpus()).arg(model).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    r["ppl"].as_f64().unwrap()
}
