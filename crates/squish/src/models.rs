//! `squish models` and `squish rm`: what the store holds (with size, bits/weight and the
//! measured ΔPPL where `squish eval --base` wrote one), the catalog, and removal.

use anyhow::{bail, Result};
use clap::Args;
use squish_format::read_manifest;
use squish_hub::{catalog, HfCache, Store, StoredModel, CATALOG};

#[derive(Args)]
#[command(after_help = "The store is SQUISH_HOME (default ~/.local/share/squish); `squish pull NAME` fills it.")]
pub struct ModelsArgs {
    /// List the catalog instead: the short names `squish pull` takes
    #[arg(long)]
    pub catalog: bool,
}

#[derive(Args)]
pub struct RmArgs {
    /// Stored models: a name as `squish models` shows it; without `@scheme`, every scheme of it
    #[arg(required = true)]
    pub models: Vec<String>,
}

pub fn list(args: ModelsArgs) -> Result<()> {
    if args.catalog {
        println!("{:<14} {:<38} {:>7} {:>9} {:<14}", "NAME", "HUGGING FACE REPO", "PARAMS", "DOWNLOAD", "LICENSE");
        for e in CATALOG {
            let license = format!("{}{}", e.license, if e.gated { " (gated)" } else { "" });
            println!("{:<14} {:<38} {:>6}B {:>6.1} GB {license}", e.name, e.repo, e.params_b, e.download_gb());
        }
        println!("\nAny other Hugging Face repo works by its id: squish pull org/name");
        return Ok(());
    }
    let store = Store::from_env();
    let models = store.list()?;
    if models.is_empty() {
        println!(
            "no models in {}: `squish pull smollm2:135m` fetches one (`squish models --catalog` lists more)",
            store.root().display()
        );
        return Ok(());
    }
    println!("{:<40} {:>9} {:>7} {:>9}  {:<10} COMMIT", "NAME", "SIZE", "BITS/W", "ΔPPL", "PULLED");
    for m in &models {
        println!("{}", row(m));
    }
    Ok(())
}

fn row(m: &StoredModel) -> String {
    let manifest = read_manifest(&m.dir).ok();
    let bytes: u64 = manifest.iter().flat_map(|x| &x.shards).map(|s| s.bytes).sum();
    let bits = manifest.as_ref().map_or("?".into(), |x| format!("{:.2}", x.bits_per_weight));
    let delta = manifest
        .as_ref()
        .and_then(|x| x.quality.as_ref())
        .and_then(|q| q.get("delta_ppl").and_then(|d| d.as_f64()))
        .map_or("-".into(), |d| format!("{d:+.3}"));
    let (pulled, commit) = match &m.record {
        Some(r) => (date(r.pulled_at), crate::pull::short(&r.commit).to_string()),
        None => ("?".into(), "?".into()),
    };
    format!("{:<40} {:>6.1} MB {bits:>7} {delta:>9}  {pulled:<10} {commit}", m.reference(), bytes as f64 / 1e6)
}

fn date(unix: u64) -> String {
    let (y, mo, d) = squish_model::civil_from_days((unix / 86_400) as i64);
    format!("{y:04}-{mo:02}-{d:02}")
}

pub fn rm(args: RmArgs) -> Result<()> {
    let store = Store::from_env();
    for name in &args.models {
        let r = catalog::parse(name)?;
        let found = store.matching(&r)?;
        if found.is_empty() {
            bail!("{name}: not in the store ({}); `squish models` lists what is", store.root().display());
        }
        for m in &found {
            store.remove(m)?;
            println!("removed {} ({})", m.reference(), m.dir.display());
        }
        let source = HfCache::from_env().repo_dir(&r.repo);
        if source.exists() {
            println!("  its downloaded source stays in the Hugging Face cache: {}", source.display());
        }
    }
    Ok(())
}
