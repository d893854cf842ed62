//! The model catalog: the short names users type (`qwen2.5:7b`), each mapped to a Hugging
//! Face repo with what a user wants to know before a download (size, license, gating); and
//! the parsing of a model reference, `<short name | org/repo>[@scheme]`.

use crate::error::{HubError, Result};

pub struct CatalogEntry {
    pub name: &'static str,
    pub repo: &'static str,
    /// Parameters, in billions.
    pub params_b: f64,
    pub license: &'static str,
    /// Needs an accepted license and HF_TOKEN.
    pub gated: bool,
}

impl CatalogEntry {
    /// What the download weighs: the Hub holds these models in bf16.
    pub fn download_gb(&self) -> f64 {
        self.params_b * 2.0
    }
}

const fn entry(name: &'static str, repo: &'static str, params_b: f64, license: &'static str, gated: bool) -> CatalogEntry {
    CatalogEntry { name, repo, params_b, license, gated }
}

pub const CATALOG: &[CatalogEntry] = &[
    entry("smollm2:135m", "HuggingFaceTB/SmolLM2-135M-Instruct", 0.135, "apache-2.0", false),
    entry("smollm2:360m", "HuggingFaceTB/SmolLM2-360M-Instruct", 0.36, "apache-2.0", false),
    entry("smollm2:1.7b", "HuggingFaceTB/SmolLM2-1.7B-Instruct", 1.7, "apache-2.0", false),
    entry("qwen2.5:0.5b", "Qwen/Qwen2.5-0.5B-Instruct", 0.49, "apache-2.0", false),
    entry("qwen2.5:1.5b", "Qwen/Qwen2.5-1.5B-Instruct", 1.5, "apache-2.0", false),
    entry("qwen2.5:3b", "Qwen/Qwen2.5-3B-Instruct", 3.1, "qwen-research", false),
    entry("qwen2.5:7b", "Qwen/Qwen2.5-7B-Instruct", 7.6, "apache-2.0", false),
    entry("qwen2.5:14b", "Qwen/Qwen2.5-14B-Instruct", 14.7, "apache-2.0", false),
    entry("qwen3:0.6b", "Qwen/Qwen3-0.6B", 0.6, "apache-2.0", false),
    entry("qwen3:1.7b", "Qwen/Qwen3-1.7B", 1.7, "apache-2.0", false),
    entry("qwen3:4b", "Qwen/Qwen3-4B", 4.0, "apache-2.0", false),
    entry("qwen3:8b", "Qwen/Qwen3-8B", 8.2, "apache-2.0", false),
    entry("qwen3:14b", "Qwen/Qwen3-14B", 14.8, "apache-2.0", false),
    entry("llama3.2:1b", "meta-llama/Llama-3.2-1B-Instruct", 1.24, "llama3.2", true),
    entry("llama3.2:3b", "meta-llama/Llama-3.2-3B-Instruct", 3.2, "llama3.2", true),
    entry("llama3.1:8b", "meta-llama/Llama-3.1-8B-Instruct", 8.0, "llama3.1", true),
    entry("mistral:7b", "mistralai/Mistral-7B-Instruct-v0.3", 7.25, "apache-2.0", true),
];

/// What a model reference names: a repo (from the catalog or given as `org/repo`) and, when
/// `@scheme` was added, which of its conversions.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRef {
    pub repo: String,
    /// The catalog name, when the reference was one.
    pub alias: Option<&'static str>,
    pub scheme: Option<String>,
}

impl ModelRef {
    /// How to show it: the catalog name where there is one.
    pub fn display_name(&self) -> &str {
        self.alias.unwrap_or(&self.repo)
    }
}

pub fn lookup(name: &str) -> Option<&'static CatalogEntry> {
    let name = name.to_ascii_lowercase();
    CATALOG.iter().find(|e| e.name == name || e.repo.eq_ignore_ascii_case(&name))
}

/// Parses `<short name | org/repo>[@scheme]`; an unknown short name is an error that lists
/// the nearest catalog names.
pub fn parse(reference: &str) -> Result<ModelRef> {
    let (name, scheme) = match reference.rsplit_once('@') {
        Some((name, scheme)) => (name, Some(scheme.to_ascii_lowercase())),
        None => (reference, None),
    };
    if let Some(e) = lookup(name) {
        return Ok(ModelRef { repo: e.repo.to_string(), alias: Some(e.name), scheme });
    }
    if is_repo_id(name) {
        return Ok(ModelRef { repo: name.to_string(), alias: None, scheme });
    }
    let near = suggestions(name);
    let hint = match near.is_empty() {
        true => "`squish models --catalog` lists the short names".to_string(),
        false => format!("did you mean {}?", near.join(", ")),
    };
    Err(HubError::Invalid(format!(
        "`{name}` is not in the catalog and not a Hugging Face repo id (org/name): {hint}"
    )))
}

/// `org/name` with the characters the Hub allows (no `--` or `..` either), so it can neither
/// climb out of a directory nor collide with another repo's `org--name` store directory.
pub fn is_repo_id(s: &str) -> bool {
    let ok = |part: &str| {
        !part.is_empty()
            && part != "."
            && !part.contains("..")
            && !part.contains("--")
            && part.len() <= 96
            && part.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    matches!(s.split_once('/'), Some((org, name)) if ok(org) && ok(name))
}

/// Catalog names within a small edit distance, or sharing the family before the `:`.
fn suggestions(name: &str) -> Vec<&'static str> {
    let name = name.to_ascii_lowercase();
    let family = name.split(':').next().unwrap_or_default();
    let mut scored: Vec<(usize, &'static str)> = CATALOG
        .iter()
        .map(|e| (edit_distance(&name, e.name), e.name))
        .filter(|&(d, n)| d <= 2 || n.split(':').next() == Some(family))
        .collect();
    scored.sort();
    scored.into_iter().take(4).map(|(_, n)| n).collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_resolve_to_repos() {
        let r = parse("Qwen2.5:7B@int8").unwrap();
        assert_eq!((r.repo.as_str(), r.alias, r.scheme.as_deref()), ("Qwen/Qwen2.5-7B-Instruct", Some("qwen2.5:7b"), Some("int8")));
        let r = parse("someone/Some-Model_v1.5").unwrap();
        assert_eq!((r.repo.as_str(), r.alias, r.scheme), ("someone/Some-Model_v1.5", None, None));
        assert_eq!(parse("HuggingFaceTB/SmolLM2-135M-Instruct").unwrap().alias, Some("smollm2:135m"));
    }

    #[test]
    fn unknown_names_suggest_near_ones() {
        let msg = parse("qwen2.5:7").unwrap_err().to_string();
        assert!(msg.contains("did you mean qwen2.5:7b"), "{msg}");
        let msg = parse("lama3.2:1b").unwrap_err().to_string();
        assert!(msg.contains("llama3.2:1b"), "{msg}");
    }

    #[test]
    fn repo_ids_cannot_climb_out() {
        for bad in ["../etc", "org/..", "org/a/b", "/abs", "org/", "a b/c", "a--b/c"] {
            assert!(!is_repo_id(bad), "{bad}");
        }
    }
}
