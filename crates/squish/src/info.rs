//! `squish info` (alias `show`): what a squish model holds, from its manifest, and for a pulled
//! one where it came from.

use anyhow::{bail, Result};
use clap::Args;
use squish_format::{read_manifest, SquishDir};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Args)]
pub struct InfoArgs {
    /// A squish model: a directory made by `squish convert`, or a pulled name (qwen2.5:7b[@int8])
    #[arg(required_unless_present = "devices")]
    pub model: Option<PathBuf>,
    /// Show what this binary was built with and the devices it can run on (GPUs with their
    /// memory and compute capability) instead of a model
    #[arg(long)]
    pub devices: bool,
    /// Print the whole manifest as JSON
    #[arg(long)]
    pub json: bool,
    /// Recompute every shard's sha256 and compare with the manifest
    #[arg(long)]
    pub verify: bool,
}

pub fn run(args: InfoArgs) -> Result<()> {
    if args.devices {
        println!("squish {} built with: {}", env!("CARGO_PKG_VERSION"), squish_backend::built_with().join(", "));
        for line in squish_backend::devices() {
            println!("  {line}");
        }
        return Ok(());
    }
    let arg = crate::model_arg::resolve_arg(args.model.clone())?;
    let model = arg.path.clone();
    let manifest = read_manifest(&model)?;
    let verified = if args.verify { Some(SquishDir::open(&model)?.verify()?) } else { None };
    if let Some(bad) = verified.iter().flatten().find(|(_, ok)| !ok) {
        bail!("{}: checksum mismatch: the file is corrupt or was modified", model.join(&bad.0).display());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&manifest)?);
        return Ok(());
    }
    let m = &manifest;
    println!("{}", model.display());
    if let Some((_, stored)) = &arg.stored {
        print_pull_record(stored);
    }
    println!("  format           squish v{} ({})", m.version, m.created_by);
    println!("  source           {} ({}, sha256 {})", m.source.path, m.source.kind, &m.source.sha256[..16.min(m.source.sha256.len())]);
    let group = m.group_size.map(|g| format!(", group {g}")).unwrap_or_default();
    println!("  scheme           {}{group}", m.scheme);
    println!("  parameters       {:.1} M", m.parameters as f64 / 1e6);
    println!("  bits/weight      {:.3}", m.bits_per_weight);
    if let Some(c) = &m.calibration {
        println!("  calibration      {} ({} tokens)", c.file, c.tokens);
    }
    let mut by_scheme: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for t in m.tensors.values() {
        let key = match t.group_size {
            Some(g) => format!("{} g{g}", t.scheme),
            None => t.scheme.clone(),
        };
        let e = by_scheme.entry(key).or_default();
        e.0 += 1;
        e.1 += t.shape.iter().product::<usize>() as u64;
    }
    for (scheme, (count, params)) in by_scheme {
        println!("  tensors          {count:4} x {scheme:<9} {:.1} M parameters", params as f64 / 1e6);
    }
    for (name, t) in &m.tensors {
        if let Some(note) = &t.note {
            println!("  note             {name}: {note}");
        }
    }
    let bytes: u64 = m.shards.iter().map(|s| s.bytes).sum();
    let status = match &verified {
        Some(_) => "verified".to_string(),
        None => "sizes checked at load; --verify recomputes sha256".to_string(),
    };
    println!("  shards           {} ({:.1} MB; {status})", m.shards.len(), bytes as f64 / 1e6);
    match &m.quality {
        Some(q) => println!("  quality          {q}"),
        None => println!("  quality          not measured (squish eval fills it)"),
    }
    Ok(())
}

/// Where a pulled model came from, as `squish pull` recorded it.
fn print_pull_record(stored: &squish_hub::StoredModel) {
    println!("  name             {}", stored.reference());
    if let Some(r) = &stored.record {
        let file = r.file.as_ref().map(|f| format!(", file {f}")).unwrap_or_default();
        println!("  pulled from      {} at {} (commit {}{file})", r.repo, r.revision, r.commit);
        println!("  license          {}", r.license.as_deref().unwrap_or("not stated"));
    }
}
