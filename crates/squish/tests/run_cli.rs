//! `squish run` end to end on real models: one-shot, raw, seeded sampling, and the
//! interactive chat fed through stdin.

mod common;
use common::*;
use std::io::Write;
use std::process::Stdio;

#[test]
fn one_shot_chat_answers_with_the_template() {
    let o = squish()
        .args(["run", "--temperature", "0", "-n", "24", "--prompt", "What is the capital of France?"])
        .arg(smollm2())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("Paris"), "{}", stdout(&o));
}

#[test]
fn verbose_reports_load_and_speeds() {
    let o = squish().args(["run", "--temperature", "0", "-n", "8", "--verbose", "--prompt", "Hi"]).arg(smollm2()).output().unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("loaded ") && err.contains(" s\n"), "{err}");
    assert!(err.contains("tokens/s | output: ") && err.contains("tokens at "), "{err}");
}

#[test]
fn same_seed_same_text_and_other_seed_differs() {
    let sample = |seed: &str| {
        let o = squish()
            .args(["run", "--raw", "--temperature", "1.0", "--top-k", "0", "--top-p", "1", "--min-p", "0", "-n", "24"])
            .args(["--seed", seed, "--prompt", "Once upon a time"])
            .arg(smollm2())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    let a = sample("42");
    assert_eq!(a, sample("42"));
    assert_ne!(a, sample("43"));
}

#[test]
fn interactive_chat_keeps_history_and_reuses_the_cache() {
    let mut child = squish()
        .args(["run", "--temperature", "0", "-n", "16", "--verbose"])
        .arg(smollm2())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"My name is Ada.\nWhat is my name?\n/exit\n").unwrap();
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let turns: Vec<&str> = err.lines().filter(|l| l.starts_with("prompt: ")).collect();
    assert_eq!(turns.len(), 2, "{err}");
    // The second prompt contains the first turn, whose tokens the cache already holds.
    let reused: usize = turns[1].split('(').nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(reused > 20, "{}", turns[1]);
    assert!(stdout(&o).contains("Ada"), "{}", stdout(&o));
}

#[test]
fn tiny_hf_directory_runs() {
    let o = squish().args(["run", "--temperature", "0", "-n", "5", "--prompt", "hello"]).arg(tiny("llama")).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn raw_is_used_when_there_is_no_template() {
    let dir = scratch("no_template").join("llama");
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(tiny("llama")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let tc = dir.join("tokenizer_config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&tc).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("chat_template");
    std::fs::write(&tc, v.to_string()).unwrap();
    let _ = std::fs::remove_file(dir.join("chat_template.jinja"));
    let o = squish().args(["run", "-n", "3", "--verbose", "--prompt", "hello"]).arg(&dir).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // "hello" alone is a handful of tokens; the template would have added more.
    let line = stderr(&o).lines().find(|l| l.starts_with("prompt: ")).unwrap().to_string();
    let n: usize = line["prompt: ".len()..].split(' ').next().unwrap().parse().unwrap();
    assert!(n <= 6, "{line}");
}

#[test]
fn ctrl_c_stops_the_answer_not_the_chat() {
    use std::io::Read;
    let mut child = squish()
        .args(["run", "--raw", "--temperature", "1", "--seed", "1", "-n", "100000", "--ctx", "8192"])
        .arg(smollm2())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"Once upon a time\n").unwrap();
    // Wait until the answer is streaming, then interrupt it.
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    out.read_exact(&mut first).unwrap();
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    stdin.write_all(b"/exit\n").unwrap();
    drop(stdin);
    let status = child.wait().unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "{status:?}: {err}");
    assert!(err.contains("[stopped]"), "{err}");
}
