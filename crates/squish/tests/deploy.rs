//! Deployment (docker/, helm/squish-serve) checked with the real tools and the real binary:
//! hadolint on the Dockerfiles, helm lint/template with kubernetes-validate on the chart, and
//! the containers' own commands and environment (from the Dockerfile, the compose file and the
//! rendered chart) run here against a stand-in Hub on 127.0.0.1. Scripts in tests/deploy/,
//! tools from tests/deploy/requirements.txt (installed by scripts/test.sh).

mod common;
use common::*;
use std::path::PathBuf;
use std::process::Command;

/// Runs one script of tests/deploy/; its unittest report shows on failure.
fn python(script: &str, env: &[(&str, &str)]) {
    let dir = PathBuf::from(&*std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo test")).join("../../tests/deploy");
    let o = Command::new("python3").arg(script).current_dir(&dir).envs(env.iter().copied()).output().expect("python3 runs");
    let report = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    eprintln!("{report}");
    assert!(o.status.success(), "{script} failed:\n{report}");
}

#[test]
fn dockerfiles_lint_clean_and_build_as_the_readme_says() {
    python("test_docker.py", &[]);
}

#[test]
fn helm_chart_lints_renders_and_validates() {
    python("test_chart.py", &[]);
}

#[test]
fn container_commands_pull_then_serve_what_the_chart_scrapes() {
    let repo = repo_arg("HuggingFaceTB/SmolLM2-135M-Instruct", &smollm2_repo());
    let hub = FakeHub::start(&["--repo", &repo]);
    let scratch = scratch("deploy-container");
    let bin = env!("CARGO_BIN_EXE_squish");
    python(
        "test_container.py",
        &[("SQUISH_BIN", bin), ("HF_ENDPOINT", &hub.url), ("SCRATCH", &scratch.to_string_lossy()), ("RAYON_NUM_THREADS", "1")],
    );
}
