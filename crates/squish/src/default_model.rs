//! The embedded default model: SmolLM2-135M-Instruct, fetched by `scripts/fetch-models.sh`
//! into the cache dir. Used when a command is given no model.

use std::path::PathBuf;

pub const FILE_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Where `scripts/fetch-models.sh` puts models: `$SQUISH_CACHE/models`, else
/// `$XDG_CACHE_HOME/squish/models`, else `~/.cache/squish/models`.
pub fn models_dir() -> PathBuf {
    let cache = std::env::var_os("SQUISH_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"))
            .join("squish")
    });
    cache.join("models")
}

/// The model to use: the one given, else the default if it has been fetched.
pub fn resolve(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    let default = models_dir().join(FILE_NAME);
    if default.is_file() {
        return Ok(default);
    }
    anyhow::bail!(
        "no model given and the default model is not downloaded: run scripts/fetch-models.sh (expected {})",
        default.display()
    )
}
