//! `squish pull`, `models`, `show`, `rm` and `/api/pull` against a stand-in for the Hugging
//! Face Hub on 127.0.0.1 (tests/hub/fake_hub.py: the Hub's API and resolve routes, its
//! headers, redirects to a CDN, Range requests, 401/404 with X-Error-Code), reached through
//! HF_ENDPOINT as a mirror would be. The real SmolLM2, as bf16 safetensors, is pulled,
//! converted and run; tiny models cover resume, errors and offline mode.

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A store and a Hugging Face cache of the test's own, and the hub as endpoint.
struct Env {
    home: PathBuf,
    hub_url: String,
}

impl Env {
    fn new(name: &str, hub: &FakeHub) -> Self {
        Self { home: scratch(name), hub_url: hub.url.clone() }
    }

    fn squish(&self, args: &[&str]) -> Output {
        squish()
            .args(args)
            .env("SQUISH_HOME", self.home.join("store"))
            .env("HF_HOME", self.home.join("hf"))
            .env("HF_ENDPOINT", &self.hub_url)
            .env_remove("HF_TOKEN")
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("HF_HUB_CACHE")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.squish(args);
        assert!(o.status.success(), "squish {args:?}: {}", stderr(&o));
        stdout(&o)
    }
}

#[test]
fn pull_converts_into_the_store_and_runs_by_name() {
    let repo = repo_arg("HuggingFaceTB/SmolLM2-135M-Instruct", &smollm2_repo());
    let hub = FakeHub::start(&["--repo", &repo]);
    let env = Env::new("pull-smollm2", &hub);
    let out = env.ok(&["pull", "smollm2:135m"]);
    assert!(out.contains("pulled smollm2:135m@int4"), "{out}");
    assert!(out.contains("bits/weight      4.5"), "{out}");

    let text = env.ok(&["run", "smollm2:135m", "--prompt", "What is the capital of France?", "-n", "16", "--temperature", "0"]);
    assert!(text.contains("Paris"), "{text}");
    let listed = env.ok(&["models"]);
    assert!(listed.contains("smollm2:135m@int4") && listed.contains("4.51"), "{listed}");
    let shown = env.ok(&["show", "smollm2:135m"]);
    assert!(shown.contains("pulled from      HuggingFaceTB/SmolLM2-135M-Instruct at main"), "{shown}");
    assert!(shown.contains("license          apache-2.0"), "{shown}");

    // The Hugging Face cache in Python's layout: snapshot links to blobs named by sha256.
    let snapshots = env.home.join("hf/hub/models--HuggingFaceTB--SmolLM2-135M-Instruct/snapshots");
    let commit = std::fs::read_dir(&snapshots).unwrap().next().unwrap().unwrap().path();
    let weights = std::fs::read_link(commit.join("model.safetensors")).unwrap();
    assert!(weights.starts_with("../../blobs") && weights.file_name().unwrap().len() == 64, "{weights:?}");

    // Again: nothing downloaded, nothing converted.
    let before = hub.log().len();
    let again = env.ok(&["pull", "HuggingFaceTB/SmolLM2-135M-Instruct"]);
    assert!(again.contains("up to date"), "{again}");
    let new: Vec<_> = hub.log().split_off(before);
    assert!(new.iter().all(|(p, _)| p.starts_with("/api/models/")), "{new:?}");

    let removed = env.ok(&["rm", "smollm2:135m"]);
    assert!(removed.contains("removed smollm2:135m@int4"), "{removed}");
    assert!(env.ok(&["models"]).contains("no models in"));
}

#[test]
fn a_download_cut_mid_file_resumes_and_offline_uses_the_cache() {
    let hub = FakeHub::start(&["--repo", &repo_arg("test/tiny", &tiny("llama")), "--drop-after", "100000"]);
    let env = Env::new("pull-resume", &hub);
    let o = env.squish(&["pull", "test/tiny", "--retries", "0"]);
    assert_clean_failure(&o, "run the same command again");
    assert!(!env.home.join("store/models/test--tiny/int4").exists(), "nothing half-made in the store");
    let blobs = env.home.join("hf/hub/models--test--tiny/blobs");
    let partial: Vec<_> = std::fs::read_dir(&blobs).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".incomplete")).collect();
    assert_eq!(partial.len(), 1, "one partial file");
    assert_eq!(partial[0].metadata().unwrap().len(), 100_000);

    let out = env.ok(&["pull", "test/tiny"]);
    assert!(out.contains("pulled test/tiny@int4"), "{out}");
    let ranges: Vec<String> = hub.log().into_iter().filter(|(p, _)| p.starts_with("/cdn/")).filter_map(|(_, r)| r).collect();
    assert_eq!(ranges, ["bytes=100000-"], "the second run asks for the rest only");
    assert!(env.ok(&["run", "test/tiny", "--prompt", "hello", "-n", "4", "--raw"]).len() > 0);

    drop(hub); // the network is gone
    let out = env.ok(&["pull", "test/tiny", "--to", "int8", "--offline"]);
    assert!(out.contains("pulled test/tiny@int8"), "{out}");
    let o = env.squish(&["pull", "test/other", "--offline"]);
    assert_clean_failure(&o, "not in the Hugging Face cache");
}

#[test]
fn hub_failures_say_what_to_do() {
    // A repo whose index routes a shard out of the snapshot directory.
    let evil = scratch("pull-evil-repo");
    std::fs::copy(tiny("llama").join("config.json"), evil.join("config.json")).unwrap();
    std::fs::write(evil.join("model.safetensors.index.json"), r#"{"weight_map": {"w": "../../escape.safetensors"}}"#).unwrap();
    let hub = FakeHub::start(&[
        "--repo",
        &repo_arg("test/tiny", &tiny("llama")),
        "--repo",
        &repo_arg("test/gated", &tiny("qwen2")),
        "--repo",
        &repo_arg("test/evil", &evil),
        "--gated",
        "test/gated",
        "--token",
        "sekrit",
    ]);
    let env = Env::new("pull-errors", &hub);
    assert_clean_failure(&env.squish(&["pull", "nobody/nothing"]), "if it is private, set HF_TOKEN");
    assert_clean_failure(&env.squish(&["pull", "test/gated"]), "is gated: accept its license");
    assert_clean_failure(&env.squish(&["pull", "qwen2.5:7"]), "did you mean qwen2.5:7b");
    assert_clean_failure(&env.squish(&["pull", "test/tiny", "--revision", "v9"]), "revision `v9` not found");
    assert_clean_failure(&env.squish(&["pull", "test/evil"]), "refusing file name `../../escape.safetensors`");
    assert_clean_failure(&env.squish(&["run", "test/tiny@int8", "--prompt", "hi"]), "squish pull test/tiny");
    // A full disk: the weights' partial file is /dev/full, where every write fails ENOSPC.
    let info = http_get(hub.url.trim_start_matches("http://"), "/api/models/test/tiny/revision/main?blobs=true");
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    let sha = info["siblings"].as_array().unwrap().iter().find_map(|f| f["lfs"]["sha256"].as_str()).unwrap();
    let blobs = env.home.join("hf/hub/models--test--tiny/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::os::unix::fs::symlink("/dev/full", blobs.join(format!("{sha}.incomplete"))).unwrap();
    assert_clean_failure(&env.squish(&["pull", "test/tiny"]), "No space left on device");
    assert!(!env.home.join("store/models").exists(), "failed pulls store nothing");
    // With the token: the gated repo pulls, and a missing repo is plainly missing.
    let with_token = |args: &[&str]| {
        squish()
            .args(args)
            .env("SQUISH_HOME", env.home.join("store"))
            .env("HF_HOME", env.home.join("hf"))
            .env("HF_ENDPOINT", &hub.url)
            .env("HF_TOKEN", "sekrit")
            .output()
            .unwrap()
    };
    let o = with_token(&["pull", "nobody/nothing"]);
    assert_clean_failure(&o, "repository `nobody/nothing` not found");
    assert!(!stderr(&o).contains("HF_TOKEN"));
    assert!(with_token(&["pull", "test/gated"]).status.success());
}

#[test]
fn ollama_client_pulls_through_the_server() {
    let hub = FakeHub::start(&[
        "--repo",
        &repo_arg("test/tiny", &tiny("llama")),
        "--repo",
        &repo_arg("test/gated", &tiny("qwen2")),
        "--gated",
        "test/gated",
        "--token",
        "sekrit",
    ]);
    let home = scratch("pull-server");
    let store = home.join("store");
    let mut server = squish()
        .args(["serve", "--port", "0", "--model"])
        .arg(tiny("llama"))
        .env("SQUISH_HOME", &store)
        .env("HF_HOME", home.join("hf"))
        .env("HF_ENDPOINT", &hub.url)
        .env_remove("HF_TOKEN")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("squish: listening on ").unwrap_or_else(|| panic!("server said: {line:?}")).to_string();
    let o = Command::new("python3")
        .arg("test_pull.py")
        .current_dir(Path::new(&*std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo test")).join("../../tests/server"))
        .env("SQUISH_URL", &url)
        .env("SQUISH_HOME", &store)
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let report = format!("{}{}", stdout(&o), stderr(&o));
    eprintln!("{report}");
    assert!(o.status.success(), "test_pull.py failed:\n{report}");
}
