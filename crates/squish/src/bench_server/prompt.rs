//! The serving benchmark's prompts: real English prose (the opening chapter of *Pride and
//! Prejudice*, 1813, public domain) or the user's `--prompt-file`, cut to a length. Each
//! request's prompt starts with its own number, then a number drawn once per run, so no server
//! can answer it from a prefix cache, not even after an earlier run: every request pays its
//! full prefill (bar its first token or two), on every server alike.

use anyhow::{bail, Context, Result};
use std::path::Path;

const EMBEDDED: &str = include_str!("pride_and_prejudice.txt");

/// Characters per token assumed until a server counts the prompt (English prose, BPE).
pub const CHARS_PER_TOKEN: usize = 4;

pub struct Prompts {
    text: String,
    /// Six digits, fixed per run, so a rerun against the same server meets a cold cache.
    run: u32,
}

impl Prompts {
    pub fn new(file: Option<&Path>) -> Result<Prompts> {
        let text = match file {
            Some(p) => std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
            None => EMBEDDED.to_string(),
        };
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.is_empty() {
            bail!("{}: the prompt file is empty", file.map_or("(embedded)".into(), |p| p.display().to_string()));
        }
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let run = 100_000 + (nanos ^ std::process::id().wrapping_mul(2_654_435_761)) % 900_000;
        Ok(Prompts { text, run })
    }

    /// Request `id`'s prompt: "Passage {id} (run {run})." then about `chars` characters of the text
    /// (repeated when it is shorter), cut at a word boundary.
    pub fn prompt(&self, id: usize, chars: usize) -> String {
        let head = format!("Passage {id} (run {}). ", self.run);
        let want = chars.saturating_sub(head.len()).max(1);
        let mut body = String::with_capacity(want + 64);
        while body.len() < want {
            if !body.is_empty() {
                body.push(' ');
            }
            body.push_str(&self.text);
        }
        let mut cut = want.min(body.len());
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        // Back up to the end of a word, unless that would lose most of it.
        if let Some(space) = body[..cut].rfind(' ').filter(|&s| s > cut / 2) {
            cut = space;
        }
        head + &body[..cut]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_numbers_prompts() {
        let p = Prompts::new(None).unwrap();
        let a = p.prompt(3, 512);
        assert!(a.starts_with(&format!("Passage 3 (run {}). It is a truth universally acknowledged", p.run)), "{a}");
        assert!((100_000..1_000_000).contains(&p.run));
        assert!((490..=512).contains(&a.len()), "{}", a.len());
        let long = p.prompt(12, 20_000);
        assert!((19_900..=20_000).contains(&long.len()), "{}", long.len());
        assert_ne!(p.prompt(1, 100), p.prompt(2, 100));
    }
}
