//! Folds an adapter into its base: every weight W of an adapted layer becomes W + scale · B A,
//! the rest is copied (quantized weights dequantized), and the result is a Hugging Face model
//! directory (safetensors in bf16, f16 or f32, config, tokenizer) that transformers loads and
//! `squish convert` compresses like any other. Written tensor by tensor into a temporary
//! directory that is renamed into place once complete.

use super::adapter::{Adapter, Target};
use crate::convert::export::write_side_files;
use crate::decoder::tensor_plan;
use crate::{ModelError, Source};
use candle_core::{DType, Device, Tensor};
use squish_format::{plan_shards, PlannedTensor, ShardWriter, StoredDtype};
use std::path::Path;

const SHARD_BYTES: usize = 4 << 30;

/// Writes `src` with `adapter` folded in to `out` (which must not exist); returns the number of
/// weights changed.
pub fn merge(src: &Source, adapter: &Adapter, out: &Path, dtype: StoredDtype) -> Result<usize, ModelError> {
    if out.exists() {
        return Err(ModelError::unsupported(out, "already exists; merge writes a new directory"));
    }
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = out.with_file_name(format!(".{name}.partial"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    let changed = write_all(src, adapter, &tmp, dtype).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&tmp);
    })?;
    std::fs::rename(&tmp, out).map_err(|e| ModelError::io(out, e))?;
    Ok(changed)
}

fn write_all(src: &Source, adapter: &Adapter, dir: &Path, dtype: StoredDtype) -> Result<usize, ModelError> {
    let device = Device::Cpu;
    let w = src.weights(&device);
    let has = |n: &str| w.has(n);
    let specs: Vec<_> = tensor_plan(&src.config, &has).into_iter().filter(|s| s.name != "rope_freqs.weight").collect();
    let plan: Vec<PlannedTensor> = specs.iter().map(|s| PlannedTensor::new(&s.name, dtype, &s.shape)).collect();
    let shards = plan_shards(plan, SHARD_BYTES);
    let file = |i: usize| match shards.len() {
        1 => "model.safetensors".to_string(),
        n => format!("model-{:05}-of-{n:05}.safetensors", i + 1),
    };
    let mut weight_map = serde_json::Map::new();
    let mut changed = 0;
    for (i, shard) in shards.iter().enumerate() {
        // "pt": transformers refuses safetensors whose metadata names another framework.
        let mut writer = ShardWriter::with_format(&dir.join(file(i)), shard.clone(), "pt")?;
        for t in shard {
            let tensor = match t.shape.len() {
                2 => {
                    let prefix = t.name.strip_suffix(".weight").unwrap_or(&t.name);
                    let all: Vec<u32> = (0..t.shape[0] as u32).collect();
                    let base = w.linear(prefix, t.shape[0], t.shape[1])?.rows(&all, &device)?;
                    match delta(adapter, &t.name)? {
                        Some(d) => {
                            changed += 1;
                            (base + d)?
                        }
                        None => base,
                    }
                }
                _ => w.get(&t.name, &t.shape)?,
            };
            writer.write_tensor(&t.name, &bytes(&tensor, dtype)?)?;
            weight_map.insert(t.name.clone(), file(i).into());
        }
        writer.finish()?;
    }
    if shards.len() > 1 {
        let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
        let p = dir.join("model.safetensors.index.json");
        std::fs::write(&p, serde_json::to_string_pretty(&index).expect("plain JSON")).map_err(|e| ModelError::io(&p, e))?;
    }
    write_side_files(src, dir)?;
    Ok(changed)
}

/// scale · B A for the weight `name` (`model.layers.{i}.{module}.weight`) when adapted.
fn delta(adapter: &Adapter, name: &str) -> Result<Option<Tensor>, ModelError> {
    let Some(rest) = name.strip_prefix("model.layers.") else { return Ok(None) };
    let Some((layer, module)) = rest.split_once('.') else { return Ok(None) };
    let Ok(layer) = layer.parse::<usize>() else { return Ok(None) };
    let Some(target) = Target::ALL.into_iter().find(|t| format!("{}.weight", t.module()) == module) else { return Ok(None) };
    let Some(p) = adapter.pairs.get(&(layer, target)) else { return Ok(None) };
    Ok(Some((p.b.matmul(&p.a)? * adapter.config.scale())?))
}

fn bytes(t: &Tensor, dtype: StoredDtype) -> Result<Vec<u8>, ModelError> {
    let flat = t.flatten_all()?;
    Ok(match dtype {
        StoredDtype::F32 => flat.to_dtype(DType::F32)?.to_vec1::<f32>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        StoredDtype::F16 => flat.to_dtype(DType::F16)?.to_vec1::<half::f16>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        _ => flat.to_dtype(DType::BF16)?.to_vec1::<half::bf16>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
    })
}
