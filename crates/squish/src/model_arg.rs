//! What a model argument names: a path (squish dir, Hugging Face dir or .gguf), a model in the
//! store (`qwen2.5:7b`, `org/repo`, either with `@int8`), or, when none is given, the embedded
//! default SmolLM2-135M-Instruct that `scripts/fetch-models.sh` fetches into the cache dir.

use anyhow::bail;
use squish_hub::{catalog, Store, StoredModel};
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Where `scripts/fetch-models.sh` puts models: `$SQUISH_CACHE/models`, else
/// `$XDG_CACHE_HOME/squish/models`, else `~/.cache/squish/models`.
pub fn models_dir() -> PathBuf {
    squish_hub::user_dir("SQUISH_CACHE", "XDG_CACHE_HOME", ".cache", "squish").join("models")
}

/// A model to load, and for a store model the name it was given by and its entry.
pub struct ModelArg {
    pub path: PathBuf,
    pub stored: Option<(String, StoredModel)>,
}

/// The model to use: the path given, else the store model it names, else the default if it
/// has been fetched. A path on disk wins over a store name spelled the same.
pub fn resolve(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    Ok(resolve_arg(given)?.path)
}

pub fn resolve_arg(given: Option<PathBuf>) -> anyhow::Result<ModelArg> {
    let Some(given) = given else {
        let default = models_dir().join(FILE_NAME);
        if default.is_file() {
            return Ok(ModelArg { path: default, stored: None });
        }
        bail!(
            "no model given (a path or a pulled name, as an argument, --model or SQUISH_MODEL) and the default model is not downloaded: run scripts/fetch-models.sh (expected {})",
            default.display()
        )
    };
    if given.exists() {
        return Ok(ModelArg { path: given, stored: None });
    }
    let text = given.to_string_lossy();
    let looks_like_path = text.starts_with(['.', '/', '~']) || Path::new(&*text).extension().is_some_and(|e| e == "gguf");
    if looks_like_path {
        bail!("{text}: no such file or directory");
    }
    let reference = match catalog::parse(&text) {
        Ok(r) => r,
        Err(e) => bail!("{text}: no such file or directory, nor a model name ({e})"),
    };
    let store = Store::from_env();
    if let Some(found) = store.find(&reference)? {
        return Ok(ModelArg { path: found.dir.clone(), stored: Some((text.into_owned(), found)) });
    }
    let other: Vec<String> = store.matching(&catalog::ModelRef { scheme: None, ..reference.clone() })?.iter().map(|m| m.scheme.clone()).collect();
    let pull = format!("squish pull {}", reference.display_name());
    match (reference.scheme.as_deref(), other.is_empty()) {
        (Some(scheme), false) => {
            bail!("{text}: the store holds it as {} only; `{pull} --to {scheme}` adds {scheme}", other.join(", "))
        }
        _ => bail!("{text}: no such file, and not in the model store ({}): `{pull}` fetches it", store.root().display()),
    }
}
