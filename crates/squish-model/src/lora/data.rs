//! Training data: JSONL lines of `{"messages": [{"role", "content"}, ...]}` (rendered with the
//! model's chat template; only the assistant turns are scored) or `{"text": "..."}` (every
//! token scored). Bad lines are reported by number, then skipped or fatal as the caller asks;
//! rows longer than `max_seq` are cut, and counted.

use crate::{ChatTemplate, Message, ModelError, Tokenizer};
use serde_json::Value;
use std::path::Path;

/// One row: its tokens, and for each token whether it is a target (predicted from the ones
/// before it).
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub tokens: Vec<u32>,
    pub scored: Vec<bool>,
    /// 1-based line of the JSONL file.
    pub line: usize,
}

impl Example {
    pub fn targets(&self) -> usize {
        self.scored.iter().filter(|&&s| s).count()
    }
}

#[derive(Debug, Default)]
pub struct DataReport {
    pub lines: usize,
    /// (line, why) of each line left out.
    pub skipped: Vec<(usize, String)>,
    /// Rows cut to max_seq tokens.
    pub truncated: usize,
    pub tokens: usize,
    pub targets: usize,
}

/// Reads a JSONL file. With `stop_on_bad`, the first bad line is the error; else it is
/// skipped and listed in the report.
pub fn load_jsonl(
    path: &Path,
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
    max_seq: usize,
    stop_on_bad: bool,
) -> Result<(Vec<Example>, DataReport), ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    let mut report = DataReport::default();
    let mut examples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        report.lines += 1;
        match example(line, n, tokenizer, template) {
            Ok(mut ex) => {
                if ex.tokens.len() > max_seq {
                    ex.tokens.truncate(max_seq);
                    ex.scored.truncate(max_seq);
                    report.truncated += 1;
                }
                if ex.targets() == 0 {
                    let why = format!("nothing to learn within {max_seq} tokens (no assistant tokens or empty text)");
                    skip_or_stop(path, n, why, stop_on_bad, &mut report)?;
                    continue;
                }
                report.tokens += ex.tokens.len();
                report.targets += ex.targets();
                examples.push(ex);
            }
            Err(why) => skip_or_stop(path, n, why, stop_on_bad, &mut report)?,
        }
    }
    if examples.is_empty() {
        return Err(ModelError::unsupported(path, format!("no usable examples in {} lines", report.lines)));
    }
    Ok((examples, report))
}

fn skip_or_stop(path: &Path, line: usize, why: String, stop: bool, report: &mut DataReport) -> Result<(), ModelError> {
    match stop {
        true => Err(ModelError::unsupported(path, format!("line {line}: {why}"))),
        false => {
            report.skipped.push((line, why));
            Ok(())
        }
    }
}

fn example(line: &str, n: usize, tok: &Tokenizer, template: Option<&ChatTemplate>) -> Result<Example, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e})"))?;
    let enc = |s: &str, special: bool| tok.encode(s, special).map_err(|e| e.to_string());
    if let Some(text) = v.get("text") {
        let text = text.as_str().ok_or("`text` must be a string")?;
        let tokens = enc(text, true)?;
        // Every token after the first is predicted from those before it.
        let scored = (0..tokens.len()).map(|i| i > 0).collect();
        return Ok(Example { tokens, scored, line: n });
    }
    let Some(messages) = v.get("messages") else {
        return Err("expected {\"messages\": [...]} or {\"text\": \"...\"}".into());
    };
    let template = template.ok_or("the model has no chat template: use {\"text\": ...} lines")?;
    let msgs = messages
        .as_array()
        .ok_or("`messages` must be a list")?
        .iter()
        .enumerate()
        .map(|(j, m)| {
            let role = m.get("role").and_then(Value::as_str).ok_or(format!("message {j} has no string `role`"))?;
            let content = m.get("content").and_then(Value::as_str).ok_or(format!("message {j} has no string `content`"))?;
            Ok(Message::new(role, content))
        })
        .collect::<Result<Vec<_>, String>>()?;
    if !msgs.iter().any(|m| m.role == "assistant") {
        return Err("no assistant message to learn from".into());
    }
    let render = |upto: usize, gen: bool| template.render(&msgs[..upto], gen).map_err(|e| e.to_string());
    let tokens = enc(&render(msgs.len(), false)?, false)?;
    let mut scored = vec![false; tokens.len()];
    for (j, _) in msgs.iter().enumerate().filter(|(_, m)| m.role == "assistant") {
        // The assistant's tokens: from the prompt that asks for turn j to the end of turn j.
        let start = enc(&render(j, true)?, false)?.len();
        let through = enc(&render(j + 1, false)?, false)?;
        if tokens.get(..through.len()) != Some(&through[..]) || start > through.len() {
            return Err("the chat template renders this conversation differently turn by turn; cannot tell the assistant's tokens apart".into());
        }
        scored[start..through.len()].iter_mut().for_each(|s| *s = true);
    }
    Ok(Example { tokens, scored, line: n })
}
